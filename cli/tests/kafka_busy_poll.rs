//! `--kafka-busy-poll`: the Kafka listener's loop spins and checks the tails of the partitions
//! its waiting fetches read itself, so a tailing consumer's records are found without the
//! follower's wake-up. Run as the benchmark runs it: the stamping producer and the tailing
//! probe (kxgw-bench) pinned to CPU 1. Every record is in the gateway's tail trace, as the
//! bench's per-hop join needs.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{
    assert_all_records_traced, json_number, kxgw_bench, tail_hops, tail_produce, test_setup,
    Gateway,
};
use kxgw_testkit::testnet::KillOnDrop;

#[test]
fn kafka_busy_polling_serves_a_tailing_consumer_promptly() {
    let (net, work, dir) = test_setup("kbusy");
    tail_produce(&dir, "1");
    let gw = Gateway::start_with(&net, &dir, work.path(), &["--kafka-busy-poll"]);
    let n = 2000u64;
    let child = net
        .client_command("taskset")
        .args(["-c", "1"])
        .arg(kxgw_bench())
        .args(["tail-kafka", "--bootstrap", &gw.addr.to_string()])
        .args([
            "--topic",
            "tail",
            "--offset",
            "1",
            "--count",
            &n.to_string(),
        ])
        .args(["--timeout-secs", "20"])
        .arg("--records-out")
        .arg(work.path().join("probe.records"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("running kxgw-bench tail-kafka");
    let mut probe = KillOnDrop(child);
    std::thread::sleep(Duration::from_millis(500));
    tail_produce(&dir, &n.to_string());
    let (status, text) = probe
        .wait_output(Duration::from_secs(30))
        .unwrap()
        .expect("tail-kafka did not finish");
    let found = gw.metric("kxgw_tail_busy_found_total");
    let metrics = kxgw::metrics::parse(&gw.metrics());
    let busy = |name: &str| {
        metrics
            .iter()
            .filter(|s| s.name == name && s.labels.iter().any(|(k, v)| k == "cause" && v == "busy"))
            .map(|s| s.value)
            .sum::<f64>()
    };
    let hops = tail_hops(
        &gw.ctl,
        &work.path().join("probe.records"),
        "kafka",
        work.path(),
    );
    let log = gw.log();
    assert!(status.success(), "tail-kafka: {status} {text}\n{log}");
    assert_eq!(json_number(&text, "count") as u64, n, "{text}");
    // Every record within 300 ms of its append: far below the 500 ms long-poll limit.
    assert!(
        json_number(&text, "max_us") < 300_000.0,
        "append-to-consume delay too long with --kafka-busy-poll: {text}"
    );
    // The loop found appends itself, not only through the follower's hook.
    assert!(found > 0, "no append found by the busy loop\n{log}");
    // What it found were append batches of its own, and they woke nobody: the loop answers
    // them in the turn that found them (no self-wake through its waker).
    assert!(busy("kxgw_tail_append_batches_total") > 0.0, "{metrics:?}");
    assert_eq!(busy("kxgw_tail_wakes_total"), 0.0, "{metrics:?}");
    assert_all_records_traced(&hops, n);
    gw.stop();
}
