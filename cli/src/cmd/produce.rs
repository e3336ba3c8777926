//! `kxgw produce`: write demo partition logs in the broker's on-disk format, optionally
//! keep appending (`--follow RATE`) as a live log.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use kxgw::log::compression::Compression;
use kxgw::log::topic_id;
use kxgw::log::txn_writer::{self, TxnPlan};
use kxgw::log::writer::{self, now_ms, BatchBuilder, PartitionWriter, WriterConfig};
use kxgw_testkit::demo_log::{self, DemoBatches, ProduceConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log dir (a broker's log.dirs entry); created if missing.
    #[arg(long)]
    pub log_dir: PathBuf,
    #[arg(long)]
    pub topic: String,
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Records per partition (appended after existing ones).
    #[arg(long, default_value_t = 1000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 100)]
    pub batch_records: usize,
    /// Key size in bytes (0: null keys).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Headers per record.
    #[arg(long, default_value_t = 0)]
    pub headers: usize,
    /// Bytes between .index entries (log.index.interval.bytes).
    #[arg(long, default_value_t = 4096)]
    pub index_interval_bytes: u32,
    /// Roll segments at this size (log.segment.bytes).
    #[arg(long, default_value_t = 1 << 30)]
    pub segment_bytes: u64,
    /// After the initial records, keep appending RATE records/s (over all partitions) until
    /// SIGINT/SIGTERM, flushing each batch so followers see it at once.
    #[arg(long, value_name = "RATE")]
    pub follow: Option<f64>,
    /// Write/update replication-offset-checkpoint (the high watermarks) as a broker would
    /// (always done when the log dir already has one).
    #[arg(long)]
    pub write_checkpoint: bool,
    /// Write transactions as a broker stores them: two transactional producers whose
    /// batches interleave, COMMIT/ABORT control batches, `.txnindex` entries for aborted
    /// transactions and a producer-state `.snapshot` at the end.
    #[arg(long, conflicts_with = "follow")]
    pub transactional: bool,
    /// With --transactional: abort every N-th transaction (0: commit them all).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "transactional"
    )]
    pub abort_every: u64,
    /// With --transactional: leave the last transaction open (no marker).
    #[arg(long, requires = "transactional")]
    pub open_tail: bool,
    /// Leader epoch of the appended batches, started at the log end in
    /// `leader-epoch-checkpoint` (as a new leader does) when above the current one. Default:
    /// the current epoch (0 for a new partition).
    #[arg(long, value_name = "EPOCH")]
    pub leader_epoch: Option<i32>,
    /// Topic id written to each partition's `partition.metadata` (Kafka's base64 form).
    /// Default: the topic's existing id, else a new random one.
    #[arg(long, value_name = "ID")]
    pub topic_id: Option<String>,
    /// Compress each batch's records as a Java producer does (none | gzip | snappy | lz4 | zstd).
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Then compact every segment but the active (last) one as Kafka's log cleaner leaves
    /// it: records at offsets ≡ 1 (mod 3) removed from inside their batches, offsets
    /// 1000..1700 removed entirely (gaps between batches), each segment replaced through
    /// `.cleaned` -> `.swap` -> `.log` and its old indexes removed. Uncompressed logs only.
    #[arg(long, conflicts_with_all = ["follow", "transactional"])]
    pub compact_gaps: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = ProduceConfig {
        log_dir: args.log_dir.clone(),
        topic: args.topic.clone(),
        partitions: args.partitions,
        records: args.records,
        record_size: args.record_size,
        batch_records: args.batch_records,
        key_size: args.key_size,
        headers: args.headers,
        writer: WriterConfig {
            segment_bytes: args.segment_bytes,
            index_interval_bytes: args.index_interval_bytes,
            compression: args.compression,
            ..WriterConfig::default()
        },
        // A log dir that has high watermarks must get them for the new records too, or readers
        // bounded by them (the default there) would never see those records.
        write_checkpoint: args.write_checkpoint
            || args
                .log_dir
                .join(kxgw::log::checkpoint::REPLICATION_OFFSET_CHECKPOINT)
                .exists(),
    };
    anyhow::ensure!(
        !args.compact_gaps || matches!(args.compression, Compression::None),
        "--compact-gaps rewrites uncompressed batches only"
    );
    prepare_partitions(&args)?;
    if args.transactional {
        return produce_transactional(&args, &cfg);
    }
    let total = args.records.saturating_mul(args.partitions.max(0) as u64);
    let bar = if std::io::stderr().is_terminal() && total > 0 {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} records {msg} [{elapsed_precise}, eta {eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut last_tick = Instant::now();
    let summary = demo_log::produce_with_progress(&cfg, &mut |records, bytes| {
        if let Some(b) = &bar {
            if last_tick.elapsed() > Duration::from_millis(100) || records == total {
                b.set_position(records);
                b.set_message(format!("{} MiB", bytes >> 20));
                last_tick = Instant::now();
            }
        }
    })
    .with_context(|| format!("producing to {}", args.log_dir.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "produced {} records in {} batches, {} bytes ({:.1} MiB) in {:.3} s ({:.1} MiB/s)",
        summary.records,
        summary.batches,
        summary.bytes,
        summary.bytes as f64 / (1 << 20) as f64,
        secs,
        summary.bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
    );
    for p in &summary.partitions {
        println!(
            "{}: offsets {}..{} (log end {})",
            p.tp,
            p.first_offset,
            p.next_offset - 1,
            p.next_offset
        );
    }
    if args.compact_gaps {
        for p in 0..args.partitions {
            let part = args.log_dir.join(format!("{}-{p}", args.topic));
            let n = crate::compact::clean_partition(&part, crate::compact::demo_keep)?;
            println!(
                "{}-{p}: compacted {n} segments (offsets = 1 mod 3 and 1000..1700 removed; the active segment kept)",
                args.topic
            );
        }
    }
    if let Some(rate) = args.follow {
        follow(&cfg, rate)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Gives every partition what a broker keeps beside its segments: `partition.metadata` (one
/// topic id for all partitions) and `leader-epoch-checkpoint`.
fn prepare_partitions(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.partitions >= 1, "need at least one partition");
    writer::validate_topic(&args.topic)?;
    let dirs: Vec<PathBuf> = (0..args.partitions)
        .map(|p| args.log_dir.join(format!("{}-{p}", args.topic)))
        .collect();
    let mut existing = None;
    for d in &dirs {
        if let Some(id) = topic_id::read(d)? {
            match existing {
                Some(e) if e != id => anyhow::bail!(
                    "{}: topic id {} differs from {} of another partition",
                    d.display(),
                    topic_id::to_kafka_string(id),
                    topic_id::to_kafka_string(e)
                ),
                _ => existing = Some(id),
            }
        }
    }
    let id = match (&args.topic_id, existing) {
        (Some(s), e) => {
            let id = topic_id::from_kafka_string(s).map_err(anyhow::Error::msg)?;
            if e.is_some_and(|e| e != id) {
                anyhow::bail!(
                    "topic {} already has another id; --topic-id {s} refused",
                    args.topic
                );
            }
            id
        }
        (None, Some(e)) => e,
        (None, None) => uuid::Uuid::from_bytes(rand::random()),
    };
    for (p, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        if topic_id::read(d)?.is_none() {
            topic_id::write(d, id)?;
        }
        let mut w = PartitionWriter::open(
            &args.log_dir,
            &args.topic,
            p as i32,
            WriterConfig {
                segment_bytes: args.segment_bytes,
                index_interval_bytes: args.index_interval_bytes,
                ..WriterConfig::default()
            },
        )?;
        let current = w.leader_epochs().latest().max(0);
        w.set_leader_epoch(args.leader_epoch.unwrap_or(current))?;
    }
    Ok(())
}

/// `--transactional`: see [`txn_writer`].
fn produce_transactional(args: &Args, cfg: &ProduceConfig) -> anyhow::Result<ExitCode> {
    let plan = TxnPlan {
        records: args.records,
        batch_records: args.batch_records,
        abort_every: args.abort_every,
        open_tail: args.open_tail,
    };
    let mut ends = Vec::new();
    for p in 0..args.partitions {
        let mut w = PartitionWriter::open(&cfg.log_dir, &cfg.topic, p, cfg.writer.clone())?;
        let first = w.next_offset();
        let mut demo = DemoBatches::new(p, cfg.record_size, cfg.key_size, cfg.headers);
        let s = txn_writer::write(&mut w, &mut demo, plan)
            .with_context(|| format!("producing to {}", w.dir().display()))?;
        println!(
            "{}: offsets {first}..{} (log end {}): {} transactions committed, {} aborted, {} open, {} data batches",
            w.topic_partition(),
            w.next_offset() - 1,
            w.next_offset(),
            s.committed,
            s.aborted,
            s.open,
            s.batches
        );
        ends.push((w.topic_partition().clone(), w.next_offset()));
    }
    if cfg.write_checkpoint {
        writer::update_checkpoint(&cfg.log_dir, &ends)
            .with_context(|| format!("checkpointing in {}", cfg.log_dir.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends `rate` records/s round-robin over the partitions until SIGINT/SIGTERM.
fn follow(cfg: &ProduceConfig, rate: f64) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--follow RATE must be > 0");
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }
    let mut writers = Vec::new();
    for p in 0..cfg.partitions {
        let w = PartitionWriter::open(&cfg.log_dir, &cfg.topic, p, cfg.writer.clone())?;
        let demo = DemoBatches::new(p, cfg.record_size, cfg.key_size, cfg.headers);
        writers.push((w, demo));
    }
    // About 50 batches a second at most, never more records than --batch-records.
    let per_batch = ((rate / 50.0).ceil() as usize).clamp(1, cfg.batch_records.max(1));
    log::info!(
        "following: {rate} records/s, {per_batch} records per batch, {} partitions; SIGINT/SIGTERM stops",
        cfg.partitions
    );
    let start = Instant::now();
    let mut written: u64 = 0;
    let mut b = BatchBuilder::new();
    let mut last_report = Instant::now();
    let mut i = 0usize;
    let mut last_ckpt = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let due = start + Duration::from_secs_f64(written as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
            continue;
        }
        let (w, demo) = &mut writers[i % cfg.partitions as usize];
        demo.build(&mut b, w.next_offset(), per_batch, now_ms());
        w.append_built(&mut b)?;
        w.flush()?;
        // The high watermark follows within 20 ms (a broker checkpoints it every 5 s, but
        // readers bounded by it should see a live log move).
        if cfg.write_checkpoint && last_ckpt.elapsed() >= Duration::from_millis(20) {
            write_checkpoint(cfg, &writers)?;
            last_ckpt = Instant::now();
        }
        written += per_batch as u64;
        i += 1;
        if last_report.elapsed() > Duration::from_secs(10) {
            log::info!("appended {written} records");
            last_report = Instant::now();
        }
    }
    if cfg.write_checkpoint {
        write_checkpoint(cfg, &writers)?;
    }
    println!("follow: appended {written} records, stopping");
    for (w, _) in &writers {
        println!("{}: log end {}", w.topic_partition(), w.next_offset());
    }
    Ok(())
}

fn write_checkpoint(
    cfg: &ProduceConfig,
    writers: &[(PartitionWriter, DemoBatches)],
) -> anyhow::Result<()> {
    let ends: Vec<_> = writers
        .iter()
        .map(|(w, _)| (w.topic_partition().clone(), w.next_offset()))
        .collect();
    writer::update_checkpoint(&cfg.log_dir, &ends)
        .with_context(|| format!("checkpointing in {}", cfg.log_dir.display()))
}
