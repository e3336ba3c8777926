//! Benchmark helpers of the `kxgw-bench` binary, driven by
//! `scripts/bench.sh`. They are measuring instruments, not product paths:
//!
//! - [`batches`]: walks and CRC-checks the record batches a consumer received;
//! - [`load`]: N concurrent Kafka consumers of one partition, consumer-side throughput (with
//!   the library's blocking client `kxgw::kafka::client::Fetcher`; kcat is too slow to measure
//!   with);
//! - [`fetch_load`]: the same over the kxgw fetch protocol;
//! - [`sendfile_loop`]: a protocol-free sendfile(2) server and stream reader, the ceiling of the
//!   sendfile path on the same link;
//! - [`raw_udp`]: a recvmmsg receiver for the raw AF_XDP generator (the fast path's ceiling);
//! - [`latency`]: a stamping producer and tailing probes (produce-to-consume delay);
//! - [`hops`]: a tailing run's records joined with the gateway's tail trace (per-record hops).

pub mod batches;
pub mod fetch_load;
pub mod hops;
pub mod latency;
pub mod load;
pub mod raw_udp;
pub mod sendfile_loop;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// What one measuring client reports, printed as one JSON line for the script to parse.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    /// Record-batch bytes (or stream bytes) delivered to the consumer.
    pub bytes: u64,
    /// Records delivered (0 for protocol-free streams).
    pub records: u64,
    /// Wall time from the first request to the last byte.
    pub elapsed: Duration,
}

impl Throughput {
    /// One JSON object (no serde_json dependency for four numbers).
    pub fn to_json(self, extra: &str) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "{{\"bytes\":{},\"records\":{},\"secs\":{:.6},\"gbps\":{:.4},\"records_per_s\":{:.1}{}}}",
            self.bytes,
            self.records,
            secs,
            self.bytes as f64 * 8.0 / secs / 1e9,
            self.records as f64 / secs,
            extra
        )
    }
}

/// Runs `consumers` threads of `consume` (which returns its bytes and records), released
/// together by a barrier the thread must wait on once it is connected (or failed to). The
/// aggregate's elapsed time runs from that common start to the last thread's end.
pub fn run_consumers<F>(consumers: usize, consume: F) -> Result<Throughput>
where
    F: Fn(&Barrier) -> Result<(u64, u64)> + Send + Sync + 'static,
{
    if consumers == 0 {
        bail!("--consumers must be at least 1");
    }
    let barrier = Arc::new(Barrier::new(consumers + 1));
    let consume = Arc::new(consume);
    let handles: Vec<_> = (0..consumers)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let consume = Arc::clone(&consume);
            std::thread::spawn(move || consume(&barrier))
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
