//! Running kxgw as a service: the TOML config, the control socket and `kxgw stats`, the
//! Prometheus endpoint, capabilities dropped after setup, SIGTERM, the systemd unit and the
//! Vagrantfile.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kxgw::log::writer::WriterConfig;
use kxgw_testkit::demo_log::{produce, ProduceConfig};
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_kxgw")
}

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn wait_for(path: &Path, child: &mut KillOnDrop) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the gateway exited during startup: {status}");
        }
        assert!(Instant::now() < deadline, "no control socket after 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The hexadecimal CapEff/CapPrm of a process, from /proc.
fn caps_of(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("CapEff:"), field("CapPrm:"))
}

#[test]
fn config_file_stats_metrics_and_dropped_capabilities() {
    let net = TestNet::new("deploy", 1500).expect("test network (run the tests as root)");
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    produce(&ProduceConfig {
        log_dir: logs.clone(),
        topic: "svc".into(),
        partitions: 1,
        records: 5000,
        record_size: 100,
        batch_records: 50,
        key_size: 16,
        headers: 0,
        writer: WriterConfig::default(),
        write_checkpoint: false,
    })
    .unwrap();
    let config = dir.path().join("kxgw.toml");
    std::fs::write(
        &config,
        format!(
            "log_dir = \"{}\"\nkafka_listen = \"{GW_ADDR}:9092\"\nfetch_listen = \"{GW_ADDR}:7878\"\n\
             metrics_listen = \"{GW_ADDR}:9787\"\nio = \"copy\"\n",
            logs.display()
        ),
    )
    .unwrap();
    let socket = dir.path().join("ctl.sock");
    // The command line wins over the file: --io sendfile overrides io = "copy".
    let mut gw = KillOnDrop(
        net.gw_command(exe())
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--io", "sendfile", "--control-socket"])
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&socket, &mut gw);

    // Setup done: the gateway holds no capability any more, though it started as root.
    let (eff, prm) = caps_of(gw.0.id());
    let own = caps_of(std::process::id());
    assert_ne!(
        own.0, "0000000000000000",
        "the test itself should run as root"
    );
    assert_eq!(eff, "0000000000000000", "CapEff of the running gateway");
    assert_eq!(prm, "0000000000000000", "CapPrm of the running gateway");

    // Traffic on both listeners configured by the file.
    for via in ["--fetch", "--bootstrap"] {
        let port = if via == "--fetch" { 7878 } else { 9092 };
        let out = net
            .client_command(exe())
            .args(["consume", via, &format!("{GW_ADDR}:{port}")])
            .args([
                "--topic",
                "svc",
                "--from-beginning",
                "--count",
                "5000",
                "--verify",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "consume {via}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // kxgw stats reads the counters over the control socket (the fetch endpoint publishes
    // its counters once a second, so allow for that).
    let stats = || {
        let out = Command::new(exe())
            .args(["stats", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let value = |text: &str, needle: &str| -> f64 {
        text.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{needle}` in kxgw stats:\n{text}"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = stats();
        if value(&text, "fetch_payload_bytes_total") > 0.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        value(&text, "kind=sendfile") > 0.0,
        "sendfile bytes:\n{text}"
    );
    assert!(value(&text, "fetch_payload_bytes_total") > 0.0, "{text}");

    // The same counters as Prometheus text over HTTP, from inside the gateway namespace.
    let scrape = net
        .gw_command("python3")
        .args([
            "-c",
            &format!(
                "import urllib.request;print(urllib.request.urlopen('http://{GW_ADDR}:9787/metrics').read().decode())"
            ),
        ])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&scrape.stdout);
    assert!(
        page.contains("# TYPE kxgw_kafka_requests_total counter"),
        "{page}"
    );

    // SIGTERM: a clean exit that removes the control socket.
    let status = gw.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "gateway exit status {status}");
    assert!(!socket.exists(), "control socket left behind");
}

#[test]
fn bad_config_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("typo.toml");
    std::fs::write(&config, "log_dri = \"/tmp\"\n").unwrap();
    let out = Command::new(exe())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.toml") && err.contains("log_dri"),
        "{err}"
    );
}

#[test]
fn shipped_config_parses_as_serve_flags() {
    // deploy/kxgw.toml must only use keys `kxgw serve` knows; a wrong log dir is the
    // expected failure, not a config error.
    let out = Command::new(exe())
        .args(["serve", "--config"])
        .arg(repo().join("deploy/kxgw.toml"))
        .args([
            "--log-dir",
            "/nonexistent/kxgw-logs",
            "--control-socket",
            "/dev/null/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kxgw-logs"), "{err}");
    assert!(!err.contains("config file"), "{err}");
}

#[test]
fn systemd_unit_verifies() {
    // The unit as installed, but pointing at this build of the binary.
    let unit = std::fs::read_to_string(repo().join("deploy/kxgw.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kxgw.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/kxgw", exe())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("running systemd-analyze (package systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(!err.contains("Unknown"), "systemd-analyze verify: {err}");
}

#[test]
fn vagrantfile_validates() {
    // --ignore-provider: validate the Vagrantfile itself. Without it vagrant also demands a
    // usable provider (VirtualBox, libvirt), which a fresh CI machine does not have, and the
    // test passed only where one happened to be installed.
    let out = Command::new("vagrant")
        .args(["validate", "--ignore-provider"])
        .current_dir(repo())
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .expect("running vagrant (package vagrant)");
    assert!(
        out.status.success(),
        "vagrant validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
