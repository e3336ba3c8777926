//! The kernel-UDP gateway: one thread, one socket, the [`Server`] core.
//!
//! Loop: drain the socket with recvmmsg, feed the core, send what it has with sendmmsg (UDP
//! GSO when available), and sleep in poll(2) until a datagram, a log append (eventfd woken
//! by the log's on_append hook) or the core's next timer.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::log::LogDir;

use super::server::{Server, ServerConfig, ServerStats};
use super::udp::{self, RecvBatch, BATCH};
use super::Transmit;

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

/// A bound gateway, ready to run.
pub struct UdpGateway {
    sock: Socket,
    wake: Arc<OwnedFd>,
    server: Server,
    gso: bool,
    local: SocketAddr,
    busy_poll: bool,
    published: Arc<Mutex<ServerStats>>,
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned by the OwnedFd from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn wake(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd; failure (counter full) is harmless.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

fn drain_eventfd(fd: RawFd) -> bool {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64.
    let r = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    r == 8
}

impl UdpGateway {
    /// Binds the socket, sizes datagrams from the MTU and hooks log appends.
    pub fn bind(log: Arc<LogDir>, mut cfg: UdpGatewayConfig) -> Result<UdpGateway> {
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
            None => udp::mtu_for(cfg.listen.ip()).unwrap_or_else(|| ("default".into(), 1500)),
        };
        let max_datagram = udp::max_datagram_for_mtu(mtu, cfg.listen.is_ipv6());
        if max_datagram < super::server::MIN_DATAGRAM {
            bail!("MTU {mtu} is too small for the fetch protocol");
        }
        cfg.server.max_datagram = max_datagram;
        let gso = cfg.gso && udp::gso_supported(sock.as_raw_fd());
        if cfg.gso && !gso {
            log::warn!("fetch: UDP GSO not available on this kernel; sending without it");
        }
        let wake_fd = Arc::new(eventfd().context("creating the wake-up eventfd")?);
        let hook_fd = wake_fd.clone();
        log.on_append(Box::new(move |_| wake(hook_fd.as_raw_fd())));
        log::info!(
            "fetch: kernel UDP transport (recvmmsg/sendmmsg{}) serving {local}, max datagram {max_datagram} B (MTU {mtu}, {ifname})",
            if gso { " + UDP GSO" } else { "" }
        );
        Ok(UdpGateway {
            sock,
            wake: wake_fd,
            server: Server::new(log, cfg.server),
            gso,
            local,
            busy_poll: cfg.busy_poll,
            published: Arc::new(Mutex::new(ServerStats::default())),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until `stop` is set; returns the final counters.
    pub fn run(mut self, stop: &AtomicBool) -> Result<ServerStats> {
        let fd = self.sock.as_raw_fd();
        let wake_fd = self.wake.as_raw_fd();
        let mut rb = RecvBatch::new(BATCH, 4096);
        let mut pending: Vec<Transmit> = Vec::with_capacity(BATCH * 4);
        let mut blocked = false;
        let mut warned: Vec<i32> = Vec::new();
        let mut last_report = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut busy = false;
            let now = Instant::now();
            for _ in 0..8 {
                let n = match rb.recv(fd) {
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
                busy = true;
                for i in 0..n {
                    if let Some((Some(src), data, truncated)) = rb.get(i) {
                        if truncated {
                            // Longer than any request can be: count it as malformed.
                            self.server.handle_datagram(now, src, &[]);
                        } else {
                            self.server.handle_datagram(now, src, data);
                        }
                    }
                }
            }
            if drain_eventfd(wake_fd) {
                self.server.handle_log_append(now);
                busy = true;
            }
            if self.server.poll_timeout().is_some_and(|t| now >= t) {
                self.server.handle_timeout(now);
            }
            // Send: a bounded amount per round so requests and acks keep being read.
            for _ in 0..4 {
                while pending.len() < BATCH * 4 {
                    match self.server.poll_transmit(now) {
                        Some(t) => pending.push(t),
                        None => break,
                    }
                }
                if pending.is_empty() {
                    blocked = false;
                    break;
                }
                let sent = match udp::send_transmits(fd, &pending, self.gso) {
                    Ok(n) => n,
                    Err(e)
                        if self.gso
                            && matches!(
                                e.raw_os_error(),
                                Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                            ) =>
                    {
                        log::warn!("fetch: UDP GSO send failed ({e}); continuing without GSO");
                        self.gso = false;
                        continue;
                    }
                    Err(e) => {
                        // A send error concerns one destination (e.g. unreachable): drop
                        // that datagram rather than stall everyone.
                        let errno = e.raw_os_error().unwrap_or(0);
                        if !warned.contains(&errno) {
                            warned.push(errno);
                            log::warn!(
                                "fetch: send to {} failed: {e}{} (dropping the datagram; further errors of this kind are not logged)",
                                pending[0].dst,
                                if errno == libc::EMSGSIZE { " -- is --fetch-mtu above the path MTU?" } else { "" }
                            );
                        }
                        1
                    }
                };
                pending.drain(..sent);
                busy |= sent > 0;
                if sent == 0 {
                    blocked = true;
                    break;
                }
                blocked = false;
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                self.publish();
            }
            if busy {
                continue;
            }
            if self.busy_poll {
                // Idle spin: yield, so a log follower woken on this core (new records) runs at
                // once instead of waiting for the spinner's time slice to run out.
                let _ = nix::sched::sched_yield();
                continue;
            }
            let timeout = self
                .server
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN
                        | if blocked || !pending.is_empty() {
                            libc::POLLOUT
                        } else {
                            0
                        },
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = timeout.as_micros().div_ceil(1000) as libc::c_int;
            // SAFETY: fds is a live array of two pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        }
        self.publish();
        let st = self.server.stats().clone();
        log::info!("fetch: gateway {} stopped: {st}", self.local);
        Ok(st)
    }

    fn publish(&self) {
        let mut p = self.published.lock().unwrap_or_else(|e| e.into_inner());
        *p = self.server.stats().clone();
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
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ServerStats>>,
    thread: Option<JoinHandle<Result<ServerStats>>>,
}

impl FetchListener {
    /// Starts the endpoint if `--fetch-listen` was given. The caller keeps the log followed
    /// (LogDir::spawn_follower): appends reach the endpoint through the on_append hook.
    pub fn start(log: &Arc<LogDir>, args: &FetchArgs) -> Result<Option<FetchListener>> {
        let Some(listen) = args.fetch_listen else {
            return Ok(None);
        };
        let mut cfg = UdpGatewayConfig::new(listen);
        cfg.gso = args.udp_gso == OnOff::On;
        cfg.mtu = args.fetch_mtu;
        cfg.busy_poll = args.fetch_busy_poll;
        let gw = UdpGateway::bind(log.clone(), cfg)?;
        let addr = gw.local_addr();
        let stats = gw.published.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kxgw-fetch-udp".into())
            .spawn(move || gw.run(&stop2))
            .context("starting the fetch gateway thread")?;
        Ok(Some(FetchListener {
            addr,
            stop,
            stats,
            thread: Some(thread),
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds this endpoint's counters to the gateway's metrics (`kxgw stats`, /metrics).
    pub fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        let stats = self.stats.clone();
        let addr = self.addr.to_string();
        metrics.register(move |w| {
            let s = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
            s.write_metrics(w, &[("transport", "udp"), ("endpoint", &addr)]);
        });
    }

    /// Counters as of the last second.
    pub fn stats(&self) -> ServerStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the endpoint and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::error!("fetch endpoint {}: {e:#}", self.addr),
                Err(_) => log::error!("fetch endpoint {} thread panicked", self.addr),
            }
        }
    }
}

impl Drop for FetchListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Binds and serves in the calling thread until `stop` is set.
pub fn run_udp_gateway(
    log: Arc<LogDir>,
    cfg: UdpGatewayConfig,
    stop: Arc<AtomicBool>,
) -> Result<ServerStats> {
    UdpGateway::bind(log, cfg)?.run(&stop)
}

/// Binds now (so configuration errors surface to the caller) and serves on a new thread.
pub fn spawn_udp_gateway(
    log: Arc<LogDir>,
    cfg: UdpGatewayConfig,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, JoinHandle<Result<ServerStats>>)> {
    let gw = UdpGateway::bind(log, cfg)?;
    let addr = gw.local_addr();
    let h = std::thread::Builder::new()
        .name("kxgw-fetch-udp".into())
        .spawn(move || gw.run(&stop))
        .context("starting the fetch gateway thread")?;
    Ok((addr, h))
}
