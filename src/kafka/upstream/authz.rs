//! Cluster mode on a SASL listener: before a topic is served locally (Fetch, ListOffsets,
//! OffsetForLeaderEpoch) or named in a fetch ticket (FetchTicket), the cluster is asked
//! whether the client's principal may read it, on that client's own authenticated upstream
//! connection: a Metadata request for the topics with
//! `include_topic_authorized_operations`, the READ bit of each topic's
//! `topic_authorized_operations` (TOPIC_AUTHORIZATION_FAILED: no). Answers are cached per
//! (principal, topic) for `--authz-cache-ms`, so a revoked ACL stops local serving within
//! that time, and most requests need no round trip.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, FetchRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    OffsetForLeaderEpochRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::Decodable;

use crate::kafka::apis::{sb, Ctx};
use crate::kafka::auth::ReadAuthority;

/// Kafka's AclOperation READ, as a bit of `topic_authorized_operations`.
pub const READ_BIT: i32 = 1 << 3;
/// Kafka's AclOperation DESCRIBE, as a bit of `topic_authorized_operations`.
pub const DESCRIBE_BIT: i32 = 1 << 8;
/// The Metadata version of the ask (v8 is the first with authorized operations).
pub const ASK_VERSION: i16 = 9;
/// Default of `--authz-cache-ms`.
pub const DEFAULT_TTL: Duration = Duration::from_millis(5000);
/// Past this many entries, expired ones are dropped at the next answer.
const PURGE_AT: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Entry {
    allowed: bool,
    answered: Instant,
}

/// The cluster's answers, per principal and topic, shared by a listener's connections.
#[derive(Debug)]
pub struct AuthzCache {
    ttl: Duration,
    answers: Mutex<HashMap<String, HashMap<String, Entry>>>,
}

impl AuthzCache {
    /// Answers are trusted for `ttl` after they arrive.
    pub fn new(ttl: Duration) -> Self {
        AuthzCache {
            ttl,
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// How long an answer is trusted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Records the cluster's answer for `principal` and `topic`, received at `now`.
    pub fn learn(&self, principal: &str, topic: &str, allowed: bool, now: Instant) {
        let mut m = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if m.values().map(HashMap::len).sum::<usize>() > PURGE_AT {
            let ttl = self.ttl;
            for per in m.values_mut() {
                per.retain(|_, e| now.saturating_duration_since(e.answered) <= ttl);
            }
            m.retain(|_, per| !per.is_empty());
        }
        m.entry(principal.to_string()).or_default().insert(
            topic.to_string(),
            Entry {
                allowed,
                answered: now,
            },
        );
    }

    /// Records every topic of the cluster's Metadata answer to an ask for `asked`; a topic
    /// missing from it is not readable. Returns how many were allowed.
    pub fn learn_answer(
        &self,
        principal: &str,
        asked: &[String],
        resp: &MetadataResponse,
        now: Instant,
    ) -> usize {
        let mut allowed = 0;
        for t in asked {
            let found = resp
                .topics
                .iter()
                .find(|r| r.name.as_ref().is_some_and(|n| n.0.as_str() == t));
            let ok = found.is_some_and(readable);
            if !ok {
                log::debug!(
                    "authz: the cluster refuses {principal} reading {t} (error {:?})",
                    found.map(|r| r.error_code)
                );
            }
            allowed += usize::from(ok);
            self.learn(principal, t, ok, now);
        }
        allowed
    }
}

impl ReadAuthority for AuthzCache {
    fn may_read(&self, principal: &str, topic: &str, now: Instant) -> Option<bool> {
        let m = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.get(principal)?.get(topic)?;
        (now.saturating_duration_since(e.answered) <= self.ttl).then_some(e.allowed)
    }
}

/// Whether a Metadata topic entry grants READ. TOPIC_AUTHORIZATION_FAILED, an unknown
/// topic, or operations not given (INT32_MIN) all mean no.
fn readable(t: &kafka_protocol::messages::metadata_response::MetadataResponseTopic) -> bool {
    if t.error_code == ResponseError::TopicAuthorizationFailed.code()
        || t.error_code == ResponseError::UnknownTopicOrPartition.code()
    {
        return false;
    }
    let ops = t.topic_authorized_operations;
    ops != i32::MIN && ops & READ_BIT != 0
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::MetadataResponseTopic;

    fn topic(name: &str, code: i16, ops: i32) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(sb(name))))
            .with_error_code(code)
            .with_topic_authorized_operations(ops)
    }

    #[test]
    fn answers_are_read_bits_and_expire_after_the_ttl() {
        let c = AuthzCache::new(Duration::from_millis(100));
        let t0 = Instant::now();
        let asked: Vec<String> = ["t", "u", "v", "w", "gone"].map(String::from).to_vec();
        let resp = MetadataResponse::default().with_topics(vec![
            topic("t", 0, READ_BIT | DESCRIBE_BIT),
            topic("u", 29, i32::MIN),
            topic("v", 0, DESCRIBE_BIT),
            topic("w", 0, i32::MIN),
        ]);
        assert_eq!(c.learn_answer("User:a", &asked, &resp, t0), 1);
        let at = |t: &str, d: u64| c.may_read("User:a", t, t0 + Duration::from_millis(d));
        assert_eq!(at("t", 0), Some(true));
        assert_eq!(at("t", 100), Some(true), "trusted for the whole ttl");
        assert_eq!(at("t", 101), None, "then asked again");
        for t in ["u", "v", "w", "gone"] {
            assert_eq!(at(t, 50), Some(false), "{t}");
        }
        assert_eq!(c.may_read("User:b", "t", t0), None, "per principal");
    }
}
