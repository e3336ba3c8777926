//! kafka-python interop: it decodes and CRC-checks what `kxgw produce` writes, and kxgw reads
//! segments built by kafka-python's DefaultRecordBatchBuilder with the right offsets.

use std::path::Path;
use std::process::Command;

use kxgw::log::{batch, record, LogDir, LogError};

fn kxgw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kxgw"))
}

fn python(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 not runnable ({e}): install it (scripts/install-deps.sh)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {stdout}\n{}\n(kafka-python 2.3.3 is installed by scripts/install-deps.sh)",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn kafka_python_decodes_kxgw_produce() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let st = kxgw()
        .args([
            "produce",
            "--log-dir",
            dir,
            "--topic",
            "interop",
            "--partitions",
            "2",
        ])
        .args([
            "--records",
            "3000",
            "--record-size",
            "77",
            "--batch-records",
            "13",
        ])
        .args([
            "--key-size",
            "9",
            "--headers",
            "2",
            "--segment-bytes",
            "60000",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    for p in 0..2 {
        let pdir = d.path().join(format!("interop-{p}"));
        let out = python(
            "check_kxgw_log.py",
            &[
                pdir.to_str().unwrap(),
                &p.to_string(),
                "3000",
                "9",
                "77",
                "2",
            ],
        );
        let f: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(f[0], "ok", "{out}");
        assert_eq!(f[1], (3000usize.div_ceil(13)).to_string(), "batches: {out}");
        assert_eq!(f[2], "3000");
        assert!(
            f[3].parse::<u32>().unwrap() > 1,
            "expected several segments: {out}"
        );
    }
    // Null keys, no headers.
    let st = kxgw()
        .args([
            "produce",
            "--log-dir",
            dir,
            "--topic",
            "nokeys",
            "--records",
            "100",
        ])
        .args(["--key-size", "0", "--record-size", "0"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = python(
        "check_kxgw_log.py",
        &[
            d.path().join("nokeys-0").to_str().unwrap(),
            "0",
            "100",
            "0",
            "0",
            "0",
        ],
    );
    assert!(out.starts_with("ok "), "{out}");
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    match s {
        "-" => None,
        "=" => Some(Vec::new()),
        s => Some(
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect(),
        ),
    }
}

#[test]
fn kxgw_reads_kafka_python_batches() {
    let d = tempfile::tempdir().unwrap();
    let out = python(
        "build_segment.py",
        &[d.path().to_str().unwrap(), "kp", "3", "1000", "12"],
    );
    let mut batches = Vec::new();
    let mut records = Vec::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f[0] {
            "batch" => batches.push((
                f[1].parse::<i64>().unwrap(),
                f[2].parse::<i64>().unwrap(),
                f[3].parse::<u8>().unwrap(),
                f[4].parse::<u64>().unwrap(),
                f[5].parse::<usize>().unwrap(),
            )),
            "record" => records.push(f.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            _ => panic!("unexpected line {l}"),
        }
    }
    assert_eq!(batches.len(), 12);
    let log = LogDir::open(d.path(), None).unwrap();
    let p = log.partition("kp", 3).unwrap();
    let o = p.offsets();
    assert_eq!(o.log_start, 1000);
    assert_eq!(o.log_end, batches.last().unwrap().1 + 1);
    assert!(matches!(
        p.read(999, 1000),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // Every offset of every batch (and the gap) maps to the right batch and file position.
    for (i, &(base, last, _, pos, size)) in batches.iter().enumerate() {
        let from = if i == 0 { base } else { batches[i - 1].1 + 1 };
        for off in from..=last {
            let s = p.read(off, 1).unwrap();
            assert_eq!(
                (s.first_offset, s.next_offset),
                (base, last + 1),
                "offset {off}"
            );
            assert_eq!((s.position, s.len), (pos, size), "offset {off}");
            let h = batch::verify(s.bytes()).unwrap();
            assert_eq!(h.last_offset(), last);
        }
    }
    // Records decode to what kafka-python put in.
    let all = p.read(1000, usize::MAX).unwrap();
    let mut got = Vec::new();
    let mut gzip_records = 0;
    for r in batch::iter(all.bytes()) {
        let (at, h) = r.unwrap();
        let b = &all.bytes()[at..at + h.total_len()];
        let rs = record::decode_batch(b).unwrap_or_else(|e| panic!("decode at {at}: {e}"));
        if h.compression() == 0 {
            got.extend(rs);
            continue;
        }
        // kafka-python's gzip batch: kxgw decompresses it (the records are not listed).
        assert_eq!(h.compression(), 1);
        assert_eq!(rs.len(), h.records_count as usize);
        for (i, r) in rs.iter().enumerate() {
            assert_eq!(r.offset, h.base_offset + i as i64);
            assert_eq!(r.value.as_deref(), Some(&b"compressible ".repeat(20)[..]));
        }
        gzip_records += rs.len();
    }
    assert!(gzip_records > 0, "no gzip batch decoded");
    assert_eq!(got.len(), records.len());
    for (r, want) in got.iter().zip(&records) {
        assert_eq!(r.offset.to_string(), want[1]);
        assert_eq!(r.timestamp.to_string(), want[2]);
        assert_eq!(r.key, unhex(&want[3]), "key at {}", r.offset);
        assert_eq!(r.value, unhex(&want[4]), "value at {}", r.offset);
        let headers: Vec<(String, Option<Vec<u8>>)> = if want[5] == "-" {
            vec![]
        } else {
            want[5]
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), unhex(if v.is_empty() { "=" } else { v }))
                })
                .collect()
        };
        assert_eq!(r.headers, headers, "headers at {}", r.offset);
    }
    // inspect agrees and verifies.
    let out = kxgw()
        .args(["inspect", "--verify", "--records"])
        .arg(d.path().join("kp-3"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Every record is listed, the gzip batch's decompressed ones too.
    let n: usize = records.len() + gzip_records;
    assert!(text.contains("12 batches"), "{text}");
    assert!(text.matches("    offset=").count() == n, "{text}");
    assert!(text.contains(" compression=gzip"), "{text}");
}
