//! The AF_XDP engine: one socket and one worker thread per RX queue over one shared UMEM.
//!
//! Each worker is a [`crate::driver::Driver`] running a sans-I/O [`Service`] (the fetch
//! server, or the raw echo/generator) over its queue (`queue::XdpQueue`: the socket's four
//! rings, its TX frames, its own log arena). RX descriptors are parsed into (source, payload)
//! and handed to the service; datagrams the service wants to send are framed for the requester
//! (route learnt from its request) and put on the TX ring with one of two strategies:
//!
//! - `sg`: a header frame (Ethernet/IP/UDP + service header) followed by descriptors that
//!   point into the log arena (`XDP_PKT_CONTD`, one per page piece, at most 18 in all);
//! - `copy`: header and payload copied into TX frames (several chained frames for jumbo).
//!
//! `auto` uses `sg` in zero-copy mode (the NIC reads the arena pages, nothing is copied), and in
//! copy mode `copy` for frames up to [`AUTO_COPY_MAX_FRAME`] bytes, `sg` above. In copy mode the
//! kernel copies every descriptor into a fresh page anyway, so `sg` only adds descriptors:
//! measured on veth (release build, `kxgw xdp-raw` generator with arena-resident data, one
//! verifying client, 1 GB per run, medians of 3) `copy` vs `sg` gave 2.52 vs 1.91 Gbit/s at
//! MTU 1500, 7.32 vs 7.19 at 9000 and 14.82 vs 12.91 at 65535: no crossover up to the largest
//! datagram, so the threshold sits above it (an earlier C prototype saw multi-buffer ahead at
//! jumbo sizes; its single-copy variant differed). No frame
//! is ever larger than the interface MTU allows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::arena::{ArenaStats, BLOCK};
pub use super::bind::TxStrategy;
use super::bind::{self, BindMode, BindPolicy};
pub use super::consts::MAX_DESCS;
use super::consts::{COMP_RING, FILL_RING, FRAME, RING, RX_FRAMES, TX_FRAMES};
use super::error::XdpError;
use super::loader::{Steering, SteeringConfig, SteeringCounters, XdpMode};
use super::queue::{QueueLayout, QueueStats, TxChoice, XdpQueue};
use super::resident::Opened;
use super::sys;
use super::umem::UmemArea;
use super::xsk::{self, QueueSocket, RingSizes};
use super::Cidr;
use crate::driver::{self, Driver, Publish, Workers};
pub use crate::driver::{Datagram, Service, TxPayload, Waker};

/// `auto` in copy mode: frames up to this size (Ethernet header included) go by `copy`, larger
/// ones by `sg`. Above the largest frame: no crossover was measured (module docs).
pub const AUTO_COPY_MAX_FRAME: usize = 65_536 + 64;

/// What `strategy` (as [`bind::tx_strategy_for`] settled it) means for sockets bound in `mode`.
pub(crate) fn tx_choice(strategy: TxStrategy, mode: BindMode) -> TxChoice {
    match strategy {
        TxStrategy::Sg => TxChoice::Sg,
        TxStrategy::Copy => TxChoice::Copy,
        TxStrategy::Auto if mode.zero_copy => TxChoice::Sg,
        TxStrategy::Auto => TxChoice::SgAbove(AUTO_COPY_MAX_FRAME),
    }
}

/// What `auto` became in `mode`, for the start-up line.
fn auto_note(asked: TxStrategy, got: TxStrategy, mode: BindMode) -> &'static str {
    match (asked, got) {
        (TxStrategy::Auto, TxStrategy::Copy) => " (single-buffer: copy)",
        (TxStrategy::Auto, _) if mode.zero_copy => " (sg)",
        (TxStrategy::Auto, _) => " (copy mode: copy)",
        _ => "",
    }
}

/// What a worker's service factory gets.
pub struct WorkerContext {
    /// Interface queue of this worker.
    pub queue: u32,
    /// Largest UDP payload a reply may have (from the interface MTU).
    pub max_datagram: usize,
    /// Wakes this worker.
    pub waker: Waker,
}

/// Engine configuration (the `serve`/`xdp-raw` flags).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Interface to attach to.
    pub iface: String,
    /// UDP endpoint served.
    pub endpoint: SocketAddr,
    /// Consumer allowlist (empty = all).
    pub allow: Vec<Cidr>,
    /// Native or generic XDP.
    pub xdp_mode: XdpMode,
    /// RX queues to serve: 0..queues (None = all).
    pub queues: Option<u32>,
    /// Spin on the rings (and enable kernel busy polling) instead of sleeping.
    pub busy_poll: bool,
    /// TX strategy.
    pub tx_strategy: TxStrategy,
    /// Log arena size in bytes (rounded to 1 MiB blocks).
    pub arena_bytes: u64,
    /// Segment files to register as UMEM as they are (those on tmpfs; others are staged).
    pub resident: Vec<std::path::PathBuf>,
    /// Which AF_XDP bind modes to try (`--xdp-bind`).
    pub bind: BindPolicy,
    /// Where to write the UMEM's physical page ranges (`--xdp-umem-pagemap`).
    pub umem_pagemap: Option<std::path::PathBuf>,
}

/// Engine counters summed over queues.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    /// Requests received.
    pub rx_packets: u64,
    /// Frames that did not parse as UDP.
    pub rx_invalid: u64,
    /// Multi-buffer requests dropped (requests are small).
    pub rx_multibuf_dropped: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// UDP payload bytes sent.
    pub tx_bytes: u64,
    /// Datagrams sent with the sg strategy.
    pub tx_sg: u64,
    /// Datagrams sent with the copy strategy.
    pub tx_copy: u64,
    /// TX descriptors used.
    pub tx_descs: u64,
    /// Payload bytes sent straight from registered segment pages (no staging).
    pub tx_resident_bytes: u64,
    /// sg datagrams sent by copy because the arena was full of in-flight blocks.
    pub arena_full: u64,
    /// Datagrams dropped: destination never sent us a request.
    pub no_route: u64,
    /// Datagrams dropped: larger than the MTU (a service bug; never sent).
    pub oversize: u64,
    /// TX kicks that failed with something else than EAGAIN.
    pub kick_errors: u64,
    /// Times a packet waited because the TX ring lacked room for all its descriptors.
    pub tx_ring_short: u64,
    /// Kernel: TX descriptors rejected.
    pub tx_invalid_descs: u64,
    /// Kernel: RX packets dropped (no fill buffers, too large...).
    pub rx_dropped: u64,
    /// Kernel: RX descriptors rejected.
    pub rx_invalid_descs: u64,
    /// Kernel: packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Kernel: times the fill ring was empty when a packet came.
    pub rx_fill_ring_empty: u64,
    /// Kernel: times the TX ring was empty when the kernel looked for work.
    pub tx_ring_empty: u64,
    /// Datagrams dropped: their segment no longer holds the bytes (truncated in place).
    pub source_gone: u64,
    /// UMEM frames with the kernel (fill + RX + TX + completion rings).
    pub frames_outstanding: u64,
    /// Frames unaccounted for at shutdown after TX drained (must be 0).
    pub frames_leaked: u64,
    /// Arena counters (summed over the queues' arenas).
    pub arena: ArenaStats,
}

impl EngineStats {
    /// Every counter as (metric name, help, value): what `/metrics` and `kxgw stats` export
    /// (kept next to the fields so that none is left out).
    // Over 100 lines only because rustfmt gives each row five: one table beats split halves.
    pub fn counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        vec![
            (
                "xdp_rx_packets_total",
                "Requests received on AF_XDP sockets",
                self.rx_packets,
            ),
            (
                "xdp_rx_invalid_total",
                "Frames that did not parse as UDP",
                self.rx_invalid,
            ),
            (
                "xdp_tx_packets_total",
                "Datagrams sent from the UMEM",
                self.tx_packets,
            ),
            (
                "xdp_tx_bytes_total",
                "UDP payload bytes sent from the UMEM",
                self.tx_bytes,
            ),
            (
                "xdp_tx_sg_total",
                "Datagrams sent as header + log page descriptors",
                self.tx_sg,
            ),
            (
                "xdp_tx_copy_total",
                "Datagrams sent copied into frames",
                self.tx_copy,
            ),
            ("xdp_tx_descs_total", "TX descriptors used", self.tx_descs),
            (
                "xdp_tx_invalid_descs_total",
                "Kernel (XDP_STATISTICS): TX descriptors rejected",
                self.tx_invalid_descs,
            ),
            (
                "xdp_rx_multibuf_dropped_total",
                "Multi-buffer requests dropped",
                self.rx_multibuf_dropped,
            ),
            (
                "xdp_kick_errors_total",
                "TX kicks that failed (other than EAGAIN/EBUSY)",
                self.kick_errors,
            ),
            (
                "xdp_tx_ring_short_total",
                "Packets that waited for TX ring room for all their descriptors",
                self.tx_ring_short,
            ),
            (
                "xdp_rx_dropped_total",
                "Kernel (XDP_STATISTICS): requests dropped before the RX ring",
                self.rx_dropped,
            ),
            (
                "xdp_rx_invalid_descs_total",
                "Kernel (XDP_STATISTICS): RX descriptors rejected",
                self.rx_invalid_descs,
            ),
            (
                "xdp_rx_ring_full_total",
                "Kernel (XDP_STATISTICS): packets dropped, RX ring full",
                self.rx_ring_full,
            ),
            (
                "xdp_rx_fill_ring_empty_total",
                "Kernel (XDP_STATISTICS): times the fill ring was empty",
                self.rx_fill_ring_empty,
            ),
            (
                "xdp_tx_ring_empty_total",
                "Kernel (XDP_STATISTICS): times the TX ring was empty",
                self.tx_ring_empty,
            ),
            (
                "xdp_oversize_total",
                "Datagrams dropped for exceeding the MTU",
                self.oversize,
            ),
            (
                "xdp_no_route_total",
                "Datagrams to peers never heard from",
                self.no_route,
            ),
            (
                "xdp_tx_resident_bytes_total",
                "Log bytes sent from segment pages registered as UMEM (--umem-segments)",
                self.tx_resident_bytes,
            ),
            (
                "xdp_arena_staged_bytes_total",
                "Log bytes staged into the UMEM arena",
                self.arena.staged_bytes,
            ),
            (
                "xdp_arena_hit_bytes_total",
                "Log bytes sent from already staged arena pages",
                self.arena.hit_bytes,
            ),
            (
                "xdp_arena_evictions_total",
                "Arena blocks evicted",
                self.arena.evictions,
            ),
            (
                "xdp_arena_full_total",
                "sg datagrams sent by copy: arena blocks all in flight",
                self.arena_full,
            ),
            (
                "xdp_arena_refused_total",
                "Arena stage requests refused: every block in flight",
                self.arena.full,
            ),
            (
                "xdp_source_gone_total",
                "Datagrams dropped: the segment no longer holds the bytes (truncated in place)",
                self.source_gone,
            ),
            (
                "xdp_frames_outstanding",
                "UMEM frames with the kernel (fill, RX, TX and completion rings)",
                self.frames_outstanding,
            ),
            (
                "xdp_frames_leaked",
                "UMEM frames unaccounted for at shutdown after TX drained (must be 0)",
                self.frames_leaked,
            ),
        ]
    }
}

/// A running engine. Dropping it stops the workers and detaches XDP.
pub struct Engine {
    // Field order: the workers stop (Drop) before the program and the UMEM go.
    workers: Workers,
    steering: Steering,
    handle: StatsHandle,
    mode: BindMode,
    strategy: TxStrategy,
    mtu: u32,
    max_datagram: usize,
    area: Arc<UmemArea>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("mode", &self.mode)
            .field("strategy", &self.strategy)
            .field("queues", &self.handle.queues.len())
            .finish()
    }
}

/// What `Engine::start` settled before attaching anything.
struct Plan {
    mtu: u32,
    max_datagram: usize,
    queues: u32,
    opened: Opened,
}

impl Plan {
    fn new(cfg: &EngineConfig) -> Result<Plan, XdpError> {
        super::loader::ifindex(&cfg.iface)?;
        let mtu = driver::mtu(&cfg.iface).map_err(|e| XdpError::Sys {
            what: format!("reading the MTU of {}", cfg.iface),
            err: e,
            hint: "",
        })?;
        let max_datagram = driver::max_datagram(mtu, cfg.endpoint.is_ipv6())
            .map_err(|e| XdpError::Config(e.to_string()))?;
        let mtu = u32::try_from(mtu).map_err(|_| XdpError::Config(format!("MTU {mtu}")))?;
        let available = xsk::rx_queue_count(&cfg.iface);
        let queues = cfg.queues.unwrap_or(available).clamp(1, available.max(1));
        if cfg.queues.is_some_and(|q| q != queues) {
            log::warn!(
                "--queues {}: {} has {available} RX queue(s); serving {queues}",
                cfg.queues.unwrap_or(0),
                cfg.iface
            );
        }
        // Before anything is attached: a segment that cannot be opened fails the start cleanly.
        let opened = super::resident::open(&cfg.resident)?;
        if !opened.elsewhere.is_empty() {
            log::info!(
                "--umem-segments: {} segment file(s) not on tmpfs (e.g. {}) cannot be registered \
                 as UMEM; their bytes are staged through the arena",
                opened.elsewhere.len(),
                opened.elsewhere[0].display()
            );
        }
        Ok(Plan {
            mtu,
            max_datagram,
            queues,
            opened,
        })
    }

    /// Limits datagrams to what `mode` sends in one packet (one 4 KiB chunk without
    /// `XDP_USE_SG`), and says so when that is below what the MTU allows.
    fn fit_to(&mut self, mode: BindMode, cfg: &EngineConfig) {
        let from_mtu = self.max_datagram;
        self.max_datagram = bind::fit_datagram(from_mtu, mode, cfg.endpoint.is_ipv6());
        if self.max_datagram < from_mtu {
            log::info!(
                "AF_XDP on {}: bound {} (no XDP_USE_SG): datagrams limited to {} B so each \
                 packet fits one 4 KiB UMEM chunk (MTU allows {from_mtu} B)",
                cfg.iface,
                mode.name(),
                self.max_datagram
            );
        }
    }

    /// Arena bytes per queue: the configured total split in whole blocks, one at least.
    fn arena_per_queue(&self, cfg: &EngineConfig) -> u64 {
        (cfg.arena_bytes / u64::from(self.queues) / BLOCK).max(1) * BLOCK
    }

    /// Frames and arena part of the `i`-th queue.
    fn layout(&self, area: &UmemArea, i: u32, arena_per_queue: u64) -> QueueLayout {
        let per_queue = u64::from(RX_FRAMES + TX_FRAMES);
        let first = u64::from(i) * per_queue;
        let rx_end = first + u64::from(RX_FRAMES);
        QueueLayout {
            rx_frames: (first..rx_end).map(|f| f * FRAME).collect(),
            tx_frames: (rx_end..first + per_queue).map(|f| f * FRAME).collect(),
            arena: (
                area.arena_offset() + u64::from(i) * arena_per_queue,
                arena_per_queue,
            ),
        }
    }
}

/// Binds one socket per queue (the first one registers the UMEM).
fn open_sockets(
    cfg: &EngineConfig,
    area: &UmemArea,
    ifindex: u32,
    queues: u32,
) -> Result<Vec<QueueSocket>, XdpError> {
    let mut sockets = Vec::new();
    for q in 0..queues {
        let sock = xsk::open(
            area,
            &cfg.iface,
            ifindex,
            q,
            q == 0,
            RingSizes { rx: RING, tx: RING },
            cfg.bind,
        )?;
        if cfg.busy_poll {
            if let Err(e) = sys::enable_busy_poll(sock.fd()) {
                log::warn!("queue {q}: kernel busy polling not enabled ({e}); spinning anyway");
            }
        }
        sockets.push(sock);
    }
    Ok(sockets)
}

impl Engine {
    /// Attaches XDP to the interface, binds one socket per queue and starts the workers, each
    /// with the service `make` builds for it. On any error, the workers started so far are
    /// stopped and joined and XDP is detached before this returns.
    pub fn start<S, F>(cfg: &EngineConfig, mut make: F) -> Result<Engine, XdpError>
    where
        S: Service,
        F: FnMut(WorkerContext) -> S,
    {
        Self::start_publishing(cfg, |ctx| (make(ctx), None))
    }

    /// [`Engine::start`] for services whose counters are published: `make` also gives the
    /// hook each driver publishes its service through.
    pub fn start_publishing<S, F>(cfg: &EngineConfig, mut make: F) -> Result<Engine, XdpError>
    where
        S: Service,
        F: FnMut(WorkerContext) -> (S, Option<Publish<S>>),
    {
        let mut plan = Plan::new(cfg)?;
        let mut steering = Steering::load(&SteeringConfig {
            fetch: cfg.endpoint,
            allow: cfg.allow.clone(),
        })?;
        let ifindex = steering.attach(&cfg.iface, cfg.xdp_mode)?;
        let arena_per_queue = plan.arena_per_queue(cfg);
        let area = Arc::new(UmemArea::new(
            (RX_FRAMES + TX_FRAMES) * plan.queues,
            arena_per_queue * u64::from(plan.queues),
            std::mem::take(&mut plan.opened.files),
            FILL_RING,
            COMP_RING,
        )?);
        let sockets = open_sockets(cfg, &area, ifindex, plan.queues)?;
        let mode = sockets.first().map(|s| s.mode).unwrap_or(BindMode::COPY);
        let strategy = bind::tx_strategy_for(cfg.tx_strategy, mode)?;
        if let Some(path) = &cfg.umem_pagemap {
            super::pagemap::write_ranges(area.base(), area.len(), path)
                .map_err(|e| XdpError::Config(format!("--xdp-umem-pagemap: {e:#}")))?;
        }
        plan.fit_to(mode, cfg);
        // The guard: dropped on any error below, it stops and joins the workers started.
        let mut workers = Workers::new();
        let mut stats = Vec::new();
        for (i, sock) in (0u32..).zip(sockets) {
            let q = sock.queue;
            steering.register_socket(q, sock.fd())?;
            let waker = Waker::new().map_err(|e| XdpError::Sys {
                what: "creating a worker's eventfd".into(),
                err: e,
                hint: "",
            })?;
            let (service, publish) = make(WorkerContext {
                queue: q,
                max_datagram: plan.max_datagram,
                waker: waker.clone(),
            });
            let st = Arc::new(QueueStats::default());
            let layout = plan.layout(&area, i, arena_per_queue);
            let choice = tx_choice(strategy, mode);
            let io = XdpQueue::new(sock, area.clone(), layout, choice, plan.mtu, st.clone());
            let mut driver = Driver::new(service, io, waker, cfg.busy_poll);
            if let Some(p) = publish {
                driver = driver.on_publish(p);
            }
            workers
                .spawn(format!("kxgw-xsk-q{q}"), driver)
                .map_err(|e| XdpError::Sys {
                    what: "spawning a worker thread".into(),
                    err: e,
                    hint: "",
                })?;
            stats.push(st);
        }
        let handle = StatsHandle {
            queues: stats,
            steering: Arc::new(steering.counter_reader()?),
        };
        let engine = Engine {
            workers,
            steering,
            handle,
            mode,
            strategy,
            mtu: plan.mtu,
            max_datagram: plan.max_datagram,
            area,
        };
        engine.log_started(cfg, arena_per_queue);
        Ok(engine)
    }

    fn log_started(&self, cfg: &EngineConfig, arena_per_queue: u64) {
        log::info!(
            "AF_XDP on {} ({} queue(s)): bound {}, TX strategy {}{}, MTU {} (max datagram {} B), arena {} MiB ({} MiB per queue){}, {}",
            cfg.iface,
            self.queues(),
            self.mode.name(),
            cfg.tx_strategy.name(),
            auto_note(cfg.tx_strategy, self.strategy, self.mode),
            self.mtu,
            self.max_datagram,
            self.area.arena_len() >> 20,
            arena_per_queue >> 20,
            match self.area.resident().files() {
                0 => String::new(),
                n => format!(
                    ", {n} segment file(s) ({} MiB) registered as UMEM",
                    self.area.resident().bytes() >> 20
                ),
            },
            if cfg.busy_poll { "busy polling" } else { "need_wakeup + poll" },
        );
    }

    /// How the sockets are bound.
    pub fn bind_mode(&self) -> BindMode {
        self.mode
    }

    /// Segment files registered as UMEM as they are: (files, bytes).
    pub fn resident(&self) -> (usize, u64) {
        let r = self.area.resident();
        (r.files(), r.bytes())
    }

    /// TX strategy in use (`auto` resolved to `copy` on a single-buffer bind).
    pub fn tx_strategy(&self) -> TxStrategy {
        self.strategy
    }

    /// Interface MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Largest UDP payload of a reply.
    pub fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    /// Number of queues served.
    pub fn queues(&self) -> usize {
        self.handle.queues.len()
    }

    /// A handle other threads can read the counters through (metrics).
    pub fn stats_handle(&self) -> StatsHandle {
        self.handle.clone()
    }

    /// Wakers of all workers (e.g. for a log append hook).
    pub fn wakers(&self) -> Vec<Waker> {
        self.workers.wakers()
    }

    /// Counters of the XDP program.
    pub fn steering_counters(&self) -> Result<SteeringCounters, XdpError> {
        self.steering.counters()
    }

    /// Engine counters (summed over queues).
    pub fn stats(&self) -> EngineStats {
        self.handle.stats()
    }

    /// Stops the workers (the XDP program is detached when the engine is dropped). Each queue
    /// drains its TX ring first and checks that no UMEM frame went missing.
    pub fn stop(&mut self) {
        let joined = self.workers.running();
        self.workers.stop();
        if !joined {
            return;
        }
        let s = self.handle.stats();
        if s.frames_leaked > 0 {
            log::error!(
                "AF_XDP shutdown: {} UMEM frame(s) leaked ({} still with the kernel)",
                s.frames_leaked,
                s.frames_outstanding
            );
        } else {
            log::info!(
                "AF_XDP shutdown: no UMEM frame leaked ({} on the fill/RX rings, TX drained)",
                s.frames_outstanding
            );
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Read access to an engine's counters from any thread.
#[derive(Clone)]
pub struct StatsHandle {
    queues: Vec<Arc<QueueStats>>,
    steering: Arc<super::loader::CounterReader>,
}

impl StatsHandle {
    /// Engine counters summed over queues (kernel and arena counters as of the workers' last
    /// publish).
    pub fn stats(&self) -> EngineStats {
        let mut s = EngineStats::default();
        for q in &self.queues {
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            s.rx_packets += g(&q.rx_packets);
            s.rx_invalid += g(&q.rx_invalid);
            s.rx_multibuf_dropped += g(&q.rx_multibuf_dropped);
            s.tx_packets += g(&q.tx_packets);
            s.tx_bytes += g(&q.tx_bytes);
            s.tx_sg += g(&q.tx_sg);
            s.tx_copy += g(&q.tx_copy);
            s.tx_descs += g(&q.tx_descs);
            s.arena_full += g(&q.arena_full);
            s.tx_resident_bytes += g(&q.tx_resident_bytes);
            s.no_route += g(&q.no_route);
            s.oversize += g(&q.oversize);
            s.kick_errors += g(&q.kick_errors);
            s.tx_ring_short += g(&q.tx_ring_short);
            s.rx_dropped += g(&q.kernel_rx_dropped);
            s.rx_invalid_descs += g(&q.kernel_rx_invalid_descs);
            s.tx_invalid_descs += g(&q.kernel_tx_invalid_descs);
            s.rx_ring_full += g(&q.kernel_rx_ring_full);
            s.rx_fill_ring_empty += g(&q.kernel_rx_fill_ring_empty);
            s.tx_ring_empty += g(&q.kernel_tx_ring_empty);
            s.arena.staged_bytes += g(&q.arena_staged_bytes);
            s.arena.hit_bytes += g(&q.arena_hit_bytes);
            s.arena.evictions += g(&q.arena_evictions);
            s.arena.full += g(&q.arena_refused);
            s.frames_outstanding += g(&q.frames_outstanding);
            s.frames_leaked += g(&q.frames_leaked);
            s.source_gone += g(&q.source_gone);
        }
        s
    }

    /// The XDP program's counters.
    pub fn steering(&self) -> Result<SteeringCounters, XdpError> {
        self.steering.read()
    }
}
