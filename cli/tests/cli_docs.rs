//! docs/cli.md is the flag reference users read; it must say what the binary does.

use std::process::Command;

#[test]
fn cli_reference_matches_the_binary() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("cli.md");
    let out = Command::new(format!("{root}/scripts/gen-cli-docs.sh"))
        .arg(&fresh)
        .env("KXGW", env!("CARGO_BIN_EXE_kxgw"))
        .output()
        .expect("running scripts/gen-cli-docs.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(format!("{root}/docs/cli.md")).unwrap();
    let generated = std::fs::read_to_string(&fresh).unwrap();
    assert!(
        committed == generated,
        "docs/cli.md is out of date: run scripts/gen-cli-docs.sh and commit it"
    );
}
