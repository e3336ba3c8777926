//! kxgw: a kernel-bypass consumer gateway for Kafka partition logs.
//!
//! The library holds every layer so that the `kxgw` binary, the tests and the benchmarks
//! all run the same code:
//!
//! - [`log`]: Kafka partition logs on disk (reader with follower, broker-compatible writer).
//! - [`metrics`]: counters in Prometheus text for `kxgw stats` and scrapers.
//! - [`config`], [`privileges`]: the service side of `kxgw serve` (TOML config, capabilities).
//! - [`testnet`]: namespaces + veth pairs for tests, benchmarks and the demo.
//! - [`kafka`]: the Kafka-protocol TCP listener (consumer subset; sendfile or copy).
//! - [`driver`]: the one loop that runs a fetch (or raw) service over kernel UDP or an AF_XDP queue.
//! - [`fetch`]: the kxgw UDP fetch protocol (sans-I/O cores, kernel-UDP gateway and consumer).
//! - [`xdp`]: the fast path: XDP steering program, AF_XDP engine (UMEM + log arena, sg/copy TX).
//! - [`fuzzing`]: fuzz entry points (cargo-fuzz targets in `fuzz/`, corpus replay in tests).
//! - [`bench`]: measuring instruments of `scripts/bench.sh` (hidden `kxgw bench-tool`).
//! - [`cmd`]: the subcommands of the `kxgw` binary (thin: parse, call the library, report).

pub mod bench;
pub mod cmd;
pub mod config;
pub mod driver;
pub mod fetch;
pub mod fuzzing;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod privileges;
pub mod testnet;
pub mod xdp;
