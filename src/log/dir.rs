//! A log dir: the partitions under it, the checkpoint files, refresh and append hooks.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::appends::{Announcer, AppendStats, Batch, Cause, LoopId, Watch};
use super::checkpoint::{self, Checkpoint};
use super::error::LogError;
use super::follower::{self, Follow, FollowerHandle};
use super::tail::{clock_ns, TailHops};
use super::tail_trace::TailTrace;
use super::topic_id::{self, TopicIdCheck};
use super::{Isolation, Partition, TopicPartition};
use uuid::Uuid;

type Hook = Box<dyn Fn(&Partition) + Send + Sync>;

/// Checkpoints as of the last full refresh (partition-only refreshes reuse them).
#[derive(Default)]
struct Checkpoints {
    hw: Option<Arc<Checkpoint>>,
    log_start: Option<Arc<Checkpoint>>,
    /// The high-watermark checkpoint vanished after it had been read (warned once).
    hw_vanished: bool,
}

pub struct LogDir {
    path: PathBuf,
    isolation: Isolation,
    partitions: RwLock<BTreeMap<TopicPartition, Arc<Partition>>>,
    hooks: RwLock<Vec<Hook>>,
    checkpoints: Mutex<Checkpoints>,
    /// Serialises full refreshes (partition list changes).
    refresh_lock: Mutex<()>,
    /// Topic ids, computed on each full refresh.
    ids: RwLock<TopicIds>,
    /// Per-hop times of the tailing replies of every server of this dir.
    tail_hops: TailHops,
    /// The serving loops' watches: each append batch is announced to them once.
    announcer: Announcer,
    /// When appends became readable and when replies carried them (the bench's hop join).
    tail_trace: TailTrace,
}

#[derive(Default)]
struct TopicIds {
    by_name: BTreeMap<String, Uuid>,
    by_id: HashMap<Uuid, String>,
    /// Topics not served: their partitions disagree on the id (name -> why).
    refused: BTreeMap<String, String>,
}

impl std::fmt::Debug for LogDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogDir")
            .field("path", &self.path)
            .field("isolation", &self.isolation)
            .finish()
    }
}

impl LogDir {
    /// Opens and scans a log dir. `isolation` None: HighWatermark if
    /// `<dir>/replication-offset-checkpoint` exists, else LogEnd.
    pub fn open(
        path: impl AsRef<Path>,
        isolation: Option<Isolation>,
    ) -> Result<Arc<LogDir>, LogError> {
        let path = path.as_ref().to_path_buf();
        let md = std::fs::metadata(&path).map_err(|e| LogError::io(&path, e))?;
        if !md.is_dir() {
            return Err(LogError::Invalid(format!(
                "{}: not a directory",
                path.display()
            )));
        }
        let isolation = isolation.unwrap_or_else(|| {
            if path
                .join(checkpoint::REPLICATION_OFFSET_CHECKPOINT)
                .exists()
            {
                Isolation::HighWatermark
            } else {
                Isolation::LogEnd
            }
        });
        let d = Arc::new(LogDir {
            path,
            isolation,
            partitions: RwLock::new(BTreeMap::new()),
            hooks: RwLock::new(Vec::new()),
            checkpoints: Mutex::new(Checkpoints::default()),
            refresh_lock: Mutex::new(()),
            ids: RwLock::new(TopicIds::default()),
            tail_hops: TailHops::default(),
            announcer: Announcer::default(),
            tail_trace: TailTrace::default(),
        });
        d.refresh()?;
        Ok(d)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// All partitions served, sorted by (topic, partition).
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        let ids = self.ids.read().unwrap_or_else(|e| e.into_inner());
        let p = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        p.values()
            .filter(|p| !ids.refused.contains_key(p.topic()))
            .cloned()
            .collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        if self.is_refused(topic) {
            return None;
        }
        let p = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        p.get(&TopicPartition::new(topic, partition)).cloned()
    }

    fn is_refused(&self, topic: &str) -> bool {
        let ids = self.ids.read().unwrap_or_else(|e| e.into_inner());
        ids.refused.contains_key(topic)
    }

    /// The id of a served topic: from its partitions' `partition.metadata`, else derived from
    /// the name.
    pub fn topic_id(&self, topic: &str) -> Option<Uuid> {
        let ids = self.ids.read().unwrap_or_else(|e| e.into_inner());
        ids.by_name.get(topic).copied()
    }

    /// The served topic with id `id`.
    pub fn topic_by_id(&self, id: Uuid) -> Option<String> {
        let ids = self.ids.read().unwrap_or_else(|e| e.into_inner());
        ids.by_id.get(&id).cloned()
    }

    /// Recomputes the topic ids from the partitions' metadata files (logging refusals when
    /// they change).
    fn update_topic_ids(&self, parts: &[Arc<Partition>]) {
        let mut per_topic: BTreeMap<&str, Vec<topic_id::IdFile>> = BTreeMap::new();
        for p in parts {
            per_topic
                .entry(p.topic())
                .or_default()
                .push((p.partition(), p.topic_id_file()));
        }
        let mut next = TopicIds::default();
        for (topic, files) in per_topic {
            match topic_id::decide(topic, &files) {
                TopicIdCheck::Id(id) => {
                    if let Some(other) = next.by_id.get(&id) {
                        next.refused.insert(
                            topic.to_string(),
                            format!("topic id also claimed by topic {other}"),
                        );
                        continue;
                    }
                    next.by_name.insert(topic.to_string(), id);
                    next.by_id.insert(id, topic.to_string());
                }
                TopicIdCheck::Refused(why) => {
                    next.refused.insert(topic.to_string(), why);
                }
            }
        }
        let mut ids = self.ids.write().unwrap_or_else(|e| e.into_inner());
        for (topic, why) in &next.refused {
            if ids.refused.get(topic) != Some(why) {
                log::error!("topic {topic} is not served: {why}");
            }
        }
        for topic in ids.refused.keys() {
            if !next.refused.contains_key(topic) {
                log::info!("topic {topic} is served again: its topic id is consistent");
            }
        }
        *ids = next;
    }

    /// Rescans everything: partition dirs, segments, checkpoints. Announces the partitions
    /// whose readable end advanced, as one batch. Errors of single partitions are logged and
    /// leave that partition as it was; an unreadable log dir or checkpoint is an error.
    pub fn refresh(&self) -> Result<(), LogError> {
        let _g = self.refresh_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = BTreeMap::new();
        let rd = std::fs::read_dir(&self.path).map_err(|e| LogError::io(&self.path, e))?;
        for e in rd {
            let e = e.map_err(|e| LogError::io(&self.path, e))?;
            let Some(tp) = e
                .file_name()
                .to_str()
                .and_then(TopicPartition::from_dir_name)
            else {
                continue;
            };
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                found.insert(tp, e.path());
            }
        }
        let hw = checkpoint::read(&self.path.join(checkpoint::REPLICATION_OFFSET_CHECKPOINT));
        let ls = checkpoint::read(&self.path.join(checkpoint::LOG_START_OFFSET_CHECKPOINT));
        let ckpt_err = match (&hw, &ls) {
            (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        {
            let mut c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
            // An unreadable checkpoint keeps the previous one (a broker rewrites it atomically,
            // so this is damage, not a race).
            // A vanished high-watermark checkpoint keeps the last one too: falling back to the
            // log end would serve records the broker has not committed (a broker replaces the
            // file by rename, so it is never missing in normal operation).
            match hw {
                Ok(None) if c.hw.is_some() => {
                    if !c.hw_vanished {
                        log::warn!(
                            "{}: disappeared; keeping the high watermarks last read from it",
                            self.path
                                .join(checkpoint::REPLICATION_OFFSET_CHECKPOINT)
                                .display()
                        );
                        c.hw_vanished = true;
                    }
                }
                Ok(hw) => {
                    c.hw = hw.map(Arc::new);
                    c.hw_vanished = false;
                }
                Err(_) => {}
            }
            if let Ok(ls) = ls {
                c.log_start = ls.map(Arc::new);
            }
        }
        let parts: Vec<Arc<Partition>> = {
            let mut map = self.partitions.write().unwrap_or_else(|e| e.into_inner());
            map.retain(|tp, _| found.contains_key(tp));
            for (tp, dir) in found {
                if let std::collections::btree_map::Entry::Vacant(v) = map.entry(tp) {
                    match Partition::new(dir, v.key().clone(), self.isolation) {
                        Ok(p) => {
                            v.insert(Arc::new(p));
                        }
                        Err(e) => log::warn!("{}: {e}", v.key()),
                    }
                }
            }
            map.values().cloned().collect()
        };
        let advanced: Vec<&Partition> = parts
            .iter()
            .filter(|p| self.refresh_one(p, false))
            .map(|p| &**p)
            .collect();
        self.update_topic_ids(&parts);
        self.announce(Cause::Refresh, None, &advanced);
        match ckpt_err {
            Some(e) => Err(LogError::Invalid(format!("checkpoint unreadable: {e}"))),
            None => Ok(()),
        }
    }

    /// Rescans one partition (segments only) with the checkpoints of the last full refresh.
    pub fn refresh_partition(&self, p: &Partition) {
        self.refresh_partitions(&[(p, false)]);
    }

    /// The follower's pass over the partitions its notifications named, `(partition, only
    /// its active segment grew)` each; what advanced is announced as one batch.
    pub(crate) fn refresh_partitions(&self, fired: &[(&Partition, bool)]) {
        let advanced: Vec<&Partition> = fired
            .iter()
            .filter(|(p, tail_only)| self.refresh_one(p, *tail_only))
            .map(|(p, _)| *p)
            .collect();
        self.announce(Cause::Follower, None, &advanced);
    }

    /// Rescans `p` (`tail_only`: its active segment); true if its readable end advanced
    /// (stamped; the caller announces it).
    fn refresh_one(&self, p: &Partition, tail_only: bool) -> bool {
        let detected = clock_ns();
        let (hw, ls) = self.last_checkpoints();
        let advanced = matches!(p.refresh(hw.as_deref(), ls.as_deref(), tail_only), Ok(true));
        if advanced {
            self.stamp(p, detected);
        }
        advanced
    }

    fn last_checkpoints(&self) -> (Option<Arc<Checkpoint>>, Option<Arc<Checkpoint>>) {
        let c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
        (c.hw.clone(), c.log_start.clone())
    }

    /// `p`'s readable end advanced by a refresh that started at `detected`: stamp it (the
    /// reply's hop times) and trace it (the bench's per-record join).
    fn stamp(&self, p: &Partition, detected: u64) {
        let validated = clock_ns();
        p.tail_stamps().set(detected, validated);
        self.tail_trace.refresh(
            (p.topic(), p.partition()),
            p.readable_end(),
            (detected, validated),
        );
    }

    /// One batch of partitions that advanced: to the watches (each woken at most once, see
    /// [`super::appends`]), then to the per-partition on_append hooks.
    fn announce(&self, cause: Cause, finder: Option<LoopId>, advanced: &[&Partition]) {
        if advanced.is_empty() {
            return;
        }
        self.announcer.announce(&Batch {
            cause,
            finder,
            partitions: advanced,
        });
        let hooks = self.hooks.read().unwrap_or_else(|e| e.into_inner());
        for p in advanced {
            for h in hooks.iter() {
                h(p);
            }
        }
    }

    /// Busy polling: the caller's own check of `p`'s tail, announced as a batch of its own.
    /// See [`LogDir::poll_tails`].
    pub fn poll_tail(&self, p: &Partition) -> bool {
        let found = self.poll_one(p);
        if found {
            self.announce(Cause::Busy, None, &[p]);
        }
        found
    }

    /// Busy polling: a serving loop's own check of the tails its parked requests wait on.
    /// Where an active segment grew (one fstat), validates just the new bytes (the
    /// follower's tail refresh, run on this thread: a torn tail stays invisible, a corrupt
    /// batch unserved); where it was truncated in place, takes the end back at once. What advanced is one batch, announced to every loop but `finder`
    /// (the caller, which answers it in this turn: no self-wake). Returns whether anything
    /// advanced. A partition another refresh is working on is skipped: that refresh
    /// announces what it finds. Rolls, retention and checkpoints stay the follower's.
    pub fn poll_tails(&self, tails: &[Arc<Partition>], finder: Option<LoopId>) -> bool {
        let advanced: Vec<&Partition> = tails
            .iter()
            .filter(|p| self.poll_one(p))
            .map(|p| &**p)
            .collect();
        self.announce(Cause::Busy, finder, &advanced);
        !advanced.is_empty()
    }

    /// One tail check of [`LogDir::poll_tails`]; true if `p` advanced (stamped, counted).
    fn poll_one(&self, p: &Partition) -> bool {
        let Some(len) = p.tail_length_change() else {
            return false;
        };
        let detected = clock_ns();
        let (hw, ls) = self.last_checkpoints();
        match p.try_refresh_tail(hw.as_deref(), ls.as_deref(), len) {
            Some(Ok(true)) => {
                self.stamp(p, detected);
                self.tail_hops
                    .busy_found
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Registers a serving loop: it is woken by the append batches that advance a partition
    /// it waits on ([`super::appends`]). Held weakly: dropping the watch unregisters it.
    pub fn watch(&self, w: &Arc<Watch>) {
        self.announcer.add(w);
    }

    /// Append batches announced and loops woken, per cause.
    pub fn append_stats(&self) -> &AppendStats {
        self.announcer.stats()
    }

    /// Per-hop times of tailing replies, recorded by the servers of this dir.
    pub fn tail_hops(&self) -> &TailHops {
        &self.tail_hops
    }

    /// The trace of advancing refreshes and replies with data, recorded by the refreshing
    /// threads and the servers of this dir.
    pub fn tail_trace(&self) -> &TailTrace {
        &self.tail_trace
    }

    /// Cluster mode: [`LiveUpdates::set_live_offsets`] as a batch of its own.
    pub fn set_live_offsets(&self, topic: &str, partition: i32, hw: i64, lso: i64) -> bool {
        self.live_updates()
            .set_live_offsets(topic, partition, hw, lso)
    }

    /// Cluster mode: [`LiveUpdates::set_live_start`] as a batch of its own.
    pub fn set_live_start(&self, topic: &str, partition: i32, start: i64) -> bool {
        self.live_updates().set_live_start(topic, partition, start)
    }

    /// Cluster mode: offsets the cluster reported in one answer, applied together; the
    /// partitions they advance are announced as one batch when the returned value drops.
    pub fn live_updates(&self) -> LiveUpdates<'_> {
        LiveUpdates {
            dir: self,
            advanced: Vec::new(),
        }
    }

    /// Background thread calling refresh when files change (inotify) and at least every
    /// `interval`. Stops when the handle is dropped.
    pub fn spawn_follower(self: &Arc<Self>, interval: Duration) -> std::io::Result<FollowerHandle> {
        follower::spawn(self.clone(), interval, Follow::Everything)
    }

    /// [`Self::spawn_follower`] for a dir whose every reader busy-polls (their tail checks,
    /// [`Self::poll_tails`], find appends): the follower is woken only for rolls, deletions and
    /// renames, and by its timer.
    pub fn spawn_structure_follower(
        self: &Arc<Self>,
        interval: Duration,
    ) -> std::io::Result<FollowerHandle> {
        follower::spawn(self.clone(), interval, Follow::Structure)
    }

    /// Registers a hook called (on the refreshing thread) for each partition whose readable
    /// end advanced, after the batch it is part of went to the watches.
    pub fn on_append(&self, hook: Box<dyn Fn(&Partition) + Send + Sync>) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }
}

/// Offsets the cluster reported, applied to the log as one append batch ([`Cause::Cluster`]),
/// announced when this is dropped (so an early return still announces what was applied).
pub struct LiveUpdates<'a> {
    dir: &'a LogDir,
    advanced: Vec<Arc<Partition>>,
}

impl LiveUpdates<'_> {
    /// The high watermark and last stable offset the cluster reports for a partition bound
    /// its reads from now on (capped by the local disk); parked readers are woken if that
    /// moves the readable end. Returns false for a partition this dir does not hold.
    pub fn set_live_offsets(&mut self, topic: &str, partition: i32, hw: i64, lso: i64) -> bool {
        let Some(p) = self.dir.partition(topic, partition) else {
            return false;
        };
        if p.set_live(hw, lso) {
            self.refresh(p);
        }
        true
    }

    /// The log start offset the cluster reports for a partition bounds its reads from now
    /// on (the larger of it and the local disk's start): a fetch below it is out of range,
    /// ListOffsets EARLIEST answers it. Returns false for a partition this dir does not hold.
    pub fn set_live_start(&mut self, topic: &str, partition: i32, start: i64) -> bool {
        let Some(p) = self.dir.partition(topic, partition) else {
            return false;
        };
        if p.set_live_start(start) {
            self.refresh(p);
        }
        true
    }

    fn refresh(&mut self, p: Arc<Partition>) {
        if self.dir.refresh_one(&p, true) && !self.advanced.iter().any(|q| Arc::ptr_eq(q, &p)) {
            self.advanced.push(p);
        }
    }
}

impl Drop for LiveUpdates<'_> {
    fn drop(&mut self) {
        let advanced: Vec<&Partition> = self.advanced.iter().map(|p| &**p).collect();
        self.dir.announce(Cause::Cluster, None, &advanced);
    }
}
