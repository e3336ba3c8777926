//! The kxgw fetch protocol: consumers fetch record batches of Kafka partition logs over UDP.
//!
//! Sans-I/O, in the style of quinn-proto: [`server::Server`] (gateway) and
//! [`client::Client`] (consumer) take datagrams and time in and give datagrams, timer
//! deadlines and delivered batches out; they own no sockets, clocks or threads. The wire
//! format is in [`wire`] and documented in `docs/fetch-protocol.md`.
//!
//! Transports under the same cores: [`udp`] (kernel UDP: recvmmsg/sendmmsg, UDP GSO) for the
//! gateway ([`gateway`]) and the consumer ([`consumer`]); the AF_XDP transport lives in its
//! own module. A [`Transmit`] references its payload in the mapped log segment ([`Payload`]),
//! so every transport chooses how to put it on the wire (iovec, GSO, UMEM descriptor, copy).

pub mod client;
pub mod consumer;
pub mod gateway;
pub mod gso_guard;
pub mod server;
pub mod ticket;
pub mod token;
pub mod udp;
pub mod wire;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tail_tests;
#[cfg(test)]
mod ticket_tests;
#[cfg(test)]
mod wake_tests;

use std::net::SocketAddr;
use std::time::Instant;

use crate::driver::{Datagram, Service, TxPayload};
use crate::log::{ReadSlice, SourceId};

pub use client::{Client, ClientConfig, ClientStats, Delivered, Event, StartAt, Subscription};
pub use server::{Server, ServerConfig, ServerStats};

/// One datagram to send: `header` followed by the `payload` bytes (if any) is the UDP
/// payload. `header.len() + payload.len <= max_datagram`, always. Transports take it as it
/// is (the driver's [`Datagram`]).
pub type Transmit = Datagram<Payload>;

/// Log bytes of a datagram, referenced in the segment mapping (never copied by the core).
#[derive(Clone, Debug)]
pub struct Payload {
    /// Keeps the segment mapped (and names its file) while the datagram is in flight.
    pub slice: ReadSlice,
    /// Start within `slice.bytes()`.
    pub offset: usize,
    pub len: usize,
}

impl Payload {
    /// The bytes in the segment mapping: for the kernel only (iovecs, `pwrite`); see
    /// [`ReadSlice::bytes`]. User-space copies use [`Payload::read_at`].
    pub fn bytes(&self) -> &[u8] {
        &self.slice.bytes()[self.offset..self.offset + self.len]
    }

    /// Copies payload bytes `at..at + dst.len()` with pread; fails if the segment no longer
    /// holds them (truncated under the gateway), never with a signal.
    pub fn read_at(&self, at: usize, dst: &mut [u8]) -> std::io::Result<()> {
        if at + dst.len() > self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "read past the payload",
            ));
        }
        self.slice.read_at(self.offset + at, dst)
    }

    /// Position of the first byte in the segment file (for sendfile/pread/UMEM offsets).
    pub fn file_position(&self) -> u64 {
        self.slice.position + self.offset as u64
    }
}

impl TxPayload for Payload {
    fn bytes(&self) -> &[u8] {
        Payload::bytes(self)
    }

    fn ahead(&self) -> &[u8] {
        // The rest of this fetch response, straight from the segment mapping.
        &self.slice.bytes()[self.offset..]
    }

    fn source(&self) -> SourceId {
        self.slice.source.clone()
    }

    fn position(&self) -> u64 {
        self.file_position()
    }

    fn file(&self) -> Option<&std::fs::File> {
        Some(&self.slice.file)
    }

    fn read_at(&self, at: usize, dst: &mut [u8]) -> bool {
        Payload::read_at(self, at, dst).is_ok()
    }
}

/// The fetch server as a driver service (every transport: kernel UDP, each AF_XDP queue).
impl Service for Server {
    type Payload = Payload;

    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, _local: SocketAddr, data: &[u8]) {
        Server::handle_datagram(self, now, src, data);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        Server::poll_transmit(self, now)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Server::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Server::handle_timeout(self, now);
    }

    fn handle_wake(&mut self, now: Instant) {
        self.handle_log_append(now);
    }

    fn poll_source(&mut self, now: Instant) -> bool {
        self.poll_tails(now)
    }
}
