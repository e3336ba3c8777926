//! The fast path in a real guest kernel with NICs that do AF_XDP zero-copy: runs
//! `scripts/testvm.sh` (QEMU/TCG, Linux 7.3 from trixie-backports, two igb and two
//! virtio-net NICs) with this build's kxgw. The script exits non-zero on any failed check in
//! the guest; here the report is also checked for what must have happened: a zero-copy bind
//! on both NIC models, every record verified, and the TX DMA addresses inside the UMEM.
//! When QEMU cannot start, the script fails and so does this test: it never skips.

use std::process::Command;

#[test]
fn guest_binds_zero_copy_and_the_nic_reads_the_umem() {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(format!("{repo}/scripts/testvm.sh"))
        .env("KXGW_BIN", env!("CARGO_BIN_EXE_kxgw"))
        .output()
        .expect("running scripts/testvm.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "scripts/testvm.sh failed:\n{text}");
    for nic in ["igb", "virtio-net"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("guest: {nic}: "))
                    && l.contains("bind mode zero-copy")),
            "{nic}: no zero-copy bind"
        );
    }
    let proofs: Vec<&str> = text.lines().filter(|l| l.contains("DMA proof")).collect();
    assert!(
        proofs.len() >= 4,
        "a DMA proof per zero-copy run: {proofs:?}"
    );
    for p in &proofs {
        assert!(p.contains(" 0 outside"), "{p}");
    }
    assert!(text.contains("guest: 0 failure(s)"), "guest summary");
}
