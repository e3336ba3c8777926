//! N concurrent consumers of one partition over the kxgw fetch protocol (one UDP socket and
//! thread each, all in one process), each reading from the first offset until it has a given
//! number of records. The counterpart of [`super::load`] for the fetch paths: same start
//! barrier, same aggregate clock, same consumer work per byte (the protocol client CRC-checks
//! every batch; this walks the batch headers for offset continuity), so fan-out figures of the
//! two protocols compare like with like and process start-up is never part of them.

use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::batches;
use super::Throughput;
use kxgw::fetch::consumer::UdpConsumer;
use kxgw::fetch::{ClientConfig, Event, StartAt, Subscription};

/// What the fetch consumers do.
#[derive(Debug, Clone)]
pub struct FetchLoadConfig {
    /// The fetch endpoint.
    pub server: SocketAddr,
    /// Topic.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Concurrent consumers.
    pub consumers: usize,
    /// Records per consumer, from offset 0 (at least 1).
    pub records: u64,
    /// Give up after this long without finishing.
    pub timeout: Duration,
}

fn consume_one(cfg: &FetchLoadConfig, start: &Barrier) -> Result<(u64, u64)> {
    let sub = Subscription {
        topic: cfg.topic.clone(),
        partition: cfg.partition,
        start: StartAt::Offset(0),
    };
    let conn = UdpConsumer::connect(cfg.server, ClientConfig::default(), vec![sub])
        .with_context(|| format!("opening a UDP socket toward {}", cfg.server));
    // Wait even when the socket failed, or the others would wait for us forever.
    start.wait();
    let mut c = conn?;
    let t0 = Instant::now();
    let (mut bytes, mut records, mut next) = (0u64, 0u64, 0i64);
    while records < cfg.records {
        if t0.elapsed() > cfg.timeout {
            bail!(
                "{records} of {} records after {:?}",
                cfg.records,
                cfg.timeout
            );
        }
        c.poll(Duration::from_millis(50))
            .with_context(|| format!("fetching from {}", cfg.server))?;
        while let Some(ev) = c.next_event() {
            match ev {
                Event::Batch(b) => {
                    let checked = batches::check(&b.data, next, false)
                        .with_context(|| format!("batch delivered at offset {next}"))?;
                    if checked.batches != 1 || b.base_offset > next {
                        bail!(
                            "batch at {} delivered when offset {next} was due",
                            b.base_offset
                        );
                    }
                    // Count only the records not seen before (a batch may start below `next`).
                    records += (checked.next_offset - next) as u64;
                    bytes += b.data.len() as u64;
                    next = checked.next_offset;
                    c.recycle(b.data);
                }
                Event::Unreachable => bail!("{} did not answer the handshake", cfg.server),
                Event::PartitionError {
                    code,
                    log_start,
                    log_end,
                    ..
                } => bail!("partition error {code:?} (log {log_start}..{log_end})"),
                _ => {}
            }
        }
        if c.client().is_finished() && records < cfg.records {
            bail!(
                "the consumer finished after {records} of {} records",
                cfg.records
            );
        }
    }
    Ok((bytes, records))
}

/// Runs the consumers and returns the aggregate (elapsed = from the common start to the last
/// consumer's last record).
pub fn run(cfg: &FetchLoadConfig) -> Result<Throughput> {
    if cfg.records == 0 {
        bail!("--records must be at least 1");
    }
    let cfg = cfg.clone();
    super::run_consumers(cfg.consumers, move |start| consume_one(&cfg, start))
}
