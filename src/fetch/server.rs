//! Gateway side of the fetch protocol: one `Server` per transport worker.
//!
//! Per validated source address it keeps a session: the flow-control window the client
//! advertised, the bytes sent for requests it has not acknowledged yet, a FIFO of response
//! jobs (one per partition of a request, each a [`ReadSlice`] cut into datagrams lazily)
//! and its parked long polls. Sessions take turns in bursts, so one consumer cannot starve
//! the others. Unvalidated sources get nothing but a RETRY no larger than what they sent.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::appends::Watch;
use crate::log::batch::BatchHeader;
use crate::log::tail::clock_ns;
use crate::log::tail_trace::Via;
use crate::log::txn::AbortedTxn;
use crate::log::{LogDir, LogError, Partition, ReadSlice};

use super::ticket::{Reject, TicketKeys};
use super::token::TokenKeys;
use super::wire::{
    self, DataHeader, ErrorCode, ErrorMsg, FetchRequest, IsolationLevel, MsgType, Retry, WireError,
    FLAG_FRAGMENT, FLAG_LAST, MIN_INITIAL_LEN, OFFSET_EARLIEST, OFFSET_LATEST, SLOT_REQUEST,
};
use super::{Payload, Transmit};

/// Smallest datagram the protocol can work with (a header and some payload).
pub const MIN_DATAGRAM: usize = crate::driver::MIN_DATAGRAM;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest UDP payload the transport can carry (interface MTU - IP - UDP headers).
    pub max_datagram: usize,
    /// How often the address-validation secret rotates (tokens live 1-2 periods).
    pub token_rotation: Duration,
    /// Cap on one partition's response (the client's max_bytes is clamped to it).
    pub max_fetch_bytes: u32,
    /// Cap on a client's advertised window.
    pub max_window: u32,
    /// Cap on a long poll's wait.
    pub max_wait: Duration,
    /// A session without datagrams for this long is dropped.
    pub session_idle: Duration,
    pub max_sessions: usize,
    /// Long polls parked per session.
    pub max_parked: usize,
    /// Partitions per request.
    pub max_parts: usize,
    /// Unacknowledged requests per session.
    pub max_requests: usize,
    /// Datagrams one session sends before the next session's turn.
    pub burst: usize,
    /// Address-validation secret. Give every server of one gateway (one per transport
    /// worker) the same value so a token from one validates on all; None: random.
    pub token_secret: Option<[u8; 16]>,
    /// Fetch tickets required (the gateway has `--acl` or `--sasl-users`): the gateway's
    /// keys, shared with the Kafka listener that issues them. None: no ticket needed.
    pub tickets: Option<Arc<TicketKeys>>,
}

impl ServerConfig {
    /// This configuration with its token secret fixed (a fresh random one when none is set):
    /// every server built from the result (one per AF_XDP queue, or the kernel-UDP endpoint)
    /// validates the others' tokens.
    pub fn with_shared_secret(mut self) -> ServerConfig {
        self.token_secret.get_or_insert_with(rand::random);
        self
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_datagram: 1472,
            token_rotation: Duration::from_secs(60),
            max_fetch_bytes: 8 << 20,
            max_window: 256 << 20,
            max_wait: Duration::from_secs(30),
            session_idle: Duration::from_secs(60),
            max_sessions: 4096,
            max_parked: 64,
            max_parts: 256,
            max_requests: 4096,
            burst: 32,
            token_secret: None,
            tickets: None,
        }
    }
}

/// Counters; every dropped datagram is counted under its reason.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub data_datagrams: u64,
    pub payload_bytes: u64,
    pub fetches: u64,
    pub acks: u64,
    pub retries_sent: u64,
    pub errors_sent: u64,
    pub dropped_malformed: u64,
    pub dropped_wrong_type: u64,
    pub dropped_unvalidated_small: u64,
    pub dropped_duplicate: u64,
    pub long_polls: u64,
    pub long_polls_expired: u64,
    pub window_stalls: u64,
    pub sessions_opened: u64,
    pub sessions_expired: u64,
    pub busy: u64,
    /// FETCHes refused for their ticket, per cause (see [`TicketRejects`]).
    pub tickets: TicketRejects,
}

/// FETCHes refused for their ticket, by [`Reject`] cause.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketRejects {
    pub missing: u64,
    pub malformed: u64,
    pub forged: u64,
    pub expired: u64,
    pub wrong_address: u64,
    pub out_of_scope: u64,
}

impl TicketRejects {
    fn count(&mut self, r: Reject) {
        *match r {
            Reject::Missing => &mut self.missing,
            Reject::Malformed => &mut self.malformed,
            Reject::Forged => &mut self.forged,
            Reject::Expired => &mut self.expired,
            Reject::WrongAddress => &mut self.wrong_address,
            Reject::OutOfScope { .. } => &mut self.out_of_scope,
        } += 1;
    }

    /// (cause, count), in a fixed order.
    pub fn rows(&self) -> [(&'static str, u64); 6] {
        [
            ("missing", self.missing),
            ("malformed", self.malformed),
            ("forged", self.forged),
            ("expired", self.expired),
            ("wrong_address", self.wrong_address),
            ("out_of_scope", self.out_of_scope),
        ]
    }
}

impl ServerStats {
    /// Writes these counters as `kxgw_fetch_*` metrics with the transport's labels; every
    /// transport (kernel UDP, AF_XDP per queue) reports the same set.
    pub fn write_metrics(&self, w: &mut crate::metrics::MetricsWriter, labels: &[(&str, &str)]) {
        for (name, help, v) in [
            (
                "fetch_datagrams_in_total",
                "Datagrams received",
                self.datagrams_in,
            ),
            ("fetch_bytes_in_total", "Bytes received", self.bytes_in),
            (
                "fetch_datagrams_out_total",
                "Datagrams sent",
                self.datagrams_out,
            ),
            ("fetch_bytes_out_total", "Bytes sent", self.bytes_out),
            (
                "fetch_payload_bytes_total",
                "Log bytes sent",
                self.payload_bytes,
            ),
            ("fetch_requests_total", "Fetch requests", self.fetches),
            (
                "fetch_retries_total",
                "RETRY (address validation) sent",
                self.retries_sent,
            ),
            (
                "fetch_errors_total",
                "ERROR datagrams sent",
                self.errors_sent,
            ),
            (
                "fetch_dropped_malformed_total",
                "Malformed datagrams dropped",
                self.dropped_malformed,
            ),
            (
                "fetch_dropped_unvalidated_total",
                "Unvalidated datagrams too small to answer",
                self.dropped_unvalidated_small,
            ),
            (
                "fetch_dropped_duplicate_total",
                "Duplicate requests dropped",
                self.dropped_duplicate,
            ),
            (
                "fetch_long_polls_total",
                "Long polls parked",
                self.long_polls,
            ),
            (
                "fetch_window_stalls_total",
                "Responses held by a client window",
                self.window_stalls,
            ),
        ] {
            w.counter(name, help, labels, v);
        }
        for (cause, v) in self.tickets.rows() {
            let mut l = labels.to_vec();
            l.push(("cause", cause));
            w.counter(
                "fetch_ticket_rejected_total",
                "FETCHes refused for their fetch ticket, by cause",
                &l,
                v,
            );
        }
    }
}

impl std::fmt::Display for ServerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "in {} dgrams/{} B, out {} dgrams/{} B ({} data, {} payload B), fetches {}, acks {}, \
             retries {}, errors {}, long polls {} ({} expired), window stalls {}, sessions {} opened/{} expired, \
             dropped: malformed {}, wrong type {}, unvalidated-small {}, duplicate {}, busy {}, \
             tickets refused: missing {}, malformed {}, forged {}, expired {}, wrong address {}, \
             out of scope {}",
            self.datagrams_in,
            self.bytes_in,
            self.datagrams_out,
            self.bytes_out,
            self.data_datagrams,
            self.payload_bytes,
            self.fetches,
            self.acks,
            self.retries_sent,
            self.errors_sent,
            self.long_polls,
            self.long_polls_expired,
            self.window_stalls,
            self.sessions_opened,
            self.sessions_expired,
            self.dropped_malformed,
            self.dropped_wrong_type,
            self.dropped_unvalidated_small,
            self.dropped_duplicate,
            self.busy,
            self.tickets.missing,
            self.tickets.malformed,
            self.tickets.forged,
            self.tickets.expired,
            self.tickets.wrong_address,
            self.tickets.out_of_scope,
        )
    }
}

/// Fragmentation state of the batch being sent.
#[derive(Debug)]
struct Frag {
    start: usize,
    len: usize,
    base: i64,
    next: i64,
    link: i64,
    index: u16,
    count: u16,
    /// Payload bytes per fragment (the header of this batch's datagrams takes the rest).
    size: usize,
}

/// Smallest payload a datagram must keep next to its aborted-transaction list.
const MIN_PAYLOAD: usize = 64;

/// How one partition of a request is read and answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mode {
    /// Protocol version of the request (the answer's version).
    version: u8,
    /// read_committed (version 2 only).
    committed: bool,
}

impl Mode {
    fn of(req: &FetchRequest<'_>) -> Mode {
        Mode {
            version: req.version,
            committed: req.isolation == IsolationLevel::ReadCommitted,
        }
    }

    /// The offset a read_committed consumer may read up to, else the readable end.
    fn end(self, p: &Partition) -> i64 {
        if self.committed {
            p.offsets().last_stable.min(p.readable_end())
        } else {
            p.readable_end()
        }
    }
}

/// One partition's response: a slice cut into datagrams as they are sent.
#[derive(Debug)]
struct Job {
    req_id: u32,
    slot: u16,
    partition: i32,
    mode: Mode,
    slice: ReadSlice,
    /// Readable end as of the read (what the client may fetch up to).
    readable_end: i64,
    /// read_committed: the aborted transactions overlapping the response, in marker order;
    /// each datagram carries those overlapping its own batches.
    aborted: Vec<AbortedTxn>,
    /// Link offset of the next datagram (see [`DataHeader::link_offset`]).
    link: i64,
    cursor: usize,
    /// End of what this job sends (the slice end, or the end of a requested byte range).
    limit: usize,
    /// Start of a requested byte range, found on the first datagram.
    seek: Option<usize>,
    frag: Option<Frag>,
    started: bool,
    finished: bool,
    long_poll: bool,
    /// A parked poll answered with new data: when the data was detected and validated
    /// ([`crate::log::tail::TailStamps`]), recorded as hops when its first datagram leaves.
    tail: Option<(u64, u64)>,
    /// A whole (not ranged) response with data: its partition and first offset, traced
    /// ([`crate::log::tail_trace`]) when its first datagram leaves.
    trace: Option<(Arc<Partition>, i64)>,
}

impl Job {
    fn new(
        req_id: u32,
        slot: u16,
        partition: &Partition,
        offset: i64,
        slice: ReadSlice,
        range: (u32, u32),
        mode: Mode,
    ) -> Job {
        let limit = match range.1 {
            0 => slice.len,
            e => (e as usize).min(slice.len),
        };
        let aborted = if mode.committed && !slice.is_empty() {
            partition.aborted_overlapping(offset, slice.next_offset)
        } else {
            Vec::new()
        };
        Job {
            limit,
            seek: (range.0 > 0).then_some(range.0 as usize),
            req_id,
            slot,
            partition: partition.partition(),
            mode,
            readable_end: slice.offsets.readable_end(partition.isolation()),
            aborted,
            slice,
            link: offset,
            cursor: 0,
            frag: None,
            started: false,
            finished: false,
            long_poll: false,
            tail: None,
            trace: None,
        }
    }

    /// The header of the batch at byte `pos` of the slice, read with pread (never through
    /// the mapping: a segment truncated under the job is an error, not SIGBUS).
    fn batch_at(slice: &ReadSlice, pos: usize) -> Result<BatchHeader, String> {
        let h = slice
            .header_at(pos)
            .map_err(|e| format!("batch at {pos}: {e}"))?;
        if pos + h.total_len() > slice.len {
            return Err(format!("batch at {pos} runs past the slice"));
        }
        Ok(h)
    }

    /// The broker's overlap rule applied to the batches `[lo, hi)` of one datagram.
    fn aborted_in(&self, lo: i64, hi: i64) -> Vec<(i64, i64)> {
        self.aborted
            .iter()
            .filter(|t| t.last_offset >= lo && t.first_offset < hi)
            .map(|t| (t.producer_id, t.first_offset))
            .collect()
    }

    /// Payload room of a datagram holding batches `[lo, hi)`.
    fn room(&self, max_datagram: usize, lo: i64, hi: i64) -> Result<usize, String> {
        let n = if self.aborted.is_empty() {
            0
        } else {
            self.aborted_in(lo, hi).len()
        };
        let room = max_datagram.saturating_sub(wire::data_header_len(self.mode.version, n));
        if room < MIN_PAYLOAD {
            return Err(format!(
                "{n} aborted transactions overlap offsets {lo}..{hi}: no room left in a \
                 {max_datagram}-byte datagram"
            ));
        }
        Ok(room)
    }

    /// Fragmentation of the batch `bh` at byte `start`, from fragment `index` on.
    fn frag_of(&self, bh: &BatchHeader, start: usize, max_datagram: usize) -> Result<Frag, String> {
        let blen = bh.total_len();
        let size = self.room(max_datagram, bh.base_offset, bh.next_offset())?;
        let count = blen.div_ceil(size);
        let count = u16::try_from(count)
            .map_err(|_| format!("batch of {blen} bytes needs {count} fragments"))?;
        Ok(Frag {
            start,
            len: blen,
            base: bh.base_offset,
            next: bh.next_offset(),
            link: self.link,
            index: 0,
            count,
            size,
        })
    }

    /// Positions the job at byte `a` of the slice (a datagram boundary of the original
    /// response): finds the batch holding it and the link offset before it.
    fn seek_to(&mut self, a: usize, max_datagram: usize) -> Result<(), String> {
        let mut pos = 0;
        while pos < a {
            let bh = Self::batch_at(&self.slice, pos)?;
            let blen = bh.total_len();
            if pos + blen > a {
                let mut f = self.frag_of(&bh, pos, max_datagram)?;
                f.index = ((a - pos) / f.size).min(f.count as usize - 1) as u16;
                self.frag = Some(f);
                break;
            }
            self.link = bh.next_offset();
            pos += blen;
        }
        self.cursor = a;
        Ok(())
    }

    /// The fields every datagram of this response shares.
    fn header(&self) -> Result<DataHeader, String> {
        let total = self.limit;
        let o = self.slice.offsets;
        Ok(DataHeader {
            version: self.mode.version,
            request_id: self.req_id,
            slot: self.slot,
            partition: self.partition,
            resp_len: u32::try_from(total).map_err(|_| format!("response of {total} bytes"))?,
            resp_pos: self.cursor as u32,
            resp_next_offset: self.slice.next_offset,
            high_watermark: o.high_watermark,
            log_start: o.log_start,
            log_end: self.readable_end,
            last_stable: o.last_stable.min(self.readable_end),
            ..Default::default()
        })
    }

    /// Next datagram: header, payload offset and length within the slice.
    fn next_datagram(
        &mut self,
        max_datagram: usize,
    ) -> Result<Option<(DataHeader, usize, usize)>, String> {
        if self.finished {
            return Ok(None);
        }
        self.started = true;
        if let Some(a) = self.seek.take() {
            self.seek_to(a.min(self.limit), max_datagram)?;
        }
        let mut h = self.header()?;
        if self.cursor >= self.limit {
            // Nothing (left) to send: one datagram that says so, with the offsets.
            h.resp_pos = self.limit as u32;
            h.flags = FLAG_LAST;
            h.link_offset = self.link;
            h.base_offset = self.link;
            h.end_offset = self.link;
            self.finished = true;
            return Ok(Some((h, 0, 0)));
        }
        if self.frag.is_none() {
            let bh = Self::batch_at(&self.slice, self.cursor)?;
            let blen = bh.total_len();
            let room = self.room(max_datagram, bh.base_offset, bh.next_offset())?;
            if blen > room || self.cursor + blen > self.limit {
                self.frag = Some(self.frag_of(&bh, self.cursor, max_datagram)?);
            } else {
                return self.whole_batches(h, &bh, max_datagram).map(Some);
            }
        }
        self.fragment(h).map(Some)
    }

    /// As many whole batches as fit, from `bh` at the cursor on.
    fn whole_batches(
        &mut self,
        mut h: DataHeader,
        bh: &BatchHeader,
        max_datagram: usize,
    ) -> Result<(DataHeader, usize, usize), String> {
        let total = self.limit;
        let start = self.cursor;
        let mut end = start + bh.total_len();
        let mut end_offset = bh.next_offset();
        while end < total {
            let nh = Self::batch_at(&self.slice, end)?;
            let next_end = end + nh.total_len();
            if next_end > total {
                break;
            }
            // The aborted list only grows with the range, so the first batch that does not
            // fit ends the datagram.
            let room = self.room(max_datagram, bh.base_offset, nh.next_offset())?;
            if next_end - start > room {
                break;
            }
            end = next_end;
            end_offset = nh.next_offset();
        }
        h.link_offset = self.link;
        h.base_offset = bh.base_offset;
        h.end_offset = end_offset;
        h.aborted = self.aborted_in(bh.base_offset, end_offset);
        self.link = end_offset;
        self.cursor = end;
        if end == total {
            h.flags |= FLAG_LAST;
            self.finished = true;
        }
        Ok((h, start, end - start))
    }

    /// The next fragment of the batch being cut.
    fn fragment(&mut self, mut h: DataHeader) -> Result<(DataHeader, usize, usize), String> {
        let total = self.limit;
        let Some(f) = self.frag.as_mut() else {
            return Err("fragment state lost".into());
        };
        let start = self.cursor;
        let pos = start - f.start;
        let n = f.size.min(f.len - pos).min(total - start);
        h.flags = FLAG_FRAGMENT;
        h.link_offset = f.link;
        h.base_offset = f.base;
        h.end_offset = f.next;
        h.frag_index = f.index;
        h.frag_count = f.count;
        h.batch_len = f.len as u32;
        h.frag_pos = pos as u32;
        let (base, next) = (f.base, f.next);
        f.index += 1;
        self.cursor += n;
        if self.cursor == f.start + f.len {
            self.link = f.next;
            self.frag = None;
        }
        if self.cursor == total {
            h.flags |= FLAG_LAST;
            self.finished = true;
        }
        h.aborted = self.aborted_in(base, next);
        Ok((h, start, n))
    }
}

#[derive(Debug)]
struct ParkedPart {
    slot: u16,
    mode: Mode,
    partition: Arc<Partition>,
    offset: i64,
    max_bytes: usize,
}

#[derive(Debug)]
struct Parked {
    req_id: u32,
    deadline: Instant,
    parts: Vec<ParkedPart>,
    /// When it was parked ([`clock_ns`]): data validated later is a tailing reply.
    since: u64,
}

#[derive(Debug)]
struct Session {
    window: u64,
    /// Payload bytes sent for requests not yet acknowledged.
    inflight: u64,
    /// Requests below this id are acknowledged (finished at the client).
    floor: u32,
    /// Unacknowledged requests: payload bytes sent for each.
    reqs: HashMap<u32, u64>,
    jobs: VecDeque<Job>,
    parked: Vec<Parked>,
    last_seen: Instant,
    queued: bool,
    burst: usize,
}

/// The gateway's protocol state machine.
pub struct Server {
    log: Arc<LogDir>,
    cfg: ServerConfig,
    keys: TokenKeys,
    sessions: HashMap<SocketAddr, Session>,
    ready: VecDeque<SocketAddr>,
    control: VecDeque<Transmit>,
    stats: ServerStats,
    next_sweep: Option<Instant>,
    /// Scratch list of the partitions parked polls wait on (busy polling, every round).
    tails: Vec<Arc<Partition>>,
    /// This server's registration with the log: the partitions its parked polls wait on, so
    /// that only appends to those wake its loop (None: woken by hand, as in tests).
    watch: Option<Arc<Watch>>,
    /// Tests: runs once when a poll parks, between its empty read and its interest being
    /// registered (an append landing in that gap).
    #[cfg(test)]
    pub(crate) before_watching: Option<Box<dyn FnOnce() + Send>>,
}

enum PartOutcome {
    Data(Job),
    /// Nothing to read yet: park it (long poll) or answer with the empty job.
    Empty(Arc<Partition>, i64, usize, Job),
    Error(ErrorMsg),
}

impl Server {
    pub fn new(log: Arc<LogDir>, mut cfg: ServerConfig) -> Server {
        if cfg.max_datagram < MIN_DATAGRAM {
            log::warn!(
                "fetch: max datagram {} is too small, using {MIN_DATAGRAM}",
                cfg.max_datagram
            );
            cfg.max_datagram = MIN_DATAGRAM;
        }
        // Response lengths and positions are u32 on the wire.
        cfg.max_fetch_bytes = cfg.max_fetch_bytes.clamp(1, i32::MAX as u32);
        cfg.burst = cfg.burst.max(1);
        Server {
            log,
            keys: match cfg.token_secret {
                Some(s) => TokenKeys::with_secret(cfg.token_rotation, s),
                None => TokenKeys::new(cfg.token_rotation),
            },
            cfg,
            sessions: HashMap::new(),
            ready: VecDeque::new(),
            control: VecDeque::new(),
            stats: ServerStats::default(),
            next_sweep: None,
            tails: Vec::new(),
            watch: None,
            #[cfg(test)]
            before_watching: None,
        }
    }

    /// Registers the server's loop with the log: `watch` (built with the loop's waker) is
    /// told which partitions parked polls wait on, and the log wakes the loop only for
    /// appends to those.
    pub fn with_watch(mut self, watch: Arc<Watch>) -> Server {
        self.log.watch(&watch);
        self.watch = Some(watch);
        self
    }

    /// A parked poll's partitions are waited on (`true`) or no longer (`false`).
    fn set_waiting(&self, parts: &[ParkedPart], waiting: bool) {
        let Some(w) = &self.watch else { return };
        for pp in parts {
            if waiting {
                w.wait_on(pp.partition.topic_partition());
            } else {
                w.done_with(pp.partition.topic_partition());
            }
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Validated sessions currently known.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Rotates the address-validation secret now (tests; operators restart to revoke).
    pub fn rotate_secret(&mut self, now: Instant) {
        self.keys.rotate(now);
    }

    fn control(&mut self, dst: SocketAddr, header: Vec<u8>) {
        self.control.push_back(Transmit {
            dst,
            header,
            payload: None,
        });
    }

    fn error(&mut self, dst: SocketAddr, e: ErrorMsg) {
        self.stats.errors_sent += 1;
        self.control(dst, e.encode());
    }

    fn start_clocks(&mut self, now: Instant) {
        self.keys.tick(now);
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + Duration::from_secs(1));
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        self.start_clocks(now);
        match wire::peek_type(datagram) {
            Ok(MsgType::Fetch) => {}
            Ok(_) => {
                self.stats.dropped_wrong_type += 1;
                return;
            }
            Err(WireError::UnsupportedVersion(_)) if datagram.len() >= wire::ERROR_LEN => {
                // Small enough to send to anyone: no larger than what arrived. Version 1, as
                // the ERROR layout is the same in every version: any consumer reads it.
                let e = request_error(wire::VERSION_1, 0, ErrorCode::UnsupportedVersion);
                self.error(src, e);
                return;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        }
        let version = datagram[2];
        let (req_id, token) = match wire::fetch_token(datagram) {
            Ok(t) => t,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if !self.keys.verify(src.ip(), token) {
            self.unvalidated(src, version, req_id, datagram);
            return;
        }
        let req = match wire::decode_fetch(datagram) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("fetch: malformed request from {src}: {e}");
                self.stats.dropped_malformed += 1;
                let e = request_error(version, req_id, ErrorCode::MalformedRequest);
                self.error(src, e);
                return;
            }
        };
        if let Err(r) = self.check_ticket(now, src, &req) {
            self.refuse_ticket(src, &req, r, datagram.len());
            return;
        }
        self.handle_fetch(now, src, req);
    }

    /// With tickets required, every FETCH (acknowledgements too) carries a valid one
    /// covering its topics; versions 1 and 2 cannot, so they count as missing.
    fn check_ticket(
        &self,
        now: Instant,
        src: SocketAddr,
        req: &FetchRequest<'_>,
    ) -> Result<(), Reject> {
        let Some(keys) = &self.cfg.tickets else {
            return Ok(());
        };
        if req.version < wire::VERSION_3 {
            return Err(Reject::Missing);
        }
        keys.check(now, src.ip(), req.ticket, req.parts.iter().map(|p| p.topic))
            .map(|_| ())
    }

    /// One ERROR, nothing read: no larger than the request (anti-amplification holds
    /// whatever the source), else nothing.
    fn refuse_ticket(&mut self, src: SocketAddr, req: &FetchRequest<'_>, r: Reject, len: usize) {
        self.stats.tickets.count(r);
        log::debug!(
            "fetch: {src}: request {} refused: ticket {}",
            req.request_id,
            r.cause()
        );
        // The whole request is refused (nothing of it was read), so the slot is the request's.
        let code = match r {
            Reject::OutOfScope { .. } => ErrorCode::TopicAuthorizationFailed,
            _ => ErrorCode::Unauthenticated,
        };
        let e = request_error(req.version, req.request_id, code);
        if len >= wire::ERROR_LEN {
            self.error(src, e);
        }
    }

    /// Unvalidated: the only answer is a RETRY, and only when it is no larger than the
    /// datagram that asked (a spoofed source gets nothing it did not pay for).
    fn unvalidated(&mut self, src: SocketAddr, version: u8, req_id: u32, datagram: &[u8]) {
        if wire::decode_fetch(datagram).is_err() {
            self.stats.dropped_malformed += 1;
        } else if datagram.len() < MIN_INITIAL_LEN.max(wire::RETRY_LEN) {
            self.stats.dropped_unvalidated_small += 1;
        } else {
            self.stats.retries_sent += 1;
            let token = self.keys.mint(src.ip());
            let r = Retry {
                version,
                request_id: req_id,
                token,
            };
            self.control(src, r.encode());
        }
    }

    /// The session of `src` (opened now if new), its window and acknowledgement updated from
    /// `req`; None when the gateway has no room for another session.
    fn session_for(
        &mut self,
        now: Instant,
        src: SocketAddr,
        req: &FetchRequest<'_>,
    ) -> Option<&mut Session> {
        if !self.sessions.contains_key(&src) {
            if self.sessions.len() >= self.cfg.max_sessions {
                self.stats.busy += 1;
                self.error(src, busy(req.version, req.request_id));
                return None;
            }
            self.stats.sessions_opened += 1;
            self.sessions.insert(
                src,
                Session {
                    window: 0,
                    inflight: 0,
                    floor: 0,
                    reqs: HashMap::new(),
                    jobs: VecDeque::new(),
                    parked: Vec::new(),
                    last_seen: now,
                    queued: false,
                    burst: 0,
                },
            );
        }
        let max_window = self.cfg.max_window as u64;
        let max_datagram = self.cfg.max_datagram as u64;
        let s = self.sessions.get_mut(&src)?;
        s.last_seen = now;
        s.window = (req.window as u64).clamp(max_datagram, max_window);
        // Acknowledgement: everything below the floor is finished at the client.
        if wrapping_gt(req.ack_floor, s.floor) {
            let floor = req.ack_floor;
            let mut released = 0;
            s.reqs.retain(|&id, bytes| {
                let keep = !wrapping_gt(floor, id);
                if !keep {
                    released += *bytes;
                }
                keep
            });
            s.inflight = s.inflight.saturating_sub(released);
            // Responses the client gave up on are not worth sending; answered long polls
            // (parked, so outside the floor's order) still are.
            s.jobs
                .retain(|j| j.long_poll || !wrapping_gt(floor, j.req_id));
            s.floor = floor;
        }
        Some(s)
    }

    fn handle_fetch(&mut self, now: Instant, src: SocketAddr, req: FetchRequest<'_>) {
        let (max_parts, max_requests) = (self.cfg.max_parts, self.cfg.max_requests);
        let Some(s) = self.session_for(now, src, &req) else {
            return;
        };
        let mut queued_now = false;
        if !s.queued && !s.jobs.is_empty() {
            s.queued = true;
            queued_now = true;
        }
        // Duplicated or stale request: it was (or is being) answered already. A long poll is
        // the exception to "below the floor": the client's floor skips long polls, so the
        // acknowledgement sent right after one may overtake it (reordering).
        let stale = wrapping_gt(s.floor, req.request_id) && req.max_wait_ms == 0;
        let duplicate = !req.parts.is_empty() && (stale || s.reqs.contains_key(&req.request_id));
        let too_many = !duplicate && req.parts.len() > max_parts;
        let busy_now = !duplicate && !too_many && s.reqs.len() >= max_requests;
        if !req.parts.is_empty() && !duplicate && !too_many && !busy_now {
            s.reqs.insert(req.request_id, 0);
        }
        if queued_now {
            self.ready.push_back(src);
        }
        if req.parts.is_empty() {
            self.stats.acks += 1;
        } else if duplicate {
            self.stats.dropped_duplicate += 1;
        } else if too_many {
            self.stats.dropped_malformed += 1;
            let e = request_error(req.version, req.request_id, ErrorCode::MalformedRequest);
            self.error(src, e);
        } else if busy_now {
            self.stats.busy += 1;
            self.error(src, busy(req.version, req.request_id));
        } else {
            self.stats.fetches += 1;
            self.answer_fetch(now, src, &req);
        }
    }

    /// Reads every partition of an accepted request: answers now, or parks it (long poll).
    fn answer_fetch(&mut self, now: Instant, src: SocketAddr, req: &FetchRequest<'_>) {
        let mode = Mode::of(req);
        let mut outcomes = Vec::with_capacity(req.parts.len());
        for (slot, p) in req.parts.iter().enumerate() {
            outcomes.push(self.read_part(req.request_id, slot as u16, p, mode));
        }
        let any_data = outcomes.iter().any(|o| matches!(o, PartOutcome::Data(_)));
        let any_empty = outcomes.iter().any(|o| matches!(o, PartOutcome::Empty(..)));
        let wait = Duration::from_millis(req.max_wait_ms as u64).min(self.cfg.max_wait);
        let max_parked = self.cfg.max_parked;
        let mut park = !any_data && any_empty && !wait.is_zero();
        if park {
            let parked = self.sessions.get(&src).map_or(0, |s| s.parked.len());
            if parked >= max_parked {
                // Answer now (empty) rather than hold unbounded state.
                self.stats.busy += 1;
                park = false;
            }
        }
        // The client's ack_floor skips long-poll requests (parked or not: it cannot know
        // which), so their answers must survive the floor passing them. Without this, a long
        // poll that found data at once was dropped by the very next acknowledgement when
        // both arrived before the answer went out, and the tailing consumer stalled.
        let long_poll = req.max_wait_ms > 0;
        let mut parked_parts = Vec::new();
        let mut jobs = Vec::new();
        for (slot, o) in outcomes.into_iter().enumerate() {
            match o {
                PartOutcome::Error(e) => self.error(src, e),
                PartOutcome::Data(mut job) => {
                    job.long_poll = long_poll;
                    jobs.push(job);
                }
                PartOutcome::Empty(partition, offset, max_bytes, mut job) => {
                    if park {
                        parked_parts.push(ParkedPart {
                            slot: slot as u16,
                            mode,
                            partition,
                            offset,
                            max_bytes,
                        });
                    } else {
                        job.long_poll = long_poll;
                        jobs.push(job);
                    }
                }
            }
        }
        if park {
            self.stats.long_polls += 1;
            #[cfg(test)]
            if let Some(f) = self.before_watching.take() {
                f();
            }
            self.set_waiting(&parked_parts, true);
            // An append announced after the read above but before the interest was
            // registered woke nobody: look again (no lost wake-up).
            let landed = parked_parts
                .iter()
                .any(|pp| pp.mode.end(&pp.partition) > pp.offset);
            if let Some(s) = self.sessions.get_mut(&src) {
                s.parked.push(Parked {
                    req_id: req.request_id,
                    deadline: now + wait,
                    parts: parked_parts,
                    since: clock_ns(),
                });
            }
            if landed {
                self.answer_parked(now);
            }
        }
        self.enqueue(src, jobs);
    }

    fn read_part(
        &self,
        req_id: u32,
        slot: u16,
        p: &wire::PartRequest<'_>,
        mode: Mode,
    ) -> PartOutcome {
        let Some(partition) = self.log.partition(p.topic, p.partition) else {
            return PartOutcome::Error(ErrorMsg {
                version: mode.version,
                request_id: req_id,
                slot,
                code: ErrorCode::UnknownTopicOrPartition,
                partition: p.partition,
                log_start: -1,
                log_end: -1,
                high_watermark: -1,
            });
        };
        let max_bytes = p.max_bytes.clamp(1, self.cfg.max_fetch_bytes) as usize;
        let offset = match p.offset {
            OFFSET_EARLIEST => partition.offsets().log_start,
            // read_committed: "latest" is the last stable offset, as in Kafka's ListOffsets.
            OFFSET_LATEST => mode.end(&partition),
            o => o,
        };
        let range = (p.range_start, p.range_end);
        let read = JobRead {
            req_id,
            slot,
            offset,
            max_bytes,
            range,
            mode,
        };
        match read.run(&partition) {
            // A ranged repair is never parked: its data exists.
            PartOutcome::Data(j) if j.slice.is_empty() && range == (0, 0) => {
                PartOutcome::Empty(partition, offset, max_bytes, j)
            }
            other => other,
        }
    }

    fn enqueue(&mut self, src: SocketAddr, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&src) {
            s.jobs.extend(jobs);
            if !s.queued {
                s.queued = true;
                self.ready.push_back(src);
            }
        }
    }

    /// Next datagram to send; `None` when nothing is ready (idle, or windows full).
    /// (`now` is part of the contract for transports; this core paces by windows, not time.)
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        if let Some(t) = self.control.pop_front() {
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += t.len() as u64;
            return Some(t);
        }
        let max_datagram = self.cfg.max_datagram;
        let mut turns = self.ready.len() * 2 + 1;
        while turns > 0 {
            turns -= 1;
            let addr = *self.ready.front()?;
            let Some(s) = self.sessions.get_mut(&addr) else {
                self.ready.pop_front();
                continue;
            };
            let Some(job) = s.jobs.front_mut() else {
                s.queued = false;
                s.burst = 0;
                self.ready.pop_front();
                continue;
            };
            // Flow control at response granularity: a response starts only when it fits
            // the window (or nothing else is in flight); once started it runs to its end,
            // so a window smaller than a response cannot deadlock.
            if !job.started && s.inflight > 0 && s.inflight + job.limit as u64 > s.window {
                self.stats.window_stalls += 1;
                s.queued = false;
                s.burst = 0;
                self.ready.pop_front();
                continue;
            }
            match job.next_datagram(max_datagram) {
                Ok(Some(d)) => {
                    let t = data_transmit(s, &mut self.ready, &self.log, self.cfg.burst, addr, d);
                    self.stats.datagrams_out += 1;
                    self.stats.data_datagrams += 1;
                    self.stats.bytes_out += t.len() as u64;
                    self.stats.payload_bytes += t.payload.as_ref().map_or(0, |p| p.len) as u64;
                    return Some(t);
                }
                Ok(None) => {
                    s.jobs.pop_front();
                }
                Err(reason) => {
                    if let Some(j) = s.jobs.pop_front() {
                        return Some(self.storage_error(addr, j, &reason));
                    }
                }
            }
        }
        None
    }

    /// A response that cannot be cut into datagrams (the segment changed under it, or too
    /// many aborted transactions for the datagram size): STORAGE_ERROR for its partition.
    fn storage_error(&mut self, addr: SocketAddr, j: Job, reason: &str) -> Transmit {
        log::error!(
            "fetch: {}: cannot cut response into datagrams: {reason}",
            j.slice.path.display()
        );
        let o = j.slice.offsets;
        let e = ErrorMsg {
            version: j.mode.version,
            request_id: j.req_id,
            slot: j.slot,
            code: ErrorCode::StorageError,
            partition: j.partition,
            log_start: o.log_start,
            log_end: j.readable_end,
            high_watermark: o.high_watermark,
        };
        self.stats.errors_sent += 1;
        let t = Transmit {
            dst: addr,
            header: e.encode(),
            payload: None,
        };
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += t.len() as u64;
        t
    }

    /// When [`Server::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.keys.next_rotation();
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if !self.sessions.is_empty() {
            if let Some(s) = self.next_sweep {
                min(s);
            }
        }
        for s in self.sessions.values() {
            for p in &s.parked {
                min(p.deadline);
            }
        }
        t
    }

    /// Long-poll expiry, secret rotation, idle-session expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.start_clocks(now);
        self.answer_parked(now);
        if self.next_sweep.is_some_and(|t| now >= t) {
            self.next_sweep = Some(now + Duration::from_secs(1));
            let idle = self.cfg.session_idle;
            let before = self.sessions.len();
            let mut gone = Vec::new();
            self.sessions.retain(|_, s| {
                let keep = now.duration_since(s.last_seen) < idle;
                if !keep {
                    gone.append(&mut s.parked);
                }
                keep
            });
            for p in &gone {
                self.set_waiting(&p.parts, false);
            }
            self.stats.sessions_expired += (before - self.sessions.len()) as u64;
        }
    }

    /// The log grew: answer the long polls whose partitions now have data.
    pub fn handle_log_append(&mut self, now: Instant) {
        self.answer_parked(now);
    }

    /// Busy polling: checks the tail of every partition a parked poll waits on (one fstat
    /// each; only the new bytes validated when one grew, see [`LogDir::poll_tail`]) and
    /// answers the polls that now have data, on this thread and this round. True if a tail
    /// advanced.
    pub fn poll_tails(&mut self, now: Instant) -> bool {
        let mut tails = std::mem::take(&mut self.tails);
        for s in self.sessions.values() {
            for pp in s.parked.iter().flat_map(|p| &p.parts) {
                if !tails.iter().any(|t| Arc::ptr_eq(t, &pp.partition)) {
                    tails.push(pp.partition.clone());
                }
            }
        }
        // One batch for the round; the other loops waiting on these partitions are woken,
        // this one answers below (no self-wake).
        let advanced = self
            .log
            .poll_tails(&tails, self.watch.as_ref().map(|w| w.id()));
        tails.clear();
        self.tails = tails;
        if advanced {
            self.answer_parked(now);
        }
        advanced
    }

    fn answer_parked(&mut self, now: Instant) {
        let mut answered: Vec<(SocketAddr, Parked)> = Vec::new();
        for (addr, s) in self.sessions.iter_mut() {
            let mut i = 0;
            while i < s.parked.len() {
                let p = &s.parked[i];
                let expired = now >= p.deadline;
                let has_data = p
                    .parts
                    .iter()
                    .any(|pp| pp.mode.end(&pp.partition) > pp.offset);
                // Data may also have arrived without an append notification (another
                // worker refreshed the log): any check answers it.
                if expired || has_data {
                    if expired && !has_data {
                        self.stats.long_polls_expired += 1;
                    }
                    answered.push((*addr, s.parked.swap_remove(i)));
                } else {
                    i += 1;
                }
            }
        }
        for (addr, p) in answered {
            self.set_waiting(&p.parts, false);
            let mut jobs = Vec::new();
            for pp in p.parts {
                let read = JobRead {
                    req_id: p.req_id,
                    slot: pp.slot,
                    offset: pp.offset,
                    max_bytes: pp.max_bytes,
                    range: (0, 0),
                    mode: pp.mode,
                };
                match read.run(&pp.partition) {
                    PartOutcome::Data(mut j) | PartOutcome::Empty(_, _, _, mut j) => {
                        j.long_poll = true;
                        if !j.slice.is_empty() {
                            j.tail = pp.partition.tail_stamps().get().filter(|s| s.1 >= p.since);
                        }
                        jobs.push(j);
                    }
                    PartOutcome::Error(e) => self.error(addr, e),
                }
            }
            self.enqueue(addr, jobs);
        }
    }
}

/// An ERROR about a whole request.
fn request_error(version: u8, request_id: u32, code: ErrorCode) -> ErrorMsg {
    ErrorMsg {
        version,
        request_id,
        slot: SLOT_REQUEST,
        code,
        partition: -1,
        log_start: -1,
        log_end: -1,
        high_watermark: -1,
    }
}

fn busy(version: u8, request_id: u32) -> ErrorMsg {
    request_error(version, request_id, ErrorCode::Busy)
}

/// Serial-number comparison (RFC 1982) so request ids may wrap.
pub(crate) fn wrapping_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

/// One partition read of a request.
struct JobRead {
    req_id: u32,
    slot: u16,
    offset: i64,
    max_bytes: usize,
    range: (u32, u32),
    mode: Mode,
}

impl JobRead {
    /// Reads the partition and turns the result into a response job (an empty read is still
    /// a job: it sends the one datagram that says "nothing yet", with the offsets).
    fn run(&self, partition: &Arc<Partition>) -> PartOutcome {
        let (req_id, slot, offset) = (self.req_id, self.slot, self.offset);
        let error = |code, log_start, log_end, high_watermark| {
            PartOutcome::Error(ErrorMsg {
                version: self.mode.version,
                request_id: req_id,
                slot,
                code,
                partition: partition.partition(),
                log_start,
                log_end,
                high_watermark,
            })
        };
        match partition.read_isolated(offset, self.max_bytes, self.mode.committed) {
            Ok(slice) => {
                let traced = !slice.is_empty() && self.range == (0, 0);
                let mut j = Job::new(
                    req_id, slot, partition, offset, slice, self.range, self.mode,
                );
                j.trace = traced.then(|| (Arc::clone(partition), offset));
                PartOutcome::Data(j)
            }
            Err(LogError::OffsetOutOfRange {
                log_start, log_end, ..
            }) => error(
                ErrorCode::OffsetOutOfRange,
                log_start,
                log_end,
                partition.offsets().high_watermark,
            ),
            Err(e) => {
                log::error!(
                    "fetch: {}: read at offset {offset}: {e}",
                    partition.topic_partition()
                );
                let o = partition.offsets();
                error(
                    ErrorCode::StorageError,
                    o.log_start,
                    partition.readable_end(),
                    o.high_watermark,
                )
            }
        }
    }
}

/// Accounts, in session `s` (of `addr`), for the DATA datagram its front job just cut, and
/// turns it into a transmit; moves the session on in the round robin after its burst. Takes
/// the session its caller already looked up: one map lookup per datagram, not two.
fn data_transmit(
    s: &mut Session,
    ready: &mut VecDeque<SocketAddr>,
    log: &LogDir,
    burst: usize,
    addr: SocketAddr,
    d: (DataHeader, usize, usize),
) -> Transmit {
    let (h, offset, len) = d;
    let mut payload = None;
    if let Some(job) = s.jobs.front_mut() {
        let sent = (job.tail.is_some() || job.trace.is_some()).then(clock_ns);
        if let (Some(stamps), Some(sent)) = (job.tail.take(), sent) {
            log.tail_hops().record(stamps, sent);
        }
        if let (Some((p, from)), Some(sent)) = (job.trace.take(), sent) {
            let span = (from, job.slice.next_offset);
            log.tail_trace().reply(
                (p.topic(), p.partition()),
                Via::Fetch,
                span,
                sent,
                job.long_poll,
            );
        }
        payload = (len > 0).then(|| Payload {
            slice: job.slice.clone(),
            offset,
            len,
        });
        if job.finished {
            s.jobs.pop_front();
        }
    }
    // Bytes of an acknowledged request (a long poll answered after the floor passed it) are
    // not waited for: inflight = sum of `reqs`.
    if let Some(b) = s.reqs.get_mut(&h.request_id) {
        *b += len as u64;
        s.inflight += len as u64;
    }
    s.burst += 1;
    if s.burst >= burst || s.jobs.is_empty() {
        s.burst = 0;
        ready.pop_front();
        if s.jobs.is_empty() {
            s.queued = false;
        } else {
            ready.push_back(addr);
        }
    }
    Transmit {
        dst: addr,
        header: h.encode(),
        payload,
    }
}
