//! Log segment files registered as UMEM themselves (`--umem-segments`), so an `sg` descriptor
//! points at the segment's own page-cache pages: no staging copy into the arena.
//!
//! Only tmpfs pages can be registered (ext4/xfs: EFAULT/ENOMEM, docs/fast-path.md), and only
//! through a read-write `MAP_SHARED` mapping, so each file is opened read-write although the
//! gateway never writes it. Registration pins the pages the file has at startup: bytes appended
//! later land in the same last page or in new pages outside the UMEM, so a window covers the
//! file's length at registration and anything past it goes through the arena. A truncated file
//! is detached from the pinned pages (its later bytes are new pages), so a window whose file is
//! now shorter than the window is never used again; the log reader reopens a truncated segment,
//! which makes it a new source and brings it back here for that check.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::time::TimeSpec;

use super::arena::SourceId;
use super::error::XdpError;
use super::umem::FRAME;

/// A segment file to register.
pub struct ResidentFile {
    /// Where it is (for messages).
    pub path: PathBuf,
    /// Opened read-write (a read-only mapping cannot be registered).
    pub file: File,
    /// Bytes registered: the file's length when opened.
    pub len: u64,
    /// (device, inode): how a source is matched to its window.
    pub dev_ino: (u64, u64),
    /// Access and modification times when opened (put back after registration).
    times: (TimeSpec, TimeSpec),
}

/// What `open` found.
pub struct Opened {
    /// tmpfs files to register.
    pub files: Vec<ResidentFile>,
    /// Files skipped because they are not on tmpfs (served through the arena).
    pub elsewhere: Vec<PathBuf>,
}

/// Opens `paths` for registration: tmpfs files read-write; other filesystems are listed in
/// `elsewhere`; empty files are left out (nothing to pin).
pub fn open(paths: &[PathBuf]) -> Result<Opened, XdpError> {
    let mut out = Opened {
        files: Vec::new(),
        elsewhere: Vec::new(),
    };
    for path in paths {
        if !on_tmpfs(path)? {
            out.elsewhere.push(path.clone());
            continue;
        }
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| XdpError::Sys {
                what: format!(
                    "opening {} read-write to register it as UMEM (--umem-segments)",
                    path.display()
                ),
                err: e,
                hint: " (a UMEM mapping must be writable although kxgw never writes it; give \
                       the gateway write access to the segment files or drop --umem-segments)",
            })?;
        let md = file.metadata().map_err(|e| XdpError::Sys {
            what: format!("stat {}", path.display()),
            err: e,
            hint: "",
        })?;
        if md.len() == 0 {
            continue;
        }
        out.files.push(ResidentFile {
            path: path.clone(),
            file,
            len: md.len(),
            dev_ino: (md.dev(), md.ino()),
            times: (
                TimeSpec::new(md.atime(), md.atime_nsec()),
                TimeSpec::new(md.mtime(), md.mtime_nsec()),
            ),
        });
    }
    Ok(out)
}

fn on_tmpfs(path: &Path) -> Result<bool, XdpError> {
    let fs = nix::sys::statfs::statfs(path).map_err(|e| {
        XdpError::sys(
            format!("statfs {} (--umem-segments)", path.display()),
            e as i32,
        )
    })?;
    Ok(fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// A registered file: UMEM bytes `offset..offset + len` are bytes `0..len` of the file.
pub struct Window {
    /// UMEM offset of the file's first byte.
    pub offset: u64,
    /// Bytes registered.
    pub len: u64,
    dev_ino: (u64, u64),
    path: PathBuf,
    // The open file keeps the inode (and so the pinned pages' identity) alive.
    file: File,
    times: (TimeSpec, TimeSpec),
    // Set once the file was seen shorter than the window: detached, never used again.
    dead: AtomicBool,
}

impl Window {
    /// Registration pins the pages for writing, and a write fault on a shared file mapping
    /// stamps the file's mtime and ctime (tmpfs has no `page_mkwrite`), although no byte
    /// changes. Puts the modification time back, unless the file grew meanwhile (then a
    /// writer's stamp is the right one); ctime cannot be set back.
    pub(crate) fn restore_mtime(&self) {
        let Ok(md) = self.file.metadata() else {
            return;
        };
        if md.len() != self.len {
            return;
        }
        let (atime, mtime) = self.times;
        if let Err(e) = nix::sys::stat::futimens(self.file.as_raw_fd(), &atime, &mtime) {
            log::warn!(
                "{}: could not restore its modification time after UMEM registration: {e}",
                self.path.display()
            );
        }
    }
}

impl Window {
    pub(crate) fn new(f: ResidentFile, offset: u64) -> Window {
        Window {
            offset,
            len: f.len,
            dev_ino: f.dev_ino,
            path: f.path,
            file: f.file,
            times: f.times,
            dead: AtomicBool::new(false),
        }
    }
}

/// Every registered window, shared read-only by the workers.
pub struct Resident {
    windows: Vec<Window>,
    by_inode: HashMap<(u64, u64), usize>,
}

impl Resident {
    pub(crate) fn new(windows: Vec<Window>) -> Resident {
        let by_inode = windows
            .iter()
            .enumerate()
            .map(|(i, w)| (w.dev_ino, i))
            .collect();
        Resident { windows, by_inode }
    }

    /// Number of registered files.
    pub fn files(&self) -> usize {
        self.windows.len()
    }

    /// Registered bytes.
    pub fn bytes(&self) -> u64 {
        self.windows.iter().map(|w| w.len).sum()
    }

    /// UMEM range `[start, end)` the windows occupy (tests check the layout with it).
    #[cfg(test)]
    pub fn range(&self) -> Option<(u64, u64)> {
        let start = self.windows.first()?.offset;
        let last = self.windows.last()?;
        Some((start, last.offset + last.len.div_ceil(FRAME) * FRAME))
    }

    /// The window of the open file `file`, if it is registered and still attached.
    fn window_of(&self, file: &File) -> Option<usize> {
        let md = nix::sys::stat::fstat(file.as_raw_fd()).ok()?;
        let i = *self.by_inode.get(&(md.st_dev, md.st_ino))?;
        let w = &self.windows[i];
        if (md.st_size as u64) < w.len {
            if !w.dead.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "{} shrank below its {} registered bytes: it no longer matches its pinned \
                     UMEM pages, serving it through the arena from now on",
                    w.path.display(),
                    w.len
                );
            }
            return None;
        }
        (!w.dead.load(Ordering::Relaxed)).then_some(i)
    }
}

/// A worker's map from payload source to window: one `fstat` per new source, not per datagram.
pub struct ResidentCache {
    // Source id -> (keepalive so the id is not reused while cached, window).
    map: HashMap<usize, (SourceId, Option<usize>)>,
}

/// Sources remembered before the cache starts over (segments come and go over days).
const CACHE_MAX: usize = 1024;

impl ResidentCache {
    /// An empty cache.
    pub fn new() -> ResidentCache {
        ResidentCache {
            map: HashMap::new(),
        }
    }

    /// Appends one (UMEM address, length) per page piece of bytes `position..position + len`
    /// of `source` (whose open file is `file`) and returns true, if those bytes lie in a live
    /// window; else leaves `out` alone and returns false.
    pub fn pieces(
        &mut self,
        resident: &Resident,
        source: &SourceId,
        file: &File,
        position: u64,
        len: usize,
        out: &mut Vec<(u64, u32)>,
    ) -> bool {
        let win = match self.map.get(&source.id) {
            Some((_, w)) => *w,
            None => {
                if self.map.len() >= CACHE_MAX {
                    self.map.clear();
                }
                let w = resident.window_of(file);
                self.map.insert(source.id, (source.clone(), w));
                w
            }
        };
        let Some(w) = win.map(|i| &resident.windows[i]) else {
            return false;
        };
        let end = position + len as u64;
        if end > w.len || w.dead.load(Ordering::Relaxed) {
            return false;
        }
        // Pieces never cross a page (aligned chunk mode; zero-copy pages are not contiguous).
        let mut at = position;
        while at < end {
            let n = (FRAME - at % FRAME).min(end - at);
            out.push((w.offset + at, n as u32));
            at += n;
        }
        true
    }
}

impl Default for ResidentCache {
    fn default() -> Self {
        ResidentCache::new()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::xdp::umem::UmemArea;

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
        crate::testnet::require_root().unwrap();
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

        // Truncated: the pinned pages no longer are the file's; a new source (the reader
        // reopens a truncated segment) is refused, and the window stays dead.
        let f = File::options().write(true).open(&path).unwrap();
        f.set_len(100).unwrap();
        let reopened = File::open(&path).unwrap();
        let mut none = Vec::new();
        assert!(!cache.pieces(r, &source(2), &reopened, 0, 50, &mut none));
        assert!(!cache.pieces(r, &source(1), &reader, 0, 50, &mut none));
        assert!(none.is_empty());
    }

    #[test]
    fn files_off_tmpfs_are_listed_not_opened() {
        let off = PathBuf::from("/proc/self/status");
        let opened = open(std::slice::from_ref(&off)).unwrap();
        assert!(opened.files.is_empty());
        assert_eq!(opened.elsewhere, vec![off]);
        let missing = PathBuf::from("/dev/shm/kxgw-no-such-segment.log");
        let e = open(&[missing]).err().expect("a missing file is an error");
        assert!(e.to_string().contains("kxgw-no-such-segment.log"), "{e}");
    }
}
