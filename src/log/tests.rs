//! Reader tests over logs written by the writer (unit level; property and end-to-end tests
//! live in tests/).

use std::path::Path;

use super::batch;
use super::writer::{NewRecord, PartitionWriter, WriterConfig};
use super::{Isolation, LogDir, LogError};

fn write_log(dir: &Path, batches: &[usize], segment_bytes: u64) -> Vec<(i64, i64)> {
    let cfg = WriterConfig {
        segment_bytes,
        index_interval_bytes: 200,
        ..Default::default()
    };
    let mut w = PartitionWriter::open(dir, "t", 0, cfg).unwrap();
    let val = [b'v'; 50];
    let mut out = Vec::new();
    for (i, &n) in batches.iter().enumerate() {
        let recs = vec![
            NewRecord {
                timestamp: 1000 + 10 * i as i64,
                value: Some(&val),
                ..Default::default()
            };
            n
        ];
        let base = w.append(&recs).unwrap();
        out.push((base, base + n as i64));
    }
    w.flush().unwrap();
    out
}

#[test]
fn read_every_offset() {
    let d = tempfile::tempdir().unwrap();
    let batches = write_log(d.path(), &[1, 3, 7, 2, 5, 1, 1, 4, 9, 3], 700);
    let log = LogDir::open(d.path(), None).unwrap();
    assert_eq!(log.isolation(), Isolation::LogEnd);
    let p = log.partition("t", 0).unwrap();
    let end = batches.last().unwrap().1;
    let o = p.offsets();
    assert_eq!((o.log_start, o.log_end, o.high_watermark), (0, end, end));
    assert!(p.segment_bases().len() > 2);
    for max_bytes in [0usize, 1, 100, 300, 1000, 1 << 20] {
        for off in 0..end {
            let s = p.read(off, max_bytes).unwrap();
            assert!(!s.is_empty());
            let (b0, _) = batches.iter().find(|(b, n)| *b <= off && off < *n).unwrap();
            assert_eq!(s.first_offset, *b0, "offset {off}");
            let mut expect = s.first_offset;
            let mut count = 0;
            for r in batch::iter(s.bytes()) {
                let (_, h) = r.unwrap();
                assert_eq!(h.base_offset, expect);
                expect = h.next_offset();
                count += 1;
            }
            assert_eq!(expect, s.next_offset);
            assert!(count == 1 || s.len <= max_bytes, "max_bytes {max_bytes}");
            // Whole next batch would not have fitted (unless it is in another segment).
            if s.next_offset < end {
                let next = p.read(s.next_offset, usize::MAX).unwrap();
                let nb = batch::iter(next.bytes()).next().unwrap().unwrap().1;
                assert!(
                    s.len + nb.total_len() > max_bytes || next.path != s.path,
                    "fetch stopped early at {off}/{max_bytes}"
                );
            }
        }
    }
    let e = p.read(end, 100).unwrap();
    assert!(e.is_empty());
    assert_eq!(e.next_offset, end);
    assert!(matches!(
        p.read(end + 1, 100),
        Err(LogError::OffsetOutOfRange { log_end, .. }) if log_end == end
    ));
    assert!(matches!(
        p.read(-1, 100),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn empty_and_missing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("empty-0")).unwrap();
    std::fs::create_dir(d.path().join("not-a-partition")).unwrap();
    std::fs::create_dir(d.path().join("x-0.abc-delete")).unwrap();
    let log = LogDir::open(d.path(), None).unwrap();
    let parts = log.partitions();
    assert_eq!(parts.len(), 1);
    let p = &parts[0];
    assert_eq!((p.topic(), p.partition()), ("empty", 0));
    let s = p.read(0, 100).unwrap();
    assert!(s.is_empty());
    assert!(s.bytes().is_empty());
    assert!(LogDir::open(d.path().join("nope"), None).is_err());
}

#[test]
fn grows_and_torn_tail_is_invisible() {
    let d = tempfile::tempdir().unwrap();
    write_log(d.path(), &[2, 2], 1 << 20);
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 0).unwrap();
    assert_eq!(p.offsets().log_end, 4);
    let old = p.read(0, usize::MAX).unwrap();
    // Append one more batch in two halves: the first half must stay invisible.
    let seg = d.path().join("t-0/00000000000000000000.log");
    let mut b = super::writer::BatchBuilder::new();
    b.begin(4);
    b.push(&NewRecord {
        timestamp: 5,
        value: Some(b"tail"),
        ..Default::default()
    });
    let bytes = b.finish().to_vec();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    use std::io::Write;
    f.write_all(&bytes[..30]).unwrap();
    log.refresh().unwrap();
    assert_eq!(p.offsets().log_end, 4);
    assert!(p.read(4, 100).unwrap().is_empty());
    f.write_all(&bytes[30..]).unwrap();
    log.refresh().unwrap();
    assert_eq!(p.offsets().log_end, 5);
    let s = p.read(4, 100).unwrap();
    assert_eq!(s.bytes(), &bytes[..]);
    // The slice read before the remap still points at valid bytes.
    assert_eq!(batch::iter(old.bytes()).count(), 2);
}

#[test]
fn high_watermark_retention_and_replacement() {
    use super::checkpoint::{self, Checkpoint};
    use super::TopicPartition;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let d = tempfile::tempdir().unwrap();
    let batches = write_log(d.path(), &[5; 30], 600);
    let end = batches.last().unwrap().1;
    let ckpt = d.path().join(checkpoint::REPLICATION_OFFSET_CHECKPOINT);
    let mut c = Checkpoint::new();
    c.insert(TopicPartition::new("t", 0), 42);
    checkpoint::write(&ckpt, &c).unwrap();
    let log = LogDir::open(d.path(), None).unwrap();
    assert_eq!(log.isolation(), Isolation::HighWatermark);
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    log.on_append(Box::new(move |_| {
        h2.fetch_add(1, Ordering::SeqCst);
    }));
    let p = log.partition("t", 0).unwrap();
    let o = p.offsets();
    assert_eq!((o.log_start, o.log_end, o.high_watermark), (0, end, 42));
    assert_eq!(p.readable_end(), 42);
    // Batches are [40, 45) and [45, 50): the one straddling the HW is not visible yet.
    let s = p.read(38, usize::MAX).unwrap();
    assert_eq!(s.next_offset, 40);
    assert!(p.read(40, 1000).unwrap().is_empty());
    assert!(matches!(
        p.read(43, 1000),
        Err(LogError::OffsetOutOfRange { log_end: 42, .. })
    ));
    // HW moves: hook fires, more is readable.
    c.insert(TopicPartition::new("t", 0), 100);
    checkpoint::write(&ckpt, &c).unwrap();
    log.refresh().unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(p.read(40, 1000).unwrap().first_offset, 40);
    // A LogEnd reader of the same dir ignores the checkpoint.
    let leo = LogDir::open(d.path(), Some(Isolation::LogEnd)).unwrap();
    assert_eq!(leo.partition("t", 0).unwrap().readable_end(), end);

    // Retention deletes the two oldest segments.
    let bases = p.segment_bases();
    assert!(bases.len() > 4);
    let pdir = d.path().join("t-0");
    for b in &bases[..2] {
        for ext in ["log", "index", "timeindex"] {
            std::fs::remove_file(pdir.join(format!("{b:020}.{ext}"))).unwrap();
        }
    }
    // Until the next refresh the deleted files stay open and mapped: still served.
    let held = p.read(bases[1], 100).unwrap();
    assert_eq!(held.first_offset, bases[1]);
    log.refresh().unwrap();
    assert_eq!(p.offsets().log_start, bases[2]);
    assert!(matches!(
        p.read(0, 100),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(p.read(bases[2], 1).unwrap().first_offset, bases[2]);
    // log-start-offset-checkpoint moves the start inside a segment.
    let mut ls = Checkpoint::new();
    ls.insert(TopicPartition::new("t", 0), bases[2] + 3);
    checkpoint::write(&d.path().join(checkpoint::LOG_START_OFFSET_CHECKPOINT), &ls).unwrap();
    log.refresh().unwrap();
    assert_eq!(p.offsets().log_start, bases[2] + 3);
    assert!(p.read(bases[2] + 2, 1).is_err());

    // A segment replaced by a rewritten file (compaction swap) is reread.
    let seg = pdir.join(format!("{:020}.log", bases[3]));
    let old = p.read(bases[3], 1).unwrap();
    let data = std::fs::read(&seg).unwrap();
    let first = batch::verify(&data).unwrap();
    let tmp = pdir.join("swap.tmp");
    std::fs::write(&tmp, &data[first.total_len()..]).unwrap();
    std::fs::rename(&tmp, &seg).unwrap();
    log.refresh().unwrap();
    let s = p.read(bases[3], 1).unwrap();
    assert_eq!(s.first_offset, first.next_offset());
    assert_eq!(s.position, 0);
    // Slices taken before the deletion and the swap still read the old bytes.
    assert_eq!(batch::verify(held.bytes()).unwrap().base_offset, bases[1]);
    assert_eq!(batch::verify(old.bytes()).unwrap().base_offset, bases[3]);
}

#[test]
fn offset_for_timestamp() {
    let d = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        segment_bytes: 800,
        index_interval_bytes: 100,
        ..Default::default()
    };
    let mut w = PartitionWriter::open(d.path(), "t", 0, cfg).unwrap();
    // Timestamps per record: 10 * offset, except a late record inside each batch.
    let mut all = Vec::new();
    for b in 0..40i64 {
        let recs: Vec<NewRecord> = (0..4i64)
            .map(|i| {
                let off = b * 4 + i;
                let ts = if i == 2 { 10 * off - 25 } else { 10 * off };
                all.push((off, ts));
                NewRecord {
                    timestamp: ts,
                    value: Some(b"v"),
                    ..Default::default()
                }
            })
            .collect();
        w.append(&recs).unwrap();
    }
    drop(w);
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 0).unwrap();
    assert!(p.segment_bases().len() > 3);
    for target in [-5i64, 0, 1, 7, 30, 333, 1000, 1234, 1575, 1580, 1590] {
        // Kafka: first batch whose max timestamp >= target, then its first record >= target.
        let want = (0..40i64).find_map(|b| {
            let recs = &all[(b * 4) as usize..(b * 4 + 4) as usize];
            if recs.iter().map(|r| r.1).max().unwrap() >= target {
                recs.iter().find(|r| r.1 >= target).copied()
            } else {
                None
            }
        });
        assert_eq!(
            p.offset_for_timestamp(target).unwrap(),
            want,
            "target {target}"
        );
    }
    assert_eq!(p.offset_for_timestamp(1591).unwrap(), None);
}

#[test]
fn preallocated_and_garbage_indexes_are_tolerated() {
    let d = tempfile::tempdir().unwrap();
    let batches = write_log(d.path(), &[3; 40], 1 << 20);
    let end = batches.last().unwrap().1;
    let pdir = d.path().join("t-0");
    let check = || {
        let log = LogDir::open(d.path(), None).unwrap();
        let p = log.partition("t", 0).unwrap();
        assert_eq!(p.offsets().log_end, end);
        for off in 0..end {
            let s = p.read(off, 1).unwrap();
            assert!(s.first_offset <= off && off < s.next_offset);
        }
    };
    // Preallocated like a broker's active segment: 10 MiB, zeroed after the real entries.
    for ext in ["index", "timeindex"] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(pdir.join(format!("{:020}.{ext}", 0)))
            .unwrap();
        f.set_len(10 << 20).unwrap();
    }
    check();
    // Garbage and a torn entry.
    std::fs::write(pdir.join(format!("{:020}.index", 0)), [0xabu8; 8 * 7 + 3]).unwrap();
    std::fs::write(pdir.join(format!("{:020}.timeindex", 0)), [0x11u8; 5]).unwrap();
    check();
    // Missing altogether.
    std::fs::remove_file(pdir.join(format!("{:020}.index", 0))).unwrap();
    check();
}

#[test]
fn old_segments_are_validated_on_first_use() {
    let d = tempfile::tempdir().unwrap();
    write_log(d.path(), &[4; 60], 1000);
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 0).unwrap();
    let bases = p.segment_bases();
    assert!(bases.len() > 3);
    // Damage the second segment after open: open did not read it, the first read does
    // and refuses the damaged batch.
    let seg = d.path().join(format!("t-0/{:020}.log", bases[1]));
    let mut data = std::fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 3] ^= 0xff;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&data[n - 3..n - 2], (n - 3) as u64).unwrap();
    assert_eq!(p.read(bases[1], 1).unwrap().first_offset, bases[1]);
    let last_batch = bases[2] - 4;
    assert!(matches!(
        p.read(last_batch, 1),
        Err(LogError::Corrupt { ref path, .. }) if *path == seg
    ));
    assert_eq!(p.read(bases[2], 1).unwrap().first_offset, bases[2]);
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<LogDir>();
    check::<super::Partition>();
    check::<super::ReadSlice>();
    check::<super::FollowerHandle>();
    check::<LogError>();
}

/// A batch as the cleaner leaves one: records at `deltas` only (offset deltas kept, so the
/// offsets have gaps), the last offset delta of the original batch in the header.
fn compacted_batch(base: i64, deltas: &[i32], last_delta: i32) -> Vec<u8> {
    use super::varint::put_i64;
    let mut b = vec![0u8; batch::BATCH_HEADER_LEN];
    for &d in deltas {
        let mut r = Vec::new();
        r.push(0); // attributes
        put_i64(&mut r, 0); // timestamp delta
        put_i64(&mut r, i64::from(d));
        put_i64(&mut r, -1); // no key
        put_i64(&mut r, 1);
        r.push(b'v');
        put_i64(&mut r, 0); // no headers
        put_i64(&mut b, r.len() as i64);
        b.extend_from_slice(&r);
    }
    let len = (b.len() - batch::LOG_OVERHEAD) as i32;
    b[0..8].copy_from_slice(&base.to_be_bytes());
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[16] = 2;
    b[23..27].copy_from_slice(&last_delta.to_be_bytes());
    b[27..35].copy_from_slice(&1000i64.to_be_bytes());
    b[35..43].copy_from_slice(&1000i64.to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&(deltas.len() as i32).to_be_bytes());
    let crc = batch::compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Compaction gaps inside and between batches and between segments: a fetch inside a gap
/// starts at the next batch that holds a later offset, as a broker serves it.
#[test]
fn compacted_gaps_are_served_from_the_next_batch() {
    let d = tempfile::tempdir().unwrap();
    let part = d.path().join("t-0");
    std::fs::create_dir_all(&part).unwrap();
    let mut seg0 = compacted_batch(0, &[0, 2, 4], 4); // 0..=4, keeps 0, 2, 4
    seg0.extend(compacted_batch(10, &[3], 5)); // 10..=15, keeps 13
    std::fs::write(part.join("00000000000000000000.log"), &seg0).unwrap();
    let seg1 = compacted_batch(30, &[0, 1], 1);
    std::fs::write(part.join("00000000000000000020.log"), &seg1).unwrap();
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 0).unwrap();
    assert_eq!((p.offsets().log_start, p.offsets().log_end), (0, 32));
    let first = |off: i64| {
        let s = p.read(off, 1).unwrap();
        let b = s.to_vec().unwrap();
        (batch::verify(&b).unwrap().base_offset, s.next_offset)
    };
    assert_eq!(first(3), (0, 5), "inside a batch's gap: that batch");
    assert_eq!(first(7), (10, 16), "between batches: the next one");
    assert_eq!(
        first(16),
        (30, 32),
        "past the segment's last batch: the next segment"
    );
    assert_eq!(first(25), (30, 32), "between segments");
    let recs = super::record::decode_batch(&p.read(10, 1).unwrap().to_vec().unwrap()).unwrap();
    assert_eq!(recs.iter().map(|r| r.offset).collect::<Vec<_>>(), [13]);
}

/// A cleaner's `.swap` stands in for its segment and for the later segments its offsets
/// cover; `.cleaned` and `.deleted` files are never served; the final rename changes
/// nothing a consumer sees.
#[test]
fn swap_files_replace_the_segments_they_cover() {
    let d = tempfile::tempdir().unwrap();
    let batches = write_log(d.path(), &[3, 3, 3, 3, 3, 3], 300);
    let part = d.path().join("t-0");
    let bases = super::segment::list_segments(&part).unwrap();
    assert!(bases.len() >= 3, "{bases:?}");
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 0).unwrap();
    let end = p.offsets().log_end;
    let name =
        |b: i64, suffix: &str| part.join(format!("{}.log{suffix}", super::segment::file_stem(b)));
    // The cleaner merged the first two segments and kept only offset 0 of the first batch
    // (offsets 1 and 2 are gone: a gap inside the merged segment).
    let mut merged = compacted_batch(0, &[0], 2);
    let second_start = std::fs::read(name(bases[0], "")).unwrap();
    let h0 = batch::verify(&second_start).unwrap();
    merged.extend_from_slice(&second_start[h0.total_len()..]);
    merged.extend(std::fs::read(name(bases[1], "")).unwrap());
    std::fs::write(name(0, ".cleaned"), b"half-written garbage").unwrap();
    log.refresh().unwrap();
    assert_eq!(p.segment_bases(), bases, ".cleaned is ignored");
    std::fs::remove_file(name(0, ".cleaned")).unwrap();
    std::fs::write(name(0, ".swap"), &merged).unwrap();
    std::fs::rename(name(bases[0], ""), name(bases[0], ".deleted")).unwrap();
    std::fs::rename(name(bases[1], ""), name(bases[1], ".deleted")).unwrap();
    log.refresh().unwrap();
    let mut want: Vec<i64> = vec![0];
    want.extend(&bases[2..]);
    assert_eq!(p.segment_bases(), want, "the swap stands in for both");
    assert_eq!(p.offsets().log_end, end);
    let s = p.read(1, 1).unwrap();
    assert_eq!((s.first_offset, s.next_offset), (0, 3));
    assert_eq!(p.read(batches[1].0, 1).unwrap().first_offset, batches[1].0);
    std::fs::rename(name(0, ".swap"), name(0, "")).unwrap();
    log.refresh().unwrap();
    assert_eq!(p.segment_bases(), want);
    assert_eq!(
        p.read(1, 1).unwrap().to_vec().unwrap(),
        compacted_batch(0, &[0], 2)
    );
}

/// A segment truncated in place under the reader: slices read before fail their copies
/// (pread, never SIGBUS); reads stop at the surviving batches, and after the refresh the
/// lost offsets are out of range.
#[test]
fn truncated_in_place_under_the_reader() {
    let d = tempfile::tempdir().unwrap();
    let batches = write_log(d.path(), &[5; 40], 1 << 20);
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 0).unwrap();
    let whole = p.read(0, usize::MAX).unwrap();
    let seg = d.path().join("t-0/00000000000000000000.log");
    let bytes = std::fs::read(&seg).unwrap();
    let cut: usize = batch::iter(&bytes).nth(20).unwrap().unwrap().0;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    assert!(
        whole.to_vec().is_err(),
        "the old slice cannot be copied whole"
    );
    let mut head = vec![0u8; cut];
    whole.read_at(0, &mut head).unwrap();
    assert_eq!(head, bytes[..cut]);
    // Before the refresh: the surviving batches, and an error (not a crash) past them.
    let s = p.read(0, usize::MAX).unwrap();
    assert_eq!((s.len, s.next_offset), (cut, batches[20].0));
    assert!(matches!(p.read(batches[30].0, 1), Err(LogError::Io { .. })));
    log.refresh().unwrap();
    assert_eq!(p.offsets().log_end, batches[20].0);
    assert!(matches!(
        p.read(batches[30].0, 1),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

/// Reads take whole batches up to a sparse-index entry without reading their headers: the
/// slice must be exactly what a header-by-header walk gives, for every start and size.
#[test]
fn reads_that_jump_the_index_match_a_header_walk() {
    let d = tempfile::tempdir().unwrap();
    // Batch sizes from a few records to well over the 4 KiB index stride.
    let sizes: Vec<usize> = (0..300).map(|i| [1, 3, 40, 2, 120, 7][i % 6]).collect();
    let batches = write_log(d.path(), &sizes, 1 << 30);
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 0).unwrap();
    let bytes = std::fs::read(d.path().join("t-0/00000000000000000000.log")).unwrap();
    let spans: Vec<(usize, usize)> = batch::iter(&bytes)
        .map(|b| {
            let (pos, b) = b.unwrap();
            (pos, b.total_len())
        })
        .collect();
    for start in [0, 1, 5, 77, 150, 299] {
        for max in [1, 500, 4096, 20_000, 100_000, usize::MAX] {
            let s = p.read(batches[start].0, max).unwrap();
            // The walk: the first batch always, then whole batches while they fit.
            let mut len = spans[start].1;
            let mut i = start + 1;
            while i < spans.len() && len + spans[i].1 <= max {
                len += spans[i].1;
                i += 1;
            }
            assert_eq!(
                (s.position, s.len, s.first_offset, s.next_offset),
                (
                    spans[start].0 as u64,
                    len,
                    batches[start].0,
                    batches[i - 1].1
                ),
                "start batch {start}, max {max}"
            );
        }
    }
}
