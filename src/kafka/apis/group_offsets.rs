//! OffsetCommit, OffsetFetch (single-group v1-v7 and multi-group v8+) and OffsetDelete.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::group_codec::{encode, s, Answer, GroupError};
use super::{sb, Ctx};
use crate::kafka::group::coordinator::{GroupOffsets, MAX_METADATA};
use crate::kafka::group::{Committed, Groups, MemberRef, State};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn commit(
    ctx: &Ctx,
    groups: &Groups,
    c: i32,
    v: i16,
    req: &OffsetCommitRequest,
    now: Instant,
) -> Result<Answer, GroupError> {
    let group = s(&req.group_id.0);
    let r = MemberRef {
        group: group.clone(),
        generation: req.generation_id_or_member_epoch,
        member_id: s(&req.member_id),
        instance_id: req.group_instance_id.as_ref().map(s),
    };
    let mut inner = groups.lock();
    let code = inner.coord.check_commit(&r, now);
    let at = now_ms();
    // Per partition: its error, and what to store when there is none.
    let mut results: Vec<(String, Vec<(i32, i16)>)> = Vec::new();
    let mut accepted = Vec::new();
    for t in &req.topics {
        let topic = s(&t.name.0);
        let mut parts = Vec::new();
        for p in &t.partitions {
            let meta = p.committed_metadata.as_ref().map(s);
            let e = if code != 0 {
                code
            } else if ctx.log.partition(&topic, p.partition_index).is_none() {
                E::UnknownTopicOrPartition.code()
            } else if meta.as_ref().is_some_and(|m| m.len() > MAX_METADATA) {
                E::OffsetMetadataTooLarge.code()
            } else {
                let committed = Committed {
                    offset: p.committed_offset,
                    leader_epoch: if v >= 6 { p.committed_leader_epoch } else { -1 },
                    metadata: meta,
                    commit_ms: at,
                };
                accepted.push((topic.clone(), p.partition_index, committed));
                0
            };
            parts.push((p.partition_index, e));
        }
        results.push((topic, parts));
    }
    if !accepted.is_empty() {
        if let Err(e) = inner.commit(&group, accepted) {
            log::error!("group {group}: offset commit not stored: {e:#}");
            let failed = E::KafkaStorageError.code();
            for (_, parts) in &mut results {
                for (_, code) in parts.iter_mut().filter(|(_, c)| *c == 0) {
                    *code = failed;
                }
            }
        }
    }
    drop(inner);
    let resp = OffsetCommitResponse::default().with_topics(
        results
            .into_iter()
            .map(|(topic, parts)| {
                OffsetCommitResponseTopic::default()
                    .with_name(TopicName(sb(&topic)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(i, e)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(i)
                                    .with_error_code(e)
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    encode("OffsetCommit", ApiKey::OffsetCommit, c, v, &resp)
}

/// One partition's answer: (partition, offset, leader epoch, metadata, error).
type Row = (i32, i64, i32, Option<StrBytes>, i16);

/// The rows of one group: the partitions asked for, or (`None`) every committed one. A
/// committed partition the log no longer has is reported with UNKNOWN_TOPIC_OR_PARTITION.
fn rows(
    ctx: &Ctx,
    offsets: Option<&GroupOffsets>,
    asked: Option<Vec<(String, Vec<i32>)>>,
) -> Vec<(String, Vec<Row>)> {
    let row = |t: &str, p: i32| -> Row {
        match offsets.and_then(|o| o.get(&(t.to_string(), p))) {
            Some(c) => {
                let gone = ctx.log.partition(t, p).is_none();
                let e = if gone {
                    E::UnknownTopicOrPartition.code()
                } else {
                    0
                };
                let meta = sb(c.metadata.as_deref().unwrap_or(""));
                (p, c.offset, c.leader_epoch, Some(meta), e)
            }
            None => (p, -1, -1, Some(StrBytes::default()), 0),
        }
    };
    let asked = asked.unwrap_or_else(|| {
        let mut all: Vec<(String, Vec<i32>)> = Vec::new();
        for (t, p) in offsets.into_iter().flat_map(|o| o.keys()) {
            match all.last_mut() {
                Some((last, ps)) if last == t => ps.push(*p),
                _ => all.push((t.clone(), vec![*p])),
            }
        }
        all
    });
    asked
        .into_iter()
        .map(|(t, ps)| {
            let r = ps.iter().map(|&p| row(&t, p)).collect();
            (t, r)
        })
        .collect()
}

pub(super) fn fetch(
    ctx: &Ctx,
    groups: &Groups,
    c: i32,
    v: i16,
    req: &OffsetFetchRequest,
) -> Result<Answer, GroupError> {
    let inner = groups.lock();
    let mut resp = OffsetFetchResponse::default();
    if v >= 8 {
        for g in &req.groups {
            if !super::group_authz::allowed(ctx, g.group_id.as_str()) {
                resp.groups.push(
                    OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(E::GroupAuthorizationFailed.code()),
                );
                continue;
            }
            let asked = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (s(&t.name.0), t.partition_indexes.clone()))
                    .collect()
            });
            let topics = rows(ctx, inner.coord.offsets(g.group_id.as_str()), asked)
                .into_iter()
                .map(|(t, rs)| {
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(sb(&t)))
                        .with_partitions(
                            rs.into_iter()
                                .map(|(p, o, ep, m, e)| {
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(o)
                                        .with_committed_leader_epoch(ep)
                                        .with_metadata(m)
                                        .with_error_code(e)
                                })
                                .collect(),
                        )
                })
                .collect();
            resp.groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(topics),
            );
        }
    } else {
        let asked = req.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (s(&t.name.0), t.partition_indexes.clone()))
                .collect()
        });
        resp.topics = rows(ctx, inner.coord.offsets(req.group_id.as_str()), asked)
            .into_iter()
            .map(|(t, rs)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(sb(&t)))
                    .with_partitions(
                        rs.into_iter()
                            .map(|(p, o, ep, m, e)| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(o)
                                    .with_committed_leader_epoch(ep)
                                    .with_metadata(m)
                                    .with_error_code(e)
                            })
                            .collect(),
                    )
            })
            .collect();
    }
    drop(inner);
    encode("OffsetFetch", ApiKey::OffsetFetch, c, v, &resp)
}

/// The topics the members of a consumer group subscribe to (from their metadata).
fn subscribed(view: &crate::kafka::group::coordinator::GroupView) -> Vec<String> {
    use kafka_protocol::protocol::Decodable;
    let mut out = Vec::new();
    for m in &view.members {
        let mut meta = m.metadata(&view.protocol);
        if meta.len() < 2 {
            continue;
        }
        let ver = i16::from_be_bytes([meta[0], meta[1]]);
        let _ = bytes::Buf::get_i16(&mut meta);
        let ver = ver.clamp(0, 3);
        if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut meta, ver) {
            out.extend(sub.topics.iter().map(s));
        }
    }
    out
}

pub(super) fn delete(
    groups: &Groups,
    c: i32,
    v: i16,
    req: &OffsetDeleteRequest,
) -> Result<Answer, GroupError> {
    let group = s(&req.group_id.0);
    let mut inner = groups.lock();
    let mut resp = OffsetDeleteResponse::default();
    match inner.coord.group(&group) {
        None => resp.error_code = E::GroupIdNotFound.code(),
        Some(view) if view.state != State::Empty && view.protocol_type != "consumer" => {
            resp.error_code = E::NonEmptyGroup.code();
        }
        Some(view) => {
            let subs = if view.state == State::Empty {
                Vec::new()
            } else {
                subscribed(&view)
            };
            let mut delete = Vec::new();
            for t in &req.topics {
                let topic = s(&t.name.0);
                let busy = subs.contains(&topic);
                let parts = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let e = if busy {
                            E::GroupSubscribedToTopic.code()
                        } else {
                            delete.push((topic.clone(), p.partition_index));
                            0
                        };
                        OffsetDeleteResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(e)
                    })
                    .collect();
                resp.topics.push(
                    OffsetDeleteResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(parts),
                );
            }
            match inner.delete(&group, &delete) {
                Ok(code) => resp.error_code = code,
                Err(e) => {
                    log::error!("group {group}: offset delete not stored: {e:#}");
                    resp.error_code = E::KafkaStorageError.code();
                }
            }
        }
    }
    drop(inner);
    encode("OffsetDelete", ApiKey::OffsetDelete, c, v, &resp)
}
