//! One AF_XDP queue as the driver's transport ([`crate::driver::DatagramIo`]): its socket's
//! four rings, its TX frames, its own log arena (queues share no lock), and the routes learnt
//! from requests.
//!
//! RX descriptors are parsed into (source, payload) and handed to the service from the RX
//! frame itself; the service's datagrams are framed for the requester and put on the TX ring
//! by `sg` (header frame + descriptors into the arena or registered segment pages) or `copy`
//! ([`TxChoice`], which the engine derives from the TX strategy and the bind mode).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::arena::Arena;
use super::consts::{
    COMP_RING, FRAME, MAX_DESCS, RING, RX_BATCH, RX_FRAMES, TX_FRAMES, XDP_PKT_CONTD,
};
use super::frames::FrameLedger;
use super::packet::{self, Route};
use super::read_ahead::ReadAhead;
use super::resident::ResidentCache;
use super::sys::{self, Kick};
use super::umem::UmemArea;
use super::xsk::QueueSocket;
use crate::driver::{Datagram, DatagramIo, Service, TxPayload, Wait};

/// Counters of one queue, read by other threads (metrics).
#[derive(Default)]
pub(crate) struct QueueStats {
    pub rx_packets: AtomicU64,
    pub rx_invalid: AtomicU64,
    pub rx_multibuf_dropped: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_sg: AtomicU64,
    pub tx_copy: AtomicU64,
    pub tx_descs: AtomicU64,
    pub tx_resident_bytes: AtomicU64,
    pub arena_full: AtomicU64,
    pub no_route: AtomicU64,
    pub oversize: AtomicU64,
    pub kick_errors: AtomicU64,
    pub tx_ring_short: AtomicU64,
    // Copied from the arena and the kernel (XDP_STATISTICS) when the driver publishes.
    pub arena_staged_bytes: AtomicU64,
    pub arena_hit_bytes: AtomicU64,
    pub arena_evictions: AtomicU64,
    pub arena_refused: AtomicU64,
    pub kernel_rx_dropped: AtomicU64,
    pub kernel_rx_invalid_descs: AtomicU64,
    pub kernel_tx_invalid_descs: AtomicU64,
    pub kernel_rx_ring_full: AtomicU64,
    pub kernel_rx_fill_ring_empty: AtomicU64,
    pub kernel_tx_ring_empty: AtomicU64,
    pub frames_outstanding: AtomicU64,
    pub frames_leaked: AtomicU64,
    pub source_gone: AtomicU64,
}

/// How a queue sends payloads (the engine derives it from the TX strategy and bind mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TxChoice {
    /// Header frame + descriptors into the arena / registered pages.
    Sg,
    /// Copied into TX frames.
    Copy,
    /// `sg` for frames larger than this many bytes, else `copy`.
    SgAbove(usize),
}

impl TxChoice {
    fn sg(self, frame_len: usize) -> bool {
        match self {
            TxChoice::Sg => true,
            TxChoice::Copy => false,
            TxChoice::SgAbove(n) => frame_len > n,
        }
    }
}

/// One queue's socket, frames and arena.
pub(crate) struct XdpQueue {
    sock: QueueSocket,
    area: Arc<UmemArea>,
    arena: Arena,
    tx_free: Vec<u64>,
    routes: HashMap<SocketAddr, (Route, SocketAddr)>,
    stats: Arc<QueueStats>,
    choice: TxChoice,
    mtu: u32,
    in_flight: u32,
    descs: Vec<xdpilone::xdp::XdpDesc>,
    pieces: Vec<(u64, u32)>,
    resident: ResidentCache,
    released: Vec<u64>,
    held: Vec<xdpilone::xdp::XdpDesc>,
    rx_frames: Vec<u64>,
    ledger: FrameLedger,
    ahead: ReadAhead,
}

/// Where a queue's frames and arena lie in the UMEM.
pub(crate) struct QueueLayout {
    /// RX frames (put on the fill ring at start).
    pub rx_frames: Vec<u64>,
    /// TX frames.
    pub tx_frames: Vec<u64>,
    /// This queue's arena part: (UMEM offset, bytes).
    pub arena: (u64, u64),
}

impl XdpQueue {
    /// The queue over `sock`, its RX frames handed to the kernel.
    pub fn new(
        sock: QueueSocket,
        area: Arc<UmemArea>,
        layout: QueueLayout,
        choice: TxChoice,
        mtu: u32,
        stats: Arc<QueueStats>,
    ) -> XdpQueue {
        let arena = Arena::part(area.clone(), layout.arena.0, layout.arena.1);
        let mut q = XdpQueue {
            sock,
            area,
            arena,
            tx_free: layout.tx_frames,
            routes: HashMap::new(),
            stats,
            choice,
            mtu,
            in_flight: 0,
            descs: Vec::with_capacity(MAX_DESCS),
            pieces: Vec::with_capacity(MAX_DESCS),
            resident: ResidentCache::new(),
            released: Vec::new(),
            held: Vec::new(),
            rx_frames: Vec::with_capacity(RX_BATCH as usize),
            ledger: FrameLedger::new(RX_FRAMES, TX_FRAMES),
            ahead: ReadAhead::default(),
        };
        q.fill(&layout.rx_frames);
        q
    }

    fn fill(&mut self, frames: &[u64]) {
        let mut w = self.sock.fill.fill(frames.len() as u32);
        let taken = w.insert(frames.iter().copied());
        w.commit();
        self.ledger.filled(frames.len(), taken);
    }

    /// Frames of packets waiting for TX ring room (not with the kernel, not free).
    fn tx_waiting(&self) -> usize {
        let frames_end = self.area.arena_offset();
        self.held
            .iter()
            .chain(self.descs.iter())
            .filter(|d| d.addr < frames_end && d.addr % FRAME == 0)
            .count()
    }

    fn publish_frames(&self) {
        let out = self
            .ledger
            .outstanding(self.tx_free.len(), self.tx_waiting());
        self.stats.frames_outstanding.store(out, Ordering::Relaxed);
    }

    /// At shutdown: lets in-flight TX complete (bounded), then checks no frame went missing.
    fn drain_and_check(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self
            .ledger
            .tx_with_kernel(self.tx_free.len(), self.tx_waiting())
            > 0
            && Instant::now() < deadline
        {
            // The rest of a partly queued packet: the kernel holds its first descriptors
            // until it comes.
            if !self.held.is_empty() {
                std::mem::swap(&mut self.descs, &mut self.held);
                if !self.push_descs() {
                    std::mem::swap(&mut self.descs, &mut self.held);
                }
            }
            self.kick();
            if !self.complete() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.publish_frames();
        let leaked = self.ledger.leaked(self.tx_free.len(), self.tx_waiting());
        self.stats.frames_leaked.store(leaked, Ordering::Relaxed);
        if leaked > 0 {
            log::error!(
                "queue {}: {leaked} UMEM frame(s) unaccounted for at shutdown ({} lost to short fills, {:?})",
                self.sock.queue,
                self.ledger.lost(),
                self.ledger
            );
        }
    }

    /// Copies the arena's counters into the queue stats.
    fn copy_arena_stats(&self) {
        let st = &self.stats;
        let a = self.arena.stats();
        st.arena_staged_bytes
            .store(a.staged_bytes, Ordering::Relaxed);
        st.arena_hit_bytes.store(a.hit_bytes, Ordering::Relaxed);
        st.arena_evictions.store(a.evictions, Ordering::Relaxed);
        st.arena_refused.store(a.full, Ordering::Relaxed);
    }

    /// Publishes the arena's and the kernel's counters (XDP_STATISTICS) into the queue stats.
    fn copy_stats(&self) {
        self.copy_arena_stats();
        self.publish_frames();
        let st = &self.stats;
        if let Some(k) = self.sock.statistics() {
            st.kernel_rx_dropped.store(k.rx_dropped, Ordering::Relaxed);
            st.kernel_rx_invalid_descs
                .store(k.rx_invalid_descs, Ordering::Relaxed);
            st.kernel_tx_invalid_descs
                .store(k.tx_invalid_descs, Ordering::Relaxed);
            st.kernel_rx_ring_full
                .store(k.rx_ring_full, Ordering::Relaxed);
            st.kernel_rx_fill_ring_empty
                .store(k.rx_fill_ring_empty_descs, Ordering::Relaxed);
            st.kernel_tx_ring_empty
                .store(k.tx_ring_empty_descs, Ordering::Relaxed);
        }
    }

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
        for addr in self.released.drain(..) {
            self.arena.release(addr);
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        n > 0
    }

    fn receive<S: Service>(&mut self, now: Instant, service: &mut S) -> bool {
        let base = self.area.base();
        let area_len = self.area.len() as u64;
        let mut frames = std::mem::take(&mut self.rx_frames);
        let mut got = 0;
        let mut in_multibuf = false;
        {
            let mut r = self.sock.rx.receive(RX_BATCH);
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
                        service.handle_datagram(now, req.src, req.dst, req.payload);
                    }
                    Err(e) => {
                        log::debug!("queue {}: unparsable frame: {e}", self.sock.queue);
                        self.stats.rx_invalid.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            r.release();
        }
        self.ledger.received(got);
        if !frames.is_empty() {
            self.fill(&frames);
        }
        frames.clear();
        self.rx_frames = frames;
        if self.sock.fill.needs_wakeup() {
            self.sock.fill.wake();
        }
        got > 0
    }

    fn transmit<S: Service>(&mut self, now: Instant, service: &mut S) -> bool {
        let mut sent = false;
        self.resident.new_round();
        if !self.held.is_empty() {
            std::mem::swap(&mut self.descs, &mut self.held);
            if !self.push_descs() {
                std::mem::swap(&mut self.descs, &mut self.held);
                return false;
            }
            sent = true;
        }
        // Room for a worst-case datagram: MAX_DESCS ring slots and copy frames. A packet only
        // partly on the ring (`held`) ends the round: the kernel chains whatever comes next
        // onto it, so nothing else may go before its rest, and `held` holds one packet only
        // (a second short push used to swap the first one's rest out, and its frames leaked).
        while self.held.is_empty()
            && self.in_flight as usize + MAX_DESCS <= RING as usize
            && self.tx_free.len() >= MAX_DESCS
        {
            let Some(d) = service.poll_transmit(now) else {
                break;
            };
            sent = true;
            self.send(d);
        }
        self.ahead.clear();
        sent
    }

    fn send<P: TxPayload>(&mut self, d: Datagram<P>) {
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
        let sg = self.choice.sg(frame_len);
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
        unsafe { frame_at(&self.area, addr) }
    }

    /// Header frame + arena descriptors. False if the arena could not take the payload.
    fn build_sg<P: TxPayload>(
        &mut self,
        d: &Datagram<P>,
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
            self.arena
                .stage(&source, p.position(), bytes, p.ahead(), &mut self.pieces)
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
        let Some(csum) = checksummed(d, bytes, &mut self.ahead) else {
            self.stats.source_gone.fetch_add(1, Ordering::Relaxed);
            self.tx_free.push(hf);
            self.release_pieces();
            return false;
        };
        let header = &d.header;
        let buf = self.frame_mut(hf);
        if packet::write_headers(buf, route, local, d.dst, &[header, &csum]).is_none() {
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
        for (addr, _) in self.pieces.drain(..) {
            self.arena.release(addr);
        }
    }

    /// Everything copied into chained TX frames.
    fn build_copy<P: TxPayload>(
        &mut self,
        d: &Datagram<P>,
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
            let Some(csum) = checksummed(d, payload, &mut self.ahead) else {
                self.stats.source_gone.fetch_add(1, Ordering::Relaxed);
                self.tx_free.extend(frames);
                return;
            };
            let buf = self.frame_mut(first);
            if packet::write_headers(buf, route, local, d.dst, &[&d.header, &csum]).is_none() {
                self.tx_free.extend(frames);
                return;
            }
        }
        // Stream header + payload across the frames after the Ethernet/IP/UDP headers; the
        // payload is read from its source (pread), never from the segment mapping.
        let mut pos = hlen;
        for (i, len) in [d.header.len(), payload.len()].into_iter().enumerate() {
            let mut off = 0;
            while off < len {
                let fi = pos / FRAME as usize;
                let at = pos % FRAME as usize;
                let n = (FRAME as usize - at).min(len - off);
                let f = frames[fi];
                // SAFETY: as in `frame_mut`; a free function so the read-ahead can be borrowed
                // beside it.
                let frame = unsafe { frame_at(&self.area, f) };
                let dst = &mut frame[at..at + n];
                if i == 0 {
                    dst.copy_from_slice(&d.header[off..off + n]);
                } else if !d
                    .payload
                    .as_ref()
                    .is_some_and(|p| self.ahead.read(p, off, dst))
                {
                    self.stats.source_gone.fetch_add(1, Ordering::Relaxed);
                    self.tx_free.extend(frames);
                    return;
                }
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
            match sys::kick_tx(self.sock.fd()) {
                Kick::Again => {}
                Kick::Busy => return,
                Kick::Failed(e) => {
                    self.stats.kick_errors.fetch_add(1, Ordering::Relaxed);
                    log::debug!("TX kick: {e}");
                    return;
                }
            }
        }
    }
}

/// The payload as `write_headers` needs it: for IPv4 only its length is read, so the mapped
/// bytes go as they are; the IPv6 UDP checksum reads them, so they are read with pread first
/// (a segment truncated under the gateway then drops the datagram instead of raising SIGBUS).
/// `None`: the source no longer holds the bytes.
fn checksummed<'a, P: TxPayload>(
    d: &Datagram<P>,
    mapped: &'a [u8],
    ahead: &mut ReadAhead,
) -> Option<std::borrow::Cow<'a, [u8]>> {
    if !d.dst.is_ipv6() || mapped.is_empty() {
        return Some(std::borrow::Cow::Borrowed(mapped));
    }
    let mut v = vec![0u8; mapped.len()];
    ahead
        .read(d.payload.as_ref()?, 0, &mut v)
        .then_some(std::borrow::Cow::Owned(v))
}

/// The TX frame at `addr`.
///
/// # Safety
/// `addr` must be a TX frame owned by the caller's queue (from its free list, not yet on the
/// ring), and no other reference to that frame may be alive.
#[allow(clippy::mut_from_ref)] // the frame is memory the queue owns, not part of `area`
unsafe fn frame_at(area: &UmemArea, addr: u64) -> &mut [u8] {
    // SAFETY: the caller's contract: inside the frame area and exclusively the caller's.
    unsafe { std::slice::from_raw_parts_mut(area.base().add(addr as usize), FRAME as usize) }
}

impl<S: Service> DatagramIo<S> for XdpQueue {
    fn receive(&mut self, now: Instant, service: &mut S) -> bool {
        XdpQueue::receive(self, now, service)
    }

    fn transmit(&mut self, now: Instant, service: &mut S) -> bool {
        let sent = XdpQueue::transmit(self, now, service);
        self.kick();
        sent
    }

    fn complete(&mut self) -> bool {
        XdpQueue::complete(self)
    }

    fn publish(&mut self) {
        self.copy_stats();
    }

    fn shutdown(&mut self) {
        self.drain_and_check();
    }

    fn busy_poll(&mut self) {
        sys::busy_poll_rx(self.sock.fd());
    }

    fn idle_spins(&self) -> u32 {
        64
    }

    fn wait(&self) -> Wait<'_> {
        Wait {
            fd: self.sock.as_fd(),
            writable: false,
            // Poll briefly while TX completions are due.
            max: if self.in_flight > 0 {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(100)
            },
        }
    }
}
