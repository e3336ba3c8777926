//! Topic authorization on the offset APIs through whole sessions, without sockets: under an
//! ACL file, OffsetCommit and OffsetDelete need READ on each topic and OffsetFetch DESCRIBE
//! (after the group's check), as a broker answers them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::auth::{Acl, Security};
use super::testkit::Harness;
use crate::log::writer::{NewRecord, PartitionWriter, WriterConfig};
use crate::log::LogDir;

const ACL: &str = r#"
[[allow]]
principal = "User:alice"
topics = ["t"]
groups = ["g", "g2"]

[[allow]]
principal = "User:admin"
topics = ["*"]
groups = ["*"]
"#;

const DENIED_TOPIC: i16 = 29;
const DENIED_GROUP: i16 = 30;

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A session under [`ACL`] as `principal`, on a log with topics t and u (one partition each).
fn fixture(principal: &str) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for topic in ["t", "u"] {
        let mut w = PartitionWriter::open(dir.path(), topic, 0, WriterConfig::default()).unwrap();
        let rec = NewRecord {
            timestamp: 1,
            key: None,
            value: Some(b"v"),
            headers: vec![],
        };
        w.append(&[rec]).unwrap();
        w.flush().unwrap();
    }
    let mut h = Harness::new(LogDir::open(dir.path(), None).unwrap());
    let sec = Security {
        acl: Some(Arc::new(Acl::parse(ACL).unwrap())),
        ..Security::default()
    };
    h.session.secure(&sec, None);
    h.session.set_principal(principal.into());
    (h, dir)
}

/// A simple (memberless) OffsetCommit of `offset` on partition 0 of each topic.
fn commit_request(group: &str, topics: &[&str], offset: i64) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(
            topics
                .iter()
                .map(|t| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(sb(t)))
                        .with_partitions(vec![OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset)])
                })
                .collect(),
        )
}

/// [`commit_request`] sent: the codes by topic.
fn commit(h: &mut Harness, group: &str, topics: &[&str], offset: i64) -> Vec<(String, i16)> {
    let req = commit_request(group, topics, offset);
    let r: OffsetCommitResponse = h.call(ApiKey::OffsetCommit, 8, &req);
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.error_code))
        })
        .collect()
}

/// OffsetFetch v7 of partition 0 of `topics` (None: every committed one): (topic, offset,
/// error) per partition.
fn fetch_v7(h: &mut Harness, group: &str, topics: Option<&[&str]>) -> Vec<(String, i64, i16)> {
    let topics = topics.map(|ts| {
        ts.iter()
            .map(|t| {
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(sb(t)))
                    .with_partition_indexes(vec![0])
            })
            .collect()
    });
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_topics(topics);
    let r: OffsetFetchResponse = h.call(ApiKey::OffsetFetch, 7, &req);
    assert_eq!(r.error_code, 0);
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.committed_offset, p.error_code))
        })
        .collect()
}

fn row(t: &str, offset: i64, code: i16) -> (String, i64, i16) {
    (t.to_string(), offset, code)
}

#[test]
fn offset_commit_needs_read_on_each_topic_after_the_group() {
    let (mut h, _d) = fixture("User:alice");
    assert_eq!(
        commit(&mut h, "g", &["t", "u"], 5),
        [("t".into(), 0), ("u".into(), DENIED_TOPIC)]
    );
    assert_eq!(h.stats.auth.denied_topic.load(Relaxed), 1);
    // Only refused topics: answered without the coordinator, which never hears of g2.
    assert_eq!(
        commit(&mut h, "g2", &["u"], 5),
        [("u".into(), DENIED_TOPIC)]
    );
    assert!(h.session.groups().lock().coord.group("g2").is_none());
    // A topic refusal wins over the coordinator's own errors (here an unknown member).
    let req = commit_request("g", &["u"], 0)
        .with_generation_id_or_member_epoch(3)
        .with_member_id(sb("nobody"));
    let r: OffsetCommitResponse = h.call(ApiKey::OffsetCommit, 8, &req);
    assert_eq!(r.topics[0].partitions[0].error_code, DENIED_TOPIC);
    // The group is checked first: a refused group refuses every partition with its error.
    assert_eq!(
        commit(&mut h, "gb", &["t", "u"], 5),
        [("t".into(), DENIED_GROUP), ("u".into(), DENIED_GROUP)]
    );
    // Nothing of u was stored.
    let inner = h.session.groups().lock();
    let stored = inner.coord.offsets("g").unwrap();
    assert!(stored.contains_key(&("t".to_string(), 0)));
    assert!(!stored.contains_key(&("u".to_string(), 0)));
}

#[test]
fn offset_fetch_needs_describe_and_all_committed_leaves_refused_topics_out() {
    let (mut h, _d) = fixture("User:admin");
    assert_eq!(
        commit(&mut h, "g", &["t", "u"], 7),
        [("t".into(), 0), ("u".into(), 0)]
    );
    assert_eq!(
        fetch_v7(&mut h, "g", None),
        [row("t", 7, 0), row("u", 7, 0)]
    );
    h.session.set_principal("User:alice".into());
    assert_eq!(fetch_v7(&mut h, "g", None), [row("t", 7, 0)]);
    assert_eq!(
        h.stats.auth.denied_topic.load(Relaxed),
        0,
        "filtered, not refused"
    );
    assert_eq!(
        fetch_v7(&mut h, "g", Some(&["u", "t", "nope"])),
        [
            row("u", -1, DENIED_TOPIC),
            row("t", 7, 0),
            row("nope", -1, DENIED_TOPIC)
        ]
    );
    assert_eq!(h.stats.auth.denied_topic.load(Relaxed), 2);
    // v8+: per group, the group's refusal first.
    let group = |g: &str, topics: Option<&[&str]>| {
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(sb(g)))
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        OffsetFetchRequestTopics::default()
                            .with_name(TopicName(sb(t)))
                            .with_partition_indexes(vec![0])
                    })
                    .collect()
            }))
    };
    let req = OffsetFetchRequest::default().with_groups(vec![
        group("g", None),
        group("g", Some(&["t", "u"])),
        group("gb", None),
    ]);
    let r: OffsetFetchResponse = h.call(ApiKey::OffsetFetch, 8, &req);
    let rows = |i: usize| -> Vec<(String, i64, i16)> {
        r.groups[i]
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.committed_offset, p.error_code))
            })
            .collect()
    };
    assert_eq!(rows(0), [row("t", 7, 0)]);
    assert_eq!(rows(1), [row("t", 7, 0), row("u", -1, DENIED_TOPIC)]);
    assert_eq!(r.groups[2].error_code, DENIED_GROUP);
    assert!(r.groups[2].topics.is_empty());
}

#[test]
fn offset_delete_needs_read_on_each_topic() {
    let (mut h, _d) = fixture("User:admin");
    assert_eq!(
        commit(&mut h, "g", &["t", "u"], 7),
        [("t".into(), 0), ("u".into(), 0)]
    );
    h.session.set_principal("User:alice".into());
    let req = OffsetDeleteRequest::default()
        .with_group_id(GroupId(sb("g")))
        .with_topics(
            ["t", "u"]
                .iter()
                .map(|t| {
                    OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(sb(t)))
                        .with_partitions(vec![OffsetDeleteRequestPartition::default()])
                })
                .collect(),
        );
    let r: OffsetDeleteResponse = h.call(ApiKey::OffsetDelete, 0, &req);
    assert_eq!(r.error_code, 0);
    let codes: Vec<i16> = r
        .topics
        .iter()
        .map(|t| t.partitions[0].error_code)
        .collect();
    assert_eq!(codes, [0, DENIED_TOPIC]);
    let inner = h.session.groups().lock();
    let stored = inner.coord.offsets("g").unwrap();
    assert!(!stored.contains_key(&("t".to_string(), 0)), "t deleted");
    assert!(stored.contains_key(&("u".to_string(), 0)), "u kept");
}
