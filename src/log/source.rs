//! Identity of the bytes a [`super::ReadSlice`] comes from, for caches keyed by (source,
//! position) such as the AF_XDP log arena.
//!
//! The log assigns one id per opened segment file: a segment keeps its id while it grows (bytes
//! below its end never change) and gets a new one when it is reopened because it was truncated
//! or replaced, so equal (id, position) always means equal bytes. Ids are never reused.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// Identity of a payload source (a segment file, or a generator's pattern).
#[derive(Clone)]
pub struct SourceId {
    /// Unique in this process.
    pub id: usize,
    /// Keeps the source open while a cache holds its bytes.
    pub keep: Arc<dyn Any + Send + Sync>,
}

impl SourceId {
    /// A fresh identity for `keep`'s bytes.
    pub fn new(keep: Arc<dyn Any + Send + Sync>) -> SourceId {
        SourceId {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            keep,
        }
    }

    /// A source with identity `id` and nothing to keep alive (tests of caches).
    #[cfg(test)]
    pub(crate) fn anonymous(id: usize) -> SourceId {
        SourceId {
            id,
            keep: Arc::new(()),
        }
    }
}

impl std::fmt::Debug for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceId({})", self.id)
    }
}
