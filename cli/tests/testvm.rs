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
    let out = Command::new(format!("{repo}/scripts/testvm.sh"))
        .args(args)
        .env("KXGW_BIN", env!("CARGO_BIN_EXE_kxgw"))
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
    // Kernel UDP with GSO delivered every record on both NIC models (to the consumer that came
    // after the first one, which met GSO and, on igb, the fallback).
    for nic in ["igb", "virtio-net"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!(
                "guest: {nic} kernel UDP + GSO, second consumer: verified 20000 records"
            ))),
            "{nic}: kernel UDP did not deliver every record"
        );
    }
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
