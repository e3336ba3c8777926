//! `kxgw serve`'s TLS flags: the SSL and SASL_SSL Kafka listeners (as a broker's `listeners`)
//! and their certificate, key and client CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use kxgw::kafka::auth::{Acl, SaslConfig, Security};
use kxgw::kafka::tls::TlsServer;

/// Kafka listener TLS.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// An SSL Kafka listener (TLS with --tls-cert and --tls-key; with --tls-client-ca,
    /// clients must present a certificate, whose subject is their principal).
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key"])]
    pub kafka_listen_ssl: Option<SocketAddr>,
    /// A SASL_SSL Kafka listener: SASL as on --kafka-listen-sasl, inside TLS.
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key", "sasl_users"])]
    pub kafka_listen_sasl_ssl: Option<SocketAddr>,
    /// Certificate chain (PEM, server certificate first) of the SSL and SASL_SSL listeners.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, SEC1 or PKCS#1) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): the SSL listener requires a client certificate they signed and
    /// names the client by its subject (User:CN=..,OU=..,O=.., as Kafka's default principal
    /// builder); the SASL_SSL listener authenticates with SASL only.
    #[arg(long, value_name = "FILE", requires = "kafka_listen_ssl")]
    pub tls_client_ca: Option<PathBuf>,
    /// A TLS handshake not done within this closes the connection.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub tls_handshake_timeout_ms: u64,
}

impl TlsArgs {
    /// The SSL and SASL_SSL listeners asked for, with `sasl` and `acl` applied as on the
    /// other listeners.
    pub fn listeners(
        &self,
        sasl: Option<Arc<SaslConfig>>,
        acl: Option<Arc<Acl>>,
    ) -> Result<Vec<(SocketAddr, Security)>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(Vec::new());
        };
        if self.kafka_listen_ssl.is_none() && self.kafka_listen_sasl_ssl.is_none() {
            bail!("--tls-cert needs a TLS listener: --kafka-listen-ssl or --kafka-listen-sasl-ssl");
        }
        let timeout = Duration::from_millis(self.tls_handshake_timeout_ms.max(1));
        let mut out = Vec::new();
        if let Some(addr) = self.kafka_listen_ssl {
            let tls = TlsServer::load(cert, key, self.tls_client_ca.as_deref(), timeout)?;
            let sec = Security {
                sasl: None,
                acl: acl.clone(),
                tls: Some(Arc::new(tls)),
                ..Security::default()
            };
            out.push((addr, sec));
        }
        if let Some(addr) = self.kafka_listen_sasl_ssl {
            let tls = TlsServer::load(cert, key, None, timeout)?;
            out.push((
                addr,
                Security {
                    sasl,
                    acl,
                    tls: Some(Arc::new(tls)),
                    ..Security::default()
                },
            ));
        }
        Ok(out)
    }
}
