//! The few socket calls of the fast path that are not ring or mapping code, with the errno
//! helper the setup code reports through.

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;

/// The calling thread's errno.
pub(crate) fn errno() -> i32 {
    Errno::last_raw()
}

/// What a TX kick (zero-length sendto) said.
pub(crate) enum Kick {
    /// Sent, or try again (EAGAIN/EINTR).
    Again,
    /// The kernel is busy with the ring (EBUSY/ENOBUFS): stop kicking this round.
    Busy,
    /// Anything else.
    Failed(Errno),
}

/// Makes the kernel process the TX ring (copy mode transmits inside this call).
pub(crate) fn kick_tx(fd: RawFd) -> Kick {
    match nix::sys::socket::send(fd, &[], MsgFlags::MSG_DONTWAIT) {
        Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => Kick::Again,
        Err(Errno::EBUSY) | Err(Errno::ENOBUFS) => Kick::Busy,
        Err(e) => Kick::Failed(e),
    }
}

/// Drives kernel busy polling of the socket's queue (zero-length non-blocking recv).
pub(crate) fn busy_poll_rx(fd: RawFd) {
    let _ = nix::sys::socket::recv(fd, &mut [], MsgFlags::MSG_DONTWAIT);
}

/// Enables kernel busy polling on the socket (SO_PREFER_BUSY_POLL, SO_BUSY_POLL,
/// SO_BUSY_POLL_BUDGET). Best effort: returns what failed.
pub fn enable_busy_poll(fd: RawFd) -> Result<(), String> {
    const SO_PREFER_BUSY_POLL: libc::c_int = 69;
    const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
    for (opt, val, name) in [
        (SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"),
        (libc::SO_BUSY_POLL, 20, "SO_BUSY_POLL"),
        (SO_BUSY_POLL_BUDGET, 64, "SO_BUSY_POLL_BUDGET"),
    ] {
        set_int_option(fd, opt, val).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// SOL_SOCKET option with an int value; nix has no wrapper for the busy-poll options.
fn set_int_option(fd: RawFd, opt: libc::c_int, val: libc::c_int) -> Result<(), Errno> {
    // SAFETY: setsockopt reads exactly size_of::<c_int>() bytes from a live c_int.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}
