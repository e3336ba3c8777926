//! Test tooling of kxgw, kept out of the product library:
//!
//! - [`testnet`]: namespaces + veth pairs for tests, benchmarks and the demo.
//! - [`fuzzing`]: fuzz entry points (cargo-fuzz targets in `fuzz/`, corpus replay in tests).
//! - [`demo_log`]: demo partition logs (`kxgw produce`), records from `kxgw_demo_data`.
//! - [`raw_gen`]: the raw AF_XDP echo/generator service and its client (`kxgw xdp-raw`).

pub mod demo_log;
pub mod fuzzing;
pub mod fuzzing_tls;
pub mod raw_gen;
pub mod testnet;
