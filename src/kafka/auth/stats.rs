//! Authentication and authorization counters of a Kafka listener (part of
//! [`crate::kafka::stats::Stats`], printed by `kxgw stats` and served on /metrics).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Outcomes of SASL exchanges and authorization checks.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Successful authentications.
    pub ok: AtomicU64,
    /// Unknown user or wrong password.
    pub failed_credentials: AtomicU64,
    /// Tokens that do not follow the mechanism's grammar.
    pub failed_malformed: AtomicU64,
    /// SaslHandshakes naming a mechanism not offered.
    pub unsupported_mechanism: AtomicU64,
    /// Attempts refused unchecked: too many recent failures from the address.
    pub rate_limited: AtomicU64,
    /// Connections closed for a request other than ApiVersions / SASL before authenticating.
    pub unauthenticated_request: AtomicU64,
    /// Topics refused with TOPIC_AUTHORIZATION_FAILED (or hidden from Metadata).
    pub denied_topic: AtomicU64,
    /// Group requests refused with GROUP_AUTHORIZATION_FAILED.
    pub denied_group: AtomicU64,
    /// Cluster mode: relayed SASL logins the cluster refused.
    pub failed_upstream: AtomicU64,
    /// Cluster mode: topic authorizations asked of the cluster (not answered from the cache).
    pub authz_asked: AtomicU64,
    /// Fetch tickets issued (extension request).
    pub tickets_issued: AtomicU64,
    /// TLS handshakes and the causes of connections TLS closed.
    pub tls: crate::kafka::tls::TlsStats,
}

impl AuthStats {
    fn rows(&self) -> [(&'static str, &AtomicU64); 11] {
        [
            ("ok", &self.ok),
            ("failed_credentials", &self.failed_credentials),
            ("failed_malformed", &self.failed_malformed),
            ("unsupported_mechanism", &self.unsupported_mechanism),
            ("rate_limited", &self.rate_limited),
            ("unauthenticated_request", &self.unauthenticated_request),
            ("denied_topic", &self.denied_topic),
            ("denied_group", &self.denied_group),
            ("failed_upstream", &self.failed_upstream),
            ("authz_asked", &self.authz_asked),
            ("ticket_issued", &self.tickets_issued),
        ]
    }

    /// Writes `kxgw_kafka_auth_total{outcome=...}`.
    pub fn write_metrics(&self, w: &mut crate::metrics::MetricsWriter) {
        for (outcome, c) in self.rows() {
            w.counter(
                "kafka_auth_total",
                "Kafka listener authentication and authorization outcomes",
                &[("outcome", outcome)],
                c.load(Relaxed),
            );
        }
        self.tls.write_metrics(w);
    }
}

impl fmt::Display for AuthStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "auth")?;
        for (name, c) in self.rows() {
            write!(f, " {name}={}", c.load(Relaxed))?;
        }
        write!(f, " | {}", self.tls)
    }
}
