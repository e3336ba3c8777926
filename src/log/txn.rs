//! Transactions in a partition log, tracked as a broker's `ProducerStateManager` does:
//! ongoing transactions (first offset per producer id), the aborted ones (what READ_COMMITTED
//! consumers must drop) and the last stable offset (LSO).
//!
//! Sources, in the broker's order: the newest producer-state `<offset>.snapshot` (ongoing
//! transactions as of that offset), the `<segment>.txnindex` files (aborted transactions whose
//! markers lie before it), then the batches themselves from the snapshot offset on
//! (transactional data batches open a transaction, COMMIT/ABORT control batches end it).
//!
//! Formats (big endian):
//! - `.txnindex`: 34-byte entries: version i16 (0) | producer id i64 | first offset i64 |
//!   last offset i64 (the marker) | last stable offset i64 (when the marker was written).
//! - `.snapshot`: version i16 (1) | crc u32 (CRC32C of everything after it) | count i32 |
//!   count × (producer id i64 | epoch i16 | last sequence i32 | last offset i64 |
//!   offset delta i32 | timestamp i64 | coordinator epoch i32 | current txn first offset
//!   i64, -1 when none).
//! - control record key: version i16 (0) | type i16 (0 ABORT, 1 COMMIT); value: version i16
//!   (0) | coordinator epoch i32.

pub mod filter;

use std::collections::BTreeMap;
use std::path::Path;

use super::batch::BatchHeader;
use super::error::LogError;
use super::segment::file_stem;

pub const TXN_INDEX_SUFFIX: &str = ".txnindex";
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";
pub const TXN_INDEX_ENTRY_LEN: usize = 34;
const SNAPSHOT_VERSION: i16 = 1;
const SNAPSHOT_ENTRY_LEN: usize = 46;

/// One aborted transaction (a `.txnindex` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// Offset of the ABORT marker.
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

impl AbortedTxn {
    pub fn to_bytes(&self) -> [u8; TXN_INDEX_ENTRY_LEN] {
        let mut b = [0u8; TXN_INDEX_ENTRY_LEN];
        b[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        b[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        b[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        b[26..34].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        b
    }
}

/// Parses a `.txnindex`; errors give the byte position of the bad entry. A trailing partial
/// entry is an error too (a broker writes whole entries).
pub fn parse_txn_index(buf: &[u8]) -> Result<Vec<AbortedTxn>, (usize, String)> {
    let mut out = Vec::with_capacity(buf.len() / TXN_INDEX_ENTRY_LEN);
    for (i, e) in buf.chunks(TXN_INDEX_ENTRY_LEN).enumerate() {
        let at = i * TXN_INDEX_ENTRY_LEN;
        if e.len() < TXN_INDEX_ENTRY_LEN {
            return Err((at, format!("partial entry of {} bytes", e.len())));
        }
        let version = be_i16(e, 0);
        if version != 0 {
            return Err((at, format!("unsupported entry version {version}")));
        }
        let t = AbortedTxn {
            producer_id: be_i64(e, 2),
            first_offset: be_i64(e, 10),
            last_offset: be_i64(e, 18),
            last_stable_offset: be_i64(e, 26),
        };
        if t.first_offset < 0 || t.last_offset < t.first_offset {
            return Err((
                at,
                format!(
                    "impossible range: first offset {}, last offset {}",
                    t.first_offset, t.last_offset
                ),
            ));
        }
        out.push(t);
    }
    Ok(out)
}

/// One producer of a producer-state snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_offset: i64,
    pub offset_delta: i32,
    pub timestamp: i64,
    pub coordinator_epoch: i32,
    /// First offset of the producer's ongoing transaction, -1 when none.
    pub current_txn_first_offset: i64,
}

/// Parses a producer-state snapshot (version 1, CRC-checked).
pub fn parse_snapshot(buf: &[u8]) -> Result<Vec<SnapshotEntry>, String> {
    if buf.len() < 10 {
        return Err(format!("{} bytes, shorter than the header", buf.len()));
    }
    let version = be_i16(buf, 0);
    if version != SNAPSHOT_VERSION {
        return Err(format!("unsupported snapshot version {version}"));
    }
    let stored = be_i32(buf, 2) as u32;
    let computed = crc32c::crc32c(&buf[6..]);
    if stored != computed {
        return Err(format!(
            "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let count = be_i32(buf, 6);
    let count = usize::try_from(count).map_err(|_| format!("negative entry count {count}"))?;
    let body = &buf[10..];
    if count.checked_mul(SNAPSHOT_ENTRY_LEN) != Some(body.len()) {
        return Err(format!(
            "{count} entries announced, {} bytes of entries present",
            body.len()
        ));
    }
    Ok(body
        .chunks_exact(SNAPSHOT_ENTRY_LEN)
        .map(|e| SnapshotEntry {
            producer_id: be_i64(e, 0),
            epoch: be_i16(e, 8),
            last_sequence: be_i32(e, 10),
            last_offset: be_i64(e, 14),
            offset_delta: be_i32(e, 22),
            timestamp: be_i64(e, 26),
            coordinator_epoch: be_i32(e, 34),
            current_txn_first_offset: be_i64(e, 38),
        })
        .collect())
}

/// Serialises a producer-state snapshot as a broker writes it.
pub fn format_snapshot(entries: &[SnapshotEntry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + entries.len() * SNAPSHOT_ENTRY_LEN);
    b.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&(entries.len() as i32).to_be_bytes());
    for e in entries {
        b.extend_from_slice(&e.producer_id.to_be_bytes());
        b.extend_from_slice(&e.epoch.to_be_bytes());
        b.extend_from_slice(&e.last_sequence.to_be_bytes());
        b.extend_from_slice(&e.last_offset.to_be_bytes());
        b.extend_from_slice(&e.offset_delta.to_be_bytes());
        b.extend_from_slice(&e.timestamp.to_be_bytes());
        b.extend_from_slice(&e.coordinator_epoch.to_be_bytes());
        b.extend_from_slice(&e.current_txn_first_offset.to_be_bytes());
    }
    let crc = crc32c::crc32c(&b[6..]);
    b[2..6].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The marker of a control batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Abort,
    Commit,
    /// Another control record type (e.g. a KRaft or leader-change record): not a transaction end.
    Other(i16),
}

pub const ABORT: i16 = 0;
pub const COMMIT: i16 = 1;

/// The control record key of a marker.
pub fn marker_key(commit: bool) -> [u8; 4] {
    let t = if commit { COMMIT } else { ABORT };
    let mut k = [0u8; 4];
    k[2..4].copy_from_slice(&t.to_be_bytes());
    k
}

/// The control record value of a marker (version 0, coordinator epoch).
pub fn marker_value(coordinator_epoch: i32) -> [u8; 6] {
    let mut v = [0u8; 6];
    v[2..6].copy_from_slice(&coordinator_epoch.to_be_bytes());
    v
}

/// The marker of a (CRC-checked) control batch, from its first record's key.
pub fn marker_of(batch: &[u8]) -> Result<Marker, String> {
    let (_, recs) = super::record::decode_batch_refs(batch).map_err(|e| e.to_string())?;
    let key = recs
        .first()
        .and_then(|r| r.key)
        .ok_or("control batch without a record key")?;
    if key.len() < 4 {
        return Err(format!("control record key of {} bytes", key.len()));
    }
    Ok(match be_i16(key, 2) {
        ABORT => Marker::Abort,
        COMMIT => Marker::Commit,
        t => Marker::Other(t),
    })
}

/// Per producer id, what `inspect` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerSummary {
    pub epoch: i16,
    pub data_batches: u64,
    pub commits: u64,
    pub aborts: u64,
    /// First offset of the ongoing transaction.
    pub open_since: Option<i64>,
}

/// The transaction state of one partition, fed batch by batch in offset order.
#[derive(Clone, Debug, Default)]
pub struct TxnState {
    /// Next offset to feed.
    pub scanned_to: i64,
    /// Producer id -> first offset of its ongoing transaction.
    open: BTreeMap<i64, i64>,
    /// (marker offset, producer id) -> aborted transaction.
    aborted: BTreeMap<(i64, i64), AbortedTxn>,
    /// Marker offset -> first offset, for completed transactions whose marker may still be
    /// above the high watermark (those are unstable until it passes them).
    completed: BTreeMap<i64, i64>,
    producers: BTreeMap<i64, ProducerSummary>,
}

impl TxnState {
    /// Starts at `offset` with the ongoing transactions of a snapshot taken there.
    pub fn from_snapshot(offset: i64, entries: &[SnapshotEntry]) -> Self {
        let mut s = TxnState {
            scanned_to: offset,
            ..Default::default()
        };
        for e in entries {
            let p = s.producers.entry(e.producer_id).or_default();
            p.epoch = e.epoch;
            if e.current_txn_first_offset >= 0 {
                s.open.insert(e.producer_id, e.current_txn_first_offset);
                p.open_since = Some(e.current_txn_first_offset);
            }
        }
        s
    }

    /// Adds aborted transactions from `.txnindex` files (duplicates of scanned markers merge).
    pub fn add_aborted(&mut self, txns: impl IntoIterator<Item = AbortedTxn>) {
        for t in txns {
            self.aborted.insert((t.last_offset, t.producer_id), t);
        }
    }

    /// Feeds one valid batch (in offset order); `marker` for control batches.
    pub fn on_batch(&mut self, h: &BatchHeader, marker: Option<Marker>) {
        if h.last_offset() < self.scanned_to {
            return;
        }
        self.scanned_to = h.next_offset();
        if !h.is_transactional() || h.producer_id < 0 {
            return;
        }
        let pid = h.producer_id;
        let p = self.producers.entry(pid).or_default();
        p.epoch = h.producer_epoch;
        match marker {
            None if h.is_control() => {}
            None => {
                p.data_batches += 1;
                self.open.entry(pid).or_insert(h.base_offset);
                p.open_since.get_or_insert(h.base_offset);
            }
            Some(Marker::Other(_)) => {}
            Some(m) => {
                // Like the broker: a marker without an open transaction ends an empty one.
                let first = self.open.remove(&pid).unwrap_or(h.base_offset);
                p.open_since = None;
                let at = h.base_offset;
                if m == Marker::Abort {
                    p.aborts += 1;
                    let lso = self.open.values().copied().min().unwrap_or(at + 1);
                    self.aborted.insert(
                        (at, pid),
                        AbortedTxn {
                            producer_id: pid,
                            first_offset: first,
                            last_offset: at,
                            last_stable_offset: lso,
                        },
                    );
                } else {
                    p.commits += 1;
                }
                self.completed.insert(at, first);
            }
        }
    }

    /// The last stable offset under high watermark `hw`: the first offset of the earliest
    /// transaction that is ongoing or whose marker is not below `hw`, else `hw`. Forgets
    /// completed transactions the high watermark has passed.
    pub fn last_stable(&mut self, hw: i64) -> i64 {
        self.completed = self.completed.split_off(&hw);
        let open = self.open.values().copied().min();
        let unreplicated = self.completed.values().copied().min();
        [Some(hw), open, unreplicated]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(hw)
    }

    /// The broker's rule for a fetch of `[fetch_offset, upper_bound)`: the aborted
    /// transactions with `last_offset >= fetch_offset && first_offset < upper_bound`, as
    /// (producer id, first offset), in marker order.
    pub fn aborted_in(&self, fetch_offset: i64, upper_bound: i64) -> Vec<(i64, i64)> {
        self.aborted_overlapping(fetch_offset, upper_bound)
            .map(|t| (t.producer_id, t.first_offset))
            .collect()
    }

    /// [`Self::aborted_in`] with whole entries (the marker offsets too).
    pub fn aborted_overlapping(
        &self,
        fetch_offset: i64,
        upper_bound: i64,
    ) -> impl Iterator<Item = &AbortedTxn> {
        self.aborted
            .range((fetch_offset, i64::MIN)..)
            .map(|(_, t)| t)
            .filter(move |t| t.first_offset < upper_bound)
    }

    /// Drops aborted transactions that end below the log start (their data is gone).
    pub fn forget_below(&mut self, log_start: i64) {
        self.aborted = self.aborted.split_off(&(log_start, i64::MIN));
    }

    pub fn ongoing(&self) -> &BTreeMap<i64, i64> {
        &self.open
    }

    pub fn aborted(&self) -> impl Iterator<Item = &AbortedTxn> {
        self.aborted.values()
    }

    pub fn producers(&self) -> &BTreeMap<i64, ProducerSummary> {
        &self.producers
    }
}

/// Offsets of the `<20 digits>.snapshot` files of a partition dir, newest first.
pub fn list_snapshots(dir: &Path) -> std::io::Result<Vec<i64>> {
    let mut out: Vec<i64> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SNAPSHOT_SUFFIX)) else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(o) = stem.parse() {
                out.push(o);
            }
        }
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    Ok(out)
}

/// The starting state of a partition whose segments have base offsets `bases` and whose log
/// ends at `log_end`: the newest readable snapshot at or below the log end, plus the aborted
/// transactions of the `.txnindex` files that end before it. A damaged snapshot is skipped
/// (an older one, or the log start, is used); a damaged `.txnindex` below the start forces
/// a full scan from the first segment, so no aborted transaction is ever missed. Problems
/// are logged with file and position.
pub fn load(dir: &Path, bases: &[i64], log_end: i64) -> TxnState {
    let first = bases.first().copied().unwrap_or(0);
    let mut state = TxnState {
        scanned_to: first,
        ..Default::default()
    };
    match list_snapshots(dir) {
        Ok(snaps) => {
            for off in snaps.into_iter().filter(|&o| o <= log_end && o >= first) {
                let path = dir.join(format!("{}{SNAPSHOT_SUFFIX}", file_stem(off)));
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| parse_snapshot(&b))
                {
                    Ok(entries) => {
                        state = TxnState::from_snapshot(off, &entries);
                        break;
                    }
                    Err(e) => log::warn!(
                        "{}: {e}; ignored (an older snapshot or the log itself is used)",
                        path.display()
                    ),
                }
            }
        }
        Err(e) => log::warn!("{}: listing snapshots: {e}", dir.display()),
    }
    let start = state.scanned_to;
    let mut aborted = Vec::new();
    for &b in bases.iter().filter(|&&b| b < start) {
        let path = dir.join(format!("{}{TXN_INDEX_SUFFIX}", file_stem(b)));
        let buf = match std::fs::read(&path) {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                log::warn!(
                    "{}: {e}; rebuilding transactions from the log",
                    path.display()
                );
                return TxnState {
                    scanned_to: first,
                    ..Default::default()
                };
            }
        };
        match parse_txn_index(&buf) {
            Ok(t) => aborted.extend(t.into_iter().filter(|t| t.last_offset < start)),
            Err((at, why)) => {
                log::warn!(
                    "{}: corrupt at byte {at}: {why}; rebuilding transactions from the log",
                    path.display()
                );
                return TxnState {
                    scanned_to: first,
                    ..Default::default()
                };
            }
        }
    }
    state.add_aborted(aborted);
    state
}

/// Appends one entry to `<dir>/<segment base>.txnindex` (what a broker does on an ABORT).
pub fn append_txn_index(dir: &Path, segment_base: i64, t: &AbortedTxn) -> Result<(), LogError> {
    use std::io::Write;
    let path = dir.join(format!("{}{TXN_INDEX_SUFFIX}", file_stem(segment_base)));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| LogError::io(&path, e))?;
    f.write_all(&t.to_bytes())
        .map_err(|e| LogError::io(&path, e))
}

#[cfg(test)]
mod tests;
