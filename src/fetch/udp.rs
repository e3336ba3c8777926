//! Kernel UDP I/O for the fetch protocol: batched receive (recvmmsg), batched send
//! (sendmmsg) with each datagram as an iovec pair [header, mapped log bytes], and UDP GSO
//! (`UDP_SEGMENT`): runs of equal-sized datagrams to one destination become one send.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsFd, RawFd};

use nix::sys::socket::{setsockopt, sockopt};
use socket2::SockAddr;

use crate::driver::{Datagram, TxPayload};

/// Datagrams per recvmmsg/sendmmsg call.
pub const BATCH: usize = 64;
pub use crate::driver::MAX_UDP_PAYLOAD;
/// GSO: at most this many segments, and this many bytes, per send.
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65000;

/// Reusable buffers for recvmmsg.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    n: usize,
}

impl RecvBatch {
    pub fn new(count: usize, buf_size: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..count).map(|_| vec![0u8; buf_size]).collect(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: (0..count).map(|_| unsafe { zeroed() }).collect(),
            addr_lens: vec![0; count],
            lens: vec![0; count],
            truncated: vec![false; count],
            n: 0,
        }
    }

    /// Receives what is queued without blocking; returns how many datagrams (0 if none).
    /// `ECONNREFUSED` (an ICMP error on a connected socket) is reported as an error.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let count = self.bufs.len();
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (0..count)
            .map(|i| {
                // SAFETY: mmsghdr is plain old data; the pointers are set right below.
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: every mmsghdr points at live buffers (bufs, addrs, iovs) owned by this
        // function's caller for the whole call; the kernel writes at most the given lengths.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            self.n = 0;
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        let n = r as usize;
        for (i, m) in msgs.iter().enumerate().take(n) {
            self.lens[i] = (m.msg_len as usize).min(self.bufs[i].len());
            self.addr_lens[i] = m.msg_hdr.msg_namelen;
            self.truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.n = n;
        Ok(n)
    }

    /// Datagram `i` of the last receive: source, bytes, whether it was cut short.
    pub fn get(&self, i: usize) -> Option<(Option<SocketAddr>, &[u8], bool)> {
        if i >= self.n {
            return None;
        }
        // SAFETY: the kernel filled addrs[i] with addr_lens[i] valid bytes of a sockaddr.
        let addr = unsafe { SockAddr::new(self.addrs[i], self.addr_lens[i]) }.as_socket();
        Some((addr, &self.bufs[i][..self.lens[i]], self.truncated[i]))
    }
}

/// Whether this kernel accepts UDP_SEGMENT on `sock` (probes with setsockopt).
pub fn gso_supported(sock: impl AsFd) -> bool {
    setsockopt(&sock, sockopt::UdpGsoSegment, &0).is_ok()
}

/// One sendmmsg message under construction.
struct Msg {
    first_iov: usize,
    iovs: usize,
    dst: usize,
    segment: u16,
    transmits: usize,
}

/// Sends as many of `txs` as the socket takes now; returns how many were sent (fewer
/// than `txs.len()` when the socket buffer is full). With `gso`, consecutive datagrams to
/// the same destination and of the same size (the last may be shorter) go as one message;
/// `on_gso` is called with each sent datagram that went in such a message.
pub fn send_transmits<P: TxPayload>(
    fd: RawFd,
    txs: &[Datagram<P>],
    gso: bool,
    mut on_gso: impl FnMut(&Datagram<P>),
) -> io::Result<usize> {
    if txs.is_empty() {
        return Ok(0);
    }
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(txs.len() * 2);
    let mut dsts: Vec<SockAddr> = Vec::new();
    let mut plan: Vec<Msg> = Vec::new();
    let mut i = 0;
    while i < txs.len() && plan.len() < BATCH {
        let t = &txs[i];
        let seg = t.len();
        let first_iov = iovs.len();
        let mut n = 0;
        let mut bytes = 0;
        while let Some(u) = txs.get(i + n) {
            if n > 0 {
                let fits = gso
                    && u.dst == t.dst
                    && u.len() <= seg
                    && n < GSO_MAX_SEGMENTS
                    && bytes + u.len() <= GSO_MAX_BYTES;
                if !fits {
                    break;
                }
            }
            push_iovs(&mut iovs, u);
            bytes += u.len();
            n += 1;
            // Only the last segment may be shorter.
            if u.len() < seg {
                break;
            }
        }
        if dsts.last().and_then(|d| d.as_socket()) != Some(t.dst) {
            dsts.push(SockAddr::from(t.dst));
        }
        plan.push(Msg {
            first_iov,
            iovs: iovs.len() - first_iov,
            dst: dsts.len() - 1,
            segment: if n > 1 { seg as u16 } else { 0 },
            transmits: n,
        });
        i += n;
    }
    const CMSG_SPACE: usize = 64;
    let mut cmsgs = vec![[0u64; CMSG_SPACE / 8]; plan.len()];
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(plan.len());
    for (k, m) in plan.iter().enumerate() {
        // SAFETY: mmsghdr is plain old data; the pointers are set right below and point into
        // `iovs`, `dsts` and `cmsgs`, which outlive the sendmmsg call.
        let mut h: libc::mmsghdr = unsafe { zeroed() };
        h.msg_hdr.msg_name = dsts[m.dst].as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = dsts[m.dst].len();
        h.msg_hdr.msg_iov = iovs[m.first_iov..].as_mut_ptr();
        h.msg_hdr.msg_iovlen = m.iovs;
        if m.segment > 0 {
            let buf = cmsgs[k].as_mut_ptr().cast::<u8>();
            h.msg_hdr.msg_control = buf.cast();
            // SAFETY: CMSG_SPACE computes a size; the buffer has room for one u16 cmsg
            // (64 bytes, 8-aligned), which CMSG_FIRSTHDR/CMSG_DATA address.
            unsafe {
                h.msg_hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), m.segment);
            }
        }
        msgs.push(h);
    }
    // SAFETY: every message points at iovecs over live memory: headers owned by `txs` and
    // payload bytes kept alive (mapped) by the payloads in `txs`.
    let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, 0) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        return Err(e);
    }
    let mut sent = 0;
    for m in plan.iter().take(r as usize) {
        if m.segment > 0 {
            txs[sent..sent + m.transmits].iter().for_each(&mut on_gso);
        }
        sent += m.transmits;
    }
    Ok(sent)
}

fn push_iovs<P: TxPayload>(iovs: &mut Vec<libc::iovec>, t: &Datagram<P>) {
    iovs.push(libc::iovec {
        iov_base: t.header.as_ptr() as *mut libc::c_void,
        iov_len: t.header.len(),
    });
    if let Some(p) = &t.payload {
        let b = p.bytes();
        iovs.push(libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        });
    }
}

/// Enlarges a socket's receive buffer past `rmem_max` when allowed (root), else as far as
/// `rmem_max` goes: bursts of 64 KiB datagrams overflow the default buffer.
pub fn grow_recv_buffer(sock: &std::net::UdpSocket, bytes: usize) {
    if setsockopt(sock, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = socket2::SockRef::from(sock).set_recv_buffer_size(bytes);
    }
}
