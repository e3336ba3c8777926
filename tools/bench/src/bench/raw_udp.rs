//! Receiver for the raw AF_XDP generator (`kxgw xdp-raw`, no protocol, no log): asks for the
//! pattern in large windows (`GEN <position> <bytes> <size>`) and counts what arrives with
//! recvmmsg, checking each datagram's 16-byte header and, with `crc`, running CRC32C over every
//! payload byte: the per-byte work the fetch client does on record batches, so the ceiling
//! bounds a path measured the same way (as `stream-client --crc` does for sendfile). It
//! exists because a ceiling must not be limited by its client: `kxgw xdp-raw-client` verifies
//! every byte with one recv per datagram, which on this VM is slower than the gateway paths it
//! should bound. Lost datagrams are not asked again (a ceiling has no reliability); they are
//! reported.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Throughput;
use kxgw::fetch::udp::{RecvBatch, BATCH, MAX_UDP_PAYLOAD};
use kxgw_testkit::raw_gen::{GEN_HEADER, GEN_MAGIC};

/// What the raw receiver got.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawReport {
    /// Payload bytes delivered and their timing.
    pub throughput: Throughput,
    /// Datagrams received.
    pub datagrams: u64,
    /// Bytes asked for that never arrived.
    pub lost_bytes: u64,
}

/// Asks `server` for `bytes` pattern bytes in `window`-byte requests of `size`-byte datagrams.
/// A window ends when all its bytes arrived or nothing arrived for `idle`. `crc`: CRC32C every
/// payload byte.
pub fn receive(
    server: SocketAddr,
    bytes: u64,
    size: usize,
    window: u64,
    idle: Duration,
    crc: bool,
) -> Result<RawReport> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .context("bind address")?;
    let sock = UdpSocket::bind(bind).context("binding the raw receiver")?;
    kxgw::fetch::udp::grow_recv_buffer(&sock, 64 << 20);
    let fd = sock.as_raw_fd();
    let mut rb = RecvBatch::new(BATCH, MAX_UDP_PAYLOAD);
    let mut rep = RawReport::default();
    let t0 = Instant::now();
    let mut pos = 0u64;
    let mut last_data = t0;
    let mut acc = 0u32;
    while pos < bytes {
        let want = window.min(bytes - pos);
        let req = format!("GEN {pos} {want} {size}");
        sock.send_to(req.as_bytes(), server)
            .context("sending GEN")?;
        let mut got = 0u64;
        let mut last = Instant::now();
        while got < want {
            let n = rb.recv(fd).context("recvmmsg")?;
            if n == 0 {
                if last.elapsed() >= idle {
                    break;
                }
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one live pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, 10) };
                continue;
            }
            last = Instant::now();
            last_data = last;
            for i in 0..n {
                let Some((_, d, _)) = rb.get(i) else { continue };
                if d.len() < GEN_HEADER || &d[12..16] != GEN_MAGIC {
                    continue;
                }
                let len = u32::from_be_bytes([d[8], d[9], d[10], d[11]]) as usize;
                if d.len() != GEN_HEADER + len {
                    bail!(
                        "generator datagram of {} bytes announces {len} payload bytes",
                        d.len()
                    );
                }
                if crc {
                    acc = crc32c::crc32c_append(acc, &d[GEN_HEADER..]);
                }
                got += len as u64;
                rep.datagrams += 1;
            }
        }
        rep.throughput.bytes += got.min(want);
        rep.lost_bytes += want.saturating_sub(got);
        pos += want;
    }
    // Idle waits after the last datagram (a window that ended by timeout) are not delivery time.
    rep.throughput.elapsed = last_data - t0;
    log::debug!("raw payload crc32c {:#010x}", std::hint::black_box(acc));
    if rep.throughput.bytes == 0 {
        bail!("nothing arrived from {server}");
    }
    Ok(rep)
}
