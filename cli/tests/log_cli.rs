//! `kxgw produce` / `kxgw inspect` end to end, corruption detection by inspect and reader.

use std::path::Path;
use std::process::{Command, Output};

use kxgw::log::{batch, LogDir, LogError};

fn kxgw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kxgw"))
        .args(args)
        .output()
        .expect("run kxgw")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn produce(dir: &Path, extra: &[&str]) -> Output {
    let mut a = vec!["produce", "--log-dir", dir.to_str().unwrap()];
    a.extend_from_slice(extra);
    let o = kxgw(&a);
    assert!(o.status.success(), "{}", text(&o));
    o
}

#[test]
fn produce_inspect_verify_and_flipped_byte() {
    let d = tempfile::tempdir().unwrap();
    produce(
        d.path(),
        &[
            "--topic",
            "t",
            "--partitions",
            "2",
            "--records",
            "100000",
            "--record-size",
            "200",
        ],
    );
    let dir = d.path().to_str().unwrap();
    let o = kxgw(&["inspect", "--verify", "--quiet", dir]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("total: 2 partitions, 2 segments, 2000 batches, 200000 records"),
        "{out}"
    );
    assert!(out.contains("0 errors, 0 warnings"), "{out}");
    assert!(
        out.contains("t-1: 1 segments, 1000 batches, 100000 records"),
        "{out}"
    );

    // Flip one byte in the middle of t-1's log: inspect names the file and the batch start.
    let seg = d.path().join("t-1/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let flip = bytes.len() / 2 + 17;
    let (bad_pos, bad_h) = batch::iter(&bytes)
        .map(Result::unwrap)
        .find(|(p, h)| *p <= flip && flip < p + h.total_len())
        .unwrap();
    bytes[flip] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let o = kxgw(&["inspect", "--verify", "--quiet", dir]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    let want = format!("{}: corrupt at byte {bad_pos}: CRC mismatch", seg.display());
    assert!(out.contains(&want), "want {want:?} in {out}");
    // Without --verify inspect reports but succeeds.
    let o = kxgw(&["inspect", "--quiet", seg.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(text(&o).contains("1 errors"), "{}", text(&o));

    // The reader serves everything before the bad batch and refuses the bad batch itself.
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("t", 1).unwrap();
    // Validation stops at the bad batch, as a broker's recovery would truncate there.
    assert_eq!(p.offsets().log_end, bad_h.base_offset);
    let s = p.read(0, usize::MAX).unwrap();
    assert_eq!(s.next_offset, bad_h.base_offset);
    assert_eq!(s.position + s.len as u64, bad_pos as u64);
    match p.read(bad_h.base_offset, 1 << 20) {
        Err(LogError::Corrupt { path, position, .. }) => {
            assert_eq!(path, seg);
            assert_eq!(position, bad_pos as u64);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p.read(99_999, 1),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // The other partition is unaffected.
    let p0 = log.partition("t", 0).unwrap();
    assert_eq!(p0.read(99_999, 1).unwrap().next_offset, 100_000);
}

#[test]
fn append_continues_rolls_and_indexes() {
    let d = tempfile::tempdir().unwrap();
    let args = [
        "--topic",
        "r",
        "--records",
        "3000",
        "--record-size",
        "100",
        "--batch-records",
        "10",
        "--segment-bytes",
        "100000",
        "--index-interval-bytes",
        "1000",
        "--headers",
        "1",
    ];
    produce(d.path(), &args);
    let o = produce(d.path(), &args);
    assert!(text(&o).contains("r-0: offsets 3000..5999"), "{}", text(&o));
    let pdir = d.path().join("r-0");
    let o = kxgw(&["inspect", "--verify", "--quiet", pdir.to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("600 batches, 6000 records"), "{out}");
    assert!(
        out.contains("0 warnings"),
        "index files must match the batches: {out}"
    );
    let segs: Vec<_> = std::fs::read_dir(&pdir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert!(segs.len() >= 8, "{segs:?}");
    for s in &segs {
        let base: i64 = s[..20].parse().unwrap();
        let len = std::fs::metadata(pdir.join(s)).unwrap().len();
        assert!(len <= 100_000);
        let idx = std::fs::read(pdir.join(format!("{}.index", &s[..20]))).unwrap();
        let (entries, problem) = kxgw::log::index::parse_index(&idx);
        assert!(problem.is_none());
        // Batches are ~1.5 KB: with log.index.interval.bytes=1000 a broker indexes every
        // batch but the first of each segment.
        let batches = batch::iter(&std::fs::read(pdir.join(s)).unwrap()).count();
        assert_eq!(entries.len(), batches - 1, "{s}");
        let data = std::fs::read(pdir.join(s)).unwrap();
        for e in entries {
            let h = batch::verify(&data[e.position as usize..]).unwrap();
            assert_eq!(h.last_offset(), base + i64::from(e.relative_offset));
        }
    }
    // A broker preallocates the active segment's indexes (10 MiB of zeros past the entries).
    let last = segs.iter().max().unwrap();
    for ext in ["index", "timeindex"] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(pdir.join(format!("{}.{ext}", &last[..20])))
            .unwrap();
        f.set_len(10 << 20).unwrap();
    }
    let o = kxgw(&["inspect", "--verify", "--quiet", pdir.to_str().unwrap()]);
    assert!(
        o.status.success() && text(&o).contains("0 warnings"),
        "{}",
        text(&o)
    );
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("r", 0).unwrap();
    assert_eq!(p.offsets().log_end, 6000);
    assert_eq!(p.segment_bases().len(), segs.len());
}

#[test]
fn torn_tail_is_recovered_by_writer_and_hidden_by_reader() {
    let d = tempfile::tempdir().unwrap();
    produce(
        d.path(),
        &["--topic", "x", "--records", "50", "--batch-records", "10"],
    );
    let seg = d.path().join("x-0/00000000000000000000.log");
    let full = std::fs::read(&seg).unwrap();
    let last_start = batch::iter(&full).map(|r| r.unwrap().0).last().unwrap();
    std::fs::write(&seg, &full[..full.len() - 7]).unwrap();
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("x", 0).unwrap();
    assert_eq!(p.offsets().log_end, 40);
    assert!(p.read(40, 1000).unwrap().is_empty());
    let o = kxgw(&["inspect", "--verify", seg.to_str().unwrap()]);
    let out = text(&o);
    assert!(!o.status.success());
    assert!(
        out.contains(&format!("corrupt at byte {last_start}: truncated batch")),
        "{out}"
    );
    // The writer cuts the torn batch and continues at 40, like a broker's recovery.
    let o = produce(d.path(), &["--topic", "x", "--records", "5"]);
    assert!(text(&o).contains("x-0: offsets 40..44"), "{}", text(&o));
    let o = kxgw(&["inspect", "--verify", seg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn inspect_rejects_bad_paths() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("file.txt");
    std::fs::write(&f, b"x").unwrap();
    let o = kxgw(&["inspect", f.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a segment file"), "{}", text(&o));
    let o = kxgw(&["inspect", d.path().join("missing").to_str().unwrap()]);
    assert!(!o.status.success());
    let o = kxgw(&[
        "produce",
        "--log-dir",
        d.path().to_str().unwrap(),
        "--topic",
        "bad/name",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("invalid topic name"), "{}", text(&o));
}
