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
