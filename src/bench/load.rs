//! N concurrent Kafka consumers of one partition (one connection and thread each), each reading
//! from an offset until it has a given number of records or reaches the log end. Reports the
//! aggregate consumer-side throughput.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::batches;
use super::kafka_client::{FetchParams, KafkaFetcher};
use super::Throughput;

/// What the load consumers do.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Listener HOST:PORT.
    pub bootstrap: String,
    /// Topic and partition.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// Concurrent consumers.
    pub consumers: usize,
    /// First offset each consumer reads.
    pub start_offset: i64,
    /// Records per consumer; 0 = until the high watermark.
    pub records: u64,
    /// partition_max_bytes per Fetch.
    pub max_bytes: i32,
    /// Fetch request version.
    pub version: i16,
    /// CRC-check every batch.
    pub verify: bool,
}

fn consume_one(cfg: &LoadConfig, start: &Barrier) -> Result<(u64, u64)> {
    let conn = KafkaFetcher::connect(&cfg.bootstrap, &cfg.topic, cfg.version)
        .and_then(|f| f.set_timeout(Duration::from_secs(30)).map(|()| f));
    // Wait even when connecting failed, or the others would wait for us forever.
    start.wait();
    let mut f = conn?;
    let mut offset = cfg.start_offset;
    let (mut bytes, mut records) = (0u64, 0u64);
    loop {
        let ans = f.fetch(FetchParams {
            partition: cfg.partition,
            offset,
            max_bytes: cfg.max_bytes,
            max_wait_ms: 0,
            min_bytes: 1,
        })?;
        if ans.error_code != 0 {
            bail!("partition error code {} at offset {offset}", ans.error_code);
        }
        let c = batches::check(&ans.records, offset, cfg.verify)
            .with_context(|| format!("checking the batches fetched at offset {offset}"))?;
        if c.batches == 0 {
            if offset >= ans.high_watermark && cfg.records == 0 {
                break;
            }
            bail!(
                "empty fetch at offset {offset} (high watermark {})",
                ans.high_watermark
            );
        }
        bytes += c.bytes as u64;
        records += c.records;
        offset = c.next_offset;
        if cfg.records > 0 && records >= cfg.records {
            break;
        }
        if cfg.records == 0 && offset >= ans.high_watermark {
            break;
        }
    }
    Ok((bytes, records))
}

/// Runs the consumers and returns the aggregate (elapsed = from the common start to the last
/// consumer's last byte).
pub fn run(cfg: &LoadConfig) -> Result<Throughput> {
    if cfg.consumers == 0 {
        bail!("--consumers must be at least 1");
    }
    let barrier = Arc::new(Barrier::new(cfg.consumers + 1));
    let handles: Vec<_> = (0..cfg.consumers)
        .map(|_| {
            let cfg = cfg.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || consume_one(&cfg, &barrier))
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    let mut total = Throughput::default();
    let mut first_err = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok((b, r))) => {
                total.bytes += b;
                total.records += r;
            }
            Ok(Err(e)) => first_err = first_err.or(Some(e.context(format!("consumer {i}")))),
            Err(_) => first_err = first_err.or(Some(anyhow::anyhow!("consumer {i} panicked"))),
        }
    }
    total.elapsed = t0.elapsed();
    match first_err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}
