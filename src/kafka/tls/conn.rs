//! One connection's TLS layer, between the socket and the session: ciphertext in, plaintext to
//! the session ([`TlsConn::read_plain`], the same contract as `read(2)` on the socket); the
//! session's output queue encrypted out ([`TlsConn::write_out`]). Non-blocking throughout.
//! The listener owns the socket and the session; this only moves bytes between them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::ServerConnection;

use super::config::TlsServer;
use super::stats::{Outcome, TlsStats};
use crate::kafka::outq::{OutQueue, Written};

/// Plaintext handed to rustls per step. Its ciphertext is flushed before the next step, so a
/// connection buffers about this much beyond the copy-mode staging buffer.
const STEP: usize = 256 * 1024;

/// One server-side TLS connection.
pub struct TlsConn {
    conn: ServerConnection,
    /// When the handshake must be done by.
    deadline: Instant,
    established: bool,
    /// A client certificate's principal, for the session once the handshake is done.
    principal: Option<String>,
    /// TLS refused the peer: the connection is to be closed (already counted).
    failed: bool,
    eof: bool,
}

impl TlsConn {
    /// A connection accepted at `now` on a listener with `server`'s settings.
    pub fn new(server: &TlsServer, now: Instant) -> Result<TlsConn, rustls::Error> {
        Ok(TlsConn {
            conn: ServerConnection::new(Arc::clone(&server.config))?,
            deadline: now + server.handshake_timeout,
            established: false,
            principal: None,
            failed: false,
            eof: false,
        })
    }

    /// The handshake deadline, while the handshake is under way.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.established && !self.failed && !self.eof).then_some(self.deadline)
    }

    /// Whether the handshake completed.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether TLS refused the peer (the error was counted; close without more noise).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Whether ciphertext (handshake messages, records, an alert) waits for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// The principal of the client certificate, once, after the handshake.
    pub fn take_principal(&mut self) -> Option<String> {
        self.principal.take()
    }

    /// Reads plaintext for the session into `buf`: `Ok(0)` at the end of the stream,
    /// `WouldBlock` when nothing is there now. Reads the socket only when rustls holds no
    /// plaintext, so what it buffers stays bounded by one read. A TLS error is counted by
    /// cause, its alert sent if the socket takes it, and returned as `InvalidData`.
    pub fn read_plain<S: Read + Write>(
        &mut self,
        sock: &mut S,
        buf: &mut [u8],
        stats: &TlsStats,
    ) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: an ordinary end for a consumer.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            match self.conn.read_tls(sock) {
                Ok(0) => {
                    self.eof = true;
                    if !self.established {
                        self.failed = true;
                        stats.count(Outcome::Truncated);
                    }
                    return Ok(0);
                }
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        return Err(self.fail(sock, Outcome::of(&e), &e.to_string(), stats));
                    }
                    self.check_established(sock, stats)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn check_established<S: Write>(&mut self, sock: &mut S, stats: &TlsStats) -> io::Result<()> {
        if self.established || self.conn.is_handshaking() {
            return Ok(());
        }
        // A certificate the verifier accepted that the subject parser refuses: refuse it
        // too, rather than serve it as User:ANONYMOUS.
        if let Some(cert) = self.conn.peer_certificates().and_then(|c| c.first()) {
            match super::principal::principal_of(cert) {
                Ok(p) => self.principal = Some(p),
                Err(e) => return Err(self.fail(sock, Outcome::ClientCert, &e, stats)),
            }
        }
        self.established = true;
        stats.count(Outcome::Ok);
        Ok(())
    }

    fn fail<S: Write>(
        &mut self,
        sock: &mut S,
        o: Outcome,
        why: &str,
        stats: &TlsStats,
    ) -> io::Error {
        self.failed = true;
        stats.count(o);
        // Tell the client why with the alert rustls queued (best effort: we close next).
        while self.conn.wants_write() {
            if !matches!(self.conn.write_tls(sock), Ok(n) if n > 0) {
                break;
            }
        }
        io::Error::new(io::ErrorKind::InvalidData, format!("TLS ({o:?}): {why}"))
    }

    /// Flushes pending ciphertext, then encrypts queued responses (record bytes read from
    /// their segment: the copy path) and flushes again, until the socket blocks or nothing is
    /// left. `mem` / `file` count plaintext bytes taken from the queue.
    pub fn write_out<S: Write>(&mut self, sock: &mut S, out: &mut OutQueue) -> io::Result<Written> {
        let mut w = Written::default();
        loop {
            while self.conn.wants_write() {
                match self.conn.write_tls(sock) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        w.blocked = true;
                        return Ok(w);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if !self.established || out.is_empty() {
                return Ok(w);
            }
            let step = out.write_into(&mut self.conn.writer(), STEP)?;
            w.mem += step.mem;
            w.file += step.file;
            if step.mem + step.file == 0 {
                return Ok(w);
            }
        }
    }
}

/// Handshake deadlines of a listener's connections, earliest first. Entries of connections
/// that finished their handshake or closed stay until they come due and are then skipped
/// (tokens are never reused).
#[derive(Default)]
pub struct HandshakeDeadlines(BinaryHeap<Reverse<(Instant, usize)>>);

impl HandshakeDeadlines {
    /// Connection `token` must finish its handshake by `at`.
    pub fn push(&mut self, at: Instant, token: usize) {
        self.0.push(Reverse((at, token)));
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.0.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the tokens whose deadline is `now` or earlier.
    pub fn due(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, t))) = self.0.peek() {
            if at > now {
                break;
            }
            self.0.pop();
            due.push(t);
        }
        due
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
