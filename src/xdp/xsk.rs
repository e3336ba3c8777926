//! One AF_XDP socket per RX queue, all sharing one UMEM; each with its own fill and
//! completion rings. Bind tries the modes of `--xdp-bind` best first ([`super::bind`]); EBUSY
//! right after a previous socket on the queue closed is retried with backoff.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use super::error::XdpError;
use super::sys::errno;
use super::umem::UmemArea;

const XDP_SHARED_UMEM: u16 = 1 << 0;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// Multi-buffer: packets of several descriptors chained with XDP_PKT_CONTD.
const XDP_USE_SG: u16 = 1 << 4;
const SOL_XDP: libc::c_int = 283;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

pub use super::bind::{BindMode, BindPolicy};

/// Ring sizes of one socket (powers of two).
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    /// RX descriptors.
    pub rx: u32,
    /// TX descriptors.
    pub tx: u32,
}

/// A bound socket: the rings a worker drives.
pub struct QueueSocket {
    /// Interface queue.
    pub queue: u32,
    /// Fill ring.
    pub fill: xdpilone::FillQueue,
    /// Completion ring.
    pub comp: xdpilone::CompletionQueue,
    /// RX ring.
    pub rx: xdpilone::RingRx,
    /// TX ring.
    pub tx: xdpilone::RingTx,
    /// How it is bound.
    pub mode: BindMode,
    user: xdpilone::User,
}

impl QueueSocket {
    /// The socket fd (for the XSKMAP and poll).
    pub fn fd(&self) -> i32 {
        self.user.as_raw_fd()
    }

    /// The socket fd, borrowed for as long as the socket lives.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: `user` owns the fd and closes it only when dropped, after this borrow ends.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.user.as_raw_fd()) }
    }

    /// Kernel statistics of the socket.
    pub fn statistics(&self) -> Option<xdpilone::xdp::XdpStatisticsV2> {
        self.user.statistics_v2().ok()
    }
}

/// Opens and binds the socket of `queue`. `first` is the socket that carries the UMEM
/// registration (it must be bound before the others can share it).
pub fn open(
    area: &UmemArea,
    iface: &str,
    ifindex: u32,
    queue: u32,
    first: bool,
    rings: RingSizes,
    policy: BindPolicy,
) -> Result<QueueSocket, XdpError> {
    let umem = area.umem();
    let mut info = xdpilone::IfInfo::invalid();
    let name = CString::new(iface).map_err(|_| XdpError::NoInterface(iface.into()))?;
    info.from_name(&name)
        .map_err(|e| XdpError::sys(format!("looking up {iface}"), e.get_raw().abs()))?;
    info.set_queue(queue);
    let sock = if first {
        xdpilone::Socket::with_shared(&info, umem)
    } else {
        xdpilone::Socket::new(&info)
    }
    .map_err(|e| XdpError::sys("creating an AF_XDP socket", e.get_raw().abs()))?;
    let dq = umem.fq_cq(&sock).map_err(|e| {
        XdpError::sys(
            format!("creating fill/completion rings for {iface} queue {queue}"),
            e.get_raw().abs(),
        )
    })?;
    let cfg = xdpilone::SocketConfig {
        rx_size: NonZeroU32::new(rings.rx),
        tx_size: NonZeroU32::new(rings.tx),
        bind_flags: 0, // bind() below sets its own flags
    };
    let user = umem.rx_tx(&sock, &cfg).map_err(|e| {
        XdpError::sys(
            format!("creating RX/TX rings for {iface} queue {queue}"),
            e.get_raw().abs(),
        )
    })?;
    let rx = user
        .map_rx()
        .map_err(|e| XdpError::sys("mapping the RX ring", e.get_raw().abs()))?;
    let tx = user
        .map_tx()
        .map_err(|e| XdpError::sys("mapping the TX ring", e.get_raw().abs()))?;
    // Sockets after the first share the UMEM of the first socket (the UMEM's own fd).
    let shared_fd = if first { None } else { Some(umem_fd(area)) };
    let fd = user.as_raw_fd();
    let mode = bind_best(fd, iface, ifindex, queue, shared_fd, policy)?;
    let (fill, comp) = dq.into_parts();
    Ok(QueueSocket {
        queue,
        fill,
        comp,
        rx,
        tx,
        mode,
        user,
    })
}

/// The fd that registered the UMEM (first socket): xdpilone exposes it through a socket
/// created with `with_shared`.
fn umem_fd(area: &UmemArea) -> i32 {
    let info = xdpilone::IfInfo::invalid();
    match xdpilone::Socket::with_shared(&info, area.umem()) {
        Ok(s) => s.as_raw_fd(),
        Err(_) => -1,
    }
}

/// Binds the first mode of `policy` the driver accepts, best first (module docs of
/// [`super::bind`]); says why each better one was refused.
fn bind_best(
    fd: i32,
    iface: &str,
    ifindex: u32,
    queue: u32,
    shared: Option<i32>,
    policy: BindPolicy,
) -> Result<BindMode, XdpError> {
    if shared.is_some() {
        // A socket sharing the UMEM inherits its mode, need_wakeup and multi-buffer settings;
        // the kernel refuses any of those flags next to XDP_SHARED_UMEM (EINVAL). The engine
        // reports the first socket's mode.
        bind_retrying(fd, ifindex, queue, shared, 0).map_err(|e| {
            XdpError::sys(
                format!("binding an AF_XDP socket to {iface} queue {queue} (shared UMEM)"),
                e,
            )
        })?;
        return Ok(BindMode {
            zero_copy: confirm_zero_copy(fd, false),
            multi_buffer: false,
        });
    }
    let mut last = (BindMode::COPY, libc::EINVAL);
    for mode in policy.attempts() {
        let mut flags = XDP_USE_NEED_WAKEUP;
        flags |= if mode.zero_copy {
            XDP_ZEROCOPY
        } else {
            XDP_COPY
        };
        if mode.multi_buffer {
            flags |= XDP_USE_SG;
        }
        match bind_retrying(fd, ifindex, queue, shared, flags) {
            Ok(()) => {
                return Ok(BindMode {
                    zero_copy: confirm_zero_copy(fd, mode.zero_copy),
                    multi_buffer: mode.multi_buffer,
                })
            }
            Err(e) => {
                log::info!(
                    "AF_XDP {iface} queue {queue}: {} bind refused ({})",
                    mode.name(),
                    std::io::Error::from_raw_os_error(e)
                );
                last = (mode, e);
            }
        }
    }
    Err(XdpError::sys(
        format!(
            "binding an AF_XDP socket to {iface} queue {queue} (--xdp-bind {policy:?}; last tried: {})",
            last.0.name()
        ),
        last.1,
    ))
}

/// Asks the kernel which mode the socket really got (XDP_OPTIONS).
fn confirm_zero_copy(fd: i32, asked: bool) -> bool {
    let mut opts: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt into a u32 with its length.
    let r = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut opts as *mut u32).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return asked;
    }
    opts & XDP_OPTIONS_ZEROCOPY != 0
}

#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// bind(2), retrying EBUSY (queue still held by a socket that just closed) for up to ~3 s.
fn bind_retrying(
    fd: i32,
    ifindex: u32,
    queue: u32,
    shared: Option<i32>,
    flags: u16,
) -> Result<(), i32> {
    let mut addr = SockaddrXdp {
        family: libc::AF_XDP as u16,
        flags,
        ifindex,
        queue_id: queue,
        shared_umem_fd: 0,
    };
    if let Some(s) = shared {
        addr.flags |= XDP_SHARED_UMEM;
        addr.shared_umem_fd = s as u32;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut backoff = Duration::from_millis(5);
    loop {
        // SAFETY: bind with a properly sized sockaddr_xdp.
        let r = unsafe {
            libc::bind(
                fd,
                (&addr as *const SockaddrXdp).cast(),
                std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = errno();
        if e != libc::EBUSY || Instant::now() >= deadline {
            return Err(e);
        }
        log::debug!("AF_XDP bind to queue {queue}: EBUSY, retrying in {backoff:?}");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

/// RX queues of `iface` in use (sysfs shows one `rx-N` per real RX queue).
pub fn rx_queue_count(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}
