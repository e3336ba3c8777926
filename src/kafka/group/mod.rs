//! The group coordinator of the Kafka listener (classic consumer-group protocol).
//!
//! - [`coordinator`]: the sans-I/O state machine (members, generations, timeouts, offsets).
//! - [`member`]: a member, and the replies parked JoinGroup/SyncGroup requests wait for.
//! - [`store`]: committed offsets on disk in the state directory.
//! - [`metrics`]: group state as metrics.
//!
//! [`Groups`] is what the listener shares between connections (and with the stats and metrics
//! readers): the coordinator and its store under one lock. The event loop is the only writer,
//! so the lock is uncontended except for a stats read.

pub mod coordinator;
pub mod member;
pub mod metrics;

pub mod store;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Result;

pub use coordinator::{Committed, Coordinator, GroupConfig, JoinParams, MemberRef, State};
pub use member::{Outcome, Reply, WaiterId};
use store::{OffsetStore, Rec};

/// The coordinator and its durable offsets.
pub struct Inner {
    /// The state machine.
    pub coord: Coordinator,
    store: Option<OffsetStore>,
}

/// Shared group state of one listener.
pub struct Groups {
    inner: Mutex<Inner>,
}

impl Groups {
    /// Groups whose offsets live only in memory (tests, or no state directory).
    pub fn in_memory(cfg: GroupConfig) -> Groups {
        Groups {
            inner: Mutex::new(Inner {
                coord: Coordinator::new(cfg),
                store: None,
            }),
        }
    }

    /// Groups with offsets kept in `state_dir`, reloading what is there.
    pub fn open(cfg: GroupConfig, state_dir: &Path) -> Result<Groups> {
        let (store, recs) = OffsetStore::open(state_dir)?;
        let mut coord = Coordinator::new(cfg);
        let now = Instant::now();
        let n = recs.len();
        let mut live: std::collections::BTreeMap<String, coordinator::GroupOffsets> =
            Default::default();
        for r in recs {
            match r {
                Rec::Commit {
                    group,
                    topic,
                    partition,
                    committed,
                } => {
                    live.entry(group)
                        .or_default()
                        .insert((topic, partition), committed);
                }
                Rec::DeletePartition {
                    group,
                    topic,
                    partition,
                } => {
                    if let Some(o) = live.get_mut(&group) {
                        o.remove(&(topic, partition));
                    }
                }
                Rec::DeleteGroup { group } => {
                    live.remove(&group);
                }
            }
        }
        let mut offsets = 0;
        for (g, parts) in live {
            for ((t, p), c) in parts {
                coord.restore(&g, &t, p, c, now);
                offsets += 1;
            }
        }
        log::info!(
            "state dir {}: {offsets} committed offsets of {} groups reloaded ({n} records)",
            state_dir.display(),
            coord.all_offsets().len()
        );
        Ok(Groups {
            inner: Mutex::new(Inner {
                coord,
                store: Some(store),
            }),
        })
    }

    /// The locked state. A panic while holding the lock is a bug elsewhere; the state is
    /// still consistent enough to keep serving, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Makes `commits` durable, then applies them. Err: the store failed (nothing applied).
    pub fn commit(&mut self, group: &str, commits: Vec<(String, i32, Committed)>) -> Result<()> {
        if let Some(store) = &mut self.store {
            let recs: Vec<Rec> = commits
                .iter()
                .map(|(t, p, c)| Rec::Commit {
                    group: group.to_string(),
                    topic: t.clone(),
                    partition: *p,
                    committed: c.clone(),
                })
                .collect();
            store.append(&recs)?;
        }
        self.coord.apply_commits(group, commits);
        self.maybe_compact();
        Ok(())
    }

    /// Deletes offsets durably (OffsetDelete).
    pub fn delete(&mut self, group: &str, parts: &[(String, i32)]) -> Result<i16> {
        let code = self.coord.delete_offsets(group, &[]);
        if code != 0 {
            return Ok(code);
        }
        if let Some(store) = &mut self.store {
            let recs: Vec<Rec> = parts
                .iter()
                .map(|(t, p)| Rec::DeletePartition {
                    group: group.to_string(),
                    topic: t.clone(),
                    partition: *p,
                })
                .collect();
            store.append(&recs)?;
        }
        Ok(self.coord.delete_offsets(group, parts))
    }

    /// Runs the coordinator's timers; groups dropped for retention are deleted on disk.
    pub fn tick(&mut self, now: Instant) {
        let dropped = self.coord.tick(now);
        if dropped.is_empty() {
            return;
        }
        if let Some(store) = &mut self.store {
            let recs: Vec<Rec> = dropped
                .into_iter()
                .map(|group| Rec::DeleteGroup { group })
                .collect();
            if let Err(e) = store.append(&recs) {
                log::warn!("recording expired groups: {e:#}");
            }
        }
    }

    fn maybe_compact(&mut self) {
        let Some(store) = &mut self.store else {
            return;
        };
        let live: u64 = self
            .coord
            .all_offsets()
            .values()
            .map(|o| o.len() as u64)
            .sum();
        if !store.wants_compaction(live) {
            return;
        }
        let recs: Vec<Rec> = self
            .coord
            .all_offsets()
            .iter()
            .flat_map(|(g, o)| {
                o.iter().map(move |((t, p), c)| Rec::Commit {
                    group: g.clone(),
                    topic: t.clone(),
                    partition: *p,
                    committed: c.clone(),
                })
            })
            .collect();
        if let Err(e) = store.rewrite(&recs) {
            // The old log is intact (the rename did not happen): keep appending to it.
            log::warn!("compacting the offsets log: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests;
