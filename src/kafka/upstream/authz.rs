//! Cluster mode on a SASL listener: before a topic is served locally (Fetch, ListOffsets,
//! OffsetForLeaderEpoch) or named in a fetch ticket (FetchTicket), the cluster is asked
//! whether the client's principal may read it, on that client's own authenticated upstream
//! connection: a Metadata request for the topics with
//! `include_topic_authorized_operations`, the READ bit of each topic's
//! `topic_authorized_operations` (TOPIC_AUTHORIZATION_FAILED: no). Answers are cached per
//! (principal, topic) for `--authz-cache-ms`, so a revoked ACL stops local serving within
//! that time, and most requests need no round trip.

use std::time::Duration;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, FetchRequest, ListOffsetsRequest, MetadataRequest, OffsetForLeaderEpochRequest,
    RequestHeader, TopicName,
};
use kafka_protocol::protocol::Decodable;

use crate::kafka::apis::{sb, Ctx};

/// The Metadata version of the ask (v8 is the first with authorized operations).
pub const ASK_VERSION: i16 = 9;
/// Default of `--authz-cache-ms`.
pub const DEFAULT_TTL: Duration = Duration::from_millis(5000);

/// The ask: Metadata for `topics` with their authorized operations, never creating them.
pub fn ask(topics: &[String]) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(
            topics
                .iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(sb(t)))))
                .collect(),
        ))
        .with_allow_auto_topic_creation(false)
        .with_include_topic_authorized_operations(true)
}

/// The topics a locally served request reads (Fetch, ListOffsets v1+,
/// OffsetForLeaderEpoch, and the FetchTicket extension, whose ticket opens the UDP/AF_XDP
/// path to them), by name (ids resolved through the local log), deduplicated; None for other
/// requests and for requests that do not decode (their handler refuses them).
pub fn requested_topics(ctx: &Ctx, frame: &Bytes) -> Option<Vec<String>> {
    let mut b = frame.clone();
    if b.remaining() < 4 {
        return None;
    }
    if crate::kafka::apis::fetch_ticket::is_request(frame) {
        return crate::kafka::apis::fetch_ticket::requested_topics(frame);
    }
    let key = ApiKey::try_from(i16::from_be_bytes([b[0], b[1]])).ok()?;
    let version = i16::from_be_bytes([b[2], b[3]]);
    if !matches!(
        key,
        ApiKey::Fetch | ApiKey::ListOffsets | ApiKey::OffsetForLeaderEpoch
    ) || crate::kafka::apis::served_range(key)
        .is_none_or(|(lo, hi)| version < lo || version > hi)
    {
        return None;
    }
    RequestHeader::decode(&mut b, key.request_header_version(version)).ok()?;
    crate::kafka::bounds::check(key, version, &b).ok()?;
    let mut names: Vec<String> = match key {
        ApiKey::Fetch => {
            let req = FetchRequest::decode(&mut b, version).ok()?;
            req.topics
                .iter()
                .filter_map(|t| {
                    if version >= 13 {
                        ctx.topic_by_id(t.topic_id)
                    } else {
                        Some(t.topic.0.to_string())
                    }
                })
                .collect()
        }
        // v0 has its own decoder (see list_offsets::v0); unasked, its topics are refused.
        ApiKey::ListOffsets if version == 0 => return None,
        ApiKey::ListOffsets => ListOffsetsRequest::decode(&mut b, version)
            .ok()?
            .topics
            .iter()
            .map(|t| t.name.0.to_string())
            .collect(),
        _ => OffsetForLeaderEpochRequest::decode(&mut b, version)
            .ok()?
            .topics
            .iter()
            .map(|t| t.topic.0.to_string())
            .collect(),
    };
    names.sort_unstable();
    names.dedup();
    Some(names)
}
