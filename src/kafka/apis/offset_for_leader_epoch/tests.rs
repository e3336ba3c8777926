//! Every served version of every API that carries leader epochs, transaction fields or topic
//! ids encodes and answers over a log with a leader-epoch checkpoint, an open and an aborted
//! transaction and a `partition.metadata` (the codec refuses fields set at versions that
//! lack them, so each version is exercised).

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::kafka::testkit::Harness;
use crate::log::txn_writer::{self, TestValues, TxnPlan, FIRST_PRODUCER_ID};
use crate::log::writer::{PartitionWriter, WriterConfig};
use crate::log::LogDir;

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str("t"))
}

fn harness() -> (Harness, tempfile::TempDir, uuid::Uuid) {
    let d = tempfile::tempdir().unwrap();
    let pdir = d.path().join("t-0");
    std::fs::create_dir_all(&pdir).unwrap();
    let id = crate::log::topic_id::derived("some other name");
    crate::log::topic_id::write(&pdir, id).unwrap();
    let mut w = PartitionWriter::open(d.path(), "t", 0, WriterConfig::default()).unwrap();
    w.set_leader_epoch(3).unwrap();
    let plan = TxnPlan {
        records: 20,
        batch_records: 2,
        abort_every: 3,
        open_tail: true,
    };
    txn_writer::write(&mut w, &mut TestValues::new(0, 10), plan).unwrap();
    drop(w);
    (Harness::new(LogDir::open(d.path(), None).unwrap()), d, id)
}

#[test]
fn every_version_encodes_epochs_transactions_and_ids() {
    let (mut h, _d, id) = harness();
    for v in 0..=12 {
        let r: MetadataResponse = h.call(
            ApiKey::Metadata,
            v,
            &MetadataRequest::default().with_topics(None),
        );
        let p = &r.topics[0].partitions[0];
        assert_eq!(p.leader_epoch, if v >= 7 { 3 } else { -1 }, "v{v}");
        if v >= 10 {
            assert_eq!(r.topics[0].topic_id, id);
        }
    }
    for v in 1..=7 {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(i8::from(v >= 2))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(name())
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ])]);
        let r: ListOffsetsResponse = h.call(ApiKey::ListOffsets, v, &req);
        let p = &r.topics[0].partitions[0];
        assert_eq!(p.error_code, 0, "v{v}");
        assert_eq!(p.offset, if v >= 2 { 22 } else { 25 }, "v{v}");
        assert_eq!(p.leader_epoch, if v >= 4 { 3 } else { -1 }, "v{v}");
    }
    for v in 4..=16 {
        let mut t = fetch_request::FetchTopic::default().with_partitions(vec![
            fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20),
        ]);
        if v >= 13 {
            t.topic_id = id;
        } else {
            t.topic = name();
        }
        let mut req = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_isolation_level(1)
            .with_topics(vec![t]);
        if v <= 14 {
            req.replica_id = BrokerId(-1);
        }
        if v >= 7 {
            req.session_epoch = -1;
        }
        let r: FetchResponse = h.call(ApiKey::Fetch, v, &req);
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "v{v}");
        assert_eq!(p.last_stable_offset, 22, "v{v}");
        let aborted = p.aborted_transactions.as_ref().unwrap();
        assert_eq!(aborted.len(), 1, "v{v}");
        assert_eq!(aborted[0].producer_id, ProducerId(FIRST_PRODUCER_ID));
        assert_eq!(aborted[0].first_offset, 10);
        if v >= 12 {
            assert_eq!(p.current_leader.leader_epoch, 3, "v{v}");
        }
    }
    for v in 2..=4 {
        let req = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name())
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(3)
                            .with_leader_epoch(3),
                    ]),
            ]);
        let r: OffsetForLeaderEpochResponse = h.call(ApiKey::OffsetForLeaderEpoch, v, &req);
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.leader_epoch, p.end_offset),
            (0, 3, 25),
            "v{v}"
        );
    }
}
