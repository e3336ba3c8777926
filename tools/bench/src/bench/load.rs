//! N concurrent Kafka consumers of one partition (one connection and thread each), each reading
//! from an offset until it has a given number of records or reaches the log end. Reports the
//! aggregate consumer-side throughput.

use std::sync::Barrier;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kxgw::kafka::client::{FetchParams, Fetcher};

use super::batches;
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
    /// Over TLS (an SSL listener): the client settings.
    pub tls: Option<kxgw::kafka::tls::ClientTls>,
}

fn consume_one(cfg: &LoadConfig, start: &Barrier) -> Result<(u64, u64)> {
    let conn = Fetcher::connect_with(
        &cfg.bootstrap,
        &cfg.topic,
        cfg.version,
        "kxgw-bench",
        cfg.tls.as_ref(),
    )
    .and_then(|f| f.set_timeout(Duration::from_secs(30)).map(|()| f));
    // Wait even when connecting failed, or the others would wait for us forever.
    start.wait();
    let mut f = conn?;
    let params = |offset| FetchParams {
        partition: cfg.partition,
        offset,
        max_bytes: cfg.max_bytes,
        max_wait_ms: 0,
        min_bytes: 1,
    };
    let mut offset = cfg.start_offset;
    let (mut bytes, mut records) = (0u64, 0u64);
    f.send(params(offset))?;
    loop {
        let ans = f.receive(cfg.partition)?;
        if ans.error_code != 0 {
            bail!("partition error code {} at offset {offset}", ans.error_code);
        }
        // Headers first: they give the next offset, so the next Fetch is on the wire while this
        // response's CRCs are checked (the pipelining of the Java consumer and librdkafka).
        let c = batches::check(&ans.records, offset, false)
            .with_context(|| format!("walking the batches fetched at offset {offset}"))?;
        if c.batches == 0 {
            if offset >= ans.high_watermark && cfg.records == 0 {
                break;
            }
            bail!(
                "empty fetch at offset {offset} (high watermark {})",
                ans.high_watermark
            );
        }
        let done = (cfg.records > 0 && records + c.records >= cfg.records)
            || (cfg.records == 0 && c.next_offset >= ans.high_watermark);
        if !done {
            f.send(params(c.next_offset))?;
        }
        if cfg.verify {
            batches::check(&ans.records, offset, true)
                .with_context(|| format!("checking the batches fetched at offset {offset}"))?;
        }
        bytes += c.bytes as u64;
        records += c.records;
        offset = c.next_offset;
        if done {
            break;
        }
    }
    Ok((bytes, records))
}

/// Runs the consumers and returns the aggregate (elapsed = from the common start to the last
/// consumer's last byte).
pub fn run(cfg: &LoadConfig) -> Result<Throughput> {
    let cfg = cfg.clone();
    super::run_consumers(cfg.consumers, move |start| consume_one(&cfg, start))
}
