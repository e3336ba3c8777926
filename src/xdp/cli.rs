//! Command-line flags of the fast path, shared by `kxgw serve` and `kxgw xdp-raw`.

use super::acl::Cidr;
use super::bind::{BindPolicy, TxStrategy};
use super::engine::EngineConfig;
use super::loader::XdpMode;

/// `--xdp-*` flags.
#[derive(Clone, Debug)]
pub struct XdpArgs {
    /// Interface to attach the XDP steering program and AF_XDP sockets to.
    pub iface: Option<String>,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// RX queues to serve (0..N); default: all queues of the interface.
    pub queues: Option<u32>,
    /// Spin on the rings and enable kernel busy polling (lowest latency, burns a core per queue).
    pub busy_poll: bool,
    /// How payload bytes are transmitted.
    pub tx_strategy: TxStrategy,
    /// Fail instead of falling back to kernel UDP when XDP cannot be set up.
    pub require_xdp: bool,
    /// Consumer prefixes allowed to fetch (repeatable); default: everyone.
    pub allow: Vec<Cidr>,
    /// Size of the UMEM log arena (MiB) that stages log pages for the sg strategy.
    pub arena_mib: u64,
    /// Register the log's segment files that live on tmpfs as UMEM themselves, so `sg`
    /// descriptors point at their pages with no staging copy. Opens them read-write (required
    /// for a UMEM mapping; kxgw never writes them) and pins them; segments must not be
    /// truncated while the gateway runs. Files elsewhere and bytes appended after startup are
    /// staged through the arena.
    pub umem_segments: bool,
    /// AF_XDP bind: `auto` takes the best the driver offers (zero-copy multi-buffer,
    /// zero-copy single-buffer, copy multi-buffer, copy); `zero-copy` fails without it;
    /// `copy` never tries zero-copy.
    pub xdp_bind: BindPolicy,
    /// Same as `--xdp-bind copy` (kept for existing command lines).
    pub no_zero_copy: bool,
    /// Write the UMEM's physical page ranges (from /proc/self/pagemap) to FILE after binding,
    /// to check a trace of the driver's TX DMA addresses against (scripts/testvm.sh).
    pub xdp_umem_pagemap: Option<std::path::PathBuf>,
}

impl XdpArgs {
    /// Engine configuration for `endpoint` on interface `iface`.
    pub fn engine_config(&self, iface: &str, endpoint: std::net::SocketAddr) -> EngineConfig {
        EngineConfig {
            iface: iface.to_string(),
            endpoint,
            allow: self.allow.clone(),
            xdp_mode: self.xdp_mode,
            queues: self.queues,
            busy_poll: self.busy_poll,
            tx_strategy: self.tx_strategy,
            arena_bytes: self.arena_mib.max(1) << 20,
            resident: Vec::new(),
            bind: if self.no_zero_copy {
                BindPolicy::Copy
            } else {
                self.xdp_bind
            },
            umem_pagemap: self.xdp_umem_pagemap.clone(),
        }
    }
}
