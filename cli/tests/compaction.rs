//! A compacted log, laid out as Kafka's cleaner leaves it (records gone from inside batches,
//! whole batches gone, every segment replaced through `.cleaned` -> `.swap` -> `.log`, a
//! stray `.cleaned` and a `.deleted` file left behind), read end to end by kcat through
//! `kxgw serve`: exactly the surviving records, with their own offsets.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use kxgw::log::compact::compact_segment;
use kxgw_demo_data::is_demo_value;

const TOPIC: &str = "cmp";
const RECORDS: i64 = 6000;

/// What the cleaner keeps: a third of the records go from inside batches, and a whole run of
/// offsets (whole batches) goes.
fn keep(o: i64) -> bool {
    o % 3 != 1 && !(1000..1700).contains(&o)
}

/// Replaces `seg` by its compacted bytes the way the cleaner does, rename by rename.
fn clean(seg: &Path) {
    let name = seg.file_name().unwrap().to_str().unwrap().to_string();
    let sib = |suffix: &str| seg.with_file_name(format!("{name}{suffix}"));
    let out = compact_segment(&std::fs::read(seg).unwrap(), keep).unwrap();
    std::fs::write(sib(".cleaned"), out).unwrap();
    std::fs::rename(sib(".cleaned"), sib(".swap")).unwrap();
    std::fs::rename(seg, sib(".deleted")).unwrap();
    std::fs::rename(sib(".swap"), seg).unwrap();
    std::fs::remove_file(sib(".deleted")).unwrap();
    // The old indexes point at old positions: the broker rebuilds them; kxgw needs none.
    for ext in ["index", "timeindex"] {
        let _ = std::fs::remove_file(seg.with_extension(ext));
    }
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
        &["--record-size", "100", "--segment-bytes", "120000"],
    );
    let part = dir.join(format!("{TOPIC}-0"));
    let segs = segment_files(&part);
    assert!(segs.len() >= 4, "want several segments: {segs:?}");
    for s in &segs {
        clean(s);
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
    let want: Vec<i64> = (0..RECORDS).filter(|&o| keep(o)).collect();
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
