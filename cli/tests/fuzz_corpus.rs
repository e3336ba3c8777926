//! Replays the fuzz corpus (`fuzz/corpus/<target>/`), every crash the fuzzers found
//! (`fuzz/regressions/<target>/`) and the generated seeds through the same entry functions the
//! cargo-fuzz targets call, on stable Rust: no input may panic, and each must finish quickly.
//!
//! `KXGW_FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus` (re)writes the seeds into the
//! corpus directories (see docs/reliability.md for the long fuzz runs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Entry = fn(&[u8]);

const TARGETS: &[(&str, Entry)] = &[
    ("kafka_request", kxgw_testkit::fuzzing::kafka_request),
    ("log_batch", kxgw_testkit::fuzzing::log_batch),
    ("log_segment", kxgw_testkit::fuzzing::log_segment),
    ("fetch_datagrams", kxgw_testkit::fuzzing::fetch_datagrams),
    ("tls_stream", kxgw_testkit::fuzzing_tls::tls_stream),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn entry(target: &str) -> Entry {
    TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz entry for target {target}"))
}

/// Runs one input, failing with the file name if it panics or is slow.
fn replay(target: &str, name: &str, data: &[u8]) {
    let f = entry(target);
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(|| f(data));
    assert!(r.is_ok(), "{target}: input {name} panicked");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "{target}: input {name} took {took:?}"
    );
}

#[test]
fn seeds_replay() {
    let seeds = kxgw_testkit::fuzzing::seeds();
    let write = std::env::var_os("KXGW_FUZZ_WRITE_SEEDS").is_some();
    for (target, name, data) in &seeds {
        replay(target, name, data);
        if write {
            let dir = fuzz_dir().join("corpus").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
    for (target, _) in TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| t == target),
            "no seeds for {target}"
        );
    }
}

#[test]
fn corpus_and_regressions_replay() {
    let mut total = 0;
    for (target, _) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target} is empty: the minimized corpus must be committed"
        );
        let regressions = files(&fuzz_dir().join("regressions").join(target));
        for p in corpus.iter().chain(&regressions) {
            let data = std::fs::read(p).unwrap();
            replay(target, &p.display().to_string(), &data);
            total += 1;
        }
    }
    eprintln!("replayed {total} corpus and regression inputs");
}
