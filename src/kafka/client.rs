//! The one blocking Kafka client of the crate and its tools, codecs from the `kafka-protocol`
//! crate, framing from [`super::frame`]:
//!
//! - [`Connection`]: one TCP connection (or TLS over it); requests are sent and their
//!   responses read as separate calls (pipelining), into one reused response buffer, blocking
//!   or spinning.
//! - [`Fetcher`]: Fetch (v4..=11) and ListOffsets v1 of one topic over a connection. It is the
//!   measuring consumer of the benches, so it does no more work per byte than a real consumer
//!   must, and lets a consumer have the next Fetch on the wire while it checks the records of
//!   the last one, as the Java consumer and librdkafka do.
//! - [`KafkaFetcher`]: the `kxgw consume` fallback when the UDP fetch endpoint does not answer:
//!   one partition from earliest/latest/an offset, whole batches only. No ApiVersions round
//!   trip: Fetch v4 and ListOffsets v1 are the oldest the gateway (and every broker since
//!   0.11) serves.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::log::txn::filter::{AbortedFilter, Verdict};
use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::frame::{decode_response, encode_request, response_size};
use crate::fetch::StartAt;
use crate::log::batch::BatchHeader;

/// Fills `buf` from `r`, blocking, or spinning for at most `spin` on a non-blocking socket
/// (yielding the core between tries).
fn read_full(r: &mut impl Read, spin: Option<Duration>, buf: &mut [u8]) -> Result<()> {
    let Some(bound) = spin else {
        return r.read_exact(buf).context("reading from the socket");
    };
    let t0 = Instant::now();
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => bail!("connection closed after {done} of {} bytes", buf.len()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if t0.elapsed() > bound {
                    bail!("nothing to read for {bound:?}");
                }
                let _ = nix::sched::sched_yield();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading from the socket"),
        }
    }
    Ok(())
}

/// Reads one response frame (without its size prefix) into `buf`, reusing its allocation.
fn read_frame(r: &mut impl Read, spin: Option<Duration>, buf: &mut BytesMut) -> Result<Bytes> {
    let mut prefix = [0u8; 4];
    read_full(r, spin, &mut prefix).context("reading the response size")?;
    let len = response_size(prefix)?;
    // The last response's Bytes are dropped by now (or soon), so resize() reclaims the same
    // allocation; the zeroing touches memory the kernel copy then overwrites, which is cheap
    // next to the copy and keeps this free of unsafe.
    buf.clear();
    buf.resize(len, 0);
    read_full(r, spin, buf).with_context(|| format!("reading a response of {len} bytes"))?;
    Ok(buf.split().freeze())
}

/// Reads one response frame (without its size prefix) from a blocking stream: for tests
/// that send requests by hand.
pub fn read_response(r: &mut impl Read) -> Result<Bytes> {
    read_frame(r, None, &mut BytesMut::new())
}

/// A client socket: TCP, or TLS over TCP (an SSL listener).
enum Stream {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(t) => t.get_ref(),
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Tcp(s) => write!(f, "Tcp({s:?})"),
            Stream::Tls(t) => write!(f, "Tls({:?})", t.get_ref()),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// A blocking connection to a Kafka(-protocol) listener.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    client_id: &'static str,
    correlation: i32,
    /// Correlation ids of the requests sent and not yet answered, oldest first.
    in_flight: VecDeque<i32>,
    /// Response buffer, reused: a fresh multi-MiB allocation per response would cost the
    /// consumer a page fault per 4 KiB, work no real consumer does.
    buf: BytesMut,
    /// Spin on a non-blocking socket instead of sleeping in read(2) (and the bound of a read).
    spin: Option<Duration>,
}

impl Connection {
    /// Connects to `addr` (HOST:PORT); requests carry `client_id`.
    pub fn connect(addr: &str, client_id: &'static str) -> Result<Connection> {
        Self::connect_with(addr, client_id, None)
    }

    /// [`Connection::connect`], over TLS when `tls` is given (the handshake is done here, so
    /// a certificate the client does not trust fails now).
    pub fn connect_with(
        addr: &str,
        client_id: &'static str,
        tls: Option<&super::tls::ClientTls>,
    ) -> Result<Connection> {
        let tcp = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let stream = match tls {
            None => Stream::Tcp(tcp),
            Some(t) => {
                let mut s = rustls::StreamOwned::new(t.connection(addr)?, tcp);
                while s.conn.is_handshaking() {
                    s.conn
                        .complete_io(&mut s.sock)
                        .with_context(|| format!("TLS handshake with {addr}"))?;
                }
                Stream::Tls(Box::new(s))
            }
        };
        Ok(Connection {
            stream,
            client_id,
            correlation: 0,
            in_flight: VecDeque::new(),
            buf: BytesMut::new(),
            spin: None,
        })
    }

    /// Sets a read timeout (long-poll responses may take up to max_wait_ms).
    pub fn set_timeout(&self, t: Duration) -> Result<()> {
        self.stream
            .tcp()
            .set_read_timeout(Some(t))
            .context("SO_RCVTIMEO")
    }

    /// Makes reads spin on the non-blocking socket (yielding the core between tries) for at
    /// most `bound` each: the consumer never sleeps, so its wake-up is not part of a delay.
    pub fn set_spin(&mut self, bound: Duration) -> Result<()> {
        self.stream
            .tcp()
            .set_nonblocking(true)
            .context("O_NONBLOCK")?;
        self.spin = Some(bound);
        Ok(())
    }

    /// Sends one request; [`Connection::receive`] reads the responses in order.
    pub fn send<Req: Encodable>(&mut self, key: ApiKey, version: i16, req: &Req) -> Result<()> {
        self.correlation = self.correlation.wrapping_add(1);
        let frame = encode_request(key, version, self.correlation, self.client_id, req)
            .with_context(|| format!("encoding {key:?} v{version}"))?;
        self.stream
            .write_all(&frame)
            .with_context(|| format!("sending {key:?}"))?;
        self.in_flight.push_back(self.correlation);
        Ok(())
    }

    /// Reads the response to the oldest request in flight (which was a `key` v`version`).
    pub fn receive<Resp: Decodable>(&mut self, key: ApiKey, version: i16) -> Result<Resp> {
        let Some(correlation) = self.in_flight.pop_front() else {
            bail!("receive without a request in flight");
        };
        let mut frame = read_frame(&mut self.stream, self.spin, &mut self.buf)?;
        decode_response(key, version, correlation, &mut frame)
    }

    /// Sends one request and waits for its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp> {
        self.send(key, version, req)?;
        self.receive(key, version)
    }
}

/// One partition's answer to a fetch.
#[derive(Debug, Clone)]
pub struct FetchAnswer {
    /// Kafka error code of the partition (0 = none).
    pub error_code: i16,
    /// High watermark reported by the gateway.
    pub high_watermark: i64,
    /// The records section (whole batches, possibly a partial one at the end).
    pub records: Bytes,
    /// READ_COMMITTED: the last stable offset and the aborted transactions overlapping the
    /// records, as (producer id, first offset).
    pub last_stable_offset: i64,
    pub aborted: Vec<(i64, i64)>,
}

/// What a fetch asks for.
#[derive(Debug, Clone, Copy)]
pub struct FetchParams {
    /// Partition to read.
    pub partition: i32,
    /// First offset wanted.
    pub offset: i64,
    /// `partition_max_bytes` (and `max_bytes`) of the request.
    pub max_bytes: i32,
    /// Long-poll bound.
    pub max_wait_ms: i32,
    /// Answer as soon as this many bytes are available.
    pub min_bytes: i32,
}

/// Fetches of one topic over one [`Connection`].
#[derive(Debug)]
pub struct Fetcher {
    conn: Connection,
    topic: String,
    version: i16,
    /// 0 READ_UNCOMMITTED, 1 READ_COMMITTED (Fetch and ListOffsets).
    isolation_level: i8,
}

impl Fetcher {
    /// Connects to `addr` (HOST:PORT) for fetches of `topic` with Fetch request `version`.
    pub fn connect(
        addr: &str,
        topic: &str,
        version: i16,
        client_id: &'static str,
    ) -> Result<Fetcher> {
        Self::connect_with(addr, topic, version, client_id, None)
    }

    /// [`Fetcher::connect`], over TLS when `tls` is given.
    pub fn connect_with(
        addr: &str,
        topic: &str,
        version: i16,
        client_id: &'static str,
        tls: Option<&super::tls::ClientTls>,
    ) -> Result<Fetcher> {
        if !(4..=11).contains(&version) {
            bail!("fetch version {version} not supported by the client (4..=11)");
        }
        Ok(Fetcher {
            conn: Connection::connect_with(addr, client_id, tls)?,
            topic: topic.to_owned(),
            version,
            isolation_level: 0,
        })
    }

    /// READ_COMMITTED (1) or READ_UNCOMMITTED (0, the default) for the next requests.
    pub fn set_isolation_level(&mut self, level: i8) {
        self.isolation_level = level;
    }

    /// See [`Connection::set_timeout`].
    pub fn set_timeout(&self, t: Duration) -> Result<()> {
        self.conn.set_timeout(t)
    }

    /// See [`Connection::set_spin`].
    pub fn set_spin(&mut self, bound: Duration) -> Result<()> {
        self.conn.set_spin(bound)
    }

    /// Sends one Fetch request and waits for its response.
    pub fn fetch(&mut self, p: FetchParams) -> Result<FetchAnswer> {
        self.send(p)?;
        self.receive(p.partition)
    }

    /// Sends one Fetch request; [`Fetcher::receive`] reads the responses in order.
    pub fn send(&mut self, p: FetchParams) -> Result<()> {
        let part = FetchPartition::default()
            .with_partition(p.partition)
            .with_current_leader_epoch(-1)
            .with_fetch_offset(p.offset)
            .with_last_fetched_epoch(-1)
            .with_log_start_offset(-1)
            .with_partition_max_bytes(p.max_bytes);
        let topic = FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(self.topic.clone())))
            .with_partitions(vec![part]);
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(p.max_wait_ms)
            .with_min_bytes(p.min_bytes)
            .with_max_bytes(p.max_bytes)
            .with_isolation_level(self.isolation_level)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![topic]);
        self.conn.send(ApiKey::Fetch, self.version, &req)
    }

    /// Reads the response to the oldest Fetch in flight and returns `partition`'s answer.
    pub fn receive(&mut self, partition: i32) -> Result<FetchAnswer> {
        let resp: FetchResponse = self.conn.receive(ApiKey::Fetch, self.version)?;
        if resp.error_code != 0 {
            bail!("Fetch error code {}", resp.error_code);
        }
        let data = resp
            .responses
            .into_iter()
            .filter(|t| t.topic.0.as_str() == self.topic)
            .flat_map(|t| t.partitions)
            .find(|d| d.partition_index == partition)
            .with_context(|| format!("no data for {}-{partition} in the response", self.topic))?;
        Ok(FetchAnswer {
            error_code: data.error_code,
            high_watermark: data.high_watermark,
            last_stable_offset: data.last_stable_offset,
            aborted: data
                .aborted_transactions
                .unwrap_or_default()
                .iter()
                .map(|a| (a.producer_id.0, a.first_offset))
                .collect(),
            records: data.records.unwrap_or_default(),
        })
    }

    /// ListOffsets v1 for `partition` at `timestamp` (-1 latest, -2 earliest); v2 with
    /// READ_COMMITTED, whose latest is the last stable offset.
    pub fn list_offset(&mut self, partition: i32, timestamp: i64) -> Result<i64> {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(self.isolation_level)
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp)])]);
        let version = if self.isolation_level == 1 {
            LIST_OFFSETS_COMMITTED_VERSION
        } else {
            LIST_OFFSETS_VERSION
        };
        let resp: ListOffsetsResponse = self.conn.call(ApiKey::ListOffsets, version, &req)?;
        let p = resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .context("ListOffsets answer without our partition")?;
        if p.error_code != 0 {
            bail!("ListOffsets: Kafka error code {}", p.error_code);
        }
        Ok(p.offset)
    }
}

const FALLBACK_FETCH_VERSION: i16 = 4;
const LIST_OFFSETS_VERSION: i16 = 1;
/// The first ListOffsets version with an isolation level.
const LIST_OFFSETS_COMMITTED_VERSION: i16 = 2;
/// Kafka error code OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// Batches of one fetch: (first wanted offset, whole batch bytes).
pub type FetchedBatches = Vec<(i64, Vec<u8>)>;

/// The `kxgw consume` fallback: one partition, read in whole batches from a position.
/// Control batches are never returned; with READ_COMMITTED neither are the batches of
/// aborted transactions ([`AbortedFilter`], as librdkafka filters).
pub struct KafkaFetcher {
    fetcher: Fetcher,
    partition: i32,
    offset: i64,
    max_bytes: u32,
    start: StartAt,
    filter: AbortedFilter,
}

impl KafkaFetcher {
    /// `committed`: READ_COMMITTED (stop at the last stable offset, drop aborted data).
    pub fn connect(
        addr: &str,
        topic: &str,
        partition: i32,
        start: StartAt,
        max_bytes: u32,
        committed: bool,
    ) -> Result<KafkaFetcher> {
        let mut fetcher = Fetcher::connect(addr, topic, FALLBACK_FETCH_VERSION, "kxgw-consume")?;
        fetcher.set_timeout(Duration::from_secs(30))?;
        fetcher.set_isolation_level(i8::from(committed));
        let mut k = KafkaFetcher {
            fetcher,
            partition,
            offset: 0,
            max_bytes: max_bytes.max(1),
            start,
            filter: AbortedFilter::default(),
        };
        k.offset = match start {
            StartAt::Offset(o) => o,
            StartAt::Earliest => k.fetcher.list_offset(partition, -2)?,
            StartAt::Latest => k.fetcher.list_offset(partition, -1)?,
        };
        Ok(k)
    }

    pub fn position(&self) -> i64 {
        self.offset
    }

    /// One Fetch: the whole batches it returned as (first wanted offset, batch bytes); None
    /// when there is nothing at the position (the log end).
    pub fn fetch(&mut self, max_wait_ms: i32) -> Result<Option<FetchedBatches>> {
        let max_bytes = self.max_bytes as i32;
        let p = self.fetcher.fetch(FetchParams {
            partition: self.partition,
            offset: self.offset,
            max_bytes,
            max_wait_ms,
            min_bytes: 1,
        })?;
        if p.error_code == OFFSET_OUT_OF_RANGE && self.start != StartAt::Latest {
            let to = self.fetcher.list_offset(self.partition, -2)?;
            eprintln!(
                "kxgw consume: offset {} out of range, continuing at {to}",
                self.offset
            );
            self.offset = to;
            self.filter.clear();
            return Ok(Some(Vec::new()));
        }
        if p.error_code != 0 {
            bail!("Fetch: Kafka error code {}", p.error_code);
        }
        for &(pid, first) in &p.aborted {
            self.filter.add(pid, first);
        }
        let records = p.records;
        let mut out = Vec::new();
        let mut pos = 0;
        let mut moved = false;
        // Whole batches only; a broker may cut the last one short.
        while let Ok(h) = BatchHeader::parse(&records[pos..]) {
            let end = pos + h.total_len();
            if end > records.len() {
                break;
            }
            if h.next_offset() > self.offset {
                let bytes = &records[pos..end];
                if self.filter.check(&h, bytes) == Verdict::Deliver {
                    out.push((self.offset, bytes.to_vec()));
                }
                self.offset = h.next_offset();
                moved = true;
            }
            pos = end;
        }
        // Only skipped batches (markers, aborted data): not the end, just nothing to show.
        Ok(moved.then_some(out))
    }
}
