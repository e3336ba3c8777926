//! Hostile input against a real `kxgw serve --kafka-listen` in a test namespace: impossible
//! and negative lengths in every decoder the listener runs, topic names that try to leave the
//! log dir, a corrupt batch on disk. The gateway must answer with protocol errors or close
//! the one connection, keep serving everyone else, never write into the log dir and never
//! serve a batch that does not verify.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kxgw::testnet::{KillOnDrop, TestNet, GW_ADDR};

const KXGW: &str = env!("CARGO_BIN_EXE_kxgw");

fn produce(dir: &Path, topic: &str, records: u64, extra: &[&str]) {
    let out = Command::new(KXGW)
        .args(["produce", "--log-dir"])
        .arg(dir)
        .args(["--topic", topic, "--records", &records.to_string()])
        .args(extra)
        .output()
        .expect("running kxgw produce");
    assert!(
        out.status.success(),
        "kxgw produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside the consumer namespace.
fn in_client_ns<R: Send + 'static>(net: &TestNet, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/var/run/netns/{}", net.client_ns);
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("opening the consumer namespace");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("entering the consumer namespace");
        f()
    })
    .join()
    .expect("consumer-namespace thread panicked")
}

struct Gateway {
    child: KillOnDrop,
    stderr: PathBuf,
    addr: SocketAddr,
}

impl Gateway {
    fn start(net: &TestNet, dir: &Path, work: &Path) -> Gateway {
        let stderr = work.join("serve.log");
        let addr: SocketAddr = format!("{GW_ADDR}:9092").parse().unwrap();
        let child = net
            .gw_command(KXGW)
            .args(["serve", "--log-dir"])
            .arg(dir)
            .args(["--kafka-listen", &addr.to_string()])
            .arg("--control-socket")
            .arg(work.join("ctl.sock"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning kxgw serve");
        let gw = Gateway {
            child: KillOnDrop(child),
            stderr,
            addr,
        };
        let ready = in_client_ns(net, move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        });
        assert!(ready, "kxgw serve never listened:\n{}", gw.log());
        gw
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Peak resident set of the gateway, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    fn stop(mut self) -> String {
        let status = self.child.terminate(Duration::from_secs(10)).unwrap();
        let log = self.log();
        assert!(status.success(), "kxgw serve exited {status}:\n{log}");
        log
    }
}

fn frame<R: Encodable>(key: ApiKey, version: i16, req: &R) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("sec")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, key.request_header_version(version))
        .unwrap();
    req.encode(&mut body, version).unwrap();
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A raw request: the given header fields, then `body` verbatim.
fn raw(key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&42i32.to_be_bytes());
    f.extend_from_slice(&3i16.to_be_bytes());
    f.extend_from_slice(b"sec");
    if ApiKey::try_from(key).is_ok_and(|k| k.request_header_version(version) >= 2) {
        f.push(0); // no tagged fields
    }
    f.extend_from_slice(body);
    let mut out = (f.len() as i32).to_be_bytes().to_vec();
    out.extend(f);
    out
}

fn read_response(s: &mut TcpStream) -> std::io::Result<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

fn call<Req: Encodable, Resp: Decodable>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Resp {
    s.write_all(&frame(key, version, req)).unwrap();
    let mut b = read_response(s).unwrap();
    let h = ResponseHeader::decode(&mut b, key.response_header_version(version)).unwrap();
    assert_eq!(h.correlation_id, 42);
    Resp::decode(&mut b, version).unwrap()
}

fn fetch(topic: &str, partition: i32, offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(10)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

/// Whether the server closed the connection without answering.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

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
    let net = TestNet::new("secin", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    produce(&dir, "t", 2000, &["--write-checkpoint"]);
    // A valid partition right outside the log dir: "../secret" would reach it if a topic
    // name were ever joined to the log dir path.
    produce(work.path(), "secret", 10, &[]);
    let before = snapshot(&dir);
    let gw = Gateway::start(&net, &dir, work.path());
    let addr = gw.addr;
    let report = in_client_ns(&net, move || {
        let connect = || {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        let mut good = connect();
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
            ("client id length 32767 in a short frame", {
                let mut f = vec![0, 18, 0, 0, 0, 0, 0, 1, 0x7f, 0xff, b'x'];
                let mut out = (f.len() as i32).to_be_bytes().to_vec();
                out.append(&mut f);
                out
            }),
        ];
        for (what, bytes) in cases.drain(..) {
            let mut s = connect();
            s.write_all(&bytes).unwrap();
            if !closed_by_server(&mut s) {
                closed.push(what);
            }
        }
        assert!(closed.is_empty(), "answered instead of closed: {closed:?}");

        // Names that try to leave the log dir: unknown topic, never data.
        let mut s = connect();
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
    let net = TestNet::new("seccor", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    produce(
        &dir,
        "c",
        3000,
        &["--segment-bytes", "100000", "--record-size", "100"],
    );
    let part = dir.join("c-0");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&part)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
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
    let second_base =
        kxgw::log::segment::parse_log_name(segs[1].file_name().unwrap().to_str().unwrap()).unwrap();

    let gw = Gateway::start(&net, &dir, work.path());
    let addr = gw.addr;
    let (served, corrupt_seen) = in_client_ns(&net, move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
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
