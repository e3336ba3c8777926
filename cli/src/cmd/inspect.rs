//! `kxgw inspect PATH`: list the batches of a log dir, partition dir or segment file,
//! check them (CRC, lengths, offsets, index files), optionally print records.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use kxgw::log::batch::{self, BatchHeader};
use kxgw::log::checkpoint;
use kxgw::log::compression::Compression;
use kxgw::log::index;
use kxgw::log::read;
use kxgw::log::record;
use kxgw::log::segment::{self, file_stem, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use kxgw::log::txn;
use kxgw::log::TopicPartition;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A log dir, a partition dir (<topic>-<partition>) or a segment file (.log).
    pub path: PathBuf,
    /// Exit non-zero on any corruption (naming file and byte position).
    #[arg(long)]
    pub verify: bool,
    /// Print the records of each batch (offset, timestamp, key, value size).
    #[arg(long)]
    pub records: bool,
    /// With --records: print values too (lossy UTF-8).
    #[arg(long)]
    pub values: bool,
    /// Only summaries and problems, no line per batch.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Default)]
struct Totals {
    segments: u64,
    batches: u64,
    records: u64,
    bytes: u64,
    first_offset: Option<i64>,
    next_offset: Option<i64>,
    errors: Vec<String>,
    warnings: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.segments += o.segments;
        self.batches += o.batches;
        self.records += o.records;
        self.bytes += o.bytes;
        self.errors.extend(o.errors.iter().cloned());
        self.warnings += o.warnings;
    }
}

struct Ctx<'a> {
    args: &'a Args,
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
}

impl Ctx<'_> {
    fn line(&mut self, s: std::fmt::Arguments<'_>) {
        // stdout going away (a closed pipe) is not worth an error of its own.
        let _ = self.out.write_fmt(s);
        let _ = self.out.write_all(b"\n");
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let md = std::fs::metadata(&args.path).with_context(|| format!("{}", args.path.display()))?;
    let mut ctx = Ctx {
        args: &args,
        out: std::io::BufWriter::new(std::io::stdout().lock()),
    };
    let mut total = Totals::default();
    let mut partitions = 0u64;
    if md.is_file() {
        let name = args.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let base = segment::parse_log_name(name).with_context(|| {
            format!(
                "{}: not a segment file (<20-digit base offset>.log)",
                args.path.display()
            )
        })?;
        let t = inspect_segment(&mut ctx, &args.path, base, base)?;
        total.add(&t);
    } else if let Some(tp) = args
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(TopicPartition::from_dir_name)
        .filter(|_| has_segments(&args.path))
    {
        partitions = 1;
        let t = inspect_partition(&mut ctx, &args.path, &tp, None)?;
        total.add(&t);
    } else {
        let hw = checkpoint::read(&args.path.join(checkpoint::REPLICATION_OFFSET_CHECKPOINT))?;
        let mut dirs: Vec<(TopicPartition, PathBuf)> = Vec::new();
        for e in
            std::fs::read_dir(&args.path).with_context(|| format!("{}", args.path.display()))?
        {
            let e = e.with_context(|| format!("{}", args.path.display()))?;
            if let Some(tp) = e
                .file_name()
                .to_str()
                .and_then(TopicPartition::from_dir_name)
            {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs.push((tp, e.path()));
                }
            }
        }
        dirs.sort();
        for (tp, dir) in &dirs {
            let hw = hw.as_ref().map(|c| c.get(tp).copied());
            let t = inspect_partition(&mut ctx, dir, tp, hw)?;
            total.add(&t);
        }
        partitions = dirs.len() as u64;
    }
    ctx.line(format_args!(
        "total: {partitions} partitions, {} segments, {} batches, {} records, {} bytes, {} errors, {} warnings",
        total.segments,
        total.batches,
        total.records,
        total.bytes,
        total.errors.len(),
        total.warnings
    ));
    let _ = ctx.out.flush();
    drop(ctx);
    if args.verify && !total.errors.is_empty() {
        for e in &total.errors {
            eprintln!("kxgw inspect: {e}");
        }
        eprintln!(
            "kxgw inspect: verify failed: {} problem(s), first: {}",
            total.errors.len(),
            total.errors[0]
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A dir named like a partition is one if it holds segments or no partition dirs (a log
/// dir may be named `kafka-logs-1`).
fn has_segments(dir: &Path) -> bool {
    if segment::list_segments(dir).is_ok_and(|s| !s.is_empty()) {
        return true;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return true;
    };
    !rd.flatten().any(|e| {
        e.file_type().is_ok_and(|t| t.is_dir())
            && e.file_name()
                .to_str()
                .and_then(TopicPartition::from_dir_name)
                .is_some()
    })
}

fn inspect_partition(
    ctx: &mut Ctx<'_>,
    dir: &Path,
    tp: &TopicPartition,
    hw: Option<Option<i64>>,
) -> anyhow::Result<Totals> {
    let bases = segment::list_segments(dir).with_context(|| format!("{}", dir.display()))?;
    let mut t = Totals::default();
    let mut expect = bases.first().copied().unwrap_or(0);
    for (i, &b) in bases.iter().enumerate() {
        let path = dir.join(format!("{}{LOG_SUFFIX}", file_stem(b)));
        if b < expect {
            t.errors.push(format!(
                "{}: segment base offset {b} below the previous segment's next offset {expect}",
                path.display()
            ));
        }
        let s = inspect_segment(ctx, &path, b, expect.max(b))?;
        if let Some(n) = s.next_offset {
            expect = n;
        } else if i + 1 < bases.len() {
            expect = b;
        }
        if t.first_offset.is_none() {
            t.first_offset = s.first_offset;
        }
        t.next_offset = s.next_offset.or(t.next_offset);
        t.add(&s);
    }
    let range = match (t.first_offset, t.next_offset) {
        (Some(a), Some(b)) => format!("offsets {a}..{}", b - 1),
        _ => "no records".into(),
    };
    let stable_end = hw.flatten().or(t.next_offset).unwrap_or(expect);
    let hw = match hw {
        None => String::new(),
        Some(None) => ", high watermark: not in checkpoint".into(),
        Some(Some(h)) => format!(", high watermark {h}"),
    };
    ctx.line(format_args!(
        "{tp}: {} segments, {} batches, {} records, {} bytes, {range}, log end {}{hw}",
        t.segments,
        t.batches,
        t.records,
        t.bytes,
        t.next_offset.unwrap_or(expect)
    ));
    if let Some(lines) = txn_summary(dir, &bases, stable_end, &mut t) {
        for l in lines {
            ctx.line(format_args!("  {l}"));
        }
    }
    Ok(t)
}

/// Producer and transaction fields of a batch line.
fn txn_note(h: &BatchHeader, whole: &[u8]) -> String {
    let mut s = String::new();
    if h.producer_id >= 0 {
        s.push_str(&format!(
            " pid={} epoch={}",
            h.producer_id, h.producer_epoch
        ));
    }
    if h.is_transactional() {
        s.push_str(" txn");
    }
    if h.is_control() {
        s.push_str(match txn::marker_of(whole) {
            Ok(txn::Marker::Commit) => " control=COMMIT",
            Ok(txn::Marker::Abort) => " control=ABORT",
            Ok(txn::Marker::Other(_)) => " control",
            Err(_) => " control=UNREADABLE",
        });
    }
    s
}

/// Transactions of a partition, from its batches alone (the snapshot and `.txnindex` files
/// are cross-checked, not trusted): producers, open and aborted transactions, the LSO.
/// `None` when no batch is transactional.
fn txn_summary(dir: &Path, bases: &[i64], stable_end: i64, t: &mut Totals) -> Option<Vec<String>> {
    let mut st = txn::TxnState::default();
    let mut from_index = Vec::new();
    for &b in bases {
        let path = dir.join(format!("{}{LOG_SUFFIX}", file_stem(b)));
        let data = std::fs::read(&path).ok()?;
        for (pos, h) in batch::iter(&data).map_while(Result::ok) {
            let marker = h
                .is_control()
                .then(|| txn::marker_of(&data[pos..pos + h.total_len()]).ok())
                .flatten();
            st.on_batch(&h, marker);
        }
        let ix = dir.join(format!("{}{}", file_stem(b), txn::TXN_INDEX_SUFFIX));
        if let Ok(buf) = std::fs::read(&ix) {
            match txn::parse_txn_index(&buf) {
                Ok(e) => from_index.extend(e),
                Err((at, why)) => t
                    .errors
                    .push(format!("{}: corrupt at byte {at}: {why}", ix.display())),
            }
        }
    }
    if st.producers().is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for (pid, p) in st.producers() {
        out.push(format!(
            "producer {pid} epoch {}: {} data batches, {} committed, {} aborted{}",
            p.epoch,
            p.data_batches,
            p.commits,
            p.aborts,
            p.open_since
                .map(|o| format!(", transaction open since offset {o}"))
                .unwrap_or_default()
        ));
    }
    let aborted: Vec<String> = st
        .aborted()
        .map(|a| format!("{}@{}..{}", a.producer_id, a.first_offset, a.last_offset))
        .collect();
    if !aborted.is_empty() {
        out.push(format!(
            "aborted transactions (pid@first..marker): {}",
            aborted.join(" ")
        ));
    }
    let scanned: Vec<_> = st
        .aborted()
        .map(|a| (a.producer_id, a.first_offset, a.last_offset))
        .collect();
    let mut indexed: Vec<_> = from_index
        .iter()
        .map(|a| (a.producer_id, a.first_offset, a.last_offset))
        .collect();
    indexed.sort_by_key(|&(pid, _, last)| (last, pid));
    if !from_index.is_empty() && indexed != scanned {
        t.warnings += 1;
        out.push(format!(
            "warning: {}: the .txnindex files disagree with the markers ({} aborted transactions listed, {} found)",
            dir.display(),
            indexed.len(),
            scanned.len()
        ));
    }
    out.push(format!("last stable offset {}", st.last_stable(stable_end)));
    Some(out)
}

fn inspect_segment(
    ctx: &mut Ctx<'_>,
    path: &Path,
    base: i64,
    mut expect: i64,
) -> anyhow::Result<Totals> {
    let file = File::open(path).with_context(|| format!("{}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("{}", path.display()))?
        .len();
    // Read with pread, batch by batch, as the gateway reads: a segment a broker truncates or
    // rewrites meanwhile ends the walk with an error line instead of SIGBUS on a mapping.
    let mut t = Totals {
        segments: 1,
        ..Default::default()
    };
    if !ctx.args.quiet {
        ctx.line(format_args!("segment {} ({len} bytes)", path.display()));
    }
    let err = |t: &mut Totals, pos: usize, reason: String| {
        t.errors.push(format!(
            "{}: corrupt at byte {pos}: {reason}",
            path.display()
        ));
    };
    let mut starts: Vec<(usize, BatchHeader)> = Vec::new();
    let len = usize::try_from(len).with_context(|| format!("{}: size", path.display()))?;
    let mut pos = 0usize;
    let mut buf = Vec::new();
    while pos < len {
        let h = match read_batch(&file, pos, len, &mut buf) {
            At::Batch(h) => h,
            At::ZeroTail => {
                ctx.line(format_args!(
                    "  zero-filled tail from byte {pos} ({} bytes, preallocated)",
                    len - pos
                ));
                break;
            }
            At::Bad(why) => {
                err(&mut t, pos, why);
                break;
            }
        };
        let whole = &buf[..];
        let crc_ok = match batch::verify(whole) {
            Ok(_) => true,
            Err(e) => {
                err(&mut t, pos, e.to_string());
                false
            }
        };
        if h.base_offset < expect {
            err(
                &mut t,
                pos,
                format!(
                    "base offset {} below the previous batch's next offset {expect}",
                    h.base_offset
                ),
            );
        }
        if !ctx.args.quiet {
            ctx.line(format_args!(
                "  batch base={} last={} count={} pos={pos} size={} crc={} first_ts={} max_ts={}{}{}",
                h.base_offset,
                h.last_offset(),
                h.records_count,
                h.total_len(),
                if crc_ok { "ok" } else { "BAD" },
                h.base_timestamp,
                h.max_timestamp,
                txn_note(&h, whole),
                match Compression::from_attributes(h.attributes) {
                    Ok(Compression::None) => String::new(),
                    Ok(c) => format!(" compression={c}"),
                    Err(e) => format!(" compression=BAD({e})"),
                }
            ));
        }
        if ctx.args.records && crc_ok {
            print_records(ctx, &mut t, path, pos, whole);
        }
        t.batches += 1;
        t.records += h.records_count.max(0) as u64;
        t.bytes += h.total_len() as u64;
        if t.first_offset.is_none() {
            t.first_offset = Some(h.base_offset);
        }
        t.next_offset = Some(h.next_offset());
        expect = expect.max(h.next_offset());
        starts.push((pos, h));
        pos += h.total_len();
    }
    check_indexes(ctx, &mut t, path, base, &starts);
    Ok(t)
}

/// What lies at a position of a segment.
enum At {
    /// A batch, whose bytes were read into the buffer.
    Batch(BatchHeader),
    /// Zero bytes from here to the end (a preallocated tail).
    ZeroTail,
    /// Corrupt or unreadable here: why.
    Bad(String),
}

/// The batch at byte `pos` of a `len`-byte segment file, read with pread into `buf`.
fn read_batch(file: &File, pos: usize, len: usize, buf: &mut Vec<u8>) -> At {
    let left = len - pos;
    let mut head = [0u8; batch::BATCH_HEADER_LEN];
    let n = left.min(head.len());
    if let Err(e) = read::read_exact_at(file, &mut head[..n], pos as u64) {
        return At::Bad(format!("unreadable: {e}"));
    }
    if head[..n.min(batch::LOG_OVERHEAD)].iter().all(|&b| b == 0) {
        return match zero_from(file, pos, len) {
            Ok(true) => At::ZeroTail,
            Ok(false) => At::Bad("zeroed batch header followed by data".into()),
            Err(e) => At::Bad(format!("unreadable: {e}")),
        };
    }
    let h = match BatchHeader::parse(&head[..n]) {
        Ok(h) if h.total_len() <= left => h,
        Ok(h) => {
            return At::Bad(format!(
                "truncated batch: needs {} bytes, {left} left in file",
                h.total_len()
            ))
        }
        Err(e) => return At::Bad(e.to_string()),
    };
    buf.resize(h.total_len(), 0);
    match read::read_exact_at(file, buf, pos as u64) {
        Ok(()) => At::Batch(h),
        Err(e) => At::Bad(format!("unreadable: {e}")),
    }
}

/// Whether bytes `from..len` of `file` are all zero (read in chunks).
fn zero_from(file: &File, from: usize, len: usize) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; 1 << 16];
    let mut at = from;
    while at < len {
        let n = (len - at).min(chunk.len());
        read::read_exact_at(file, &mut chunk[..n], at as u64)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}

fn print_records(ctx: &mut Ctx<'_>, t: &mut Totals, path: &Path, pos: usize, whole: &[u8]) {
    let decoded = record::records_section(whole).and_then(|(h, body)| {
        let recs = record::decode_records(&h, &body)?;
        recs.iter()
            .map(record::RecordRef::to_owned)
            .collect::<Result<Vec<_>, _>>()
    });
    let recs = match decoded {
        Ok(r) => r,
        Err(e) => {
            t.errors
                .push(format!("{}: corrupt at byte {pos}: {e}", path.display()));
            return;
        }
    };
    for r in recs {
        let key = r.key.as_deref().map_or("null".to_string(), |k| {
            format!("{:?}", String::from_utf8_lossy(k))
        });
        let value = match (r.value.as_deref(), ctx.args.values) {
            (None, _) => "null".to_string(),
            (Some(v), false) => format!("{} bytes", v.len()),
            (Some(v), true) => format!("{:?}", String::from_utf8_lossy(v)),
        };
        ctx.line(format_args!(
            "    offset={} ts={} key={key} value={value} headers={}",
            r.offset,
            r.timestamp,
            r.headers.len()
        ));
    }
}

/// Cross-checks `.index` / `.timeindex` against the batches. Problems are warnings: a broker
/// rebuilds damaged indexes, and the kxgw reader does not trust them either.
fn check_indexes(
    ctx: &mut Ctx<'_>,
    t: &mut Totals,
    log_path: &Path,
    base: i64,
    starts: &[(usize, BatchHeader)],
) {
    let mut warn = |ctx: &mut Ctx<'_>, msg: String| {
        t.warnings += 1;
        ctx.line(format_args!("  warning: {msg}"));
    };
    let idx_path = segment::index_path(log_path, base, INDEX_SUFFIX);
    if let Ok(buf) = std::fs::read(&idx_path) {
        let (entries, problem) = index::parse_index(&buf);
        if let Some((at, why)) = problem {
            warn(ctx, format!("{}: byte {at}: {why}", idx_path.display()));
        }
        let mut i = 0;
        for e in &entries {
            while i < starts.len() && starts[i].0 < e.position as usize {
                i += 1;
            }
            let ok = i < starts.len()
                && starts[i].0 == e.position as usize
                && starts[i].1.last_offset() == base + i64::from(e.relative_offset);
            if !ok {
                warn(
                    ctx,
                    format!(
                        "{}: entry (relative offset {}, position {}) does not match a batch",
                        idx_path.display(),
                        e.relative_offset,
                        e.position
                    ),
                );
                break;
            }
        }
    }
    let ti_path = segment::index_path(log_path, base, TIME_INDEX_SUFFIX);
    if let Ok(buf) = std::fs::read(&ti_path) {
        let (entries, problem) = index::parse_time_index(&buf);
        if let Some((at, why)) = problem {
            warn(ctx, format!("{}: byte {at}: {why}", ti_path.display()));
        }
        let last = starts.last().map(|(_, h)| h.last_offset());
        if let (Some(e), Some(last)) = (entries.last(), last) {
            if base + i64::from(e.relative_offset) > last {
                warn(
                    ctx,
                    format!(
                        "{}: entry offset {} beyond the segment's last offset {last}",
                        ti_path.display(),
                        base + i64::from(e.relative_offset)
                    ),
                );
            }
        }
    }
}
