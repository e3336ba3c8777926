//! Fast path: the XDP steering program and the AF_XDP engine.
//!
//! - [`loader`]: loads `bpf/kxgw.bpf.c`, attaches it through a bpf_link, owns its maps.
//! - [`acl`]: consumer allowlist prefixes.
//! - [`packet`]: request parsing and reply header building.
//! - [`consts`]: the sizes and flags every part agrees on; [`sys`]: the few plain socket calls.
//! - [`umem`]: the UMEM (frames + log arenas + resident segments); [`arena`]: a log arena
//!   cache (one per queue); [`resident`]: tmpfs segment files registered as UMEM
//!   (`--umem-segments`); [`frames`]: the ledger of UMEM frames outstanding; [`pagemap`]:
//!   the UMEM's physical page ranges (for the test VM's DMA check).
//! - [`bind`]: which bind modes to try and what each allows; [`xsk`]: per-queue AF_XDP sockets; [`queue`]: one queue as the fetch driver's transport
//!   (rings, TX strategies); [`engine`]: sets the queues up and runs one driver per queue.
//! - [`fetch_endpoint`]: the fetch protocol over the engine, and `serve`'s endpoint with fallback.
//!
//! - [`cli`]: the `--xdp-*` flags.
//!
//! Imports go one way: consts/sys/error <- umem/arena/resident/xsk/packet <- queue <- engine
//! <- fetch_endpoint; segment identity ([`crate::log::SourceId`]) comes from the log.
//! Services other than the fetch protocol (the raw generator of `kxgw xdp-raw`, in
//! kxgw-testkit) run on the engine through [`Engine::start`], [`WorkerContext`] and the
//! [`crate::driver`] traits.

pub mod acl;
pub mod arena;
pub mod bind;
pub mod cli;
pub mod consts;
pub mod engine;
pub mod error;
pub mod fetch_endpoint;
pub mod frames;
pub mod loader;
pub mod packet;
pub mod pagemap;
mod queue;
mod read_ahead;
pub mod resident;
pub mod skel;
pub mod sys;
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
