//! Well-formed refusals for APIs the gateway does not serve (and does not advertise):
//! producing, consumer-group coordination, transactions, SASL. Each gets its own response
//! type with UNSUPPORTED_VERSION wherever the type carries an error code, so a client that
//! tries anyway gets a clear error instead of a dropped connection. APIs without such a
//! response here (admin, inter-broker) make the caller close the connection with a log line.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

pub use super::error_response::RefuseError;
use super::error_response::{decode, encode, error_response};
use crate::kafka::chunk::Chunk;

const REFUSED: i16 = ResponseError::UnsupportedVersion.code();

/// The refusal for one request of a non-served API.
pub fn refuse(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &mut Bytes,
) -> Result<Vec<Chunk>, RefuseError> {
    let c = correlation_id;
    match key {
        ApiKey::Produce => refuse_produce(version, c, body),
        ApiKey::FindCoordinator => {
            let req: FindCoordinatorRequest = decode(key, version, body)?;
            let resp =
                super::groups::coordinator_answer(&req, version, None, REFUSED, None, &|_| true);
            encode(key, c, version, &resp)
        }
        // No refusal for OffsetFetch v0-v1 here.
        ApiKey::OffsetFetch if version < 2 => Err(RefuseError::NoResponse(key, version)),
        ApiKey::SaslHandshake => error_response(
            key,
            version,
            c,
            ResponseError::UnsupportedSaslMechanism.code(),
            body,
        ),
        _ => error_response(key, version, c, REFUSED, body),
    }
}

/// Produce: INVALID_REQUEST in every partition ("read-only"), nothing at all for acks=0.
fn refuse_produce(
    version: i16,
    correlation_id: i32,
    body: &mut Bytes,
) -> Result<Vec<Chunk>, RefuseError> {
    let key = ApiKey::Produce;
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
        correlation_id,
        version,
        &ProduceResponse::default().with_responses(responses),
    )
}
