//! The kxgw fetch protocol: consumers fetch record batches of Kafka partition logs over UDP.
//!
//! Sans-I/O, in the style of quinn-proto: [`server::Server`] (gateway) and
//! [`client::Client`] (consumer) take datagrams and time in and give datagrams, timer
//! deadlines and delivered batches out; they own no sockets, clocks or threads. The wire
//! format is in [`wire`] and documented in `docs/fetch-protocol.md`.
//!
//! Transports under the same cores: [`udp`] (kernel UDP: recvmmsg/sendmmsg, UDP GSO) for the
//! gateway ([`gateway`]) and the consumer ([`consumer`]); the AF_XDP transport lives in its
//! own module. A [`Transmit`] references its payload in the log segment ([`Payload`]), so
//! every transport chooses how to put it on the wire (iovec, GSO, UMEM descriptor, pread copy).

pub mod client;
pub mod consumer;
pub mod gateway;
pub mod kafka_fallback;
pub mod server;
pub mod token;
pub mod udp;
pub mod wire;

#[cfg(test)]
mod sim_tests;

use std::net::SocketAddr;

use crate::log::ReadSlice;

pub use client::{Client, ClientConfig, ClientStats, Delivered, Event, StartAt, Subscription};
pub use server::{Server, ServerConfig, ServerStats};

/// One datagram to send: `header` followed by the `payload` bytes (if any) is the UDP
/// payload. `header.len() + payload.len <= max_datagram`, always.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub header: Vec<u8>,
    pub payload: Option<Payload>,
}

impl Transmit {
    /// UDP payload length.
    pub fn len(&self) -> usize {
        self.header.len() + self.payload.as_ref().map_or(0, |p| p.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Header and payload concatenated (tests, copy-mode transports), the payload read with
    /// pread. A payload the segment no longer holds (truncated meanwhile) is left out, so the
    /// datagram fails the receiver's length checks instead of carrying wrong bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.header);
        if let Some(p) = &self.payload {
            v.resize(self.len(), 0);
            if p.read_at(0, &mut v[self.header.len()..]).is_err() {
                v.truncate(self.header.len());
            }
        }
        v
    }
}

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
