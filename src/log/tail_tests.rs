//! The busy poller's tail check ([`LogDir::poll_tail`]) keeps the follower's guarantees:
//! growth is seen without a follower, a torn append stays invisible until complete, a corrupt
//! batch is never served, rolls are the follower's and then followed.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::segment::{file_stem, LOG_SUFFIX};
use super::writer::{BatchBuilder, NewRecord, PartitionWriter, WriterConfig};
use super::LogDir;

fn record(v: &[u8]) -> NewRecord<'_> {
    NewRecord {
        timestamp: 1000,
        value: Some(v),
        ..Default::default()
    }
}

/// A valid one-record batch at `base`, as the writer would append it.
fn batch_at(base: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.begin(base);
    b.push(&record(b"appended behind the writer's back"));
    b.finish().to_vec()
}

fn segment_path(dir: &Path, base: i64) -> PathBuf {
    dir.join("t-0")
        .join(format!("{}{LOG_SUFFIX}", file_stem(base)))
}

fn append_raw(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// A log of 3 records in segment 0, opened (no follower: only poll_tail refreshes it).
fn setup() -> (tempfile::TempDir, std::sync::Arc<LogDir>) {
    let d = tempfile::tempdir().unwrap();
    let mut w = PartitionWriter::open(d.path(), "t", 0, WriterConfig::default()).unwrap();
    for _ in 0..3 {
        w.append(&[record(b"v")]).unwrap();
    }
    w.flush().unwrap();
    let log = LogDir::open(d.path(), None).unwrap();
    (d, log)
}

#[test]
fn growth_is_seen_and_validated_on_the_checking_thread() {
    let (d, log) = setup();
    let p = log.partition("t", 0).unwrap();
    assert_eq!(p.readable_end(), 3);
    let opened = p.tail_stamps().get();
    assert!(!log.poll_tail(&p), "nothing appended: no refresh");
    assert_eq!(p.tail_stamps().get(), opened);
    let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w2 = woken.clone();
    log.on_append(Box::new(move |_| {
        w2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    append_raw(&segment_path(d.path(), 0), &batch_at(3));
    assert!(p.tail_changed());
    assert!(log.poll_tail(&p));
    assert_eq!(p.readable_end(), 4);
    assert_eq!(
        woken.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "hooks ran"
    );
    let (detected, validated) = p.tail_stamps().get().unwrap();
    assert!(detected > 0 && detected <= validated);
    assert!(opened.is_none_or(|(_, v)| v <= detected), "stamped anew");
    let s = p.read(3, 1 << 20).unwrap();
    assert_eq!((s.first_offset, s.next_offset), (3, 4));
    assert!(!p.tail_changed());
    assert!(!log.poll_tail(&p), "seen once");
}

#[test]
fn a_torn_append_stays_invisible_until_complete() {
    let (d, log) = setup();
    let p = log.partition("t", 0).unwrap();
    let path = segment_path(d.path(), 0);
    let b = batch_at(3);
    for cut in [1, 12, 61, b.len() - 1] {
        let (d2, log2) = setup();
        let p2 = log2.partition("t", 0).unwrap();
        let path2 = segment_path(d2.path(), 0);
        append_raw(&path2, &b[..cut]);
        assert!(!log2.poll_tail(&p2), "cut at {cut}: nothing complete");
        assert_eq!(p2.readable_end(), 3);
        assert!(p2.read(3, 1 << 20).unwrap().is_empty());
        assert!(!p2.tail_changed(), "the partial bytes were looked at once");
        append_raw(&path2, &b[cut..]);
        assert!(log2.poll_tail(&p2), "cut at {cut}: completed");
        assert_eq!(p2.readable_end(), 4);
    }
    // Two batches whose second is torn: the first is served alone.
    let mut two = batch_at(3);
    two.extend_from_slice(&batch_at(4)[..20]);
    append_raw(&path, &two);
    assert!(log.poll_tail(&p));
    assert_eq!(p.readable_end(), 4);
    assert_eq!(p.read(3, 1 << 20).unwrap().next_offset, 4);
}

#[test]
fn a_corrupt_appended_batch_is_never_served() {
    let (d, log) = setup();
    let p = log.partition("t", 0).unwrap();
    let mut b = batch_at(3);
    let last = b.len() - 1;
    b[last] ^= 0xFF; // a record byte: the CRC no longer matches
    append_raw(&segment_path(d.path(), 0), &b);
    assert!(!log.poll_tail(&p));
    assert_eq!(p.readable_end(), 3);
    assert!(
        p.read(3, 1 << 20).is_err(),
        "the reader says why it gets nothing"
    );
    // Valid batches behind it change nothing: the log stops at the damage.
    append_raw(&segment_path(d.path(), 0), &batch_at(4));
    assert!(!log.poll_tail(&p));
    assert_eq!(p.readable_end(), 3);
}

#[test]
fn a_roll_is_the_followers_then_the_new_segment_is_checked() {
    let d = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        segment_bytes: 1000,
        ..WriterConfig::default()
    };
    let mut w = PartitionWriter::open(d.path(), "t", 0, cfg).unwrap();
    w.append(&[record(b"v")]).unwrap();
    w.flush().unwrap();
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 0).unwrap();
    let big = [b'x'; 300];
    while w.active_segment_base() == 0 {
        w.append(&[record(&big)]).unwrap();
        w.flush().unwrap();
    }
    let rolled_end = w.next_offset();
    // The old segment grew before the roll: its growth is seen, the new segment is not.
    log.poll_tail(&p);
    assert!(p.readable_end() < rolled_end);
    assert_eq!(p.segment_bases(), vec![0]);
    // The follower's structural refresh finds the new segment ...
    log.refresh_partition(&p);
    assert_eq!(p.readable_end(), rolled_end);
    assert_eq!(p.segment_bases().len(), 2);
    // ... whose appends the tail check then sees.
    let active = w.active_segment_base();
    w.append(&[record(b"after the roll")]).unwrap();
    w.flush().unwrap();
    assert_eq!(w.active_segment_base(), active, "no second roll");
    assert!(log.poll_tail(&p));
    assert_eq!(p.readable_end(), rolled_end + 1);
}

#[test]
fn appends_to_the_active_segment_reuse_its_mapping() {
    let (d, log) = setup();
    let p = log.partition("t", 0).unwrap();
    let before = p.read(0, 1 << 20).unwrap();
    for base in 3..6 {
        append_raw(&segment_path(d.path(), 0), &batch_at(base));
        assert!(log.poll_tail(&p));
    }
    let after = p.read(0, 1 << 20).unwrap();
    assert_eq!((after.first_offset, after.next_offset), (0, 6));
    assert!(
        std::sync::Arc::ptr_eq(&before.map, &after.map),
        "an append within the mapped step must not map the segment again"
    );
    // The mapping shows the appended bytes (what the kernel sends from) as pread does.
    assert_eq!(after.bytes(), after.to_vec().unwrap().as_slice());
}

#[test]
fn a_truncation_in_place_is_seen_by_the_tail_check() {
    let (d, log) = setup();
    let p = log.partition("t", 0).unwrap();
    let path = segment_path(d.path(), 0);
    let kept = std::fs::metadata(&path).unwrap().len();
    append_raw(&path, &batch_at(3));
    append_raw(&path, &batch_at(4));
    assert!(log.poll_tail(&p));
    assert_eq!(p.readable_end(), 5);
    // A broker truncating its log to the leader's end (same file, shorter).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(kept)
        .unwrap();
    assert!(p.tail_changed(), "a shorter file is a change of the tail");
    assert!(!log.poll_tail(&p), "the end went back: nothing to announce");
    assert_eq!(
        p.readable_end(),
        3,
        "without waiting for the follower's rescan"
    );
    assert!(p.read(4, 1 << 20).is_err(), "offset 4 is gone");
    assert!(!p.tail_changed());
    // Appends after the truncation are found again.
    append_raw(&path, &batch_at(3));
    assert!(log.poll_tail(&p));
    assert_eq!(p.readable_end(), 4);
}

#[test]
fn a_tail_check_behind_another_refresh_is_not_a_truncation() {
    let (d, log) = setup();
    let p = log.partition("t", 0).unwrap();
    let path = segment_path(d.path(), 0);
    let seen = p.tail_length_change();
    assert_eq!(seen, None, "nothing appended yet");
    append_raw(&path, &batch_at(3));
    let stale = p.tail_length_change().unwrap();
    append_raw(&path, &batch_at(4));
    // The follower took both appends in after the busy poller's fstat saw only the first.
    log.refresh().unwrap();
    assert_eq!(p.readable_end(), 5);
    let source = p.read(3, 1 << 20).unwrap().source.id;
    assert!(matches!(
        p.try_refresh_tail(None, None, stale),
        Some(Ok(false))
    ));
    assert_eq!(p.readable_end(), 5, "the segment was not taken back");
    assert_eq!(
        p.read(3, 1 << 20).unwrap().source.id,
        source,
        "nor reopened"
    );
}

#[test]
fn a_tailing_read_carries_the_header_its_validation_parsed() {
    let (d, log) = setup();
    let p = log.partition("t", 0).unwrap();
    let path = segment_path(d.path(), 0);
    append_raw(&path, &batch_at(3));
    assert!(log.poll_tail(&p));
    let s = p.read(3, 1 << 20).unwrap();
    let known = s.first_header.expect("the newest batch's header");
    let mut read = s.clone();
    read.first_header = None;
    assert_eq!(
        read.header_at(0).unwrap(),
        known,
        "the header as read from the file"
    );
    assert_eq!(known.base_offset, 3);
    // An older batch is read from the file, as before.
    assert_eq!(p.read(0, 1 << 20).unwrap().first_header, None);
}
