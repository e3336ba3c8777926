//! Background refresh of a [`LogDir`]: inotify on the log dir and the partition dirs wakes it
//! as soon as a segment grows, rolls or goes; a timer catches what inotify misses (writes
//! through mmap, network filesystems).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::inotify::{AddWatchFlags, InitFlags, WatchDescriptor};

use super::LogDir;

const INOTIFY: Token = Token(0);
const STOP: Token = Token(1);

/// Stops and joins the follower thread when dropped.
pub struct FollowerHandle {
    waker: Arc<Waker>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FollowerHandle {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The inotify instance: the log dir and every partition dir are watched.
struct Inotify {
    ino: nix::sys::inotify::Inotify,
}

/// Files created, deleted or renamed in a watched dir: rolls, retention, compaction swaps,
/// checkpoints.
const STRUCTURE_MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO);

/// Writes to a file in a watched dir: appends.
const WRITE_MASK: AddWatchFlags = AddWatchFlags::IN_MODIFY.union(AddWatchFlags::IN_CLOSE_WRITE);

/// What the follower is woken for, besides its timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Appends and structural changes: the default.
    Everything,
    /// Structural changes only, for a dir whose every reader busy-polls: their own tail
    /// checks find the appends, and a follower woken for each append would only take the
    /// busy poller's core away from it while it validates the same bytes.
    Structure,
}

impl Inotify {
    fn new() -> io::Result<Self> {
        let ino = nix::sys::inotify::Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(Inotify { ino })
    }

    fn watch(&self, path: &Path, follow: Follow) -> io::Result<WatchDescriptor> {
        let mask = match follow {
            Follow::Everything => STRUCTURE_MASK | WRITE_MASK,
            Follow::Structure => STRUCTURE_MASK,
        };
        Ok(self.ino.add_watch(path, mask)?)
    }

    /// Reads all pending events: the watches that fired (a queue overflow names no watch we
    /// know), each with whether anything but a write happened (files created, deleted,
    /// renamed).
    fn drain(&self, out: &mut HashMap<WatchDescriptor, bool>) {
        let writes = WRITE_MASK;
        // EAGAIN: drained.
        while let Ok(events) = self.ino.read_events() {
            if events.is_empty() {
                return;
            }
            for e in events {
                let structural = !(e.mask - writes).is_empty();
                *out.entry(e.wd).or_insert(false) |= structural;
            }
        }
    }
}

pub(crate) fn spawn(
    dir: Arc<LogDir>,
    interval: Duration,
    follow: Follow,
) -> io::Result<FollowerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), STOP)?);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inotify = match Inotify::new() {
        Ok(i) => {
            poll.registry().register(
                &mut SourceFd(&i.ino.as_fd().as_raw_fd()),
                INOTIFY,
                Interest::READABLE,
            )?;
            Some(i)
        }
        Err(e) => {
            log::warn!(
                "inotify unavailable ({e}); following {} by polling",
                dir.path().display()
            );
            None
        }
    };
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("kxgw-log-follow".into())
        .spawn(move || run(dir, interval, follow, poll, inotify, stop2))?;
    Ok(FollowerHandle {
        waker,
        stop,
        thread: Some(thread),
    })
}

fn run(
    dir: Arc<LogDir>,
    interval: Duration,
    follow: Follow,
    mut poll: Poll,
    inotify: Option<Inotify>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut events = Events::with_capacity(8);
    let mut fired = HashMap::new();
    // wd -> partition dir name (None: the log dir itself).
    let mut watches: HashMap<WatchDescriptor, Option<super::TopicPartition>> = HashMap::new();
    let mut watched: HashSet<super::TopicPartition> = HashSet::new();
    let add_watches = |watches: &mut HashMap<_, _>, watched: &mut HashSet<_>| {
        let Some(ino) = &inotify else { return };
        if watches.is_empty() {
            match ino.watch(dir.path(), follow) {
                Ok(wd) => {
                    watches.insert(wd, None);
                }
                Err(e) => log::warn!("inotify watch {}: {e}", dir.path().display()),
            }
        }
        for p in dir.partitions() {
            let tp = p.topic_partition().clone();
            if watched.contains(&tp) {
                continue;
            }
            match ino.watch(p.dir(), follow) {
                Ok(wd) => {
                    watches.insert(wd, Some(tp.clone()));
                    watched.insert(tp);
                }
                Err(e) => log::warn!("inotify watch {}: {e}", p.dir().display()),
            }
        }
    };
    add_watches(&mut watches, &mut watched);
    let mut next_full = Instant::now() + interval;
    let mut last_err: Option<String> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let timeout = next_full.saturating_duration_since(Instant::now());
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("log follower poll: {e}");
                std::thread::sleep(interval);
            }
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        fired.clear();
        if let Some(ino) = &inotify {
            ino.drain(&mut fired);
        }
        // A change in the log dir itself (checkpoints, partitions) or a queue overflow needs
        // the full rescan, which covers the partitions too.
        let dir_changed = fired
            .keys()
            .any(|wd| matches!(watches.get(wd), None | Some(None)));
        if !dir_changed {
            // The partitions inotify named go first, as their own batch: when the timer's
            // rescan is due in the same turn, their appends must not wait behind every
            // other partition's rescan.
            refresh_fired(&dir, &fired, &watches);
        }
        if dir_changed || Instant::now() >= next_full {
            match dir.refresh() {
                Err(e) => {
                    let msg = e.to_string();
                    if last_err.as_deref() != Some(msg.as_str()) {
                        log::warn!("refresh {}: {msg}", dir.path().display());
                        last_err = Some(msg);
                    }
                }
                Ok(()) => last_err = None,
            }
            // Dirs that went away drop their watches in the kernel (IN_IGNORED); forget ours.
            let live: HashSet<_> = dir
                .partitions()
                .iter()
                .map(|p| p.topic_partition().clone())
                .collect();
            watched.retain(|tp| live.contains(tp));
            watches.retain(|_, tp| tp.as_ref().is_none_or(|tp| live.contains(tp)));
            add_watches(&mut watches, &mut watched);
            next_full = Instant::now() + interval;
        }
    }
}

/// One pass over the partitions whose dirs fired (a structural change rescans the partition,
/// a write only its active segment), announced as one batch of appends.
fn refresh_fired(
    dir: &LogDir,
    fired: &HashMap<WatchDescriptor, bool>,
    watches: &HashMap<WatchDescriptor, Option<super::TopicPartition>>,
) {
    let parts: Vec<(Arc<super::Partition>, bool)> = fired
        .iter()
        .filter_map(|(wd, structural)| {
            let Some(Some(tp)) = watches.get(wd) else {
                return None;
            };
            Some((dir.partition(&tp.topic, tp.partition)?, !*structural))
        })
        .collect();
    if parts.is_empty() {
        return;
    }
    let pass: Vec<(&super::Partition, bool)> = parts
        .iter()
        .map(|(p, tail_only)| (&**p, *tail_only))
        .collect();
    dir.refresh_partitions(&pass);
}
