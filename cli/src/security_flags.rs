//! `kxgw serve`'s Kafka listener security flags: listeners by security protocol (as a
//! broker's `listeners`), the SASL users file and the ACL file; TLS in [`crate::tls_flags`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use kxgw::kafka::auth::{Acl, SaslConfig, Security, Users};

/// Kafka listener authentication and authorization.
#[derive(Debug, clap::Args)]
pub struct SecurityArgs {
    /// A SASL_PLAINTEXT Kafka listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 against
    /// --sasl-users), beside or instead of the PLAINTEXT --kafka-listen.
    #[arg(long, value_name = "ADDR:PORT", requires = "sasl_users")]
    pub kafka_listen_sasl: Option<SocketAddr>,
    /// SASL credentials file (written by `kxgw users add`).
    #[arg(long, value_name = "FILE")]
    pub sasl_users: Option<PathBuf>,
    /// ACL file: once given, every listener denies the topics and groups it does not allow
    /// (PLAINTEXT clients are User:ANONYMOUS).
    #[arg(long, value_name = "FILE")]
    pub acl: Option<PathBuf>,
    /// The SSL and SASL_SSL listeners.
    #[command(flatten)]
    pub tls: crate::tls_flags::TlsArgs,
}

impl SecurityArgs {
    /// The security of the PLAINTEXT listener, and the other listeners asked for (SASL,
    /// SSL, SASL_SSL, in that order) with theirs.
    pub fn load(&self) -> Result<(Security, Vec<(SocketAddr, Security)>)> {
        let acl = match &self.acl {
            Some(p) => Some(Arc::new(Acl::load(p)?)),
            None => None,
        };
        let plain = Security {
            acl: acl.clone(),
            ..Security::default()
        };
        let sasl_listener =
            self.kafka_listen_sasl.is_some() || self.tls.kafka_listen_sasl_ssl.is_some();
        // One SaslConfig for both SASL listeners: failures are rate-limited across them.
        let sasl = match &self.sasl_users {
            Some(_) if !sasl_listener => bail!(
                "--sasl-users needs a SASL listener: --kafka-listen-sasl or --kafka-listen-sasl-ssl"
            ),
            Some(file) => {
                let users = Users::load(file)?;
                if users.users.is_empty() {
                    log::warn!("{}: no users: every SASL login will fail", file.display());
                }
                Some(Arc::new(SaslConfig::new(users)))
            }
            None => None,
        };
        let mut extra = Vec::new();
        if let Some(addr) = self.kafka_listen_sasl {
            let sec = Security {
                sasl: sasl.clone(),
                acl: acl.clone(),
                tls: None,
            };
            extra.push((addr, sec));
        }
        extra.extend(self.tls.listeners(sasl, acl)?);
        Ok((plain, extra))
    }
}
