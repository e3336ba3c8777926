//! The fetch driver: one loop that runs a sans-I/O [`Service`] (the fetch server, or the raw
//! AF_XDP generator) over a [`DatagramIo`] transport (kernel UDP in `fetch::gateway`, an
//! AF_XDP queue in `xdp::queue`).
//!
//! One round: reap finished sends, receive (each datagram straight from the socket buffer or
//! the RX frame into the service), the [`Waker`] (log appends), expired timers, when busy
//! polling the service's own look at its sources ([`Service::poll_source`]), transmit (the
//! service's [`Datagram`]s go to the transport as they are: no conversion, payloads stay
//! references into the log mapping), and the counters every [`PUBLISH_EVERY`] while busy and
//! whenever the driver goes idle. Idle: spin or
//! yield when busy polling, else sleep in poll(2) on the transport's fd and the waker until
//! the next timer. [`Workers`] owns the threads that run drivers and stops them.

mod netdev;
mod waker;
mod workers;

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::log::SourceId;

pub use netdev::{max_datagram, mtu, mtu_for, MtuTooSmall, MAX_UDP_PAYLOAD, MIN_DATAGRAM};
pub use waker::Waker;
pub use workers::Workers;

/// How often the driver publishes the service's and the transport's counters.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// Longest sleep: the stop flag is checked at least this often.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Payload bytes a service sends: a slice of a source (segment) that a transport may send by
/// reference (iovec, UMEM descriptor) or copy.
pub trait TxPayload {
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// `bytes()` followed by whatever the source has right after them that is likely to be
    /// sent next (e.g. the rest of a fetch response): the AF_XDP arena stages it in one go.
    fn ahead(&self) -> &[u8] {
        self.bytes()
    }
    /// Identity of the source the bytes come from (supplied by the log).
    fn source(&self) -> SourceId;
    /// The source's open file, if it has one: a registered segment is found through it.
    fn file(&self) -> Option<&std::fs::File> {
        None
    }
    /// Position of the first byte within the source.
    fn position(&self) -> u64;
    /// Copies bytes `at..at + dst.len()` into `dst`; false if the source no longer holds them
    /// (a segment truncated under the gateway: read with pread, never through its mapping).
    fn read_at(&self, at: usize, dst: &mut [u8]) -> bool {
        match self.bytes().get(at..at + dst.len()) {
            Some(src) => {
                dst.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// One datagram to send: `header` followed by the payload bytes is the UDP payload.
#[derive(Clone, Debug)]
pub struct Datagram<P> {
    /// Destination.
    pub dst: SocketAddr,
    /// Service header (owned).
    pub header: Vec<u8>,
    /// Payload (referenced).
    pub payload: Option<P>,
}

impl<P: TxPayload> Datagram<P> {
    /// UDP payload length.
    pub fn len(&self) -> usize {
        self.header.len() + self.payload.as_ref().map_or(0, |p| p.bytes().len())
    }

    /// Whether the UDP payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Header and payload concatenated (tests, copy-mode transports), the payload read with
    /// [`TxPayload::read_at`]. A payload the source no longer holds (truncated meanwhile) is
    /// left out, so the datagram fails the receiver's length checks instead of carrying wrong
    /// bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.header);
        if let Some(p) = &self.payload {
            v.resize(self.len(), 0);
            if !p.read_at(0, &mut v[self.header.len()..]) {
                v.truncate(self.header.len());
            }
        }
        v
    }
}

/// A sans-I/O datagram service driven by a [`Driver`].
pub trait Service: Send + 'static {
    /// Payload type of outgoing datagrams.
    type Payload: TxPayload;
    /// A datagram arrived from `src`, addressed to our `local` endpoint.
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, local: SocketAddr, data: &[u8]);
    /// Next datagram to send, if any.
    fn poll_transmit(&mut self, now: Instant) -> Option<Datagram<Self::Payload>>;
    /// When `handle_timeout` must be called.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Timers expired.
    fn handle_timeout(&mut self, now: Instant);
    /// The driver's [`Waker`] was triggered (e.g. the log grew).
    fn handle_wake(&mut self, _now: Instant) {}
    /// Busy polling, every round: look for new input yourself (e.g. the log's tail) instead
    /// of waiting for another thread's wake-up; true if anything happened.
    fn poll_source(&mut self, _now: Instant) -> bool {
        false
    }
}

/// What a transport waits for while the driver sleeps.
pub struct Wait<'a> {
    /// Readable: datagrams arrived.
    pub fd: BorrowedFd<'a>,
    /// Also wake when `fd` becomes writable (sends are waiting for room).
    pub writable: bool,
    /// Longest sleep (e.g. short while TX completions are due).
    pub max: Duration,
}

/// A datagram transport under the driver.
pub trait DatagramIo<S: Service>: Send + 'static {
    /// Receives what is waiting, handing each datagram to `service`; true if any came.
    fn receive(&mut self, now: Instant, service: &mut S) -> bool;
    /// Sends what `service` has, as far as the transport takes it now; true on progress.
    fn transmit(&mut self, now: Instant, service: &mut S) -> bool;
    /// Reaps finished sends (a completion ring); true if any.
    fn complete(&mut self) -> bool {
        false
    }
    /// Copies the transport's own counters (kernel statistics) where readers find them.
    fn publish(&mut self) {}
    /// Once, when the driver stops: let in-flight work finish and check what is left.
    fn shutdown(&mut self) {}
    /// An idle round while busy polling (drives kernel busy polling of the queue).
    fn busy_poll(&mut self) {}
    /// Idle rounds to spin before sleeping (cheap for ring transports, useless for sockets).
    fn idle_spins(&self) -> u32 {
        0
    }
    /// What to sleep on.
    fn wait(&self) -> Wait<'_>;
}

/// Called with the service every [`PUBLISH_EVERY`] and when the driver stops.
pub type Publish<S> = Box<dyn FnMut(&S) + Send>;

/// One service over one transport, run by one thread.
pub struct Driver<S: Service, I: DatagramIo<S>> {
    service: S,
    io: I,
    waker: Waker,
    busy_poll: bool,
    publish: Option<Publish<S>>,
}

impl<S: Service, I: DatagramIo<S>> Driver<S, I> {
    /// A driver woken by `waker`; `busy_poll`: never sleep.
    pub fn new(service: S, io: I, waker: Waker, busy_poll: bool) -> Self {
        Driver {
            service,
            io,
            waker,
            busy_poll,
            publish: None,
        }
    }

    /// Publishes the service's counters through `f`.
    pub fn on_publish(mut self, f: Publish<S>) -> Self {
        self.publish = Some(f);
        self
    }

    /// The waker of this driver.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Serves until `stop` is set; returns the service and the transport.
    pub fn run(mut self, stop: &AtomicBool) -> (S, I) {
        let mut idle_spins = 0u32;
        let mut next_publish = Instant::now();
        // Something happened since the last publish.
        let mut dirty = false;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_publish {
                self.publish();
                next_publish = now + PUBLISH_EVERY;
                dirty = false;
            }
            if self.round(now) {
                idle_spins = 0;
                dirty = true;
                continue;
            }
            if dirty {
                // Going idle: readers (reports, /metrics) see the counters of the burst that
                // just ended, not those of up to PUBLISH_EVERY ago.
                self.publish();
                next_publish = now + PUBLISH_EVERY;
                dirty = false;
            }
            if self.busy_poll {
                self.io.busy_poll();
                // Yield: a log follower woken on this core (new records to announce) then runs
                // at once instead of after the spinner's time slice, which set the tail latency.
                let _ = nix::sched::sched_yield();
                continue;
            }
            idle_spins += 1;
            if idle_spins < self.io.idle_spins() {
                std::hint::spin_loop();
                continue;
            }
            self.sleep();
        }
        self.io.shutdown();
        self.publish();
        (self.service, self.io)
    }

    /// One round; true if anything happened.
    fn round(&mut self, now: Instant) -> bool {
        let mut progress = self.io.complete();
        progress |= self.io.receive(now, &mut self.service);
        if self.waker.take() {
            self.service.handle_wake(now);
            progress = true;
        }
        if self.service.poll_timeout().is_some_and(|t| t <= now) {
            self.service.handle_timeout(now);
            progress = true;
        }
        if self.busy_poll {
            progress |= self.service.poll_source(now);
        }
        progress |= self.io.transmit(now, &mut self.service);
        progress
    }

    fn publish(&mut self) {
        self.io.publish();
        if let Some(p) = self.publish.as_mut() {
            p(&self.service);
        }
    }

    /// Sleeps until the transport's fd or the waker is ready, the next timer, or the
    /// transport's limit (at most [`MAX_SLEEP`], which also bounds how late a publish is).
    fn sleep(&mut self) {
        let wait = self.io.wait();
        let mut timeout = wait.max.min(MAX_SLEEP);
        if let Some(t) = self.service.poll_timeout() {
            timeout = timeout.min(t.saturating_duration_since(Instant::now()));
        }
        let events = if wait.writable {
            PollFlags::POLLIN | PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        };
        let mut fds = [
            PollFd::new(wait.fd, events),
            PollFd::new(self.waker.as_fd(), PollFlags::POLLIN),
        ];
        // Whole milliseconds, rounded up: a timer due in 300 us must not spin.
        let ms = u16::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        // EINTR and friends: the next round looks again.
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
    }
}
