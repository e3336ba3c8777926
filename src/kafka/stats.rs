//! Listener counters: shared atomics, updated by the event loop, printed by `serve`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Every counter of one Kafka listener.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub conns_accepted: AtomicU64,
    /// Connections closed (any reason).
    pub conns_closed: AtomicU64,
    /// ApiVersions requests.
    pub req_api_versions: AtomicU64,
    /// Metadata requests.
    pub req_metadata: AtomicU64,
    /// ListOffsets requests.
    pub req_list_offsets: AtomicU64,
    /// Fetch requests.
    pub req_fetch: AtomicU64,
    /// Group coordinator requests (FindCoordinator, JoinGroup, OffsetCommit...).
    pub req_group: AtomicU64,
    /// Requests for APIs (or versions) this gateway does not serve.
    pub req_unsupported: AtomicU64,
    /// Fetches that waited for data (long poll).
    pub fetch_parked: AtomicU64,
    /// Waiting fetches answered because data arrived.
    pub fetch_woken: AtomicU64,
    /// Waiting fetches answered because max_wait_ms elapsed.
    pub fetch_expired: AtomicU64,
    /// Encoded protocol bytes sent (headers and fields).
    pub bytes_mem: AtomicU64,
    /// Record bytes sent with sendfile(2).
    pub bytes_sendfile: AtomicU64,
    /// Record bytes sent with pread + send.
    pub bytes_copy: AtomicU64,
    /// Connections closed for a bad length prefix or undecodable request.
    pub err_bad_request: AtomicU64,
    /// Partition-level errors returned (unknown topic, offset out of range, ...).
    pub err_partition: AtomicU64,
    /// Socket errors other than a peer reset, and segment files shorter than promised.
    pub err_io: AtomicU64,
    /// Responses that could not be encoded (connection closed).
    pub err_encode: AtomicU64,
    /// Authentication and authorization outcomes.
    pub auth: super::auth::stats::AuthStats,
}

/// Adds `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Adds one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let accepted = g(&self.conns_accepted);
        let closed = g(&self.conns_closed);
        write!(
            f,
            "connections open={} accepted={accepted} closed={closed} | requests ApiVersions={} \
             Metadata={} ListOffsets={} Fetch={} group={} unsupported={} | fetch parked={} woken={} \
             expired={} | bytes sent header={} sendfile={} copy={} | errors bad_request={} \
             partition={} io={} encode={} | {}",
            accepted.saturating_sub(closed),
            g(&self.req_api_versions),
            g(&self.req_metadata),
            g(&self.req_list_offsets),
            g(&self.req_fetch),
            g(&self.req_group),
            g(&self.req_unsupported),
            g(&self.fetch_parked),
            g(&self.fetch_woken),
            g(&self.fetch_expired),
            g(&self.bytes_mem),
            g(&self.bytes_sendfile),
            g(&self.bytes_copy),
            g(&self.err_bad_request),
            g(&self.err_partition),
            g(&self.err_io),
            g(&self.err_encode),
            self.auth,
        )
    }
}

impl Stats {
    /// Writes the counters as `kxgw_kafka_*` metrics (a provider for [`crate::metrics`]).
    pub fn write_metrics(&self, w: &mut crate::metrics::MetricsWriter) {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let accepted = g(&self.conns_accepted);
        let closed = g(&self.conns_closed);
        w.gauge(
            "kafka_connections_open",
            "Kafka listener connections open",
            &[],
            accepted.saturating_sub(closed) as f64,
        );
        w.counter(
            "kafka_connections_accepted_total",
            "Kafka listener connections accepted",
            &[],
            accepted,
        );
        for (api, c) in [
            ("ApiVersions", &self.req_api_versions),
            ("Metadata", &self.req_metadata),
            ("ListOffsets", &self.req_list_offsets),
            ("Fetch", &self.req_fetch),
            ("group", &self.req_group),
            ("unsupported", &self.req_unsupported),
        ] {
            w.counter(
                "kafka_requests_total",
                "Kafka requests by API",
                &[("api", api)],
                g(c),
            );
        }
        for (outcome, c) in [
            ("parked", &self.fetch_parked),
            ("woken", &self.fetch_woken),
            ("expired", &self.fetch_expired),
        ] {
            w.counter(
                "kafka_fetch_waits_total",
                "Long-poll fetches: waited, answered on append, answered at max_wait_ms",
                &[("outcome", outcome)],
                g(c),
            );
        }
        for (kind, c) in [
            ("header", &self.bytes_mem),
            ("sendfile", &self.bytes_sendfile),
            ("copy", &self.bytes_copy),
        ] {
            w.counter(
                "kafka_bytes_sent_total",
                "Bytes sent: encoded protocol bytes, record bytes by sendfile or by copy",
                &[("kind", kind)],
                g(c),
            );
        }
        for (kind, c) in [
            ("bad_request", &self.err_bad_request),
            ("partition", &self.err_partition),
            ("io", &self.err_io),
            ("encode", &self.err_encode),
        ] {
            w.counter(
                "kafka_errors_total",
                "Kafka listener errors by kind",
                &[("kind", kind)],
                g(c),
            );
        }
        self.auth.write_metrics(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_the_counters() {
        let s = Stats::default();
        add(&s.bytes_sendfile, 1234);
        inc(&s.req_fetch);
        inc(&s.conns_accepted);
        let m = crate::metrics::Metrics::new();
        let s = std::sync::Arc::new(s);
        let s2 = s.clone();
        m.register(move |w| s2.write_metrics(w));
        let text = m.render();
        assert!(
            text.contains("kxgw_kafka_bytes_sent_total{kind=\"sendfile\"} 1234"),
            "{text}"
        );
        assert!(
            text.contains("kxgw_kafka_requests_total{api=\"Fetch\"} 1"),
            "{text}"
        );
        assert!(text.contains("kxgw_kafka_connections_open 1"), "{text}");
    }
}
