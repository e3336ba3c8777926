//! Who decides whether a principal may read a topic ([`ReadAuthority`]), the cluster's
//! cached answers ([`AuthzCache`], cluster mode) and a relaying listener's settings
//! ([`RelayConfig`]). Its own module because both sides use it: [`crate::kafka::auth`] (a
//! connection's `Authz`, the listener's `Security`) and [`crate::kafka::upstream`] (the relay
//! that asks the cluster and fills the cache), so neither imports the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::MetadataResponse;

use crate::kafka::auth::limiter::FailLimiter;

/// Kafka's AclOperation READ, as a bit of `topic_authorized_operations`.
pub const READ_BIT: i32 = 1 << 3;
/// Kafka's AclOperation DESCRIBE, as a bit of `topic_authorized_operations`.
pub const DESCRIBE_BIT: i32 = 1 << 8;
/// Past this many entries, expired ones are dropped at the next answer.
const PURGE_AT: usize = 10_000;

/// Who decides whether a principal may read a topic: the ACL file in standalone mode, the
/// cluster (asked on the client's authenticated upstream connection, cached) in cluster mode.
/// Fetch tickets and the Kafka handlers ask the same question through it.
pub trait ReadAuthority: Send + Sync {
    /// Whether `principal` (`User:name`) may describe and read `topic` at `now`: Some when
    /// decided, None when it must first be asked (cluster mode: never asked, or the answer
    /// is older than the cache time).
    fn may_read(&self, principal: &str, topic: &str, now: Instant) -> Option<bool>;
}

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

/// A relaying listener's settings, shared by its connections.
#[derive(Debug)]
pub struct RelayConfig {
    /// The cluster's answers about topic reads.
    pub cache: Arc<AuthzCache>,
    /// Logins the cluster refused, per client address.
    pub(crate) limiter: Mutex<FailLimiter>,
}

impl RelayConfig {
    /// Answers trusted for `ttl`; failed logins limited as on a standalone SASL listener.
    pub fn new(ttl: Duration) -> Self {
        RelayConfig {
            cache: Arc::new(AuthzCache::new(ttl)),
            limiter: Mutex::new(FailLimiter::new(Default::default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::apis::sb;
    use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
    use kafka_protocol::messages::TopicName;

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
