//! Subcommands of the `kxgw` binary. Each module owns its clap `Args` and a `run` function;
//! `main.rs` only dispatches.

pub mod consume;
pub mod demo;
pub mod inspect;
pub mod produce;
pub mod serve;
pub mod stats;
pub mod users;
pub mod xdp_raw;
