//! ApiVersions v0-v3: advertises exactly the served APIs and versions. A request at a newer
//! version than served gets a v0 response with UNSUPPORTED_VERSION and the ApiVersions range,
//! as Kafka answers it, so the client retries at a version both sides know.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use super::{served_range, SERVED};
use crate::kafka::chunk::{encode_response, Chunk, EncodeError};

fn entry(key: ApiKey, min: i16, max: i16) -> ApiVersion {
    ApiVersion::default()
        .with_api_key(key as i16)
        .with_min_version(min)
        .with_max_version(max)
}

/// The full answer, at a served `version`; `error_code` 0 or INVALID_REQUEST (body undecodable).
pub fn respond(
    correlation_id: i32,
    version: i16,
    error_code: i16,
) -> Result<Vec<Chunk>, EncodeError> {
    let body = ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(SERVED.iter().map(|&(k, lo, hi)| entry(k, lo, hi)).collect());
    // ApiVersions responses always use header v0 (clients parse them before knowing versions).
    encode_response("ApiVersions", correlation_id, 0, &body, version, &[])
}

/// The v0 UNSUPPORTED_VERSION answer to a too-new ApiVersions request.
pub fn respond_unsupported(correlation_id: i32) -> Result<Vec<Chunk>, EncodeError> {
    let (lo, hi) = served_range(ApiKey::ApiVersions).unwrap_or((0, 0));
    let body = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(vec![entry(ApiKey::ApiVersions, lo, hi)]);
    encode_response("ApiVersions", correlation_id, 0, &body, 0, &[])
}
