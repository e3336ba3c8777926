//! Kafka partition logs on disk: `<log-dir>/<topic>-<partition>/<20-digit base offset>.log`
//! with `.index` and `.timeindex`, record batches v2, as a broker writes them.
//!
//! - [`LogDir`] / [`Partition`]: the reader. Every batch is CRC-checked once (the validation
//!   scan, with pread, also builds a sparse in-memory offset/time index), and
//!   [`Partition::read`] hands out [`ReadSlice`]s naming file ranges (no copy). Nothing reads a
//!   segment mapping in user space, so a broker truncating a file in place cannot raise SIGBUS
//!   here ([`read`]).
//!   [`LogDir::refresh`] / [`LogDir::spawn_follower`] follow growth, rolls and retention.
//! - [`writer`]: broker-compatible writer (`kxgw produce`).
//! - [`compression`]: the four codecs of compressed batches.
//! - [`batch`], [`record`], [`index`], [`checkpoint`], [`segment`]: the formats.

pub mod appends;
pub mod batch;
pub mod checkpoint;
pub mod compression;
mod dir;
pub mod error;
mod follower;
pub mod index;
pub mod leader_epoch;
mod partition;
pub mod read;
pub mod record;
pub mod segment;
mod source;
pub mod tail;
pub mod tail_trace;
pub mod topic_id;
pub mod txn;
pub mod txn_writer;
pub mod varint;
pub mod writer;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

pub use dir::{LiveUpdates, LogDir};
pub use error::{BatchError, LogError};
pub use follower::FollowerHandle;
pub use partition::Partition;
pub use source::SourceId;

/// Which end bounds reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// Up to the high watermark (from `replication-offset-checkpoint`), as a broker serves
    /// consumers.
    HighWatermark,
    /// Up to the log end offset (every complete, valid batch).
    LogEnd,
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hw" | "high-watermark" => Ok(Isolation::HighWatermark),
            "log-end" | "leo" => Ok(Isolation::LogEnd),
            _ => Err(format!("unknown isolation {s:?} (hw | log-end)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// Parses a partition directory name `<topic>-<partition>`; `None` for other names
    /// (`-delete`, `-future`, `-stray` dirs, files).
    pub fn from_dir_name(name: &str) -> Option<Self> {
        let (topic, p) = name.rsplit_once('-')?;
        if topic.is_empty() || p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(TopicPartition::new(topic, p.parse().ok()?))
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start: i64,
    /// Next offset to be written: last offset of the last complete valid batch + 1.
    pub log_end: i64,
    /// From `replication-offset-checkpoint` when present (bounded by log start and log end),
    /// else the log end.
    pub high_watermark: i64,
    /// Last stable offset: READ_COMMITTED reads stop here (first offset of the earliest
    /// transaction not yet decided below the readable end; the readable end when none).
    pub last_stable: i64,
}

impl PartitionOffsets {
    pub fn readable_end(&self, iso: Isolation) -> i64 {
        match iso {
            Isolation::HighWatermark => self.high_watermark,
            Isolation::LogEnd => self.log_end,
        }
    }
}

/// Whole batches of one segment, borrowed from its mapping. Cloning clones Arcs only.
#[derive(Clone, Debug)]
pub struct ReadSlice {
    /// The segment file.
    pub path: Arc<PathBuf>,
    /// The open segment file: sendfile(2) / pread source.
    pub file: Arc<File>,
    /// Read-only mapping covering `position..position + len`.
    pub map: Arc<memmap2::Mmap>,
    /// File position of the first byte (a batch start).
    pub position: u64,
    /// Bytes of whole batches (0: nothing to read).
    pub len: usize,
    /// Base offset of the first batch.
    pub first_offset: i64,
    /// Last offset of the last batch + 1 (the requested offset when empty).
    pub next_offset: i64,
    /// Offsets of the partition as of this read.
    pub offsets: PartitionOffsets,
    /// Identity of the segment's bytes (one per opened segment file).
    pub source: SourceId,
    /// The first batch's header when the read had it at hand (the segment's newest batch,
    /// from its validation scan: a tailing reply's), so [`ReadSlice::header_at`] need not
    /// read it again.
    pub first_header: Option<batch::BatchHeader>,
}

impl ReadSlice {
    /// The batches in the segment mapping: for the kernel only (iovecs, `pwrite`, a
    /// placeholder whose address identifies the slice). Reading these bytes in user space
    /// raises SIGBUS if the broker truncated the file meanwhile: use [`ReadSlice::read_at`].
    pub fn bytes(&self) -> &[u8] {
        let start = self.position as usize;
        &self.map[start..start + self.len]
    }

    /// Copies bytes `at..at + dst.len()` of the slice with `pread`. Fails (never a signal)
    /// if the file no longer holds them: truncated under the reader.
    pub fn read_at(&self, at: usize, dst: &mut [u8]) -> std::io::Result<()> {
        if at + dst.len() > self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bytes {at}+{} past a {}-byte slice", dst.len(), self.len),
            ));
        }
        read::read_exact_at(&self.file, dst, self.position + at as u64)
    }

    /// The batches, copied with `pread` (tests, tools, copy-mode transports).
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; self.len];
        self.read_at(0, &mut v)?;
        Ok(v)
    }

    /// The header of the batch starting at byte `at` of the slice, read with `pread`.
    pub fn header_at(&self, at: usize) -> std::io::Result<batch::BatchHeader> {
        if let Some(h) = self.first_header.filter(|_| at == 0) {
            return Ok(h);
        }
        let mut b = [0u8; batch::BATCH_HEADER_LEN];
        self.read_at(at, &mut b)?;
        batch::BatchHeader::parse(&b)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
#[cfg(test)]
mod tail_tests;
#[cfg(test)]
mod tests;
