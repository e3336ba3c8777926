//! The kernel-UDP fetch endpoint: one socket under the fetch driver ([`crate::driver`]).
//!
//! [`UdpIo`] is the driver's kernel-UDP transport: it drains the socket with recvmmsg straight
//! into the service, and sends what the service has with sendmmsg (UDP GSO when available),
//! each datagram as the iovec pair [header, mapped log bytes]. [`FetchListener`] runs one
//! [`Server`] over it, woken by the log's append batches that reach a parked poll
//! ([`crate::log::appends`]).

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::driver::{
    self, Datagram, DatagramIo, Driver, Publish, Service, TxPayload, Wait, Waker, Workers,
};
use crate::log::appends::Watch;
use crate::log::LogDir;

use super::gso_guard::{GsoGuard, GsoGuardConfig, GsoTrip};
use super::server::{Server, ServerConfig, ServerStats};
use super::udp::{self, RecvBatch, BATCH};

#[derive(Clone, Debug)]
pub struct UdpGatewayConfig {
    pub listen: SocketAddr,
    /// Use UDP GSO when the kernel has it.
    pub gso: bool,
    /// Interface MTU to size datagrams from; None: the MTU of the listen address's interface.
    pub mtu: Option<usize>,
    /// Protocol settings; `max_datagram` is overwritten from the MTU.
    pub server: ServerConfig,
    /// Socket send buffer (bytes).
    pub sndbuf: usize,
    /// Spin on the socket instead of sleeping in poll(2) (lower latency, one busy core).
    pub busy_poll: bool,
}

impl UdpGatewayConfig {
    pub fn new(listen: SocketAddr) -> Self {
        UdpGatewayConfig {
            listen,
            gso: true,
            mtu: None,
            server: ServerConfig::default(),
            sndbuf: 4 << 20,
            busy_poll: false,
        }
    }
}

/// Counters of the kernel-UDP transport's GSO use, read by other threads (metrics).
#[derive(Debug, Default)]
pub struct UdpIoStats {
    /// Whether sends use UDP GSO now.
    pub gso: AtomicBool,
    /// GSO turned off because the kernel refused it (EIO/EINVAL/EOPNOTSUPP on send).
    pub gso_refused: AtomicU64,
    /// GSO turned off because a peer kept asking for the same bytes sent with it.
    pub gso_damaged: AtomicU64,
}

/// The driver's kernel-UDP transport: one non-blocking socket.
pub struct UdpIo<P> {
    sock: Socket,
    local: SocketAddr,
    ifname: String,
    gso: bool,
    guard: GsoGuard,
    stats: Arc<UdpIoStats>,
    rb: RecvBatch,
    /// Datagrams taken from the service, not yet accepted by the socket.
    pending: Vec<Datagram<P>>,
    blocked: bool,
    warned: Vec<i32>,
}

impl<P> UdpIo<P> {
    /// Binds the socket; returns it with the largest datagram its interface's MTU allows.
    pub fn bind(cfg: &UdpGatewayConfig) -> Result<(UdpIo<P>, usize)> {
        let domain = Domain::for_address(cfg.listen);
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .context("creating the UDP socket")?;
        sock.set_nonblocking(true)?;
        let _ = sock.set_send_buffer_size(cfg.sndbuf);
        let _ = sock.set_recv_buffer_size(1 << 20);
        sock.bind(&cfg.listen.into())
            .with_context(|| format!("binding the fetch endpoint {}", cfg.listen))?;
        let local = sock
            .local_addr()?
            .as_socket()
            .context("local address of the fetch socket")?;
        let (ifname, mtu) = match cfg.mtu {
            Some(m) => ("configured".to_string(), m),
            None => driver::mtu_for(cfg.listen.ip()).unwrap_or_else(|| ("default".into(), 1500)),
        };
        let max_datagram = driver::max_datagram(mtu, cfg.listen.is_ipv6())?;
        let gso = cfg.gso && udp::gso_supported(&sock);
        if cfg.gso && !gso {
            log::warn!("fetch: UDP GSO not available on this kernel; sending without it");
        }
        log::info!(
            "fetch: kernel UDP transport (recvmmsg/sendmmsg{}) serving {local}, max datagram {max_datagram} B (MTU {mtu}, {ifname})",
            if gso { " + UDP GSO" } else { "" }
        );
        let stats = Arc::new(UdpIoStats::default());
        stats.gso.store(gso, Ordering::Relaxed);
        let io = UdpIo {
            sock,
            local,
            ifname,
            gso,
            guard: GsoGuard::new(GsoGuardConfig::default()),
            stats,
            rb: RecvBatch::new(BATCH, 4096),
            pending: Vec::with_capacity(BATCH * 4),
            blocked: false,
            warned: Vec::new(),
        };
        Ok((io, max_datagram))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Its GSO counters (shared: they stay readable after the transport moved to its thread).
    pub fn stats(&self) -> Arc<UdpIoStats> {
        self.stats.clone()
    }

    /// The guard saw a peer ask again and again for bytes sent with GSO: the device (or its
    /// emulation) damages GSO datagrams, so the rest goes without GSO.
    fn gso_damaged(&mut self, t: GsoTrip) {
        self.gso = false;
        self.stats.gso.store(false, Ordering::Relaxed);
        self.stats.gso_damaged.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "fetch: {} asked again and again for the same bytes sent with UDP GSO ({} ranges, {} datagrams sent again): \
             the device of {} seems to damage GSO datagrams; sending without GSO from now on",
            t.peer,
            t.ranges,
            t.resent,
            self.ifname
        );
    }

    /// A send failed: GSO refused (turned off, true: retry) or one destination's error
    /// (logged once per errno; the caller drops that datagram).
    fn send_failed(&mut self, e: &std::io::Error) -> bool {
        let errno = e.raw_os_error().unwrap_or(0);
        if self.gso && matches!(errno, libc::EIO | libc::EINVAL | libc::EOPNOTSUPP) {
            log::warn!("fetch: UDP GSO send failed ({e}); continuing without GSO");
            self.gso = false;
            self.stats.gso.store(false, Ordering::Relaxed);
            self.stats.gso_refused.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if !self.warned.contains(&errno) {
            self.warned.push(errno);
            log::warn!(
                "fetch: send to {} failed: {e}{} (dropping the datagram; further errors of this kind are not logged)",
                self.pending[0].dst,
                if errno == libc::EMSGSIZE { " -- is --fetch-mtu above the path MTU?" } else { "" }
            );
        }
        false
    }
}

impl<S: Service> DatagramIo<S> for UdpIo<S::Payload>
where
    S::Payload: Send + 'static,
{
    fn receive(&mut self, now: Instant, service: &mut S) -> bool {
        let fd = self.sock.as_raw_fd();
        let mut got = false;
        for _ in 0..8 {
            let n = match self.rb.recv(fd) {
                Ok(n) => n,
                // ICMP errors of earlier sends surface here; they concern one peer only.
                Err(e) => {
                    log::debug!("fetch: receive: {e}");
                    continue;
                }
            };
            if n == 0 {
                break;
            }
            got = true;
            for i in 0..n {
                if let Some((Some(src), data, truncated)) = self.rb.get(i) {
                    // Longer than any request can be: counted as malformed.
                    let data = if truncated { &[][..] } else { data };
                    service.handle_datagram(now, src, self.local, data);
                }
            }
        }
        got
    }

    fn transmit(&mut self, now: Instant, service: &mut S) -> bool {
        let fd = self.sock.as_raw_fd();
        let mut progress = false;
        // A bounded amount per round so requests and acks keep being read.
        for _ in 0..4 {
            while self.pending.len() < BATCH * 4 {
                match service.poll_transmit(now) {
                    Some(t) => self.pending.push(t),
                    None => break,
                }
            }
            if self.pending.is_empty() {
                self.blocked = false;
                break;
            }
            let guard = &mut self.guard;
            let mut trip = None;
            let sent = udp::send_transmits(fd, &self.pending, self.gso, |d| {
                if let Some(p) = &d.payload {
                    let len = p.bytes().len();
                    if let Some(t) = guard.sent(now, d.dst, p.source().id, p.position(), len) {
                        trip = Some(t);
                    }
                }
            });
            if let Some(t) = trip {
                self.gso_damaged(t);
            }
            let sent = match sent {
                Ok(n) => n,
                Err(e) if self.send_failed(&e) => continue,
                // A send error concerns one destination (e.g. unreachable): drop that
                // datagram rather than stall everyone.
                Err(_) => 1,
            };
            self.pending.drain(..sent);
            progress |= sent > 0;
            self.blocked = sent == 0;
            if sent == 0 {
                break;
            }
        }
        progress
    }

    fn wait(&self) -> Wait<'_> {
        Wait {
            fd: self.sock.as_fd(),
            writable: self.blocked || !self.pending.is_empty(),
            max: Duration::from_millis(100),
        }
    }
}

/// Counters of the fetch servers of one endpoint as of their last publish: one slot per
/// driver (kernel UDP: one; AF_XDP: one per queue).
#[derive(Clone, Default)]
pub struct FetchStats(Arc<Mutex<Vec<ServerStats>>>);

impl FetchStats {
    /// Adds a slot; the driver of one server publishes into it through the returned hook.
    pub fn slot(&self) -> Publish<Server> {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slots.push(ServerStats::default());
        let i = slots.len() - 1;
        let all = self.0.clone();
        Box::new(move |s: &Server| {
            let mut slots = all.lock().unwrap_or_else(|e| e.into_inner());
            slots[i] = s.stats().clone();
        })
    }

    /// Every slot's counters.
    pub fn get(&self) -> Vec<ServerStats> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// On/off switch for CLI flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

/// The fetch endpoint's flags of `kxgw serve` (flattened into its arguments).
#[derive(Clone, Debug)]
pub struct FetchArgs {
    /// kxgw UDP fetch endpoint (kernel UDP transport), e.g. 198.18.0.1:9093.
    pub fetch_listen: Option<SocketAddr>,
    /// Send fetch datagrams with UDP GSO (UDP_SEGMENT) when the kernel has it.
    pub udp_gso: OnOff,
    /// MTU to size fetch datagrams from (default: the MTU of the listen address's interface).
    pub fetch_mtu: Option<usize>,
    /// Busy-poll the fetch socket instead of sleeping (lower latency, one core spinning).
    pub fetch_busy_poll: bool,
}

/// A running kernel-UDP fetch endpoint (what `kxgw serve --fetch-listen` starts).
pub struct FetchListener {
    addr: SocketAddr,
    workers: Workers,
    stats: FetchStats,
    io_stats: Arc<UdpIoStats>,
}

impl FetchListener {
    /// Starts the endpoint if `--fetch-listen` was given, with `server`'s settings (its token
    /// secret is the gateway's). The caller keeps the log followed (LogDir::spawn_follower):
    /// appends reach the endpoint through its watch on the log.
    pub fn start(
        log: &Arc<LogDir>,
        args: &FetchArgs,
        server: &ServerConfig,
    ) -> Result<Option<FetchListener>> {
        let Some(listen) = args.fetch_listen else {
            return Ok(None);
        };
        let mut cfg = UdpGatewayConfig::new(listen);
        cfg.gso = args.udp_gso == OnOff::On;
        cfg.mtu = args.fetch_mtu;
        cfg.busy_poll = args.fetch_busy_poll;
        cfg.server = server.clone();
        Self::spawn(log, cfg).map(Some)
    }

    /// Binds now (so configuration errors surface to the caller) and serves on a new thread.
    pub fn spawn(log: &Arc<LogDir>, mut cfg: UdpGatewayConfig) -> Result<FetchListener> {
        let (io, max_datagram) = UdpIo::bind(&cfg)?;
        cfg.server.max_datagram = max_datagram;
        let addr = io.local_addr();
        let io_stats = io.stats();
        let waker = Waker::new().context("creating the wake-up eventfd")?;
        let hook = waker.clone();
        let stats = FetchStats::default();
        let server =
            Server::new(log.clone(), cfg.server).with_watch(Watch::new(move || hook.wake()));
        let driver = Driver::new(server, io, waker, cfg.busy_poll).on_publish(stats.slot());
        let mut workers = Workers::new();
        workers
            .spawn("kxgw-fetch-udp".into(), driver)
            .context("starting the fetch gateway thread")?;
        Ok(FetchListener {
            addr,
            workers,
            stats,
            io_stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds this endpoint's counters to the gateway's metrics (`kxgw stats`, /metrics).
    pub fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        let stats = self.stats.clone();
        let io = self.io_stats.clone();
        let addr = self.addr.to_string();
        metrics.register(move |w| {
            for s in stats.get() {
                s.write_metrics(w, &[("transport", "udp"), ("endpoint", &addr)]);
            }
            let l = [("endpoint", addr.as_str())];
            let on = io.gso.load(Ordering::Relaxed);
            w.gauge("fetch_udp_gso", "1 while kernel-UDP sends use UDP GSO", &l, f64::from(u8::from(on)));
            for (reason, v) in [("refused", &io.gso_refused), ("damaged", &io.gso_damaged)] {
                w.counter(
                    "fetch_udp_gso_fallbacks_total",
                    "Times kernel-UDP sends stopped using GSO: the kernel refused it, or a peer kept asking for the same bytes sent with it (a device damaging GSO datagrams)",
                    &[("endpoint", addr.as_str()), ("reason", reason)],
                    v.load(Ordering::Relaxed),
                );
            }
        });
    }

    /// Counters as of the last publish.
    pub fn stats(&self) -> ServerStats {
        self.stats.get().pop().unwrap_or_default()
    }

    /// Stops the endpoint and waits for its thread.
    pub fn shutdown(mut self) {
        self.workers.stop();
        log::info!("fetch: gateway {} stopped: {}", self.addr, self.stats());
    }
}
