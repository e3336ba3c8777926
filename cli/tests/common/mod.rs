//! Shared helpers of the network tests (kafka_e2e, security_kafka, faults, soak, fetch_udp,
//! xdp_fetch, xdp_engine): a gateway process in a test namespace, raw Kafka requests,
//! namespace threads, `kxgw consume --fetch` runs and the counters gateways print.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kxgw_demo_data::{demo_key, demo_value};
use kxgw_test_pki::{DnType, Issued, Pki, Usage};
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

pub const KXGW: &str = env!("CARGO_BIN_EXE_kxgw");

/// The `kxgw-bench` binary (package tools/bench), built next to `kxgw` by
/// `cargo test --workspace`; another package's binary has no CARGO_BIN_EXE_ variable.
pub fn kxgw_bench() -> PathBuf {
    let bench = Path::new(KXGW).with_file_name("kxgw-bench");
    assert!(
        bench.is_file(),
        "{} is missing: run `cargo build -p kxgw-bench` (cargo test --workspace builds it)",
        bench.display()
    );
    bench
}

pub fn produce(dir: &Path, topic: &str, records: u64, extra: &[&str]) {
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

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it opens live there.
pub fn in_ns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// Runs `f` on a thread inside the consumer namespace.
pub fn in_client_ns<R: Send + 'static>(net: &TestNet, f: impl FnOnce() -> R + Send + 'static) -> R {
    in_ns(&net.client_ns, f)
}

/// Fails with a clear message when `name` is not on PATH.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is needed by this test (scripts/install-deps.sh installs it)"
    );
}

/// The lines of a markdown report (scripts/bench_report.py) from the one starting with
/// `heading` to the next `## ` heading.
pub fn md_section<'a>(md: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = md.lines().skip_while(|l| !l.starts_with(heading));
    assert!(lines.next().is_some(), "no section {heading:?} in:\n{md}");
    lines.take_while(|l| !l.starts_with("## ")).collect()
}

/// The body rows (header and separator left out) of the markdown table in `lines`, as cells.
pub fn md_table(lines: &[&str]) -> Vec<Vec<String>> {
    lines
        .iter()
        .filter(|l| l.starts_with("| "))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// A finished command's stdout and stderr, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks "offset\tkey\tvalue" lines (kcat `-f '%o\t%k\t%s\n'`, the Python consumers)
/// against the demo content of `partition`: `count` records from offset `first`, values of
/// `size` bytes.
pub fn check_lines(who: &str, out: &str, partition: i32, first: i64, count: usize, size: usize) {
    let lines: Vec<&str> = out.lines().filter(|l| l.contains('\t')).collect();
    assert_eq!(lines.len(), count, "{who}: record count");
    for (i, line) in lines.iter().enumerate() {
        let mut f = line.splitn(3, '\t');
        let offset: i64 = f.next().unwrap_or_default().parse().expect("offset");
        let key = f.next().unwrap_or_default();
        let value = f.next().unwrap_or_default();
        let want = first + i as i64;
        assert_eq!(offset, want, "{who}: offsets in order without gaps");
        assert_eq!(key.as_bytes(), &demo_key(want)[..], "{who}: key at {want}");
        assert!(
            value.as_bytes() == &demo_value(partition, want, size)[..],
            "{who}: value at offset {want} differs"
        );
    }
}

/// The logs of the secured-listener tests: topics `t` (allowed) and `u` (refused), each
/// `records` demo records of `size` bytes, in `work/logs`.
pub fn allowed_and_refused_topics(work: &Path, records: u64, size: usize) -> PathBuf {
    let dir = work.join("logs");
    for topic in ["t", "u"] {
        produce(&dir, topic, records, &["--record-size", &size.to_string()]);
    }
    dir
}

/// A test CA in `work` (`kxgw-test-ca.pem`) and the gateway's certificate for GW_ADDR
/// (`gateway.pem`, `gateway.key`), for `--tls-cert` / `--tls-key`.
pub fn gateway_pki(work: &Path) -> (Pki, Issued) {
    let pki = Pki::new(work, "kxgw-test-ca");
    let cert = pki.issue(
        "gateway",
        &[(DnType::CommonName, "kxgw")],
        Usage::Server(GW_ADDR),
    );
    (pki, cert)
}

/// `kxgw users ARGS`, which must succeed; its stdout.
pub fn users(args: &[&str]) -> String {
    let out = Command::new(KXGW).arg("users").args(args).output().unwrap();
    assert!(out.status.success(), "kxgw users {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `work/users.toml` with these (user, password) pairs, written by `kxgw users add`.
pub fn users_file(work: &Path, entries: &[(&str, &str)]) -> PathBuf {
    let file = work.join("users.toml");
    let path = file.to_str().unwrap();
    for (user, password) in entries {
        users(&["add", "--file", path, user, password]);
    }
    file
}

/// A test network tagged `tag`, a work dir, and the log dir inside it (not yet created).
pub fn test_setup(tag: &str) -> (TestNet, tempfile::TempDir, PathBuf) {
    let net = TestNet::new(tag, 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    (net, work, dir)
}

/// Whether `addr` accepts TCP connections from the consumer namespace within 20 s.
pub fn wait_listening(net: &TestNet, addr: SocketAddr) -> bool {
    in_client_ns(net, move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
}

/// A connection to `addr` whose reads give up after 10 s.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

pub struct Gateway {
    pub child: KillOnDrop,
    pub stderr: PathBuf,
    pub addr: SocketAddr,
    /// Control socket (`kxgw stats --socket`).
    pub ctl: PathBuf,
}

impl Gateway {
    pub fn start(net: &TestNet, dir: &Path, work: &Path) -> Gateway {
        Self::start_with(net, dir, work, &[])
    }

    /// Starts `kxgw serve` with extra arguments; waits until the Kafka port accepts.
    pub fn start_with(net: &TestNet, dir: &Path, work: &Path, extra: &[&str]) -> Gateway {
        let n = std::fs::read_dir(work).map(|d| d.count()).unwrap_or(0);
        let addr: SocketAddr = format!("{GW_ADDR}:9092").parse().unwrap();
        let mut args = vec![std::ffi::OsString::from("--log-dir"), dir.into()];
        args.extend(extra.iter().map(std::ffi::OsString::from));
        Self::spawn(
            net,
            work,
            &format!("serve-{n}"),
            &format!("ctl-{n}"),
            addr,
            &args,
        )
    }

    /// [`Gateway::start_with`], then waits until each of `listeners` (the SASL and TLS
    /// listeners that `extra` asks for) accepts.
    pub fn start_secured(
        net: &TestNet,
        dir: &Path,
        work: &Path,
        extra: &[&str],
        listeners: &[SocketAddr],
    ) -> Gateway {
        let gw = Self::start_with(net, dir, work, extra);
        for &a in listeners {
            assert!(wait_listening(net, a), "no listener on {a}:\n{}", gw.log());
        }
        gw
    }

    /// Starts `kxgw serve --kafka-listen addr` with `args` in the gateway namespace, logging
    /// to `work/<log>.log`, controlled at `work/<ctl>.sock`; waits until the port accepts.
    pub fn spawn(
        net: &TestNet,
        work: &Path,
        log: &str,
        ctl: &str,
        addr: SocketAddr,
        args: &[std::ffi::OsString],
    ) -> Gateway {
        let mut all = vec!["--kafka-listen".into(), addr.to_string().into()];
        all.extend(args.iter().cloned());
        Self::spawn_listening(net, work, log, ctl, addr, &all)
    }

    /// [`Gateway::spawn`] with the listener flags in `args` (e.g. only --kafka-listen-sasl);
    /// waits until `addr` accepts.
    pub fn spawn_listening(
        net: &TestNet,
        work: &Path,
        log: &str,
        ctl: &str,
        addr: SocketAddr,
        args: &[std::ffi::OsString],
    ) -> Gateway {
        let stderr = work.join(format!("{log}.log"));
        let ctl = work.join(format!("{ctl}.sock"));
        let child = net
            .gw_command(KXGW)
            .arg("serve")
            .arg("--control-socket")
            .arg(&ctl)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning kxgw serve");
        let gw = Gateway {
            child: KillOnDrop(child),
            stderr,
            addr,
            ctl,
        };
        let ready = wait_listening(net, addr);
        assert!(ready, "kxgw serve {log} never listened:\n{}", gw.log());
        gw
    }

    /// The counters in Prometheus text, from the control socket.
    pub fn metrics(&self) -> String {
        let out = Command::new(KXGW)
            .args(["stats", "--raw", "--socket"])
            .arg(&self.ctl)
            .output()
            .expect("running kxgw stats");
        assert!(out.status.success(), "kxgw stats: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One counter from [`Gateway::metrics`] (summed over label sets).
    pub fn metric(&self, name: &str) -> u64 {
        self.metrics()
            .lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Peak resident set of the gateway, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub fn stop(mut self) -> String {
        let status = self.child.terminate(Duration::from_secs(10)).unwrap();
        let log = self.log();
        assert!(status.success(), "kxgw serve exited {status}:\n{log}");
        log
    }
}

/// One request frame with correlation id 42.
pub fn frame<R: Encodable>(key: ApiKey, version: i16, req: &R) -> Vec<u8> {
    frame_corr(key, version, 42, req)
}

/// One request frame (length prefix, header, body) with correlation id `corr`.
pub fn frame_corr<R: Encodable>(key: ApiKey, version: i16, corr: i32, req: &R) -> Vec<u8> {
    kxgw::kafka::frame::encode_request(key, version, corr, "sec", req).expect("encoding a request")
}

/// A raw request: the given header fields, then `body` verbatim.
pub fn raw(key: i16, version: i16, body: &[u8]) -> Vec<u8> {
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
    kxgw::kafka::frame::size_prefixed(&f)
}

pub fn read_response(s: &mut TcpStream) -> std::io::Result<Bytes> {
    kxgw::kafka::client::read_response(s).map_err(std::io::Error::other)
}

/// Sends one request and decodes its response.
pub fn call<Req: Encodable, Resp: Decodable>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Resp {
    call_rest(s, key, version, req).0
}

/// [`call`], also checking that the response frame holds nothing after the response.
pub fn call_exact<Req: Encodable, Resp: Decodable>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Resp {
    let (r, rest) = call_rest(s, key, version, req);
    assert_eq!(rest.len(), 0);
    r
}

/// Sends one request; returns its decoded response and the bytes of the frame after it.
fn call_rest<Req: Encodable, Resp: Decodable>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> (Resp, Bytes) {
    s.write_all(&frame(key, version, req)).unwrap();
    let mut b = read_response(s).unwrap();
    let r = kxgw::kafka::frame::decode_response(key, version, 42, &mut b).unwrap();
    (r, b)
}

/// ListOffsets v4 of partition `partition` of `topic` at `timestamp` (-1 latest, -2
/// earliest) on `s`: (error code, offset).
pub fn list_offsets(s: &mut TcpStream, topic: &str, partition: i32, timestamp: i64) -> (i16, i64) {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)])]);
    let r: ListOffsetsResponse = call(s, ApiKey::ListOffsets, 4, &req);
    let pr = &r.topics[0].partitions[0];
    (pr.error_code, pr.offset)
}

pub fn fetch(topic: &str, partition: i32, offset: i64) -> FetchRequest {
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
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// A Fetch for one partition with the given byte limits.
pub fn fetch_max(topic: &str, partition: i32, offset: i64, max: i32, wait_ms: i32) -> FetchRequest {
    let mut f = fetch(topic, partition, offset);
    f.max_bytes = max;
    f.max_wait_ms = wait_ms;
    f.topics[0].partitions[0].partition_max_bytes = max;
    f
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Current resident set of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Reads `topic`-`partition` from `from` until `end` over one connection (reconnecting on
/// any error until `patience` runs out), checking that every batch verifies and that offsets
/// follow each other with no gap or repeat, sleeping `pace` after each response (a slow
/// consumer; `Duration::ZERO` for none). Returns the number of batches.
pub fn consume_verified(
    addr: SocketAddr,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
    patience: Duration,
    pace: Duration,
) -> Result<usize, String> {
    let mut offset = from;
    let mut batches = 0;
    let mut conn: Option<TcpStream> = None;
    let mut last_ok = Instant::now();
    while offset < end {
        if last_ok.elapsed() > patience {
            return Err(format!("stuck at offset {offset} for {patience:?}"));
        }
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    conn.insert(s)
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let req = frame(
            ApiKey::Fetch,
            11,
            &fetch_max(topic, partition, offset, 1 << 20, 100),
        );
        let resp = s.write_all(&req).and_then(|()| read_response(s));
        let Ok(mut b) = resp else {
            conn = None;
            continue;
        };
        let r: FetchResponse = kxgw::kafka::frame::decode_response(ApiKey::Fetch, 11, 42, &mut b)
            .map_err(|e| e.to_string())?;
        let p = &r.responses[0].partitions[0];
        if p.error_code != 0 {
            return Err(format!("error {} at offset {offset}", p.error_code));
        }
        let bytes = p.records.clone().unwrap_or_default();
        std::thread::sleep(pace);
        for item in kxgw::log::batch::iter(&bytes) {
            let (_, h) = item.map_err(|e| format!("bad batch served at {offset}: {e}"))?;
            if h.base_offset > offset || h.last_offset() < offset {
                return Err(format!(
                    "batch {}..={} served for offset {offset}",
                    h.base_offset,
                    h.last_offset()
                ));
            }
            offset = h.next_offset();
            batches += 1;
            last_ok = Instant::now();
        }
    }
    Ok(batches)
}

/// Writes `records` demo records (1000-byte values, 16-byte keys, 32 per batch) to partition 0
/// of `topic` with the log writer, rolling segments at `segment_bytes`. Returns the bytes of
/// all segments.
pub fn produce_demo_records(dir: &Path, topic: &str, records: u64, segment_bytes: u64) -> u64 {
    use kxgw::log::writer::WriterConfig;
    use kxgw_testkit::demo_log::ProduceConfig;
    let s = kxgw_testkit::demo_log::produce(&ProduceConfig {
        log_dir: dir.to_path_buf(),
        topic: topic.into(),
        partitions: 1,
        records,
        record_size: 1000,
        batch_records: 32,
        key_size: 16,
        headers: 0,
        writer: WriterConfig {
            segment_bytes,
            ..WriterConfig::default()
        },
        write_checkpoint: false,
    })
    .expect("producing the test log");
    s.bytes
}

/// The segment files (`*.log`) of partition directory `part`, oldest first.
pub fn segment_files(part: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(part)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// The base offset in a segment file's name.
pub fn base_of(seg: &Path) -> i64 {
    kxgw::log::segment::parse_log_name(seg.file_name().unwrap().to_str().unwrap()).unwrap()
}

/// Number of segment files of partition 0 of `topic`.
pub fn segment_count(dir: &Path, topic: &str) -> usize {
    segment_files(&dir.join(format!("{topic}-0"))).len()
}

/// Runs `kxgw consume --fetch endpoint --topic topic args..` in the consumer namespace and
/// echoes what it printed.
pub fn consume_fetch(net: &TestNet, endpoint: &str, topic: &str, args: &[&str]) -> Output {
    let out = net
        .client_command(KXGW)
        .args(["consume", "--fetch", endpoint, "--topic", topic])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running kxgw consume");
    eprintln!(
        "consume {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Parses "verified N records (offsets a..b) in K batches, B bytes ... errors: 0" (which it
/// must end with) into (N, b, B).
pub fn verified_summary(out: &Output) -> (u64, i64, u64) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("verified "))
        .unwrap_or_else(|| panic!("no summary in {text:?}"));
    assert!(line.ends_with("errors: 0"), "{line}");
    let w: Vec<&str> = line.split_whitespace().collect();
    let n = w[1].parse().unwrap();
    let end = w[4]
        .trim_end_matches(')')
        .rsplit("..")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = w[8].parse().unwrap();
    (n, end, bytes)
}

/// Sends each line read from `from` to `to` (prefixed with `echo` on stderr when given) until
/// the stream ends or nobody receives.
pub fn forward_lines(
    from: impl Read + Send + 'static,
    to: mpsc::Sender<String>,
    echo: Option<&'static str>,
) {
    std::thread::spawn(move || {
        for l in BufReader::new(from).lines().map_while(Result::ok) {
            if let Some(who) = echo {
                eprintln!("{who}: {l}");
            }
            if to.send(l).is_err() {
                break;
            }
        }
    });
}

/// A gateway started with its output piped: what it prints arrives on `lines` (see
/// [`forward_lines`]); `banner` is the line with which it said it was up.
pub struct PipedGateway {
    pub child: KillOnDrop,
    pub lines: mpsc::Receiver<String>,
    pub banner: String,
    /// Names the process in failure messages.
    pub name: &'static str,
}

impl PipedGateway {
    /// SIGTERM, which it must exit cleanly on; returns what it printed on the way out (the
    /// counters).
    pub fn stop(mut self) -> String {
        let status = self.child.terminate(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{} exit: {status}", self.name);
        drain_lines(&self.lines)
    }

    /// SIGKILL; then the XDP program must leave the gateway's interface within 5 s (the
    /// bpf_link goes with the process).
    pub fn kill_and_expect_xdp_detached(&mut self, net: &TestNet) {
        self.child.0.kill().unwrap();
        self.child.0.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while net.gw_has_xdp().unwrap() {
            assert!(
                Instant::now() < deadline,
                "XDP program still attached after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The lines still coming on `lines`, until none arrives for 2 s (what a stopped gateway
/// printed on the way out).
pub fn drain_lines(lines: &mpsc::Receiver<String>) -> String {
    let mut rest = String::new();
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(2)) {
        rest.push_str(&l);
        rest.push('\n');
    }
    rest
}

/// The value of `name` in counters printed as `name: N` (AF_XDP engine stats).
pub fn printed_counter(stats: &str, name: &str) -> u64 {
    let at = stats
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("no {name} in {stats}"));
    stats[at + name.len() + 2..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

/// Starts a tailing `kxgw consume --follow --verify` in the consumer namespace at offset
/// `from` of `topic` (fetch protocol at `endpoint`) that wants `count` records, stdout piped;
/// checks that 700 ms later it is still waiting at the end.
pub fn start_follower(
    net: &TestNet,
    endpoint: &str,
    topic: &str,
    from: u64,
    count: u64,
) -> KillOnDrop {
    let mut consumer = KillOnDrop(
        net.client_command(KXGW)
            .args(["consume", "--fetch", endpoint, "--topic", topic])
            .args([
                "--offset",
                &from.to_string(),
                "--follow",
                "--count",
                &count.to_string(),
                "--verify",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        consumer.0.try_wait().unwrap().is_none(),
        "it waits at the end"
    );
    consumer
}

/// The exit status and output of a [`start_follower`] consumer wanting `count` records;
/// fails if it has not exited within 20 s.
pub fn follower_output(mut consumer: KillOnDrop, count: u64) -> (std::process::ExitStatus, String) {
    consumer
        .wait_output(Duration::from_secs(20))
        .unwrap()
        .unwrap_or_else(|| panic!("the tailing consumer did not get {count} records"))
}

/// `kxgw-bench tail-produce` pinned to CPU 1 (as scripts/bench.sh runs it): appends
/// `count` one-record batches to topic `tail` in `dir` at 2000/s.
pub fn tail_produce(dir: &Path, count: &str) {
    let st = Command::new("taskset")
        .args(["-c", "1"])
        .arg(kxgw_bench())
        .args(["tail-produce", "--log-dir"])
        .arg(dir)
        .args(["--topic", "tail", "--count", count, "--rate", "2000"])
        .stdout(Stdio::null())
        .status()
        .expect("running kxgw-bench tail-produce");
    assert!(st.success(), "tail-produce: {st}");
}

/// The tailing probe as scripts/bench.sh runs it: `kxgw-bench tail-fetch` pinned to CPU 1
/// in the consumer namespace waits at offset 1 of topic `tail` (fetch protocol at `endpoint`,
/// giving up after `timeout_secs`); 500 ms later `count` records are appended with
/// [`tail_produce`]. Returns its exit status and JSON summary once it exits; fails if it has
/// not within `wait`.
pub fn tail_probe(
    net: &TestNet,
    dir: &Path,
    endpoint: &str,
    count: u64,
    timeout_secs: &str,
    wait: Duration,
) -> (std::process::ExitStatus, String) {
    tail_probe_with(net, dir, endpoint, count, (timeout_secs, wait), &[])
}

/// [`tail_probe`] with more probe flags (`extra`, e.g. `--records-out FILE`).
pub fn tail_probe_with(
    net: &TestNet,
    dir: &Path,
    endpoint: &str,
    count: u64,
    (timeout_secs, wait): (&str, Duration),
    extra: &[&std::ffi::OsStr],
) -> (std::process::ExitStatus, String) {
    let child = net
        .client_command("taskset")
        .args(["-c", "1"])
        .arg(kxgw_bench())
        .args(["tail-fetch", "--fetch", endpoint])
        .args([
            "--topic",
            "tail",
            "--offset",
            "1",
            "--count",
            &count.to_string(),
        ])
        .args(["--timeout-secs", timeout_secs])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut consumer = KillOnDrop(child);
    std::thread::sleep(Duration::from_millis(500));
    tail_produce(dir, &count.to_string());
    consumer
        .wait_output(wait)
        .unwrap()
        .expect("tail-fetch did not finish")
}

/// What `kxgw-bench tail-hops` made of a tailing run: the gateway's tail trace (read from its
/// control socket `ctl` with `kxgw stats --tail-trace`, kept in `work`) joined with the
/// probe's record file `records` (topic `tail`, listener `via`).
#[derive(Debug)]
pub struct TailHops {
    pub records: u64,
    pub joined: u64,
    pub parked: u64,
    /// (hop, samples, p50 µs) in path order.
    pub hops: Vec<(String, u64, f64)>,
    pub text: String,
}

pub fn tail_hops(ctl: &Path, records: &Path, via: &str, work: &Path) -> TailHops {
    let out = Command::new(KXGW)
        .args(["stats", "--tail-trace", "--socket"])
        .arg(ctl)
        .output()
        .expect("running kxgw stats --tail-trace");
    assert!(out.status.success(), "kxgw stats --tail-trace: {out:?}");
    let trace = work.join(format!("{via}.trace"));
    std::fs::write(&trace, &out.stdout).unwrap();
    let out = Command::new(kxgw_bench())
        .args(["tail-hops", "--topic", "tail", "--via", via, "--trace"])
        .arg(&trace)
        .arg("--records")
        .arg(records)
        .output()
        .expect("running kxgw-bench tail-hops");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "kxgw-bench tail-hops: {out:?}");
    let mut h = TailHops {
        records: 0,
        joined: 0,
        parked: 0,
        hops: Vec::new(),
        text: text.clone(),
    };
    for line in text.lines() {
        let c: Vec<&str> = line.split('\t').collect();
        let num = |i: usize| {
            c[i].parse::<f64>()
                .unwrap_or_else(|e| panic!("{line}: {e}"))
        };
        match c[0] {
            "hop" => h.hops.push((c[1].to_string(), num(2) as u64, num(3))),
            "summary" => {
                (h.records, h.joined, h.parked) = (num(1) as u64, num(2) as u64, num(3) as u64)
            }
            _ => panic!("unexpected tail-hops line {line:?}"),
        }
    }
    h
}

/// Asserts that every one of `n` records a probe got is in the gateway's trace (its refresh
/// and the reply that carried it), with all four hops, and some by parked polls.
pub fn assert_all_records_traced(h: &TailHops, n: u64) {
    assert_eq!((h.records, h.joined), (n, n), "{}", h.text);
    assert!(h.parked > 0, "no record came by a parked poll: {}", h.text);
    let names: Vec<&str> = h.hops.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "append_detect",
            "detect_validate",
            "validate_send",
            "send_arrival"
        ],
        "{}",
        h.text
    );
    assert!(h.hops.iter().all(|(_, count, _)| *count == n), "{}", h.text);
}

/// The number in field `"k":` of a JSON summary line (tail-fetch's).
pub fn json_number(text: &str, k: &str) -> f64 {
    let at = text
        .find(&format!("\"{k}\":"))
        .unwrap_or_else(|| panic!("{k} in {text}"));
    let rest = &text[at + k.len() + 3..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{k} in {text}: {e}"))
}

/// A raw fetch-protocol FETCH datagram (protocol `version`, request id and ack floor `id`,
/// 1 MiB window, no wait, READ_UNCOMMITTED) for partition 0 of `topic` from offset 0, up to
/// 64 KiB (no partition when `topic` is empty: the address-validation probe), padded to `pad`
/// bytes. `token` and `ticket` go in as given, so a test can send them missing, forged or
/// truncated.
pub fn raw_fetch(
    version: u8,
    id: u32,
    token: &[u8],
    ticket: &[u8],
    topic: &str,
    pad: usize,
) -> Vec<u8> {
    use kxgw::fetch::wire::{FetchRequest, IsolationLevel, PartRequest};
    FetchRequest {
        version,
        request_id: id,
        ack_floor: id,
        window: 1 << 20,
        max_wait_ms: 0,
        token,
        isolation: IsolationLevel::ReadUncommitted,
        ticket,
        parts: if topic.is_empty() {
            Vec::new()
        } else {
            vec![PartRequest {
                topic,
                partition: 0,
                offset: 0,
                max_bytes: 64 << 10,
                range_start: 0,
                range_end: 0,
            }]
        },
    }
    .encode(pad)
    .expect("encoding a FETCH")
}
