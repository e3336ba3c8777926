//! The UMEM: one address range registered with the kernel.
//!
//! Layout: `[ frame area: per-queue RX + TX frames ][ log arena ][ resident segments ]`. Frames
//! and arena are one memfd mapped MAP_SHARED read-write, because only tmpfs/anonymous pages can
//! be pinned for a UMEM (ext4/xfs file pages give EFAULT/ENOMEM, see docs/fast-path.md) and a
//! memfd can be written with `pwrite` at tracked offsets: the arena stages log bytes that way. It
//! is sized once and never truncated (a truncate would silently detach it from the pinned
//! pages). With `--umem-segments`, tmpfs segment files follow the arena, each mapped as it is
//! (see [`super::resident`]); the range is reserved first and each part mapped into it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use super::error::XdpError;
use super::resident::{Resident, ResidentFile, Window};

/// UMEM chunk size: the kernel's maximum (8192+ is EINVAL), one page.
pub const FRAME: u64 = 4096;

/// The registered area.
pub struct UmemArea {
    umem: xdpilone::Umem,
    base: NonNull<u8>,
    len: usize,
    // Frames + arena: the memfd part.
    own: usize,
    memfd: OwnedFd,
    frames: u32,
    resident: Resident,
}

// SAFETY: UmemArea owns a MAP_SHARED mapping and the fds; the raw pointer is only used to derive
// addresses of frames that each worker owns exclusively (or that the kernel writes), and the
// xdpilone Umem is only used from the setup thread. The mapping lives until drop.
unsafe impl Send for UmemArea {}
// SAFETY: see Send; shared access only reads `base`/`len` and performs pwrite on the memfd.
unsafe impl Sync for UmemArea {}

impl UmemArea {
    /// Creates and registers an area of `frames` frames followed by `arena_bytes` (rounded up
    /// to whole frames) of log arena, then the `resident` files, each mapped as it is.
    pub fn new(
        frames: u32,
        arena_bytes: u64,
        resident: Vec<ResidentFile>,
        fill_size: u32,
        complete_size: u32,
    ) -> Result<UmemArea, XdpError> {
        let arena_bytes = arena_bytes.div_ceil(FRAME) * FRAME;
        let own = u64::from(frames) * FRAME + arena_bytes;
        let len = own
            + resident
                .iter()
                .map(|f| f.len.div_ceil(FRAME) * FRAME)
                .sum::<u64>();
        let too_large = |n: u64| XdpError::Config(format!("UMEM of {n} bytes too large"));
        let len_usize = usize::try_from(len).map_err(|_| too_large(len))?;
        let own_usize = usize::try_from(own).map_err(|_| too_large(own))?;
        // SAFETY: memfd_create with a valid NUL-terminated name; the fd is checked below.
        let fd = unsafe { libc::memfd_create(c"kxgw-umem".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(XdpError::sys("memfd_create for the UMEM", errno()));
        }
        // SAFETY: fresh fd we own.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Pre-size once: pages past EOF cannot be pinned and must never be truncated later.
        // SAFETY: valid fd, plain integer argument.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), own as libc::off_t) } != 0 {
            return Err(XdpError::sys(
                format!("sizing the UMEM memfd to {own} bytes"),
                errno(),
            ));
        }
        // One contiguous address range for everything: reserve it, then map each part into it.
        // SAFETY: a fresh anonymous reservation; nothing else uses the range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(XdpError::sys(
                format!("reserving {} MiB of address space for the UMEM", len >> 20),
                errno(),
            ));
        }
        // Unmaps the whole range on any failure below.
        let fail = |e: XdpError| {
            // SAFETY: unmapping the range reserved above; nothing references it yet.
            unsafe { libc::munmap(ptr, len_usize) };
            e
        };
        // SAFETY: maps over the start of our own reservation (MAP_FIXED replaces only it),
        // shared read-write (read-only mappings cannot be registered).
        let own_ptr = unsafe {
            libc::mmap(
                ptr,
                own_usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE | libc::MAP_FIXED,
                memfd.as_raw_fd(),
                0,
            )
        };
        if own_ptr == libc::MAP_FAILED {
            return Err(fail(XdpError::sys(
                format!("mapping the {} MiB UMEM memfd", own >> 20),
                errno(),
            )));
        }
        let mut windows = Vec::with_capacity(resident.len());
        let mut at = own;
        for f in resident {
            let span = f.len.div_ceil(FRAME) * FRAME;
            // SAFETY: `at..at + span` lies inside our reservation (len sums every span); the
            // file is open read-write and at least `f.len` long, so every page of the span
            // holds file bytes (only the last one partly).
            let p = unsafe {
                libc::mmap(
                    ptr.cast::<u8>().add(at as usize).cast(),
                    span as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    f.file.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(fail(XdpError::sys(
                    format!("mapping {} into the UMEM", f.path.display()),
                    errno(),
                )));
            }
            windows.push(Window::new(f, at));
            at += span;
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| fail(XdpError::Config("mmap returned NULL".into())))?;
        let area = NonNull::slice_from_raw_parts(base, len_usize);
        let config = xdpilone::UmemConfig {
            fill_size,
            complete_size,
            frame_size: FRAME as u32,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is a page-aligned live mapping of `len` bytes kept until drop (the
        // Umem is dropped first, see Drop).
        let umem = match unsafe { xdpilone::Umem::new(config, area) } {
            Ok(u) => u,
            Err(e) => {
                return Err(fail(XdpError::sys(
                    format!("registering the {} MiB UMEM (XDP_UMEM_REG)", len >> 20),
                    e.get_raw().abs(),
                )));
            }
        };
        for w in &windows {
            w.restore_mtime();
        }
        Ok(UmemArea {
            umem,
            base,
            len: len_usize,
            own: own_usize,
            memfd,
            frames,
            resident: Resident::new(windows),
        })
    }

    /// The xdpilone handle (socket setup).
    pub fn umem(&self) -> &xdpilone::Umem {
        &self.umem
    }

    /// Number of frames in the frame area.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// UMEM offset where the arena starts.
    pub fn arena_offset(&self) -> u64 {
        u64::from(self.frames) * FRAME
    }

    /// Arena length in bytes.
    pub fn arena_len(&self) -> u64 {
        self.own as u64 - self.arena_offset()
    }

    /// The segment files registered as they are (after the arena).
    pub fn resident(&self) -> &Resident {
        &self.resident
    }

    /// Total length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (an area has at least its frames).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Writes `bytes` at UMEM offset `offset` through the memfd (the staging write of the arena).
    pub fn pwrite(&self, bytes: &[u8], offset: u64) -> Result<(), XdpError> {
        let end = offset + bytes.len() as u64;
        if end > self.own as u64 {
            return Err(XdpError::Config(format!(
                "arena write {offset}..{end} beyond the UMEM ({} bytes)",
                self.len
            )));
        }
        let mut done = 0usize;
        while done < bytes.len() {
            let rest = &bytes[done..];
            // SAFETY: valid fd and a readable buffer of rest.len() bytes.
            let n = unsafe {
                libc::pwrite(
                    self.memfd.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    (offset + done as u64) as libc::off_t,
                )
            };
            if n < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                return Err(XdpError::sys("staging log bytes into the UMEM arena", e));
            }
            if n == 0 {
                return Err(XdpError::sys(
                    "staging log bytes into the UMEM arena",
                    libc::EIO,
                ));
            }
            done += n as usize;
        }
        Ok(())
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // The Umem (its socket) goes first; the kernel keeps its own page references until
        // every socket using the UMEM is closed, so unmapping here is safe for the kernel.
        // SAFETY: unmapping the mapping created in new(); no Rust references outlive self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The calling thread's errno.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
