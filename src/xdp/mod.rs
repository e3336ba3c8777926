//! Fast path: the XDP steering program and the AF_XDP engine.
//!
//! - [`loader`]: loads `bpf/kxgw.bpf.c`, attaches it through a bpf_link, owns its maps.
//! - [`acl`]: consumer allowlist prefixes.
//! - [`packet`]: request parsing and reply header building.
//! - [`umem`]: the UMEM (frames + log arena + resident segments); [`arena`]: the log arena
//!   cache; [`resident`]: tmpfs segment files registered as UMEM (`--umem-segments`).
//! - [`bind`]: which bind modes to try and what each allows; [`xsk`]: per-queue AF_XDP sockets; [`engine`]: the per-queue workers and TX strategies.
//! - [`fetch_endpoint`]: the fetch protocol over the engine, and `serve`'s endpoint with fallback.
//! - [`raw`]: echo/generator service (`kxgw xdp-raw`); [`cli`]: the `--xdp-*` flags.

pub mod acl;
pub mod arena;
pub mod bind;
pub mod cli;
pub mod engine;
pub mod error;
pub mod fetch_endpoint;
pub mod frames;
pub mod loader;
pub mod packet;
pub mod pagemap;
pub mod raw;
pub mod resident;
pub mod skel;
pub mod umem;
pub mod xsk;

pub use acl::Cidr;
pub use bind::{BindMode, BindPolicy};
pub use engine::{
    Datagram, Engine, EngineConfig, EngineStats, Service, TxPayload, TxStrategy, Waker,
    WorkerContext,
};
pub use error::XdpError;
pub use loader::{Steering, SteeringConfig, SteeringCounters, XdpMode};

#[cfg(test)]
mod steering_tests;
