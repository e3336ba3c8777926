//! The group APIs through sessions sharing one coordinator: parked JoinGroup / SyncGroup
//! responses, request order behind them, and every version of each API encodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::group::{GroupConfig, Groups};
use super::session::Session;
use super::testkit::{decode_response, request, Harness};

fn pair() -> (Harness, Harness, Arc<Groups>, tempfile::TempDir) {
    let (a, d) = Harness::empty();
    let mut a = a;
    let mut b = Harness::new(Arc::clone(&a.log));
    let groups = Arc::new(Groups::in_memory(GroupConfig {
        initial_rebalance_delay: Duration::ZERO,
        ..GroupConfig::default()
    }));
    a.session = Session::with_groups(1 << 20, Arc::clone(&groups), "/198.18.0.2".into());
    b.session = Session::with_groups(1 << 20, Arc::clone(&groups), "/198.18.0.3".into());
    (a, b, groups, d)
}

fn join_req(member: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(30_000)
        .with_member_id(StrBytes::from_string(member.into()))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(StrBytes::from_static_str("range"))
        .with_metadata(Bytes::from_static(b"m"))])
}

/// Splits concatenated response frames.
fn frames(wire: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < wire.len() {
        let len = i32::from_be_bytes(wire[pos..pos + 4].try_into().unwrap()) as usize;
        out.push(&wire[pos..pos + 4 + len]);
        pos += 4 + len;
    }
    out
}

#[test]
fn parked_join_holds_back_later_requests_and_answers_in_order() {
    let (mut a, mut b, groups, _d) = pair();
    let v = 5;
    let r: JoinGroupResponse = a.call(ApiKey::JoinGroup, v, &join_req(""));
    assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED");
    let id_a = r.member_id.to_string();
    // The join is parked; a Metadata request pipelined behind it must wait too.
    let mut wire = request(ApiKey::JoinGroup, v, 1, &join_req(&id_a));
    wire.extend(request(
        ApiKey::Metadata,
        9,
        2,
        &MetadataRequest::default().with_topics(None),
    ));
    assert!(a.feed(&wire).unwrap().is_empty());
    assert!(a.session.group_waiter().is_some());
    let r: JoinGroupResponse = b.call(ApiKey::JoinGroup, v, &join_req(""));
    let id_b = r.member_id.to_string();
    assert!(b
        .feed(&request(ApiKey::JoinGroup, v, 3, &join_req(&id_b)))
        .unwrap()
        .is_empty());
    // The initial delay (zero here) ends at the next tick.
    let now = Instant::now() + Duration::from_millis(1);
    groups.lock().tick(now);
    let out = a.step(now).unwrap();
    let f = frames(&out);
    assert_eq!(f.len(), 2, "the join response, then the metadata response");
    let ja: JoinGroupResponse = decode_response(ApiKey::JoinGroup, v, 1, f[0]);
    let _m: MetadataResponse = decode_response(ApiKey::Metadata, 9, 2, f[1]);
    let jb: JoinGroupResponse = decode_response(ApiKey::JoinGroup, v, 3, &b.step(now).unwrap());
    assert_eq!((ja.error_code, jb.error_code), (0, 0));
    assert_eq!(ja.generation_id, 1);
    assert_eq!(ja.leader, jb.leader);
    let (leader, mut follower, fid) = if ja.leader.as_str() == id_a {
        (a, b, id_b)
    } else {
        (b, a, id_a)
    };
    let mut leader = leader;
    let sync = |id: &str, assign: Vec<(String, &'static [u8])>| {
        SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_generation_id(1)
            .with_member_id(StrBytes::from_string(id.into()))
            .with_assignments(
                assign
                    .into_iter()
                    .map(|(m, x)| {
                        sync_group_request::SyncGroupRequestAssignment::default()
                            .with_member_id(StrBytes::from_string(m))
                            .with_assignment(Bytes::from_static(x))
                    })
                    .collect(),
            )
    };
    assert!(follower
        .feed(&request(ApiKey::SyncGroup, 3, 9, &sync(&fid, vec![])))
        .unwrap()
        .is_empty());
    let lid = ja.leader.to_string();
    let r: SyncGroupResponse = leader.call(
        ApiKey::SyncGroup,
        3,
        &sync(&lid, vec![(lid.clone(), b"L"), (fid.clone(), b"F")]),
    );
    assert_eq!(&r.assignment[..], b"L");
    let out = follower.step(Instant::now()).unwrap();
    let r: SyncGroupResponse = decode_response(ApiKey::SyncGroup, 3, 9, &out);
    assert_eq!(&r.assignment[..], b"F");
    // Described as a stable group of two.
    let d: DescribeGroupsResponse = leader.call(
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(StrBytes::from_static_str("g"))]),
    );
    assert_eq!(d.groups[0].group_state.as_str(), "Stable");
    assert_eq!(d.groups[0].members.len(), 2);
}

#[test]
fn every_version_of_every_group_api_answers() {
    let (mut h, _d) = Harness::empty();
    for v in 0..=6 {
        let fc = if v >= 4 {
            FindCoordinatorRequest::default()
                .with_coordinator_keys(vec![StrBytes::from_static_str("g")])
        } else {
            FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"))
        };
        let r: FindCoordinatorResponse = h.call(ApiKey::FindCoordinator, v, &fc);
        if v >= 4 {
            assert_eq!(r.coordinators[0].port, 9092);
        } else {
            assert_eq!(r.port, 9092);
        }
        if v == 0 {
            continue;
        }
        let r: FindCoordinatorResponse =
            h.call(ApiKey::FindCoordinator, v, &fc.clone().with_key_type(1));
        if v >= 4 {
            assert_eq!(r.coordinators[0].error_code, 15);
        } else if v >= 1 {
            assert_eq!(r.error_code, 15, "transactions: COORDINATOR_NOT_AVAILABLE");
        }
    }
    for v in 0..=9 {
        let r: JoinGroupResponse = h.call(ApiKey::JoinGroup, v, &join_req("ghost"));
        assert_eq!(r.error_code, 25, "v{v}");
    }
    for v in 0..=5 {
        let r: SyncGroupResponse = h.call(ApiKey::SyncGroup, v, &SyncGroupRequest::default());
        assert_eq!(r.error_code, 25, "v{v}");
        let mut req =
            LeaveGroupRequest::default().with_group_id(GroupId(StrBytes::from_static_str("g")));
        if v < 3 {
            req = req.with_member_id(StrBytes::from_static_str("x"));
        } else {
            req = req.with_members(vec![leave_group_request::MemberIdentity::default()
                .with_member_id(StrBytes::from_static_str("x"))]);
        }
        let r: LeaveGroupResponse = h.call(ApiKey::LeaveGroup, v, &req);
        if v >= 3 {
            assert_eq!(r.members[0].error_code, 25);
        } else {
            assert_eq!(r.error_code, 25);
        }
    }
    for v in 0..=4 {
        let r: HeartbeatResponse = h.call(ApiKey::Heartbeat, v, &HeartbeatRequest::default());
        assert_eq!(r.error_code, 25);
    }
    for v in 2..=9 {
        // The log is empty: every partition is unknown.
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_committed_offset(5),
                    ]),
            ]);
        let r: OffsetCommitResponse = h.call(ApiKey::OffsetCommit, v, &req);
        assert_eq!(r.topics[0].partitions[0].error_code, 3, "v{v}");
    }
    for v in 1..=9 {
        let mut req = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partition_indexes(vec![0]),
            ]));
        if v >= 8 {
            req = OffsetFetchRequest::default().with_groups(vec![
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(StrBytes::from_static_str("g")))
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopics::default()
                            .with_name(TopicName(StrBytes::from_static_str("t")))
                            .with_partition_indexes(vec![0]),
                    ])),
            ]);
        }
        let r: OffsetFetchResponse = h.call(ApiKey::OffsetFetch, v, &req);
        let off = if v >= 8 {
            r.groups[0].topics[0].partitions[0].committed_offset
        } else {
            r.topics[0].partitions[0].committed_offset
        };
        assert_eq!(off, -1, "v{v}");
    }
    for v in 0..=5 {
        let r: ListGroupsResponse = h.call(ApiKey::ListGroups, v, &ListGroupsRequest::default());
        assert_eq!(r.error_code, 0);
    }
    for v in 0..=6 {
        let req = DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(StrBytes::from_static_str("none"))]);
        let r: DescribeGroupsResponse = h.call(ApiKey::DescribeGroups, v, &req);
        assert_eq!(r.groups[0].group_state.as_str(), "Dead");
        assert_eq!(r.groups[0].error_code, if v >= 6 { 69 } else { 0 });
    }
    let req =
        OffsetDeleteRequest::default().with_group_id(GroupId(StrBytes::from_static_str("none")));
    let r: OffsetDeleteResponse = h.call(ApiKey::OffsetDelete, 0, &req);
    assert_eq!(r.error_code, 69, "GROUP_ID_NOT_FOUND");
}
