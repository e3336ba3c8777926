//! End to end, transactions and topic ids: `kxgw serve --kafka-listen` over logs written by
//! `kxgw produce --transactional` (committed, aborted and one still-open transaction), read
//! by stock clients (confluent-kafka / librdkafka, kafka-python) at both isolation levels,
//! by `kxgw consume` at both levels over the UDP fetch protocol (kernel UDP and AF_XDP copy
//! mode) and over the Kafka TCP listener, and raw Metadata v12 / Fetch v13 requests by
//! topic id.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use common::{call, connect, in_client_ns, test_setup, Gateway};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kxgw_demo_data::is_demo_value;
use kxgw_testkit::testnet::TestNet;

const PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/txn_consume.py");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Committed,
    Aborted,
    Open,
}

/// The layout `kxgw produce --transactional` documents, computed independently: two
/// producers, rounds of interleaved batches (A, B, A, B), then A's marker and B's; every
/// `abort_every`-th transaction (numbered as opened) aborted; with `open_tail` the last one
/// opened gets no marker. Returns the data offsets with their status, and the LSO.
fn layout(
    records: u64,
    batch: u64,
    abort_every: u64,
    open_tail: bool,
) -> (Vec<(i64, Status)>, i64) {
    #[derive(Default)]
    struct P {
        no: u64,
        offsets: Vec<i64>,
    }
    let mut out = Vec::new();
    let (mut offset, mut left, mut txn_no) = (0i64, records, 0u64);
    let mut ps = [P::default(), P::default()];
    let mut lso = None;
    while left > 0 {
        for _ in 0..2 {
            for p in ps.iter_mut() {
                if left == 0 {
                    break;
                }
                if p.offsets.is_empty() {
                    txn_no += 1;
                    p.no = txn_no;
                }
                let n = left.min(batch);
                p.offsets.extend(offset..offset + n as i64);
                offset += n as i64;
                left -= n;
            }
        }
        let last_opened = (0..2)
            .filter(|&i| !ps[i].offsets.is_empty())
            .max_by_key(|&i| ps[i].no);
        for (i, p) in ps.iter_mut().enumerate() {
            if p.offsets.is_empty() {
                continue;
            }
            let status = if left == 0 && open_tail && Some(i) == last_opened {
                lso = Some(p.offsets[0]);
                Status::Open
            } else {
                offset += 1; // the marker
                if abort_every > 0 && p.no % abort_every == 0 {
                    Status::Aborted
                } else {
                    Status::Committed
                }
            };
            out.extend(p.offsets.drain(..).map(|o| (o, status)));
        }
    }
    out.sort_by_key(|&(o, _)| o);
    (out, lso.unwrap_or(offset))
}

fn consume(
    net: &TestNet,
    client: &str,
    addr: std::net::SocketAddr,
    topic: &str,
    isolation: &str,
    count: usize,
) -> Vec<(i64, String)> {
    let out = net
        .client_command("python3")
        .args([PY, client, &addr.to_string(), topic, "0", isolation])
        .args([count.to_string(), "60".into(), "3".into()])
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{client} {isolation} failed ({}): {}\n{}",
        out.status,
        stdout.lines().last().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(o, v)| (o.parse().unwrap(), v.to_string()))
        .collect()
}

/// `kxgw consume --from-beginning` of topic `tx` at `isolation` through `how` (`--fetch ADDR`
/// or `--bootstrap ADDR`): (offset, value) per record, and where it caught up.
fn kxgw_consume(net: &TestNet, how: &[&str], isolation: &str) -> (Vec<(i64, String)>, String) {
    let out = net
        .client_command(common::KXGW)
        .args(["consume", "--topic", "tx", "--from-beginning"])
        .args(["--format", "%o\\t%s\\n", "--isolation-level", isolation])
        .args(["--connect-timeout-ms", "5000"])
        .args(how)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .expect("running kxgw consume");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "kxgw consume {how:?} {isolation} failed ({}): {stderr}",
        out.status
    );
    let recs = stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(o, v)| (o.parse().unwrap(), v.to_string()))
        .collect();
    (recs, stderr)
}

/// `kxgw consume` over the fetch endpoint `ep` and the Kafka listener `kafka` agrees with
/// the stock clients at both levels, and a read_committed consumer stops at the LSO.
fn kxgw_consume_both_levels(
    net: &TestNet,
    ep: &str,
    kafka: Option<&str>,
    want: (&[i64], &[i64]),
    lso: i64,
) {
    let mut paths = vec![("UDP", vec!["--fetch", ep])];
    if let Some(k) = kafka {
        paths.push(("Kafka TCP", vec!["--bootstrap", k]));
    }
    for (name, how) in paths {
        let (got, log) = kxgw_consume(net, &how, "read_committed");
        check(&format!("kxgw consume {name} read_committed"), &got, want.0);
        if name == "UDP" {
            assert!(log.contains("fetch endpoint"), "answered over UDP: {log}");
            assert!(
                log.contains(&format!("caught up at offset {lso}")),
                "read_committed stops at the LSO {lso}: {log}"
            );
        }
        let (got, _) = kxgw_consume(net, &how, "read_uncommitted");
        check(
            &format!("kxgw consume {name} read_uncommitted"),
            &got,
            want.1,
        );
    }
    // read_committed is the default, as in librdkafka.
    let (got, _) = kxgw_consume(net, &["--fetch", ep], "read_committed");
    let out = net
        .client_command(common::KXGW)
        .args([
            "consume",
            "--topic",
            "tx",
            "--from-beginning",
            "--fetch",
            ep,
        ])
        .args(["--format", "%o\\n"])
        .stdin(Stdio::null())
        .output()
        .expect("running kxgw consume");
    let default: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let committed: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(default, committed, "default isolation level");
}

fn check(who: &str, got: &[(i64, String)], want: &[i64]) {
    let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets.len(), want.len(), "{who}: record count");
    assert_eq!(offsets, want, "{who}: offsets");
    for (o, v) in got {
        assert!(is_demo_value(0, *o, v.as_bytes()), "{who}: value at {o}");
    }
}

#[test]
fn stock_clients_read_committed_and_uncommitted_transactions() {
    let (net, work, dir) = test_setup("txn");
    let (records, batch, abort_every) = (600u64, 10u64, 3u64);
    common::produce(
        &dir,
        "tx",
        records,
        &[
            "--record-size",
            "40",
            "--batch-records",
            "10",
            "--transactional",
            "--abort-every",
            "3",
            "--open-tail",
        ],
    );
    let (layout, lso) = layout(records, batch, abort_every, true);
    let committed: Vec<i64> = layout
        .iter()
        .filter(|(o, s)| *s == Status::Committed && *o < lso)
        .map(|(o, _)| *o)
        .collect();
    let all: Vec<i64> = layout.iter().map(|(o, _)| *o).collect();
    assert!(layout.iter().any(|(_, s)| *s == Status::Aborted));
    assert!(layout
        .iter()
        .any(|(o, s)| *s == Status::Committed && *o > lso));
    // `kxgw inspect` shows the producers, the open transaction and the LSO.
    let out = std::process::Command::new(common::KXGW)
        .args(["inspect", "-q"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("last stable offset {lso}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("transaction open since offset {lso}")),
        "{text}"
    );
    assert!(
        text.contains("aborted transactions (pid@first..marker): "),
        "{text}"
    );
    let ep = format!("{}:9093", kxgw_testkit::testnet::GW_ADDR);
    let gw = Gateway::start_with(&net, &dir, work.path(), &["--fetch-listen", &ep]);
    for client in ["confluent", "kafka-python"] {
        let got = consume(
            &net,
            client,
            gw.addr,
            "tx",
            "read_committed",
            committed.len(),
        );
        check(&format!("{client} read_committed"), &got, &committed);
        let got = consume(&net, client, gw.addr, "tx", "read_uncommitted", all.len());
        check(&format!("{client} read_uncommitted"), &got, &all);
    }
    // ListOffsets latest: the LSO for READ_COMMITTED, the log end otherwise.
    let addr = gw.addr;
    let (c, u) = in_client_ns(&net, move || {
        let mut s = connect(addr);
        let mut latest = |iso: i8| {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(iso)
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("tx")))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-1),
                    ])]);
            let r: ListOffsetsResponse = call(&mut s, ApiKey::ListOffsets, 5, &req);
            r.topics[0].partitions[0].offset
        };
        (latest(1), latest(0))
    });
    assert_eq!(c, lso);
    let log_end = layout.last().unwrap().0 + 1;
    assert!(
        u >= log_end,
        "log end {u} below the last data offset {log_end}"
    );
    let kafka = gw.addr.to_string();
    kxgw_consume_both_levels(&net, &ep, Some(&kafka), (&committed, &all), lso);
    let log = gw.stop();
    assert!(!log.contains("panicked"), "{log}");
    // The same over AF_XDP (copy mode on veth).
    let xdp = [
        "--fetch-listen",
        &ep,
        "--xdp-iface",
        &net.gw_if,
        "--arena-mib",
        "64",
        "--require-xdp",
    ];
    let gw = Gateway::start_with(&net, &dir, work.path(), &xdp);
    assert!(net.gw_has_xdp().unwrap(), "XDP program attached");
    kxgw_consume_both_levels(&net, &ep, None, (&committed, &all), lso);
    let log = gw.stop();
    assert!(!log.contains("panicked"), "{log}");
}

fn metadata_v12(s: &mut std::net::TcpStream) -> MetadataResponse {
    call(
        s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    )
}

fn fetch_by_id(s: &mut std::net::TcpStream, id: uuid::Uuid) -> FetchResponse {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(10)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic_id(id)
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    call(s, ApiKey::Fetch, 13, &req)
}

fn write_id(dir: &Path, topic: &str, partition: i32, id: uuid::Uuid) {
    kxgw::log::topic_id::write(&dir.join(format!("{topic}-{partition}")), id).unwrap();
}

#[test]
fn topic_ids_come_from_partition_metadata() {
    let (net, work, dir) = test_setup("tid");
    let id = uuid::Uuid::from_bytes([
        0x3d, 0x51, 0x7e, 0x02, 0x9a, 0x44, 0x4b, 0x1c, 0x8f, 0x20, 0x11, 0x22, 0x33, 0x44, 0x55,
        0x66,
    ]);
    let text = kxgw::log::topic_id::to_kafka_string(id);
    common::produce(
        &dir,
        "ided",
        50,
        &["--partitions", "2", "--topic-id", &text],
    );
    common::produce(&dir, "split", 10, &["--partitions", "2"]);
    // Partitions of "split" disagree: the topic is refused.
    write_id(&dir, "split", 1, kxgw::log::topic_id::derived("other"));
    let gw = Gateway::start(&net, &dir, work.path());
    let addr = gw.addr;
    let (md, ok, unknown) = in_client_ns(&net, move || {
        let mut s = connect(addr);
        let md = metadata_v12(&mut s);
        let ok = fetch_by_id(&mut s, id);
        let unknown = fetch_by_id(&mut s, kxgw::log::topic_id::derived("ided"));
        (md, ok, unknown)
    });
    let names: BTreeSet<String> = md
        .topics
        .iter()
        .map(|t| t.name.as_ref().unwrap().0.to_string())
        .collect();
    assert_eq!(names, BTreeSet::from(["ided".to_string()]), "{md:?}");
    assert_eq!(md.topics[0].topic_id, id);
    assert_eq!(md.topics[0].partitions.len(), 2);
    let p = &ok.responses[0].partitions[0];
    assert_eq!(ok.responses[0].topic_id, id);
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 50);
    let records = p.records.as_ref().unwrap();
    let h = kxgw::log::batch::verify(records).unwrap();
    assert_eq!(h.base_offset, 0);
    let up = &unknown.responses[0].partitions[0];
    assert_eq!(
        up.error_code,
        kafka_protocol::error::ResponseError::UnknownTopicId.code()
    );
    let log = gw.stop();
    assert!(
        log.contains("topic split is not served: partitions disagree"),
        "{log}"
    );
}

#[test]
fn leader_epochs_are_reported_and_offset_for_leader_epoch_answers() {
    let (net, work, dir) = test_setup("lep");
    common::produce(&dir, "ep", 30, &["--batch-records", "10"]);
    // A new leader (epoch 2) from offset 30, then epoch 5 from 50.
    common::produce(
        &dir,
        "ep",
        20,
        &["--batch-records", "10", "--leader-epoch", "2"],
    );
    common::produce(
        &dir,
        "ep",
        10,
        &["--batch-records", "10", "--leader-epoch", "5"],
    );
    let ckpt = std::fs::read_to_string(dir.join("ep-0/leader-epoch-checkpoint")).unwrap();
    assert_eq!(ckpt, "0\n3\n0 0\n2 30\n5 50\n");
    // The batches carry the epoch they were written in.
    let seg = std::fs::read(dir.join("ep-0/00000000000000000000.log")).unwrap();
    let epochs: Vec<(i64, i32)> = kxgw::log::batch::iter(&seg)
        .map(|r| r.unwrap().1)
        .map(|h| (h.base_offset, h.partition_leader_epoch))
        .collect();
    assert_eq!(
        epochs,
        vec![(0, 0), (10, 0), (20, 0), (30, 2), (40, 2), (50, 5)]
    );
    let gw = Gateway::start(&net, &dir, work.path());
    let addr = gw.addr;
    let (md, api, ofle, lo, fenced, unknown) = in_client_ns(&net, move || {
        let mut s = connect(addr);
        let md = metadata_v12(&mut s);
        let api: ApiVersionsResponse = call(
            &mut s,
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        );
        let part = |current: i32, epoch: i32| {
            offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current)
                .with_leader_epoch(epoch)
        };
        let req = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("ep")))
                    .with_partitions(vec![
                        part(5, 0),
                        part(5, 1),
                        part(5, 2),
                        part(5, 5),
                        part(-1, 9),
                        part(4, 2),
                        part(6, 2),
                    ]),
            ]);
        let ofle: OffsetForLeaderEpochResponse =
            call(&mut s, ApiKey::OffsetForLeaderEpoch, 4, &req);
        let lo_req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("ep")))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_current_leader_epoch(5)
                        .with_timestamp(-2),
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_current_leader_epoch(5)
                        .with_timestamp(-1),
                ])]);
        let lo: ListOffsetsResponse = call(&mut s, ApiKey::ListOffsets, 5, &lo_req);
        let mut f = common::fetch("ep", 0, 0);
        f.topics[0].partitions[0].current_leader_epoch = 4;
        let fenced: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &f);
        f.topics[0].partitions[0].current_leader_epoch = 6;
        let unknown: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &f);
        (md, api, ofle, lo, fenced, unknown)
    });
    assert_eq!(md.topics[0].partitions[0].leader_epoch, 5);
    assert!(api
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::OffsetForLeaderEpoch as i16
            && k.min_version == 2
            && k.max_version == 4));
    let got: Vec<(i16, i32, i64)> = ofle.topics[0]
        .partitions
        .iter()
        .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
        .collect();
    use kafka_protocol::error::ResponseError::{FencedLeaderEpoch, UnknownLeaderEpoch};
    assert_eq!(
        got,
        vec![
            (0, 0, 30),
            (0, 0, 30),
            (0, 2, 50),
            (0, 5, 60),
            (0, -1, -1),
            (FencedLeaderEpoch.code(), -1, -1),
            (UnknownLeaderEpoch.code(), -1, -1),
        ]
    );
    let lo: Vec<(i64, i32)> = lo.topics[0]
        .partitions
        .iter()
        .map(|p| (p.offset, p.leader_epoch))
        .collect();
    assert_eq!(lo, vec![(0, 0), (60, 5)]);
    assert_eq!(
        fenced.responses[0].partitions[0].error_code,
        FencedLeaderEpoch.code()
    );
    assert_eq!(
        unknown.responses[0].partitions[0].error_code,
        UnknownLeaderEpoch.code()
    );
    // librdkafka, which tracks leader epochs, reads the whole log.
    let got = consume(&net, "confluent", gw.addr, "ep", "read_committed", 60);
    let want: Vec<i64> = (0..60).collect();
    check("confluent with leader epochs", &got, &want);
    gw.stop();
}
