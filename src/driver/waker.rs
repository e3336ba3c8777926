//! Wakes a driver from another thread (a log append hook): an eventfd the driver sleeps on,
//! behind a flag so that only the first wake-up of a round costs a syscall on each side.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};

/// Cloneable handle; every clone wakes the same driver.
#[derive(Clone)]
pub struct Waker {
    flag: Arc<AtomicBool>,
    efd: Arc<EventFd>,
}

impl Waker {
    /// A fresh waker (non-blocking, close-on-exec eventfd).
    pub fn new() -> std::io::Result<Waker> {
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Waker {
            flag: Arc::new(AtomicBool::new(false)),
            efd: Arc::new(efd),
        })
    }

    /// Makes the driver call `Service::handle_wake` soon.
    pub fn wake(&self) {
        if !self.flag.swap(true, Ordering::AcqRel) {
            // Failure (counter full) still leaves the eventfd readable.
            let _ = self.efd.write(1);
        }
    }

    /// Whether a wake-up came since the last call (drains the eventfd).
    pub(crate) fn take(&self) -> bool {
        if self.flag.swap(false, Ordering::AcqRel) {
            // EAGAIN when a concurrent take already drained it: nothing to do.
            let _ = self.efd.read();
            true
        } else {
            false
        }
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }
}
