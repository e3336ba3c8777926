//! Blocking kernel-UDP driver of the [`Client`] core: one connected socket, recvmmsg.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use kxgw::fetch::{consumer::UdpConsumer, ClientConfig, Event, StartAt, Subscription};
//! let sub = Subscription { topic: "demo".into(), partition: 0, start: StartAt::Earliest };
//! let mut c = UdpConsumer::connect("198.18.0.1:9093".parse().unwrap(), ClientConfig::default(), vec![sub])?;
//! while !c.client().is_finished() {
//!     c.poll(std::time::Duration::from_millis(100))?;
//!     while let Some(ev) = c.next_event() {
//!         if let Event::Batch(b) = ev { println!("{}..{}", b.base_offset, b.next_offset) }
//!     }
//! }
//! # Ok(()) }
//! ```

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::client::{Client, ClientConfig, Event, Subscription};
use super::udp::{RecvBatch, BATCH, MAX_UDP_PAYLOAD};

/// Receive buffer the consumer asks for; the window is kept well below what it gets.
pub const DEFAULT_RCVBUF: usize = 32 << 20;

pub struct UdpConsumer {
    sock: UdpSocket,
    client: Client,
    rb: RecvBatch,
    rcvbuf: usize,
}

impl UdpConsumer {
    /// Connects a UDP socket to `server` and starts the handshake. The window is clamped
    /// to a quarter of the receive buffer the kernel granted (it counts skb overhead).
    pub fn connect(
        server: SocketAddr,
        mut cfg: ClientConfig,
        subs: Vec<Subscription>,
    ) -> io::Result<UdpConsumer> {
        let bind: SocketAddr = if server.is_ipv6() {
            "[::]:0".parse().map_err(io::Error::other)?
        } else {
            "0.0.0.0:0".parse().map_err(io::Error::other)?
        };
        let sock = UdpSocket::bind(bind)?;
        sock.connect(server)?;
        let sref = SockRef::from(&sock);
        super::udp::grow_recv_buffer(&sock, DEFAULT_RCVBUF);
        let rcvbuf = sref.recv_buffer_size().unwrap_or(212992);
        let cap = (rcvbuf / 4).max(64 << 10) as u32;
        if cfg.window > cap {
            log::info!(
                "fetch: window {} B lowered to {cap} B (socket receive buffer {rcvbuf} B)",
                cfg.window
            );
            cfg.window = cap;
        }
        if cfg.fetch_bytes > cfg.window / 2 {
            cfg.fetch_bytes = (cfg.window / 2).max(1);
        }
        Ok(UdpConsumer {
            sock,
            client: Client::new(server, cfg, subs),
            rb: RecvBatch::new(BATCH, MAX_UDP_PAYLOAD),
            rcvbuf,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// See [`Client::set_ticket`].
    pub fn set_ticket(&mut self, ticket: Vec<u8>) {
        self.client.set_ticket(ticket);
    }

    /// See [`Client::recycle`].
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.client.recycle(buf);
    }

    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }

    pub fn next_event(&mut self) -> Option<Event> {
        self.client.poll_event()
    }

    /// One round: send what is due, wait up to `max_wait` (less when a timer is due) for
    /// datagrams, take them in, run timers. When batches are ready it returns with them at
    /// once, and what they let the consumer send (acks, the next request) goes at the start
    /// of the next round: call `poll` again after taking the events.
    pub fn poll(&mut self, max_wait: Duration) -> io::Result<()> {
        let now = Instant::now();
        self.flush(now)?;
        let wait = self
            .client
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(max_wait)
            .min(max_wait);
        let got = self.receive()?;
        if !got && !wait.is_zero() {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let mut pfd = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
            // EINTR: the receive below finds nothing and the caller comes back.
            let _ = poll(&mut pfd, PollTimeout::from(ms));
            self.receive()?;
        }
        let now = Instant::now();
        if self.client.poll_timeout().is_some_and(|t| now >= t) {
            self.client.handle_timeout(now);
        }
        if self.client.has_events() {
            return Ok(()); // the caller first; the next poll sends (see `receive`)
        }
        self.flush(now)
    }

    fn flush(&mut self, now: Instant) -> io::Result<()> {
        while let Some(d) = self.client.poll_transmit(now) {
            match self.sock.send(&d) {
                Ok(_) => {}
                // No listener yet (ICMP port unreachable) or a full buffer: the protocol
                // retransmits; the handshake timeout decides "unreachable".
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::WouldBlock
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drains the socket into the core until batches are ready; true when anything arrived.
    fn receive(&mut self) -> io::Result<bool> {
        let mut any = false;
        let server = self.client.server();
        loop {
            let n = match self.rb.recv(self.sock.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            any = true;
            let now = Instant::now();
            for i in 0..n {
                if let Some((src, data, _)) = self.rb.get(i) {
                    self.client
                        .handle_datagram(now, src.unwrap_or(server), data);
                }
            }
            // Batches are ready: hand them over now rather than after draining the socket,
            // which at full speed could take many windows (late delivery, and every batch
            // buffer freshly allocated because none came back for reuse meanwhile). The
            // requests and acks they allow go out when the caller comes back for more (the
            // next poll starts with them): a tailing record reaches the application without
            // waiting for the consumer's own send, which on a veth runs the receiving side's
            // path too.
            if self.client.has_events() {
                break;
            }
            // Requests (and acks) go out as soon as the data that allows them is in.
            self.flush(now)?;
        }
        Ok(any)
    }
}
