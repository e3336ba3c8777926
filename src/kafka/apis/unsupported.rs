//! Well-formed refusals for APIs the gateway does not serve (and does not advertise):
//! producing, consumer-group coordination, transactions, SASL. Each gets its own response
//! type with UNSUPPORTED_VERSION wherever the type carries an error code, so a client that
//! tries anyway gets a clear error instead of a dropped connection. APIs without such a
//! response here (admin, inter-broker) make the caller close the connection with a log line.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use crate::kafka::chunk::{encode_response, Chunk, EncodeError};

const REFUSED: i16 = ResponseError::UnsupportedVersion.code();

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

fn encode<M: Encodable + Message>(
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

fn decode<R: Decodable + Message>(
    key: ApiKey,
    version: i16,
    body: &mut Bytes,
) -> Result<R, RefuseError> {
    if version < R::VERSIONS.min || version > R::VERSIONS.max {
        return Err(RefuseError::NoResponse(key, version));
    }
    R::decode(body, version).map_err(|e| RefuseError::Decode(key, version, e))
}

/// The refusal for one request of a non-served API.
pub fn refuse(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &mut Bytes,
) -> Result<Vec<Chunk>, RefuseError> {
    let c = correlation_id;
    match key {
        ApiKey::Produce => {
            let req: ProduceRequest = decode(key, version, body)?;
            let responses = req
                .topic_data
                .iter()
                .map(|t| {
                    TopicProduceResponse::default()
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_partition_responses(
                            t.partition_data
                                .iter()
                                .map(|p| {
                                    let mut r = PartitionProduceResponse::default()
                                        .with_index(p.index)
                                        .with_error_code(ResponseError::InvalidRequest.code());
                                    if version >= 8 {
                                        r.error_message = Some(StrBytes::from_static_str(
                                            "kxgw is a read-only consumer gateway",
                                        ));
                                    }
                                    r
                                })
                                .collect(),
                        )
                })
                .collect();
            if req.acks == 0 {
                // acks=0 producers read no response; sending one would desynchronise them.
                return Ok(Vec::new());
            }
            encode(
                key,
                c,
                version,
                &ProduceResponse::default().with_responses(responses),
            )
        }
        ApiKey::FindCoordinator => {
            let req: FindCoordinatorRequest = decode(key, version, body)?;
            let resp =
                super::groups::coordinator_answer(&req, version, None, REFUSED, None, &|_| true);
            encode(key, c, version, &resp)
        }
        ApiKey::OffsetCommit => {
            let req: OffsetCommitRequest = decode(key, version, body)?;
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
                                        .with_error_code(REFUSED)
                                })
                                .collect(),
                        )
                })
                .collect();
            encode(
                key,
                c,
                version,
                &OffsetCommitResponse::default().with_topics(topics),
            )
        }
        ApiKey::OffsetFetch if version >= 2 => {
            let req: OffsetFetchRequest = decode(key, version, body)?;
            let mut resp = OffsetFetchResponse::default();
            if version >= 8 {
                resp.groups = req
                    .groups
                    .iter()
                    .map(|g| {
                        OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(REFUSED)
                    })
                    .collect();
            } else {
                resp.error_code = REFUSED;
            }
            encode(key, c, version, &resp)
        }
        ApiKey::JoinGroup => encode(
            key,
            c,
            version,
            &JoinGroupResponse::default().with_error_code(REFUSED),
        ),
        ApiKey::SyncGroup => encode(
            key,
            c,
            version,
            &SyncGroupResponse::default().with_error_code(REFUSED),
        ),
        ApiKey::Heartbeat => encode(
            key,
            c,
            version,
            &HeartbeatResponse::default().with_error_code(REFUSED),
        ),
        ApiKey::LeaveGroup => encode(
            key,
            c,
            version,
            &LeaveGroupResponse::default().with_error_code(REFUSED),
        ),
        ApiKey::ListGroups => encode(
            key,
            c,
            version,
            &ListGroupsResponse::default().with_error_code(REFUSED),
        ),
        ApiKey::InitProducerId => encode(
            key,
            c,
            version,
            &InitProducerIdResponse::default().with_error_code(REFUSED),
        ),
        ApiKey::SaslHandshake => encode(
            key,
            c,
            version,
            &SaslHandshakeResponse::default()
                .with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
        ),
        _ => Err(RefuseError::NoResponse(key, version)),
    }
}
