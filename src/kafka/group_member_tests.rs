//! The group member state machine, driven by hand-made answers (no sockets).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTp;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::metadata_response::{
    MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    ConsumerProtocolSubscription, HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse,
    MetadataResponse, OffsetCommitResponse, OffsetFetchResponse, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::*;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn cfg() -> MemberConfig {
    MemberConfig {
        group: "g".into(),
        topics: vec!["events".into()],
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(30),
        heartbeat_interval: Duration::from_secs(3),
        commit_interval: Duration::from_secs(1),
    }
}

fn tp(p: i32) -> Tp {
    ("events".to_string(), p)
}

fn members(ids: &[&str]) -> Vec<(String, Vec<String>)> {
    ids.iter()
        .map(|id| (id.to_string(), vec!["events".to_string()]))
        .collect()
}

#[test]
fn range_and_roundrobin_split_partitions_like_kafka() {
    let counts = BTreeMap::from([("events".to_string(), 4), ("other".to_string(), 3)]);
    let mut m = members(&["b", "a", "c"]);
    m[0].1.push("other".into());
    let plan = assign("range", &m, &counts);
    assert_eq!(plan["a"], vec![tp(0), tp(1)]);
    assert_eq!(
        plan["b"],
        vec![
            tp(2),
            ("other".into(), 0),
            ("other".into(), 1),
            ("other".into(), 2)
        ]
    );
    assert_eq!(plan["c"], vec![tp(3)]);
    let plan = assign("roundrobin", &members(&["b", "a"]), &counts);
    assert_eq!(plan["a"], vec![tp(0), tp(2)]);
    assert_eq!(plan["b"], vec![tp(1), tp(3)]);
    // More members than partitions: some get nothing, nothing is given twice.
    let plan = assign("range", &members(&["a", "b", "c", "d", "e"]), &counts);
    let all: Vec<&Tp> = plan.values().flatten().collect();
    assert_eq!(all.len(), 4);
    assert!(plan["e"].is_empty());
}

#[test]
fn subscriptions_and_assignments_use_the_consumer_protocol_encoding() {
    let b = encode_subscription(&["events".into()]);
    assert_eq!(&b[..2], &[0, 0], "version prefix");
    assert_eq!(decode_subscription(b).unwrap(), vec!["events".to_string()]);
    // A librdkafka / Java subscription of a newer version, with owned partitions.
    let sub = ConsumerProtocolSubscription::default()
        .with_topics(vec![s("events"), s("x")])
        .with_owned_partitions(vec![OwnedTp::default()
            .with_topic(TopicName(s("events")))
            .with_partitions(vec![1])]);
    let mut raw = BytesMut::new();
    raw.extend_from_slice(&1i16.to_be_bytes());
    sub.encode(&mut raw, 1).unwrap();
    assert_eq!(
        decode_subscription(raw.freeze()).unwrap(),
        vec!["events", "x"]
    );
    let a = encode_assignment(&[tp(3), tp(1)]);
    assert_eq!(decode_assignment(a).unwrap(), vec![tp(3), tp(1)]);
    assert!(decode_assignment(Bytes::new()).unwrap().is_empty());
    assert!(decode_assignment(Bytes::from_static(&[0])).is_err());
    assert!(decode_assignment(Bytes::from_static(&[0, 0, 0, 0, 0, 9])).is_err());
}

fn join_ok(member: &str, leader: &str, gen: i32, others: &[&str]) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default()
        .with_generation_id(gen)
        .with_protocol_name(Some(s("range")))
        .with_leader(s(leader))
        .with_member_id(s(member));
    if member == leader {
        r.members = others
            .iter()
            .map(|id| {
                JoinGroupResponseMember::default()
                    .with_member_id(s(id))
                    .with_metadata(encode_subscription(&["events".into()]))
            })
            .collect();
    }
    r
}

fn metadata(n: i32) -> MetadataResponse {
    MetadataResponse::default().with_topics(vec![MetadataResponseTopic::default()
        .with_name(Some(TopicName(s("events"))))
        .with_partitions(
            (0..n)
                .map(|p| MetadataResponsePartition::default().with_partition_index(p))
                .collect(),
        )])
}

fn fetched(committed: &[(i32, i64)]) -> OffsetFetchResponse {
    OffsetFetchResponse::default().with_topics(vec![OffsetFetchResponseTopic::default()
        .with_name(TopicName(s("events")))
        .with_partitions(
            committed
                .iter()
                .map(|(p, o)| {
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(*p)
                        .with_committed_offset(*o)
                })
                .collect(),
        )])
}

fn commit_ok(req: &OffsetCommitRequest) -> OffsetCommitResponse {
    OffsetCommitResponse::default().with_topics(
        req.topics
            .iter()
            .map(|t| {
                OffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn committed(req: &OffsetCommitRequest) -> Vec<(i32, i64)> {
    req.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition_index, p.committed_offset))
        })
        .collect()
}

/// Joins as the leader of `me` and `other`: returns the Assigned event.
fn lead(m: &mut GroupMember, now: Instant, gen: i32) -> MemberEvent {
    let Some(Request::Join(j)) = m.poll_request(now) else {
        panic!("join first")
    };
    assert_eq!(j.protocol_type.as_str(), "consumer");
    let names: Vec<&str> = j.protocols.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ASSIGNORS);
    m.handle_response(
        Response::Join(join_ok("me", "me", gen, &["me", "other"])),
        now,
    )
    .unwrap();
    let Some(Request::Metadata(md)) = m.poll_request(now) else {
        panic!("the leader asks for partition counts")
    };
    assert_eq!(md.topics.unwrap().len(), 1);
    m.handle_response(Response::Metadata(metadata(4)), now)
        .unwrap();
    let Some(Request::Sync(sy)) = m.poll_request(now) else {
        panic!("then syncs")
    };
    assert_eq!(sy.generation_id, gen);
    let plan: BTreeMap<String, Vec<Tp>> = sy
        .assignments
        .iter()
        .map(|a| {
            (
                a.member_id.to_string(),
                decode_assignment(a.assignment.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(plan["me"], vec![tp(0), tp(1)]);
    assert_eq!(plan["other"], vec![tp(2), tp(3)]);
    let mine = sy
        .assignments
        .iter()
        .find(|a| a.member_id.as_str() == "me")
        .unwrap()
        .assignment
        .clone();
    m.handle_response(
        Response::Sync(SyncGroupResponse::default().with_assignment(mine)),
        now,
    )
    .unwrap();
    let Some(Request::OffsetFetch(of)) = m.poll_request(now) else {
        panic!("then fetches committed offsets")
    };
    let asked: Vec<i32> = of.topics.unwrap()[0].partition_indexes.clone();
    assert_eq!(asked, vec![0, 1]);
    m.handle_response(Response::OffsetFetch(fetched(&[(0, 120), (1, -1)])), now)
        .unwrap();
    m.poll_event().expect("an assignment")
}

#[test]
fn a_leader_joins_assigns_fetches_offsets_commits_and_rejoins_on_rebalance() {
    let t0 = Instant::now();
    let mut m = GroupMember::new(cfg(), t0);
    // v4+ coordinators first hand out a member id.
    let Some(Request::Join(j)) = m.poll_request(t0) else {
        panic!()
    };
    assert_eq!(j.member_id.as_str(), "");
    assert!(m.poll_request(t0).is_none(), "one request in flight");
    let required = JoinGroupResponse::default()
        .with_error_code(E::MemberIdRequired.code())
        .with_member_id(s("me"));
    m.handle_response(Response::Join(required), t0).unwrap();
    // The rejoin carries it (checked by `lead` answering for "me").
    assert_eq!(m.member_id(), "me");
    let ev = lead(&mut m, t0, 1);
    assert_eq!(
        ev,
        MemberEvent::Assigned(vec![(tp(0), Some(120)), (tp(1), None)])
    );
    assert!(m.is_active());
    assert!(m.poll_request(t0).is_none(), "nothing due yet");
    // Consumed records: a commit after the commit interval, of exactly the positions.
    m.consumed(&tp(0), 130);
    m.consumed(&tp(1), 7);
    m.consumed(&tp(3), 99); // not ours: never committed
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(m.poll_timeout(), Some(t1));
    let Some(Request::Commit(c)) = m.poll_request(t1) else {
        panic!("auto-commit")
    };
    assert_eq!(committed(&c), vec![(0, 130), (1, 7)]);
    assert_eq!(
        (c.generation_id_or_member_epoch, c.member_id.as_str()),
        (1, "me")
    );
    m.handle_response(Response::Commit(commit_ok(&c)), t1)
        .unwrap();
    // Nothing new consumed: no commit, a heartbeat when due.
    let t3 = t0 + Duration::from_secs(3);
    assert!(m.poll_request(t0 + Duration::from_secs(2)).is_none());
    let Some(Request::Heartbeat(h)) = m.poll_request(t3) else {
        panic!("heartbeat")
    };
    assert_eq!(h.generation_id, 1);
    m.handle_response(Response::Heartbeat(HeartbeatResponse::default()), t3)
        .unwrap();
    // A rebalance: revoke, commit what was consumed since, rejoin with the same id.
    let t6 = t0 + Duration::from_secs(6);
    let Some(Request::Heartbeat(_)) = m.poll_request(t6) else {
        panic!()
    };
    // Records consumed while the heartbeat was out.
    m.consumed(&tp(0), 140);
    let rebalance = HeartbeatResponse::default().with_error_code(E::RebalanceInProgress.code());
    m.handle_response(Response::Heartbeat(rebalance), t6)
        .unwrap();
    assert_eq!(m.poll_event(), Some(MemberEvent::Revoked));
    assert!(!m.is_active());
    let Some(Request::Commit(c)) = m.poll_request(t6) else {
        panic!("the revoked partitions' positions are committed first")
    };
    assert_eq!(committed(&c), vec![(0, 140), (1, 7)]);
    m.handle_response(Response::Commit(commit_ok(&c)), t6)
        .unwrap();
    let Some(Request::Join(j)) = m.poll_request(t6) else {
        panic!("then the member rejoins")
    };
    assert_eq!(j.member_id.as_str(), "me");
    // A follower this time.
    m.handle_response(Response::Join(join_ok("me", "other", 2, &[])), t6)
        .unwrap();
    let Some(Request::Sync(sy)) = m.poll_request(t6) else {
        panic!()
    };
    assert!(sy.assignments.is_empty(), "followers send no assignment");
    m.handle_response(
        Response::Sync(SyncGroupResponse::default().with_assignment(encode_assignment(&[tp(2)]))),
        t6,
    )
    .unwrap();
    let Some(Request::OffsetFetch(_)) = m.poll_request(t6) else {
        panic!()
    };
    m.handle_response(Response::OffsetFetch(fetched(&[(2, 50)])), t6)
        .unwrap();
    assert_eq!(
        m.poll_event(),
        Some(MemberEvent::Assigned(vec![(tp(2), Some(50))]))
    );
    // Leaving: commit, then LeaveGroup, then Left.
    m.consumed(&tp(2), 60);
    m.leave();
    let Some(Request::Commit(c)) = m.poll_request(t6) else {
        panic!("commit on the way out")
    };
    assert_eq!(committed(&c), vec![(2, 60)]);
    m.handle_response(Response::Commit(commit_ok(&c)), t6)
        .unwrap();
    let Some(Request::Leave(l)) = m.poll_request(t6) else {
        panic!("then leave")
    };
    assert_eq!(l.members[0].member_id.as_str(), "me");
    m.handle_response(Response::Leave(LeaveGroupResponse::default()), t6)
        .unwrap();
    assert_eq!(m.poll_event(), Some(MemberEvent::Left));
    assert!(m.is_done());
    assert!(m.poll_request(t6 + Duration::from_secs(60)).is_none());
}

#[test]
fn unknown_member_and_sync_errors_rejoin_and_bad_answers_are_errors() {
    let t0 = Instant::now();
    let mut m = GroupMember::new(cfg(), t0);
    lead(&mut m, t0, 1);
    let t = t0 + Duration::from_secs(3);
    let Some(Request::Heartbeat(_)) = m.poll_request(t) else {
        panic!()
    };
    let unknown = HeartbeatResponse::default().with_error_code(E::UnknownMemberId.code());
    m.handle_response(Response::Heartbeat(unknown), t).unwrap();
    assert_eq!(m.poll_event(), Some(MemberEvent::Revoked));
    // Expelled: no commit (it would be refused), a fresh join without the old id.
    let Some(Request::Join(j)) = m.poll_request(t) else {
        panic!("rejoin at once")
    };
    assert_eq!(j.member_id.as_str(), "");
    m.handle_response(Response::Join(join_ok("me2", "x", 3, &[])), t)
        .unwrap();
    let Some(Request::Sync(_)) = m.poll_request(t) else {
        panic!()
    };
    let rip = SyncGroupResponse::default().with_error_code(E::RebalanceInProgress.code());
    m.handle_response(Response::Sync(rip), t).unwrap();
    let Some(Request::Join(j)) = m.poll_request(t) else {
        panic!("REBALANCE_IN_PROGRESS on SyncGroup: rejoin")
    };
    assert_eq!(j.member_id.as_str(), "me2");
    let bad = JoinGroupResponse::default().with_error_code(E::InconsistentGroupProtocol.code());
    let err = m.handle_response(Response::Join(bad), t).unwrap_err();
    assert!(
        format!("{err:#}").contains("InconsistentGroupProtocol"),
        "{err:#}"
    );
    // An answer that does not match the request is an error, not a state change.
    let Some(Request::Join(_)) = m.poll_request(t) else {
        panic!()
    };
    let wrong = Response::Heartbeat(HeartbeatResponse::default());
    assert!(m.handle_response(wrong, t).is_err());
    // A leave before any assignment just leaves.
    let mut fresh = GroupMember::new(cfg(), t0);
    fresh.leave();
    assert!(fresh.poll_request(t0).is_none());
    assert_eq!(fresh.poll_event(), Some(MemberEvent::Left));
}
