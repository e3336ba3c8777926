//! A minimal blocking Kafka Fetch client: one connection, codecs from the `kafka-protocol`
//! crate. It is the measuring consumer of the TCP paths, so it does no more work per byte than a
//! real consumer must (read the response, walk and CRC-check the batches). Sending a request and
//! reading its response are separate calls so a consumer can have the next Fetch on the wire
//! while it checks the records of the last one, as the Java consumer and librdkafka do.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};

use kxgw::kafka::frame::encode_request;

/// Largest response the client accepts (a bad length prefix must not allocate gigabytes).
const MAX_RESPONSE: usize = 256 << 20;

/// One partition's answer to a fetch.
#[derive(Debug, Clone)]
pub struct FetchAnswer {
    /// Kafka error code of the partition (0 = none).
    pub error_code: i16,
    /// High watermark reported by the gateway.
    pub high_watermark: i64,
    /// The records section (whole batches, possibly a partial one at the end).
    pub records: Bytes,
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

/// A blocking connection to a Kafka(-protocol) listener.
#[derive(Debug)]
pub struct KafkaFetcher {
    stream: TcpStream,
    topic: String,
    version: i16,
    correlation: i32,
    /// Correlation ids of the requests sent and not yet answered, oldest first.
    in_flight: std::collections::VecDeque<i32>,
    /// Response buffer, reused: a fresh multi-MiB allocation per response would cost the
    /// consumer a page fault per 4 KiB, work no real consumer does.
    buf: BytesMut,
    /// Spin on a non-blocking socket instead of sleeping in read(2) (and the bound of a read).
    spin: Option<Duration>,
}

impl KafkaFetcher {
    /// Connects to `addr` (HOST:PORT) for fetches of `topic` with Fetch request `version`.
    pub fn connect(addr: &str, topic: &str, version: i16) -> Result<KafkaFetcher> {
        if !(4..=11).contains(&version) {
            bail!("fetch version {version} not supported by the bench client (4..=11)");
        }
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(KafkaFetcher {
            stream,
            topic: topic.to_owned(),
            version,
            correlation: 0,
            in_flight: Default::default(),
            buf: BytesMut::new(),
            spin: None,
        })
    }

    /// Sets a read timeout (long-poll responses may take up to max_wait_ms).
    pub fn set_timeout(&self, t: Duration) -> Result<()> {
        self.stream.set_read_timeout(Some(t)).context("SO_RCVTIMEO")
    }

    /// Makes reads spin on the non-blocking socket (yielding the core between tries) for at
    /// most `bound` each: the consumer never sleeps, so its wake-up is not part of a delay.
    pub fn set_spin(&mut self, bound: Duration) -> Result<()> {
        self.stream.set_nonblocking(true).context("O_NONBLOCK")?;
        self.spin = Some(bound);
        Ok(())
    }

    /// Fills `buf` from the socket, blocking or spinning.
    fn read_full(stream: &mut TcpStream, spin: Option<Duration>, buf: &mut [u8]) -> Result<()> {
        let Some(bound) = spin else {
            return stream.read_exact(buf).context("reading from the socket");
        };
        let t0 = std::time::Instant::now();
        let mut done = 0;
        while done < buf.len() {
            match stream.read(&mut buf[done..]) {
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

    /// Sends one Fetch request and waits for its response.
    pub fn fetch(&mut self, p: FetchParams) -> Result<FetchAnswer> {
        self.send(p)?;
        self.receive(p.partition)
    }

    /// Sends one Fetch request; [`KafkaFetcher::receive`] reads the responses in order.
    pub fn send(&mut self, p: FetchParams) -> Result<()> {
        self.correlation = self.correlation.wrapping_add(1);
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
            .with_replica_id((-1).into())
            .with_max_wait_ms(p.max_wait_ms)
            .with_min_bytes(p.min_bytes)
            .with_max_bytes(p.max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![topic]);
        let buf = encode_request(
            ApiKey::Fetch,
            self.version,
            self.correlation,
            "kxgw-bench",
            &req,
        )
        .context("encoding Fetch")?;
        self.stream.write_all(&buf).context("sending Fetch")?;
        self.in_flight.push_back(self.correlation);
        Ok(())
    }

    /// Reads the response to the oldest request in flight and returns `partition`'s answer.
    pub fn receive(&mut self, partition: i32) -> Result<FetchAnswer> {
        let Some(correlation) = self.in_flight.pop_front() else {
            bail!("receive without a request in flight");
        };

        let mut len = [0u8; 4];
        Self::read_full(&mut self.stream, self.spin, &mut len)
            .context("reading response length")?;
        let len = i32::from_be_bytes(len);
        if len < 0 || len as usize > MAX_RESPONSE {
            bail!("response length {len} out of range");
        }
        // The last response's Bytes are dropped by now (or soon), so reserve() reclaims the same
        // allocation; the zeroing of a resize touches memory the kernel copy then overwrites,
        // which is cheap next to the copy and keeps this free of unsafe.
        self.buf.clear();
        self.buf.resize(len as usize, 0);
        Self::read_full(&mut self.stream, self.spin, &mut self.buf)
            .with_context(|| format!("reading a response of {len} bytes"))?;
        let mut body: Bytes = self.buf.split().freeze();
        let rh = ResponseHeader::decode(&mut body, FetchResponse::header_version(self.version))
            .context("decoding response header")?;
        if rh.correlation_id != correlation {
            bail!("correlation id {} != {correlation}", rh.correlation_id);
        }
        let resp =
            FetchResponse::decode(&mut body, self.version).context("decoding Fetch response")?;
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
            records: data.records.unwrap_or_default(),
        })
    }
}
