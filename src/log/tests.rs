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
