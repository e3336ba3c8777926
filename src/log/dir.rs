//! A log dir: the partitions under it, the checkpoint files, refresh and append hooks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::checkpoint::{self, Checkpoint};
use super::error::LogError;
use super::follower::{self, FollowerHandle};
use super::{Isolation, Partition, TopicPartition};

type Hook = Box<dyn Fn(&Partition) + Send + Sync>;

/// Checkpoints as of the last full refresh (partition-only refreshes reuse them).
#[derive(Default)]
struct Checkpoints {
    hw: Option<Arc<Checkpoint>>,
    log_start: Option<Arc<Checkpoint>>,
}

pub struct LogDir {
    path: PathBuf,
    isolation: Isolation,
    partitions: RwLock<BTreeMap<TopicPartition, Arc<Partition>>>,
    hooks: RwLock<Vec<Hook>>,
    checkpoints: Mutex<Checkpoints>,
    /// Serialises full refreshes (partition list changes).
    refresh_lock: Mutex<()>,
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

    /// All partitions, sorted by (topic, partition).
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        let p = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        p.values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        let p = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        p.get(&TopicPartition::new(topic, partition)).cloned()
    }

    /// Rescans everything: partition dirs, segments, checkpoints. Calls the on_append hooks
    /// of partitions whose readable end advanced. Errors of single partitions are logged and
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
            if let Ok(hw) = hw {
                c.hw = hw.map(Arc::new);
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
        for p in parts {
            self.refresh_one(&p, false);
        }
        match ckpt_err {
            Some(e) => Err(LogError::Invalid(format!("checkpoint unreadable: {e}"))),
            None => Ok(()),
        }
    }

    /// Rescans one partition (segments only) with the checkpoints of the last full refresh.
    pub fn refresh_partition(&self, p: &Partition) {
        self.refresh_one(p, false);
    }

    /// Rescans only the active segment of `p` (it grew).
    pub(crate) fn refresh_partition_tail(&self, p: &Partition) {
        self.refresh_one(p, true);
    }

    fn refresh_one(&self, p: &Partition, tail_only: bool) {
        let (hw, ls) = {
            let c = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner());
            (c.hw.clone(), c.log_start.clone())
        };
        let advanced = p.refresh(hw.as_deref(), ls.as_deref(), tail_only);
        if let Ok(true) = advanced {
            let hooks = self.hooks.read().unwrap_or_else(|e| e.into_inner());
            for h in hooks.iter() {
                h(p);
            }
        }
    }

    /// Background thread calling refresh when files change (inotify) and at least every
    /// `interval`. Stops when the handle is dropped.
    pub fn spawn_follower(self: &Arc<Self>, interval: Duration) -> std::io::Result<FollowerHandle> {
        follower::spawn(self.clone(), interval)
    }

    /// Registers a hook called (on the refreshing thread) when a partition's readable end
    /// advances.
    pub fn on_append(&self, hook: Box<dyn Fn(&Partition) + Send + Sync>) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }
}
