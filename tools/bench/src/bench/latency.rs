//! Produce-to-consume delay. The stamping producer writes the time (CLOCK_MONOTONIC ns, the
//! gateway's tail-trace clock) into the first bytes of each record value just before
//! appending it; a tailing consumer on the same machine (same clock, in any network
//! namespace) reads the stamp when the record arrives. The delay covers the append, the
//! gateway noticing it, the response, and the consumer's receive path; the probes can write
//! each record's (offset, stamp, arrival) for the per-hop join with the gateway's trace
//! ([`super::hops`]).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use super::batches;
use kxgw::kafka::client::{FetchParams, Fetcher};
use kxgw::log::writer::{NewRecord, PartitionWriter, WriterConfig};

/// Prefix of a stamped value: `kxts` + 20 decimal digits of [`now_ns`].
pub const STAMP_PREFIX: &[u8] = b"kxts";
/// Length of the stamp at the start of a value.
pub const STAMP_LEN: usize = 24;

/// CLOCK_MONOTONIC in ns: the clock of the gateway's tail trace, shared by every process of
/// the host.
pub fn now_ns() -> u64 {
    kxgw::log::tail::clock_ns()
}

/// Wall-clock ms since the Unix epoch (the records' Kafka timestamps).
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One stamped record as a probe received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub partition: i32,
    pub offset: i64,
    /// The producer's stamp, just before the append ([`now_ns`]).
    pub append_ns: u64,
    /// When the probe had it ([`now_ns`]).
    pub arrival_ns: u64,
}

impl Arrival {
    /// Produce-to-consume delay, ns.
    pub fn delay(&self) -> u64 {
        self.arrival_ns.saturating_sub(self.append_ns)
    }
}

/// Header of the probe's record file ([`write_arrivals`]).
pub const ARRIVALS_HEADER: &str = "# partition offset append_ns arrival_ns";

/// Writes one tab-separated line per record after [`ARRIVALS_HEADER`].
pub fn write_arrivals(path: &Path, arrivals: &[Arrival]) -> Result<()> {
    let mut out = String::with_capacity(64 * arrivals.len() + 64);
    out.push_str(ARRIVALS_HEADER);
    out.push('\n');
    for a in arrivals {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            a.partition, a.offset, a.append_ns, a.arrival_ns
        ));
    }
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(out.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A value of `size` bytes (at least the stamp) that starts with the stamp `ns`, printable.
pub fn stamped_value(ns: u64, size: usize) -> Vec<u8> {
    let mut v = format!("kxts{ns:020}").into_bytes();
    v.resize(size.max(STAMP_LEN), b'.');
    v
}

/// The stamp at the start of a value, if it has one.
pub fn parse_stamp(value: &[u8]) -> Option<u64> {
    let digits = value.get(STAMP_PREFIX.len()..STAMP_LEN)?;
    if !value.starts_with(STAMP_PREFIX) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Delay percentiles of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median, ns.
    pub p50: u64,
    /// 99th percentile, ns.
    pub p99: u64,
    /// 99.9th percentile, ns.
    pub p999: u64,
    /// Largest, ns.
    pub max: u64,
}

impl Percentiles {
    /// Nearest-rank percentiles; None without samples.
    pub fn of(samples: &mut [u64]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let n = samples.len();
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(Percentiles {
            count: n,
            p50: rank(0.50),
            p99: rank(0.99),
            p999: rank(0.999),
            max: samples[n - 1],
        })
    }

    /// One JSON line, microseconds.
    pub fn to_json(self) -> String {
        let us = |ns: u64| ns as f64 / 1000.0;
        format!(
            "{{\"count\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}}}",
            self.count,
            us(self.p50),
            us(self.p99),
            us(self.p999),
            us(self.max)
        )
    }
}

/// Every stamped record of `partition` in a section of whole batches, arrived at
/// `arrival_ns`. Records below `from_offset` (the start of a batch that straddles it) are
/// skipped.
pub fn arrivals_in(
    records: &Bytes,
    (partition, from_offset): (i32, i64),
    arrival_ns: u64,
    out: &mut Vec<Arrival>,
) -> Result<()> {
    let mut rest = records.clone();
    while rest.len() >= 12 {
        let len = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if len < 0 || rest.len() < 12 + len as usize {
            break;
        }
        let mut one = rest.split_to(12 + len as usize);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut one)
            .map_err(|e| anyhow::anyhow!("decoding a fetched batch: {e}"))?;
        for r in set.records.iter().filter(|r| r.offset >= from_offset) {
            let stamp = r.value.as_deref().and_then(parse_stamp);
            match stamp {
                Some(ns) => out.push(Arrival {
                    partition,
                    offset: r.offset,
                    append_ns: ns,
                    arrival_ns,
                }),
                None => bail!("record {} carries no kxts stamp", r.offset),
            }
        }
    }
    Ok(())
}

/// How a tailing probe waits for the next response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Sleep in the kernel (read/poll), as stock consumers do.
    Block,
    /// Spin on a non-blocking socket, yielding the core between tries: the consumer's own
    /// wake-up from an idle vCPU (tens of µs on this VM) leaves the delay.
    Spin,
}

/// What a tailing probe reads and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct Tail {
    /// Partition of the topic.
    pub partition: i32,
    /// First offset to wait for.
    pub offset: i64,
    /// Stamped records to receive.
    pub count: usize,
    /// Give up after this long.
    pub deadline: Duration,
    /// Sleep or spin between responses.
    pub wait: Wait,
}

/// Tails a partition over the Kafka protocol with long-poll fetches from `t.offset` until
/// `t.count` stamped records arrived (or `t.deadline` passed) and returns them.
pub fn tail_kafka(bootstrap: &str, topic: &str, max_wait_ms: i32, t: Tail) -> Result<Vec<Arrival>> {
    let Tail {
        partition,
        mut offset,
        count,
        deadline,
        wait,
    } = t;
    let mut f = Fetcher::connect(bootstrap, topic, 11, "kxgw-bench")?;
    let bound = Duration::from_millis(max_wait_ms as u64) + Duration::from_secs(10);
    f.set_timeout(bound)?;
    if wait == Wait::Spin {
        f.set_spin(bound)?;
    }
    let t0 = std::time::Instant::now();
    let mut got = Vec::with_capacity(count);
    while got.len() < count && t0.elapsed() < deadline {
        let ans = f.fetch(FetchParams {
            partition,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms,
            min_bytes: 1,
        })?;
        let arrival = now_ns();
        if ans.error_code != 0 {
            bail!("partition error code {} at offset {offset}", ans.error_code);
        }
        let c = batches::check(&ans.records, offset, true)
            .with_context(|| format!("checking the batches fetched at offset {offset}"))?;
        if c.batches == 0 {
            continue;
        }
        let whole = ans.records.slice(..c.bytes);
        arrivals_in(&whole, (partition, offset), arrival, &mut got)?;
        offset = c.next_offset;
    }
    Ok(got)
}

/// Tails a partition over the kxgw fetch protocol (kernel-UDP consumer, blocking in poll(2)
/// like the Kafka probe blocks in read, or spinning) from `t.offset` until `t.count` stamped
/// records arrived (or `t.deadline` passed) and returns them.
pub fn tail_fetch(server: std::net::SocketAddr, topic: &str, t: Tail) -> Result<Vec<Arrival>> {
    let Tail {
        partition,
        offset,
        count,
        deadline,
        wait,
    } = t;
    use kxgw::fetch::consumer::UdpConsumer;
    use kxgw::fetch::{ClientConfig, Event, StartAt, Subscription};
    let cfg = ClientConfig {
        follow: true,
        ..ClientConfig::default()
    };
    let sub = Subscription {
        topic: topic.to_owned(),
        partition,
        start: StartAt::Offset(offset),
    };
    let mut c = UdpConsumer::connect(server, cfg, vec![sub])
        .with_context(|| format!("connecting to {server}"))?;
    let t0 = std::time::Instant::now();
    let mut got = Vec::with_capacity(count);
    while got.len() < count && t0.elapsed() < deadline {
        match wait {
            Wait::Block => c.poll(Duration::from_millis(100)),
            Wait::Spin => c.poll(Duration::ZERO).inspect(|_| {
                let _ = nix::sched::sched_yield();
            }),
        }
        .context("fetch consumer poll")?;
        while let Some(ev) = c.next_event() {
            match ev {
                Event::Batch(b) => {
                    let arrival = now_ns();
                    let data = Bytes::from(b.data);
                    let from = (partition, b.from_offset.max(offset));
                    arrivals_in(&data, from, arrival, &mut got)?;
                }
                Event::Unreachable => bail!("{server} did not answer the handshake"),
                Event::PartitionError {
                    code,
                    log_start,
                    log_end,
                    ..
                } => {
                    bail!("partition error {code:?} (log {log_start}..{log_end})")
                }
                _ => {}
            }
        }
    }
    Ok(got)
}

/// Appends `count` stamped records to `<log_dir>/<topic>-<partition>` at `rate` records/s, one
/// record per batch, each stamped just before its append and flushed at once (so the delay
/// measured starts when the bytes could first be seen). Returns the offset of the first one.
pub fn produce_stamped(
    log_dir: &Path,
    topic: &str,
    partition: i32,
    count: u64,
    rate: f64,
    value_size: usize,
) -> Result<i64> {
    if rate.is_nan() || rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let mut w = PartitionWriter::open(log_dir, topic, partition, WriterConfig::default())
        .with_context(|| format!("opening {topic}-{partition} under {}", log_dir.display()))?;
    let first = w.next_offset();
    let t0 = Instant::now();
    for i in 0..count {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let ns = now_ns();
        let value = stamped_value(ns, value_size);
        let rec = NewRecord {
            timestamp: wall_ms(),
            key: None,
            value: Some(&value),
            headers: Vec::new(),
        };
        w.append(std::slice::from_ref(&rec))
            .context("appending a stamped record")?;
        w.flush().context("flushing a stamped record")?;
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_rejects_others() {
        let v = stamped_value(1_764_000_000_123_456_789, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(parse_stamp(&v), Some(1_764_000_000_123_456_789));
        assert_eq!(parse_stamp(b"kxts12"), None);
        assert_eq!(parse_stamp(b"value-000000000000000000000000"), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<u64> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut s).unwrap();
        assert_eq!(
            (p.count, p.p50, p.p99, p.p999, p.max),
            (1000, 500, 990, 999, 1000)
        );
        assert!(Percentiles::of(&mut []).is_none());
    }
}
