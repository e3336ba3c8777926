//! GROUP_AUTHORIZATION_FAILED for group requests the principal may not make (an ACL file's
//! `groups`), answered before the coordinator sees them. Requests naming one group are
//! refused whole here; DescribeGroups, ListGroups, FindCoordinator v4+ and OffsetFetch v8+
//! name several and are checked per group by their handlers.

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;

use super::group_codec::{decode, encode, Answer, GroupError};
use super::Ctx;
use crate::kafka::stats::inc;

const DENIED: i16 = E::GroupAuthorizationFailed.code();

/// The refusal of a single-group request whose group the principal may not use, or None.
pub fn refuse(
    ctx: &Ctx,
    key: ApiKey,
    c: i32,
    v: i16,
    body: &Bytes,
) -> Result<Option<Answer>, GroupError> {
    let mut b = body.clone();
    let b = &mut b;
    let denied = |g: &str| !ctx.authz.group(g);
    let answer = match key {
        ApiKey::JoinGroup => {
            let r: JoinGroupRequest = decode(b, v)?;
            if !denied(&r.group_id) {
                return Ok(None);
            }
            let resp = JoinGroupResponse::default()
                .with_error_code(DENIED)
                .with_generation_id(-1);
            encode("JoinGroup", key, c, v, &resp)?
        }
        ApiKey::SyncGroup => {
            let r: SyncGroupRequest = decode(b, v)?;
            if !denied(&r.group_id) {
                return Ok(None);
            }
            let resp = SyncGroupResponse::default().with_error_code(DENIED);
            encode("SyncGroup", key, c, v, &resp)?
        }
        ApiKey::Heartbeat => {
            let r: HeartbeatRequest = decode(b, v)?;
            if !denied(&r.group_id) {
                return Ok(None);
            }
            let resp = HeartbeatResponse::default().with_error_code(DENIED);
            encode("Heartbeat", key, c, v, &resp)?
        }
        ApiKey::LeaveGroup => {
            let r: LeaveGroupRequest = decode(b, v)?;
            if !denied(&r.group_id) {
                return Ok(None);
            }
            let resp = LeaveGroupResponse::default().with_error_code(DENIED);
            encode("LeaveGroup", key, c, v, &resp)?
        }
        ApiKey::OffsetDelete => {
            let r: OffsetDeleteRequest = decode(b, v)?;
            if !denied(&r.group_id) {
                return Ok(None);
            }
            let resp = OffsetDeleteResponse::default().with_error_code(DENIED);
            encode("OffsetDelete", key, c, v, &resp)?
        }
        ApiKey::OffsetCommit => {
            let r: OffsetCommitRequest = decode(b, v)?;
            if !denied(&r.group_id) {
                return Ok(None);
            }
            // OffsetCommit has no top-level error: every partition carries it (as Kafka).
            let topics = r
                .topics
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
                                        .with_error_code(DENIED)
                                })
                                .collect(),
                        )
                })
                .collect();
            let resp = OffsetCommitResponse::default().with_topics(topics);
            encode("OffsetCommit", key, c, v, &resp)?
        }
        ApiKey::OffsetFetch if v < 8 => {
            let r: OffsetFetchRequest = decode(b, v)?;
            if !denied(&r.group_id) {
                return Ok(None);
            }
            let mut resp = OffsetFetchResponse::default();
            if v >= 2 {
                resp.error_code = DENIED;
            } else {
                // v1 has only partition errors.
                resp.topics = r
                    .topics
                    .iter()
                    .flatten()
                    .map(|t| {
                        OffsetFetchResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|&p| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(-1)
                                            .with_error_code(DENIED)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
            }
            encode("OffsetFetch", key, c, v, &resp)?
        }
        _ => return Ok(None),
    };
    inc(&ctx.stats.auth.denied_group);
    Ok(Some(answer))
}

/// Whether the principal may use `group` (counting a refusal), for per-group checks.
pub fn allowed(ctx: &Ctx, group: &str) -> bool {
    let ok = ctx.authz.group(group);
    if !ok {
        inc(&ctx.stats.auth.denied_group);
    }
    ok
}
