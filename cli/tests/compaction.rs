//! A compacted log, laid out as Kafka's cleaner leaves it by `kxgw produce --compact-gaps`
//! (records gone from inside batches, whole batches gone, every segment but the active one
//! replaced through `.cleaned` -> `.swap` -> `.log`), plus a stray `.cleaned` and a
//! `.deleted` file left behind, read end to end by kcat through `kxgw serve`: exactly the
//! surviving records, with their own offsets.

mod common;

use std::process::Command;

use common::*;
use kxgw_demo_data::is_demo_value;

const TOPIC: &str = "cmp";
const RECORDS: i64 = 6000;

/// What `kxgw produce --compact-gaps` documents it keeps of the segments before the active
/// one: offsets not ≡ 1 (mod 3), outside 1000..1700.
fn keep(o: i64) -> bool {
    o % 3 != 1 && !(1000..1700).contains(&o)
}

#[test]
fn kcat_reads_a_compacted_log_with_gaps_end_to_end() {
    let found = Command::new("sh")
        .args(["-c", "command -v kcat"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "kcat is needed (scripts/install-deps.sh installs it)"
    );
    let (net, work, dir) = test_setup("cmpk");
    produce(
        &dir,
        TOPIC,
        RECORDS as u64,
        &[
            "--record-size",
            "100",
            "--segment-bytes",
            "120000",
            "--compact-gaps",
        ],
    );
    let part = dir.join(format!("{TOPIC}-0"));
    let segs = segment_files(&part);
    assert!(segs.len() >= 4, "want several segments: {segs:?}");
    let active = base_of(segs.last().unwrap());
    assert!(active > 1700, "the gaps lie in cleaned segments");
    for s in &segs[..segs.len() - 1] {
        assert!(!s.with_extension("index").exists(), "old index removed");
    }
    // Leftovers a broker ignores: an unfinished cleaner output and a pending deletion.
    let last = base_of(segs.last().unwrap());
    std::fs::write(
        part.join(format!("{:020}.log.cleaned", last + 1)),
        b"partial",
    )
    .unwrap();
    std::fs::write(part.join(format!("{:020}.log.deleted", 0)), b"old bytes").unwrap();
    let gw = Gateway::start(&net, &dir, work.path());
    let out = net
        .client_command("timeout")
        .args(["60", "kcat", "-C", "-b", &gw.addr.to_string(), "-t", TOPIC])
        .args(["-p", "0", "-o", "beginning", "-e", "-f", "%o\t%s\n"])
        .output()
        .expect("running kcat");
    assert!(
        out.status.success(),
        "kcat failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let want: Vec<i64> = (0..RECORDS).filter(|&o| o >= active || keep(o)).collect();
    assert!(
        want.len() < (RECORDS as usize) * 3 / 4,
        "records were removed"
    );
    let mut got = Vec::new();
    for line in text.lines() {
        let (o, v) = line.split_once('\t').expect("offset<TAB>value");
        let o: i64 = o.parse().unwrap();
        assert!(is_demo_value(0, o, v.as_bytes()), "value of offset {o}");
        got.push(o);
    }
    assert_eq!(got.len(), want.len(), "records read");
    assert!(got == want, "offsets differ from the surviving ones");
    let log = gw.stop();
    assert!(!log.contains("panicked"), "{log}");
}
