//! The group coordinator APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup
//! (membership, here), OffsetCommit, OffsetFetch, OffsetDelete ([`super::group_offsets`]),
//! ListGroups and DescribeGroups ([`super::group_admin`]). Requests are decoded with the
//! kafka-protocol codec and turned into [`crate::kafka::group`] calls; JoinGroup and SyncGroup
//! may be parked until the rebalance completes (see [`Answer::Wait`]).

use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

pub use super::group_codec::{Answer, GroupError, Pending};

use super::group_codec::{decode, encode, s};
use super::{group_admin, group_offsets, sb, Ctx};
use crate::kafka::chunk::Chunk;
use crate::kafka::group::member::{JoinReply, SyncReply};
use crate::kafka::group::{Groups, JoinParams, MemberRef, Outcome, Reply};

/// The APIs answered here (their versions are in [`super::SERVED`]).
pub const GROUP_APIS: &[ApiKey] = &[
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::SyncGroup,
    ApiKey::DescribeGroups,
    ApiKey::ListGroups,
    ApiKey::OffsetDelete,
];

/// Whether `key` is answered by this module.
pub fn is_group_api(key: ApiKey) -> bool {
    GROUP_APIS.contains(&key)
}

/// Who sent a request, and when it is handled.
pub struct Caller<'a> {
    /// client_id of the request header.
    pub client_id: &'a str,
    /// Peer address.
    pub host: &'a str,
    /// The time input of the coordinator.
    pub now: Instant,
}

/// Answers one group API request.
pub fn handle(
    ctx: &Ctx,
    groups: &Groups,
    caller: &Caller,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &mut Bytes,
) -> Result<Answer, GroupError> {
    let now = caller.now;
    let c = correlation_id;
    let v = version;
    if let Some(refused) = super::group_authz::refuse(ctx, key, c, v, body)? {
        return Ok(refused);
    }
    match key {
        ApiKey::FindCoordinator => find_coordinator(ctx, c, v, &decode(body, v)?),
        ApiKey::JoinGroup => join(groups, caller, c, v, decode(body, v)?, now),
        ApiKey::SyncGroup => sync(groups, c, v, decode(body, v)?, now),
        ApiKey::Heartbeat => heartbeat(groups, c, v, &decode(body, v)?, now),
        ApiKey::LeaveGroup => leave(groups, c, v, &decode(body, v)?, now),
        ApiKey::OffsetCommit => group_offsets::commit(ctx, groups, c, v, &decode(body, v)?, now),
        ApiKey::OffsetFetch => group_offsets::fetch(ctx, groups, c, v, &decode(body, v)?),
        ApiKey::OffsetDelete => group_offsets::delete(groups, c, v, &decode(body, v)?),
        ApiKey::ListGroups => group_admin::list(ctx, groups, c, v, &decode(body, v)?),
        ApiKey::DescribeGroups => group_admin::describe(ctx, groups, c, v, &decode(body, v)?),
        _ => Err(GroupError::Decode(format!("{key:?} is not a group API"))),
    }
}

/// Encodes the delayed reply of a parked request.
pub fn respond(p: &Pending, reply: Reply) -> Result<Vec<Chunk>, GroupError> {
    let a = match reply {
        Reply::Join(j) => encode_join(p.correlation_id, p.version, j)?,
        Reply::Sync(s) => encode_sync(p.correlation_id, p.version, s)?,
    };
    match a {
        Answer::Now(chunks) => Ok(chunks),
        Answer::Wait(_) => Err(GroupError::Decode("a reply cannot wait".into())),
    }
}

fn find_coordinator(
    ctx: &Ctx,
    c: i32,
    v: i16,
    req: &FindCoordinatorRequest,
) -> Result<Answer, GroupError> {
    // (error, message): key type 0 is a group (this gateway), 1 a transaction (not served).
    let (code, msg) = match req.key_type {
        0 if v < 4 && !super::group_authz::allowed(ctx, req.key.as_str()) => {
            (E::GroupAuthorizationFailed.code(), None)
        }
        0 => (0, None),
        1 => (
            E::CoordinatorNotAvailable.code(),
            Some("this gateway has no transaction coordinator"),
        ),
        _ => (
            E::InvalidRequest.code(),
            Some("unknown coordinator key type"),
        ),
    };
    // A static cluster's coordinator is its lowest broker id (the first of `brokers`).
    let node = ctx.node.brokers().into_iter().next();
    let node = node
        .filter(|_| code == 0)
        .map(|b| (b.id, sb(&b.host), b.port));
    let allowed = |group: &str| super::group_authz::allowed(ctx, group);
    let resp = coordinator_answer(req, v, node, code, msg, &allowed);
    encode("FindCoordinator", ApiKey::FindCoordinator, c, v, &resp)
}

/// A FindCoordinator answer naming `node` (id, host, port), or none with error `code`: in
/// the v0-v3 shape or, from v4, once per key asked for (GROUP_AUTHORIZATION_FAILED for a
/// group the client may not use).
pub(super) fn coordinator_answer(
    req: &FindCoordinatorRequest,
    v: i16,
    node: Option<(i32, StrBytes, i32)>,
    code: i16,
    msg: Option<&'static str>,
    allowed: &dyn Fn(&str) -> bool,
) -> FindCoordinatorResponse {
    let (id, host, port) = node.unwrap_or((-1, StrBytes::default(), -1));
    let msg = msg.map(StrBytes::from_static_str);
    let resp = FindCoordinatorResponse::default();
    if v < 4 {
        return resp
            .with_error_code(code)
            .with_error_message(msg)
            .with_node_id(BrokerId(id))
            .with_host(host)
            .with_port(port);
    }
    resp.with_coordinators(
        req.coordinator_keys
            .iter()
            .map(|k| {
                if code == 0 && !allowed(k.as_str()) {
                    return Coordinator::default()
                        .with_key(k.clone())
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(E::GroupAuthorizationFailed.code());
                }
                Coordinator::default()
                    .with_key(k.clone())
                    .with_node_id(BrokerId(id))
                    .with_host(host.clone())
                    .with_port(port)
                    .with_error_code(code)
                    .with_error_message(msg.clone())
            })
            .collect(),
    )
}

/// An answer now, or the request parked (JoinGroup and SyncGroup wait for the rebalance).
fn now_or_parked<T>(
    outcome: Outcome<T>,
    api: ApiKey,
    c: i32,
    v: i16,
    now: impl FnOnce(T) -> Result<Answer, GroupError>,
) -> Result<Answer, GroupError> {
    match outcome {
        Outcome::Now(reply) => now(reply),
        Outcome::Wait(waiter) => Ok(Answer::Wait(Pending {
            waiter,
            api,
            version: v,
            correlation_id: c,
        })),
    }
}

fn join(
    groups: &Groups,
    caller: &Caller,
    c: i32,
    v: i16,
    req: JoinGroupRequest,
    now: Instant,
) -> Result<Answer, GroupError> {
    let p = JoinParams {
        group: s(&req.group_id.0),
        member_id: s(&req.member_id),
        instance_id: req.group_instance_id.as_ref().map(s),
        client_id: caller.client_id.to_string(),
        client_host: caller.host.to_string(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if v >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: s(&req.protocol_type),
        protocols: req
            .protocols
            .iter()
            .map(|p| (s(&p.name), p.metadata.clone()))
            .collect(),
        require_known_member: v >= 4,
    };
    let outcome = groups.lock().coord.join(p, now);
    now_or_parked(outcome, ApiKey::JoinGroup, c, v, |j| encode_join(c, v, j))
}

fn encode_join(c: i32, v: i16, j: JoinReply) -> Result<Answer, GroupError> {
    // Before v7 the protocol name is not nullable.
    let name = match j.protocol_name {
        None if v < 7 => Some(StrBytes::default()),
        n => n.map(|n| sb(&n)),
    };
    let resp = JoinGroupResponse::default()
        .with_error_code(j.error)
        .with_generation_id(j.generation)
        .with_protocol_type(j.protocol_type.map(|t| sb(&t)))
        .with_protocol_name(name)
        .with_leader(sb(&j.leader))
        .with_member_id(sb(&j.member_id))
        .with_members(
            j.members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(sb(&m.member_id))
                        .with_group_instance_id(m.instance_id.map(|i| sb(&i)))
                        .with_metadata(m.metadata)
                })
                .collect(),
        );
    encode("JoinGroup", ApiKey::JoinGroup, c, v, &resp)
}

fn sync(
    groups: &Groups,
    c: i32,
    v: i16,
    req: SyncGroupRequest,
    now: Instant,
) -> Result<Answer, GroupError> {
    let r = MemberRef {
        group: s(&req.group_id.0),
        generation: req.generation_id,
        member_id: s(&req.member_id),
        instance_id: req.group_instance_id.as_ref().map(s),
    };
    let assignments = req
        .assignments
        .into_iter()
        .map(|a| (s(&a.member_id), a.assignment))
        .collect();
    let ptype = req.protocol_type.as_ref().map(|t| t.as_str());
    let pname = req.protocol_name.as_ref().map(|t| t.as_str());
    let outcome = groups
        .lock()
        .coord
        .sync(&r, (ptype, pname), assignments, now);
    now_or_parked(outcome, ApiKey::SyncGroup, c, v, |r| encode_sync(c, v, r))
}

fn encode_sync(c: i32, v: i16, r: SyncReply) -> Result<Answer, GroupError> {
    let resp = SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_protocol_type(r.protocol_type.map(|t| sb(&t)))
        .with_protocol_name(r.protocol_name.map(|t| sb(&t)))
        .with_assignment(r.assignment);
    encode("SyncGroup", ApiKey::SyncGroup, c, v, &resp)
}

fn heartbeat(
    groups: &Groups,
    c: i32,
    v: i16,
    req: &HeartbeatRequest,
    now: Instant,
) -> Result<Answer, GroupError> {
    let r = MemberRef {
        group: s(&req.group_id.0),
        generation: req.generation_id,
        member_id: s(&req.member_id),
        instance_id: req.group_instance_id.as_ref().map(s),
    };
    let code = groups.lock().coord.heartbeat(&r, now);
    let resp = HeartbeatResponse::default().with_error_code(code);
    encode("Heartbeat", ApiKey::Heartbeat, c, v, &resp)
}

fn leave(
    groups: &Groups,
    c: i32,
    v: i16,
    req: &LeaveGroupRequest,
    now: Instant,
) -> Result<Answer, GroupError> {
    let members: Vec<(String, Option<String>)> = if v >= 3 {
        req.members
            .iter()
            .map(|m| (s(&m.member_id), m.group_instance_id.as_ref().map(s)))
            .collect()
    } else {
        vec![(s(&req.member_id), None)]
    };
    let codes = groups
        .lock()
        .coord
        .leave(&s(&req.group_id.0), &members, now);
    let mut resp = LeaveGroupResponse::default();
    if v >= 3 {
        resp.members = members
            .iter()
            .zip(&codes)
            .map(|((id, inst), &code)| {
                MemberResponse::default()
                    .with_member_id(sb(id))
                    .with_group_instance_id(inst.as_ref().map(|i| sb(i)))
                    .with_error_code(code)
            })
            .collect();
    } else {
        resp.error_code = codes.first().copied().unwrap_or(0);
    }
    encode("LeaveGroup", ApiKey::LeaveGroup, c, v, &resp)
}
