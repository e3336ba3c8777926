//! The AF_XDP engine: one socket and one worker thread per RX queue over one shared UMEM.
//!
//! Each worker drives its socket's four rings and a sans-I/O [`Service`] (the fetch server,
//! or the raw echo/generator): RX descriptors are parsed into (source, payload) and handed to
//! the service; datagrams the service wants to send are framed for the requester (route learnt
//! from its request) and put on the TX ring with one of two strategies:
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
//! datagram, so the threshold sits above it (docs/fast-path.md). No frame is ever larger than
//! the interface MTU allows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::arena::{Arena, ArenaStats, SourceId};
use super::error::XdpError;
use super::loader::{Steering, SteeringConfig, SteeringCounters, XdpMode};
use super::packet::{self, Route};
use super::resident::ResidentCache;
use super::umem::{errno, UmemArea, FRAME};
use super::xsk::{self, BindMode, QueueSocket, RingSizes, ZeroCopyPolicy};
use super::Cidr;

/// Descriptors per packet the kernel accepts (1 + MAX_SKB_FRAGS); a 19th drops the packet.
pub const MAX_DESCS: usize = 18;
/// `auto` in copy mode: frames up to this size (Ethernet header included) go by `copy`, larger
/// ones by `sg`. Above the largest frame: no crossover was measured (module docs).
pub const AUTO_COPY_MAX_FRAME: usize = 65_536 + 64;
const XDP_PKT_CONTD: u32 = 1;
const RX_FRAMES: u32 = 2048;
const TX_FRAMES: u32 = 2048;
const RING: u32 = 2048;
const FILL_RING: u32 = 4096;
const COMP_RING: u32 = 4096;
const BATCH: u32 = 64;

/// How TX payload bytes reach the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TxStrategy {
    /// `sg` in zero-copy mode; `copy` in copy mode (measured faster at every size on veth).
    Auto,
    /// Header frame + descriptors pointing into the log arena (XDP_PKT_CONTD).
    Sg,
    /// Payload copied into TX frames.
    Copy,
}

impl TxStrategy {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            TxStrategy::Auto => "auto",
            TxStrategy::Sg => "sg",
            TxStrategy::Copy => "copy",
        }
    }
}

/// Payload bytes a service sends: a slice of a source (segment) that the arena can cache.
pub trait TxPayload {
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// `bytes()` followed by whatever the source has right after them that is likely to be
    /// sent next (e.g. the rest of a fetch response): the arena stages it in one go.
    fn ahead(&self) -> &[u8] {
        self.bytes()
    }
    /// Identity of the source the bytes come from.
    fn source(&self) -> SourceId;
    /// The source's open file, if it has one: a registered segment is found through it.
    fn file(&self) -> Option<&std::fs::File> {
        None
    }
    /// Position of the first byte within the source.
    fn position(&self) -> u64;
}

/// One datagram to send: `header` then the payload bytes form the UDP payload.
pub struct Datagram<P> {
    /// Destination (a requester whose route the engine learnt from its request).
    pub dst: SocketAddr,
    /// Service header (copied).
    pub header: Vec<u8>,
    /// Payload (referenced).
    pub payload: Option<P>,
}

/// A sans-I/O datagram service driven by a worker.
pub trait Service: Send + 'static {
    /// Payload type of outgoing datagrams.
    type Payload: TxPayload;
    /// A datagram arrived from `src`, addressed to our `local` endpoint.
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, local: SocketAddr, data: &[u8]);
    /// Next datagram to send, if any.
    fn poll_transmit(&mut self, now: Instant) -> Option<Datagram<Self::Payload>>;
    /// When `handle_timeout` must be called.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Timers expired.
    fn handle_timeout(&mut self, now: Instant);
    /// The service's [`Waker`] was triggered (e.g. the log grew).
    fn handle_wake(&mut self, _now: Instant) {}
}

/// Wakes a worker from another thread (e.g. a log append hook).
#[derive(Clone)]
pub struct Waker {
    flag: Arc<AtomicBool>,
    efd: Arc<OwnedFd>,
}

impl Waker {
    fn new() -> Result<Waker, XdpError> {
        // SAFETY: eventfd with valid flags; checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(XdpError::sys("eventfd", errno()));
        }
        Ok(Waker {
            flag: Arc::new(AtomicBool::new(false)),
            // SAFETY: fresh fd we own.
            efd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    /// Makes the worker call `Service::handle_wake` soon.
    pub fn wake(&self) {
        if !self.flag.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: 8-byte write to our eventfd; failure (counter full) still leaves it readable.
            unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    fn take(&self) -> bool {
        if self.flag.swap(false, Ordering::AcqRel) {
            let mut v: u64 = 0;
            // SAFETY: 8-byte read from our non-blocking eventfd into a u64.
            unsafe { libc::read(self.efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
            true
        } else {
            false
        }
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
    /// Try zero-copy first?
    pub zero_copy: ZeroCopyPolicy,
}

#[derive(Default)]
struct QueueStats {
    rx_packets: AtomicU64,
    rx_invalid: AtomicU64,
    rx_multibuf_dropped: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_sg: AtomicU64,
    tx_copy: AtomicU64,
    tx_descs: AtomicU64,
    tx_resident_bytes: AtomicU64,
    arena_full: AtomicU64,
    no_route: AtomicU64,
    oversize: AtomicU64,
    kick_errors: AtomicU64,
    tx_ring_short: AtomicU64,
    // Kernel socket counters, copied by the worker (it owns the socket).
    kernel_rx_dropped: AtomicU64,
    kernel_tx_invalid: AtomicU64,
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
    /// Arena counters.
    pub arena: ArenaStats,
}

/// A running engine. Dropping it stops the workers and detaches XDP.
pub struct Engine {
    steering: Steering,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    handle: StatsHandle,
    wakers: Vec<Waker>,
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
            .field("queues", &self.handle.fds.len())
            .finish()
    }
}

impl Engine {
    /// Attaches XDP to the interface, binds one socket per queue and starts the workers, each
    /// with the service `make` builds for it.
    pub fn start<S, F>(cfg: &EngineConfig, mut make: F) -> Result<Engine, XdpError>
    where
        S: Service,
        F: FnMut(WorkerContext) -> S,
    {
        super::loader::ifindex(&cfg.iface)?;
        let mtu = xsk::mtu(&cfg.iface)?;
        let max_datagram = max_datagram(mtu, cfg.endpoint)?;
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
        let mut steering = Steering::load(&SteeringConfig {
            fetch: cfg.endpoint,
            allow: cfg.allow.clone(),
        })?;
        let ifindex = steering.attach(&cfg.iface, cfg.xdp_mode)?;
        let per_queue = RX_FRAMES + TX_FRAMES;
        let area = Arc::new(UmemArea::new(
            per_queue * queues,
            cfg.arena_bytes.max(super::arena::BLOCK),
            opened.files,
            FILL_RING,
            COMP_RING,
        )?);
        let arena = Arc::new(Mutex::new(Arena::new(area.clone())));
        let stop = Arc::new(AtomicBool::new(false));
        let mut sockets = Vec::new();
        for q in 0..queues {
            let sock = xsk::open(
                &area,
                &cfg.iface,
                ifindex,
                q,
                q == 0,
                RingSizes { rx: RING, tx: RING },
                cfg.zero_copy,
            )?;
            if cfg.busy_poll {
                if let Err(e) = xsk::enable_busy_poll(sock.fd()) {
                    log::warn!("queue {q}: kernel busy polling not enabled ({e}); spinning anyway");
                }
            }
            sockets.push(sock);
        }
        let mode = sockets.first().map(|s| s.mode).unwrap_or(BindMode::Copy);
        let mut workers = Vec::new();
        let mut stats = Vec::new();
        let mut fds = Vec::new();
        let mut wakers = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            let q = sock.queue;
            steering.register_socket(q, sock.fd())?;
            let waker = Waker::new()?;
            let service = make(WorkerContext {
                queue: q,
                max_datagram,
                waker: waker.clone(),
            });
            let st = Arc::new(QueueStats::default());
            let first = i as u64 * u64::from(per_queue);
            let rx_frames: Vec<u64> = (first..first + u64::from(RX_FRAMES))
                .map(|f| f * FRAME)
                .collect();
            let tx_free: Vec<u64> = (first + u64::from(RX_FRAMES)..first + u64::from(per_queue))
                .map(|f| f * FRAME)
                .collect();
            fds.push(sock.fd());
            let mut worker = Worker {
                mode: sock.mode,
                sock,
                service,
                area: area.clone(),
                arena: arena.clone(),
                tx_free,
                routes: HashMap::new(),
                stats: st.clone(),
                strategy: cfg.tx_strategy,
                mtu,
                in_flight: 0,
                busy: cfg.busy_poll,
                stop: stop.clone(),
                waker: waker.clone(),
                descs: Vec::with_capacity(MAX_DESCS),
                pieces: Vec::with_capacity(MAX_DESCS),
                resident: ResidentCache::new(),
                released: Vec::new(),
                held: Vec::new(),
            };
            worker.fill(&rx_frames);
            let handle = std::thread::Builder::new()
                .name(format!("kxgw-xsk-q{q}"))
                .spawn(move || worker.run())
                .map_err(|e| XdpError::Sys {
                    what: "spawning a worker thread".into(),
                    err: e,
                    hint: "",
                })?;
            workers.push(handle);
            stats.push(st);
            wakers.push(waker);
        }
        log::info!(
            "AF_XDP on {} ({} queue(s)): bound in {} mode, TX strategy {}{}, MTU {mtu} (max datagram {max_datagram} B), arena {} MiB{}, {}",
            cfg.iface,
            queues,
            mode.name(),
            cfg.tx_strategy.name(),
            if cfg.tx_strategy == TxStrategy::Auto {
                match mode {
                    BindMode::ZeroCopy => " (sg)",
                    BindMode::Copy => " (copy mode: copy)",
                }
            } else {
                ""
            },
            area.arena_len() >> 20,
            match area.resident().files() {
                0 => String::new(),
                n => format!(
                    ", {n} segment file(s) ({} MiB) registered as UMEM",
                    area.resident().bytes() >> 20
                ),
            },
            if cfg.busy_poll { "busy polling" } else { "need_wakeup + poll" },
        );
        let handle = StatsHandle {
            queues: stats,
            fds,
            arena,
            steering: Arc::new(steering.counter_reader()?),
            running: Arc::new(AtomicBool::new(true)),
        };
        Ok(Engine {
            steering,
            stop,
            workers,
            handle,
            wakers,
            mode,
            strategy: cfg.tx_strategy,
            mtu,
            max_datagram,
            area,
        })
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

    /// Configured TX strategy.
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
        self.handle.fds.len()
    }

    /// A handle other threads can read the counters through (metrics).
    pub fn stats_handle(&self) -> StatsHandle {
        self.handle.clone()
    }

    /// Wakers of all workers (e.g. for a log append hook).
    pub fn wakers(&self) -> Vec<Waker> {
        self.wakers.clone()
    }

    /// Counters of the XDP program.
    pub fn steering_counters(&self) -> Result<SteeringCounters, XdpError> {
        self.steering.counters()
    }

    /// Engine counters (summed over queues).
    pub fn stats(&self) -> EngineStats {
        self.handle.stats()
    }

    /// Stops the workers (the XDP program is detached when the engine is dropped).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.handle.running.store(false, Ordering::Release);
        for w in &self.wakers {
            w.wake();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
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
    fds: Vec<i32>,
    arena: Arc<Mutex<Arena>>,
    steering: Arc<super::loader::CounterReader>,
    running: Arc<AtomicBool>,
}

impl StatsHandle {
    /// Engine counters summed over queues (kernel socket counters while running).
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
            s.tx_invalid_descs += g(&q.kernel_tx_invalid);
        }
        if let Ok(a) = self.arena.lock() {
            s.arena = a.stats();
        }
        s
    }

    /// The XDP program's counters.
    pub fn steering(&self) -> Result<SteeringCounters, XdpError> {
        self.steering.read()
    }
}

/// Largest UDP payload for `mtu`: IPv4 endpoints answer IPv4 only; others may answer IPv6.
pub fn max_datagram(mtu: u32, endpoint: SocketAddr) -> Result<usize, XdpError> {
    let ip = if endpoint.is_ipv4() {
        packet::IPV4_LEN
    } else {
        packet::IPV6_LEN
    };
    let m = (mtu as usize)
        .checked_sub(ip + packet::UDP_LEN)
        .filter(|m| *m >= 512)
        .ok_or_else(|| XdpError::Config(format!("MTU {mtu} too small for the fetch protocol")))?;
    // The UDP length field, and 1 + 17 descriptors of 4 KiB.
    Ok(m.min(65_507))
}

/// XDP_STATISTICS of a socket: rx_dropped, rx_invalid_descs, tx_invalid_descs, ...
fn kernel_stats(fd: i32) -> Option<[u64; 6]> {
    let mut s = [0u64; 6];
    let mut len = std::mem::size_of_val(&s) as libc::socklen_t;
    // SAFETY: getsockopt into a buffer of `len` bytes.
    let r = unsafe { libc::getsockopt(fd, 283, 7, s.as_mut_ptr().cast(), &mut len) };
    (r == 0).then_some(s)
}

struct Worker<S: Service> {
    sock: QueueSocket,
    service: S,
    area: Arc<UmemArea>,
    arena: Arc<Mutex<Arena>>,
    tx_free: Vec<u64>,
    routes: HashMap<SocketAddr, (Route, SocketAddr)>,
    stats: Arc<QueueStats>,
    strategy: TxStrategy,
    mode: BindMode,
    mtu: u32,
    in_flight: u32,
    busy: bool,
    stop: Arc<AtomicBool>,
    waker: Waker,
    descs: Vec<xdpilone::xdp::XdpDesc>,
    pieces: Vec<(u64, u32)>,
    resident: ResidentCache,
    released: Vec<u64>,
    held: Vec<xdpilone::xdp::XdpDesc>,
}

impl<S: Service> Worker<S> {
    fn fill(&mut self, frames: &[u64]) {
        let mut w = self.sock.fill.fill(frames.len() as u32);
        w.insert(frames.iter().copied());
        w.commit();
    }

    fn copy_kernel_stats(&self) {
        if let Some(k) = kernel_stats(self.sock.fd()) {
            self.stats.kernel_rx_dropped.store(k[0], Ordering::Relaxed);
            self.stats.kernel_tx_invalid.store(k[2], Ordering::Relaxed);
        }
    }

    fn run(mut self) {
        let mut idle_spins = 0u32;
        let mut next_stats = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_stats {
                self.copy_kernel_stats();
                next_stats = now + Duration::from_millis(200);
            }
            let mut progress = self.complete();
            progress |= self.receive(now);
            if self.waker.take() {
                self.service.handle_wake(now);
                progress = true;
            }
            if let Some(t) = self.service.poll_timeout() {
                if t <= now {
                    self.service.handle_timeout(now);
                    progress = true;
                }
            }
            progress |= self.transmit(now);
            self.kick();
            if progress {
                idle_spins = 0;
                continue;
            }
            if self.busy {
                // Drive kernel busy polling of the queue; never sleep.
                // SAFETY: zero-length non-blocking recvfrom on our socket.
                unsafe {
                    libc::recvfrom(
                        self.sock.fd(),
                        std::ptr::null_mut(),
                        0,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                };
                // Yield: a log follower woken on this core (new records to announce) then runs
                // at once instead of after the spinner's time slice, which set the tail latency.
                let _ = nix::sched::sched_yield();
                continue;
            }
            idle_spins += 1;
            if idle_spins < 64 {
                std::hint::spin_loop();
                continue;
            }
            self.sleep(now);
        }
        self.copy_kernel_stats();
    }

    fn sleep(&mut self, now: Instant) {
        // Wake for RX, a waker, the service's timer; poll briefly while TX completions are due.
        let mut timeout = Duration::from_millis(100);
        if let Some(t) = self.service.poll_timeout() {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        if self.in_flight > 0 {
            timeout = timeout.min(Duration::from_millis(1));
        }
        let mut fds = [
            libc::pollfd {
                fd: self.sock.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.waker.efd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_micros().div_ceil(1000).min(1000) as libc::c_int;
        // SAFETY: poll on two valid pollfd entries.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    }

    /// Reaps the completion ring: TX frames return to the free list, arena references drop.
    fn complete(&mut self) -> bool {
        let arena_start = self.area.arena_offset();
        // Resident segment pages hold no references: nothing to release for them.
        let arena_end = arena_start + self.area.arena_len();
        let mut n = 0u32;
        {
            let mut c = self.sock.comp.complete(COMP_RING);
            while let Some(addr) = c.read() {
                n += 1;
                if addr < arena_start {
                    self.tx_free.push(addr & !(FRAME - 1));
                } else if addr < arena_end {
                    self.released.push(addr);
                }
            }
            c.release();
        }
        if !self.released.is_empty() {
            if let Ok(mut a) = self.arena.lock() {
                for addr in self.released.drain(..) {
                    a.release(addr);
                }
            }
            self.released.clear();
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        n > 0
    }

    fn receive(&mut self, now: Instant) -> bool {
        let base = self.area.base();
        let area_len = self.area.len() as u64;
        let mut frames: Vec<u64> = Vec::new();
        let mut got = 0;
        let mut in_multibuf = false;
        {
            let mut r = self.sock.rx.receive(BATCH);
            while let Some(d) = r.read() {
                got += 1;
                frames.push(d.addr & !(FRAME - 1));
                if d.options & XDP_PKT_CONTD != 0 || in_multibuf {
                    // Part of a multi-buffer frame: requests are small, drop it whole.
                    if !in_multibuf {
                        self.stats
                            .rx_multibuf_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    in_multibuf = d.options & XDP_PKT_CONTD != 0;
                    continue;
                }
                if d.addr + u64::from(d.len) > area_len {
                    self.stats.rx_invalid.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // SAFETY: the kernel handed this frame to us via the RX ring; it lies inside
                // the UMEM (checked above) and nobody writes it until we put it back on the
                // fill ring below.
                let frame = unsafe {
                    std::slice::from_raw_parts(base.add(d.addr as usize), d.len as usize)
                };
                match packet::parse(frame) {
                    Ok(req) => {
                        self.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                        if self.routes.len() > 65_536 && !self.routes.contains_key(&req.src) {
                            self.routes.clear();
                        }
                        self.routes.insert(req.src, (req.route, req.dst));
                        self.service
                            .handle_datagram(now, req.src, req.dst, req.payload);
                    }
                    Err(e) => {
                        log::debug!("queue {}: unparsable frame: {e}", self.sock.queue);
                        self.stats.rx_invalid.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            r.release();
        }
        if !frames.is_empty() {
            self.fill(&frames);
        }
        if self.sock.fill.needs_wakeup() {
            self.sock.fill.wake();
        }
        got > 0
    }

    fn transmit(&mut self, now: Instant) -> bool {
        let mut sent = false;
        if !self.held.is_empty() {
            std::mem::swap(&mut self.descs, &mut self.held);
            if !self.push_descs() {
                std::mem::swap(&mut self.descs, &mut self.held);
                return false;
            }
            sent = true;
        }
        // Room for a worst-case datagram: MAX_DESCS ring slots and copy frames.
        while self.in_flight as usize + MAX_DESCS <= RING as usize
            && self.tx_free.len() >= MAX_DESCS
        {
            let Some(d) = self.service.poll_transmit(now) else {
                break;
            };
            sent = true;
            self.send(d);
        }
        sent
    }

    fn send(&mut self, d: Datagram<S::Payload>) {
        let Some(&(route, local)) = self.routes.get(&d.dst) else {
            self.stats.no_route.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let v6 = d.dst.is_ipv6();
        let hlen = route.header_len(v6);
        let payload: &[u8] = d.payload.as_ref().map(|p| p.bytes()).unwrap_or(&[]);
        let udp_payload = d.header.len() + payload.len();
        let ip_len =
            hlen - packet::ETH_LEN - packet::VLAN_LEN * usize::from(route.vlan_count) + udp_payload;
        if ip_len > self.mtu as usize || udp_payload > 65_507 {
            self.stats.oversize.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "dropping a {udp_payload} B datagram to {}: exceeds MTU {}",
                d.dst,
                self.mtu
            );
            return;
        }
        let frame_len = hlen + udp_payload;
        let sg = match self.strategy {
            TxStrategy::Sg => true,
            TxStrategy::Copy => false,
            TxStrategy::Auto => self.mode == BindMode::ZeroCopy || frame_len > AUTO_COPY_MAX_FRAME,
        };
        self.descs.clear();
        let done = sg
            && d.payload.is_some()
            && hlen + d.header.len() <= FRAME as usize
            && self.build_sg(&d, &route, local, hlen);
        if done {
            self.stats.tx_sg.fetch_add(1, Ordering::Relaxed);
        } else {
            self.descs.clear();
            self.build_copy(&d, &route, local, hlen, frame_len);
            if self.descs.is_empty() {
                return;
            }
            self.stats.tx_copy.fetch_add(1, Ordering::Relaxed);
        }
        let n = self.descs.len() as u32;
        self.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .tx_bytes
            .fetch_add(udp_payload as u64, Ordering::Relaxed);
        self.stats
            .tx_descs
            .fetch_add(u64::from(n), Ordering::Relaxed);
        if !self.push_descs() {
            // The rest of the packet goes first on the next round, before any other packet.
            std::mem::swap(&mut self.descs, &mut self.held);
        }
    }

    /// Puts `self.descs` on the TX ring, as much as fits; returns whether all went. A partly
    /// queued packet is fine for the kernel (it waits for the rest), but the rest must follow
    /// before anything else. xdpilone reserves "1..=n" from a cached view of the consumer, so a
    /// short reservation is followed by another one, which refreshes the view.
    fn push_descs(&mut self) -> bool {
        for _ in 0..2 {
            let n = self.descs.len() as u32;
            if n == 0 {
                return true;
            }
            let mut w = self.sock.tx.transmit(n);
            let c = w.capacity();
            w.insert(self.descs.iter().copied());
            w.commit();
            drop(w);
            self.in_flight += c;
            self.descs.drain(..c as usize);
        }
        if self.descs.is_empty() {
            return true;
        }
        self.stats.tx_ring_short.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn frame_mut(&mut self, addr: u64) -> &mut [u8] {
        // SAFETY: `addr` is a TX frame from this worker's free list: inside the frame area,
        // owned exclusively by this worker until its completion comes back.
        unsafe {
            std::slice::from_raw_parts_mut(self.area.base().add(addr as usize), FRAME as usize)
        }
    }

    /// Header frame + arena descriptors. False if the arena could not take the payload.
    fn build_sg(
        &mut self,
        d: &Datagram<S::Payload>,
        route: &Route,
        local: SocketAddr,
        hlen: usize,
    ) -> bool {
        let Some(p) = d.payload.as_ref() else {
            return false;
        };
        let bytes = p.bytes();
        // One source (an Arc clone) per datagram, for the resident lookup and the arena.
        let source = p.source();
        self.pieces.clear();
        let resident = p.file().is_some_and(|file| {
            self.resident.pieces(
                self.area.resident(),
                &source,
                file,
                p.position(),
                bytes.len(),
                &mut self.pieces,
            )
        });
        let staged = if resident {
            Ok(Ok(()))
        } else {
            match self.arena.lock() {
                Ok(mut a) => a.stage(&source, p.position(), bytes, p.ahead(), &mut self.pieces),
                Err(_) => return false,
            }
        };
        match staged {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                self.stats.arena_full.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Err(e) => {
                log::warn!("arena staging failed, sending by copy: {e}");
                return false;
            }
        }
        if self.pieces.len() + 1 > MAX_DESCS {
            self.release_pieces();
            return false;
        }
        let Some(hf) = self.tx_free.pop() else {
            self.release_pieces();
            return false;
        };
        let header = &d.header;
        let buf = self.frame_mut(hf);
        if packet::write_headers(buf, route, local, d.dst, &[header, bytes]).is_none() {
            self.tx_free.push(hf);
            self.release_pieces();
            return false;
        }
        buf[hlen..hlen + header.len()].copy_from_slice(header);
        let contd = if self.pieces.is_empty() {
            0
        } else {
            XDP_PKT_CONTD
        };
        self.descs.push(xdpilone::xdp::XdpDesc {
            addr: hf,
            len: (hlen + header.len()) as u32,
            options: contd,
        });
        let last = self.pieces.len().saturating_sub(1);
        for (i, (addr, len)) in self.pieces.iter().enumerate() {
            self.descs.push(xdpilone::xdp::XdpDesc {
                addr: *addr,
                len: *len,
                options: if i == last { 0 } else { XDP_PKT_CONTD },
            });
        }
        if resident {
            self.stats
                .tx_resident_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        true
    }

    fn release_pieces(&mut self) {
        if let Ok(mut a) = self.arena.lock() {
            for (addr, _) in self.pieces.drain(..) {
                a.release(addr);
            }
        }
    }

    /// Everything copied into chained TX frames.
    fn build_copy(
        &mut self,
        d: &Datagram<S::Payload>,
        route: &Route,
        local: SocketAddr,
        hlen: usize,
        frame_len: usize,
    ) {
        let payload: &[u8] = d.payload.as_ref().map(|p| p.bytes()).unwrap_or(&[]);
        let nframes = frame_len.div_ceil(FRAME as usize);
        let frames: Vec<u64> = (0..nframes).filter_map(|_| self.tx_free.pop()).collect();
        let Some(&first) = frames.first().filter(|_| frames.len() == nframes) else {
            self.tx_free.extend(frames);
            return;
        };
        {
            let buf = self.frame_mut(first);
            if packet::write_headers(buf, route, local, d.dst, &[&d.header, payload]).is_none() {
                self.tx_free.extend(frames);
                return;
            }
        }
        // Stream header + payload across the frames after the Ethernet/IP/UDP headers.
        let mut pos = hlen;
        for src in [&d.header[..], payload] {
            let mut off = 0;
            while off < src.len() {
                let fi = pos / FRAME as usize;
                let at = pos % FRAME as usize;
                let n = (FRAME as usize - at).min(src.len() - off);
                let f = frames[fi];
                self.frame_mut(f)[at..at + n].copy_from_slice(&src[off..off + n]);
                off += n;
                pos += n;
            }
        }
        for (i, f) in frames.iter().enumerate() {
            let len = if i + 1 == nframes {
                frame_len - i * FRAME as usize
            } else {
                FRAME as usize
            };
            self.descs.push(xdpilone::xdp::XdpDesc {
                addr: *f,
                len: len as u32,
                options: if i + 1 == nframes { 0 } else { XDP_PKT_CONTD },
            });
        }
    }

    /// Makes the kernel process the TX ring (copy mode transmits inside sendto, a batch at a time).
    fn kick(&mut self) {
        for _ in 0..16 {
            if self.sock.tx.pending() == 0 {
                return;
            }
            if !self.sock.tx.needs_wakeup() {
                return;
            }
            // SAFETY: zero-length non-blocking sendto on our AF_XDP socket (the TX kick).
            let r = unsafe {
                libc::sendto(
                    self.sock.fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r < 0 {
                match errno() {
                    libc::EAGAIN | libc::EINTR => {}
                    libc::EBUSY | libc::ENOBUFS => return,
                    e => {
                        self.stats.kick_errors.fetch_add(1, Ordering::Relaxed);
                        log::debug!("TX kick: {}", std::io::Error::from_raw_os_error(e));
                        return;
                    }
                }
            }
        }
    }
}
