//! kxgw: a kernel-bypass consumer gateway for Kafka partition logs.
//!
//! This library is the product; the `kxgw` binary (`cli/`), the test tooling
//! (`tools/testkit`) and the benchmarks (`tools/bench`) are built on it:
//!
//! - [`log`]: Kafka partition logs on disk (reader with follower, broker-compatible writer).
//! - [`metrics`]: counters in Prometheus text for `kxgw stats` and scrapers.
//! - [`config`], [`privileges`]: the service side of `kxgw serve` (TOML config, capabilities).
//! - [`kafka`]: the Kafka-protocol TCP listener (consumer subset; sendfile or copy).
//! - [`driver`]: the one loop that runs a fetch (or raw) service over kernel UDP or an AF_XDP queue.
//! - [`fetch`]: the kxgw UDP fetch protocol (sans-I/O cores, kernel-UDP gateway and consumer).
//! - [`xdp`]: the fast path: XDP steering program, AF_XDP engine (UMEM + log arena, sg/copy TX).

pub mod config;
pub mod driver;
pub mod fetch;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod privileges;
pub mod xdp;

#[cfg(test)]
mod test_support {
    /// Fails with a clear message when not root (the test attaches XDP or pins memory).
    pub fn require_root() -> anyhow::Result<()> {
        if !nix::unistd::geteuid().is_root() {
            anyhow::bail!(
                "this needs root (CAP_NET_ADMIN, CAP_BPF) to create network namespaces, veth \
                 pairs and attach XDP; run it as root (CI does)"
            );
        }
        Ok(())
    }
}
