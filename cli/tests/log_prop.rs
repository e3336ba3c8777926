//! Property tests: random logs written with the writer and read back at random offsets and
//! max_bytes must follow Kafka's fetch rule exactly; torn tails are never visible; a flipped
//! byte makes exactly the damaged batch unreadable (with its file and position), nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kxgw::log::writer::{NewRecord, PartitionWriter, WriterConfig};
use kxgw::log::{batch, Isolation, LogDir, LogError, Partition};
use proptest::prelude::*;

/// One batch as it lies on disk (ground truth from scanning the files independently).
#[derive(Clone, Debug)]
struct B {
    path: PathBuf,
    pos: u64,
    size: usize,
    base: i64,
    next: i64,
}

fn write(dir: &Path, batches: &[(usize, usize)], segment_bytes: u64, interval: u32) {
    let cfg = WriterConfig {
        segment_bytes,
        index_interval_bytes: interval,
        ..Default::default()
    };
    let mut w = PartitionWriter::open(dir, "p", 0, cfg).unwrap();
    for (i, &(n, vsize)) in batches.iter().enumerate() {
        let v = vec![b'a' + (i % 26) as u8; vsize];
        let recs = vec![
            NewRecord {
                timestamp: i as i64,
                value: Some(&v),
                ..Default::default()
            };
            n
        ];
        w.append(&recs).unwrap();
    }
}

fn model(dir: &Path) -> Vec<B> {
    let pdir = dir.join("p-0");
    let mut out = Vec::new();
    for base in kxgw::log::segment::list_segments(&pdir).unwrap() {
        let path = pdir.join(format!("{base:020}.log"));
        let data = std::fs::read(&path).unwrap();
        for r in batch::iter(&data) {
            let Ok((pos, h)) = r else { break };
            out.push(B {
                path: path.clone(),
                pos: pos as u64,
                size: h.total_len(),
                base: h.base_offset,
                next: h.next_offset(),
            });
        }
    }
    out
}

/// What a broker returns for (offset, max_bytes) given the batches below `end`.
fn expected(
    m: &[B],
    end: i64,
    offset: i64,
    max_bytes: usize,
) -> Option<(PathBuf, u64, usize, i64, i64)> {
    let i = m.iter().position(|b| b.next > offset)?;
    if m[i].next > end {
        return None;
    }
    let mut len = m[i].size;
    let mut next = m[i].next;
    for b in &m[i + 1..] {
        if b.path != m[i].path || b.next > end || len + b.size > max_bytes {
            break;
        }
        len += b.size;
        next = b.next;
    }
    Some((m[i].path.clone(), m[i].pos, len, m[i].base, next))
}

fn check_read(
    p: &Partition,
    m: &[B],
    end: i64,
    offset: i64,
    max_bytes: usize,
) -> Result<(), TestCaseError> {
    let s = p
        .read(offset, max_bytes)
        .map_err(|e| TestCaseError::fail(format!("read {offset}: {e}")))?;
    match expected(m, end, offset, max_bytes) {
        None => {
            prop_assert!(s.is_empty(), "offset {offset}: expected nothing, got {s:?}");
            prop_assert_eq!(s.next_offset, offset);
        }
        Some((path, pos, len, first, next)) => {
            prop_assert_eq!(s.path.as_path(), path.as_path(), "offset {}", offset);
            prop_assert_eq!(
                (s.position, s.len, s.first_offset, s.next_offset),
                (pos, len, first, next),
                "offset {} max {}",
                offset,
                max_bytes
            );
            for r in batch::iter(s.bytes()) {
                prop_assert!(r.is_ok());
            }
        }
    }
    Ok(())
}

fn open(dir: &Path) -> Arc<Partition> {
    LogDir::open(dir, Some(Isolation::LogEnd))
        .unwrap()
        .partition("p", 0)
        .unwrap()
}

fn batches_strategy() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((1usize..8, 0usize..300), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_logs_read_back(
        batches in batches_strategy(),
        segment_bytes in 200u64..5000,
        interval in 0u32..3000,
        queries in prop::collection::vec((any::<prop::sample::Index>(), 0usize..6000), 1..80),
    ) {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &batches, segment_bytes, interval);
        let m = model(d.path());
        let end = m.last().unwrap().next;
        prop_assert_eq!(end as usize, batches.iter().map(|b| b.0).sum::<usize>());
        let p = open(d.path());
        let o = p.offsets();
        prop_assert_eq!((o.log_start, o.log_end, o.high_watermark), (0, end, end));
        for (ix, max_bytes) in queries {
            let offset = ix.index(end as usize + 1) as i64;
            check_read(&p, &m, end, offset, max_bytes)?;
        }
        // A consumer fetching from 0 sees every batch exactly once, in order.
        let mut off = 0;
        let mut seen = 0;
        while off < end {
            let s = p.read(off, 1000).unwrap();
            prop_assert!(!s.is_empty());
            seen += batch::iter(s.bytes()).count();
            off = s.next_offset;
        }
        prop_assert_eq!(seen, m.len());
        let past_end = matches!(p.read(end + 1, 10), Err(LogError::OffsetOutOfRange { .. }));
        prop_assert!(past_end);
    }

    #[test]
    fn torn_tail_never_visible(
        batches in batches_strategy(),
        segment_bytes in 200u64..5000,
        cut in any::<prop::sample::Index>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &batches, segment_bytes, 500);
        let m = model(d.path());
        let last = m.last().unwrap().path.clone();
        let data = std::fs::read(&last).unwrap();
        let keep = cut.index(data.len());
        std::fs::write(&last, &data[..keep]).unwrap();
        let survivors: Vec<B> = m
            .iter()
            .filter(|b| b.path != last || b.pos + b.size as u64 <= keep as u64)
            .cloned()
            .collect();
        let seg_base: i64 = last.file_name().unwrap().to_str().unwrap()[..20].parse().unwrap();
        let end = survivors.last().map_or(0, |b| b.next).max(seg_base);
        let p = open(d.path());
        prop_assert_eq!(p.offsets().log_end, end);
        for offset in 0..=end {
            check_read(&p, &survivors, end, offset, 700)?;
        }
    }

    #[test]
    fn flipped_byte_is_never_served(
        batches in batches_strategy(),
        segment_bytes in 200u64..5000,
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &batches, segment_bytes, 500);
        let m = model(d.path());
        let bad = m[which.index(m.len())].clone();
        // Inside the CRC-covered part (attributes..end).
        let crc_from = batch::ATTRIBUTES_OFFSET;
        let flip = bad.pos as usize + crc_from + at.index(bad.size - crc_from);
        let mut data = std::fs::read(&bad.path).unwrap();
        data[flip] ^= 1 << bit;
        std::fs::write(&bad.path, &data).unwrap();
        let p = open(d.path());
        let end = p.offsets().log_end;
        let last_seg = &m.last().unwrap().path;
        if &bad.path == last_seg {
            prop_assert_eq!(end, bad.base, "validation stops at the bad batch");
        } else {
            prop_assert_eq!(end, m.last().unwrap().next);
        }
        for offset in 0..end.max(bad.base + 1) {
            let r = p.read(offset, 100_000);
            // Batches after the bad one in the same segment are unreachable too.
            let unreachable = offset >= bad.base
                && m.iter().any(|b| b.path == bad.path && b.base <= offset && offset < b.next);
            match r {
                Ok(s) => {
                    prop_assert!(!unreachable, "offset {offset} served from the damaged region: {s:?}");
                    prop_assert!(s.path.as_path() != bad.path.as_path() || s.position + s.len as u64 <= bad.pos);
                    for r in batch::iter(s.bytes()) {
                        prop_assert!(r.is_ok());
                    }
                }
                Err(LogError::Corrupt { path, position, .. }) => {
                    prop_assert!(unreachable, "offset {offset} should be readable");
                    prop_assert_eq!(path, bad.path.clone());
                    prop_assert_eq!(position, bad.pos);
                }
                Err(e) => {
                    prop_assert!(unreachable && offset > end, "offset {offset}: {e}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Records area damaged but the CRC recomputed (a buggy producer): decoding reports an
    /// error or decodes, never panics.
    #[test]
    fn damaged_records_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        n in 1usize..6,
    ) {
        let mut b = kxgw::log::writer::BatchBuilder::new();
        b.begin(7);
        for i in 0..n {
            b.push(&NewRecord {
                timestamp: i as i64,
                key: Some(b"key"),
                value: Some(&[1u8; 20]),
                headers: vec![("h", Some(b"v".as_slice()))],
            });
        }
        let mut bytes = b.finish().to_vec();
        for (at, v) in flips {
            let i = batch::BATCH_HEADER_LEN + at.index(bytes.len() - batch::BATCH_HEADER_LEN);
            bytes[i] = v;
        }
        let crc = batch::compute_crc(&bytes);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let _ = kxgw::log::record::decode_batch(&bytes);
    }

    /// Garbage (random bytes, valid batches with random bytes between or after them) in
    /// segment files: opening, reading every offset and looking up timestamps never panics,
    /// and whatever is served verifies.
    #[test]
    fn garbage_segments_never_panic(
        chunks in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200).prop_map(|v| (false, v)),
                (1usize..5).prop_map(|n| (true, vec![0u8; n])),
            ],
            1..8,
        ),
        offsets in prop::collection::vec(0i64..200, 1..20),
    ) {
        let d = tempfile::tempdir().unwrap();
        let pdir = d.path().join("g-0");
        std::fs::create_dir(&pdir).unwrap();
        let mut data = Vec::new();
        let mut next = 0i64;
        for (valid, v) in chunks {
            if valid {
                let mut b = kxgw::log::writer::BatchBuilder::new();
                b.begin(next);
                for _ in 0..v.len() {
                    b.push(&NewRecord { timestamp: next, value: Some(b"x"), ..Default::default() });
                }
                data.extend_from_slice(b.finish());
                next += v.len() as i64;
            } else {
                data.extend_from_slice(&v);
            }
        }
        std::fs::write(pdir.join(format!("{:020}.log", 0)), &data).unwrap();
        std::fs::write(pdir.join(format!("{:020}.index", 0)), &data[..data.len() / 2]).unwrap();
        let log = LogDir::open(d.path(), None).unwrap();
        let p = log.partition("g", 0).unwrap();
        for off in offsets {
            if let Ok(s) = p.read(off, 100) {
                for r in batch::iter(s.bytes()) {
                    prop_assert!(r.is_ok());
                }
            }
            let _ = p.offset_for_timestamp(off);
        }
    }
}
