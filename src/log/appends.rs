//! Append batches and the serving loops they wake. Every pass that can advance readable ends
//! (a follower pass over the partitions inotify reported, a full refresh, a cluster offset
//! update, a busy poller's own look at its tails) collects the partitions that advanced and
//! announces them once, as one batch. Each serving loop registers a [`Watch`]: the partitions
//! its parked requests wait on, and how to wake it. A batch wakes a loop at most once, only
//! if one of its partitions is waited on there, and never the loop that found the appends
//! itself (it answers them in the same turn). Each wake-up of an idle vCPU costs tens of
//! microseconds on small VMs, so these are the wake-ups worth saving.
//!
//! No lost wake-up: a loop registers its interest ([`Watch::wait_on`]) after its read found
//! nothing and then checks again (the readable end, or [`Watch::take_advanced`]). An
//! announcement either sees the interest (and wakes), or it came before the interest was
//! registered, so after the refresh it announces, and the second check sees its data.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::{Partition, TopicPartition};
use crate::metrics::MetricsWriter;

/// What found a batch of appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The follower's pass over the partitions its file notifications named.
    Follower,
    /// A full refresh (the follower's timer, a log-dir change, a caller).
    Refresh,
    /// High watermarks or log starts reported by the cluster (cluster mode).
    Cluster,
    /// A busy-polling loop's own tail check.
    Busy,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::Follower, Cause::Refresh, Cause::Cluster, Cause::Busy];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Follower => "follower",
            Cause::Refresh => "refresh",
            Cause::Cluster => "cluster",
            Cause::Busy => "busy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Identity of a serving loop (its [`Watch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoopId(u64);

impl LoopId {
    fn next() -> LoopId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        LoopId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One batch: the partitions whose readable end advanced in one pass.
pub struct Batch<'a> {
    pub cause: Cause,
    /// The loop that found these appends itself (busy polling): not woken by them.
    pub finder: Option<LoopId>,
    pub partitions: &'a [&'a Partition],
}

#[derive(Default)]
struct WatchState {
    /// Partitions parked requests wait on, with how many wait on each.
    waiting: HashMap<TopicPartition, u32>,
    /// Partitions announced since the loop last took them ([`Watch::recording`] only).
    advanced: HashSet<TopicPartition>,
}

/// A serving loop's registration with the log (see the module doc).
pub struct Watch {
    id: LoopId,
    record: bool,
    state: Mutex<WatchState>,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("id", &self.id).finish()
    }
}

impl Watch {
    /// A loop woken by `wake`; it checks its parked requests' readable ends itself.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Arc<Watch> {
        Self::build(wake, false)
    }

    /// A loop woken by `wake` that also learns which partitions advanced: every announced
    /// partition is kept until [`Watch::take_advanced`] (waited on or not, so a request
    /// parked just after an announcement still finds it there).
    pub fn recording(wake: impl Fn() + Send + Sync + 'static) -> Arc<Watch> {
        Self::build(wake, true)
    }

    fn build(wake: impl Fn() + Send + Sync + 'static, record: bool) -> Arc<Watch> {
        Arc::new(Watch {
            id: LoopId::next(),
            record,
            state: Mutex::new(WatchState::default()),
            wake: Box::new(wake),
        })
    }

    pub fn id(&self) -> LoopId {
        self.id
    }

    fn state(&self) -> MutexGuard<'_, WatchState> {
        // Plain counters and sets: a panic elsewhere leaves them usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A parked request waits on `tp` (once per request and partition).
    pub fn wait_on(&self, tp: &TopicPartition) {
        let mut st = self.state();
        match st.waiting.get_mut(tp) {
            Some(n) => *n += 1,
            None => {
                st.waiting.insert(tp.clone(), 1);
            }
        }
    }

    /// A request that waited on `tp` was answered or dropped.
    pub fn done_with(&self, tp: &TopicPartition) {
        let mut st = self.state();
        if let Some(n) = st.waiting.get_mut(tp) {
            *n -= 1;
            if *n == 0 {
                st.waiting.remove(tp);
            }
        }
    }

    /// Whether a parked request waits on `tp`.
    pub fn waits_on(&self, tp: &TopicPartition) -> bool {
        self.state().waiting.contains_key(tp)
    }

    /// The partitions announced since the last call ([`Watch::recording`]; else empty).
    pub fn take_advanced(&self) -> HashSet<TopicPartition> {
        std::mem::take(&mut self.state().advanced)
    }

    /// Takes note of `batch`; true if it woke the loop.
    fn announce(&self, batch: &Batch<'_>) -> bool {
        let wanted = {
            let mut st = self.state();
            if self.record {
                for p in batch.partitions {
                    if !st.advanced.contains(p.topic_partition()) {
                        st.advanced.insert(p.topic_partition().clone());
                    }
                }
            }
            batch
                .partitions
                .iter()
                .any(|p| st.waiting.contains_key(p.topic_partition()))
        };
        // The finder answers its own appends in the turn that found them.
        let wake = wanted && batch.finder != Some(self.id);
        if wake {
            (self.wake)();
        }
        wake
    }
}

/// The watches of a log dir and the counters of its announcements.
#[derive(Default)]
pub struct Announcer {
    /// Weak: a loop that stopped (its watch dropped) is forgotten at the next batch.
    watches: Mutex<Vec<Weak<Watch>>>,
    stats: AppendStats,
}

impl Announcer {
    pub fn add(&self, w: &Arc<Watch>) {
        self.lock().push(Arc::downgrade(w));
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Weak<Watch>>> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces a batch (nothing for an empty one): each watch is woken at most once.
    pub fn announce(&self, batch: &Batch<'_>) {
        if batch.partitions.is_empty() {
            return;
        }
        let c = batch.cause.index();
        self.stats.batches[c].fetch_add(1, Ordering::Relaxed);
        let live: Vec<Arc<Watch>> = {
            let mut ws = self.lock();
            ws.retain(|w| w.strong_count() > 0);
            ws.iter().filter_map(Weak::upgrade).collect()
        };
        let mut woken = 0;
        for w in &live {
            woken += u64::from(w.announce(batch));
        }
        self.stats.wakes[c].fetch_add(woken, Ordering::Relaxed);
    }

    pub fn stats(&self) -> &AppendStats {
        &self.stats
    }
}

/// Append batches announced and serving loops woken, per [`Cause`].
#[derive(Debug, Default)]
pub struct AppendStats {
    batches: [AtomicU64; 4],
    wakes: [AtomicU64; 4],
}

impl AppendStats {
    /// Batches announced with `cause`.
    pub fn batches(&self, cause: Cause) -> u64 {
        self.batches[cause.index()].load(Ordering::Relaxed)
    }

    /// Serving loops woken by batches with `cause`.
    pub fn wakes(&self, cause: Cause) -> u64 {
        self.wakes[cause.index()].load(Ordering::Relaxed)
    }

    /// `tail_append_batches_total{cause}` and `tail_wakes_total{cause}`.
    pub fn write_metrics(&self, w: &mut MetricsWriter) {
        for cause in Cause::ALL {
            w.counter(
                "tail_append_batches_total",
                "Batches of appends announced to the serving loops (partitions that advanced in one pass), by what found them",
                &[("cause", cause.label())],
                self.batches(cause),
            );
        }
        for cause in Cause::ALL {
            w.counter(
                "tail_wakes_total",
                "Serving loops woken by an append batch (at most one wake-up per loop and batch, only for a partition a parked request waits on)",
                &[("cause", cause.label())],
                self.wakes(cause),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::log::writer::{NewRecord, PartitionWriter, WriterConfig};
    use crate::log::LogDir;

    /// One record appended to `t-<p>` (created if new) by the broker-compatible writer.
    fn append(dir: &Path, p: i32) {
        let mut w = PartitionWriter::open(dir, "t", p, WriterConfig::default()).unwrap();
        let r = NewRecord {
            timestamp: 1000,
            value: Some(b"v"),
            ..Default::default()
        };
        w.append(&[r]).unwrap();
        w.flush().unwrap();
    }

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    /// The follower's pass over `parts` (their active segments grew).
    fn pass(log: &LogDir, parts: &[i32]) {
        let ps: Vec<Arc<Partition>> = parts
            .iter()
            .map(|&p| log.partition("t", p).unwrap())
            .collect();
        let fired: Vec<(&Partition, bool)> = ps.iter().map(|p| (&**p, true)).collect();
        log.refresh_partitions(&fired);
    }

    fn counted() -> (Arc<Watch>, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let w = Watch::recording(move || {
            m.fetch_add(1, Ordering::SeqCst);
        });
        (w, n)
    }

    #[test]
    fn a_recording_watch_keeps_what_came_before_its_interest() {
        let d = tempfile::tempdir().unwrap();
        append(d.path(), 0);
        append(d.path(), 1);
        let log = LogDir::open(d.path(), None).unwrap();
        let (w, wakes) = counted();
        log.watch(&w);
        append(d.path(), 0);
        pass(&log, &[0, 1]);
        // Nobody waited: no wake-up, but the loop finds the append when it parks a request.
        assert_eq!(wakes.load(Ordering::SeqCst), 0);
        assert_eq!(w.take_advanced(), HashSet::from([tp(0)]));
        assert!(w.take_advanced().is_empty(), "taken once");
        // Two requests wait on t-1: one batch advancing t-0 and t-1 wakes the loop once.
        w.wait_on(&tp(1));
        w.wait_on(&tp(1));
        append(d.path(), 0);
        append(d.path(), 1);
        pass(&log, &[0, 1]);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(w.take_advanced(), HashSet::from([tp(0), tp(1)]));
        // One request is answered; the other still waits.
        w.done_with(&tp(1));
        assert!(w.waits_on(&tp(1)));
        w.done_with(&tp(1));
        assert!(!w.waits_on(&tp(1)));
        let stats = log.append_stats();
        assert_eq!(stats.batches(Cause::Follower), 2);
        assert_eq!(stats.wakes(Cause::Follower), 1);
    }

    #[test]
    fn the_finder_is_not_woken_and_a_dropped_watch_is_forgotten() {
        let d = tempfile::tempdir().unwrap();
        append(d.path(), 0);
        let log = LogDir::open(d.path(), None).unwrap();
        let (finder, finder_wakes) = counted();
        let (other, other_wakes) = counted();
        log.watch(&finder);
        log.watch(&other);
        finder.wait_on(&tp(0));
        other.wait_on(&tp(0));
        append(d.path(), 0);
        let tails = vec![log.partition("t", 0).unwrap()];
        assert!(log.poll_tails(&tails, Some(finder.id())));
        assert_eq!(finder_wakes.load(Ordering::SeqCst), 0, "no self-wake");
        assert_eq!(other_wakes.load(Ordering::SeqCst), 1);
        assert_eq!(finder.take_advanced(), HashSet::from([tp(0)]), "still told");
        drop(other);
        append(d.path(), 0);
        pass(&log, &[0]);
        assert_eq!(finder_wakes.load(Ordering::SeqCst), 1);
        let stats = log.append_stats();
        assert_eq!(
            (stats.batches(Cause::Busy), stats.wakes(Cause::Busy)),
            (1, 1)
        );
        assert_eq!(
            (stats.batches(Cause::Follower), stats.wakes(Cause::Follower)),
            (1, 1)
        );
    }
}
