//! The threads that run drivers: one lifecycle for the kernel-UDP endpoint and the AF_XDP
//! queues. Dropping [`Workers`] (e.g. when a later setup step fails) stops and joins every
//! thread started so far.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{DatagramIo, Driver, Service, Waker};

/// Running drivers and their stop flag.
pub struct Workers {
    stop: Arc<AtomicBool>,
    wakers: Vec<Waker>,
    threads: Vec<(String, JoinHandle<()>)>,
}

impl Default for Workers {
    fn default() -> Self {
        Self::new()
    }
}

impl Workers {
    /// No threads yet.
    pub fn new() -> Workers {
        Workers {
            stop: Arc::new(AtomicBool::new(false)),
            wakers: Vec::new(),
            threads: Vec::new(),
        }
    }

    /// Starts a thread named `name` running `driver` until [`Workers::stop`].
    pub fn spawn<S, I>(&mut self, name: String, driver: Driver<S, I>) -> std::io::Result<()>
    where
        S: Service,
        I: DatagramIo<S>,
    {
        let waker = driver.waker().clone();
        let stop = self.stop.clone();
        let t = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                driver.run(&stop);
            })?;
        self.wakers.push(waker);
        self.threads.push((name, t));
        Ok(())
    }

    /// Wakers of all drivers (e.g. for a log append hook).
    pub fn wakers(&self) -> Vec<Waker> {
        self.wakers.clone()
    }

    /// Number of drivers started.
    pub fn len(&self) -> usize {
        self.wakers.len()
    }

    /// Whether threads are running (started and not stopped yet).
    pub fn running(&self) -> bool {
        !self.threads.is_empty()
    }

    /// Whether none was started.
    pub fn is_empty(&self) -> bool {
        self.wakers.is_empty()
    }

    /// Stops every driver and waits for its thread (each publishes its counters last).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for w in &self.wakers {
            w.wake();
        }
        for (name, t) in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("{name}: thread panicked");
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}
