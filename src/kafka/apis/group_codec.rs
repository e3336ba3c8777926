//! What the group API modules share (groups, group_admin, group_offsets, group_authz): the
//! answer and error types and the codec helpers. Its own module so that none of them imports
//! another's internals in a circle.

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use crate::kafka::chunk::{encode_response, Chunk, EncodeError};
use crate::kafka::group::WaiterId;

/// A request parked until the coordinator replies.
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    /// The coordinator's waiter id.
    pub waiter: WaiterId,
    /// JoinGroup or SyncGroup.
    pub api: ApiKey,
    /// Request version.
    pub version: i16,
    /// Request correlation id.
    pub correlation_id: i32,
}

/// What a group request turned into.
pub enum Answer {
    /// The response.
    Now(Vec<Chunk>),
    /// No response yet.
    Wait(Pending),
}

/// Why a group request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The body does not decode.
    #[error("{0}")]
    Decode(String),
    /// The response does not encode.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

pub(super) fn decode<R: Decodable>(body: &mut Bytes, version: i16) -> Result<R, GroupError> {
    R::decode(body, version).map_err(|e| GroupError::Decode(format!("{e:#}")))
}

pub(super) fn encode<M: Encodable + Message>(
    what: &'static str,
    key: ApiKey,
    correlation_id: i32,
    version: i16,
    body: &M,
) -> Result<Answer, GroupError> {
    let hv = key.response_header_version(version);
    Ok(Answer::Now(encode_response(
        what,
        correlation_id,
        hv,
        body,
        version,
        &[],
    )?))
}

pub(super) fn s(v: &StrBytes) -> String {
    v.as_str().to_string()
}
