//! Writing partition logs exactly as a broker lays them out: record batches v2 (magic 2,
//! optionally compressed, leader epoch 0, no producer id), `.index` / `.timeindex` entries on the
//! broker's cadence, segments rolled at `segment_bytes`, named by their base offset.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::batch::{self, BATCH_HEADER_LEN, LOG_OVERHEAD};
use super::checkpoint;
use super::compression::{self, Compression};
use super::error::LogError;
use super::index::IndexCadence;
use super::leader_epoch::LeaderEpochs;
use super::segment::{self, file_stem, ScanEnd, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use super::varint;
use super::TopicPartition;

/// One record to append. The offset is assigned by the writer.
#[derive(Clone, Debug, Default)]
pub struct NewRecord<'a> {
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// Header fields a producer (or the broker) sets: producer id/epoch/sequence, the
/// transactional and control attribute bits, the partition leader epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// Extra attribute bits ([`batch::TRANSACTIONAL`], [`batch::CONTROL`]).
    pub attributes: i16,
    pub leader_epoch: i32,
}

impl Default for BatchFields {
    fn default() -> Self {
        BatchFields {
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: 0,
            leader_epoch: 0,
        }
    }
}

/// Builds one record batch v2 in a reusable buffer.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    base_offset: i64,
    base_ts: i64,
    max_ts: i64,
    count: i32,
    fields: BatchFields,
    compression: Compression,
    /// Codec the records section already went through (finish() may be called again).
    compressed: Option<Compression>,
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        None => varint::len_i64(-1),
        Some(b) => varint::len_i64(b.len() as i64) + b.len(),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => varint::put_i64(out, -1),
        Some(b) => {
            varint::put_i64(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a batch whose first record gets `base_offset`.
    pub fn begin(&mut self, base_offset: i64) {
        self.buf.clear();
        self.buf.resize(BATCH_HEADER_LEN, 0);
        self.base_offset = base_offset;
        self.count = 0;
        self.max_ts = i64::MIN;
        self.compressed = None;
    }

    pub fn count(&self) -> i32 {
        self.count
    }

    /// Producer fields of the batches finished from now on.
    pub fn set_fields(&mut self, f: BatchFields) {
        self.fields = f;
    }

    /// Codec [`Self::finish`] compresses the records section with (none by default).
    pub fn set_compression(&mut self, codec: Compression) {
        self.compression = codec;
    }

    /// Bytes the batch has so far (header included).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn push(&mut self, r: &NewRecord<'_>) {
        self.push_parts(r.timestamp, r.key, r.value, &r.headers);
    }

    /// Appends a record (varint encoding, as MemoryRecordsBuilder writes it).
    pub fn push_parts(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        if self.count == 0 {
            self.base_ts = timestamp;
        }
        self.max_ts = self.max_ts.max(timestamp);
        let ts_delta = timestamp.wrapping_sub(self.base_ts);
        let offset_delta = i64::from(self.count);
        let mut body = 1 + varint::len_i64(ts_delta) + varint::len_i64(offset_delta);
        body += bytes_len(key) + bytes_len(value);
        body += varint::len_i64(headers.len() as i64);
        for (k, v) in headers {
            body += bytes_len(Some(k.as_bytes())) + bytes_len(*v);
        }
        let out = &mut self.buf;
        out.reserve(body + 5);
        varint::put_i64(out, body as i64);
        out.push(0); // record attributes
        varint::put_i64(out, ts_delta);
        varint::put_i64(out, offset_delta);
        put_bytes(out, key);
        put_bytes(out, value);
        varint::put_i64(out, headers.len() as i64);
        for (k, v) in headers {
            put_bytes(out, Some(k.as_bytes()));
            put_bytes(out, *v);
        }
        self.count += 1;
    }

    /// Fills in the header and CRC; returns the whole batch. Requires at least one record.
    pub fn finish(&mut self) -> &[u8] {
        if self.buf.len() < BATCH_HEADER_LEN {
            // finish() without begin(): an empty batch rather than a panic.
            self.begin(self.base_offset);
        }
        let attributes = self.compress_records();
        let b = &mut self.buf;
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[0..8].copy_from_slice(&self.base_offset.to_be_bytes());
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let f = self.fields;
        b[12..16].copy_from_slice(&f.leader_epoch.to_be_bytes());
        b[16] = 2; // magic
                   // Codec bits from the compression; transactional/control bits from the fields.
        let attributes = attributes | (f.attributes & !0x07);
        b[21..23].copy_from_slice(&attributes.to_be_bytes()); // codec, create time, txn bits
        b[23..27].copy_from_slice(&(self.count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&self.base_ts.to_be_bytes());
        b[35..43].copy_from_slice(&self.max_ts.to_be_bytes());
        b[43..51].copy_from_slice(&f.producer_id.to_be_bytes());
        b[51..53].copy_from_slice(&f.producer_epoch.to_be_bytes());
        b[53..57].copy_from_slice(&f.base_sequence.to_be_bytes());
        b[57..61].copy_from_slice(&self.count.to_be_bytes());
        let crc = batch::compute_crc(b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        &self.buf
    }

    /// Replaces the records section with its compressed form (as the Java producer does: the
    /// CRC then covers the compressed bytes); returns the attributes. A codec failure (none is
    /// expected on in-memory buffers) leaves the batch uncompressed rather than wrong.
    fn compress_records(&mut self) -> i16 {
        if let Some(done) = self.compressed {
            return i16::from(done.id());
        }
        // Control batches (transaction markers) are never compressed, as a broker writes them.
        let control = self.fields.attributes & batch::CONTROL != 0;
        if self.compression == Compression::None || self.count == 0 || control {
            return 0;
        }
        match compression::compress(self.compression, &self.buf[BATCH_HEADER_LEN..]) {
            Ok(c) => {
                self.buf.truncate(BATCH_HEADER_LEN);
                self.buf.extend_from_slice(&c);
                self.compressed = Some(self.compression);
                i16::from(self.compression.id())
            }
            Err(e) => {
                log::warn!(
                    "{} compression failed, batch left uncompressed: {e}",
                    self.compression
                );
                0
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Roll to a new segment when the next batch would take the active one past this size.
    pub segment_bytes: u64,
    /// `log.index.interval.bytes`: bytes between `.index` entries.
    pub index_interval_bytes: u32,
    /// Buffer size of the segment writer (bytes); batches larger than it are written directly.
    pub buffer_bytes: usize,
    /// Codec of every batch appended (`kxgw produce --compression`).
    pub compression: Compression,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            segment_bytes: 1 << 30,
            index_interval_bytes: 4096,
            buffer_bytes: 1 << 20,
            compression: Compression::None,
        }
    }
}

struct ActiveSegment {
    base_offset: i64,
    size: u64,
    log_path: PathBuf,
    log: BufWriter<File>,
    index: BufWriter<File>,
    time_index: BufWriter<File>,
    cadence: IndexCadence,
}

/// Appends batches to `<log_dir>/<topic>-<partition>/`, continuing existing offsets.
pub struct PartitionWriter {
    dir: PathBuf,
    tp: TopicPartition,
    cfg: WriterConfig,
    seg: Option<ActiveSegment>,
    next_offset: i64,
    builder: BatchBuilder,
    index_buf: Vec<u8>,
    time_buf: Vec<u8>,
    /// `leader-epoch-checkpoint`; batches are stamped with its latest epoch (0 without one).
    epochs: LeaderEpochs,
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| LogError::io(path, e))
}

fn seg_path(dir: &Path, base: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{}{suffix}", file_stem(base)))
}

/// Checks a topic name the way Kafka does (legal characters, length), so the directory name
/// parses back.
pub fn validate_topic(topic: &str) -> Result<(), LogError> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LogError::Invalid(format!(
            "invalid topic name {topic:?}: use 1-249 of [a-zA-Z0-9._-]"
        )))
    }
}

impl PartitionWriter {
    pub fn open(
        log_dir: &Path,
        topic: &str,
        partition: i32,
        cfg: WriterConfig,
    ) -> Result<Self, LogError> {
        validate_topic(topic)?;
        if partition < 0 {
            return Err(LogError::Invalid(format!("negative partition {partition}")));
        }
        if cfg.segment_bytes > i32::MAX as u64 {
            return Err(LogError::Invalid(format!(
                "segment size {} above Kafka's limit of {} (index positions are 32-bit)",
                cfg.segment_bytes,
                i32::MAX
            )));
        }
        if cfg.segment_bytes < BATCH_HEADER_LEN as u64 {
            return Err(LogError::Invalid(format!(
                "segment size {} is below one batch header",
                cfg.segment_bytes
            )));
        }
        let tp = TopicPartition::new(topic, partition);
        let dir = log_dir.join(tp.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io(&dir, e))?;
        let mut w = PartitionWriter {
            dir,
            tp,
            cfg,
            seg: None,
            next_offset: 0,
            builder: BatchBuilder::new(),
            index_buf: Vec::new(),
            time_buf: Vec::new(),
            epochs: LeaderEpochs::default(),
        };
        w.epochs = LeaderEpochs::read(&w.dir)?.unwrap_or_default();
        let bases = segment::list_segments(&w.dir).map_err(|e| LogError::io(&w.dir, e))?;
        match bases.last() {
            Some(&base) => w.recover(base)?,
            None => w.create_segment(0)?,
        }
        Ok(w)
    }

    /// Reopens the last segment for appending, as a broker's log recovery would: validate
    /// its batches, cut a torn or corrupt tail, rebuild its indexes.
    fn recover(&mut self, base: i64) -> Result<(), LogError> {
        let log_path = seg_path(&self.dir, base, LOG_SUFFIX);
        let file = File::open(&log_path).map_err(|e| LogError::io(&log_path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| LogError::io(&log_path, e))?
            .len();
        let file_len = usize::try_from(file_len)
            .map_err(|_| LogError::Invalid(format!("{}: too large", log_path.display())))?;
        // SAFETY: read-only mapping of the segment we are about to append to; a concurrent
        // writer to the same partition is a misuse (as two brokers on one log dir would be).
        let data = unsafe { memmap2::MmapOptions::new().len(file_len).map(&file) }
            .map_err(|e| LogError::io(&log_path, e))?;
        let mut cadence = IndexCadence::new(base, self.cfg.index_interval_bytes);
        let (mut index, mut time_index) = (Vec::new(), Vec::new());
        let s = segment::scan(&data, 0, base, |pos, h| {
            cadence.on_batch(pos as u64, h, &mut index, &mut time_index);
        });
        drop(data);
        if s.valid_end < file_len {
            let why = match &s.end {
                ScanEnd::Corrupt { reason, .. } => reason.clone(),
                ScanEnd::Incomplete { .. } => "torn batch".into(),
                _ => "zero-filled tail".into(),
            };
            log::warn!(
                "{}: truncating {} bytes from byte {} before appending ({why})",
                log_path.display(),
                file_len - s.valid_end,
                s.valid_end
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&log_path)
                .map_err(|e| LogError::io(&log_path, e))?;
            f.set_len(s.valid_end as u64)
                .map_err(|e| LogError::io(&log_path, e))?;
        }
        for (suffix, bytes) in [(INDEX_SUFFIX, &index), (TIME_INDEX_SUFFIX, &time_index)] {
            let p = seg_path(&self.dir, base, suffix);
            std::fs::write(&p, bytes).map_err(|e| LogError::io(&p, e))?;
        }
        self.next_offset = s.next_offset;
        self.seg = Some(ActiveSegment {
            base_offset: base,
            size: s.valid_end as u64,
            log: BufWriter::with_capacity(self.cfg.buffer_bytes, open_append(&log_path)?),
            index: BufWriter::new(open_append(&seg_path(&self.dir, base, INDEX_SUFFIX))?),
            time_index: BufWriter::new(open_append(&seg_path(&self.dir, base, TIME_INDEX_SUFFIX))?),
            log_path,
            cadence,
        });
        Ok(())
    }

    fn create_segment(&mut self, base: i64) -> Result<(), LogError> {
        let log_path = seg_path(&self.dir, base, LOG_SUFFIX);
        let log = open_append(&log_path)?;
        let index = open_append(&seg_path(&self.dir, base, INDEX_SUFFIX))?;
        let time_index = open_append(&seg_path(&self.dir, base, TIME_INDEX_SUFFIX))?;
        self.next_offset = self.next_offset.max(base);
        self.seg = Some(ActiveSegment {
            base_offset: base,
            size: 0,
            log_path,
            log: BufWriter::with_capacity(self.cfg.buffer_bytes, log),
            index: BufWriter::new(index),
            time_index: BufWriter::new(time_index),
            cadence: IndexCadence::new(base, self.cfg.index_interval_bytes),
        });
        Ok(())
    }

    pub fn topic_partition(&self) -> &TopicPartition {
        &self.tp
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Offset the next appended record gets.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Base offset of the active segment.
    pub fn active_segment_base(&self) -> i64 {
        self.seg
            .as_ref()
            .map_or(self.next_offset, |s| s.base_offset)
    }

    /// Appends `records` as one batch; returns its base offset.
    pub fn append(&mut self, records: &[NewRecord<'_>]) -> Result<i64, LogError> {
        if records.is_empty() {
            return Err(LogError::Invalid("empty batch".into()));
        }
        let mut b = std::mem::take(&mut self.builder);
        b.begin(self.next_offset);
        for r in records {
            b.push(r);
        }
        let res = self.append_built(&mut b);
        self.builder = b;
        res
    }

    /// Appends a batch built with [`BatchBuilder`] (begun at [`Self::next_offset`]); the
    /// builder is finished here. Returns the base offset.
    pub fn append_built(&mut self, b: &mut BatchBuilder) -> Result<i64, LogError> {
        if b.is_empty() {
            return Err(LogError::Invalid("empty batch".into()));
        }
        if b.len() > batch::MAX_BATCH_LEN {
            return Err(LogError::Invalid(format!(
                "batch of {} bytes above the 2 GiB limit of the format",
                b.len()
            )));
        }
        if b.base_offset != self.next_offset {
            return Err(LogError::Invalid(format!(
                "batch begun at offset {}, log is at {}",
                b.base_offset, self.next_offset
            )));
        }
        b.fields.leader_epoch = self.epochs.latest().max(0);
        b.set_compression(self.cfg.compression);
        let bytes = b.finish();
        let h = batch::BatchHeader::parse(bytes)
            .map_err(|e| LogError::Invalid(format!("built batch is invalid: {e}")))?;
        let need_roll = match &self.seg {
            None => true,
            Some(s) => {
                (s.size > 0 && s.size + bytes.len() as u64 > self.cfg.segment_bytes)
                    || h.last_offset() - s.base_offset > i64::from(i32::MAX)
            }
        };
        if need_roll {
            self.roll(h.base_offset)?;
        }
        let Some(seg) = self.seg.as_mut() else {
            return Err(LogError::Invalid("no active segment".into()));
        };
        self.index_buf.clear();
        self.time_buf.clear();
        seg.cadence
            .on_batch(seg.size, &h, &mut self.index_buf, &mut self.time_buf);
        seg.log
            .write_all(bytes)
            .map_err(|e| LogError::io(&seg.log_path, e))?;
        if !self.index_buf.is_empty() {
            seg.index
                .write_all(&self.index_buf)
                .map_err(|e| LogError::io(seg.log_path.with_extension("index"), e))?;
        }
        if !self.time_buf.is_empty() {
            seg.time_index
                .write_all(&self.time_buf)
                .map_err(|e| LogError::io(seg.log_path.with_extension("timeindex"), e))?;
        }
        seg.size += bytes.len() as u64;
        self.next_offset = h.next_offset();
        Ok(h.base_offset)
    }

    /// The leader epochs of `leader-epoch-checkpoint` as of this writer.
    pub fn leader_epochs(&self) -> &LeaderEpochs {
        &self.epochs
    }

    /// Starts leader epoch `epoch` at the log end, as a newly elected leader does, and writes
    /// `leader-epoch-checkpoint`; later batches carry it. The current epoch again: no-op.
    pub fn set_leader_epoch(&mut self, epoch: i32) -> Result<(), LogError> {
        let latest = self.epochs.latest();
        if epoch < latest || epoch < 0 {
            return Err(LogError::Invalid(format!(
                "{}: leader epoch {epoch} is below the current epoch {latest}",
                self.tp
            )));
        }
        if epoch == latest {
            return Ok(());
        }
        self.epochs.assign(epoch, self.next_offset);
        self.epochs.write(&self.dir)
    }

    /// Closes the active segment (final time index entry) and starts one at `base`.
    fn roll(&mut self, base: i64) -> Result<(), LogError> {
        self.close_segment()?;
        self.create_segment(base)
    }

    fn close_segment(&mut self) -> Result<(), LogError> {
        if let Some(mut seg) = self.seg.take() {
            self.time_buf.clear();
            seg.cadence.on_roll(&mut self.time_buf);
            seg.time_index
                .write_all(&self.time_buf)
                .map_err(|e| LogError::io(seg.log_path.with_extension("timeindex"), e))?;
            flush_segment(&mut seg)?;
        }
        Ok(())
    }

    /// Writes buffered bytes to the files (whole batches: followers see complete batches).
    pub fn flush(&mut self) -> Result<(), LogError> {
        match self.seg.as_mut() {
            Some(seg) => flush_segment(seg),
            None => Ok(()),
        }
    }
}

fn flush_segment(seg: &mut ActiveSegment) -> Result<(), LogError> {
    seg.log
        .flush()
        .map_err(|e| LogError::io(&seg.log_path, e))?;
    seg.index
        .flush()
        .map_err(|e| LogError::io(seg.log_path.with_extension("index"), e))?;
    seg.time_index
        .flush()
        .map_err(|e| LogError::io(seg.log_path.with_extension("timeindex"), e))
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::error!("{}: flush on close failed: {e}", self.dir.display());
        }
    }
}

/// Current wall clock in ms since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sets the high watermarks of `ends` in `<log_dir>/replication-offset-checkpoint`, keeping
/// the other partitions' entries.
pub fn update_checkpoint(log_dir: &Path, ends: &[(TopicPartition, i64)]) -> Result<(), LogError> {
    let path = log_dir.join(checkpoint::REPLICATION_OFFSET_CHECKPOINT);
    let mut c = checkpoint::read(&path)?.unwrap_or_default();
    for (tp, off) in ends {
        c.insert(tp.clone(), *off);
    }
    checkpoint::write(&path, &c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_rolls_and_continues() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WriterConfig {
            segment_bytes: 2000,
            index_interval_bytes: 300,
            ..Default::default()
        };
        let val = [b'x'; 100];
        {
            let mut w = PartitionWriter::open(dir.path(), "t", 0, cfg.clone()).unwrap();
            for i in 0..30 {
                let recs = vec![
                    NewRecord {
                        timestamp: 1000 + i,
                        value: Some(&val),
                        ..Default::default()
                    };
                    3
                ];
                assert_eq!(w.append(&recs).unwrap(), i * 3);
            }
        }
        let segs = segment::list_segments(&dir.path().join("t-0")).unwrap();
        assert!(segs.len() > 3, "{segs:?}");
        assert_eq!(segs[0], 0);
        for s in &segs {
            let len = std::fs::metadata(seg_path(&dir.path().join("t-0"), *s, LOG_SUFFIX))
                .unwrap()
                .len();
            assert!(len <= 2000);
        }
        let mut w = PartitionWriter::open(dir.path(), "t", 0, cfg).unwrap();
        assert_eq!(w.next_offset(), 90);
        assert_eq!(w.append(&[NewRecord::default()]).unwrap(), 90);
    }
}
