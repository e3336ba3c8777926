//! The fetch protocol over the AF_XDP fast path, end to end: `kxgw serve --xdp-iface` in the
//! gateway namespace, `kxgw consume --verify` in the consumer namespace, real multi-segment
//! logs written by the log writer.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    assert_all_records_traced, consume_fetch, follower_output, forward_lines, json_number,
    printed_counter, produce_demo_records, segment_count, start_follower, tail_hops,
    tail_probe_with, tail_produce, verified_summary, PipedGateway,
};
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

const PORT: u16 = 9093;
const TOPIC: &str = "xf";
/// The subcommand that runs the gateway.
const SERVE: &str = "serve";

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_kxgw")
}

fn endpoint() -> String {
    format!("{GW_ADDR}:{PORT}")
}

/// `kxgw serve` with the AF_XDP fetch endpoint and its output lines (started below).
type Gateway = PipedGateway;

impl Gateway {
    /// Starts `kxgw serve` with the AF_XDP fetch endpoint and waits for its transport line.
    fn start(net: &TestNet, dir: &Path, iface: &str, extra: &[&str]) -> Gateway {
        Self::start_on(net, dir, iface, extra, None)
    }

    /// As [`Gateway::start`], all of its threads pinned to one CPU when `cpu` is given (as
    /// the benchmark runs it).
    fn start_on(
        net: &TestNet,
        dir: &Path,
        iface: &str,
        extra: &[&str],
        cpu: Option<u32>,
    ) -> Gateway {
        let mut cmd = match cpu {
            Some(c) => {
                let mut cmd = net.gw_command("taskset");
                cmd.args(["-c", &c.to_string(), exe()]);
                cmd
            }
            None => net.gw_command(exe()),
        };
        cmd.args([SERVE, "--log-dir"])
            .arg(dir)
            .args(["--fetch-listen", &endpoint(), "--xdp-iface", iface])
            .args(["--arena-mib", "64"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning kxgw serve");
        let (tx, rx) = mpsc::channel();
        // Both streams: the transport line is on stdout, the counters are logged to stderr.
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        forward_lines(out, tx.clone(), None);
        forward_lines(err, tx, Some("gateway"));
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let banner = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.starts_with("kxgw: ") && l.contains("fetch endpoint") => break l,
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(s)) = child.0.try_wait() {
                        panic!("kxgw serve exited early: {s}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "kxgw serve did not report its fetch endpoint"
                    );
                }
            }
        };
        Gateway {
            child,
            lines: rx,
            banner,
            name: "serve",
        }
    }
}

fn consume(net: &TestNet, args: &[&str]) -> Output {
    consume_fetch(net, &endpoint(), TOPIC, args)
}

/// `kxgw consume --verify` of the first `records` records.
fn consume_first(net: &TestNet, records: u64) -> Output {
    consume(
        net,
        &[
            "--from-beginning",
            "--verify",
            "--count",
            &records.to_string(),
        ],
    )
}

/// "verified N records (offsets a..b) in K batches, B bytes ... errors: 0" -> (N, B).
fn verified(out: &Output) -> (u64, u64) {
    assert!(out.status.success(), "consume failed");
    let (n, _, bytes) = verified_summary(out);
    (n, bytes)
}

/// One log, three gateways (one per TX strategy), each consumed whole and verified.
fn whole_log_each_strategy(mtu: u32, loss: u32, records: u64, tag: &str) {
    let net = TestNet::new(tag, mtu).expect("test network");
    let dir = tempfile::tempdir().unwrap();
    let bytes = produce_demo_records(dir.path(), TOPIC, records, 64 << 20);
    assert!(
        segment_count(dir.path(), TOPIC) >= 2,
        "want a multi-segment log"
    );
    if loss > 0 {
        net.inject_client_loss(loss).expect("loss rule");
    }
    for strategy in ["sg", "copy", "auto"] {
        let gw = Gateway::start(&net, dir.path(), &net.gw_if, &["--tx-strategy", strategy]);
        assert!(gw.banner.contains("AF_XDP"), "{}", gw.banner);
        assert!(gw.banner.contains("bind mode copy"), "veth: {}", gw.banner);
        assert!(net.gw_has_xdp().unwrap());
        let t = Instant::now();
        let out = consume_first(&net, records);
        let took = t.elapsed();
        let (n, got) = verified(&out);
        assert_eq!(n, records, "every record");
        assert_eq!(got, bytes, "byte-exact: every batch byte of every segment");
        if loss > 0 {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(!text.contains("loss recovered: 0 re-fetches"), "{text}");
        }
        let stats = gw.stop();
        eprintln!(
            "MTU {mtu}, {loss}% loss, strategy {strategy}: {} MiB in {took:?}\n{stats}",
            bytes >> 20
        );
        assert_eq!(printed_counter(&stats, "tx_invalid_descs"), 0, "{stats}");
        assert_eq!(printed_counter(&stats, "oversize"), 0, "{stats}");
        assert!(printed_counter(&stats, "steered") > 0, "{stats}");
        let (sg, copy) = (
            printed_counter(&stats, "tx_sg"),
            printed_counter(&stats, "tx_copy"),
        );
        let data = printed_counter(&stats, "tx_packets");
        match strategy {
            "sg" => assert!(sg * 10 >= data * 9, "sg sends the data: {stats}"),
            // copy, and auto in copy mode (veth): everything copied into frames.
            _ => assert_eq!(sg, 0, "{stats}"),
        }
        assert!(sg + copy == data, "{stats}");
    }
}

#[test]
fn log_of_256_mib_byte_exact_with_each_tx_strategy() {
    // 260000 records of 1000 B: ~267 MB in 64 MiB segments.
    whole_log_each_strategy(1500, 0, 260_000, "xfbig");
}

#[test]
fn log_of_256_mib_byte_exact_with_one_percent_loss() {
    whole_log_each_strategy(1500, 1, 260_000, "xfloss");
}

#[test]
fn tmpfs_segments_registered_as_umem_are_sent_from_their_own_pages() {
    let net = TestNet::new("xfres", 9000).expect("test network");
    // The log on tmpfs: only tmpfs pages can be registered as UMEM.
    let dir = tempfile::tempdir_in("/dev/shm").expect("a temporary dir in /dev/shm (tmpfs)");
    let before = produce_demo_records(dir.path(), TOPIC, 40_000, 16 << 20);
    assert!(
        segment_count(dir.path(), TOPIC) >= 2,
        "want a multi-segment log"
    );
    // Opened read-write and pinned, but never written: the first (closed) segment's bytes
    // and mtime must not move (pinning stamps mtime and ctime; kxgw puts mtime back, ctime
    // cannot be).
    let first = dir
        .path()
        .join(format!("{TOPIC}-0"))
        .join("00000000000000000000.log");
    let stamp = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.len(), m.mtime(), m.mtime_nsec())
    };
    let first_before = stamp(&first);
    let first_bytes = std::fs::read(&first).unwrap();
    let gw = Gateway::start(
        &net,
        dir.path(),
        &net.gw_if,
        &["--tx-strategy", "sg", "--umem-segments"],
    );
    // Appended after registration: past every window, so staged through the arena.
    let after = produce_demo_records(dir.path(), TOPIC, 8_000, 16 << 20);
    let records = 48_000u64;
    let out = consume_first(&net, records);
    let (n, got) = verified(&out);
    assert_eq!(n, records, "every record");
    assert_eq!(
        got,
        before + after,
        "byte-exact, registered and appended bytes"
    );
    let stats = gw.stop();
    eprintln!("{stats}");
    assert_eq!(
        stamp(&first),
        first_before,
        "size and mtime of a registered segment"
    );
    assert!(
        std::fs::read(&first).unwrap() == first_bytes,
        "the gateway never writes a segment"
    );
    assert!(
        stats.contains("segment file(s)") && stats.contains("registered as UMEM"),
        "the gateway says what it registered: {stats}"
    );
    let resident = printed_counter(&stats, "tx_resident_bytes");
    let staged = printed_counter(&stats, "staged_bytes");
    let tx_bytes = printed_counter(&stats, "tx_bytes");
    assert_eq!(printed_counter(&stats, "tx_invalid_descs"), 0, "{stats}");
    // Nearly every registered byte went out from its own page; a datagram that straddles the
    // end of a window is staged whole, so allow one response per segment.
    assert!(
        resident + (4 << 20) >= before,
        "resident {resident} of {before}: {stats}"
    );
    assert!(
        staged >= after,
        "appended bytes are staged: {staged} < {after}: {stats}"
    );
    assert!(resident + staged <= tx_bytes + (1 << 20), "{stats}");
}

#[test]
fn jumbo_mtus_on_both_ends() {
    whole_log_each_strategy(9000, 0, 70_000, "xfj9k");
    whole_log_each_strategy(65535, 0, 70_000, "xfj64k");
}

#[test]
fn tailing_consumer_gets_appends_over_af_xdp() {
    let net = TestNet::new("xftail", 1500).expect("test network");
    let dir = tempfile::tempdir().unwrap();
    produce_demo_records(dir.path(), TOPIC, 5000, 1 << 30);
    let work = tempfile::tempdir().unwrap();
    let ctl = work.path().join("gw.sock");
    let ctl_arg = ctl.to_str().unwrap();
    let gw = Gateway::start(&net, dir.path(), &net.gw_if, &["--control-socket", ctl_arg]);
    let consumer = start_follower(&net, &endpoint(), TOPIC, 5000, 3000);
    for _ in 0..3 {
        produce_demo_records(dir.path(), TOPIC, 1000, 1 << 30);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, text) = follower_output(consumer, 3000);
    let metrics = tail_metrics(&ctl);
    assert!(status.success(), "{text}");
    assert!(text.contains("verified 3000 records"), "{text}");
    let stats = gw.stop();
    assert!(printed_counter(&stats, "steered") > 0, "{stats}");
    // The appends reached the parked polls as batches, each waking at most one worker (the
    // queue the one consumer's polls park on), never one wake-up per partition or queue.
    let total = |name: &str| {
        metrics
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum::<f64>()
    };
    let batches = total("kxgw_tail_append_batches_total");
    let wakes = total("kxgw_tail_wakes_total");
    assert!(batches > 0.0 && wakes > 0.0, "{metrics:?}");
    assert!(wakes <= batches, "{metrics:?}");
}

/// With `--busy-poll` a tailing consumer gets each record soon after its append, not at the
/// 500 ms long-poll limit (regression: p99 ~512 ms in the benchmark's tailing probe). Run as
/// the benchmark runs it: gateway pinned to one CPU, one-record batches at a steady rate.
#[test]
fn busy_polling_gateway_serves_a_tailing_consumer_promptly() {
    let net = TestNet::new("xfbusy", 1500).expect("test network");
    let dir = tempfile::tempdir().unwrap();
    tail_produce(dir.path(), "1");
    let work = tempfile::tempdir().unwrap();
    let ctl = work.path().join("gw.sock");
    let ctl_arg = ctl.to_str().unwrap();
    let gw = Gateway::start_on(
        &net,
        dir.path(),
        &net.gw_if,
        &["--busy-poll", "--control-socket", ctl_arg],
        Some(0),
    );
    let n = 3000u64;
    // Consumer and producer share the other CPU, as in scripts/bench.sh; n records at
    // 2000/s: 1.5 s of appends.
    let records = work.path().join("probe.records");
    let (status, text) = tail_probe_with(
        &net,
        dir.path(),
        &endpoint(),
        n,
        ("20", Duration::from_secs(25)),
        &["--records-out".as_ref(), records.as_os_str()],
    );
    let metrics = tail_metrics(&ctl);
    let hops = tail_hops(&ctl, &records, "fetch", work.path());
    let stats = gw.stop();
    assert!(status.success(), "tail-fetch: {status} {text}\n{stats}");
    let field = |k: &str| json_number(&text, k);
    assert_eq!(field("count") as u64, n, "{text}");
    // Every record within 300 ms of its append: far below the 500 ms long-poll limit.
    assert!(
        field("max_us") < 300_000.0,
        "append-to-consume delay too long with --busy-poll: {text}\n{stats}"
    );
    // The worker found appends itself (no follower wake-up), and every tailing reply's hops
    // were measured: one per parked poll answered with data, at most one per record.
    let value = |name: &str, label: Option<&str>| {
        metrics
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| label.is_none_or(|l| s.labels.iter().any(|(_, v)| v == l)))
            .map(|s| s.value)
            .sum::<f64>()
    };
    assert!(
        value("kxgw_tail_busy_found_total", None) > 0.0,
        "{metrics:?}"
    );
    let replies = value("kxgw_tail_hop_samples_total", Some("validate_send"));
    assert!(replies > 0.0 && replies <= n as f64, "{metrics:?}");
    let detect = value("kxgw_tail_hop_samples_total", Some("detect_validate"));
    assert_eq!(detect, replies, "{metrics:?}");
    let p50 = value("kxgw_tail_hop_us", Some("0.5"));
    assert!(p50 > 0.0, "hop quantiles exported: {metrics:?}");
    // Every record is in the tail trace, as the bench's per-hop join needs.
    assert_all_records_traced(&hops, n);
}

/// The gateway's counters from its control socket, parsed.
fn tail_metrics(ctl: &Path) -> Vec<kxgw::metrics::Sample> {
    let out = std::process::Command::new(exe())
        .args(["stats", "--raw", "--socket"])
        .arg(ctl)
        .output()
        .expect("running kxgw stats");
    assert!(out.status.success(), "kxgw stats: {out:?}");
    kxgw::metrics::parse(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn without_xdp_it_falls_back_to_kernel_udp_unless_required() {
    let net = TestNet::new("xffall", 1500).expect("test network");
    let dir = tempfile::tempdir().unwrap();
    produce_demo_records(dir.path(), TOPIC, 2000, 1 << 30);
    // No such interface: falls back, says why, still serves.
    let gw = Gateway::start(&net, dir.path(), "nosuchif0", &[]);
    assert!(gw.banner.contains("kernel UDP"), "{}", gw.banner);
    assert!(
        gw.banner.contains("nosuchif0"),
        "names the interface: {}",
        gw.banner
    );
    assert!(!net.gw_has_xdp().unwrap());
    let out = consume(&net, &["--from-beginning", "--verify", "--count", "2000"]);
    assert_eq!(verified(&out).0, 2000);
    gw.stop();
    // --require-xdp: refuses to start, and says why.
    let out = net
        .gw_command(exe())
        .args([SERVE, "--log-dir"])
        .arg(dir.path())
        .args([
            "--fetch-listen",
            &endpoint(),
            "--xdp-iface",
            "nosuchif0",
            "--require-xdp",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("require-xdp") && err.contains("nosuchif0"),
        "{err}"
    );
}

#[test]
fn kafka_tcp_and_arp_work_beside_xdp_and_sigkill_leaves_nothing_attached() {
    let net = TestNet::new("xfkill", 1500).expect("test network");
    let dir = tempfile::tempdir().unwrap();
    produce_demo_records(dir.path(), TOPIC, 3000, 1 << 30);
    let kafka = format!("{GW_ADDR}:9092");
    let mut gw = Gateway::start(&net, dir.path(), &net.gw_if, &["--kafka-listen", &kafka]);
    assert!(gw.banner.contains("AF_XDP"), "{}", gw.banner);
    assert!(net.gw_has_xdp().unwrap());
    // A fresh ARP exchange, then the Kafka protocol over TCP, both through the XDP program.
    kxgw_testkit::testnet::ip(["-n", &net.client_ns, "neigh", "flush", "all"]).unwrap();
    let out = net
        .client_command(exe())
        .args(["consume", "--bootstrap", &kafka, "--topic", TOPIC])
        .args(["--from-beginning", "--verify", "--count", "3000"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        verified(&out).0,
        3000,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = consume(&net, &["--from-beginning", "--verify", "--count", "3000"]);
    assert_eq!(verified(&out).0, 3000);
    gw.kill_and_expect_xdp_detached(&net);
    // A new gateway attaches, rebinds the queue and serves.
    let gw2 = Gateway::start(&net, dir.path(), &net.gw_if, &[]);
    assert!(gw2.banner.contains("AF_XDP"), "{}", gw2.banner);
    let out = consume(&net, &["--from-beginning", "--verify", "--count", "3000"]);
    assert_eq!(verified(&out).0, 3000);
    let stats = gw2.stop();
    assert!(printed_counter(&stats, "steered") > 0, "{stats}");
}
