//! Test tooling of kxgw, kept out of the product library:
//!
//! - [`testnet`]: namespaces + veth pairs for tests, benchmarks and the demo.
//! - [`fuzzing`]: fuzz entry points (cargo-fuzz targets in `fuzz/`, corpus replay in tests).

pub mod fuzzing;
pub mod testnet;
