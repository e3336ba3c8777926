//! Demo partition logs: what `kxgw produce` appends (records of [`kxgw_demo_data`]) through
//! the library's [`PartitionWriter`], which writes them in the broker's on-disk format.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kxgw::log::txn_writer::BatchSource;
use kxgw::log::writer::{
    now_ms, update_checkpoint, validate_topic, BatchBuilder, PartitionWriter, WriterConfig,
};
use kxgw::log::LogError;
use kxgw::log::TopicPartition;
use kxgw_demo_data::{demo_value_into, push_demo_key};

/// What `kxgw produce` writes (without `--follow`).
#[derive(Clone, Debug)]
pub struct ProduceConfig {
    pub log_dir: PathBuf,
    pub topic: String,
    pub partitions: i32,
    /// Records per partition.
    pub records: u64,
    /// Value size in bytes.
    pub record_size: usize,
    pub batch_records: usize,
    /// Key size in bytes (0: null keys). Keys are [`kxgw_demo_data::demo_key_sized`].
    pub key_size: usize,
    /// Headers per record: `h<i>` = the record's offset in decimal.
    pub headers: usize,
    pub writer: WriterConfig,
    /// Write/update `replication-offset-checkpoint` with the new log end offsets.
    pub write_checkpoint: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSummary {
    pub tp: TopicPartition,
    /// Offset of the first record written by this run.
    pub first_offset: i64,
    /// Log end offset after this run.
    pub next_offset: i64,
}

#[derive(Clone, Debug)]
pub struct ProduceSummary {
    pub partitions: Vec<PartitionSummary>,
    pub records: u64,
    pub batches: u64,
    /// Bytes of batches appended to segment files.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Builds batches of demo records (what `kxgw produce` writes) with reusable buffers.
pub struct DemoBatches {
    partition: i32,
    record_size: usize,
    key_size: usize,
    headers: usize,
    header_keys: Vec<String>,
    key: Vec<u8>,
    value: Vec<u8>,
    header_value: String,
}

impl DemoBatches {
    pub fn new(partition: i32, record_size: usize, key_size: usize, headers: usize) -> Self {
        DemoBatches {
            partition,
            record_size,
            key_size,
            headers,
            header_keys: (0..headers).map(|i| format!("h{i}")).collect(),
            key: Vec::new(),
            value: Vec::with_capacity(record_size),
            header_value: String::new(),
        }
    }

    /// Begins a batch at `base_offset` and adds `n` demo records with timestamp `ts`.
    pub fn build(&mut self, b: &mut BatchBuilder, base_offset: i64, n: usize, ts: i64) {
        self.fill(b, base_offset, n, ts);
    }
}

impl BatchSource for DemoBatches {
    fn fill(&mut self, b: &mut BatchBuilder, base_offset: i64, n: usize, ts: i64) {
        b.begin(base_offset);
        for i in 0..n as i64 {
            let off = base_offset + i;
            self.value.clear();
            demo_value_into(&mut self.value, self.partition, off, self.record_size);
            let key = if self.key_size > 0 {
                self.key.clear();
                push_demo_key(&mut self.key, off);
                self.key.resize(self.key_size, b'k');
                Some(self.key.as_slice())
            } else {
                None
            };
            if self.headers > 0 {
                self.header_value.clear();
                self.header_value.push_str(&off.to_string());
            }
            let mut hdrs: Vec<(&str, Option<&[u8]>)> = Vec::new();
            if self.headers > 0 {
                for k in &self.header_keys {
                    hdrs.push((k.as_str(), Some(self.header_value.as_bytes())));
                }
            }
            b.push_parts(ts, key, Some(&self.value), &hdrs);
        }
    }
}

/// Appends `cfg.records` demo records to each partition; `progress(records, bytes)` is called after
/// each batch with the records and bytes appended so far.
pub fn produce_with_progress(
    cfg: &ProduceConfig,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ProduceSummary, LogError> {
    if cfg.partitions < 1 {
        return Err(LogError::Invalid("need at least one partition".into()));
    }
    if cfg.batch_records < 1 {
        return Err(LogError::Invalid(
            "need at least one record per batch".into(),
        ));
    }
    validate_topic(&cfg.topic)?;
    std::fs::create_dir_all(&cfg.log_dir).map_err(|source| LogError::Io {
        path: cfg.log_dir.clone(),
        source,
    })?;
    let start = Instant::now();
    let mut summary = ProduceSummary {
        partitions: Vec::new(),
        records: 0,
        batches: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    let mut b = BatchBuilder::new();
    for p in 0..cfg.partitions {
        let mut w = PartitionWriter::open(&cfg.log_dir, &cfg.topic, p, cfg.writer.clone())?;
        let first = w.next_offset();
        let mut demo = DemoBatches::new(p, cfg.record_size, cfg.key_size, cfg.headers);
        let mut left = cfg.records;
        while left > 0 {
            let n = left.min(cfg.batch_records as u64) as usize;
            demo.build(&mut b, w.next_offset(), n, now_ms());
            w.append_built(&mut b)?;
            summary.bytes += b.len() as u64;
            summary.batches += 1;
            summary.records += n as u64;
            left -= n as u64;
            progress(summary.records, summary.bytes);
        }
        w.flush()?;
        summary.partitions.push(PartitionSummary {
            tp: w.topic_partition().clone(),
            first_offset: first,
            next_offset: w.next_offset(),
        });
    }
    if cfg.write_checkpoint {
        let ends: Vec<_> = summary
            .partitions
            .iter()
            .map(|s| (s.tp.clone(), s.next_offset))
            .collect();
        update_checkpoint(&cfg.log_dir, &ends)?;
    }
    summary.elapsed = start.elapsed();
    Ok(summary)
}

/// What `kxgw produce` runs (without `--follow`).
pub fn produce(cfg: &ProduceConfig) -> Result<ProduceSummary, LogError> {
    produce_with_progress(cfg, &mut |_, _| {})
}
