//! Produce-to-consume delay. The stamping producer writes the wall-clock time (ns) into the
//! first bytes of each record value just before appending it; a tailing consumer on the same
//! machine (same clock) reads the stamp when the record arrives. The delay covers the append,
//! the gateway noticing it, the response, and the consumer's receive path.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;

use super::batches;
use kxgw::kafka::client::{FetchParams, Fetcher};
use kxgw::log::writer::{NewRecord, PartitionWriter, WriterConfig};

/// Prefix of a stamped value: `kxts` + 20 decimal digits of ns since the epoch.
pub const STAMP_PREFIX: &[u8] = b"kxts";
/// Length of the stamp at the start of a value.
pub const STAMP_LEN: usize = 24;

/// Wall-clock time in ns since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
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

/// Delay of every stamped record in a section of whole batches, measured against `arrival_ns`.
/// Records below `from_offset` (the start of a batch that straddles it) are skipped.
pub fn delays_in(
    records: &Bytes,
    from_offset: i64,
    arrival_ns: u64,
    out: &mut Vec<u64>,
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
                Some(ns) => out.push(arrival_ns.saturating_sub(ns)),
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
/// `t.count` stamped records arrived (or `t.deadline` passed) and returns their delays (ns).
pub fn tail_kafka(bootstrap: &str, topic: &str, max_wait_ms: i32, t: Tail) -> Result<Vec<u64>> {
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
    let mut delays = Vec::with_capacity(count);
    while delays.len() < count && t0.elapsed() < deadline {
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
        delays_in(&whole, offset, arrival, &mut delays)?;
        offset = c.next_offset;
    }
    Ok(delays)
}

/// Tails a partition over the kxgw fetch protocol (kernel-UDP consumer, blocking in poll(2)
/// like the Kafka probe blocks in read, or spinning) from `t.offset` until `t.count` stamped
/// records arrived (or `t.deadline` passed) and returns their delays (ns).
pub fn tail_fetch(server: std::net::SocketAddr, topic: &str, t: Tail) -> Result<Vec<u64>> {
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
    let mut delays = Vec::with_capacity(count);
    while delays.len() < count && t0.elapsed() < deadline {
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
                    delays_in(&data, b.from_offset.max(offset), arrival, &mut delays)?;
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
    Ok(delays)
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
            timestamp: (ns / 1_000_000) as i64,
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
