//! End to end: `kxgw serve --kafka-listen` in the gateway namespace, real consumers (kcat,
//! kafka-python) and raw sockets in the consumer namespace, logs written by `kxgw produce`.
//! Every record received is compared with the writer's deterministic demo content.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    call_exact, check_lines, closed_by_server, connect, fetch_max, frame_corr, in_client_ns,
    read_response, require_tool, wait_listening, KXGW,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

const PY_CONSUMER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/kafka_consume.py");

/// `kxgw produce` of `records` records into each of `partitions` partitions of `topic`.
fn produce(dir: &Path, topic: &str, partitions: i32, records: u64, extra: &[&str]) {
    let partitions = partitions.to_string();
    let args = [&["--partitions", partitions.as_str()], extra].concat();
    common::produce(dir, topic, records, &args);
}

struct Gateway {
    child: KillOnDrop,
    stderr: PathBuf,
    addr: SocketAddr,
}

impl Gateway {
    fn start(net: &TestNet, dir: &Path, port: u16, io: &str, work: &Path) -> Gateway {
        let stderr = work.join(format!("serve-{port}-{io}.log"));
        let addr: SocketAddr = format!("{GW_ADDR}:{port}").parse().unwrap();
        let child = net
            .gw_command(KXGW)
            .args(["serve", "--log-dir"])
            .arg(dir)
            .args(["--kafka-listen", &addr.to_string(), "--io", io])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning kxgw serve");
        let mut gw = Gateway {
            child: KillOnDrop(child),
            stderr,
            addr,
        };
        if !wait_listening(net, addr) {
            let _ = gw.child.terminate(Duration::from_secs(2));
            panic!("kxgw serve never listened on {addr}:\n{}", gw.log());
        }
        gw
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Asks for the counters (SIGUSR1) and returns the last stats line printed.
    fn stats(&self) -> String {
        let before = self.log().matches("kafka stats:").count();
        let pid = nix::unistd::Pid::from_raw(self.child.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.matches("kafka stats:").count() > before {
                return log
                    .lines()
                    .rfind(|l| l.contains("kafka stats:"))
                    .unwrap()
                    .to_string();
            }
            assert!(Instant::now() < deadline, "no stats after SIGUSR1:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Counters once `ready` holds for them, or the last ones after 20 s.
    fn stats_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats = self.stats();
            if ready(&stats) || Instant::now() > deadline {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops with SIGTERM and checks for a clean exit.
    fn stop(mut self) -> String {
        let status = self.child.terminate(Duration::from_secs(10)).unwrap();
        let log = self.log();
        assert!(status.success(), "kxgw serve exited {status}:\n{log}");
        assert!(log.contains("kafka listener stopped"), "{log}");
        log
    }
}

/// A counter's value in a stats line, e.g. `counter(line, "sendfile")`.
fn counter(line: &str, name: &str) -> u64 {
    let key = format!(" {name}=");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len();
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn kcat(net: &TestNet, addr: SocketAddr, topic: &str, partition: i32) -> String {
    kcat_from(net, addr, topic, partition, "beginning")
}

/// kcat from a start offset spec (`beginning`, `-100` = 100 before the end, `s@TS`...).
fn kcat_from(net: &TestNet, addr: SocketAddr, topic: &str, partition: i32, from: &str) -> String {
    let out = net
        .client_command("timeout")
        .args(["60", "kcat", "-C", "-b", &addr.to_string(), "-t", topic])
        .args(["-p", &partition.to_string(), "-o", from, "-e"])
        .args(["-f", "%o\t%k\t%s\n"])
        .output()
        .expect("running kcat");
    assert!(
        out.status.success(),
        "kcat failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kcat output is text")
}

fn kafka_python(
    net: &TestNet,
    addr: SocketAddr,
    topic: &str,
    partition: i32,
    count: u64,
) -> String {
    let out = net
        .client_command("python3")
        .args([PY_CONSUMER, &addr.to_string(), topic])
        .args([partition.to_string(), count.to_string(), "60".into()])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kafka-python consumer failed ({}): {}\n{}",
        out.status,
        stdout.lines().last().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn kcat_and_kafka_python_receive_every_record_with_sendfile_and_copy() {
    require_tool("kcat");
    require_tool("python3");
    let net = TestNet::new("kcat", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    const N: u64 = 20_000;
    const SIZE: usize = 200;
    // Small segments: fetches stop at segment ends and the next one continues.
    produce(
        &dir,
        "orders",
        2,
        N,
        &["--record-size", "200", "--segment-bytes", "1048576"],
    );
    for (port, io) in [(9092u16, "sendfile"), (9093, "copy")] {
        let gw = Gateway::start(&net, &dir, port, io, work.path());
        for p in 0..2 {
            let out = kcat(&net, gw.addr, "orders", p);
            check_lines(&format!("kcat {io} p{p}"), &out, p, 0, N as usize, SIZE);
            let out = kafka_python(&net, gw.addr, "orders", p, N);
            assert!(out.contains(&format!("done {N}")), "{out}");
            check_lines(
                &format!("kafka-python {io} p{p}"),
                &out,
                p,
                0,
                N as usize,
                SIZE,
            );
        }
        let stats = gw.stats();
        let (used, unused) = if io == "sendfile" {
            ("sendfile", "copy")
        } else {
            ("copy", "sendfile")
        };
        // Four consumers of 20,000 records of > 200 bytes each.
        assert!(counter(&stats, used) > 4 * N * SIZE as u64, "{stats}");
        assert_eq!(counter(&stats, unused), 0, "{stats}");
        assert_eq!(counter(&stats, "bad_request"), 0, "{stats}");
        assert_eq!(counter(&stats, "io"), 0, "{stats}\n{}", gw.log());
        eprintln!("{io}: {stats}");
        gw.stop();
    }
}

#[test]
fn tailing_consumer_receives_records_appended_after_it_started() {
    require_tool("python3");
    let net = TestNet::new("tail", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    produce(&dir, "live", 1, 100, &["--record-size", "64"]);
    let gw = Gateway::start(&net, &dir, 9092, "sendfile", work.path());
    const WANT: u64 = 100 + 1000;
    let consumer = net
        .client_command("python3")
        .args([PY_CONSUMER, &gw.addr.to_string(), "live", "0"])
        .args([WANT.to_string(), "60".into()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kafka-python");
    let mut consumer = KillOnDrop(consumer);
    // Let the consumer catch up with the existing records and start waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(&gw.stats(), "parked") == 0 {
        assert!(
            Instant::now() < deadline,
            "consumer never waited at the log end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let producer = Command::new(KXGW)
        .args(["produce", "--log-dir"])
        .arg(&dir)
        .args(["--topic", "live", "--records", "0", "--record-size", "64"])
        .args(["--follow", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting kxgw produce --follow");
    let mut producer = KillOnDrop(producer);
    let mut out = String::new();
    consumer
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = consumer.0.wait().unwrap();
    let took = started.elapsed();
    producer.terminate(Duration::from_secs(5)).unwrap();
    assert!(
        status.success(),
        "consumer: {}",
        out.lines().last().unwrap_or_default()
    );
    check_lines("tailing kafka-python", &out, 0, 0, WANT as usize, 64);
    let stats = gw.stats();
    // Appends wake waiting fetches (not only their max_wait_ms running out).
    assert!(counter(&stats, "woken") > 0, "{stats}");
    eprintln!("tail: 1000 appended records received within {took:?}; {stats}");
    // 1000 records at 1000/s: about a second; a generous bound that still catches a
    // consumer that only gets data when waits expire.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    gw.stop();
}

/// A Fetch of one partition (1 MiB limits) waiting up to `wait_ms`.
fn fetch(topic: &str, partition: i32, offset: i64, wait_ms: i32) -> FetchRequest {
    fetch_max(topic, partition, offset, 1 << 20, wait_ms)
}

#[test]
fn bad_input_gets_errors_or_a_closed_connection_while_others_are_served() {
    require_tool("kcat");
    let net = TestNet::new("badin", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    produce(&dir, "t", 1, 5000, &["--record-size", "100"]);
    let gw = Gateway::start(&net, &dir, 9092, "sendfile", work.path());
    let addr = gw.addr;
    let report = in_client_ns(&net, move || {
        // A well-behaved consumer, used before, during and after the abuse.
        let mut good = connect(addr);
        let r: FetchResponse = call_exact(&mut good, ApiKey::Fetch, 11, &fetch("t", 0, 0, 100));
        assert_eq!(r.responses[0].partitions[0].error_code, 0);
        assert!(!r.responses[0].partitions[0]
            .records
            .as_ref()
            .unwrap()
            .is_empty());

        // Protocol-level errors keep the connection.
        let mut s = connect(addr);
        let md = MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(TopicName(StrBytes::from_static_str("nope"))))]));
        let r: MetadataResponse = call_exact(&mut s, ApiKey::Metadata, 9, &md);
        assert_eq!(r.topics[0].error_code, 3, "unknown topic");
        let r: FetchResponse = call_exact(&mut s, ApiKey::Fetch, 11, &fetch("nope", 0, 0, 100));
        assert_eq!(r.responses[0].partitions[0].error_code, 3, "unknown topic");
        let r: FetchResponse = call_exact(&mut s, ApiKey::Fetch, 11, &fetch("t", 0, 5001, 100));
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 1, "offset out of range");
        assert_eq!((p.high_watermark, p.log_start_offset), (5000, 0));
        let r: FetchResponse = call_exact(&mut s, ApiKey::Fetch, 11, &fetch("t", 3, 0, 100));
        assert_eq!(
            r.responses[0].partitions[0].error_code, 3,
            "unknown partition"
        );
        let r: FindCoordinatorResponse = call_exact(
            &mut s,
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default()
                .with_key(StrBytes::from_static_str("txn"))
                .with_key_type(1),
        );
        assert_eq!(r.error_code, 15, "no transaction coordinator");
        let r: HeartbeatResponse = call_exact(
            &mut s,
            ApiKey::Heartbeat,
            4,
            &HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_member_id(StrBytes::from_static_str("nobody")),
        );
        assert_eq!(r.error_code, 25, "unknown member");

        // Garbage, a hostile 2 GiB length prefix, a truncated frame: closed connections.
        let mut g = connect(addr);
        g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(closed_by_server(&mut g), "garbage");
        let mut g = connect(addr);
        g.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 1, 0, 0]).unwrap();
        assert!(closed_by_server(&mut g), "2 GiB length prefix");
        let mut g = connect(addr);
        let mut truncated = frame_corr(ApiKey::Fetch, 11, 1, &fetch("t", 0, 0, 100));
        truncated.truncate(truncated.len() / 2);
        g.write_all(&truncated).unwrap();
        g.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(closed_by_server(&mut g), "truncated frame");
        let mut g = connect(addr);
        let mut lying = frame_corr(ApiKey::Fetch, 11, 1, &fetch("t", 0, 0, 100));
        let n = lying.len();
        lying[n - 30..].fill(0xff);
        g.write_all(&lying).unwrap();
        assert!(closed_by_server(&mut g), "undecodable body");

        // The good consumer is still served, and so is a new one.
        let r: FetchResponse = call_exact(&mut good, ApiKey::Fetch, 11, &fetch("t", 0, 100, 100));
        assert_eq!(r.responses[0].partitions[0].error_code, 0);
        let mut fresh = connect(addr);
        let r: ApiVersionsResponse = call_exact(
            &mut fresh,
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        );
        assert_eq!(r.error_code, 0);
        "ok"
    });
    assert_eq!(report, "ok");
    let out = kcat(&net, addr, "t", 0);
    check_lines("kcat after abuse", &out, 0, 0, 5000, 100);
    let stats = gw.stats();
    assert!(counter(&stats, "bad_request") >= 3, "{stats}");
    assert!(counter(&stats, "partition") >= 4, "{stats}");
    let log = gw.stop();
    assert!(
        log.contains("bad frame"),
        "a log line names the bad frame:\n{log}"
    );
    assert!(log.contains("undecodable request"), "{log}");
}

#[test]
fn an_active_consumer_completes_with_a_thousand_idle_and_ten_stalled_connections() {
    require_tool("kcat");
    let net = TestNet::new("kconn", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    const N: u64 = 50_000;
    produce(&dir, "busy", 1, N, &["--record-size", "200"]);
    let gw = Gateway::start(&net, &dir, 9092, "sendfile", work.path());
    // Without a consumer-side raise, 1000 sockets would hit the default soft limit.
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    let addr = gw.addr;
    // The same read with no other connections, for the printed comparison (not asserted:
    // timings belong to the benchmarks).
    let started = Instant::now();
    let out = kcat(&net, addr, "busy", 0);
    let alone = started.elapsed();
    check_lines("kcat alone", &out, 0, 0, N as usize, 200);
    // Half of them handshake (ApiVersions) and then sit in a long-poll fetch at the log end,
    // half never send a byte; ten more are slow consumers that pipeline big fetches and never
    // read a byte of the answers (their socket buffers fill, the gateway must not wait).
    let idle = in_client_ns(&net, move || {
        let mut conns = Vec::new();
        for _ in 0..10 {
            let mut s = TcpStream::connect(addr).expect("opening a slow connection");
            for i in 0..20 {
                s.write_all(&frame_corr(ApiKey::Fetch, 11, i, &fetch("busy", 0, 0, 100)))
                    .unwrap();
            }
            conns.push(s);
        }
        for i in 0..1000 {
            let mut s = TcpStream::connect(addr).expect("opening an idle connection");
            if i % 2 == 0 {
                let _: ApiVersionsResponse = call_exact(
                    &mut s,
                    ApiKey::ApiVersions,
                    3,
                    &ApiVersionsRequest::default(),
                );
                s.write_all(&frame_corr(
                    ApiKey::Fetch,
                    11,
                    9,
                    &fetch("busy", 0, N as i64, 60_000),
                ))
                .unwrap();
            }
            conns.push(s);
        }
        conns
    });
    // connect() returns once the kernel has queued the connection; the gateway accepts and
    // reads them on its own schedule, so wait for it to have seen all of them.
    let stats = gw.stats_when(|s| counter(s, "open") >= 1010 && counter(s, "parked") >= 500);
    assert!(counter(&stats, "open") >= 1010, "{stats}");
    let started = Instant::now();
    let out = kcat(&net, addr, "busy", 0);
    let took = started.elapsed();
    check_lines("kcat among 1000 idle", &out, 0, 0, N as usize, 200);
    let stats = gw.stats();
    assert!(
        counter(&stats, "open") >= 1000,
        "idle connections kept: {stats}"
    );
    assert!(counter(&stats, "parked") >= 500, "{stats}");
    eprintln!(
        "kcat read {N} records in {alone:?} alone, {took:?} with 1000 idle + 10 stalled \
         connections open; {stats}"
    );
    // Consumers that hang up while their fetch waits are dropped at once, not when the
    // 60 s wait ends.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = gw.stats();
        if counter(&stats, "open") == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "connections left open: {stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
    gw.stop();
}

#[test]
fn sigterm_drains_a_response_the_consumer_is_still_reading() {
    let net = TestNet::new("kdrain", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    // 20,000 x 1000-byte records: a 1 MiB fetch response is far more than the socket
    // buffers hold, so most of it is still queued in the gateway when SIGTERM arrives.
    produce(&dir, "drain", 1, 20_000, &["--record-size", "1000"]);
    let gw = Gateway::start(&net, &dir, 9092, "sendfile", work.path());
    let addr = gw.addr;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn({
        let net_ns = net.client_ns.clone();
        move || {
            kxgw_in_ns(&net_ns);
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&frame_corr(ApiKey::Fetch, 11, 7, &fetch("drain", 0, 0, 0)))
                .unwrap();
            // Let the gateway queue the response, then wait for the SIGTERM before reading.
            std::thread::sleep(Duration::from_millis(300));
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            read_response(&mut s).unwrap().len()
        }
    });
    rx.recv().unwrap();
    let pid = nix::unistd::Pid::from_raw(gw.child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let len = reader.join().expect("the consumer read its whole response");
    assert!(len > 1_000_000, "a full 1 MiB response, got {len} bytes");
    let log = gw.stop();
    assert!(!log.contains("unsent responses"), "{log}");
}

/// Moves the calling thread into network namespace `ns`.
fn kxgw_in_ns(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}
