//! GROUP_AUTHORIZATION_FAILED for group requests the principal may not make (an ACL file's
//! `groups`), answered before the coordinator sees them. Requests naming one group are
//! refused whole here; DescribeGroups, ListGroups, FindCoordinator v4+ and OffsetFetch v8+
//! name several and are checked per group by their handlers.

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::*;

use super::error_response::{error_response, RefuseError};
use super::group_codec::{decode, Answer, GroupError};
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
    let Some(group) = single_group(key, v, body)? else {
        return Ok(None);
    };
    if ctx.authz.group(&group) {
        return Ok(None);
    }
    let chunks = error_response(key, v, c, DENIED, &mut body.clone()).map_err(|e| match e {
        RefuseError::Encode(e) => GroupError::Encode(e),
        e => GroupError::Decode(e.to_string()),
    })?;
    inc(&ctx.stats.auth.denied_group);
    Ok(Some(Answer::Now(chunks)))
}

/// The group a single-group request names; None for the requests checked per group by their
/// handlers.
fn single_group(key: ApiKey, v: i16, body: &Bytes) -> Result<Option<GroupId>, GroupError> {
    let b = &mut body.clone();
    let group = match key {
        ApiKey::JoinGroup => decode::<JoinGroupRequest>(b, v)?.group_id,
        ApiKey::SyncGroup => decode::<SyncGroupRequest>(b, v)?.group_id,
        ApiKey::Heartbeat => decode::<HeartbeatRequest>(b, v)?.group_id,
        ApiKey::LeaveGroup => decode::<LeaveGroupRequest>(b, v)?.group_id,
        ApiKey::OffsetDelete => decode::<OffsetDeleteRequest>(b, v)?.group_id,
        ApiKey::OffsetCommit => decode::<OffsetCommitRequest>(b, v)?.group_id,
        ApiKey::OffsetFetch if v < 8 => decode::<OffsetFetchRequest>(b, v)?.group_id,
        _ => return Ok(None),
    };
    Ok(Some(group))
}

/// Whether the principal may use `group` (counting a refusal), for per-group checks.
pub fn allowed(ctx: &Ctx, group: &str) -> bool {
    let ok = ctx.authz.group(group);
    if !ok {
        inc(&ctx.stats.auth.denied_group);
    }
    ok
}
