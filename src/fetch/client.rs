//! Consumer side of the fetch protocol.
//!
//! Per partition the client pipelines fetches (every DATA datagram names where its response
//! ends, so the next fetch goes out as soon as any datagram of the previous one arrives),
//! keeps the bytes it asks for within its window, reassembles fragments, checks every batch's
//! CRC32C, and delivers batches exactly once and in offset order. Loss is found per request:
//! byte ranges of a response that never arrived (seen when the response's last datagram or
//! any datagram of a later request arrives, or when the flow stops for an RTO) are fetched
//! again by offset. A batch's `link_offset` (no batch lies between it and the batch) makes
//! delivery order independent of offset gaps (compacted logs).
//!
//! Transactions (protocol version 2): control batches are never delivered; read_committed
//! fetches stop at the last stable offset and the batches of aborted transactions are
//! dropped as librdkafka drops them ([`AbortedFilter`], fed from the aborted list of every
//! DATA datagram). Positions still move past what is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::log::batch;
use crate::log::txn::filter::{AbortedFilter, Verdict};

use super::server::wrapping_gt;
use super::wire::{
    self, DataHeader, ErrorCode, ErrorMsg, FetchRequest, IsolationLevel, MsgType, PartRequest,
    Retry, MIN_INITIAL_LEN, OFFSET_EARLIEST, OFFSET_LATEST, SLOT_REQUEST, TOKEN_LEN,
};

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Offset(i64),
    Earliest,
    Latest,
}

#[derive(Clone, Debug)]
pub struct Subscription {
    pub topic: String,
    pub partition: i32,
    pub start: StartAt,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Bytes the client lets be in flight toward it (keep it below the socket receive buffer).
    pub window: u32,
    /// max_bytes of each pipelined fetch.
    pub fetch_bytes: u32,
    /// At the log end keep long-polling (tail) instead of reporting `CaughtUp`.
    pub follow: bool,
    /// Long-poll wait asked of the gateway.
    pub max_wait: Duration,
    /// Without any answer to the handshake for this long the gateway is `Unreachable`.
    pub connect_timeout: Duration,
    /// First handshake retransmission interval (doubles).
    pub handshake_interval: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    /// Undelivered reassembled bytes held per partition before pipelining pauses.
    pub max_buffered: usize,
    /// On "offset out of range" jump to the log start (or end) instead of failing.
    pub auto_reset: bool,
    /// Largest batch accepted for reassembly.
    pub max_batch: u32,
    /// read_committed: nothing at or past the last stable offset, no aborted records.
    pub isolation: IsolationLevel,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            window: 4 << 20,
            fetch_bytes: 1 << 20,
            follow: false,
            max_wait: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            handshake_interval: Duration::from_millis(100),
            rto_min: Duration::from_millis(10),
            rto_max: Duration::from_secs(2),
            max_buffered: 64 << 20,
            auto_reset: true,
            max_batch: 64 << 20,
            isolation: IsolationLevel::ReadUncommitted,
        }
    }
}

/// One batch handed to the application, in offset order, exactly once.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// Index of the subscription.
    pub sub: usize,
    pub partition: i32,
    pub base_offset: i64,
    pub next_offset: i64,
    /// Records below this offset were delivered before (or precede the start offset).
    pub from_offset: i64,
    /// The whole batch, CRC-checked.
    pub data: Vec<u8>,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// The handshake completed (a token arrived).
    Connected,
    Batch(Delivered),
    /// Everything up to the readable end has been delivered (not following).
    CaughtUp {
        sub: usize,
        offset: i64,
        high_watermark: i64,
    },
    /// The position was out of range and moved (`auto_reset`).
    OffsetReset {
        sub: usize,
        from: i64,
        to: i64,
    },
    /// The subscription stopped on an error.
    PartitionError {
        sub: usize,
        code: ErrorCode,
        log_start: i64,
        log_end: i64,
    },
    /// No answer to the handshake within `connect_timeout`.
    Unreachable,
}

#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub requests: u64,
    pub acks: u64,
    /// Payload bytes that added data.
    pub payload_bytes: u64,
    pub duplicate_datagrams: u64,
    pub stale_datagrams: u64,
    pub malformed: u64,
    pub crc_errors: u64,
    /// Re-fetches of lost byte ranges and the bytes they asked for.
    pub refetches: u64,
    pub refetch_bytes: u64,
    /// Requests finished by a timeout (the flow stopped) vs. by a later datagram.
    pub timeouts: u64,
    pub gap_detections: u64,
    pub retries: u64,
    pub delivered_batches: u64,
    pub delivered_bytes: u64,
    /// Batches not delivered: control batches (markers) and those of aborted transactions.
    pub skipped_control: u64,
    pub skipped_aborted: u64,
    pub handshakes: u64,
    /// Partial batches dropped because a fragment disagreed with them (batch length or end):
    /// one of the two was damaged in transit; the batch is fetched again.
    pub conflicting_fragments: u64,
    /// Times delivery was blocked with nothing in flight or queued that could unblock it
    /// (damaged headers that passed the UDP checksum misled the accounting): fetched again
    /// from the delivery position.
    pub resyncs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The next fetch of a partition's pipeline.
    Pipeline,
    /// A long poll at the log end.
    LongPoll,
    /// A re-fetch of lost data: the same read again, only the missing byte range.
    Repair,
}

#[derive(Clone, Debug)]
struct Want {
    sub: usize,
    offset: i64,
    max_bytes: u32,
    /// Byte range of the read's response to send (0..0: all).
    range: (u32, u32),
    /// A repair is moot once everything below this offset is delivered.
    covers_to: i64,
    kind: Kind,
}

impl Want {
    fn fresh(sub: usize, offset: i64, max_bytes: u32, kind: Kind) -> Want {
        Want {
            sub,
            offset,
            max_bytes,
            range: (0, 0),
            covers_to: i64::MIN,
            kind,
        }
    }

    /// Bytes this want may bring in.
    fn cost(&self) -> u64 {
        match self.range {
            (0, 0) => self.max_bytes as u64,
            (a, b) => b.saturating_sub(a) as u64,
        }
    }
}

/// What a received datagram covers of its response.
#[derive(Clone, Copy, Debug)]
struct Dgram {
    pos: u32,
    end: u32,
    /// The data before this datagram is all delivered once delivery reaches this offset.
    hole_target: i64,
}

#[derive(Debug)]
struct Part {
    want: Want,
    resp_len: Option<u32>,
    resp_next: Option<i64>,
    got: BTreeMap<u32, Dgram>,
    received: u64,
    done: bool,
}

#[derive(Debug)]
struct Req {
    sent_at: Instant,
    long_poll: bool,
    parts: Vec<Part>,
    any_rx: bool,
    check_at: Option<Instant>,
    /// Which ticket it carried ([`Client::set_ticket`] counts them).
    ticket_gen: u32,
}

#[derive(Debug)]
struct Stored {
    link: i64,
    data: Vec<u8>,
    base: i64,
}

#[derive(Debug)]
struct Assembly {
    link: i64,
    next: i64,
    buf: Vec<u8>,
    /// Received byte ranges (sorted, disjoint).
    have: Vec<(u32, u32)>,
}

impl Assembly {
    fn covered(&self) -> usize {
        self.have.iter().map(|(a, b)| (b - a) as usize).sum()
    }

    /// Copies a fragment in; returns the bytes it newly covered (0: duplicate).
    fn add(&mut self, pos: u32, data: &[u8]) -> usize {
        let end = pos + data.len() as u32;
        if self.have.iter().any(|&(a, b)| a <= pos && end <= b) {
            return 0;
        }
        let before = self.covered();
        self.buf[pos as usize..end as usize].copy_from_slice(data);
        self.have.push((pos, end));
        self.have.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.have.len());
        for &(a, b) in &self.have {
            match merged.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.have = merged;
        self.covered() - before
    }

    fn complete(&self) -> bool {
        self.have == [(0, self.buf.len() as u32)]
    }
}

#[derive(Debug)]
struct Sub {
    topic: String,
    partition: i32,
    /// Next offset to deliver (None until a sentinel start is resolved).
    deliver_next: Option<i64>,
    /// Offset of the next pipelined fetch; None while waiting to learn where the previous ends.
    pipe_next: Option<i64>,
    pipe_req: Option<u32>,
    at_end: bool,
    long_poll_out: bool,
    caught_up_reported: bool,
    done: bool,
    store: BTreeMap<i64, Stored>,
    frags: HashMap<i64, Assembly>,
    buffered: usize,
    high_watermark: i64,
    /// Aborted transactions not yet ended by their marker (read_committed).
    aborted: AbortedFilter,
}

#[derive(Debug, PartialEq, Eq)]
enum Conn {
    Handshake {
        started: Option<Instant>,
        next_probe: Option<Instant>,
        interval: Duration,
    },
    Ready,
    Unreachable,
}

/// The consumer's protocol state machine. All datagrams go to (and must come from) `server`.
pub struct Client {
    cfg: ClientConfig,
    server: SocketAddr,
    token: Option<[u8; TOKEN_LEN]>,
    /// Fetch ticket (from the gateway's Kafka listener): sent in every FETCH, version 3.
    ticket: Option<Vec<u8>>,
    /// Tickets set so far, and when the gateway first refused the current one (expired):
    /// new requests wait for a renewed ticket, and fail if none comes within
    /// `connect_timeout`.
    ticket_gen: u32,
    ticket_refused: Option<Instant>,
    conn: Conn,
    subs: Vec<Sub>,
    reqs: BTreeMap<u32, Req>,
    next_id: u32,
    floor_sent: u32,
    wants: VecDeque<Want>,
    tx: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    stats: ClientStats,
    srtt: Option<Duration>,
    rttvar: Duration,
    last_rx: Option<Instant>,
    /// Batch buffers handed back with [`Client::recycle`], reused for the next batches: a
    /// fresh allocation per batch made a fast consumer spend its time in page faults.
    spare: Spare,
}

const MAX_PARTS_PER_REQUEST: usize = 32;

/// Recycled batch buffers, at most `limit` bytes of capacity in all: the client's window, so
/// a window's worth of batches in flight is served from them (a smaller pool left most
/// batches to fresh allocations, which glibc then returned to the kernel and faulted back in).
#[derive(Debug, Default)]
struct Spare {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
    limit: usize,
}

impl Spare {
    fn take(&mut self) -> Vec<u8> {
        let b = self.bufs.pop().unwrap_or_default();
        self.bytes -= b.capacity();
        b
    }

    fn put(&mut self, mut buf: Vec<u8>) {
        if self.bytes + buf.capacity() <= self.limit {
            buf.clear();
            self.bytes += buf.capacity();
            self.bufs.push(buf);
        }
    }

    /// A buffer holding `bytes`.
    fn with(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut b = self.take();
        b.extend_from_slice(bytes);
        b
    }

    /// A zeroed buffer of `len` bytes.
    fn zeroed(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.take();
        b.resize(len, 0);
        b
    }
}

impl Client {
    pub fn new(server: SocketAddr, cfg: ClientConfig, subs: Vec<Subscription>) -> Client {
        let subs = subs
            .into_iter()
            .map(|s| {
                let (deliver_next, pipe_next) = match s.start {
                    StartAt::Offset(o) => (Some(o), o),
                    StartAt::Earliest => (None, OFFSET_EARLIEST),
                    StartAt::Latest => (None, OFFSET_LATEST),
                };
                Sub {
                    topic: s.topic,
                    partition: s.partition,
                    deliver_next,
                    pipe_next: Some(pipe_next),
                    pipe_req: None,
                    at_end: false,
                    long_poll_out: false,
                    caught_up_reported: false,
                    done: false,
                    store: BTreeMap::new(),
                    frags: HashMap::new(),
                    buffered: 0,
                    high_watermark: -1,
                    aborted: AbortedFilter::default(),
                }
            })
            .collect();
        let interval = cfg.handshake_interval;
        let spare_limit = cfg.window as usize;
        Client {
            cfg,
            server,
            token: None,
            ticket: None,
            ticket_gen: 0,
            ticket_refused: None,
            conn: Conn::Handshake {
                started: None,
                next_probe: None,
                interval,
            },
            subs,
            reqs: BTreeMap::new(),
            next_id: 1,
            floor_sent: 0,
            wants: VecDeque::new(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            stats: ClientStats::default(),
            srtt: None,
            rttvar: Duration::ZERO,
            last_rx: None,
            spare: Spare {
                limit: spare_limit,
                ..Spare::default()
            },
        }
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends `ticket` in every FETCH from now on (protocol version 3); a renewed ticket
    /// replaces the last one.
    pub fn set_ticket(&mut self, ticket: Vec<u8>) {
        self.ticket = Some(ticket);
        self.ticket_gen = self.ticket_gen.wrapping_add(1);
        self.ticket_refused = None;
    }

    /// Whether the gateway refused the current ticket (expired, or its key retired): the
    /// caller renews it at once ([`Client::set_ticket`]); meanwhile nothing new is asked for.
    pub fn ticket_refused(&self) -> bool {
        self.ticket_refused.is_some()
    }

    /// The version of the FETCHes sent: 3 with a ticket, else [`wire::VERSION`].
    fn version(&self) -> u8 {
        if self.ticket.is_some() {
            wire::VERSION_3
        } else {
            wire::VERSION
        }
    }

    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    pub fn is_connected(&self) -> bool {
        self.conn == Conn::Ready
    }

    /// Every subscription stopped (caught up without `follow`, or failed).
    /// Hands back the buffer of a delivered batch ([`Delivered::data`]) for reuse. Optional:
    /// a consumer that keeps its batches just does not call it.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.spare.put(buf);
    }

    pub fn is_finished(&self) -> bool {
        self.conn == Conn::Unreachable || self.subs.iter().all(|s| s.done)
    }

    /// One line of what the client waits for (requests, repairs, per-partition positions and
    /// partial batches): for a debug log when a transfer does not finish.
    pub fn state_summary(&self) -> String {
        let mut out = format!(
            "{} request(s) out (oldest {:?}), {} repair(s) queued, malformed {}, conflicting fragments {}, resyncs {}",
            self.reqs.len(),
            self.reqs.keys().next(),
            self.wants.len(),
            self.stats.malformed,
            self.stats.conflicting_fragments,
            self.stats.resyncs
        );
        for (i, s) in self.subs.iter().enumerate() {
            let frags: Vec<String> = s
                .frags
                .iter()
                .take(4)
                .map(|(b, a)| format!("{b}..{} {}/{} B", a.next, a.covered(), a.buf.len()))
                .collect();
            out += &format!(
                "; {}-{}: deliver {:?}{}, pipe {:?} (req {:?}), at_end {}, done {}, stored {} (first {:?}), partial batches {} {frags:?}",
                s.topic,
                s.partition,
                s.deliver_next,
                if self.delivery_blocked(i) {
                    " (blocked: nothing in flight can unblock it)"
                } else {
                    ""
                },
                s.pipe_next,
                s.pipe_req,
                s.at_end,
                s.done,
                s.store.len(),
                s.store.first_key_value().map(|(k, b)| (b.link, *k)),
                s.frags.len(),
            );
        }
        out
    }

    /// Next offset to deliver per subscription.
    pub fn positions(&self) -> Vec<Option<i64>> {
        self.subs.iter().map(|s| s.deliver_next).collect()
    }

    /// Highest high watermark seen for subscription `sub`.
    pub fn high_watermark(&self, sub: usize) -> Option<i64> {
        self.subs
            .get(sub)
            .map(|s| s.high_watermark)
            .filter(|&h| h >= 0)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`Client::poll_event`] has something.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn rto(&self) -> Duration {
        let r = match self.srtt {
            Some(s) => s + 4 * self.rttvar,
            None => Duration::from_millis(100),
        };
        r.clamp(self.cfg.rto_min, self.cfg.rto_max)
    }

    fn reorder_delay(&self) -> Duration {
        (self.srtt.unwrap_or(Duration::from_millis(4)) / 4).max(Duration::from_millis(1))
    }

    fn rtt_sample(&mut self, s: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(s);
                self.rttvar = s / 2;
            }
            Some(srtt) => {
                let d = srtt.abs_diff(s);
                self.rttvar = (self.rttvar * 3 + d) / 4;
                self.srtt = Some((srtt * 7 + s) / 8);
            }
        }
    }

    /// Smallest unfinished request id; long polls do not hold it back (the gateway keeps
    /// them parked regardless), so a parked poll never closes the window of other fetches.
    fn ack_floor(&self) -> u32 {
        self.reqs
            .iter()
            .find(|(_, r)| !r.long_poll)
            .map(|(&id, _)| id)
            .unwrap_or(self.next_id)
    }

    // ---------------------------------------------------------------- receive

    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        if src != self.server {
            self.stats.stale_datagrams += 1;
            return;
        }
        match wire::peek_type(datagram) {
            Ok(MsgType::Retry) => match Retry::decode(datagram) {
                Ok(r) => self.handle_retry(r),
                Err(_) => self.stats.malformed += 1,
            },
            Ok(MsgType::Data) => match DataHeader::decode(datagram) {
                Ok((h, payload)) => {
                    self.last_rx = Some(now);
                    self.handle_data(now, h, payload);
                }
                Err(e) => {
                    log::debug!("fetch client: bad DATA: {e}");
                    self.stats.malformed += 1;
                }
            },
            Ok(MsgType::Error) => match ErrorMsg::decode(datagram) {
                Ok(e) => {
                    self.last_rx = Some(now);
                    self.handle_error(now, e);
                }
                Err(_) => self.stats.malformed += 1,
            },
            _ => self.stats.malformed += 1,
        }
    }

    fn handle_retry(&mut self, r: Retry) {
        self.token = Some(r.token);
        self.stats.retries += 1;
        if matches!(self.conn, Conn::Handshake { .. }) {
            self.conn = Conn::Ready;
            self.events.push_back(Event::Connected);
        }
        // A request refused for its token (rotated secret): ask again with the new one.
        if let Some(req) = self.reqs.remove(&r.request_id) {
            for p in req.parts {
                self.requeue_whole(p.want);
            }
        }
    }

    /// A request refused for its ticket: true when it is to be asked again (under a renewed
    /// ticket), false when the current one has been refused for `connect_timeout` already.
    fn ticket_refusal(&mut self, now: Instant, req: Option<&Req>) -> bool {
        if req.is_some_and(|r| r.ticket_gen != self.ticket_gen) {
            // Sent under the ticket already replaced.
            return true;
        }
        let since = *self.ticket_refused.get_or_insert_with(|| {
            log::debug!(
                "fetch client: the gateway refused the fetch ticket; waiting for a renewal"
            );
            now
        });
        now.saturating_duration_since(since) < self.cfg.connect_timeout
    }

    /// Asks again for everything a part asked for.
    fn requeue_whole(&mut self, w: Want) {
        match w.kind {
            Kind::Pipeline | Kind::LongPoll => {
                if let Some(sub) = self.subs.get_mut(w.sub) {
                    if w.kind == Kind::LongPoll {
                        sub.long_poll_out = false;
                    } else if sub.pipe_next.is_none() {
                        sub.pipe_next = Some(w.offset);
                        sub.pipe_req = None;
                    }
                    // Otherwise the position was reset since: the range is not wanted.
                }
            }
            Kind::Repair => self.wants.push_back(w),
        }
    }

    fn handle_error(&mut self, now: Instant, e: ErrorMsg) {
        let Some(req) = self.reqs.get_mut(&e.request_id) else {
            if e.code == ErrorCode::UnsupportedVersion {
                log::error!(
                    "fetch client: the gateway does not speak protocol version {}",
                    self.version()
                );
                self.conn = Conn::Unreachable;
                self.events.push_back(Event::Unreachable);
            } else {
                self.stats.stale_datagrams += 1;
            }
            return;
        };
        if e.slot == SLOT_REQUEST {
            let req = self.reqs.remove(&e.request_id);
            // Asked again: a busy gateway, or a refused ticket while a renewal may come.
            let refused = e.code == ErrorCode::Unauthenticated && self.ticket.is_some();
            if e.code == ErrorCode::Busy || (refused && self.ticket_refusal(now, req.as_ref())) {
                for p in req.into_iter().flat_map(|r| r.parts) {
                    self.requeue_whole(p.want);
                }
            } else {
                log::error!("fetch client: request {} refused: {}", e.request_id, e.code);
                for p in req.into_iter().flat_map(|r| r.parts) {
                    self.fail_sub(p.want.sub, e.code, e.log_start, e.log_end);
                }
            }
            return;
        }
        let Some(part) = req.parts.get_mut(e.slot as usize) else {
            self.stats.malformed += 1;
            return;
        };
        if part.done {
            self.stats.duplicate_datagrams += 1;
            return;
        }
        part.done = true;
        let want = part.want.clone();
        let all_done = req.parts.iter().all(|p| p.done);
        if all_done {
            self.reqs.remove(&e.request_id);
        }
        let sub_i = want.sub;
        let Some(sub) = self.subs.get_mut(sub_i) else {
            return;
        };
        if want.kind == Kind::LongPoll {
            sub.long_poll_out = false;
        }
        if e.high_watermark >= 0 {
            sub.high_watermark = sub.high_watermark.max(e.high_watermark);
        }
        match e.code {
            ErrorCode::OffsetOutOfRange if self.cfg.auto_reset => {
                let from = sub.deliver_next.unwrap_or(want.offset);
                let to = if from < e.log_start {
                    e.log_start
                } else {
                    e.log_end
                };
                self.reset_sub(sub_i, from, to);
            }
            ErrorCode::Busy => self.requeue_whole(want),
            code => self.fail_sub(sub_i, code, e.log_start, e.log_end),
        }
    }

    fn reset_sub(&mut self, i: usize, from: i64, to: i64) {
        self.wants.retain(|w| w.sub != i);
        if let Some(sub) = self.subs.get_mut(i) {
            sub.deliver_next = Some(to);
            sub.pipe_next = Some(to);
            sub.pipe_req = None;
            sub.at_end = false;
            sub.long_poll_out = false;
            sub.store.clear();
            sub.frags.clear();
            sub.buffered = 0;
            sub.aborted.clear();
            self.events
                .push_back(Event::OffsetReset { sub: i, from, to });
        }
    }

    fn fail_sub(&mut self, i: usize, code: ErrorCode, log_start: i64, log_end: i64) {
        if let Some(sub) = self.subs.get_mut(i) {
            if !sub.done {
                sub.done = true;
                self.events.push_back(Event::PartitionError {
                    sub: i,
                    code,
                    log_start,
                    log_end,
                });
            }
        }
    }

    fn handle_data(&mut self, now: Instant, h: DataHeader, payload: &[u8]) {
        let Some((sub_i, kind, rto_sample)) = self.accept_data(now, &h) else {
            return;
        };
        if let Some(s) = rto_sample {
            self.rtt_sample(s);
        }
        let resolved = self.note_offsets(sub_i, kind, &h);
        let sub = &mut self.subs[sub_i];
        for &(pid, first) in &h.aborted {
            sub.aborted.add(pid, first);
        }
        let stored = self.absorb(sub_i, &h, payload);
        if !stored {
            self.stats.malformed += 1;
        }
        self.account_part(now, &h, payload.len(), stored, resolved);
        self.mark_earlier_lost(now, h.request_id, h.slot as usize);
        self.deliver(sub_i);
    }

    /// The request part a DATA datagram answers: (subscription, kind, RTT sample); None for
    /// a stale, malformed or duplicate datagram (counted).
    fn accept_data(
        &mut self,
        now: Instant,
        h: &DataHeader,
    ) -> Option<(usize, Kind, Option<Duration>)> {
        let Some(req) = self.reqs.get_mut(&h.request_id) else {
            self.stats.stale_datagrams += 1;
            return None;
        };
        let rto_sample = (!req.any_rx && !req.long_poll).then(|| now.duration_since(req.sent_at));
        req.any_rx = true;
        let Some(part) = req.parts.get_mut(h.slot as usize) else {
            self.stats.malformed += 1;
            return None;
        };
        let sub_i = part.want.sub;
        let kind = part.want.kind;
        if self.subs.get(sub_i).map(|s| s.partition) != Some(h.partition) {
            self.stats.malformed += 1;
            return None;
        }
        if part.done || part.got.contains_key(&h.resp_pos) {
            self.stats.duplicate_datagrams += 1;
            return None;
        }
        Some((sub_i, kind, rto_sample))
    }

    /// Takes the partition offsets a DATA datagram reports: high watermark, a sentinel start
    /// resolved (returned), where the pipeline continues.
    fn note_offsets(&mut self, sub_i: usize, kind: Kind, h: &DataHeader) -> Option<i64> {
        let committed = self.cfg.isolation == IsolationLevel::ReadCommitted;
        // Resolve a sentinel start from the offsets of this very read.
        let resolved = match self.reqs[&h.request_id].parts[h.slot as usize].want.offset {
            OFFSET_EARLIEST => Some(h.log_start),
            // read_committed: the gateway resolved "latest" to the last stable offset.
            OFFSET_LATEST if committed => Some(h.last_stable),
            OFFSET_LATEST => Some(h.log_end),
            _ => None,
        };
        let sub = &mut self.subs[sub_i];
        if h.high_watermark > sub.high_watermark {
            sub.high_watermark = h.high_watermark;
        }
        if let Some(o) = resolved {
            if sub.deliver_next.is_none() {
                sub.deliver_next = Some(o);
            }
        }
        // Pipeline: the next fetch can go out now that we know where this one ends.
        if kind == Kind::Pipeline && sub.pipe_req == Some(h.request_id) && sub.pipe_next.is_none() {
            sub.pipe_next = Some(h.resp_next_offset);
            sub.pipe_req = None;
            sub.at_end = h.resp_len == 0;
        }
        if kind == Kind::LongPoll {
            sub.long_poll_out = false;
            if h.resp_len > 0 {
                sub.at_end = false;
                sub.pipe_next = Some(h.resp_next_offset);
                sub.pipe_req = None;
            }
        }
        resolved
    }

    /// Records what a DATA datagram covered of its part; finishes the part when all of it
    /// arrived, or schedules a loss check when its last datagram arrived with holes before.
    fn account_part(
        &mut self,
        now: Instant,
        h: &DataHeader,
        len: usize,
        stored: bool,
        resolved: Option<i64>,
    ) {
        let rec = Dgram {
            pos: h.resp_pos,
            end: h.resp_pos + len as u32,
            hole_target: if h.is_fragment() && h.frag_pos > 0 {
                h.end_offset
            } else {
                h.link_offset
            },
        };
        let mut part_done = false;
        let mut last_incomplete = false;
        if let Some(req) = self.reqs.get_mut(&h.request_id) {
            let part = &mut req.parts[h.slot as usize];
            if let Some(o) = resolved {
                part.want.offset = o;
            }
            part.resp_len = Some(h.resp_len);
            part.resp_next = Some(h.resp_next_offset);
            if stored {
                part.got.insert(h.resp_pos, rec);
                part.received += len as u64;
            }
            let expected = (h.resp_len as u64).saturating_sub(part.want.range.0 as u64);
            if part.received >= expected && stored {
                part.done = true;
                part_done = true;
            } else if h.is_last() {
                last_incomplete = true;
            }
        }
        if last_incomplete {
            let at = now + self.reorder_delay();
            if let Some(req) = self.reqs.get_mut(&h.request_id) {
                req.check_at.get_or_insert(at);
            }
        }
        if part_done {
            self.part_done(h.request_id);
        }
    }

    /// The gateway answers a session's requests in order: a datagram of request `id` (slot
    /// `slot`) means what is still missing before it (earlier requests, earlier partitions
    /// of this one) is lost.
    fn mark_earlier_lost(&mut self, now: Instant, id: u32, slot: usize) {
        let at = now + self.reorder_delay();
        for (&rid, req) in self.reqs.iter_mut() {
            if !wrapping_gt(id, rid) && rid != id {
                break;
            }
            if req.long_poll || req.check_at.is_some() {
                continue;
            }
            let earlier = if rid == id {
                req.parts.iter().take(slot).any(|p| !p.done)
            } else {
                req.parts.iter().any(|p| !p.done)
            };
            if earlier {
                req.check_at = Some(at);
            }
        }
    }

    /// Takes the batches of one DATA payload into the partition's store. False when the
    /// payload is inconsistent with its header (the datagram then counts as not received).
    fn absorb(&mut self, sub_i: usize, h: &DataHeader, payload: &[u8]) -> bool {
        if payload.is_empty() {
            true
        } else if h.is_fragment() {
            self.absorb_fragment(sub_i, h, payload)
        } else {
            self.absorb_batches(sub_i, h, payload)
        }
    }

    /// One fragment of a batch: into its assembly; the batch, once complete and CRC-checked,
    /// into the store (a corrupt one is fetched again).
    fn absorb_fragment(&mut self, sub_i: usize, h: &DataHeader, payload: &[u8]) -> bool {
        let max_batch = self.cfg.max_batch;
        let spare = &mut self.spare;
        let sub = &mut self.subs[sub_i];
        let delivered = sub.deliver_next.unwrap_or(i64::MIN);
        if h.batch_len > max_batch {
            return false;
        }
        if h.end_offset <= delivered || sub.store.contains_key(&h.end_offset) {
            self.stats.duplicate_datagrams += 1;
            return true;
        }
        let asm = sub.frags.entry(h.base_offset).or_insert_with(|| Assembly {
            link: h.link_offset,
            next: h.end_offset,
            buf: spare.zeroed(h.batch_len as usize),
            have: Vec::new(),
        });
        if asm.buf.len() != h.batch_len as usize || asm.next != h.end_offset {
            // One of the two headers was damaged in transit, and which one cannot be told:
            // keeping the partial batch would refuse every later fragment of the batch (the
            // stall of a consumer behind a device that mangles GSO datagrams). Drop it and
            // fetch the batch again whole; this datagram counts as not received.
            log::debug!(
                "fetch client: fragment of batch {} ({} B, to {}) disagrees with its partial batch ({} B, to {}): fetching the batch again",
                h.base_offset,
                h.batch_len,
                h.end_offset,
                asm.buf.len(),
                asm.next
            );
            let (len, next) = (asm.buf.len() as u32, asm.next);
            if let Some(old) = sub.frags.remove(&h.base_offset) {
                sub.buffered -= old.covered();
                spare.put(old.buf);
            }
            self.stats.conflicting_fragments += 1;
            self.wants.push_back(Want {
                covers_to: next.max(h.end_offset),
                ..Want::fresh(
                    sub_i,
                    h.base_offset,
                    len.max(h.batch_len).min(max_batch),
                    Kind::Repair,
                )
            });
            return false;
        }
        let added = asm.add(h.frag_pos, payload);
        if added > 0 {
            sub.buffered += added;
            self.stats.payload_bytes += added as u64;
        } else {
            self.stats.duplicate_datagrams += 1;
        }
        if asm.complete() {
            let Some(asm) = sub.frags.remove(&h.base_offset) else {
                return true;
            };
            sub.buffered -= asm.buf.len();
            match batch::verify(&asm.buf) {
                Ok(bh) if bh.base_offset == h.base_offset && bh.next_offset() == asm.next => {
                    sub.buffered += asm.buf.len();
                    sub.store.insert(
                        asm.next,
                        Stored {
                            link: asm.link,
                            base: bh.base_offset,
                            data: asm.buf,
                        },
                    );
                }
                _ => {
                    // Corrupt in transit: fetch the batch again.
                    self.stats.crc_errors += 1;
                    self.wants.push_back(Want {
                        covers_to: asm.next,
                        ..Want::fresh(sub_i, h.base_offset, h.batch_len, Kind::Repair)
                    });
                }
            }
        }
        true
    }

    /// Whole batches: the chain checked against the header before any is taken.
    fn absorb_batches(&mut self, sub_i: usize, h: &DataHeader, payload: &[u8]) -> bool {
        let spare = &mut self.spare;
        let sub = &mut self.subs[sub_i];
        let delivered = sub.deliver_next.unwrap_or(i64::MIN);
        let mut batches = Vec::new();
        let mut pos = 0;
        let mut link = h.link_offset;
        let mut ok = true;
        while pos < payload.len() {
            match batch::BatchHeader::parse(&payload[pos..]) {
                Ok(bh) if pos + bh.total_len() <= payload.len() => {
                    batches.push((pos, bh, link));
                    link = bh.next_offset();
                    pos += bh.total_len();
                }
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok
            || batches.first().map(|b| b.1.base_offset) != Some(h.base_offset)
            || link != h.end_offset
        {
            return false;
        }
        for (pos, bh, link) in batches {
            let bytes = &payload[pos..pos + bh.total_len()];
            let next = bh.next_offset();
            if next <= delivered || sub.store.contains_key(&next) {
                continue;
            }
            match batch::verify(bytes) {
                Ok(_) => {
                    sub.buffered += bytes.len();
                    self.stats.payload_bytes += bytes.len() as u64;
                    sub.store.insert(
                        next,
                        Stored {
                            link,
                            base: bh.base_offset,
                            data: spare.with(bytes),
                        },
                    );
                }
                Err(_) => {
                    self.stats.crc_errors += 1;
                    self.wants.push_back(Want {
                        covers_to: next,
                        ..Want::fresh(sub_i, bh.base_offset, bytes.len() as u32, Kind::Repair)
                    });
                }
            }
        }
        true
    }

    /// A part received all its bytes: the request is finished when all parts are.
    fn part_done(&mut self, id: u32) {
        if self
            .reqs
            .get(&id)
            .is_some_and(|r| r.parts.iter().all(|p| p.done))
        {
            self.reqs.remove(&id);
        }
    }

    /// Gives up on whatever a request still misses: re-fetch its holes.
    fn abandon(&mut self, id: u32) {
        let Some(req) = self.reqs.remove(&id) else {
            return;
        };
        for part in req.parts {
            if part.done {
                continue;
            }
            let w = part.want;
            let Some(len) = part.resp_len else {
                // Nothing arrived: ask for all of it again.
                self.requeue_whole(w);
                continue;
            };
            if w.kind == Kind::LongPoll {
                if let Some(s) = self.subs.get_mut(w.sub) {
                    s.long_poll_out = false;
                }
            }
            // The same read yields the same bytes: ask for the missing ranges only.
            let mut pos = w.range.0;
            let mut holes = Vec::new();
            for d in part.got.values() {
                if d.pos > pos {
                    holes.push((pos, d.pos, d.hole_target));
                }
                pos = pos.max(d.end);
            }
            if pos < len {
                holes.push((pos, len, part.resp_next.unwrap_or(i64::MAX)));
            }
            for (a, b, covers_to) in holes {
                self.wants.push_back(Want {
                    sub: w.sub,
                    offset: w.offset,
                    max_bytes: w.max_bytes,
                    range: (a, b),
                    covers_to,
                    kind: Kind::Repair,
                });
            }
        }
    }

    fn deliver(&mut self, i: usize) {
        let sub = &mut self.subs[i];
        let Some(mut next) = sub.deliver_next else {
            return;
        };
        while let Some((&k, b)) = sub.store.first_key_value() {
            if k <= next {
                let len = b.data.len();
                sub.store.remove(&k);
                sub.buffered -= len;
                continue;
            }
            if b.link > next {
                break;
            }
            let Some((k, b)) = sub.store.pop_first() else {
                break;
            };
            sub.buffered -= b.data.len();
            let verdict = match batch::BatchHeader::parse(&b.data) {
                Ok(h) => sub.aborted.check(&h, &b.data),
                Err(_) => Verdict::Deliver,
            };
            if verdict != Verdict::Deliver {
                match verdict {
                    Verdict::Control => self.stats.skipped_control += 1,
                    _ => self.stats.skipped_aborted += 1,
                }
                self.spare.put(b.data);
                next = k;
                continue;
            }
            self.stats.delivered_batches += 1;
            self.stats.delivered_bytes += b.data.len() as u64;
            self.events.push_back(Event::Batch(Delivered {
                sub: i,
                partition: sub.partition,
                base_offset: b.base,
                next_offset: k,
                from_offset: next,
                data: b.data,
            }));
            next = k;
        }
        sub.deliver_next = Some(next);
        let mut freed = 0;
        sub.frags.retain(|_, a| {
            let keep = a.next > next;
            if !keep {
                freed += a.covered();
            }
            keep
        });
        sub.buffered -= freed;
        // Caught up: the pipeline hit the end and everything before it is delivered.
        if sub.at_end && !self.cfg.follow && !sub.done {
            if let Some(end) = sub.pipe_next {
                let holes_pending = self.wants.iter().any(|w| w.sub == i);
                if next >= end && !holes_pending {
                    sub.done = true;
                    if !sub.caught_up_reported {
                        sub.caught_up_reported = true;
                        self.events.push_back(Event::CaughtUp {
                            sub: i,
                            offset: next,
                            high_watermark: sub.high_watermark,
                        });
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- send

    fn outstanding_bytes(&self) -> u64 {
        self.reqs
            .values()
            .flat_map(|r| r.parts.iter())
            .filter(|p| !p.done && p.want.kind != Kind::LongPoll)
            .map(|p| match p.resp_len {
                Some(l) => (l as u64)
                    .saturating_sub(p.want.range.0 as u64)
                    .saturating_sub(p.received),
                None => p.want.cost(),
            })
            .sum()
    }

    fn send_request(&mut self, now: Instant, wants: Vec<Want>, max_wait: Duration) {
        let Some(token) = self.token else {
            return;
        };
        let id = self.next_id;
        // This request is unfinished too: the floor must not pass it.
        let floor = self.ack_floor();
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let parts: Vec<PartRequest<'_>> = wants
            .iter()
            .map(|w| PartRequest {
                topic: &self.subs[w.sub].topic,
                partition: self.subs[w.sub].partition,
                offset: w.offset,
                max_bytes: w.max_bytes,
                range_start: w.range.0,
                range_end: w.range.1,
            })
            .collect();
        let req = FetchRequest {
            version: self.version(),
            ticket: self.ticket.as_deref().unwrap_or_default(),
            request_id: id,
            ack_floor: floor,
            window: self.cfg.window,
            max_wait_ms: max_wait.as_millis().min(u32::MAX as u128) as u32,
            token: &token,
            isolation: self.cfg.isolation,
            parts,
        };
        match req.encode(0) {
            Ok(bytes) => {
                self.tx.push_back(bytes);
                self.stats.requests += 1;
                self.floor_sent = floor;
            }
            Err(e) => {
                log::error!("fetch client: cannot encode request: {e}");
                return;
            }
        }
        for w in &wants {
            if w.kind == Kind::Repair {
                self.stats.refetches += 1;
                self.stats.refetch_bytes += match w.range {
                    (0, 0) => w.max_bytes as u64,
                    (a, b) => (b - a) as u64,
                };
            }
        }
        self.reqs.insert(
            id,
            Req {
                sent_at: now,
                ticket_gen: self.ticket_gen,
                long_poll: !max_wait.is_zero(),
                parts: wants
                    .into_iter()
                    .map(|want| Part {
                        want,
                        resp_len: None,
                        resp_next: None,
                        got: BTreeMap::new(),
                        received: 0,
                        done: false,
                    })
                    .collect(),
                any_rx: false,
                check_at: None,
            },
        );
    }

    /// Whether delivery of subscription `i` waits for bytes that nothing in flight or queued
    /// will bring: only damaged headers (which passed the UDP checksum) get it there, e.g. a
    /// wrong position that made a datagram's part look complete, or a wrong next offset.
    fn delivery_blocked(&self, i: usize) -> bool {
        let sub = &self.subs[i];
        let Some(d) = sub.deliver_next else {
            return false;
        };
        let waiting = !sub.store.is_empty()
            || !sub.frags.is_empty()
            || (sub.at_end && sub.pipe_next.is_some_and(|e| e > d));
        if sub.done || !waiting || self.wants.iter().any(|w| w.sub == i) {
            return false;
        }
        // A part can bring offset d only if it reads from d or below.
        let could_fill = |p: &Part| !p.done && p.want.sub == i && p.want.offset <= d;
        !self
            .reqs
            .values()
            .flat_map(|r| r.parts.iter())
            .any(could_fill)
    }

    /// Fetches again from the delivery position of every blocked subscription, dropping the
    /// partial batches at or before the first one there (they may be the damaged ones).
    fn resync_blocked(&mut self) {
        for i in 0..self.subs.len() {
            if !self.delivery_blocked(i) {
                continue;
            }
            let sub = &mut self.subs[i];
            let Some(d) = sub.deliver_next else {
                continue;
            };
            let first = sub.frags.keys().filter(|&&k| k >= d).min().copied();
            let stale: Vec<i64> = sub
                .frags
                .keys()
                .filter(|&&k| k < d || Some(k) == first)
                .copied()
                .collect();
            for k in stale {
                if let Some(a) = sub.frags.remove(&k) {
                    sub.buffered -= a.covered();
                    self.spare.put(a.buf);
                }
            }
            self.stats.resyncs += 1;
            log::debug!(
                "fetch client: delivery of {}-{} blocked at offset {d} with nothing in flight to unblock it: fetching again from there",
                sub.topic,
                sub.partition
            );
            self.wants.push_back(Want {
                covers_to: d + 1,
                ..Want::fresh(i, d, self.cfg.fetch_bytes, Kind::Repair)
            });
        }
    }

    /// Builds the requests the state allows now.
    fn plan(&mut self, now: Instant) {
        self.resync_blocked();
        let window = self.cfg.window as u64;
        let mut outstanding = self.outstanding_bytes();
        // Re-fetches first: they unblock delivery.
        let mut items = Vec::new();
        while let Some(w) = self.wants.front() {
            let sub = &self.subs[w.sub];
            let useless = sub.done
                || (w.kind == Kind::Repair && sub.deliver_next.is_some_and(|d| w.covers_to <= d));
            if useless {
                self.wants.pop_front();
                continue;
            }
            if outstanding > 0 && outstanding + w.cost() > window {
                break;
            }
            let Some(w) = self.wants.pop_front() else {
                break;
            };
            outstanding += w.cost();
            items.push(w);
        }
        // Pipelines.
        let mut polls = Vec::new();
        for i in 0..self.subs.len() {
            let sub = &self.subs[i];
            if sub.done {
                continue;
            }
            let Some(offset) = sub.pipe_next else {
                continue;
            };
            if sub.at_end {
                if self.cfg.follow && !sub.long_poll_out {
                    polls.push(Want::fresh(i, offset, self.cfg.fetch_bytes, Kind::LongPoll));
                }
                continue;
            }
            if sub.buffered > self.cfg.max_buffered {
                continue;
            }
            let fb = self.cfg.fetch_bytes as u64;
            if outstanding > 0 && outstanding + fb > window {
                continue;
            }
            outstanding += fb;
            items.push(Want::fresh(i, offset, self.cfg.fetch_bytes, Kind::Pipeline));
        }
        while !items.is_empty() {
            let n = items.len().min(MAX_PARTS_PER_REQUEST);
            let chunk: Vec<Want> = items.drain(..n).collect();
            let id = self.next_id;
            for w in &chunk {
                if w.kind == Kind::Pipeline {
                    self.subs[w.sub].pipe_next = None;
                    self.subs[w.sub].pipe_req = Some(id);
                }
            }
            self.send_request(now, chunk, Duration::ZERO);
        }
        if !polls.is_empty() {
            for w in &polls {
                self.subs[w.sub].long_poll_out = true;
            }
            self.send_request(now, polls, self.cfg.max_wait);
        }
        // Acknowledge finished requests even when there is nothing new to ask for, so the
        // gateway's window opens.
        if self.ack_floor() != self.floor_sent {
            if let Some(token) = self.token {
                let floor = self.ack_floor();
                let ack = FetchRequest {
                    version: self.version(),
                    ticket: self.ticket.as_deref().unwrap_or_default(),
                    isolation: self.cfg.isolation,
                    request_id: self.next_id,
                    ack_floor: floor,
                    window: self.cfg.window,
                    max_wait_ms: 0,
                    token: &token,
                    parts: Vec::new(),
                };
                if let Ok(b) = ack.encode(0) {
                    self.tx.push_back(b);
                    self.stats.acks += 1;
                    self.floor_sent = floor;
                }
            }
        }
    }

    /// Next datagram to send to the server.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(d) = self.tx.pop_front() {
            self.stats.datagrams_out += 1;
            return Some(d);
        }
        let version = self.version();
        match &mut self.conn {
            Conn::Unreachable => return None,
            Conn::Handshake {
                started,
                next_probe,
                interval,
            } => {
                let start = *started.get_or_insert(now);
                if next_probe.is_none_or(|t| now >= t) {
                    if now.duration_since(start) >= self.cfg.connect_timeout {
                        self.conn = Conn::Unreachable;
                        self.events.push_back(Event::Unreachable);
                        return None;
                    }
                    *next_probe = Some(now + *interval);
                    *interval = (*interval * 2).min(Duration::from_secs(1));
                    self.stats.handshakes += 1;
                    // A token-less FETCH padded so the RETRY is never larger than it.
                    let probe = FetchRequest {
                        version,
                        ticket: &[],
                        isolation: self.cfg.isolation,
                        request_id: 0,
                        ack_floor: 0,
                        window: self.cfg.window,
                        max_wait_ms: 0,
                        token: &[],
                        parts: Vec::new(),
                    };
                    if let Ok(b) = probe.encode(MIN_INITIAL_LEN) {
                        self.stats.datagrams_out += 1;
                        return Some(b);
                    }
                }
                return None;
            }
            Conn::Ready => {}
        }
        if self.ticket_refused.is_some() {
            // Asking again under the refused ticket would only be refused again.
            return None;
        }
        self.plan(now);
        let d = self.tx.pop_front()?;
        self.stats.datagrams_out += 1;
        Some(d)
    }

    /// When [`Client::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        match &self.conn {
            Conn::Handshake {
                started,
                next_probe,
                ..
            } => {
                if let Some(p) = next_probe {
                    min(*p);
                }
                if let Some(s) = started {
                    min(*s + self.cfg.connect_timeout);
                }
                return t;
            }
            Conn::Unreachable => return None,
            Conn::Ready => {}
        }
        if let Some(s) = self.ticket_refused {
            min(s + self.cfg.connect_timeout);
        }
        let rto = self.rto();
        for r in self.reqs.values() {
            if let Some(c) = r.check_at {
                min(c);
            }
            min(self.deadline(r, rto));
        }
        t
    }

    fn deadline(&self, r: &Req, rto: Duration) -> Instant {
        if r.long_poll && !r.any_rx {
            return r.sent_at + self.cfg.max_wait + rto * 2;
        }
        // While the gateway keeps sending (earlier responses ahead in its queue), a request
        // that has not started yet is not late.
        let base = match self.last_rx {
            Some(l) if l > r.sent_at => l,
            _ => r.sent_at,
        };
        base + rto
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.conn, Conn::Handshake { .. }) {
            // poll_transmit sends the probes and declares the gateway unreachable.
            return;
        }
        if self
            .ticket_refused
            .is_some_and(|s| now >= s + self.cfg.connect_timeout)
        {
            log::error!("fetch client: the fetch ticket was refused and not renewed");
            self.ticket_refused = None;
            for i in 0..self.subs.len() {
                self.fail_sub(i, ErrorCode::Unauthenticated, -1, -1);
            }
            return;
        }
        let rto = self.rto();
        let mut due = Vec::new();
        for (&id, r) in &self.reqs {
            if r.check_at.is_some_and(|c| now >= c) {
                due.push((id, false));
            } else if now >= self.deadline(r, rto) {
                due.push((id, true));
            }
        }
        for (id, timeout) in due {
            if timeout {
                self.stats.timeouts += 1;
            } else {
                self.stats.gap_detections += 1;
            }
            self.abandon(id);
        }
        for i in 0..self.subs.len() {
            self.deliver(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Spare;

    #[test]
    fn spare_buffers_are_reused_up_to_the_byte_limit() {
        let mut s = Spare {
            limit: 40_000,
            ..Spare::default()
        };
        let a = s.zeroed(16_000);
        let b = s.with(&[7u8; 16_000]);
        let c = s.zeroed(16_000);
        assert_eq!(s.bytes, 0, "nothing to reuse yet");
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        s.put(a);
        s.put(b);
        s.put(c); // over the limit: dropped
        assert_eq!(s.bufs.len(), 2);
        assert_eq!(s.bytes, 32_000);
        // Reused (last in, first out), emptied, then refilled as asked.
        let z = s.zeroed(15_000);
        assert_eq!(z.as_ptr(), pb);
        assert!(z.iter().all(|&x| x == 0) && z.len() == 15_000);
        let w = s.with(&[1, 2, 3]);
        assert_eq!(w.as_ptr(), pa);
        assert_eq!(w, [1, 2, 3]);
        assert_eq!(s.bytes, 0);
    }
}
