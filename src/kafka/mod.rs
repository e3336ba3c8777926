//! The Kafka-protocol TCP listener (consumer subset): the fallback path for ordinary NICs and
//! stock clients (kcat, kafka-python, librdkafka), and the sendfile / copy baselines.
//!
//! - [`frame`]: request and response framing (size prefix, header, correlation id) and its
//!   limits, for the listener and every client.
//! - [`bounds`]: array counts checked against the body size before the codec allocates.
//! - [`apis`]: one handler per served API (ApiVersions, Metadata, ListOffsets, Fetch, the
//!   group coordinator APIs) and refusals for the rest.
//! - [`group`]: the group coordinator (classic protocol) and its durable offsets.
//! - [`chunk`]: responses as in-memory pieces and segment-file ranges, spliced at encode time.
//! - [`session`]: one connection as a sans-I/O state machine (bytes in, chunks out).
//! - [`outq`]: writing chunks to a non-blocking socket with sendfile(2) or pread + send.
//! - [`server`]: the mio event loop that owns the sockets.
//! - [`authority`]: who decides topic reads (the ACL file, or the cluster's cached answers).
//! - [`upstream`]: cluster mode (`--upstream`): forwarding, rewrites, the live high watermark.
//! - [`fetch_advert`]: the fetch endpoint advertised in Metadata (a tagged field).
//! - [`tls`]: TLS on the SSL and SASL_SSL listeners (rustls), a layer between socket and
//!   session.
//! - [`stats`]: the counters printed on SIGUSR1 and every `--stats-interval`.
//! - [`client`]: the one blocking Kafka client (the `kxgw consume` fallback, the benches and
//!   the tests).

pub mod apis;
pub mod auth;
#[cfg(test)]
mod auth_session_tests;
pub mod authority;
pub mod bounds;
pub mod chunk;
pub mod client;
pub mod fetch_advert;
#[cfg(test)]
mod fetch_tests;
pub mod frame;
pub mod group;
#[cfg(test)]
mod group_authz_tests;
pub mod group_member;
#[cfg(test)]
mod group_session_tests;
pub mod outq;
pub mod server;
pub mod session;
pub mod stats;
#[cfg(test)]
mod testkit;
pub mod ticket_client;
#[cfg(test)]
mod ticket_session_tests;
pub mod tls;
pub mod upstream;

pub use outq::IoMode;
pub use server::{KafkaConfig, KafkaListener};

/// Starts a Kafka listener serving `log` (what `kxgw serve --kafka-listen` runs).
pub fn start(
    cfg: KafkaConfig,
    log: std::sync::Arc<crate::log::LogDir>,
) -> anyhow::Result<KafkaListener> {
    KafkaListener::start(cfg, log)
}
