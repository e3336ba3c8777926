//! The fetch protocol served over AF_XDP: one [`crate::fetch::Server`] per engine worker
//! (queue), woken by the log's append batches that reach one of its parked polls, and the `serve` entry point that falls back to the
//! kernel-UDP transport when XDP cannot be set up (unless `--require-xdp`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::cli::XdpArgs;
use super::engine::{Engine, WorkerContext};
use crate::fetch::gateway::{FetchArgs, FetchListener, FetchStats};
use crate::fetch::{Server, ServerConfig};
use crate::log::appends::Watch;
use crate::log::{segment, LogDir};

/// The settings of one queue's server: the gateway's (its token secret included), sized for
/// the queue's datagrams.
pub fn queue_config(gateway: &ServerConfig, max_datagram: usize) -> ServerConfig {
    ServerConfig {
        max_datagram,
        ..gateway.clone()
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
    stats: FetchStats,
}

impl XdpFetch {
    /// Attaches to `iface` and serves `endpoint` from `log`, one [`Server`] per queue, each
    /// built from `server` (so all share its token secret: a flow that RSS moves to another
    /// queue stays validated).
    pub fn start(
        log: &Arc<LogDir>,
        iface: &str,
        endpoint: SocketAddr,
        args: &XdpArgs,
        server: &ServerConfig,
    ) -> Result<XdpFetch> {
        let mut cfg = args.engine_config(iface, endpoint);
        if args.umem_segments {
            cfg.resident = segment_files(log)?;
        }
        let stats = FetchStats::default();
        let engine = Engine::start_publishing(&cfg, |ctx: WorkerContext| {
            // Each queue's own watch: an append batch wakes only the queues with a poll
            // parked on one of its partitions, each once.
            let waker = ctx.waker.clone();
            let server = Server::new(log.clone(), queue_config(server, ctx.max_datagram))
                .with_watch(Watch::new(move || waker.wake()));
            (server, Some(stats.slot()))
        })?;
        Ok(XdpFetch {
            engine,
            endpoint,
            iface: iface.to_string(),
            stats,
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
        for (q, s) in self.stats.get().iter().enumerate() {
            out.push_str(&format!("\n  queue {q}: {s}"));
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
        let published = self.stats.clone();
        let endpoint = self.endpoint.to_string();
        let iface = self.iface.clone();
        let mode = self.engine.bind_mode().copy_name();
        let multi_buffer = if self.engine.bind_mode().multi_buffer {
            "true"
        } else {
            "false"
        };
        let strategy = self.engine.tx_strategy().name();
        metrics.register(move |w| {
            let base: &[(&str, &str)] = &[("transport", "af_xdp"), ("endpoint", &endpoint)];
            for (q, s) in published.get().iter().enumerate() {
                let q = q.to_string();
                let l: &[(&str, &str)] = &[
                    ("transport", "af_xdp"),
                    ("endpoint", &endpoint),
                    ("queue", &q),
                ];
                s.write_metrics(w, l);
            }
            w.gauge(
                "xdp_bind_info",
                "AF_XDP socket bind mode (zero-copy or copy, multi-buffer or not) and TX strategy (value 1)",
                &[
                    ("iface", &iface),
                    ("mode", mode),
                    ("multi_buffer", multi_buffer),
                    ("tx_strategy", strategy),
                ],
                1.0,
            );
            let e = handle.stats();
            for (name, help, v) in e.counters() {
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
    start_with(log, fetch, xdp, ServerConfig::default())
}

/// [`start`] with the servers' settings (e.g. the fetch ticket keys); every transport and
/// queue shares them and one token secret.
pub fn start_with(
    log: &Arc<LogDir>,
    fetch: &FetchArgs,
    xdp: &XdpArgs,
    server: ServerConfig,
) -> Result<Option<FetchEndpoint>> {
    let Some(listen) = fetch.fetch_listen else {
        if xdp.iface.is_some() {
            anyhow::bail!("--xdp-iface needs --fetch-listen IP:PORT (the endpoint it serves)");
        }
        return Ok(None);
    };
    // One token secret for the gateway, whichever transport and however many queues serve.
    let server = server.with_shared_secret();
    if let Some(iface) = &xdp.iface {
        match XdpFetch::start(log, iface, listen, xdp, &server) {
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
    let udp = FetchListener::start(log, fetch, &server)?
        .context("the kernel-UDP fetch endpoint did not start")?;
    println!("kxgw: fetch endpoint {} on kernel UDP", udp.local_addr());
    Ok(Some(FetchEndpoint::Udp(udp)))
}
