//! Transaction state: file formats, the broker's LSO and aborted-list rules, and a log dir
//! written by the transactional writer, read with and without its helper files.

use std::path::Path;

use super::*;
use crate::log::batch::{CONTROL, TRANSACTIONAL};
use crate::log::txn_writer::{self, TestValues, TxnPlan, FIRST_PRODUCER_ID};
use crate::log::writer::{PartitionWriter, WriterConfig};
use crate::log::LogDir;

fn header(base: i64, n: i32, pid: i64, attributes: i16) -> BatchHeader {
    BatchHeader {
        base_offset: base,
        batch_length: 100,
        partition_leader_epoch: 0,
        magic: 2,
        crc: 0,
        attributes,
        last_offset_delta: n - 1,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id: pid,
        producer_epoch: 0,
        base_sequence: 0,
        records_count: n,
    }
}

#[test]
fn txn_index_round_trip_and_malformed() {
    let a = AbortedTxn {
        producer_id: 7,
        first_offset: 10,
        last_offset: 18,
        last_stable_offset: 12,
    };
    let mut buf = a.to_bytes().to_vec();
    buf.extend(a.to_bytes());
    assert_eq!(parse_txn_index(&buf).unwrap(), vec![a, a]);
    assert_eq!(parse_txn_index(&[]).unwrap(), vec![]);
    // A partial entry, a bad version, a range going backwards: the byte position is named.
    assert_eq!(parse_txn_index(&buf[..40]).unwrap_err().0, 34);
    let mut bad = buf.clone();
    bad[35] = 1;
    assert_eq!(parse_txn_index(&bad).unwrap_err().0, 34);
    let back = AbortedTxn {
        last_offset: 5,
        ..a
    };
    assert_eq!(parse_txn_index(&back.to_bytes()).unwrap_err().0, 0);
}

#[test]
fn snapshot_round_trip_and_malformed() {
    let e = SnapshotEntry {
        producer_id: 1000,
        epoch: 3,
        last_sequence: 41,
        last_offset: 99,
        offset_delta: 0,
        timestamp: 1_700_000_000_000,
        coordinator_epoch: 2,
        current_txn_first_offset: 90,
    };
    let none = SnapshotEntry {
        producer_id: 1001,
        current_txn_first_offset: -1,
        ..e
    };
    let buf = format_snapshot(&[e, none]);
    assert_eq!(buf.len(), 10 + 2 * 46);
    assert_eq!(parse_snapshot(&buf).unwrap(), vec![e, none]);
    let s = TxnState::from_snapshot(100, &[e, none]);
    assert_eq!(s.scanned_to, 100);
    assert_eq!(s.ongoing().iter().collect::<Vec<_>>(), vec![(&1000, &90)]);
    for i in 2..buf.len() {
        let mut bad = buf.clone();
        bad[i] ^= 0x40;
        assert!(parse_snapshot(&bad).is_err(), "flipped byte {i} not caught");
    }
    let mut v2 = buf.clone();
    v2[1] = 2;
    assert!(parse_snapshot(&v2).unwrap_err().contains("version"));
    assert!(parse_snapshot(&buf[..buf.len() - 1]).is_err());
    assert!(parse_snapshot(&buf[..5]).is_err());
}

#[test]
fn lso_and_aborted_follow_the_broker() {
    let mut s = TxnState::default();
    let t = TRANSACTIONAL;
    let c = TRANSACTIONAL | CONTROL;
    s.on_batch(&header(0, 2, -1, 0), None); // plain data: stable
    s.on_batch(&header(2, 2, 1, t), None); // pid 1 opens at 2
    s.on_batch(&header(4, 2, 2, t), None); // pid 2 opens at 4
    assert_eq!(s.last_stable(6), 2);
    s.on_batch(&header(6, 1, 1, c), Some(Marker::Abort)); // pid 1 aborts [2, 6]
    assert_eq!(s.last_stable(7), 4);
    s.on_batch(&header(7, 1, 2, c), Some(Marker::Commit));
    // The markers are in, but the high watermark has not passed pid 2's: still unstable.
    assert_eq!(s.last_stable(7), 4);
    assert_eq!(s.last_stable(8), 8);
    let a: Vec<_> = s.aborted().copied().collect();
    assert_eq!(
        a,
        vec![AbortedTxn {
            producer_id: 1,
            first_offset: 2,
            last_offset: 6,
            last_stable_offset: 4,
        }]
    );
    // last_offset >= fetch_offset && first_offset < upper_bound
    assert_eq!(s.aborted_in(0, 2), vec![]);
    assert_eq!(s.aborted_in(0, 3), vec![(1, 2)]);
    assert_eq!(s.aborted_in(6, 100), vec![(1, 2)]);
    assert_eq!(s.aborted_in(7, 100), vec![]);
    // A marker without an open transaction ends an empty one (first offset: the marker).
    s.on_batch(&header(8, 1, 3, c), Some(Marker::Abort));
    assert_eq!(s.aborted_in(8, 9), vec![(3, 8)]);
    // Batches already fed are ignored; other control records end nothing.
    s.on_batch(&header(2, 2, 1, t), None);
    assert!(s.ongoing().is_empty());
    s.on_batch(&header(9, 1, 4, t), None);
    s.on_batch(&header(10, 1, 4, c), Some(Marker::Other(5)));
    assert_eq!(s.last_stable(11), 9);
    s.forget_below(8);
    assert_eq!(s.aborted_in(0, 100), vec![(3, 8)]);
}

#[test]
fn marker_records_decode() {
    let mut b = crate::log::writer::BatchBuilder::new();
    for (commit, want) in [(true, Marker::Commit), (false, Marker::Abort)] {
        b.begin(5);
        b.push_parts(1, Some(&marker_key(commit)), Some(&marker_value(0)), &[]);
        assert_eq!(marker_of(b.finish()).unwrap(), want);
    }
    b.begin(5);
    b.push_parts(1, Some(b"x"), None, &[]);
    assert!(marker_of(b.finish()).is_err());
}

/// 20 records, 2 per batch, every 3rd transaction aborted, the last left open: offsets
/// 0-7 committed (txns 1, 2), 8-9 markers, 10-11 + 14-15 aborted (txn 3, marker 18),
/// 12-13 + 16-17 committed (txn 4), 20-21 committed (txn 5, marker 24), 22-23 open (txn 6).
pub(super) fn write_txn_log(dir: &Path) {
    let mut w = PartitionWriter::open(dir, "t", 0, WriterConfig::default()).unwrap();
    let plan = TxnPlan {
        records: 20,
        batch_records: 2,
        abort_every: 3,
        open_tail: true,
    };
    let s = txn_writer::write(&mut w, &mut TestValues::new(0, 10), plan).unwrap();
    assert_eq!((s.committed, s.aborted, s.open), (4, 1, 1));
}

fn check_log(dir: &Path) {
    let log = LogDir::open(dir, None).unwrap();
    let p = log.partition("t", 0).unwrap();
    let o = p.offsets();
    assert_eq!(o.log_end, 25);
    assert_eq!(o.last_stable, 22);
    assert_eq!(p.aborted_txns(0, 22), vec![(FIRST_PRODUCER_ID, 10)]);
    assert_eq!(p.aborted_txns(19, 22), vec![]);
    assert_eq!(p.aborted_txns(0, 10), vec![]);
    // READ_COMMITTED reads stop before the LSO, wherever they start.
    let mut at = 0;
    while at < 22 {
        let s = p.read_isolated(at, 1 << 20, true).unwrap();
        assert!(!s.is_empty());
        assert!(
            s.next_offset <= 22,
            "read from {at} reached {}",
            s.next_offset
        );
        at = s.next_offset;
    }
    for off in 22..=25 {
        assert!(p.read_isolated(off, 1 << 20, true).unwrap().is_empty());
    }
    assert_eq!(p.read_isolated(0, 1 << 20, false).unwrap().next_offset, 25);
    let st = p.txn_state().unwrap();
    assert_eq!(
        st.ongoing().iter().collect::<Vec<_>>(),
        vec![(&(FIRST_PRODUCER_ID + 1), &22)]
    );
}

#[test]
fn log_dir_transactions_with_and_without_helper_files() {
    let d = tempfile::tempdir().unwrap();
    write_txn_log(d.path());
    let pdir = d.path().join("t-0");
    let snap = pdir.join("00000000000000000025.snapshot");
    let idx = pdir.join("00000000000000000000.txnindex");
    assert!(snap.exists() && idx.exists());
    // Snapshot at the log end + .txnindex: nothing scanned.
    check_log(d.path());
    // A damaged snapshot: ignored, the log is scanned.
    let good = std::fs::read(&snap).unwrap();
    let mut bad = good.clone();
    bad[12] ^= 1;
    std::fs::write(&snap, &bad).unwrap();
    check_log(d.path());
    // A damaged .txnindex with the snapshot: a full scan instead.
    std::fs::write(&snap, &good).unwrap();
    let mut ix = std::fs::read(&idx).unwrap();
    ix.extend_from_slice(&[0, 9, 1]);
    std::fs::write(&idx, &ix).unwrap();
    check_log(d.path());
    // No helper files at all: markers alone.
    std::fs::remove_file(&snap).unwrap();
    std::fs::remove_file(&idx).unwrap();
    check_log(d.path());
}

#[test]
fn a_growing_log_is_followed() {
    let d = tempfile::tempdir().unwrap();
    let mut w = PartitionWriter::open(d.path(), "t", 0, WriterConfig::default()).unwrap();
    let plan = TxnPlan {
        records: 4,
        batch_records: 1,
        abort_every: 0,
        open_tail: true,
    };
    txn_writer::write(&mut w, &mut TestValues::new(0, 10), plan).unwrap();
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 0).unwrap();
    // A: 0, B: 1, A: 2, B: 3, A's commit 4; B open since 1.
    assert_eq!(p.offsets().last_stable, 1);
    // B aborts now (a marker appended by hand, as a broker would).
    let mut b = crate::log::writer::BatchBuilder::new();
    b.set_fields(crate::log::writer::BatchFields {
        producer_id: FIRST_PRODUCER_ID + 1,
        producer_epoch: 0,
        base_sequence: -1,
        attributes: TRANSACTIONAL | CONTROL,
        leader_epoch: 0,
    });
    b.begin(w.next_offset());
    b.push_parts(1, Some(&marker_key(false)), Some(&marker_value(0)), &[]);
    w.append_built(&mut b).unwrap();
    w.flush().unwrap();
    log.refresh().unwrap();
    assert_eq!(p.offsets().last_stable, 6);
    assert_eq!(p.aborted_txns(0, 6), vec![(FIRST_PRODUCER_ID + 1, 1)]);
}
