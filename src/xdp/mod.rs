//! Fast path: the XDP steering program and the AF_XDP engine.
//!
//! - [`loader`]: loads `bpf/kxgw.bpf.c`, attaches it through a bpf_link, owns its maps.
//! - [`acl`]: consumer allowlist prefixes.
//! - [`packet`]: request parsing and reply header building.

pub mod acl;
pub mod error;
pub mod loader;
pub mod packet;
pub mod skel;

pub use acl::Cidr;
pub use error::XdpError;
pub use loader::{Steering, SteeringConfig, SteeringCounters, XdpMode};

#[cfg(test)]
mod steering_tests;
