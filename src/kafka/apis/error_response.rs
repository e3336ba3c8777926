//! The response refusing a whole request of API `key` with error code `code`: at top level
//! where the response type has an error code, else in every partition (or group) the request
//! names. One table for the APIs the gateway does not serve ([`super::unsupported`],
//! UNSUPPORTED_VERSION) and the group requests a principal may not make
//! ([`super::group_authz`], GROUP_AUTHORIZATION_FAILED).

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Message};

use crate::kafka::chunk::{encode_response, Chunk, EncodeError};

/// Why no refusal could be built.
#[derive(Debug, thiserror::Error)]
pub enum RefuseError {
    /// No refusal is defined for this API, or the version is outside what the codec knows.
    #[error("API {0:?} v{1} is not served and has no error response here")]
    NoResponse(ApiKey, i16),
    /// The request body does not decode.
    #[error("{0:?} v{1} request body does not decode: {2:#}")]
    Decode(ApiKey, i16, anyhow::Error),
    /// The refusal did not encode.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

pub(super) fn encode<M: Encodable + Message>(
    key: ApiKey,
    correlation_id: i32,
    version: i16,
    body: &M,
) -> Result<Vec<Chunk>, RefuseError> {
    if version < M::VERSIONS.min || version > M::VERSIONS.max {
        return Err(RefuseError::NoResponse(key, version));
    }
    let hv = key.response_header_version(version);
    Ok(encode_response(
        "refusal",
        correlation_id,
        hv,
        body,
        version,
        &[],
    )?)
}

pub(super) fn decode<R: Decodable + Message>(
    key: ApiKey,
    version: i16,
    body: &mut Bytes,
) -> Result<R, RefuseError> {
    if version < R::VERSIONS.min || version > R::VERSIONS.max {
        return Err(RefuseError::NoResponse(key, version));
    }
    R::decode(body, version).map_err(|e| RefuseError::Decode(key, version, e))
}

/// The encoded response of API `key` v`version` refusing the request in `body` with `code`.
/// The body is decoded only where the response lists what the request named.
pub fn error_response(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    code: i16,
    body: &mut Bytes,
) -> Result<Vec<Chunk>, RefuseError> {
    let c = correlation_id;
    match key {
        ApiKey::OffsetCommit => {
            let req: OffsetCommitRequest = decode(key, version, body)?;
            encode(key, c, version, &offset_commit(&req, code))
        }
        ApiKey::OffsetFetch => {
            let req: OffsetFetchRequest = decode(key, version, body)?;
            encode(key, c, version, &offset_fetch(&req, version, code))
        }
        ApiKey::JoinGroup => {
            let resp = JoinGroupResponse::default().with_error_code(code);
            encode(key, c, version, &resp)
        }
        ApiKey::SyncGroup => {
            let resp = SyncGroupResponse::default().with_error_code(code);
            encode(key, c, version, &resp)
        }
        ApiKey::Heartbeat => {
            let resp = HeartbeatResponse::default().with_error_code(code);
            encode(key, c, version, &resp)
        }
        ApiKey::LeaveGroup => {
            let resp = LeaveGroupResponse::default().with_error_code(code);
            encode(key, c, version, &resp)
        }
        ApiKey::ListGroups => {
            let resp = ListGroupsResponse::default().with_error_code(code);
            encode(key, c, version, &resp)
        }
        ApiKey::OffsetDelete => {
            let resp = OffsetDeleteResponse::default().with_error_code(code);
            encode(key, c, version, &resp)
        }
        ApiKey::InitProducerId => {
            let resp = InitProducerIdResponse::default().with_error_code(code);
            encode(key, c, version, &resp)
        }
        ApiKey::SaslHandshake => {
            let resp = SaslHandshakeResponse::default().with_error_code(code);
            encode(key, c, version, &resp)
        }
        _ => Err(RefuseError::NoResponse(key, version)),
    }
}

/// OffsetCommit has no top-level error: every partition carries it (as Kafka).
fn offset_commit(req: &OffsetCommitRequest, code: i16) -> OffsetCommitResponse {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// OffsetFetch v8+ carries the error per group, v2-v7 at top level, v1 per partition.
fn offset_fetch(req: &OffsetFetchRequest, version: i16, code: i16) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    if version >= 8 {
        resp.groups = req
            .groups
            .iter()
            .map(|g| {
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_error_code(code)
            })
            .collect();
    } else if version >= 2 {
        resp.error_code = code;
    } else {
        resp.topics = req
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
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
    }
    resp
}
