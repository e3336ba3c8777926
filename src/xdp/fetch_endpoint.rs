//! The fetch protocol served over AF_XDP: one [`crate::fetch::Server`] per engine worker
//! (queue), woken by log appends, and the `serve` entry point that falls back to the
//! kernel-UDP transport when XDP cannot be set up (unless `--require-xdp`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::arena::SourceId;
use super::cli::XdpArgs;
use super::engine::{Datagram, Engine, Service, TxPayload, WorkerContext};
use crate::fetch::gateway::{FetchArgs, FetchListener};
use crate::fetch::{Payload, Server, ServerConfig, ServerStats};
use crate::log::{segment, LogDir};

impl TxPayload for Payload {
    fn bytes(&self) -> &[u8] {
        Payload::bytes(self)
    }

    fn ahead(&self) -> &[u8] {
        // The rest of this fetch response, straight from the segment mapping.
        &self.slice.bytes()[self.offset..]
    }

    fn read_at(&self, at: usize, dst: &mut [u8]) -> bool {
        Payload::read_at(self, at, dst).is_ok()
    }

    fn source(&self) -> SourceId {
        // One open File per segment: it stays the same while the segment grows and is
        // replaced when the segment is truncated or swapped, so it identifies the bytes.
        SourceId {
            id: Arc::as_ptr(&self.slice.file) as usize,
            keep: self.slice.file.clone(),
        }
    }

    fn position(&self) -> u64 {
        self.file_position()
    }

    fn file(&self) -> Option<&std::fs::File> {
        Some(&self.slice.file)
    }
}

/// A fetch server driven by one engine worker.
pub struct FetchService {
    server: Server,
    published: Arc<Mutex<Vec<ServerStats>>>,
    slot: usize,
    next_publish: Instant,
}

impl FetchService {
    fn maybe_publish(&mut self, now: Instant) {
        if now >= self.next_publish {
            self.next_publish = now + Duration::from_millis(500);
            if let Ok(mut p) = self.published.lock() {
                if let Some(s) = p.get_mut(self.slot) {
                    *s = self.server.stats().clone();
                }
            }
        }
    }
}

impl Drop for FetchService {
    fn drop(&mut self) {
        self.next_publish = Instant::now();
        self.maybe_publish(Instant::now());
    }
}

impl Service for FetchService {
    type Payload = Payload;

    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, _local: SocketAddr, data: &[u8]) {
        self.server.handle_datagram(now, src, data);
        self.maybe_publish(now);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Datagram<Payload>> {
        self.server.poll_transmit(now).map(|t| Datagram {
            dst: t.dst,
            header: t.header,
            payload: t.payload,
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // Also come back for the stats.
        let t = self.next_publish;
        Some(self.server.poll_timeout().map_or(t, |s| s.min(t)))
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        self.maybe_publish(now);
    }

    fn handle_wake(&mut self, now: Instant) {
        self.server.handle_log_append(now);
    }
}

/// Every segment file of every partition of `log`, for `--umem-segments`.
fn segment_files(log: &LogDir) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for p in log.partitions() {
        let bases = segment::list_segments(p.dir())
            .with_context(|| format!("listing the segments of {}", p.dir().display()))?;
        out.extend(bases.into_iter().map(|b| {
            p.dir()
                .join(format!("{}{}", segment::file_stem(b), segment::LOG_SUFFIX))
        }));
    }
    Ok(out)
}

/// The fetch endpoint on AF_XDP.
pub struct XdpFetch {
    engine: Engine,
    endpoint: SocketAddr,
    iface: String,
    published: Arc<Mutex<Vec<ServerStats>>>,
}

impl XdpFetch {
    /// Attaches to `iface` and serves `endpoint` from `log`.
    pub fn start(
        log: &Arc<LogDir>,
        iface: &str,
        endpoint: SocketAddr,
        args: &XdpArgs,
    ) -> Result<XdpFetch> {
        let mut cfg = args.engine_config(iface, endpoint);
        if args.umem_segments {
            cfg.resident = segment_files(log)?;
        }
        let published = Arc::new(Mutex::new(Vec::new()));
        let engine = Engine::start(&cfg, |ctx: WorkerContext| {
            let slot = match published.lock() {
                Ok(mut p) => {
                    p.push(ServerStats::default());
                    p.len() - 1
                }
                Err(_) => 0,
            };
            let server = Server::new(
                log.clone(),
                ServerConfig {
                    max_datagram: ctx.max_datagram,
                    ..ServerConfig::default()
                },
            );
            FetchService {
                server,
                published: published.clone(),
                slot,
                next_publish: Instant::now(),
            }
        })?;
        let wakers = engine.wakers();
        log.on_append(Box::new(move |_| {
            for w in &wakers {
                w.wake();
            }
        }));
        Ok(XdpFetch {
            engine,
            endpoint,
            iface: iface.to_string(),
            published,
        })
    }

    /// The engine (bind mode, counters).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// One line per queue of fetch counters, then the engine's and the XDP program's.
    pub fn report(&self) -> String {
        let resident = match self.engine.resident() {
            (0, _) => String::new(),
            (n, bytes) => format!(
                ", {n} segment file(s) ({} MiB) registered as UMEM",
                bytes >> 20
            ),
        };
        let mut out = format!(
            "fetch over AF_XDP on {} {} (bind mode {}, TX strategy {}, {} queue(s){resident})",
            self.iface,
            self.endpoint,
            self.engine.bind_mode().name(),
            self.engine.tx_strategy().name(),
            self.engine.queues()
        );
        if let Ok(p) = self.published.lock() {
            for (q, s) in p.iter().enumerate() {
                out.push_str(&format!("\n  queue {q}: {s}"));
            }
        }
        out.push_str(&format!("\n  engine: {:?}", self.engine.stats()));
        match self.engine.steering_counters() {
            Ok(c) => out.push_str(&format!("\n  steering: {c:?}")),
            Err(e) => out.push_str(&format!("\n  steering: {e}")),
        }
        out
    }

    /// Stops the workers; the XDP program goes with the engine.
    pub fn shutdown(mut self) {
        self.engine.stop();
    }

    /// Exposes the fetch, engine and XDP counters (labels transport="af_xdp", endpoint, queue).
    pub fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        let handle = self.engine.stats_handle();
        let published = self.published.clone();
        let endpoint = self.endpoint.to_string();
        let iface = self.iface.clone();
        let mode = self.engine.bind_mode().name();
        let strategy = self.engine.tx_strategy().name();
        metrics.register(move |w| {
            let base: &[(&str, &str)] = &[("transport", "af_xdp"), ("endpoint", &endpoint)];
            if let Ok(p) = published.lock() {
                for (q, s) in p.iter().enumerate() {
                    let q = q.to_string();
                    let l: &[(&str, &str)] = &[
                        ("transport", "af_xdp"),
                        ("endpoint", &endpoint),
                        ("queue", &q),
                    ];
                    s.write_metrics(w, l);
                }
            }
            w.gauge(
                "xdp_bind_info",
                "AF_XDP socket bind mode and TX strategy (value 1)",
                &[("iface", &iface), ("mode", mode), ("tx_strategy", strategy)],
                1.0,
            );
            let e = handle.stats();
            for (name, help, v) in [
                (
                    "xdp_rx_packets_total",
                    "Requests received on AF_XDP sockets",
                    e.rx_packets,
                ),
                (
                    "xdp_rx_invalid_total",
                    "Frames that did not parse as UDP",
                    e.rx_invalid,
                ),
                (
                    "xdp_tx_packets_total",
                    "Datagrams sent from the UMEM",
                    e.tx_packets,
                ),
                (
                    "xdp_tx_bytes_total",
                    "UDP payload bytes sent from the UMEM",
                    e.tx_bytes,
                ),
                (
                    "xdp_tx_sg_total",
                    "Datagrams sent as header + log page descriptors",
                    e.tx_sg,
                ),
                (
                    "xdp_tx_copy_total",
                    "Datagrams sent copied into frames",
                    e.tx_copy,
                ),
                ("xdp_tx_descs_total", "TX descriptors used", e.tx_descs),
                (
                    "xdp_tx_invalid_descs_total",
                    "TX descriptors the kernel rejected",
                    e.tx_invalid_descs,
                ),
                (
                    "xdp_rx_dropped_total",
                    "Requests the kernel dropped before the RX ring",
                    e.rx_dropped,
                ),
                (
                    "xdp_oversize_total",
                    "Datagrams dropped for exceeding the MTU",
                    e.oversize,
                ),
                (
                    "xdp_no_route_total",
                    "Datagrams to peers never heard from",
                    e.no_route,
                ),
                (
                    "xdp_tx_resident_bytes_total",
                    "Log bytes sent from segment pages registered as UMEM (--umem-segments)",
                    e.tx_resident_bytes,
                ),
                (
                    "xdp_arena_staged_bytes_total",
                    "Log bytes staged into the UMEM arena",
                    e.arena.staged_bytes,
                ),
                (
                    "xdp_arena_hit_bytes_total",
                    "Log bytes sent from already staged arena pages",
                    e.arena.hit_bytes,
                ),
                (
                    "xdp_arena_evictions_total",
                    "Arena blocks evicted",
                    e.arena.evictions,
                ),
                (
                    "xdp_arena_full_total",
                    "sg datagrams sent by copy: arena blocks all in flight",
                    e.arena_full,
                ),
            ] {
                w.counter(name, help, base, v);
            }
            if let Ok(c) = handle.steering() {
                for (verdict, v) in [
                    ("steered", c.steered),
                    ("passed", c.passed),
                    ("dropped_acl", c.dropped_acl),
                    ("dropped_malformed", c.dropped_malformed),
                    ("no_socket", c.no_socket),
                ] {
                    w.counter(
                        "xdp_program_packets_total",
                        "Packets seen by the XDP steering program, by verdict",
                        &[("iface", &iface), ("verdict", verdict)],
                        v,
                    );
                }
            }
        });
    }
}

/// The fetch endpoint `kxgw serve` runs: AF_XDP when `--xdp-iface` is given and works, else
/// kernel UDP.
pub enum FetchEndpoint {
    /// AF_XDP transport.
    Xdp(Box<XdpFetch>),
    /// Kernel-UDP transport.
    Udp(FetchListener),
}

impl FetchEndpoint {
    /// Counters, for the periodic report.
    pub fn report(&self) -> String {
        match self {
            FetchEndpoint::Xdp(x) => x.report(),
            FetchEndpoint::Udp(u) => {
                format!("fetch over kernel UDP on {}: {}", u.local_addr(), u.stats())
            }
        }
    }

    /// Registers its counters.
    pub fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        match self {
            FetchEndpoint::Xdp(x) => x.register_metrics(metrics),
            FetchEndpoint::Udp(u) => u.register_metrics(metrics),
        }
    }

    /// Stops it.
    pub fn shutdown(self) {
        match self {
            FetchEndpoint::Xdp(x) => x.shutdown(),
            FetchEndpoint::Udp(u) => u.shutdown(),
        }
    }
}

/// Starts the fetch endpoint of `kxgw serve` (None without `--fetch-listen`): over AF_XDP
/// when `--xdp-iface` is given; if that fails, says why and falls back to kernel UDP, unless
/// `--require-xdp`.
pub fn start(log: &Arc<LogDir>, fetch: &FetchArgs, xdp: &XdpArgs) -> Result<Option<FetchEndpoint>> {
    let Some(listen) = fetch.fetch_listen else {
        if xdp.iface.is_some() {
            anyhow::bail!("--xdp-iface needs --fetch-listen IP:PORT (the endpoint it serves)");
        }
        return Ok(None);
    };
    if let Some(iface) = &xdp.iface {
        match XdpFetch::start(log, iface, listen, xdp) {
            Ok(x) => {
                log::info!(
                    "fetch endpoint {listen} served over AF_XDP on {iface}: bind mode {}, TX strategy {}",
                    x.engine().bind_mode().name(),
                    x.engine().tx_strategy().name()
                );
                println!(
                    "kxgw: fetch endpoint {listen} on AF_XDP ({iface}, bind mode {}, TX strategy {})",
                    x.engine().bind_mode().name(),
                    x.engine().tx_strategy().name()
                );
                return Ok(Some(FetchEndpoint::Xdp(Box::new(x))));
            }
            Err(e) if xdp.require_xdp => {
                return Err(e).with_context(|| {
                    format!("--require-xdp: cannot serve {listen} over AF_XDP on {iface}")
                });
            }
            Err(e) => {
                log::warn!(
                    "AF_XDP on {iface} unavailable ({e:#}); falling back to kernel UDP for {listen}"
                );
                println!("kxgw: AF_XDP on {iface} unavailable ({e:#}); fetch endpoint {listen} on kernel UDP");
            }
        }
    }
    let udp =
        FetchListener::start(log, fetch)?.context("the kernel-UDP fetch endpoint did not start")?;
    println!("kxgw: fetch endpoint {} on kernel UDP", udp.local_addr());
    Ok(Some(FetchEndpoint::Udp(udp)))
}
