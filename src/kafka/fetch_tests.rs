//! Fetch and ListOffsets against real logs written by the log module's writer, without
//! sockets: requests encoded and responses decoded with the kafka-protocol crate, record
//! batches decoded with its independent record decoder.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::apis::topic_id;
use super::testkit::{decode_response, request, Harness};
use crate::log::writer::{NewRecord, PartitionWriter, WriterConfig};
use crate::log::LogDir;
use kxgw_demo_data::{demo_key, demo_value};

const VALUE: usize = 100;

/// Appends `batches` batches of `per` demo records to `topic`-`p`; record at offset o has
/// timestamp 1000 + o.
fn append(dir: &std::path::Path, topic: &str, p: i32, batches: usize, per: usize) {
    let mut w = PartitionWriter::open(dir, topic, p, WriterConfig::default()).unwrap();
    for _ in 0..batches {
        let base = w.next_offset();
        let keys: Vec<Vec<u8>> = (0..per as i64).map(|i| demo_key(base + i)).collect();
        let vals: Vec<Vec<u8>> = (0..per as i64)
            .map(|i| demo_value(p, base + i, VALUE))
            .collect();
        let recs: Vec<NewRecord> = (0..per)
            .map(|i| NewRecord {
                timestamp: 1000 + base + i as i64,
                key: Some(&keys[i]),
                value: Some(&vals[i]),
                headers: vec![],
            })
            .collect();
        w.append(&recs).unwrap();
    }
    w.flush().unwrap();
}

fn fixture() -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), "t", 0, 10, 10);
    append(dir.path(), "t", 1, 5, 10);
    let log = LogDir::open(dir.path(), None).unwrap();
    (Harness::new(log), dir)
}

fn topic(version: i16, name: &str, parts: Vec<FetchPartition>) -> FetchTopic {
    let mut t = FetchTopic::default().with_partitions(parts);
    if version >= 13 {
        t.topic_id = topic_id(name);
    } else {
        t.topic = TopicName(StrBytes::from_string(name.into()));
    }
    t
}

fn part(p: i32, offset: i64, max: i32) -> FetchPartition {
    FetchPartition::default()
        .with_partition(p)
        .with_fetch_offset(offset)
        .with_partition_max_bytes(max)
}

fn fetch_req(topics: Vec<FetchTopic>, max_bytes: i32, min_bytes: i32, wait: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(wait)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_session_epoch(-1)
        .with_topics(topics)
}

/// (offset, key, value) of every record in a records field, checking CRCs on the way.
fn records(recs: &Option<Bytes>) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut b = recs.clone().unwrap_or_default();
    let mut out = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut b).unwrap() {
        for r in set.records {
            out.push((r.offset, r.key.unwrap().to_vec(), r.value.unwrap().to_vec()));
        }
    }
    out
}

fn check_demo(p: i32, recs: &[(i64, Vec<u8>, Vec<u8>)], first: i64) {
    for (i, (o, k, v)) in recs.iter().enumerate() {
        assert_eq!(*o, first + i as i64);
        assert_eq!(k, &demo_key(*o));
        assert_eq!(v, &demo_value(p, *o, VALUE));
    }
}

#[test]
fn fetch_returns_the_log_at_every_served_version() {
    let (mut h, _d) = fixture();
    for v in [4i16, 5, 7, 11, 12, 13, 15, 16] {
        let req = fetch_req(
            vec![topic(
                v,
                "t",
                vec![part(0, 0, 1 << 20), part(1, 20, 1 << 20)],
            )],
            10 << 20,
            1,
            500,
        );
        let r: FetchResponse = h.call(ApiKey::Fetch, v, &req);
        assert_eq!(r.error_code, 0);
        assert_eq!(r.session_id, 0);
        let t = &r.responses[0];
        if v >= 13 {
            assert_eq!(t.topic_id, topic_id("t"));
        } else {
            assert_eq!(t.topic.0.as_str(), "t");
        }
        let (p0, p1) = (&t.partitions[0], &t.partitions[1]);
        assert_eq!(
            (p0.error_code, p0.high_watermark, p0.last_stable_offset),
            (0, 100, 100)
        );
        assert_eq!((p1.error_code, p1.high_watermark), (0, 50));
        if v >= 5 {
            assert_eq!(p0.log_start_offset, 0);
        }
        let r0 = records(&p0.records);
        assert_eq!(r0.len(), 100, "v{v}");
        check_demo(0, &r0, 0);
        let r1 = records(&p1.records);
        assert_eq!(r1.len(), 30, "v{v}");
        check_demo(1, &r1, 20);
    }
}

#[test]
fn size_limits_follow_kafka_rules() {
    let (mut h, _d) = fixture();
    let batch = {
        let r: FetchResponse = h.call(
            ApiKey::Fetch,
            11,
            &fetch_req(vec![topic(11, "t", vec![part(0, 0, 1)])], 1, 1, 0),
        );
        // Smaller limits than one batch still return exactly one whole batch.
        let recs = r.responses[0].partitions[0].records.clone().unwrap();
        assert_eq!(records(&Some(recs.clone())).len(), 10);
        recs.len()
    };
    // partition_max_bytes of 2.5 batches -> 2 batches.
    let r: FetchResponse = h.call(
        ApiKey::Fetch,
        11,
        &fetch_req(
            vec![topic(11, "t", vec![part(0, 0, (batch * 5 / 2) as i32)])],
            1 << 20,
            1,
            0,
        ),
    );
    assert_eq!(records(&r.responses[0].partitions[0].records).len(), 20);
    // max_bytes of 1.5 batches over two partitions: the first gets one batch, the second
    // none (its first batch no longer fits), but still its offsets.
    let r: FetchResponse = h.call(
        ApiKey::Fetch,
        11,
        &fetch_req(
            vec![topic(
                11,
                "t",
                vec![part(0, 0, 1 << 20), part(1, 0, 1 << 20)],
            )],
            (batch * 3 / 2) as i32,
            1,
            0,
        ),
    );
    let ps = &r.responses[0].partitions;
    assert_eq!(records(&ps[0].records).len(), 10);
    assert_eq!(records(&ps[1].records).len(), 0);
    assert_eq!(ps[1].high_watermark, 50);
}

#[test]
fn errors_are_per_partition_and_answered_at_once() {
    let (mut h, _d) = fixture();
    let req = fetch_req(
        vec![
            topic(12, "t", vec![part(0, 101, 1 << 20), part(7, 0, 1 << 20)]),
            topic(12, "nope", vec![part(0, 0, 1 << 20)]),
            topic(12, "t", vec![part(1, 50, 1 << 20)]),
        ],
        1 << 20,
        1,
        60_000,
    );
    let r: FetchResponse = h.call(ApiKey::Fetch, 12, &req);
    let codes: Vec<i16> = r
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect();
    assert_eq!(codes, vec![1, 3, 3, 0]);
    assert_eq!(r.responses[0].partitions[0].high_watermark, 100);
    assert_eq!(r.responses[2].partitions[0].high_watermark, 50);
    // An unknown topic id at v13+.
    let mut t = topic(13, "t", vec![part(0, 0, 100)]);
    t.topic_id = uuid::Uuid::from_u128(12345);
    let r: FetchResponse = h.call(ApiKey::Fetch, 13, &fetch_req(vec![t], 1 << 20, 1, 0));
    assert_eq!(r.responses[0].partitions[0].error_code, 100);
    // An incremental fetch session is refused.
    let mut req = fetch_req(vec![], 1 << 20, 1, 0);
    req.session_id = 77;
    req.session_epoch = 3;
    let r: FetchResponse = h.call(ApiKey::Fetch, 12, &req);
    assert_eq!(r.error_code, 70);
}

#[test]
fn waiting_fetch_answers_when_data_arrives_or_time_is_up() {
    let (mut h, d) = fixture();
    let start = Instant::now();
    let req = fetch_req(
        vec![topic(11, "t", vec![part(1, 50, 1 << 20)])],
        1 << 20,
        1,
        5_000,
    );
    let out = h.feed(&request(ApiKey::Fetch, 11, 5, &req)).unwrap();
    assert!(out.is_empty(), "nothing to read yet: the fetch waits");
    assert!(h.session.is_parked());
    assert!(h.session.waits_for("t", 1));
    assert!(!h.session.waits_for("t", 0));
    // Requests behind a waiting fetch wait too (responses stay in order).
    let md = request(
        ApiKey::Metadata,
        1,
        6,
        &MetadataRequest::default().with_topics(None),
    );
    assert!(h.feed(&md).unwrap().is_empty());
    assert!(h
        .step(start + Duration::from_millis(10))
        .unwrap()
        .is_empty());
    append(d.path(), "t", 1, 1, 10);
    h.log.refresh().unwrap();
    let out = h.step(start + Duration::from_millis(20)).unwrap();
    let first_len = i32::from_be_bytes(out[0..4].try_into().unwrap()) as usize + 4;
    let r: FetchResponse = decode_response(ApiKey::Fetch, 11, 5, &out[..first_len]);
    let recs = records(&r.responses[0].partitions[0].records);
    assert_eq!(recs.len(), 10);
    check_demo(1, &recs, 50);
    let _: MetadataResponse = decode_response(ApiKey::Metadata, 1, 6, &out[first_len..]);
    // Nothing new and the deadline passes: an empty answer.
    let req = fetch_req(
        vec![topic(11, "t", vec![part(1, 60, 1 << 20)])],
        1 << 20,
        1,
        300,
    );
    assert!(h
        .feed(&request(ApiKey::Fetch, 11, 8, &req))
        .unwrap()
        .is_empty());
    let deadline = h.session.deadline().unwrap();
    assert!(h
        .step(deadline - Duration::from_millis(1))
        .unwrap()
        .is_empty());
    let out = h.step(deadline).unwrap();
    let r: FetchResponse = decode_response(ApiKey::Fetch, 11, 8, &out);
    assert_eq!(
        r.responses[0].partitions[0].records.as_deref(),
        Some(&[][..])
    );
    assert_eq!(r.responses[0].partitions[0].high_watermark, 60);
}

/// A waiting fetch answered by an append, and an immediate one, go into the tail trace with
/// their offsets, after the refresh that made the records readable.
#[test]
fn answered_fetches_with_records_are_traced() {
    let (mut h, d) = fixture();
    let start = Instant::now();
    let req = fetch_req(
        vec![topic(11, "t", vec![part(1, 50, 1 << 20)])],
        1 << 20,
        1,
        5_000,
    );
    assert!(h
        .feed(&request(ApiKey::Fetch, 11, 5, &req))
        .unwrap()
        .is_empty());
    append(d.path(), "t", 1, 1, 10);
    h.log.refresh().unwrap();
    assert!(!h
        .step(start + Duration::from_millis(20))
        .unwrap()
        .is_empty());
    let now = h.feed(&request(
        ApiKey::Fetch,
        11,
        6,
        &fetch_req(
            vec![topic(11, "t", vec![part(0, 95, 1 << 20)])],
            1 << 20,
            1,
            0,
        ),
    ));
    assert!(!now.unwrap().is_empty());
    let dump = h.log.tail_trace().dump();
    let rows = |kind: &str| crate::log::tail_trace::dump_rows(&dump, kind);
    let replies = rows("reply\t");
    let cols: Vec<Vec<&str>> = replies
        .iter()
        .map(|r| {
            r[1..6]
                .iter()
                .map(String::as_str)
                .chain([r[7].as_str()])
                .collect()
        })
        .collect();
    assert_eq!(
        cols,
        [
            ["kafka", "t", "1", "50", "60", "1"],
            ["kafka", "t", "0", "95", "100", "0"],
        ],
        "{dump}"
    );
    let refresh = rows("refresh\tt\t1\t60\t");
    assert_eq!(refresh.len(), 1, "{dump}");
    let validated: u64 = refresh[0][5].parse().unwrap();
    let sent: u64 = replies[0][6].parse().unwrap();
    assert!(validated <= sent, "{dump}");
}

#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    let (mut h, _d) = fixture();
    for v in 1..=7 {
        let q = |p: i32, ts: i64| {
            ListOffsetsPartition::default()
                .with_partition_index(p)
                .with_timestamp(ts)
        };
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    q(0, -2),
                    q(0, -1),
                    q(0, 1042),
                    q(1, 99_999),
                    q(9, -1),
                ])]);
        let r: ListOffsetsResponse = h.call(ApiKey::ListOffsets, v, &req);
        let got: Vec<(i16, i64, i64)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.error_code, p.offset, p.timestamp))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, -1),
                (0, 100, -1),
                (0, 42, 1042),
                (0, -1, -1),
                (3, -1, -1)
            ],
            "v{v}"
        );
    }
}

#[test]
fn metadata_lists_served_topics_with_stable_ids() {
    let (mut h, _d) = fixture();
    for v in [0i16, 1, 4, 9, 10, 12] {
        let topics = if v == 0 { Some(vec![]) } else { None };
        let r: MetadataResponse = h.call(
            ApiKey::Metadata,
            v,
            &MetadataRequest::default().with_topics(topics),
        );
        assert_eq!(r.topics.len(), 1);
        let t = &r.topics[0];
        assert_eq!(t.name.as_ref().unwrap().0.as_str(), "t");
        let ps: Vec<(i32, i32)> = t
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect();
        assert_eq!(ps, vec![(0, 0), (1, 0)]);
        if v >= 10 {
            assert_eq!(t.topic_id, topic_id("t"));
        }
    }
    // By id only (v12).
    let req = MetadataRequest::default().with_topics(Some(vec![
        metadata_request::MetadataRequestTopic::default()
            .with_name(None)
            .with_topic_id(topic_id("t")),
    ]));
    let r: MetadataResponse = h.call(ApiKey::Metadata, 12, &req);
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].name.as_ref().unwrap().0.as_str(), "t");
}

#[test]
fn a_corrupt_batch_is_never_served() {
    let d = tempfile::tempdir().unwrap();
    append(d.path(), "t", 0, 10, 10);
    let seg = d.path().join("t-0").join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let pos = crate::log::batch::iter(&bytes)
        .map(|b| b.unwrap())
        .find(|(_, hdr)| hdr.base_offset == 30)
        .map(|(pos, _)| pos)
        .unwrap();
    // A flipped bit inside the records of the batch at offset 30 (CRC now wrong).
    bytes[pos + 100] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let mut h = Harness::new(LogDir::open(d.path(), None).unwrap());
    let r: FetchResponse = h.call(
        ApiKey::Fetch,
        11,
        &fetch_req(
            vec![topic(11, "t", vec![part(0, 30, 1 << 20)])],
            1 << 20,
            1,
            0,
        ),
    );
    let p = &r.responses[0].partitions[0];
    // Either the read hits the bad batch (CORRUPT_MESSAGE) or the log already stopped its
    // readable end before it (a bad batch in the active segment ends the valid log).
    assert!(
        p.error_code == 2 || (p.error_code == 0 && p.high_watermark <= 30),
        "error {} hw {}",
        p.error_code,
        p.high_watermark
    );
    assert!(records(&p.records).is_empty());
    let r: FetchResponse = h.call(
        ApiKey::Fetch,
        11,
        &fetch_req(
            vec![topic(11, "t", vec![part(0, 0, 1 << 20)])],
            1 << 20,
            1,
            0,
        ),
    );
    let recs = records(&r.responses[0].partitions[0].records);
    assert!(
        recs.iter().all(|(o, _, _)| *o < 30),
        "nothing from the bad batch"
    );
}

#[test]
fn list_offsets_v0_by_hand() {
    use bytes::{Buf, BufMut, BytesMut};
    let (mut h, _d) = fixture();
    let mut req = BytesMut::new();
    req.put_i16(ApiKey::ListOffsets as i16);
    req.put_i16(0);
    req.put_i32(31); // correlation id
    req.put_i16(-1); // null client id
    req.put_i32(-1); // replica id
    req.put_i32(1);
    req.put_i16(1);
    req.put_slice(b"t");
    req.put_i32(3);
    for (p, ts) in [(0i32, -1i64), (1, -2), (5, -1)] {
        req.put_i32(p);
        req.put_i64(ts);
        req.put_i32(1);
    }
    let out = h.feed(&crate::kafka::frame::size_prefixed(&req)).unwrap();
    let mut wire = Bytes::from(out);
    let mut b = crate::kafka::frame::split_response(&mut wire).unwrap();
    assert_eq!(wire.len(), 0, "one whole response frame");
    crate::kafka::frame::decode_response_header(ApiKey::ListOffsets, 0, 31, &mut b).unwrap();
    assert_eq!(b.get_i32(), 1);
    assert_eq!(b.get_i16(), 1);
    assert_eq!(b.split_to(1).as_ref(), b"t");
    assert_eq!(b.get_i32(), 3);
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = b.get_i32();
        let code = b.get_i16();
        let n = b.get_i32();
        let offs: Vec<i64> = (0..n).map(|_| b.get_i64()).collect();
        got.push((p, code, offs));
    }
    assert_eq!(
        got,
        vec![(0, 0, vec![100]), (1, 0, vec![0]), (5, 3, vec![])]
    );
    assert_eq!(b.remaining(), 0);
}

#[test]
fn high_watermark_isolation_hides_records_past_the_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    append(d.path(), "t", 0, 10, 10);
    let tp = crate::log::TopicPartition::new("t", 0);
    crate::log::writer::update_checkpoint(d.path(), &[(tp, 50)]).unwrap();
    let mut h = Harness::new(LogDir::open(d.path(), None).unwrap());
    let r: FetchResponse = h.call(
        ApiKey::Fetch,
        11,
        &fetch_req(
            vec![topic(11, "t", vec![part(0, 0, 1 << 20)])],
            1 << 20,
            1,
            0,
        ),
    );
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.high_watermark, p.last_stable_offset), (50, 50));
    let recs = records(&p.records);
    assert_eq!(recs.len(), 50);
    check_demo(0, &recs, 0);
    let req = ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
        .with_name(TopicName(StrBytes::from_static_str("t")))
        .with_partitions(vec![ListOffsetsPartition::default().with_timestamp(-1)])]);
    let r: ListOffsetsResponse = h.call(ApiKey::ListOffsets, 5, &req);
    assert_eq!(r.topics[0].partitions[0].offset, 50);
}
