//! The UMEM: one address range registered with the kernel.
//!
//! Layout: `[ frame area: per-queue RX + TX frames ][ log arenas, one per queue ][ resident
//! segments ]`. Frames
//! and arena are one memfd mapped MAP_SHARED read-write, because only tmpfs/anonymous pages can
//! be pinned for a UMEM (ext4/xfs file pages give EFAULT/ENOMEM at registration) and a memfd can
//! be written with `pwrite` at tracked offsets: the arena stages log segment bytes that way. It
//! is sized once and never truncated (a truncate would silently detach it from the pinned
//! pages). With `--umem-segments`, tmpfs segment files follow the arena, each mapped as it is
//! (see [`super::resident`]); the range is reserved first and each part mapped into it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use super::consts::FRAME;
use super::error::XdpError;
use super::resident::{Resident, ResidentFile, Window};
use super::sys::errno;

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
        let memfd = memfd_create(c"kxgw-umem", MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|e| XdpError::sys("memfd_create for the UMEM", e as i32))?;
        // Pre-size once: pages past EOF cannot be pinned and must never be truncated later.
        nix::unistd::ftruncate(&memfd, own as libc::off_t).map_err(|e| {
            XdpError::sys(format!("sizing the UMEM memfd to {own} bytes"), e as i32)
        })?;
        // One contiguous address range for everything: reserve it, then map each part into it.
        let ptr = reserve(len_usize)?;
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
        let windows = map_resident(ptr, own, resident).map_err(fail)?;
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
            let at = (offset + done as u64) as libc::off_t;
            let n = match nix::sys::uio::pwrite(&self.memfd, rest, at) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(XdpError::sys(
                        "staging log bytes into the UMEM arena",
                        e as i32,
                    ))
                }
            };
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

/// Reserves `len` bytes of address space (no access, no memory) for the parts to be mapped into.
fn reserve(len: usize) -> Result<*mut libc::c_void, XdpError> {
    // SAFETY: a fresh anonymous reservation; nothing else uses the range.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
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
    Ok(ptr)
}

/// Maps each resident file as it is into the reservation at `ptr`, from offset `at` on.
fn map_resident(
    ptr: *mut libc::c_void,
    mut at: u64,
    resident: Vec<ResidentFile>,
) -> Result<Vec<Window>, XdpError> {
    let mut windows = Vec::with_capacity(resident.len());
    for f in resident {
        let span = f.len.div_ceil(FRAME) * FRAME;
        // SAFETY: `at..at + span` lies inside the reservation (its length sums every span);
        // the file is open read-write and at least `f.len` long, so every page of the span
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
            return Err(XdpError::sys(
                format!("mapping {} into the UMEM", f.path.display()),
                errno(),
            ));
        }
        windows.push(Window::new(f, at));
        at += span;
    }
    Ok(windows)
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // The Umem (its socket) goes first; the kernel keeps its own page references until
        // every socket using the UMEM is closed, so unmapping here is safe for the kernel.
        // SAFETY: unmapping the mapping created in new(); no Rust references outlive self.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;

    use super::*;
    use crate::log::SourceId;
    use crate::xdp::resident::{open, ResidentCache};

    fn source(id: usize) -> SourceId {
        SourceId::anonymous(id)
    }

    fn read(area: &UmemArea, pieces: &[(u64, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(addr, len) in pieces {
            // SAFETY: test-only read of a range inside the live mapping.
            v.extend_from_slice(unsafe {
                std::slice::from_raw_parts(area.base().add(addr as usize), len as usize)
            });
        }
        v
    }

    #[test]
    fn a_tmpfs_file_is_served_from_its_own_pages_until_it_shrinks() {
        crate::test_support::require_root().unwrap();
        let dir = tempfile::tempdir_in("/dev/shm").expect("a temporary dir in /dev/shm (tmpfs)");
        let path = dir.path().join("00000000000000000000.log");
        let data: Vec<u8> = (0..3 * FRAME as usize + 1234)
            .map(|i| (i % 249) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let opened = open(std::slice::from_ref(&path)).unwrap();
        assert_eq!(opened.files.len(), 1);
        let area = UmemArea::new(16, 1 << 20, opened.files, 64, 64).unwrap();
        let r = area.resident();
        assert_eq!((r.files(), r.bytes()), (1, data.len() as u64));
        let (start, end) = r.range().unwrap();
        assert_eq!(
            start,
            16 * FRAME + (1 << 20),
            "after the frames and the arena"
        );
        assert_eq!(end as usize, area.len());

        // The reader's own open file finds the window; pieces never cross a page.
        let reader = File::open(&path).unwrap();
        let mut cache = ResidentCache::new();
        let mut out = Vec::new();
        let (pos, len) = (FRAME - 10, 2 * FRAME as usize + 20);
        assert!(cache.pieces(r, &source(1), &reader, pos, len, &mut out));
        assert!(out.iter().all(|(a, l)| a % FRAME + u64::from(*l) <= FRAME));
        assert_eq!(read(&area, &out), &data[pos as usize..pos as usize + len]);

        // Appended bytes are past the window: not served from it, and `out` is left alone.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[7u8; 5000])
            .unwrap();
        let mut past = Vec::new();
        let tail = data.len() as u64 - 100;
        assert!(!cache.pieces(r, &source(1), &reader, tail, 200, &mut past));
        assert!(past.is_empty());
        assert!(cache.pieces(r, &source(1), &reader, tail, 100, &mut past));
        assert_eq!(read(&area, &past), &data[tail as usize..]);

        // Truncated: the pinned pages no longer are the file's. The cached source is checked
        // again in the next transmit round (not within one: one fstat per source per round).
        let f = File::options().write(true).open(&path).unwrap();
        f.set_len(100).unwrap();
        let mut refused = Vec::new();
        assert!(cache.pieces(r, &source(1), &reader, 0, 50, &mut refused));
        cache.new_round();
        refused.clear();
        assert!(!cache.pieces(r, &source(1), &reader, 0, 50, &mut refused));
        assert!(refused.is_empty());
        // A new source (the reader reopens a truncated segment) is refused, and the window
        // stays dead.
        let reopened = File::open(&path).unwrap();
        let mut none = Vec::new();
        assert!(!cache.pieces(r, &source(2), &reopened, 0, 50, &mut none));
        assert!(!cache.pieces(r, &source(1), &reader, 0, 50, &mut none));
        assert!(none.is_empty());
    }
}
