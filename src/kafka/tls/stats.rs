//! TLS counters of a Kafka listener (part of the auth stats: `kxgw stats`, /metrics as
//! `kxgw_kafka_tls_total{outcome=...}`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a TLS connection ended before (or instead of) carrying Kafka requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Handshake completed.
    Ok,
    /// The first bytes are not a TLS record (a PLAINTEXT client, HTTP, noise).
    NotTls,
    /// TLS records that do not parse or break the protocol.
    Malformed,
    /// No protocol version or cipher suite in common.
    Incompatible,
    /// The client refused us with an alert (e.g. it does not trust the certificate).
    ClientAlert,
    /// A client certificate missing or not signed by the client CA.
    ClientCert,
    /// The connection ended during the handshake.
    Truncated,
    /// The handshake took longer than the handshake timeout.
    Timeout,
    /// Anything else rustls refused.
    Other,
}

impl Outcome {
    /// The cause of a rustls error.
    pub fn of(e: &rustls::Error) -> Outcome {
        use rustls::{Error as E, InvalidMessage as M};
        match e {
            E::InvalidMessage(M::InvalidContentType | M::UnknownProtocolVersion) => Outcome::NotTls,
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerMisbehaved(_)
            | E::PeerSentOversizedRecord
            | E::DecryptError => Outcome::Malformed,
            E::PeerIncompatible(_) => Outcome::Incompatible,
            E::AlertReceived(_) => Outcome::ClientAlert,
            E::NoCertificatesPresented | E::InvalidCertificate(_) => Outcome::ClientCert,
            _ => Outcome::Other,
        }
    }
}

/// TLS outcomes of one listener set.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Handshakes completed.
    pub ok: AtomicU64,
    /// See [`Outcome`].
    pub not_tls: AtomicU64,
    /// See [`Outcome`].
    pub malformed: AtomicU64,
    /// See [`Outcome`].
    pub incompatible: AtomicU64,
    /// See [`Outcome`].
    pub client_alert: AtomicU64,
    /// See [`Outcome`].
    pub client_cert: AtomicU64,
    /// See [`Outcome`].
    pub truncated: AtomicU64,
    /// See [`Outcome`].
    pub timeout: AtomicU64,
    /// See [`Outcome`].
    pub other: AtomicU64,
}

impl TlsStats {
    /// Counts one outcome.
    pub fn count(&self, o: Outcome) {
        let c = match o {
            Outcome::Ok => &self.ok,
            Outcome::NotTls => &self.not_tls,
            Outcome::Malformed => &self.malformed,
            Outcome::Incompatible => &self.incompatible,
            Outcome::ClientAlert => &self.client_alert,
            Outcome::ClientCert => &self.client_cert,
            Outcome::Truncated => &self.truncated,
            Outcome::Timeout => &self.timeout,
            Outcome::Other => &self.other,
        };
        c.fetch_add(1, Relaxed);
    }

    fn rows(&self) -> [(&'static str, &AtomicU64); 9] {
        [
            ("ok", &self.ok),
            ("not_tls", &self.not_tls),
            ("malformed", &self.malformed),
            ("incompatible", &self.incompatible),
            ("client_alert", &self.client_alert),
            ("client_cert", &self.client_cert),
            ("truncated", &self.truncated),
            ("timeout", &self.timeout),
            ("other", &self.other),
        ]
    }

    /// Writes `kxgw_kafka_tls_total{outcome=...}`.
    pub fn write_metrics(&self, w: &mut crate::metrics::MetricsWriter) {
        for (outcome, c) in self.rows() {
            w.counter(
                "kafka_tls_total",
                "Kafka listener TLS handshakes completed and connections closed by TLS, by cause",
                &[("outcome", outcome)],
                c.load(Relaxed),
            );
        }
    }
}

impl fmt::Display for TlsStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls")?;
        for (name, c) in self.rows() {
            write!(f, " {name}={}", c.load(Relaxed))?;
        }
        Ok(())
    }
}
