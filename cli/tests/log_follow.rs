//! A reader following a log while `kxgw produce --follow` appends to it: new batches appear
//! through the follower (inotify + timer) and the on_append hook, segments roll, the high
//! watermark from replication-offset-checkpoint bounds what is visible, every record checks.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxgw::log::{batch, record, Isolation, LogDir};
use kxgw_demo_data::is_demo_value;
use kxgw_testkit::testnet::KillOnDrop;

#[test]
fn follow_a_live_log() {
    let d = tempfile::tempdir().unwrap();
    let log = LogDir::open(d.path(), Some(Isolation::HighWatermark)).unwrap();
    assert!(log.partitions().is_empty());
    let (tx, rx) = crossbeam_channel::unbounded();
    log.on_append(Box::new(move |p| {
        let _ = tx.send(p.partition());
    }));
    let _follower = log.spawn_follower(Duration::from_millis(250)).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_kxgw"))
        .args([
            "produce",
            "--log-dir",
            d.path().to_str().unwrap(),
            "--topic",
            "live",
        ])
        .args(["--partitions", "2", "--records", "0", "--follow", "3000"])
        .args([
            "--record-size",
            "60",
            "--batch-records",
            "40",
            "--segment-bytes",
            "20000",
        ])
        .arg("--write-checkpoint")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);

    let target = 1500i64;
    let mut next = [0i64; 2];
    let mut wakeups = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    while next.iter().any(|&n| n < target) {
        assert!(Instant::now() < deadline, "stuck at {next:?}");
        if rx.recv_timeout(Duration::from_secs(2)).is_ok() {
            wakeups += 1;
        }
        for (pi, n) in next.iter_mut().enumerate() {
            let Some(p) = log.partition("live", pi as i32) else {
                continue;
            };
            loop {
                let s = p.read(*n, 8192).unwrap();
                if s.is_empty() {
                    assert!(*n >= p.offsets().high_watermark.min(p.readable_end()));
                    break;
                }
                assert!(s.next_offset <= s.offsets.high_watermark);
                for r in batch::iter(s.bytes()) {
                    let (at, h) = r.unwrap();
                    let recs = record::decode_batch(&s.bytes()[at..at + h.total_len()]).unwrap();
                    for rec in recs {
                        assert_eq!(rec.offset, *n, "gap or repeat in partition {pi}");
                        let v = rec.value.unwrap();
                        assert!(
                            is_demo_value(pi as i32, rec.offset, &v),
                            "value at {}",
                            rec.offset
                        );
                        *n += 1;
                    }
                }
                assert_eq!(*n, s.next_offset);
            }
        }
    }
    assert!(wakeups > 2, "on_append hook hardly ever ran ({wakeups})");
    for pi in 0..2 {
        let p = log.partition("live", pi).unwrap();
        assert!(p.segment_bases().len() > 1, "no roll in partition {pi}");
    }
    let status = child.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "produce --follow did not exit cleanly on SIGTERM: {status}"
    );
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("follow: appended"), "{out}");
    // The follower converges on the final log end (high watermark = log end, checkpointed).
    for pi in 0..2 {
        let want: i64 = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("live-{pi}: log end ")))
            .unwrap_or_else(|| panic!("no final log end in {out}"))
            .parse()
            .unwrap();
        let p = log.partition("live", pi).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.readable_end() != want {
            assert!(Instant::now() < deadline, "{:?} != {want}", p.offsets());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(p.offsets().log_end, want);
    }
}

/// Several reader threads consume while a writer appends (small segments, so rolls happen
/// under them) and the follower remaps: every reader sees every record once, in order,
/// and slices taken before a remap stay valid.
#[test]
fn concurrent_readers_while_appending() {
    use kxgw::log::writer::{NewRecord, PartitionWriter, WriterConfig};
    use kxgw_demo_data::demo_value;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let d = tempfile::tempdir().unwrap();
    let total: i64 = 20_000;
    let cfg = WriterConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 4096,
        ..Default::default()
    };
    let mut w = PartitionWriter::open(d.path(), "c", 0, cfg).unwrap();
    w.append(&[NewRecord::default()]).unwrap();
    w.flush().unwrap();
    let log = LogDir::open(d.path(), None).unwrap();
    let _follower = log.spawn_follower(Duration::from_millis(50)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut off = 1i64;
            while off < total {
                let vals: Vec<Vec<u8>> = (0..10).map(|i| demo_value(0, off + i, 50)).collect();
                let recs: Vec<NewRecord> = vals
                    .iter()
                    .map(|v| NewRecord {
                        value: Some(v),
                        ..Default::default()
                    })
                    .collect();
                off = w.append(&recs).unwrap() + 10;
                w.flush().unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let log = log.clone();
            std::thread::spawn(move || {
                let p = log.partition("c", 0).unwrap();
                let mut next = 1i64; // offset 0 has no value
                let mut held = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                while next <= total {
                    assert!(Instant::now() < deadline, "reader {r} stuck at {next}");
                    let s = match p.read(next, 4096 * (r + 1)) {
                        Ok(s) => s,
                        Err(e) => panic!("reader {r} at {next}: {e}"),
                    };
                    if s.is_empty() {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    for b in batch::iter(s.bytes()) {
                        let (at, h) = b.unwrap();
                        for rec in record::decode_batch(&s.bytes()[at..at + h.total_len()]).unwrap()
                        {
                            if rec.offset < next {
                                continue;
                            }
                            assert_eq!(rec.offset, next);
                            assert!(is_demo_value(0, next, &rec.value.unwrap()));
                            next += 1;
                        }
                    }
                    if held.len() < 64 {
                        held.push(s);
                    }
                }
                // Slices from long ago (older mappings) still read back intact.
                for s in &held {
                    assert!(batch::iter(s.bytes()).all(|b| b.is_ok()));
                }
            })
        })
        .collect();
    writer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    for r in readers {
        r.join().unwrap();
    }
    assert!(log.partition("c", 0).unwrap().segment_bases().len() > 5);
}

/// A follower for busy-polling readers (`spawn_structure_follower`): an append wakes nobody
/// (the readers' own tail check, `poll_tail`, finds it), but a roll (a new segment file) is
/// followed at once, long before the timer.
#[test]
fn a_structure_follower_leaves_appends_to_the_readers_and_follows_rolls() {
    use kxgw::log::writer::{NewRecord, PartitionWriter, WriterConfig};

    let d = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        segment_bytes: 16 * 1024,
        ..Default::default()
    };
    let mut w = PartitionWriter::open(d.path(), "s", 0, cfg).unwrap();
    let value = vec![7u8; 200];
    let rec = NewRecord {
        value: Some(&value),
        ..Default::default()
    };
    w.append(std::slice::from_ref(&rec)).unwrap();
    w.flush().unwrap();
    let log = LogDir::open(d.path(), None).unwrap();
    // A timer far beyond the test: only inotify (or the reader) can move the end.
    let _follower = log
        .spawn_structure_follower(Duration::from_secs(600))
        .unwrap();
    let p = log.partition("s", 0).unwrap();
    assert_eq!(p.readable_end(), 1);
    // The follower thread adds its watches as it starts.
    std::thread::sleep(Duration::from_millis(300));

    w.append(std::slice::from_ref(&rec)).unwrap();
    w.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.readable_end(), 1, "the follower was woken by an append");
    assert!(
        log.poll_tail(&p),
        "the reader's own check did not find the append"
    );
    assert_eq!(p.readable_end(), 2);

    // Append until the writer rolls to a new segment: the follower takes the roll.
    let bases = p.segment_bases().len();
    let mut appended = 2i64;
    while std::fs::read_dir(d.path().join("s-0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count()
        == bases
    {
        w.append(std::slice::from_ref(&rec)).unwrap();
        w.flush().unwrap();
        appended += 1;
        assert!(appended < 1000, "the writer never rolled");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.segment_bases().len() == bases {
        assert!(Instant::now() < deadline, "the roll was not followed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // What went into the new segment after the roll was seen is the readers' to find again.
    while p.readable_end() < appended {
        assert!(
            Instant::now() < deadline,
            "stuck at {} of {appended}",
            p.readable_end()
        );
        log.poll_tail(&p);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(p.readable_end(), appended);
}
