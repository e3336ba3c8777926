//! Benchmark helpers behind the hidden `kxgw bench-tool` subcommand, driven by
//! `scripts/bench.sh`. They are measuring instruments, not product paths:
//!
//! - [`batches`]: walks and CRC-checks the record batches a consumer received;
//! - [`kafka_client`]: a minimal blocking Kafka Fetch client (kcat is too slow to measure with);
//! - [`load`]: N concurrent Kafka consumers of one partition, consumer-side throughput;
//! - [`sendfile_loop`]: a protocol-free sendfile(2) server and stream reader, the ceiling of the
//!   sendfile path on the same link;
//! - [`raw_udp`]: a recvmmsg receiver for the raw AF_XDP generator (the fast path's ceiling);
//! - [`latency`]: a stamping producer and tailing probes (produce-to-consume delay).

pub mod batches;
pub mod kafka_client;
pub mod latency;
pub mod load;
pub mod raw_udp;
pub mod sendfile_loop;

use std::time::Duration;

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
    pub fn to_json(&self, extra: &str) -> String {
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
