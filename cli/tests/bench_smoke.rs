//! The benchmark harness end to end in its tiny configuration (`scripts/bench.sh --smoke`):
//! namespaces, logs, every path once, the tailing paths at MTU 1500 and then 9000 (the veth
//! MTU switched between the passes), the report and the plots. It asserts that the tables came
//! out with a number for every path this build offers (and "not available" only for the others),
//! so a path that lands but breaks under the benchmark fails here, not in a release run.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KXGW: &str = env!("CARGO_BIN_EXE_kxgw");

fn help(args: &[&str]) -> String {
    let out = Command::new(KXGW)
        .args(args)
        .arg("--help")
        .output()
        .expect("running kxgw --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Cells of the table rows whose first cell starts with `label`.
fn rows<'a>(md: &'a str, label: &str) -> Vec<Vec<&'a str>> {
    md.lines()
        .filter(|l| l.starts_with("| "))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells[0].starts_with(label))
        .collect()
}

/// The median (first number) of a "median (min–max)" cell.
fn median(cell: &str) -> Option<f64> {
    cell.split_whitespace().next()?.parse().ok()
}

#[test]
fn bench_smoke_produces_a_table_with_every_available_path() {
    kxgw_testkit::testnet::require_root().expect("bench smoke test");
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let out = tempfile::tempdir().expect("temp dir");
    let t0 = Instant::now();
    let mut child = Command::new(repo.join("scripts/bench.sh"))
        .args(["--smoke", "--kxgw", KXGW, "--out"])
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running scripts/bench.sh");
    // Drain the pipes on threads so a chatty run cannot block on a full pipe.
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
    let so = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let se = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    // 90-130 s on a 2-vCPU machine (debug build; 24 tailing runs: 12 paths at 2 MTUs);
    // the bound only catches a hang (SIGTERM makes the script's trap remove its namespaces).
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for bench.sh") {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            panic!(
                "bench.sh --smoke still running after 300 s: {}",
                se.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = t0.elapsed();
    let _ = so.join();
    let stderr = se.join().unwrap_or_default();
    assert!(
        status.success(),
        "bench.sh --smoke failed: {status}\n{stderr}"
    );
    eprintln!("bench.sh --smoke took {elapsed:?}");

    let md_path = out.path().join("smoke-mtu1500.md");
    let md = std::fs::read_to_string(&md_path)
        .unwrap_or_else(|e| panic!("{} not written: {e}\n{stderr}", md_path.display()));
    assert!(
        md.contains("**Machine:** kernel "),
        "no machine line:\n{md}"
    );
    assert!(
        out.path().join("smoke-mtu1500-throughput.png").exists(),
        "throughput plot missing"
    );

    let serve = help(&["serve"]);
    let consume = help(&["consume"]);
    let fetch = serve.contains("--fetch-listen") && consume.contains("--fetch");
    let expect = [
        ("ceiling: iperf3", true),
        ("ceiling: raw sendfile", true),
        ("Kafka TCP, `--io copy`", serve.contains("--kafka-listen")),
        (
            "Kafka TCP, `--io sendfile`",
            serve.contains("--kafka-listen"),
        ),
        ("Kafka TCP over TLS", serve.contains("--kafka-listen-ssl")),
        ("fetch protocol, kernel UDP sendmmsg", fetch),
        (
            "fetch protocol, AF_XDP `--tx-strategy copy`",
            fetch && serve.contains("--xdp-iface"),
        ),
        (
            "fetch protocol, AF_XDP `--tx-strategy sg`",
            fetch && serve.contains("--xdp-iface"),
        ),
    ];
    for (label, available) in expect {
        let found = rows(&md, label);
        assert!(!found.is_empty(), "no row for {label}:\n{md}");
        for cells in found {
            let gbps = cells[2];
            assert!(
                !gbps.starts_with("failed"),
                "{label}: run failed:\n{md}\n{stderr}"
            );
            if available {
                let v =
                    median(gbps).unwrap_or_else(|| panic!("{label}: no figure ({gbps}):\n{md}"));
                assert!(v > 0.0 && v.is_finite(), "{label}: {v} Gbit/s");
            } else {
                assert!(gbps.starts_with("not available"), "{label}: {gbps}");
            }
        }
    }
    check_tailing(&md, &serve, fetch, &stderr);
    for mtu in ["1500", "9000"] {
        let png = format!("smoke-mtu1500-hops-mtu{mtu}.png");
        assert!(
            out.path().join(&png).exists(),
            "per-hop plot {png} missing:\n{md}"
        );
    }
}

/// A tailing table per MTU of the smoke's `--lat-mtus`, each with every tailing path once with
/// a blocking and once with a spinning consumer, and a figure wherever this build has the path.
fn check_tailing(md: &str, serve: &str, fetch: bool, stderr: &str) {
    let spin = Command::new(common::kxgw_bench())
        .args(["tail-fetch", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--spin"))
        .unwrap_or(false);
    let kafka = serve.contains("--kafka-listen");
    let xdp = fetch && serve.contains("--xdp-iface");
    let paths = [
        ("Kafka TCP long-poll (`--io sendfile`)", kafka),
        (
            "Kafka TCP long-poll, `--kafka-busy-poll`",
            kafka && serve.contains("--kafka-busy-poll"),
        ),
        ("fetch protocol, kernel UDP", fetch),
        (
            "fetch protocol, kernel UDP, `--fetch-busy-poll`",
            fetch && serve.contains("--fetch-busy-poll"),
        ),
        ("fetch protocol, AF_XDP, busy poll off", xdp),
        (
            "fetch protocol, AF_XDP, `--busy-poll`",
            xdp && serve.contains("--busy-poll"),
        ),
    ];
    for mtu in ["1500", "9000"] {
        let body = common::md_table(&common::md_section(
            md,
            &format!("## Tailing latency at MTU {mtu}:"),
        ));
        assert_eq!(
            body.len(),
            2 * paths.len(),
            "MTU {mtu}: tailing rows:\n{md}"
        );
        for (label, available) in paths {
            for consumer in ["blocking", "spinning"] {
                let what = format!("{label}, {consumer} consumer, MTU {mtu}");
                let found: Vec<_> = body
                    .iter()
                    .filter(|c| c[0] == label && c[1] == consumer)
                    .collect();
                assert_eq!(found.len(), 1, "{what}: rows:\n{md}");
                let p50 = &found[0][2];
                assert!(
                    !p50.starts_with("failed"),
                    "{what}: run failed:\n{md}\n{stderr}"
                );
                if available && (consumer == "blocking" || spin) {
                    let v =
                        median(p50).unwrap_or_else(|| panic!("{what}: no figure ({p50}):\n{md}"));
                    assert!(v > 0.0 && v.is_finite(), "{what}: p50 {v} µs");
                } else {
                    assert!(p50.starts_with("not available"), "{what}: {p50}");
                }
            }
        }
    }
}
