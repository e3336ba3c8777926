//! A broker rewriting segments under a running `kxgw serve`: the last segment truncated in
//! place to half its size (as `FileRecords.truncateTo` does) and the first replaced through
//! the cleaner's `.cleaned` -> `.swap` -> `.log` renames, while eight consumers read the log on
//! each of the five paths (Kafka TCP sendfile, Kafka TCP copy, kernel UDP, AF_XDP copy,
//! AF_XDP sg with the segments registered as UMEM). The gateway must survive (a mapped page
//! past the new end of file would SIGBUS it), no consumer may see a batch that fails its CRC,
//! and a fresh consumer afterwards reads the surviving log byte-exact.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;
use kxgw::log::batch;
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

const TOPIC: &str = "tr";
const CONSUMERS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Path5 {
    TcpSendfile,
    TcpCopy,
    Udp,
    XdpCopy,
    XdpSg,
}

impl Path5 {
    fn tcp(self) -> bool {
        matches!(self, Path5::TcpSendfile | Path5::TcpCopy)
    }

    fn gateway_args(self, net: &TestNet, fetch: &str) -> Vec<String> {
        let v: Vec<&str> = match self {
            Path5::TcpSendfile => vec!["--io", "sendfile"],
            Path5::TcpCopy => vec!["--io", "copy"],
            Path5::Udp => vec!["--fetch-listen", fetch],
            Path5::XdpCopy => vec![
                "--fetch-listen",
                fetch,
                "--xdp-iface",
                &net.gw_if,
                "--tx-strategy",
                "copy",
                "--require-xdp",
            ],
            Path5::XdpSg => vec![
                "--fetch-listen",
                fetch,
                "--xdp-iface",
                &net.gw_if,
                "--tx-strategy",
                "sg",
                "--umem-segments",
                "--require-xdp",
            ],
        };
        v.into_iter().map(String::from).collect()
    }
}

/// Start of the batch nearest the middle of `seg`, and the offset it starts at.
fn middle_batch(seg: &Path) -> (u64, i64) {
    let bytes = std::fs::read(seg).unwrap();
    let mut best = None;
    for item in batch::iter(&bytes) {
        let (pos, h) = item.unwrap();
        if pos > 0
            && best.is_none_or(|(p, _)| {
                (p as i64 - bytes.len() as i64 / 2).abs()
                    > (pos as i64 - bytes.len() as i64 / 2).abs()
            })
        {
            best = Some((pos, h.base_offset));
        }
    }
    let (p, o) = best.expect("a segment of several batches");
    (p as u64, o)
}

/// The cleaner's replacement of `seg` by a rewritten copy, step by step as Kafka's
/// `LogCleaner` / `Log.replaceSegments` do it: write `.cleaned`, rename it `.swap`, rename the
/// old segment `.deleted`, rename `.swap` to the segment's name, delete `.deleted`.
fn swap_in_copy(seg: &Path) {
    let name = seg.file_name().unwrap().to_str().unwrap().to_string();
    let sib = |suffix: &str| seg.with_file_name(format!("{name}{suffix}"));
    let bytes = std::fs::read(seg).unwrap();
    let mut f = std::fs::File::create(sib(".cleaned")).unwrap();
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(sib(".cleaned"), sib(".swap")).unwrap();
    std::fs::rename(seg, sib(".deleted")).unwrap();
    std::fs::rename(sib(".swap"), seg).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    std::fs::remove_file(sib(".deleted")).unwrap();
}

/// What the consumers of one path saw.
#[derive(Default, Debug)]
struct Seen {
    batches: u64,
    bad: Vec<String>,
    runs: u64,
}

/// A Kafka consumer reading the log from the start over and over until `stop`: every batch
/// must verify; an error code (the log shrank under it) starts it over from offset 0.
fn tcp_reader(addr: SocketAddr, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut offset = 0i64;
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    conn.insert(s)
                }
                Err(_) => continue,
            },
        };
        let req = frame(ApiKey::Fetch, 11, &fetch_max(TOPIC, 0, offset, 1 << 20, 10));
        let Ok(mut b) = s.write_all(&req).and_then(|()| read_response(s)) else {
            // Closed mid-response (a file range shorter than promised): a new connection.
            conn = None;
            continue;
        };
        ResponseHeader::decode(&mut b, 0).unwrap();
        let r = FetchResponse::decode(&mut b, 11).unwrap();
        let p = &r.responses[0].partitions[0];
        let records = p.records.clone().unwrap_or_default();
        if p.error_code != 0 || records.is_empty() {
            offset = 0;
            seen.runs += 1;
            continue;
        }
        for item in batch::iter(&records) {
            match item {
                Ok((_, h)) => {
                    offset = h.next_offset();
                    seen.batches += 1;
                }
                Err(e) => {
                    seen.bad.push(format!("at offset {offset}: {e}"));
                    offset = 0;
                    break;
                }
            }
        }
    }
    seen
}

/// `kxgw consume --fetch --verify` runs from the start, one after the other until `stop`
/// (each interrupted after a while: after the truncation it cannot reach `count`). CRC
/// failures are what its summary and messages report.
fn udp_reader(client_ns: &str, fetch: &str, count: u64, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let child = TestNet::command_in(client_ns, KXGW)
            .args([
                "consume",
                "--fetch",
                fetch,
                "--topic",
                TOPIC,
                "--partition",
                "0",
            ])
            .args(["--from-beginning", "--verify", "--format", ""])
            .args([
                "--count",
                &count.to_string(),
                "--connect-timeout-ms",
                "10000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let t0 = Instant::now();
        while child.0.try_wait().unwrap().is_none() {
            if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(5) {
                let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = std::mem::replace(
            &mut child.0,
            std::process::Command::new("true").spawn().unwrap(),
        )
        .wait_with_output()
        .unwrap();
        seen.runs += 1;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for l in stdout.lines().chain(stderr.lines()) {
            if l.contains("CRC mismatch") || l.contains("bad CRC") {
                seen.bad.push(l.to_string());
            }
            if let Some(rest) = l.strip_suffix(" CRC errors") {
                let n: u64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
                if n > 0 {
                    seen.bad.push(l.to_string());
                }
            }
            if let Some(rest) = l.strip_prefix("verified ") {
                seen.batches += rest
                    .split(" in ")
                    .nth(1)
                    .and_then(|s| s.split(' ').next())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    seen
}

/// Reads the whole surviving log over Kafka TCP and returns the record bytes, in order.
fn tcp_read_all(addr: SocketAddr, end: i64) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while offset < end {
        assert!(Instant::now() < deadline, "stuck at offset {offset}");
        let r: FetchResponse = call(
            &mut s,
            ApiKey::Fetch,
            11,
            &fetch_max(TOPIC, 0, offset, 1 << 20, 10),
        );
        let p = &r.responses[0].partitions[0];
        if p.error_code != 0 {
            // The gateway may not have noticed the last change yet.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let recs = p.records.clone().unwrap_or_default();
        for item in batch::iter(&recs) {
            let (_, h) = item.expect("a fresh consumer gets only valid batches");
            assert_eq!(h.base_offset, offset, "contiguous offsets");
            offset = h.next_offset();
        }
        out.extend_from_slice(&recs);
    }
    out
}

fn run(path: Path5, tag: &str) {
    let (net, work, tmp_dir) = test_setup(tag);
    // Registered UMEM needs tmpfs pages.
    let shm = (path == Path5::XdpSg)
        .then(|| tempfile::tempdir_in("/dev/shm").expect("a temporary dir in /dev/shm (tmpfs)"));
    let dir: PathBuf = shm.as_ref().map_or(tmp_dir, |d| d.path().to_path_buf());
    produce(
        &dir,
        TOPIC,
        24_000,
        &["--record-size", "1000", "--segment-bytes", "8000000"],
    );
    let part = dir.join(format!("{TOPIC}-0"));
    let segs = segment_files(&part);
    assert!(segs.len() >= 3, "want at least three segments: {segs:?}");
    let last = segs.last().unwrap().clone();
    let (cut, survivors) = middle_batch(&last);
    let fetch = format!("{GW_ADDR}:9093");
    let args = path.gateway_args(&net, &fetch);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start_with(&net, &dir, work.path(), &args);
    let addr = gw.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let stop = stop.clone();
            if path.tcp() {
                let ns = net.client_ns.clone();
                std::thread::spawn(move || in_ns(&ns, move || tcp_reader(addr, stop)))
            } else {
                let ns = net.client_ns.clone();
                let fetch = fetch.clone();
                std::thread::spawn(move || udp_reader(&ns, &fetch, 24_000, stop))
            }
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    swap_in_copy(&segs[0]);
    std::thread::sleep(Duration::from_millis(500));
    // In place, at a batch boundary, as FileRecords.truncateTo leaves a segment.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut)
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    let mut total = Seen::default();
    for r in readers {
        let s = r.join().expect("reader thread");
        total.batches += s.batches;
        total.runs += s.runs;
        total.bad.extend(s.bad);
    }
    eprintln!("{path:?}: {total:?}");
    let mut gw = gw;
    assert!(
        gw.child.0.try_wait().unwrap().is_none(),
        "{path:?}: the gateway died:\n{}",
        gw.log()
    );
    assert!(
        total.bad.is_empty(),
        "{path:?}: bad batches seen: {:?}",
        total.bad
    );
    assert!(total.batches > 0, "{path:?}: the consumers read nothing");
    // A fresh consumer reads the surviving log, byte-exact.
    let mut want = Vec::new();
    for s in segment_files(&part) {
        want.extend(std::fs::read(s).unwrap());
    }
    if path.tcp() {
        let got = in_client_ns(&net, move || tcp_read_all(addr, survivors));
        assert!(
            got == want,
            "{path:?}: {} bytes read, {} on disk",
            got.len(),
            want.len()
        );
    } else {
        let out = consume_fetch(
            &net,
            &fetch,
            TOPIC,
            &[
                "--from-beginning",
                "--verify",
                "--format",
                "",
                "--count",
                &survivors.to_string(),
            ],
        );
        assert!(out.status.success(), "{path:?}: fresh consumer failed");
        let (n, end, bytes) = verified_summary(&out);
        assert_eq!(
            (n, end, bytes),
            (survivors as u64, survivors, want.len() as u64),
            "{path:?}"
        );
    }
    let log = gw.stop();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn truncated_and_swapped_under_kafka_tcp_sendfile() {
    run(Path5::TcpSendfile, "trsf");
}

#[test]
fn truncated_and_swapped_under_kafka_tcp_copy() {
    run(Path5::TcpCopy, "trcp");
}

#[test]
fn truncated_and_swapped_under_kernel_udp() {
    run(Path5::Udp, "trudp");
}

#[test]
fn truncated_and_swapped_under_af_xdp_copy() {
    run(Path5::XdpCopy, "trxc");
}

#[test]
fn truncated_and_swapped_under_af_xdp_sg_registered_tmpfs() {
    run(Path5::XdpSg, "trxs");
}
