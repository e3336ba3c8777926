//! `kxgw demo`: the whole gateway on a built-in default, end to end, on a veth pair.
//!
//! Builds two network namespaces (gateway, consumer), writes a small demo log, starts one
//! gateway serving it over the fetch protocol (AF_XDP when XDP attaches, kernel UDP if not)
//! and over Kafka TCP, consumes every partition over each path with `kxgw consume` and with
//! kcat, checks every record against the deterministic demo content, prints a side-by-side
//! summary and removes everything it created. Exits 0 only if every record arrived intact.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use kxgw::metrics;
use kxgw_demo_data::{demo_key, demo_value};
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

const TOPIC: &str = "demo";
const KAFKA_PORT: u16 = 9092;
const FETCH_PORT: u16 = 7878;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Partitions in the demo log.
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
    /// Records per partition.
    #[arg(long, default_value_t = 20_000)]
    pub records: u64,
    /// Value size of each record, bytes.
    #[arg(long, default_value_t = 200)]
    pub record_size: usize,
    /// MTU of the veth pair (1500, 9000 or up to 65535: jumbo frames go multi-buffer).
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Where to write the demo log (default: a fresh directory under /dev/shm, removed after).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

/// One consumer run: what it was, what it got.
struct Outcome {
    path: String,
    records: u64,
    expected: u64,
    secs: f64,
    detail: String,
    ok: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the kxgw binary")?;
    let scratch = tempfile::Builder::new()
        .prefix("kxgw-demo-")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .context("creating a scratch directory")?;
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| scratch.path().join("logs"));
    let socket = scratch.path().join("kxgw.sock");

    println!("== kxgw demo");
    let net = TestNet::new("demo", args.mtu)?;
    println!(
        "network: namespaces {} ({} {GW_ADDR}) and {} ({} {}), veth MTU {}",
        net.gw_ns,
        net.gw_if,
        net.client_ns,
        net.client_if,
        kxgw_testkit::testnet::CLIENT_ADDR,
        net.mtu
    );

    // 1. The log.
    write_log(&exe, &log_dir, &args)?;

    // 2. The gateway: fetch protocol (AF_XDP, falling back to kernel UDP) + Kafka TCP.
    let gw_log = scratch.path().join("gateway.log");
    let mut gateway = start_gateway(&net, &exe, &log_dir, &socket, &gw_log)?;

    // 3. Consumers, every partition over every path.
    let mut outcomes = Vec::new();
    for p in 0..args.partitions {
        outcomes.push(consume_kxgw(&net, &exe, p, args.records, VIA_FETCH)?);
        outcomes.push(consume_kxgw(&net, &exe, p, args.records, VIA_KAFKA)?);
        outcomes.push(consume_kcat(&net, p, args.records, args.record_size)?);
    }

    // 4. What the gateway counted while serving, and which transport served the fetch path.
    let counters = metrics::fetch_unix(&socket).unwrap_or_default();
    let samples = metrics::parse(&counters);
    let fetch_via = fetch_transport(&samples);
    for o in outcomes.iter_mut().filter(|o| o.path.contains("fetch")) {
        o.detail = if o.ok {
            fetch_via.clone()
        } else {
            o.detail.clone()
        };
    }
    let status = gateway.terminate(Duration::from_secs(10))?;
    let detached = !net.gw_has_xdp()?;

    println!();
    let all_ok = print_outcomes(&outcomes, args.record_size);
    println!();
    print_counters(samples);
    println!(
        "gateway stopped ({status}); XDP program {}",
        if detached {
            "detached"
        } else {
            "STILL ATTACHED"
        }
    );
    drop(net);
    println!("namespaces removed");
    if all_ok && detached {
        println!("demo: every record of every partition arrived intact on every path");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "demo: FAILED (gateway log: {})",
            scratch.keep().join("gateway.log").display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Writes the demo log with `kxgw produce`.
fn write_log(exe: &Path, log_dir: &Path, args: &Args) -> Result<()> {
    let t0 = Instant::now();
    let status = Command::new(exe)
        .arg("produce")
        .arg("--log-dir")
        .arg(log_dir)
        .args(["--topic", TOPIC])
        .args(["--partitions", &args.partitions.to_string()])
        .args(["--records", &args.records.to_string()])
        .args(["--record-size", &args.record_size.to_string()])
        .status()
        .context("running kxgw produce")?;
    if !status.success() {
        bail!("kxgw produce failed ({status})");
    }
    println!(
        "log: topic {TOPIC}, {} partitions x {} records of {} bytes in {} ({:.2} s)",
        args.partitions,
        args.records,
        args.record_size,
        log_dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts `kxgw serve` in the gateway namespace (its output in `gw_log`) and waits for its
/// control socket.
fn start_gateway(
    net: &TestNet,
    exe: &Path,
    log_dir: &Path,
    socket: &Path,
    gw_log: &Path,
) -> Result<KillOnDrop> {
    let gw_out = std::fs::File::create(gw_log).context("creating the gateway log file")?;
    let mut gateway = KillOnDrop(
        net.gw_command(exe)
            .arg("serve")
            .arg("--log-dir")
            .arg(log_dir)
            .args(["--kafka-listen", &format!("{GW_ADDR}:{KAFKA_PORT}")])
            .args(["--fetch-listen", &format!("{GW_ADDR}:{FETCH_PORT}")])
            .args(["--xdp-iface", &net.gw_if])
            .arg("--control-socket")
            .arg(socket)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(gw_out.try_clone()?)
            .stderr(gw_out)
            .spawn()
            .context("starting kxgw serve in the gateway namespace")?,
    );
    wait_for_socket(socket, &mut gateway, gw_log)?;
    let attached = net.gw_has_xdp()?;
    println!(
        "gateway: kxgw serve in {} (XDP program on {}: {})",
        net.gw_ns,
        net.gw_if,
        if attached { "attached" } else { "not attached" }
    );
    for line in std::fs::read_to_string(gw_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("transport") || l.contains("bound") || l.contains("listening"))
    {
        println!("  | {}", strip_log_prefix(line));
    }
    Ok(gateway)
}

/// Which transport served the fetch path, from the gateway's counters.
fn fetch_transport(samples: &[metrics::Sample]) -> String {
    samples
        .iter()
        .find(|s| s.name == "kxgw_xdp_bind_info")
        .map(|s| {
            let label = |k: &str| {
                s.labels
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or("?", |(_, v)| v.as_str())
            };
            format!(
                "AF_XDP, {} mode, TX strategy {}",
                label("mode"),
                label("tx_strategy")
            )
        })
        .unwrap_or_else(|| "kernel UDP (XDP did not attach)".to_string())
}

/// The side-by-side table; whether every consumer got every record.
fn print_outcomes(outcomes: &[Outcome], record_size: usize) -> bool {
    println!(
        "{:<34} {:>9} {:>9} {:>8} {:>9}  result",
        "path", "records", "expected", "seconds", "MB/s*"
    );
    let mut all_ok = true;
    for o in outcomes {
        let mb = o.records as f64 * (record_size as f64) / 1e6 / o.secs.max(1e-9);
        println!(
            "{:<34} {:>9} {:>9} {:>8.2} {:>9.1}  {}{}",
            o.path,
            o.records,
            o.expected,
            o.secs,
            mb,
            if o.ok { "ok" } else { "FAILED" },
            if o.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", o.detail)
            }
        );
        all_ok &= o.ok;
    }
    println!("* record values only, including each consumer's start-up: a demo, not a benchmark");
    println!("  (scripts/bench.sh measures the paths)");
    all_ok
}

/// The gateway's non-zero counters.
fn print_counters(samples: Vec<metrics::Sample>) {
    println!("gateway counters (kxgw stats):");
    for s in samples.into_iter().filter(|s| s.value != 0.0) {
        let labels = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        println!("  {:<44} {:<28} {}", s.name, labels, s.value);
    }
}

fn strip_log_prefix(line: &str) -> &str {
    // env_logger lines start with "[timestamp LEVEL target] ".
    line.split_once("] ").map_or(line, |(_, rest)| rest)
}

fn wait_for_socket(socket: &Path, gateway: &mut KillOnDrop, gw_log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = gateway.0.try_wait()? {
            bail!(
                "the gateway exited during startup ({status}):\n{}",
                std::fs::read_to_string(gw_log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the gateway did not come up within 20 s:\n{}",
                std::fs::read_to_string(gw_log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `kxgw consume --verify`: checks CRCs, offset continuity and the demo content itself.
fn run_verify(path: String, mut cmd: Command, expected: u64) -> Result<Outcome> {
    let t0 = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running the consumer for {path}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("verified "))
        .unwrap_or("");
    let records = summary
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let via = summary
        .split(" via ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or("")
        .to_string();
    let ok = out.status.success() && records == expected;
    let detail = if ok {
        via
    } else {
        format!("{} {}", stderr.trim(), summary)
    };
    Ok(Outcome {
        path,
        records,
        expected,
        secs,
        detail,
        ok,
    })
}

/// `kxgw consume --verify` over the fetch protocol (`--fetch`) or Kafka TCP (`--bootstrap`).
fn consume_kxgw(
    net: &TestNet,
    exe: &Path,
    p: i32,
    expected: u64,
    (flag, port, label): (&str, u16, &str),
) -> Result<Outcome> {
    let mut cmd = net.client_command(exe);
    cmd.arg("consume")
        .args([flag, &format!("{GW_ADDR}:{port}")])
        .args(["--topic", TOPIC, "--partition", &p.to_string()])
        .args(["--from-beginning", "--count", &expected.to_string()])
        .arg("--verify");
    run_verify(format!("p{p} {label}"), cmd, expected)
}

const VIA_FETCH: (&str, u16, &str) = ("--fetch", FETCH_PORT, "kxgw fetch protocol, UDP");
const VIA_KAFKA: (&str, u16, &str) = ("--bootstrap", KAFKA_PORT, "Kafka TCP, kxgw consume");

/// kcat, a stock librdkafka consumer: every line is `offset key value`, checked here.
fn consume_kcat(net: &TestNet, p: i32, expected: u64, size: usize) -> Result<Outcome> {
    let t0 = Instant::now();
    let out = net
        .client_command("kcat")
        .args(["-C", "-b", &format!("{GW_ADDR}:{KAFKA_PORT}")])
        .args([
            "-t",
            TOPIC,
            "-p",
            &p.to_string(),
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(["-f", "%o %k %s\\n"])
        .stdin(Stdio::null())
        .output()
        .context("running kcat (package kcat)")?;
    let secs = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut records = 0u64;
    let mut bad = None;
    for (i, line) in text.lines().enumerate() {
        let mut f = line.splitn(3, ' ');
        let (off, key, value) = (f.next(), f.next(), f.next());
        let want_off = i as i64;
        let good = off.and_then(|o| o.parse::<i64>().ok()) == Some(want_off)
            && key.map(str::as_bytes) == Some(&demo_key(want_off)[..])
            && value.map(str::as_bytes) == Some(&demo_value(p, want_off, size)[..]);
        if !good && bad.is_none() {
            bad = Some(format!("record {i} differs: {:.60}", line));
        }
        records += 1;
    }
    let ok = out.status.success() && bad.is_none() && records == expected;
    let detail = match bad {
        Some(b) => b,
        None if !out.status.success() => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        None => "librdkafka, sendfile".to_string(),
    };
    Ok(Outcome {
        path: format!("p{p} Kafka TCP, kcat"),
        records,
        expected,
        secs,
        detail,
        ok,
    })
}
