//! The fast path in real guest kernels: runs `scripts/testvm.sh` (QEMU/TCG, two igb and two
//! virtio-net NICs) with this build's kxgw, once per guest kernel users run:
//!
//! - Linux 7.3 (trixie-backports), whose igb and virtio-net do AF_XDP zero-copy: a zero-copy
//!   bind on both NIC models, every record verified with each strategy, with and without loss,
//!   the TX DMA addresses inside the UMEM, and kernel UDP with GSO delivering every record on
//!   both (falling back to plain sendmmsg on igb, whose emulation damages GSO datagrams);
//! - Linux 6.12 (Debian 13) and 6.1 (Debian 12), without zero-copy TX in those drivers: the
//!   XDP program loads, `--xdp-bind auto` falls back to copy mode and one strategy serves
//!   every record verified (a short run: no loss run).
//!
//! - the VM bench (`scripts/testvm.sh --bench`) in its smoke size, one run of each serving path
//!   on each NIC model: the table must have a figure in every row.
//!
//! The script exits non-zero on any failed check in the guest; here the report is also checked
//! for what must have happened. When QEMU cannot start, the script fails and so does the test:
//! it never skips. The guests run one at a time (a lock): under TCG they are CPU-bound.

use std::process::Command;
use std::sync::Mutex;

static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs scripts/testvm.sh with `args`; panics (with its output) unless it passed.
fn testvm(args: &[&str]) -> String {
    let _one = ONE_GUEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let kxgw = env!("CARGO_BIN_EXE_kxgw");
    // The bench's measuring tools: another package's binary, which scripts/test.sh builds
    // (`cargo build --workspace --bins`) before the tests.
    let bench = std::path::Path::new(kxgw).with_file_name("kxgw-bench");
    assert!(
        !args.contains(&"--bench") || bench.exists(),
        "{} missing: cargo build -p kxgw-bench (scripts/test.sh does)",
        bench.display()
    );
    let out = Command::new(format!("{repo}/scripts/testvm.sh"))
        .args(args)
        .env("KXGW_BIN", kxgw)
        .env("KXGW_BENCH_BIN", &bench)
        .env("KXGW_VM_RECORDS", "20000")
        .output()
        .expect("running scripts/testvm.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "scripts/testvm.sh {args:?} failed:\n{text}"
    );
    assert!(text.contains("guest: 0 failure(s)"), "guest summary");
    text
}

/// Every NIC model bound `mode`, served every record verified, and leaked no UMEM frame.
fn check_served(text: &str, kernel: &str, mode: &str) {
    assert!(
        text.contains(&format!("guest: kernel {kernel}")),
        "guest kernel {kernel}"
    );
    for nic in ["igb", "virtio-net"] {
        let banner = text
            .lines()
            .find(|l| l.starts_with(&format!("guest: {nic}: ")) && l.contains("bind mode"))
            .unwrap_or_else(|| panic!("{nic}: no serve banner"));
        assert!(banner.contains(&format!("bind mode {mode}")), "{banner}");
        let runs: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("guest: {nic} strategy ")))
            .collect();
        assert!(!runs.is_empty(), "{nic}: no consume run");
        for r in &runs {
            assert!(r.contains("verified 20000 records"), "{r}");
        }
    }
    assert!(text.contains("no UMEM frame leaked"), "frame ledger");
    assert!(
        !text.contains("unaccounted for at shutdown"),
        "frame ledger"
    );
}

/// A metric value from a guest line like "GSO fallbacks: damaged 1, refused 0; GSO now 0".
fn gso_fallbacks(text: &str, nic: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("guest: {nic} kernel UDP + GSO: GSO fallbacks")))
        .unwrap_or_else(|| panic!("{nic}: no kernel UDP report"));
    line.split("damaged ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{nic}: unreadable fallback counter: {line}"))
}

#[test]
fn linux_7_3_binds_zero_copy_and_the_nic_reads_the_umem() {
    let text = testvm(&["--kernel", "7.3"]);
    check_served(&text, "7.3", "zero-copy");
    let proofs: Vec<&str> = text.lines().filter(|l| l.contains("DMA proof")).collect();
    assert!(
        proofs.len() >= 4,
        "a DMA proof per zero-copy run: {proofs:?}"
    );
    for p in &proofs {
        assert!(p.contains(" 0 outside"), "{p}");
    }
    // Kernel UDP with GSO delivered every record on both NIC models, to the consumer that met
    // GSO (and, on igb, the damage and the fallback while it ran) and to one after it.
    for nic in ["igb", "virtio-net"] {
        for run in ["first", "second"] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!(
                    "guest: {nic} kernel UDP + GSO, {run} consumer: verified 20000 records"
                ))),
                "{nic}: kernel UDP did not deliver every record to the {run} consumer"
            );
        }
    }
    // On igb the guard tripped while the first consumer ran.
    let first = text
        .lines()
        .find(|l| l.starts_with("guest: igb kernel UDP + GSO, first consumer: "))
        .expect("igb: first kernel-UDP consumer");
    assert!(
        first.contains("GSO fallbacks so far: damaged 1"),
        "igb: the GSO guard did not trip during the first consumer: {first}"
    );
    // The emulated igb damages GSO datagrams: the gateway noticed and fell back; virtio-net
    // segments in software and needs no fallback.
    assert!(gso_fallbacks(&text, "igb") >= 1, "igb: no GSO fallback");
    assert_eq!(
        gso_fallbacks(&text, "virtio-net"),
        0,
        "virtio-net: GSO fallback"
    );
}

#[test]
fn linux_6_12_loads_the_program_and_serves_in_copy_mode() {
    let text = testvm(&["--kernel", "6.12"]);
    check_served(&text, "6.12", "copy");
}

#[test]
fn linux_6_1_loads_the_program_and_serves_in_copy_mode() {
    let text = testvm(&["--kernel", "6.1"]);
    check_served(&text, "6.1", "copy");
}

/// The VM bench end to end in its smallest size: one run of every path on both NIC models,
/// the report written, and a positive figure in every row (none failed, none left empty).
#[test]
fn vm_bench_smoke_gives_every_path_a_figure_on_both_nics() {
    let out = tempfile::tempdir().expect("temp dir");
    let dir = out.path().to_str().expect("utf-8 temp dir");
    let text = testvm(&["--bench", "--runs", "1", "--records", "4000", "--out", dir]);
    let md_path = std::fs::read_dir(out.path())
        .expect("reading the bench output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "md"))
        .unwrap_or_else(|| panic!("no bench table written:\n{text}"));
    let md = std::fs::read_to_string(&md_path).expect("reading the bench table");
    assert!(md.contains("not hardware speed"), "the caveat:\n{md}");
    for nic in ["## igb", "## virtio-net"] {
        let section: Vec<&str> = md
            .split("\n## ")
            .find(|s| s.starts_with(&nic[3..]))
            .unwrap_or_else(|| panic!("no {nic} section:\n{md}"))
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| path") && !l.starts_with("| ---"))
            .collect();
        for path in [
            "AF_XDP zero-copy",
            "AF_XDP copy mode",
            "kernel UDP",
            "Kafka TCP",
        ] {
            let row = section
                .iter()
                .find(|l| l.starts_with(&format!("| {path}")))
                .unwrap_or_else(|| panic!("{nic}: no row for {path}:\n{md}"));
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            for (col, what) in [(1, "Gbit/s"), (3, "CPU s/GiB")] {
                let v: f64 = cells[col]
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{nic} {path}: no {what} figure: {row}"));
                assert!(v > 0.0 && v.is_finite(), "{nic} {path}: {what} {v}: {row}");
            }
        }
        // The zero-copy row says it was served zero-copy (and how the TX strategy resolved).
        let zc = section
            .iter()
            .find(|l| l.starts_with("| AF_XDP zero-copy"))
            .expect("zero-copy row");
        assert!(zc.contains("bound zero-copy"), "{nic}: {zc}");
    }
}
