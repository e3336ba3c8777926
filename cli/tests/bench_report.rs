//! `scripts/bench_report.py` (the report of `scripts/bench.sh`) on a committed raw run,
//! cli/tests/bench/report.raw.tsv: tailing rows of every tailing path at MTU 1500 and 9000, with
//! their per-hop rows, beside a few throughput rows. That file is the raw TSV of
//! `scripts/bench.sh --smoke --runs 2 --only '...'` with the debug build on a busy 2-vCPU VM: a
//! real run of the harness, not a result to quote. It asserts the tables the report must
//! write from it: one tailing table per MTU with a row per path and consumer and the p99 ratios
//! against the two Kafka rows, the issue-18 targets per MTU, the per-hop table, and the PNGs
//! (throughput, and the per-hop plot of each MTU). The expected figures are computed here from
//! the raw rows (medians of the runs that succeeded), never written down.

mod common;

use std::path::Path;
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench/report.raw.tsv");
const KAFKA_BLOCKING: &str = "kafka-longpoll";
const KAFKA_BUSY_SPIN: &str = "kafka-longpoll-busypoll-spin";
const FAST_PATH: &str = "xdp-busypoll-on-spin";

/// One raw row: (section, path label, status, gbps, rps) — gbps/rps are p50/p99 on tailing rows.
struct Raw {
    section: String,
    path: String,
    status: String,
    p50: Option<f64>,
    p99: Option<f64>,
}

fn raw_rows() -> Vec<Raw> {
    let text = std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(f.len() >= 12, "{FIXTURE}: short row {l:?}");
            Raw {
                section: f[0].to_string(),
                path: f[1].to_string(),
                status: f[5].to_string(),
                p50: f[6].parse().ok(),
                p99: f[7].parse().ok(),
            }
        })
        .collect()
}

/// Python's statistics.median: the middle value, or the mean of the two middle ones.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The runs of one tailing (or hop) label, in the fixture's order of first appearance.
struct Label {
    label: String,
    status: Vec<String>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Label {
    fn ok(&self) -> bool {
        self.status.iter().any(|s| s == "ok")
    }
}

fn labels(rows: &[Raw], section: &str) -> Vec<Label> {
    let mut out: Vec<Label> = Vec::new();
    for r in rows.iter().filter(|r| r.section == section) {
        let i = match out.iter().position(|l| l.label == r.path) {
            Some(i) => i,
            None => {
                out.push(Label {
                    label: r.path.clone(),
                    status: Vec::new(),
                    p50: Vec::new(),
                    p99: Vec::new(),
                });
                out.len() - 1
            }
        };
        let l = &mut out[i];
        l.status.push(r.status.clone());
        if r.status == "ok" {
            l.p50.extend(r.p50);
            l.p99.extend(r.p99);
        }
    }
    out
}

/// The first number of a cell ("12.5 (10.1–14.0)", "0.47x", "0.47x (1.0 vs 2.1 µs): met").
fn first_number(cell: &str) -> Option<f64> {
    cell.split(|c: char| c.is_whitespace() || c == 'x')
        .next()?
        .parse()
        .ok()
}

fn assert_close(what: &str, cell: &str, want: f64, decimals: i32) {
    let got = first_number(cell).unwrap_or_else(|| panic!("{what}: no number in {cell:?}"));
    let tol = 0.51 * 10f64.powi(-decimals);
    assert!(
        (got - want).abs() <= tol,
        "{what}: {cell:?}, expected {want:.3}"
    );
}

fn run_report(out: &Path) -> String {
    common::require_tool("python3");
    common::require_tool("gnuplot");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench_report.py");
    let base = out.join("fixture-mtu1500");
    let res = Command::new("python3")
        .arg(script)
        .args(["--raw", FIXTURE, "--out"])
        .arg(&base)
        .args([
            "--machine",
            "fixture",
            "--log",
            "fixture",
            "--fanout",
            "1 4",
        ])
        .output()
        .expect("running python3 scripts/bench_report.py");
    let text = common::text(&res);
    assert!(res.status.success(), "bench_report.py failed:\n{text}");
    assert!(
        !text.contains("gnuplot failed"),
        "bench_report.py: a plot failed:\n{text}"
    );
    std::fs::read_to_string(base.with_extension("md"))
        .unwrap_or_else(|e| panic!("fixture-mtu1500.md not written: {e}\n{text}"))
}

fn assert_png(out: &Path, name: &str, md: &str) {
    let bytes = std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
        "{name} is not a PNG"
    );
    assert!(
        md.contains(&format!("]({name})")),
        "the report does not show {name}"
    );
}

/// (path, MTU) of a tailing label `path@MTU`.
fn split(label: &str) -> (&str, &str) {
    label
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("fixture label {label} has no @MTU"))
}

fn p99_of(tails: &[Label], path: &str, mtu: &str) -> Option<f64> {
    let l = tails.iter().find(|l| l.label == format!("{path}@{mtu}"))?;
    median(l.p99.clone())
}

/// The fixture's tailing labels by MTU, both in the fixture's order (the report's).
fn by_mtu(tails: &[Label]) -> Vec<(&str, Vec<&Label>)> {
    let mut out: Vec<(&str, Vec<&Label>)> = Vec::new();
    for l in tails {
        let mtu = split(&l.label).1;
        match out.iter_mut().find(|(m, _)| *m == mtu) {
            Some((_, ls)) => ls.push(l),
            None => out.push((mtu, vec![l])),
        }
    }
    out
}

#[test]
fn report_writes_a_tailing_table_per_mtu_the_targets_the_hops_and_their_plots() {
    let rows = raw_rows();
    let tails = labels(&rows, "latency");
    let hops = labels(&rows, "latency-hop");
    let mtus = by_mtu(&tails);
    let names: Vec<&str> = mtus.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        names,
        ["1500", "9000"],
        "the fixture is meant to hold both MTUs"
    );
    for (mtu, ls) in &mtus {
        assert_eq!(
            ls.len(),
            12,
            "fixture: 12 tailing paths expected at MTU {mtu}"
        );
    }
    assert!(!hops.is_empty(), "the fixture has no latency-hop rows");

    let out = tempfile::tempdir().expect("temp dir");
    let md = run_report(out.path());
    assert!(
        md.lines()
            .next()
            .is_some_and(|l| l.contains("tailing latency at MTU 1500 and 9000")),
        "title does not name the tailing MTUs:\n{md}"
    );
    for (mtu, ls) in &mtus {
        check_tailing_table(&md, &tails, mtu, ls);
    }
    check_targets(&md, &tails, &names);
    check_hops(&md, &hops);
    assert_png(out.path(), "fixture-mtu1500-throughput.png", &md);
    for mtu in &names {
        assert_png(
            out.path(),
            &format!("fixture-mtu1500-hops-mtu{mtu}.png"),
            &md,
        );
    }
}

/// The tailing table of one MTU: a row per path in run order, its label documented and shared
/// with its spinning twin, the medians and both p99 ratios, or why there is no figure.
fn check_tailing_table(md: &str, tails: &[Label], mtu: &str, ls: &[&Label]) {
    let sec = common::md_section(md, &format!("## Tailing latency at MTU {mtu}:"));
    let body = common::md_table(&sec);
    assert_eq!(
        body.len(),
        ls.len(),
        "MTU {mtu}: one row per tailing path:\n{md}"
    );
    let blocking = p99_of(tails, KAFKA_BLOCKING, mtu);
    let fair = p99_of(tails, KAFKA_BUSY_SPIN, mtu);
    for (l, cells) in ls.iter().zip(&body) {
        let path = split(&l.label).0;
        let what = format!("{} row {cells:?}", l.label);
        assert!(
            !cells[0].contains('@') && cells[0] != path,
            "{what}: undocumented path"
        );
        let spinning = path.ends_with("-spin");
        assert_eq!(
            cells[1],
            if spinning { "spinning" } else { "blocking" },
            "{what}"
        );
        if spinning {
            let twin = l.label.replacen("-spin@", "@", 1);
            let i = ls
                .iter()
                .position(|t| t.label == twin)
                .unwrap_or_else(|| panic!("{what}: no blocking twin in the fixture"));
            assert_eq!(
                cells[0], body[i][0],
                "{what}: not its blocking twin's label"
            );
        }
        if !l.ok() {
            let failed = l.status.iter().any(|s| s == "failed");
            let want = if failed { "failed" } else { "not available" };
            assert!(cells[2].starts_with(want), "{what}: expected {want}");
            continue;
        }
        let p99 = median(l.p99.clone()).expect("p99 of an ok row");
        assert_close(&what, &cells[2], median(l.p50.clone()).expect("p50"), 1);
        assert_close(&what, &cells[3], p99, 1);
        for (cell, kafka) in [(&cells[5], blocking), (&cells[6], fair)] {
            match kafka {
                Some(k) => assert_close(&what, cell, p99 / k, 2),
                None => assert_eq!(cell, "–", "{what}"),
            }
        }
    }
}

/// Issue 18's two p99 targets per MTU: the ratio of the fast path to each Kafka row and the
/// verdict against the target's limit.
fn check_targets(md: &str, tails: &[Label], mtus: &[&str]) {
    let targets = common::md_table(&common::md_section(md, "## Tailing targets"));
    assert_eq!(targets.len(), 3, "three targets:\n{md}");
    for (i, mtu) in mtus.iter().enumerate() {
        let fast = p99_of(tails, FAST_PATH, mtu);
        for (row, kafka, limit) in [(0, KAFKA_BLOCKING, 0.2), (1, KAFKA_BUSY_SPIN, 0.5)] {
            let cell = &targets[row][i + 1];
            let what = format!("target {row} at MTU {mtu}: {cell}");
            match (fast, p99_of(tails, kafka, mtu)) {
                (Some(a), Some(b)) => {
                    assert_close(&what, cell, a / b, 2);
                    let verdict = if a / b <= limit { ": met" } else { ": not met" };
                    assert!(cell.ends_with(verdict), "{what}");
                }
                _ => assert_eq!(cell, "not measured", "{what}"),
            }
        }
    }
}

/// A per-hop row for every path:hop label of the fixture, with its MTU, hop and medians.
fn check_hops(md: &str, hops: &[Label]) {
    let heading = "## Tailing latency per hop";
    let rows = common::md_table(&common::md_section(md, heading));
    assert_eq!(rows.len(), hops.len(), "one row per path and hop:\n{md}");
    for (h, cells) in hops.iter().zip(&rows) {
        let (path, hop) = h.label.split_once(':').expect("a hop label is path:hop");
        let (_, mtu) = split(path);
        let what = format!("{} row {cells:?}", h.label);
        assert_eq!((cells[0].as_str(), cells[3].as_str()), (mtu, hop), "{what}");
        if h.ok() {
            assert_close(&what, &cells[4], median(h.p50.clone()).expect("p50"), 1);
            assert_close(&what, &cells[5], median(h.p99.clone()).expect("p99"), 1);
        } else {
            let c = &cells[4];
            assert!(
                c.starts_with("not available") || c.starts_with("failed"),
                "{what}"
            );
        }
    }
}
