//! Log segment files registered as UMEM themselves (`--umem-segments`), so an `sg` descriptor
//! points at the segment's own page-cache pages: no staging copy into the arena.
//!
//! Only tmpfs pages can be registered (ext4/xfs pages give EFAULT/ENOMEM), and only
//! through a read-write `MAP_SHARED` mapping, so each file is opened read-write although the
//! gateway never writes it. Registration pins the pages the file has at startup: bytes appended
//! later land in the same last page or in new pages outside the UMEM, so a window covers the
//! file's length at registration and anything past it goes through the arena. A truncated file
//! is detached from the pinned pages (its later bytes are new pages), so a window whose file is
//! now shorter than the window is never used again. The length is checked with one `fstat` per
//! source per transmit round, not only when a source is first seen: a broker may truncate a
//! segment in place at any time, and tmpfs zeroes the tail of the pinned page at the new end.
//! (One per datagram cost a tenth of the sending core at 1500-byte datagrams.)

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::time::TimeSpec;

use super::consts::FRAME;
use super::error::XdpError;
use crate::log::SourceId;

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
        self.attached(i, md.st_size)
    }

    /// `Some(i)` while window `i`'s file is at least as long as the window. Truncating a
    /// tmpfs file zeroes the tail of the page at the new end, which is the pinned page itself,
    /// and frees the rest from the file (later bytes land in new pages): once shorter, the
    /// pinned pages no longer hold the file's bytes, so the window is never used again.
    fn attached(&self, i: usize, size: i64) -> Option<usize> {
        let w = &self.windows[i];
        if (size as u64) < w.len {
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

/// A worker's map from payload source to window, each checked with one `fstat` per transmit
/// round ([`ResidentCache::new_round`]), not per datagram.
pub struct ResidentCache {
    // Source id -> (keepalive so the id is not reused while cached, window, round checked).
    map: HashMap<usize, (SourceId, Option<usize>, u64)>,
    round: u64,
}

/// Sources remembered before the cache starts over (segments come and go over days).
const CACHE_MAX: usize = 1024;

impl ResidentCache {
    /// An empty cache.
    pub fn new() -> ResidentCache {
        ResidentCache {
            map: HashMap::new(),
            round: 0,
        }
    }

    /// Starts a transmit round: each source's file length is checked again on its next use.
    pub fn new_round(&mut self) {
        self.round += 1;
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
        let round = self.round;
        let win = match self.map.get_mut(&source.id) {
            // A cached window is checked again once per round: a broker may truncate the
            // file in place at any time (a truncation landing between this check and the NIC
            // reading the pages is the remaining window). A window found shorter is marked
            // dead, which the check below sees for the rest of the round; an fstat that fails
            // is tried again on the next datagram.
            Some((_, Some(i), checked)) if *checked != round => {
                let i = *i;
                let md = nix::sys::stat::fstat(file.as_raw_fd()).ok();
                if md.is_some() {
                    *checked = round;
                }
                md.and_then(|md| resident.attached(i, md.st_size))
            }
            Some((_, w, _)) => *w,
            None => {
                if self.map.len() >= CACHE_MAX {
                    self.map.clear();
                }
                let w = resident.window_of(file);
                self.map.insert(source.id, (source.clone(), w, round));
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
    use super::*;

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
