//! One partition's segments, validated once (with pread) and served without copying.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, TryLockError};

use memmap2::{Mmap, MmapOptions};

use super::batch::BatchHeader;
use super::checkpoint::Checkpoint;
use super::error::LogError;
use super::index;
use super::leader_epoch::LeaderEpochs;
use super::read::{self, HeaderReader};
use super::segment::{self, ScanEnd, INDEX_SUFFIX, TIME_INDEX_SUFFIX};
use super::tail::TailStamps;
use super::txn::{self, TxnState};
use super::{Isolation, PartitionOffsets, ReadSlice, SourceId, TopicPartition};

/// Bytes of batches between two entries of the in-memory sparse index: a lookup scans at
/// most this many bytes of batch headers after the binary search.
const INDEX_STRIDE: u64 = 4096;

/// The active segment is mapped in steps of this many bytes past its end, so an append
/// needs no new mapping: an mmap + munmap per append cost 5-15 us on these VMs (more with
/// another thread of the process on the other core: the munmap's TLB shootdown), and the
/// sender faulted the pages of every new mapping in again. Address space only: nothing is
/// read past the file's end (see [`map_file`]).
const ACTIVE_MAP_STEP: u64 = 64 << 20;

/// One entry of the in-memory sparse index built by the validation scan.
#[derive(Clone, Copy, Debug)]
struct MemEntry {
    /// Base offset of the batch at `position`, relative to the segment base offset.
    rel_offset: u32,
    position: u32,
}

/// What the validation scan found in a segment, and the sparse index it built.
struct SegIndex {
    /// End of the validated prefix: every byte below is a whole, CRC-checked batch.
    valid_end: u64,
    /// Offset after the last valid batch (base offset when there is none).
    next_offset: i64,
    entries: Vec<MemEntry>,
    /// Per entry: the largest batch max timestamp before its position (kept apart so the
    /// offset lookup's binary search touches half the memory).
    max_ts_before: Vec<i64>,
    bytes_since_entry: u64,
    /// Max timestamp of the valid batches (i64::MIN when none).
    max_ts: i64,
    /// How the last validation scan ended (what lies at `valid_end`).
    end: ScanEnd,
    /// Where the last scan that validated bytes started: (`valid_end`, `next_offset`) before
    /// it. A tailing lookup (the transaction feed, a reader waiting at the old end) wants the
    /// batch there; [`find_in`] starts at it instead of walking from the last index entry, up
    /// to 4 KiB of header reads behind.
    resume: (u64, i64),
    /// The last valid batch (position, header): what a tailing reply sends, looked up by the
    /// transaction feed and the read without reading its header again.
    last_batch: Option<(u64, BatchHeader)>,
}

impl SegIndex {
    fn empty(base_offset: i64) -> Self {
        SegIndex {
            valid_end: 0,
            next_offset: base_offset,
            entries: Vec::new(),
            max_ts_before: Vec::new(),
            bytes_since_entry: 0,
            max_ts: i64::MIN,
            end: ScanEnd::Clean,
            resume: (0, base_offset),
            last_batch: None,
        }
    }

    /// Validates bytes `valid_end..len` of `file` (read with pread: never through the map).
    fn scan(&self, file: &File, len: u64, base: i64) -> SegUpdate {
        let mut new_entries = Vec::new();
        let mut new_max_ts_before = Vec::new();
        let mut bytes_since = self.bytes_since_entry;
        let mut max_ts = self.max_ts;
        let mut last_batch = None;
        let s = read::scan_file(file, self.valid_end, len, self.next_offset, |pos, h| {
            last_batch = Some((pos as u64, *h));
            let rel = h.base_offset - base;
            if bytes_since >= INDEX_STRIDE {
                if let (Ok(rel), Ok(position)) = (u32::try_from(rel), u32::try_from(pos)) {
                    new_entries.push(MemEntry {
                        rel_offset: rel,
                        position,
                    });
                    new_max_ts_before.push(max_ts);
                    bytes_since = 0;
                }
            }
            bytes_since += h.total_len() as u64;
            max_ts = max_ts.max(h.max_timestamp);
        });
        SegUpdate {
            map: None,
            len,
            valid_end: s.valid_end as u64,
            next_offset: s.next_offset,
            new_entries,
            new_max_ts_before,
            bytes_since_entry: bytes_since,
            max_ts,
            end: s.end,
            last_batch,
        }
    }

    /// The furthest sparse-index entry after `pos` that a read starting at `start` may reach
    /// without reading a header: at most `limit` bytes from `start`, its batch starting at or
    /// below offset `end` (so every batch before it ends below `end`). Returns its position and
    /// base offset: the bytes before it are whole validated batches, served as they are.
    fn jump(&self, pos: u64, limit: u64, base: i64, end: i64) -> Option<(u64, i64)> {
        let after = self
            .entries
            .partition_point(|e| u64::from(e.position) <= pos);
        let by_bytes = self
            .entries
            .partition_point(|e| u64::from(e.position) <= limit);
        let by_offset = self
            .entries
            .partition_point(|e| base + i64::from(e.rel_offset) <= end);
        let k = by_bytes.min(by_offset);
        (k > after).then(|| {
            let e = self.entries[k - 1];
            (u64::from(e.position), base + i64::from(e.rel_offset))
        })
    }

    fn apply(&mut self, u: SegUpdate, path: &Path) {
        if let ScanEnd::Corrupt { position, reason } = &u.end {
            if self.end != u.end {
                log::warn!(
                    "{}: corrupt batch at byte {position}: {reason}; offsets from {} on are not served from this segment",
                    path.display(),
                    u.next_offset
                );
            }
        }
        if u.valid_end > self.valid_end {
            self.resume = (self.valid_end, self.next_offset);
        }
        self.valid_end = u.valid_end;
        self.next_offset = u.next_offset;
        if u.last_batch.is_some() {
            self.last_batch = u.last_batch;
        }
        self.entries.extend(u.new_entries);
        self.max_ts_before.extend(u.new_max_ts_before);
        self.bytes_since_entry = u.bytes_since_entry;
        self.max_ts = u.max_ts;
        self.end = u.end;
    }
}

/// One segment file, mapped. Its [`SegIndex`] is built when the segment is first used: at
/// once for the active segment (its end is the log end), on the first read for the older
/// ones, so opening a large log dir does not read every byte of it.
struct Segment {
    base_offset: i64,
    path: Arc<PathBuf>,
    file: Arc<File>,
    /// Identity of this opening of the file (a reopened segment gets a new one).
    source: SourceId,
    dev_ino: (u64, u64),
    /// Covers at least `len` bytes (the active segment's: more, see [`ACTIVE_MAP_STEP`]).
    map: Arc<Mmap>,
    /// The file length validated to (or to be, on first use): what the segment holds.
    len: u64,
    ix: OnceLock<SegIndex>,
    /// Max timestamp of a not yet validated segment per the broker's `.timeindex` (its last
    /// entry, written on roll): lets timestamp lookups skip the segment without a scan.
    ts_hint: Option<i64>,
}

/// What a refresh looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// The partition dir: segments added, removed or replaced, metadata files.
    All,
    /// The active segment's open file (a write event): its length from fstat.
    Tail,
    /// The active segment's open file at the length a busy poller's fstat just saw.
    TailAt(u64),
}

/// What a refresh found for one existing segment (computed without the state lock).
struct SegUpdate {
    map: Option<Arc<Mmap>>,
    /// The file length scanned to.
    len: u64,
    valid_end: u64,
    next_offset: i64,
    new_entries: Vec<MemEntry>,
    new_max_ts_before: Vec<i64>,
    bytes_since_entry: u64,
    max_ts: i64,
    end: ScanEnd,
    last_batch: Option<(u64, BatchHeader)>,
}

/// Maps `len` bytes of `file`; `grows` (the active segment): up to the next multiple of
/// [`ACTIVE_MAP_STEP`] past them, so that appends fit in the mapping.
fn map_file(path: &Path, file: &File, len: u64, grows: bool) -> Result<Mmap, LogError> {
    let span = if grows {
        (len / ACTIVE_MAP_STEP + 1) * ACTIVE_MAP_STEP
    } else {
        len
    };
    let span = usize::try_from(span)
        .map_err(|_| LogError::Invalid(format!("{}: too large to map", path.display())))?;
    // SAFETY: the mapping is read-only and nothing in user space reads through it (see
    // `log::read`): headers, scans and copies use pread, and the mapping only goes to the
    // kernel (iovecs, pwrite) for validated bytes below the file's end, and the kernel
    // answers a page past a (truncated) end with EFAULT rather than SIGBUS. The file stays
    // open for the mapping's lifetime.
    unsafe { MmapOptions::new().len(span).map(file) }.map_err(|e| LogError::io(path, e))
}

impl Segment {
    /// Opens and maps the segment file at `path` (a `.log`, or a `.log.swap` standing in);
    /// `validate`: build its index now (else on first use).
    fn open_path(
        path: PathBuf,
        base_offset: i64,
        validate: bool,
    ) -> Result<Option<Segment>, LogError> {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io(&path, e)),
        };
        let md = file.metadata().map_err(|e| LogError::io(&path, e))?;
        let map = map_file(&path, &file, md.len(), validate)?;
        let ts_hint = if validate {
            None
        } else {
            let ti = segment::index_path(&path, base_offset, TIME_INDEX_SUFFIX);
            std::fs::read(ti)
                .ok()
                .and_then(|b| match index::parse_time_index(&b) {
                    (e, None) => e.last().map(|e| e.timestamp),
                    _ => None,
                })
        };
        let file = Arc::new(file);
        let seg = Segment {
            base_offset,
            path: Arc::new(path),
            source: SourceId::new(file.clone()),
            file,
            dev_ino: (md.dev(), md.ino()),
            map: Arc::new(map),
            len: md.len(),
            ix: OnceLock::new(),
            ts_hint,
        };
        if validate {
            seg.ix();
        }
        Ok(Some(seg))
    }

    /// The validated state, validating the whole segment on first use.
    fn ix(&self) -> &SegIndex {
        self.ix.get_or_init(|| {
            let mut ix = SegIndex::empty(self.base_offset);
            let u = ix.scan(&self.file, self.len, self.base_offset);
            ix.apply(u, &self.path);
            self.check_offset_index(&ix);
            ix
        })
    }

    /// Cross-checks the broker's `.index` against the validated batches. The reader finds
    /// positions with its own sparse index (built by the validation scan it needs anyway for
    /// the CRCs), so a damaged `.index` costs nothing; it is worth a warning all the same.
    fn check_offset_index(&self, ix: &SegIndex) {
        // A `.log.swap` has its `.index.swap` (`with_extension` made `.log.index` of it, a
        // file that never exists, and the check was silently skipped).
        let path = segment::index_path(&self.path, self.base_offset, INDEX_SUFFIX);
        let Ok(buf) = std::fs::read(&path) else {
            return;
        };
        let (entries, problem) = index::parse_index(&buf);
        let mut data = HeaderReader::new(&self.file, ix.valid_end);
        let mismatch = entries.iter().find(|e| {
            let offset = self.base_offset + i64::from(e.relative_offset);
            // Entries past the validated end may be a tail still being written: not checked.
            u64::from(e.position) < ix.valid_end
                && find_in(ix, &mut data, self.base_offset, offset).ok()
                    != Some(Some(u64::from(e.position)))
        });
        if let Some((at, why)) = problem {
            log::warn!(
                "{}: byte {at}: {why}; ignored (kxgw indexes segments from its own scan)",
                path.display()
            );
        } else if let Some(e) = mismatch {
            log::warn!(
                "{}: entry {e:?} does not point at the batch of offset {}; ignored (kxgw indexes segments from its own scan)",
                path.display(),
                self.base_offset + i64::from(e.relative_offset)
            );
        }
    }

    /// Validates what was appended since the last scan, up to the file's length `len`
    /// (`map`: a new mapping, when the old one does not cover it).
    fn scan(&self, map: Option<Arc<Mmap>>, len: u64) -> SegUpdate {
        let mut u = self.ix().scan(&self.file, len, self.base_offset);
        u.map = map;
        u
    }

    fn apply(&mut self, mut u: SegUpdate) {
        if let Some(m) = u.map.take() {
            self.map = m;
        }
        self.len = u.len;
        self.ix();
        if let Some(ix) = self.ix.get_mut() {
            ix.apply(u, &self.path);
        }
    }

    /// Header reads of the validated bytes (pread: a truncated file is an error, not SIGBUS).
    fn headers(&self) -> HeaderReader<'_> {
        let ix = self.ix();
        HeaderReader::new(&self.file, ix.valid_end).knowing(ix.last_batch)
    }

    /// Max timestamp, from the `.timeindex` hint while the segment is not validated yet.
    fn max_ts(&self) -> i64 {
        match (self.ix.get(), self.ts_hint) {
            (None, Some(hint)) => hint,
            _ => self.ix().max_ts,
        }
    }

    /// Position of the first batch whose last offset is >= `offset`.
    fn find(&self, offset: i64) -> Result<Option<u64>, LogError> {
        let ix = self.ix();
        let found = find_in(ix, &mut self.headers(), self.base_offset, offset)
            .map_err(|e| LogError::io(self.path.as_path(), e))?;
        match found {
            Some(p) => Ok(Some(p)),
            None => {
                self.corruption()?;
                Ok(None)
            }
        }
    }

    fn corruption(&self) -> Result<(), LogError> {
        match &self.ix().end {
            ScanEnd::Corrupt { position, reason } => Err(LogError::corrupt(
                self.path.as_path(),
                *position as u64,
                reason,
            )),
            _ => Ok(()),
        }
    }
}

/// The broker's lookup: the sparse index entry at or below `offset`, then a short scan of
/// batch headers (of validated bytes only) for the first batch whose last offset >= `offset`.
fn find_in(
    ix: &SegIndex,
    data: &mut HeaderReader<'_>,
    base: i64,
    offset: i64,
) -> std::io::Result<Option<u64>> {
    let rel = offset - base;
    let i = ix
        .entries
        .partition_point(|e| i64::from(e.rel_offset) <= rel);
    let mut pos = if i == 0 {
        0
    } else {
        u64::from(ix.entries[i - 1].position)
    };
    // Every batch before the resume point ends below its offset, like before an entry.
    let (resume_pos, resume_offset) = ix.resume;
    if offset >= resume_offset && resume_pos > pos {
        pos = resume_pos;
    }
    while pos < ix.valid_end {
        let b = data.span(pos)?;
        if b.last_offset >= offset {
            return Ok(Some(pos));
        }
        pos += b.size as u64;
    }
    Ok(None)
}

/// What [`walk`] found: `len` bytes of whole batches from the start position.
struct Walk {
    len: usize,
    first_offset: i64,
    next_offset: i64,
    /// Whether some bytes were taken from the sparse index without reading their headers.
    jumped: bool,
}

/// The batches of `s` from byte `start` (offset `offset`) below offset `end`, at most
/// `max_bytes` of them (at least the first). With `jump`, whole batches up to an index entry
/// are taken without reading their headers (one entry per 4 KiB of batches): a fetch then
/// reads the first header, jumps, and reads the few after the last entry it may reach.
fn walk(
    s: &Segment,
    start: u64,
    offset: i64,
    end: i64,
    max_bytes: usize,
    jump: bool,
) -> Result<Walk, LogError> {
    let mut data = s.headers();
    let ix = s.ix();
    let limit = start.saturating_add(max_bytes as u64);
    let mut pos = start;
    let mut w = Walk {
        len: 0,
        first_offset: offset,
        next_offset: offset,
        jumped: false,
    };
    while pos < ix.valid_end {
        if jump && w.len > 0 {
            if let Some((p, next)) = ix.jump(pos, limit, s.base_offset, end) {
                w.len = (p - start) as usize;
                w.next_offset = next;
                w.jumped = true;
                pos = p;
                continue;
            }
        }
        let (base, last, size) = match data.span(pos) {
            Ok(b) => (b.base_offset, b.last_offset, b.size),
            // Truncated under us: serve the batches read so far; with none, say why (the
            // next refresh sees the shorter file and the consumer gets what still exists).
            Err(e) if w.len == 0 => return Err(LogError::io(s.path.as_path(), e)),
            Err(_) => break,
        };
        if last >= end || (w.len > 0 && w.len + size > max_bytes) {
            break;
        }
        if w.len == 0 {
            w.first_offset = base;
        }
        w.len += size;
        w.next_offset = last + 1;
        pos += size as u64;
    }
    Ok(w)
}

struct PartState {
    segments: BTreeMap<i64, Segment>,
    offsets: PartitionOffsets,
}

/// One `<topic>-<partition>` directory.
pub struct Partition {
    tp: TopicPartition,
    dir: PathBuf,
    isolation: Isolation,
    state: RwLock<PartState>,
    /// Serialises refreshes: only a refresh mutates the state, so it can scan outside the lock.
    refresh_lock: Mutex<Option<String>>,
    /// Returned in empty slices of a partition without segments.
    empty: (Arc<PathBuf>, Arc<File>, Arc<Mmap>, SourceId),
    /// Transactions (None until the first refresh loads them).
    txn: RwLock<Option<TxnState>>,
    /// `partition.metadata` and `leader-epoch-checkpoint`, as of the last full refresh.
    meta: RwLock<PartMeta>,
    /// High watermark and last stable offset learnt from the cluster (cluster mode; -1:
    /// none). They replace the checkpoint's, which only ever lags them.
    live_hw: AtomicI64,
    live_lso: AtomicI64,
    /// Log start offset learnt from the cluster (cluster mode; -1: none): reads below it
    /// are out of range even where the local disk still holds older segments.
    live_start: AtomicI64,
    /// When the last advancing tail refresh detected and validated its growth.
    tail: TailStamps,
}

#[derive(Clone, Debug)]
struct PartMeta {
    topic_id: Result<Option<uuid::Uuid>, String>,
    epochs: LeaderEpochs,
    /// Last problem logged, so a damaged file is reported once, not on every refresh.
    epochs_err: Option<String>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("tp", &self.tp)
            .field("dir", &self.dir)
            .field("offsets", &self.offsets())
            .finish()
    }
}

impl Partition {
    pub(crate) fn new(
        dir: PathBuf,
        tp: TopicPartition,
        isolation: Isolation,
    ) -> Result<Self, LogError> {
        let dir_file = File::open(&dir).map_err(|e| LogError::io(&dir, e))?;
        let empty_map = MmapOptions::new()
            .len(0)
            .map_anon()
            .and_then(|m| m.make_read_only())
            .map_err(|e| LogError::io(&dir, e))?;
        Ok(Partition {
            empty: {
                let dir_file = Arc::new(dir_file);
                (
                    Arc::new(dir.clone()),
                    dir_file.clone(),
                    Arc::new(empty_map),
                    SourceId::new(dir_file),
                )
            },
            tp,
            dir,
            isolation,
            state: RwLock::new(PartState {
                segments: BTreeMap::new(),
                offsets: PartitionOffsets {
                    log_start: 0,
                    log_end: 0,
                    high_watermark: 0,
                    last_stable: 0,
                },
            }),
            refresh_lock: Mutex::new(None),
            txn: RwLock::new(None),
            meta: RwLock::new(PartMeta {
                topic_id: Ok(None),
                epochs: LeaderEpochs::default(),
                epochs_err: None,
            }),
            live_hw: AtomicI64::new(-1),
            live_lso: AtomicI64::new(-1),
            live_start: AtomicI64::new(-1),
            tail: TailStamps::default(),
        })
    }

    /// Timestamps of the last tail refresh that advanced the readable end.
    pub fn tail_stamps(&self) -> &TailStamps {
        &self.tail
    }

    /// Whether the active segment's file is longer (an append) or shorter (truncated in
    /// place) than what was last scanned: one fstat, no lock but the state's read lock (the
    /// busy poller's per-turn check; a follower without write notifications would see a
    /// truncation only at its next timed rescan). A new segment (roll) or a replaced file
    /// are the follower's to find.
    pub fn tail_changed(&self) -> bool {
        self.tail_length_change().is_some()
    }

    /// [`Self::tail_changed`], with the active segment's new length.
    pub(crate) fn tail_length_change(&self) -> Option<u64> {
        let st = self.state();
        let seg = st.segments.values().next_back()?;
        let len = seg.file.metadata().ok()?.len();
        (len != seg.len).then_some(len)
    }

    /// Records the high watermark and last stable offset the cluster reported (cluster
    /// mode); the next refresh applies them. Returns whether they changed.
    pub(crate) fn set_live(&self, hw: i64, lso: i64) -> bool {
        let old_hw = self.live_hw.swap(hw, Ordering::SeqCst);
        let old_lso = self.live_lso.swap(lso, Ordering::SeqCst);
        old_hw != hw || old_lso != lso
    }

    /// Records the log start offset the cluster reported (cluster mode); the next refresh
    /// applies it. Returns whether it changed.
    pub(crate) fn set_live_start(&self, start: i64) -> bool {
        self.live_start.swap(start, Ordering::SeqCst) != start
    }

    fn state(&self) -> RwLockReadGuard<'_, PartState> {
        // A panic while holding the lock cannot leave the state half-updated (updates are
        // plain assignments), so a poisoned lock is still usable.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn topic(&self) -> &str {
        &self.tp.topic
    }

    pub fn partition(&self) -> i32 {
        self.tp.partition
    }

    pub fn topic_partition(&self) -> &TopicPartition {
        &self.tp
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    pub fn offsets(&self) -> PartitionOffsets {
        self.state().offsets
    }

    pub fn readable_end(&self) -> i64 {
        self.offsets().readable_end(self.isolation)
    }

    /// Base offsets of the segments currently known.
    pub fn segment_bases(&self) -> Vec<i64> {
        self.state().segments.keys().copied().collect()
    }

    fn empty_slice(&self, st: &PartState, offset: i64) -> ReadSlice {
        let (path, file, map, source) = match st.segments.values().next_back() {
            Some(s) => (
                s.path.clone(),
                s.file.clone(),
                s.map.clone(),
                s.source.clone(),
            ),
            None => self.empty.clone(),
        };
        ReadSlice {
            path,
            file,
            map,
            source,
            position: 0,
            len: 0,
            first_offset: offset,
            next_offset: offset,
            offsets: st.offsets,
            first_header: None,
        }
    }

    /// Kafka's fetch rule: whole batches from the one containing `offset`, as many as fit in
    /// `max_bytes` but at least one, all below the readable end, from one segment.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadSlice, LogError> {
        self.read_isolated(offset, max_bytes, false)
    }

    /// [`Self::read`]; `committed` (READ_COMMITTED): nothing at or past the last stable
    /// offset (an offset between it and the readable end gets an empty slice).
    pub fn read_isolated(
        &self,
        offset: i64,
        max_bytes: usize,
        committed: bool,
    ) -> Result<ReadSlice, LogError> {
        let st = self.state();
        let offsets = st.offsets;
        let end = offsets.readable_end(self.isolation);
        if offset == end {
            // A consumer caught up with a log whose validation stopped at a corrupt batch
            // must learn why it gets nothing, instead of waiting forever.
            if end == offsets.log_end {
                if let Some(last) = st.segments.values().next_back() {
                    last.corruption()?;
                }
            }
            return Ok(self.empty_slice(&st, offset));
        }
        if offset < offsets.log_start || offset > end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: offsets.log_start,
                log_end: end,
            });
        }
        let end = if committed {
            offsets.last_stable.min(end)
        } else {
            end
        };
        if offset >= end {
            return Ok(self.empty_slice(&st, offset));
        }
        let mut seg = st
            .segments
            .range(..=offset)
            .next_back()
            .or_else(|| st.segments.iter().next())
            .map(|(_, s)| s);
        while let Some(s) = seg {
            if let Some(pos) = s.find(offset)? {
                return self.collect(s, pos, offset, end, max_bytes, offsets);
            }
            // Not in this segment (compacted away, or a gap before the next one).
            seg = st
                .segments
                .range((Bound::Excluded(s.base_offset), Bound::Unbounded))
                .next()
                .map(|(_, s)| s);
        }
        Ok(self.empty_slice(&st, offset))
    }

    fn collect(
        &self,
        s: &Segment,
        start: u64,
        offset: i64,
        end: i64,
        max_bytes: usize,
        offsets: PartitionOffsets,
    ) -> Result<ReadSlice, LogError> {
        let mut w = walk(s, start, offset, end, max_bytes, true)?;
        // Jumped-over bytes were not read: make sure the file still holds them (a segment
        // truncated in place under the reader), else walk every header as before.
        if w.jumped
            && s.file
                .metadata()
                .map_or(true, |m| m.len() < start + w.len as u64)
        {
            w = walk(s, start, offset, end, max_bytes, false)?;
        }
        Ok(ReadSlice {
            path: s.path.clone(),
            file: s.file.clone(),
            map: s.map.clone(),
            source: s.source.clone(),
            position: if w.len == 0 { 0 } else { start },
            len: w.len,
            first_offset: w.first_offset,
            next_offset: w.next_offset,
            offsets,
            first_header: s
                .ix()
                .last_batch
                .filter(|(pos, _)| w.len > 0 && *pos == start)
                .map(|(_, h)| h),
        })
    }

    /// ListOffsets by timestamp: the first record (in offset order) whose timestamp is
    /// >= `ts`, as (offset, timestamp); `None` if there is none below the readable end.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        let st = self.state();
        let end = st.offsets.readable_end(self.isolation);
        for s in st.segments.values() {
            if s.max_ts() < ts {
                continue;
            }
            // Last sparse entry before which no batch reaches ts.
            let ix = s.ix();
            let i = ix.max_ts_before.partition_point(|&m| m < ts);
            let mut pos = if i == 0 {
                0
            } else {
                u64::from(ix.entries[i - 1].position)
            };
            let mut data = s.headers();
            while pos < ix.valid_end {
                let h = data
                    .header(pos)
                    .map_err(|e| LogError::io(s.path.as_path(), e))?;
                if h.last_offset() >= end {
                    return Ok(None);
                }
                if h.max_timestamp >= ts && h.base_offset >= st.offsets.log_start {
                    let mut b = vec![0u8; h.total_len()];
                    read::read_exact_at(&s.file, &mut b, pos)
                        .map_err(|e| LogError::io(s.path.as_path(), e))?;
                    return Ok(Some(first_record_at_or_after(&b, &h, ts)));
                }
                pos += h.total_len() as u64;
            }
        }
        Ok(None)
    }

    /// Rescans the partition dir (`tail_only`: just the active segment, for "it grew"
    /// notifications). Returns whether the readable end advanced.
    pub(crate) fn refresh(
        &self,
        hw: Option<&Checkpoint>,
        log_start: Option<&Checkpoint>,
        tail_only: bool,
    ) -> Result<bool, LogError> {
        let guard = self.refresh_lock.lock().unwrap_or_else(|e| e.into_inner());
        let scope = if tail_only { Scope::Tail } else { Scope::All };
        self.refresh_guarded(guard, hw, log_start, scope)
    }

    /// A tail-only [`Self::refresh`] of the active segment at length `len` (what the caller's
    /// [`Self::tail_length_change`] just saw) unless another refresh is running (None): the
    /// busy poller does not wait for the follower, whose hooks announce what it finds.
    pub(crate) fn try_refresh_tail(
        &self,
        hw: Option<&Checkpoint>,
        log_start: Option<&Checkpoint>,
        len: u64,
    ) -> Option<Result<bool, LogError>> {
        let guard = match self.refresh_lock.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(self.refresh_guarded(guard, hw, log_start, Scope::TailAt(len)))
    }

    fn refresh_guarded(
        &self,
        mut last_err: MutexGuard<'_, Option<String>>,
        hw: Option<&Checkpoint>,
        log_start: Option<&Checkpoint>,
        scope: Scope,
    ) -> Result<bool, LogError> {
        let res = self.refresh_locked(hw, log_start, scope);
        match &res {
            Err(e) => {
                let msg = e.to_string();
                if last_err.as_deref() != Some(msg.as_str()) {
                    log::warn!("{}: refresh failed: {msg}", self.tp);
                }
                *last_err = Some(msg);
            }
            Ok(_) => *last_err = None,
        }
        res
    }

    fn refresh_locked(
        &self,
        hw: Option<&Checkpoint>,
        log_start: Option<&Checkpoint>,
        scope: Scope,
    ) -> Result<bool, LogError> {
        let tail_only = scope != Scope::All;
        if !tail_only {
            self.refresh_meta();
        }
        let last = {
            let st = self.state();
            st.segments
                .iter()
                .next_back()
                .map(|(b, s)| (*b, PathBuf::clone(&s.path)))
        };
        let served = match last.clone() {
            Some((b, p)) if tail_only => vec![(b, p, false)],
            _ => segment::list_served(&self.dir).map_err(|e| LogError::io(&self.dir, e))?,
        };
        let last = last.map(|(b, _)| b);
        let bases: Vec<i64> = served.iter().map(|(b, _, _)| *b).collect();
        let swaps: Vec<i64> = served.iter().filter(|s| s.2).map(|s| s.0).collect();
        let mut changes = Vec::new();
        if !tail_only || last.is_none() {
            let st = self.state();
            for b in st.segments.keys() {
                if bases.binary_search(b).is_err() {
                    changes.push(Change::Remove(*b));
                }
            }
            drop(st);
        }
        let active = bases.last().copied();
        for (b, path, swap) in served {
            // Scans run without the state lock; only this (serialised) refresh mutates it.
            changes.extend(self.segment_change(b, path, swap, Some(b) == active, scope)?);
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let before = st.offsets.readable_end(self.isolation);
        let lso_before = st.offsets.last_stable;
        apply_changes(&mut st.segments, changes, swaps);
        let (offsets, live) = self.bounds(&st.segments, hw, log_start, lso_before);
        st.offsets = offsets;
        let advanced = offsets.readable_end(self.isolation) > before;
        drop(st);
        let mut lso = self.update_txns();
        let live_lso = self.live_lso.load(Ordering::SeqCst);
        if live_lso >= 0 && live.is_some() {
            lso = lso.min(live_lso.max(offsets.log_start));
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.offsets.last_stable = lso;
        Ok(advanced || lso > lso_before)
    }

    /// What a refresh does with served segment `b` at `path` (None: nothing to do). A swap
    /// is validated at once: its end says which segments it replaces. A tail-only `scope`:
    /// the length comes from the open file, not the path (see below).
    fn segment_change(
        &self,
        b: i64,
        path: PathBuf,
        swap: bool,
        is_active: bool,
        scope: Scope,
    ) -> Result<Option<Change>, LogError> {
        let validate = is_active || swap;
        let st = self.state();
        let Some(seg) = st.segments.get(&b).filter(|s| *s.path == path) else {
            drop(st);
            return reopen(path, b, validate).map(Some);
        };
        // A tail-only refresh (a write event, a busy poller's tail check) asks the open file:
        // a file replaced or deleted at the path is a structural change, found by the
        // structural refresh its rename or delete event (or the timer) brings. The path
        // lookup cost more than the rest of the refresh: 3-4 µs per append on the bench VM.
        let found = match scope {
            // Shorter than what another refresh took in meanwhile: no truncation before fstat
            // says so.
            Scope::TailAt(len) if len >= seg.len => Ok((seg.dev_ino, len)),
            Scope::TailAt(_) | Scope::Tail => {
                seg.file.metadata().map(|m| ((m.dev(), m.ino()), m.len()))
            }
            Scope::All => {
                std::fs::metadata(seg.path.as_path()).map(|m| ((m.dev(), m.ino()), m.len()))
            }
        };
        let (dev_ino, len) = match found {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Some(Change::Remove(b)));
            }
            Err(e) => return Err(LogError::io(seg.path.as_path(), e)),
        };
        if dev_ino != seg.dev_ino || len < seg.len {
            // Replaced (compaction swap, recovery rewrite) or truncated: start over.
            let path = PathBuf::clone(&seg.path);
            drop(st);
            return reopen(path, b, validate).map(Some);
        }
        let grown = len > seg.len;
        if !is_active && seg.ix.get().is_none() && !grown {
            return Ok(None); // not used yet: validated on first read
        }
        if !grown && seg.ix().end == ScanEnd::Clean {
            return Ok(None);
        }
        let map = if len > seg.map.len() as u64 {
            Some(Arc::new(map_file(&seg.path, &seg.file, len, is_active)?))
        } else {
            None
        };
        let u = seg.scan(map, len);
        drop(st);
        Ok(Some(Change::Update(b, u)))
    }

    /// The offsets after a refresh of `segments`, and the cluster's live high watermark if
    /// it has one. `lso_before`: the last stable offset before the refresh.
    fn bounds(
        &self,
        segments: &BTreeMap<i64, Segment>,
        hw: Option<&Checkpoint>,
        log_start: Option<&Checkpoint>,
        lso_before: i64,
    ) -> (PartitionOffsets, Option<i64>) {
        let first_base = segments.keys().next().copied();
        let log_end = segments
            .values()
            .next_back()
            .map_or(0, |s| s.ix().next_offset);
        let ckpt_start = log_start.and_then(|c| c.get(&self.tp)).copied();
        // The cluster's log start (cluster mode) bounds reads like the checkpoint's.
        let live_start = Some(self.live_start.load(Ordering::SeqCst)).filter(|&s| s >= 0);
        let ckpt_start = ckpt_start.max(live_start);
        let log_start = match (first_base, ckpt_start) {
            (Some(b), Some(c)) => b.max(c).min(log_end),
            (Some(b), None) => b,
            (None, Some(c)) => c,
            (None, None) => 0,
        };
        let log_end = log_end.max(log_start);
        // Like a broker: a partition missing from the checkpoint starts at the log start.
        let ckpt = hw.map(|c| c.get(&self.tp).copied().unwrap_or(log_start));
        // The cluster's live value wins; the checkpoint (never ahead of it) is the fallback
        // while the cluster is unreachable. Never past what is on the local disk.
        let live = Some(self.live_hw.load(Ordering::SeqCst)).filter(|&h| h >= 0);
        let high_watermark = match (live, ckpt) {
            (Some(l), Some(c)) => l.max(c),
            (Some(l), None) => l,
            (None, Some(c)) => c,
            (None, None) => log_end,
        }
        .clamp(log_start, log_end);
        let mut offsets = PartitionOffsets {
            log_start,
            log_end,
            high_watermark,
            last_stable: 0,
        };
        // Until the transactions are fed below, the old LSO (never past the new end) holds.
        offsets.last_stable = lso_before.clamp(log_start, offsets.readable_end(self.isolation));
        (offsets, live)
    }

    /// Brings the transaction state up to the log end (loading it first, or again when the
    /// log went back below what was fed) and returns the last stable offset.
    fn update_txns(&self) -> i64 {
        let st = self.state();
        let offs = st.offsets;
        let end = offs.readable_end(self.isolation);
        let mut guard = self.txn.write().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_none_or(|t| t.scanned_to > offs.log_end) {
            let bases: Vec<i64> = st.segments.keys().copied().collect();
            *guard = Some(txn::load(&self.dir, &bases, offs.log_end));
        }
        let Some(t) = guard.as_mut() else {
            return offs.log_start;
        };
        let start = st
            .segments
            .range(..=t.scanned_to)
            .next_back()
            .map_or(i64::MIN, |(b, _)| *b);
        for s in st.segments.range(start..).map(|(_, s)| s) {
            feed_segment(s, t);
        }
        t.forget_below(offs.log_start);
        t.last_stable(end).clamp(offs.log_start, end)
    }

    /// READ_COMMITTED: the aborted transactions overlapping `[fetch_offset, upper_bound)` as
    /// (producer id, first offset).
    pub fn aborted_txns(&self, fetch_offset: i64, upper_bound: i64) -> Vec<(i64, i64)> {
        let g = self.txn.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .map(|t| t.aborted_in(fetch_offset, upper_bound))
            .unwrap_or_default()
    }

    /// [`Self::aborted_txns`] with whole entries (marker offsets too), in marker order.
    pub fn aborted_overlapping(&self, fetch_offset: i64, upper_bound: i64) -> Vec<txn::AbortedTxn> {
        let g = self.txn.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .map(|t| {
                t.aborted_overlapping(fetch_offset, upper_bound)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Re-reads `partition.metadata` and `leader-epoch-checkpoint`. A damaged checkpoint keeps
    /// the epochs last read (logged once); a damaged metadata file is reported to the log dir,
    /// which refuses the topic.
    fn refresh_meta(&self) {
        let topic_id = super::topic_id::read(&self.dir).map_err(|e| e.to_string());
        let epochs = LeaderEpochs::read(&self.dir);
        let mut m = self.meta.write().unwrap_or_else(|e| e.into_inner());
        m.topic_id = topic_id;
        match epochs {
            Ok(e) => {
                m.epochs = e.unwrap_or_default();
                m.epochs_err = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if m.epochs_err.as_deref() != Some(msg.as_str()) {
                    log::warn!("{}: {msg}; keeping the leader epochs last read", self.tp);
                }
                m.epochs_err = Some(msg);
            }
        }
    }

    /// What `partition.metadata` says (Err: unreadable or malformed).
    pub fn topic_id_file(&self) -> Result<Option<uuid::Uuid>, String> {
        self.meta
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .topic_id
            .clone()
    }

    /// The leader epochs in effect (entries past the log end dropped, as a broker truncates
    /// them).
    pub fn leader_epochs(&self) -> LeaderEpochs {
        let end = self.offsets().log_end;
        self.meta
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .epochs
            .bounded(end)
    }

    /// The current leader epoch (-1 without a checkpoint).
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epochs().latest()
    }

    /// A copy of the transaction state (for `inspect`).
    pub fn txn_state(&self) -> Option<TxnState> {
        self.txn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One segment's change found by a refresh (applied under the state lock).
enum Change {
    Update(i64, SegUpdate),
    Replace(i64, Segment),
    Remove(i64),
}

/// Segment `base` opened again (Remove if it is gone).
fn reopen(path: PathBuf, base: i64, validate: bool) -> Result<Change, LogError> {
    Ok(match Segment::open_path(path, base, validate)? {
        Some(s) => Change::Replace(base, s),
        None => Change::Remove(base),
    })
}

/// Applies a refresh's changes, then drops the segments each swap (in `swaps`) replaces:
/// every segment whose base lies within its offsets (LogLoader).
fn apply_changes(segments: &mut BTreeMap<i64, Segment>, changes: Vec<Change>, swaps: Vec<i64>) {
    for c in changes {
        match c {
            Change::Remove(b) => {
                segments.remove(&b);
            }
            Change::Replace(b, s) => {
                segments.insert(b, s);
            }
            Change::Update(b, u) => {
                if let Some(s) = segments.get_mut(&b) {
                    s.apply(u);
                }
            }
        }
    }
    for b in swaps {
        let Some(end) = segments.get(&b).map(|s| s.ix().next_offset) else {
            continue;
        };
        let covered: Vec<i64> = segments
            .range((Bound::Excluded(b), Bound::Excluded(end)))
            .map(|(k, _)| *k)
            .collect();
        for k in covered {
            segments.remove(&k);
        }
    }
}

/// Feeds the batches of `s` from `t.scanned_to` on. A segment not validated yet (older ones
/// are validated on first read) is walked by batch headers only, so opening a log dir still
/// does not read every byte: a damaged batch there is never served anyway (the read
/// validates it), and markers are CRC-checked before they count. Headers and markers are
/// read with pread, never through the mapping: a segment truncated in place meanwhile ends
/// the walk instead of raising SIGBUS.
fn feed_segment(s: &Segment, t: &mut TxnState) {
    let validated = s.ix.get().is_some();
    let end = if validated {
        s.ix().valid_end
    } else {
        match s.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                log::warn!("{}: {e}; transactions not read", s.path.display());
                return;
            }
        }
    };
    let mut headers = HeaderReader::new(&s.file, end);
    if validated {
        headers = headers.knowing(s.ix().last_batch);
    }
    let found = if validated {
        find_in(s.ix(), &mut headers, s.base_offset, t.scanned_to)
    } else {
        Ok(Some(0))
    };
    let Ok(Some(mut pos)) = found else {
        return;
    };
    let mut batch = Vec::new();
    while pos < end {
        let Ok(h) = headers.header(pos) else {
            break; // the end of the data (or damage the read will report)
        };
        if pos + h.total_len() as u64 > end {
            break;
        }
        let marker = if h.is_control() && h.last_offset() >= t.scanned_to {
            batch.resize(h.total_len(), 0);
            let checked = read::read_exact_at(&s.file, &mut batch, pos)
                .map_err(|e| e.to_string())
                .and_then(|_| super::batch::verify(&batch).map_err(|e| e.to_string()))
                .and_then(|_| txn::marker_of(&batch));
            match checked {
                Ok(m) => Some(m),
                Err(e) => {
                    // The transaction stays open: its records are held back from
                    // READ_COMMITTED readers rather than served undecided.
                    log::warn!(
                        "{}: control batch at byte {pos}: {e}; ignored",
                        s.path.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        t.on_batch(&h, marker);
        pos += h.total_len() as u64;
    }
}

/// The first record of an uncompressed batch with timestamp >= `ts`; for compressed batches
/// (records not decodable here) the batch's base offset and max timestamp.
fn first_record_at_or_after(batch: &[u8], h: &super::batch::BatchHeader, ts: i64) -> (i64, i64) {
    if let Ok((_, recs)) = super::record::decode_batch_refs(batch) {
        if let Some(r) = recs.iter().find(|r| r.timestamp >= ts) {
            return (r.offset, r.timestamp);
        }
    }
    (h.base_offset, h.max_timestamp)
}
