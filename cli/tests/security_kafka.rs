//! Hostile input against a real `kxgw serve --kafka-listen` in a test namespace: impossible
//! and negative lengths in every decoder the listener runs, topic names that try to leave the
//! log dir, a corrupt batch on disk. The gateway must answer with protocol errors or close
//! the one connection, keep serving everyone else, never write into the log dir and never
//! serve a batch that does not verify.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

mod common;
use common::*;

/// path, size, mtime (s, ns), ctime (s, ns), mode, inode.
type FileState = (PathBuf, u64, i64, i64, i64, i64, u32, u64);

/// Every file and directory under `root`.
fn snapshot(root: &Path) -> Vec<FileState> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((
                p,
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.mode(),
                m.ino(),
            ));
        }
    }
    out.sort();
    out
}

/// Impossible counts and negative lengths at every level of every decoded request, names
/// that point outside the log dir; the gateway stays small, keeps serving, and leaves the log
/// dir exactly as it was (names, sizes, times, modes).
#[test]
fn hostile_lengths_and_names_are_refused_and_the_log_dir_is_never_written() {
    let (net, work, dir) = test_setup("secin");
    produce(&dir, "t", 2000, &["--write-checkpoint"]);
    // A valid partition right outside the log dir: "../secret" would reach it if a topic
    // name were ever joined to the log dir path.
    produce(work.path(), "secret", 10, &[]);
    let before = snapshot(&dir);
    let gw = Gateway::start(&net, &dir, work.path());
    let addr = gw.addr;
    let report = in_client_ns(&net, move || {
        let mut good = connect(addr);
        let r: FetchResponse = call(&mut good, ApiKey::Fetch, 11, &fetch("t", 0, 0));
        assert_eq!(r.responses[0].partitions[0].error_code, 0);

        let huge = i32::MAX.to_be_bytes();
        let flex_huge = [0xff, 0xff, 0xff, 0xff, 0x0f]; // compact count 2^32 - 2
        let mut closed = Vec::new();
        let fetch_prefix = |flex: bool| {
            let mut b = vec![0xff, 0xff, 0xff, 0xff]; // replica_id
            b.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 1, 0, 0x10, 0, 0, 0]); // wait, min, max, iso
            b.extend_from_slice(&[0; 8]); // session id, epoch
            if flex {
                b.push(2); // one topic
                b.push(2);
                b.push(b't');
            } else {
                b.extend_from_slice(&1i32.to_be_bytes());
                b.extend_from_slice(&1i16.to_be_bytes());
                b.push(b't');
            }
            b
        };
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("negative length prefix", (-1i32).to_be_bytes().to_vec()),
            ("i32::MIN length prefix", i32::MIN.to_be_bytes().to_vec()),
            ("2 GiB length prefix", huge.to_vec()),
            ("metadata v0 topics 2^31-1", raw(3, 0, &huge)),
            ("metadata v9 compact topics 2^32-2", raw(3, 9, &flex_huge)),
            ("metadata v1 topic name length -2", {
                let mut b = 1i32.to_be_bytes().to_vec();
                b.extend_from_slice(&(-2i16).to_be_bytes());
                raw(3, 1, &b)
            }),
            ("fetch v11 partitions 2^31-1", {
                let mut b = fetch_prefix(false);
                b.extend_from_slice(&huge);
                raw(1, 11, &b)
            }),
            ("fetch v12 compact partitions 2^32-2", {
                let mut b = fetch_prefix(true);
                b.extend_from_slice(&flex_huge);
                raw(1, 12, &b)
            }),
            ("fetch v11 topics -7", {
                let mut b = fetch_prefix(false);
                b.truncate(b.len() - 7);
                b.extend_from_slice(&(-7i32).to_be_bytes());
                raw(1, 11, &b)
            }),
            ("list_offsets v0 topics 2^31-1", {
                let mut b = (-1i32).to_be_bytes().to_vec();
                b.extend_from_slice(&huge);
                raw(2, 0, &b)
            }),
            ("list_offsets v1 partitions 2^31-1", {
                let mut b = (-1i32).to_be_bytes().to_vec();
                b.extend_from_slice(&1i32.to_be_bytes());
                b.extend_from_slice(&1i16.to_be_bytes());
                b.push(b't');
                b.extend_from_slice(&huge);
                raw(2, 1, &b)
            }),
            ("produce v3 topics 2^31-1", {
                let mut b = (-1i16).to_be_bytes().to_vec(); // transactional id
                b.extend_from_slice(&[0, 1, 0, 0, 0, 100]); // acks, timeout
                b.extend_from_slice(&huge);
                raw(0, 3, &b)
            }),
            ("produce v3 records length 2^31-1", {
                let mut b = (-1i16).to_be_bytes().to_vec();
                b.extend_from_slice(&[0, 1, 0, 0, 0, 100]);
                b.extend_from_slice(&1i32.to_be_bytes());
                b.extend_from_slice(&1i16.to_be_bytes());
                b.push(b't');
                b.extend_from_slice(&1i32.to_be_bytes());
                b.extend_from_slice(&0i32.to_be_bytes());
                b.extend_from_slice(&huge);
                raw(0, 3, &b)
            }),
            ("offset_commit v2 topics 2^31-1", {
                let mut b = 1i16.to_be_bytes().to_vec();
                b.push(b'g');
                b.extend_from_slice(&[0, 0, 0, 1, 0, 1, b'm']); // generation, member
                b.extend_from_slice(&[0; 8]); // retention
                b.extend_from_slice(&huge);
                raw(8, 2, &b)
            }),
            ("offset_fetch v2 partitions 2^31-1", {
                let mut b = 1i16.to_be_bytes().to_vec();
                b.push(b'g');
                b.extend_from_slice(&1i32.to_be_bytes());
                b.extend_from_slice(&1i16.to_be_bytes());
                b.push(b't');
                b.extend_from_slice(&huge);
                raw(9, 2, &b)
            }),
            (
                "find_coordinator v4 keys 2^32-2",
                raw(10, 4, &[0, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            ),
            (
                "client id length 32767 in a short frame",
                kxgw::kafka::frame::size_prefixed(&[0, 18, 0, 0, 0, 0, 0, 1, 0x7f, 0xff, b'x']),
            ),
        ];
        for (what, bytes) in cases.drain(..) {
            let mut s = connect(addr);
            s.write_all(&bytes).unwrap();
            if !closed_by_server(&mut s) {
                closed.push(what);
            }
        }
        assert!(closed.is_empty(), "answered instead of closed: {closed:?}");

        // Names that try to leave the log dir: unknown topic, never data.
        let mut s = connect(addr);
        let names = [
            "../secret",
            "..",
            ".",
            "t/../t",
            "../logs/t",
            "t\0",
            "\0",
            "/etc/passwd",
            "t-0",
            "",
        ];
        for name in names {
            let md = MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(StrBytes::from_string(name.into()))))]));
            let r: MetadataResponse = call(&mut s, ApiKey::Metadata, 9, &md);
            assert_ne!(r.topics[0].error_code, 0, "metadata {name:?}");
            assert!(r.topics[0].partitions.is_empty(), "metadata {name:?}");
            let r: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &fetch(name, 0, 0));
            let p = &r.responses[0].partitions[0];
            assert_eq!(p.error_code, 3, "fetch {name:?}");
            assert!(p.records.as_ref().is_none_or(|r| r.is_empty()), "{name:?}");
            let lo = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name.into())))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-1),
                    ])]);
            let r: ListOffsetsResponse = call(&mut s, ApiKey::ListOffsets, 5, &lo);
            assert_eq!(r.topics[0].partitions[0].error_code, 3, "list {name:?}");
        }
        // An all-topics Metadata lists only the log dir's topic.
        let r: MetadataResponse = call(
            &mut s,
            ApiKey::Metadata,
            9,
            &MetadataRequest::default().with_topics(None),
        );
        let listed: Vec<String> = r
            .topics
            .iter()
            .map(|t| t.name.as_ref().unwrap().0.to_string())
            .collect();
        assert_eq!(listed, vec!["t".to_string()]);

        // The first consumer is still served, to the end of the partition.
        let mut offset = 0;
        while offset < 2000 {
            let r: FetchResponse = call(&mut good, ApiKey::Fetch, 11, &fetch("t", 0, offset));
            let p = &r.responses[0].partitions[0];
            assert_eq!(p.error_code, 0);
            let bytes = p.records.clone().unwrap();
            let mut last = None;
            for b in kxgw::log::batch::iter(&bytes) {
                let (_, h) = b.expect("served batches verify");
                last = Some(h.next_offset());
            }
            offset = last.expect("progress");
        }
        "ok"
    });
    assert_eq!(report, "ok");
    let peak = gw.peak_rss_kib();
    assert!(peak < 256 * 1024, "gateway peak RSS {peak} KiB");
    let log = gw.stop();
    assert!(
        log.contains("array count"),
        "impossible counts are named in the log:\n{log}"
    );
    let after = snapshot(&dir);
    assert_eq!(before, after, "the log dir changed while served");
}

/// A flipped byte inside a batch of an old segment: fetches never return that batch (nor
/// anything after it in that segment), the consumer gets CORRUPT_MESSAGE at its offset, the
/// gateway logs the file and byte position and counts the error; other segments are served.
#[test]
fn a_corrupt_batch_on_disk_is_never_served_and_is_logged_with_file_and_position() {
    let (net, work, dir) = test_setup("seccor");
    produce(
        &dir,
        "c",
        3000,
        &["--segment-bytes", "100000", "--record-size", "100"],
    );
    let part = dir.join("c-0");
    let segs = segment_files(&part);
    assert!(segs.len() >= 3, "want several segments, got {segs:?}");
    // Corrupt the third batch of the first segment.
    let victim = &segs[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let (pos, hdr) = kxgw::log::batch::iter(&bytes)
        .map(|b| b.unwrap())
        .nth(2)
        .unwrap();
    bytes[pos + 80] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();
    let bad = (hdr.base_offset, hdr.last_offset());
    let second_base = base_of(&segs[1]);

    let gw = Gateway::start(&net, &dir, work.path());
    let addr = gw.addr;
    let (served, corrupt_seen) = in_client_ns(&net, move || {
        let mut s = connect(addr);
        let mut served = Vec::new();
        let mut corrupt_seen = false;
        let mut offset = 0i64;
        let mut rounds = 0;
        while offset < 3000 && rounds < 10_000 {
            rounds += 1;
            let r: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &fetch("c", 0, offset));
            let p = &r.responses[0].partitions[0];
            if p.error_code == 2 {
                // CORRUPT_MESSAGE: skip to the next segment, as an operator-guided consumer
                // would; the damaged range is never delivered.
                corrupt_seen = true;
                assert!(offset >= bad.0 && offset < second_base, "at {offset}");
                offset = second_base;
                continue;
            }
            assert_eq!(p.error_code, 0, "at {offset}");
            let bytes = p.records.clone().unwrap_or_default();
            let mut next = None;
            for b in kxgw::log::batch::iter(&bytes) {
                let (_, h) = b.expect("every served batch verifies");
                served.push((h.base_offset, h.last_offset()));
                next = Some(h.next_offset());
            }
            offset = next.expect("progress");
        }
        (served, corrupt_seen)
    });
    assert!(corrupt_seen, "the consumer was told about the corruption");
    assert!(
        !served.iter().any(|&(a, b)| a <= bad.1 && b >= bad.0),
        "the corrupt batch {bad:?} was served"
    );
    assert!(served.iter().any(|&(a, _)| a >= second_base));
    assert_eq!(served.last().unwrap().1, 2999);
    let log = gw.stop();
    let needle = format!("{}: corrupt", victim.display());
    assert!(log.contains(&needle), "log names the file:\n{log}");
    assert!(
        log.contains(&format!("byte {pos}")),
        "log names the position {pos}:\n{log}"
    );
    assert!(log.contains("partition="), "stats at exit:\n{log}");
    let partition_errors: u64 = log
        .lines()
        .rev()
        .find_map(|l| l.split(" partition=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(partition_errors >= 1, "counted:\n{log}");
}
