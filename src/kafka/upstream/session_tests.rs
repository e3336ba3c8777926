//! Cluster mode through a whole session, without sockets: forwarded and local requests keep
//! their order, partitions led elsewhere are refused with the leader, and the live high
//! watermark bounds reads.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::{parse_peer, Broker, ClusterConfig, ClusterView};
use crate::kafka::chunk::encode_response;
use crate::kafka::frame::split_response;
use crate::kafka::session::chunks_to_vec;
use crate::kafka::testkit::{decode_response, request, Harness};
use crate::log::writer::{NewRecord, PartitionWriter, WriterConfig};
use crate::log::{Isolation, LogDir};

/// A log with `t`-0 and `t`-1 holding 10 one-record batches each, served by node 0 of a
/// cluster where node 1 leads `t`-1.
pub(super) fn harness() -> (Harness, Arc<ClusterView>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for p in 0..2 {
        let mut w = PartitionWriter::open(dir.path(), "t", p, WriterConfig::default()).unwrap();
        for i in 0..10i64 {
            let v = format!("v{i}");
            w.append(&[NewRecord {
                timestamp: i,
                key: None,
                value: Some(v.as_bytes()),
                headers: vec![],
            }])
            .unwrap();
        }
        w.flush().unwrap();
    }
    let view = Arc::new(ClusterView::new(ClusterConfig {
        upstream: vec!["b0:9092".into()],
        node_id: 0,
        peers: vec![
            parse_peer("0=gw0:19092").unwrap(),
            parse_peer("1=gw1:19092").unwrap(),
        ],
    }));
    let brokers = [0, 1].map(|id| Broker {
        id,
        host: format!("b{id}"),
        port: 9092,
    });
    view.learn(&brokers, &[("t".into(), 0, 0, 0), ("t".into(), 1, 1, 4)]);
    let log = LogDir::open(dir.path(), Some(Isolation::HighWatermark)).unwrap();
    let mut h = Harness::new(log);
    h.node.cluster = Some(Arc::clone(&view));
    (h, view, dir)
}

pub(super) fn fetch(p: i32, offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

/// Plays the upstream: answers the forwarded request waiting in the session's forwarder.
pub(super) fn upstream_answers<M: Encodable>(h: &mut Harness, key: ApiKey, v: i16, body: &M) {
    let out = std::mem::take(h.session.forwarder().outbound());
    assert!(!out.is_empty(), "a request was forwarded");
    let cid = i32::from_be_bytes([out[8], out[9], out[10], out[11]]);
    let chunks = encode_response("t", cid, key.response_header_version(v), body, v, &[]).unwrap();
    h.session
        .forwarder()
        .receive(&chunks_to_vec(&chunks).unwrap());
}

#[test]
fn a_local_fetch_behind_a_forwarded_request_waits_for_it_and_order_is_kept() {
    let (mut h, view, _d) = harness();
    let mut wire = request(ApiKey::Heartbeat, 4, 1, &HeartbeatRequest::default());
    wire.extend(request(ApiKey::Fetch, 12, 2, &fetch(0, 0)));
    wire.extend(request(
        ApiKey::Heartbeat,
        4,
        3,
        &HeartbeatRequest::default(),
    ));
    let out = h.feed(&wire).unwrap();
    assert!(
        out.is_empty(),
        "nothing answered before the upstream's response"
    );
    upstream_answers(
        &mut h,
        ApiKey::Heartbeat,
        4,
        &HeartbeatResponse::default().with_error_code(27),
    );
    let out = h.step(std::time::Instant::now()).unwrap();
    let mut wire = Bytes::from(out);
    let first = split_response(&mut wire).unwrap();
    let second = split_response(&mut wire).unwrap();
    assert!(
        wire.is_empty(),
        "the third request is in flight, not answered"
    );
    let mut f = first.clone();
    let r: HeartbeatResponse =
        crate::kafka::frame::decode_response(ApiKey::Heartbeat, 4, 1, &mut f).unwrap();
    assert_eq!(r.error_code, 27);
    let mut s = second.clone();
    let r: FetchResponse =
        crate::kafka::frame::decode_response(ApiKey::Fetch, 12, 2, &mut s).unwrap();
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    assert_eq!(r.responses[0].partitions[0].high_watermark, 10);
    upstream_answers(&mut h, ApiKey::Heartbeat, 4, &HeartbeatResponse::default());
    let out = h.step(std::time::Instant::now()).unwrap();
    let _: HeartbeatResponse = decode_response(ApiKey::Heartbeat, 4, 3, &out);
    assert_eq!(
        view.stats
            .forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn a_partition_led_elsewhere_is_refused_with_its_leaders_gateway() {
    let (mut h, _view, _d) = harness();
    let r: FetchResponse = h.call(ApiKey::Fetch, 16, &{
        let mut f = fetch(1, 0);
        f.topics[0].topic_id = h.log.topic_id("t").unwrap();
        f
    });
    let pd = &r.responses[0].partitions[0];
    assert_eq!(pd.error_code, 6, "NOT_LEADER_OR_FOLLOWER");
    assert_eq!(
        (
            pd.current_leader.leader_id.0,
            pd.current_leader.leader_epoch
        ),
        (1, 4)
    );
    assert_eq!(r.node_endpoints.len(), 1);
    assert_eq!(
        (r.node_endpoints[0].host.as_str(), r.node_endpoints[0].port),
        ("gw1", 19092)
    );
}

#[test]
fn the_live_high_watermark_bounds_reads_and_never_passes_the_disk() {
    let (mut h, _view, _d) = harness();
    assert!(h.log.set_live_offsets("t", 0, 4, 4));
    let r: FetchResponse = h.call(ApiKey::Fetch, 12, &fetch(0, 0));
    let pd = &r.responses[0].partitions[0];
    assert_eq!(pd.high_watermark, 4);
    let recs = pd.records.clone().unwrap();
    let last = i64::from_be_bytes(recs[..8].try_into().unwrap());
    assert!(last < 4);
    h.log.set_live_offsets("t", 0, 50, 50);
    assert_eq!(
        h.log.partition("t", 0).unwrap().offsets().high_watermark,
        10
    );
    assert!(!h.log.set_live_offsets("t", 9, 1, 1), "not held here");
}

#[test]
fn the_clusters_log_start_bounds_fetch_and_list_offsets_below_the_local_disk() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let (mut h, _view, _d) = harness();
    assert_eq!(h.log.partition("t", 0).unwrap().offsets().log_start, 0);
    assert!(h.log.set_live_start("t", 0, 6));
    let r: FetchResponse = h.call(ApiKey::Fetch, 12, &fetch(0, 2));
    let pd = &r.responses[0].partitions[0];
    assert_eq!(
        pd.error_code, 1,
        "OFFSET_OUT_OF_RANGE below the cluster's log start"
    );
    assert_eq!(pd.log_start_offset, 6);
    let r: FetchResponse = h.call(ApiKey::Fetch, 12, &fetch(0, 6));
    let pd = &r.responses[0].partitions[0];
    assert_eq!((pd.error_code, pd.log_start_offset), (0, 6));
    let recs = pd.records.clone().unwrap();
    assert_eq!(i64::from_be_bytes(recs[..8].try_into().unwrap()), 6);
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-2)])]);
    let r: ListOffsetsResponse = h.call(ApiKey::ListOffsets, 4, &req);
    assert_eq!(
        r.topics[0].partitions[0].offset, 6,
        "EARLIEST is the cluster's"
    );
    // Never past the local log end; a partition not held here is said so.
    h.log.set_live_start("t", 0, 99);
    let o = h.log.partition("t", 0).unwrap().offsets();
    assert_eq!((o.log_start, o.log_end), (10, 10));
    assert!(!h.log.set_live_start("t", 9, 1));
}
