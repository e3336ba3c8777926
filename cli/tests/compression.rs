//! Compressed topics end to end: `kxgw produce --compression X` writes the log, `kxgw serve`
//! serves the batches as stored (it never decompresses), and every stock client decompresses
//! them: kcat and confluent-kafka (librdkafka) and kafka-python over the Kafka TCP listener,
//! `kxgw consume --verify` over the UDP fetch protocol and over Kafka TCP, and
//! `kxgw inspect --records`. Each must get every record, in order, with the demo content.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{consume_fetch, verified_summary, wait_listening, KXGW};
use kxgw::log::batch;
use kxgw_demo_data::demo_value;
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

const PY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py");
const TOPIC: &str = "zipped";
const RECORDS: usize = 3000;
const SIZE: usize = 300;
const KAFKA_PORT: u16 = 9092;
const FETCH_PORT: u16 = 9093;

fn require(ok: bool, what: &str) {
    assert!(
        ok,
        "{what} is needed by this test (scripts/install-deps.sh installs it)"
    );
}

fn has_tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn python_imports(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// "offset\tkey\tvalue" lines of partition 0 (RECORDS records of SIZE bytes).
fn check_lines(who: &str, out: &str) {
    common::check_lines(who, out, 0, 0, RECORDS, SIZE);
}

/// Every batch on disk carries `codec` in its attributes and is smaller than the records.
fn check_log_is_compressed(dir: &Path, codec: u8) {
    let seg = dir.join(format!("{TOPIC}-0/00000000000000000000.log"));
    let bytes = std::fs::read(&seg).expect("reading the segment");
    let mut n = 0;
    for b in batch::iter(&bytes) {
        let (_, h) = b.expect("valid batch (CRC over the compressed bytes)");
        assert_eq!(h.compression(), codec, "batch at offset {}", h.base_offset);
        n += h.records_count as usize;
    }
    assert_eq!(n, RECORDS);
    assert!(
        codec == 0 || bytes.len() < RECORDS * SIZE / 2,
        "{} bytes on disk for {RECORDS} records of {SIZE} bytes: not compressed",
        bytes.len()
    );
}

/// `kxgw inspect --verify --records --values` lists every record with its demo value.
fn check_inspect(dir: &Path, codec: &str) {
    let out = Command::new(KXGW)
        .args(["inspect", "--verify", "--records", "--values"])
        .arg(dir)
        .output()
        .expect("running kxgw inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kxgw inspect: {text}");
    assert_eq!(text.matches("    offset=").count(), RECORDS, "{text}");
    let tag = format!(" compression={codec}");
    assert_eq!(text.contains(&tag), codec != "none", "{text}");
    let last = RECORDS as i64 - 1;
    let value = String::from_utf8(demo_value(0, last, SIZE)).unwrap();
    assert!(text.contains(&format!("offset={last} ")), "{text}");
    assert!(
        text.contains(&format!("value={value:?}")),
        "inspect shows the value of {last}"
    );
}

fn run_client(net: &TestNet, who: &str, program: &str, args: &[String]) -> String {
    let out = net
        .client_command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {who}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{who} failed ({}): {}\n{}",
        out.status,
        stdout.lines().last().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn codec_end_to_end(codec: &str, id: u8) {
    require(has_tool("kcat"), "kcat");
    require(
        python_imports("kafka, snappy, lz4, zstandard"),
        "python3 with kafka-python, python-snappy, lz4 and zstandard",
    );
    require(
        python_imports("confluent_kafka"),
        "python3 with confluent-kafka",
    );
    let net = TestNet::new(&format!("cz{codec}"), 1500).expect("test network");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("logs");
    let records = RECORDS.to_string();
    let size = SIZE.to_string();
    common::produce(
        &dir,
        TOPIC,
        RECORDS as u64,
        &[
            "--record-size",
            &size,
            "--batch-records",
            "100",
            "--compression",
            codec,
        ],
    );
    check_log_is_compressed(&dir, id);
    check_inspect(&dir, codec);

    let kafka: SocketAddr = format!("{GW_ADDR}:{KAFKA_PORT}").parse().unwrap();
    let fetch = format!("{GW_ADDR}:{FETCH_PORT}");
    let stderr = work.path().join("serve.log");
    let mut gw = KillOnDrop(
        net.gw_command(KXGW)
            .args(["serve", "--log-dir"])
            .arg(&dir)
            .args([
                "--kafka-listen",
                &kafka.to_string(),
                "--fetch-listen",
                &fetch,
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning kxgw serve"),
    );
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        wait_listening(&net, kafka),
        "kxgw serve never listened:\n{}",
        log()
    );

    let kcat_args: Vec<String> = ["60", "kcat", "-C", "-b", &kafka.to_string(), "-t", TOPIC]
        .iter()
        .chain(&["-p", "0", "-o", "beginning", "-e", "-f", "%o\t%k\t%s\n"])
        .map(|s| s.to_string())
        .collect();
    check_lines(
        &format!("kcat {codec}"),
        &run_client(&net, "kcat", "timeout", &kcat_args),
    );

    for script in ["kafka_consume.py", "confluent_consume.py"] {
        let args = vec![
            format!("{PY_DIR}/{script}"),
            kafka.to_string(),
            TOPIC.to_string(),
            "0".into(),
            records.clone(),
            "60".into(),
        ];
        let out = run_client(&net, script, "python3", &args);
        assert!(out.contains(&format!("done {RECORDS}")), "{script}: {out}");
        check_lines(&format!("{script} {codec}"), &out);
    }

    let out = consume_fetch(&net, &fetch, TOPIC, &["--from-beginning", "--verify"]);
    assert!(
        out.status.success(),
        "kxgw consume --verify over UDP failed"
    );
    let (n, end, _) = verified_summary(&out);
    assert_eq!(
        (n, end),
        (RECORDS as u64, RECORDS as i64),
        "kxgw consume {codec}"
    );

    // The same decoder behind `kxgw consume`'s Kafka TCP path.
    let out = net
        .client_command(KXGW)
        .args([
            "consume",
            "--bootstrap",
            &kafka.to_string(),
            "--topic",
            TOPIC,
        ])
        .args(["--from-beginning", "--verify"])
        .stdin(Stdio::null())
        .output()
        .expect("running kxgw consume --bootstrap");
    assert!(
        out.status.success(),
        "kxgw consume --bootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (n, end, _) = verified_summary(&out);
    assert_eq!(
        (n, end),
        (RECORDS as u64, RECORDS as i64),
        "kxgw consume TCP {codec}"
    );

    let status = gw.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "kxgw serve exited {status}:\n{}", log());
}

#[test]
fn gzip_topic_read_by_every_client() {
    codec_end_to_end("gzip", 1);
}

#[test]
fn snappy_topic_read_by_every_client() {
    codec_end_to_end("snappy", 2);
}

#[test]
fn lz4_topic_read_by_every_client() {
    codec_end_to_end("lz4", 3);
}

#[test]
fn zstd_topic_read_by_every_client() {
    codec_end_to_end("zstd", 4);
}

#[test]
fn uncompressed_topic_read_by_every_client() {
    codec_end_to_end("none", 0);
}
