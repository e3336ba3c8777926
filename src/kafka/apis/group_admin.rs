//! ListGroups and DescribeGroups.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::group_codec::{encode, Answer, GroupError};
use super::{sb, Ctx};
use crate::kafka::group::Groups;

/// Every group here uses the classic protocol.
const GROUP_TYPE: &str = "classic";

pub(super) fn list(
    ctx: &Ctx,
    groups: &Groups,
    c: i32,
    v: i16,
    req: &ListGroupsRequest,
) -> Result<Answer, GroupError> {
    let views = groups.lock().coord.groups();
    let wanted = |list: &[StrBytes], value: &str| {
        list.is_empty() || list.iter().any(|x| x.as_str().eq_ignore_ascii_case(value))
    };
    let listed = views
        .iter()
        .filter(|g| v < 4 || wanted(&req.states_filter, g.state.as_str()))
        .filter(|_| v < 5 || wanted(&req.types_filter, GROUP_TYPE))
        // As a broker: only the groups the principal may describe.
        .filter(|g| ctx.authz.group(&g.id))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(sb(&g.id)))
                .with_protocol_type(sb(&g.protocol_type))
                .with_group_state(sb(g.state.as_str()))
                .with_group_type(StrBytes::from_static_str(GROUP_TYPE))
        })
        .collect();
    let resp = ListGroupsResponse::default().with_groups(listed);
    encode("ListGroups", ApiKey::ListGroups, c, v, &resp)
}

pub(super) fn describe(
    ctx: &Ctx,
    groups: &Groups,
    c: i32,
    v: i16,
    req: &DescribeGroupsRequest,
) -> Result<Answer, GroupError> {
    let inner = groups.lock();
    let described = req
        .groups
        .iter()
        .map(|id| {
            let base = DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(i32::MIN);
            if id.is_empty() {
                return base.with_error_code(E::InvalidGroupId.code());
            }
            if !super::group_authz::allowed(ctx, id.as_str()) {
                return base.with_error_code(E::GroupAuthorizationFailed.code());
            }
            let Some(g) = inner.coord.group(id.as_str()) else {
                // Kafka: "Dead" before v6, GROUP_ID_NOT_FOUND from v6 on.
                let dead = base.with_group_state(StrBytes::from_static_str("Dead"));
                return if v >= 6 {
                    dead.with_error_code(E::GroupIdNotFound.code())
                        .with_error_message(Some(sb(&format!("group {} not found", id.as_str()))))
                } else {
                    dead
                };
            };
            let members = g
                .members
                .iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(sb(&m.id))
                        .with_group_instance_id(m.instance_id.as_deref().map(sb))
                        .with_client_id(sb(&m.client_id))
                        .with_client_host(sb(&m.client_host))
                        .with_member_metadata(m.metadata(&g.protocol))
                        .with_member_assignment(m.assignment.clone())
                })
                .collect();
            base.with_group_state(sb(g.state.as_str()))
                .with_protocol_type(sb(&g.protocol_type))
                .with_protocol_data(sb(&g.protocol))
                .with_members(members)
        })
        .collect();
    drop(inner);
    let resp = DescribeGroupsResponse::default().with_groups(described);
    encode("DescribeGroups", ApiKey::DescribeGroups, c, v, &resp)
}
