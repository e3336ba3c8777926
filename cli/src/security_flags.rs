//! `kxgw serve`'s Kafka listener security flags: listeners by security protocol (as a
//! broker's `listeners`), the SASL users file and the ACL file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use std::time::{Duration, Instant};

use kxgw::fetch::ticket::{TicketKeys, DEFAULT_ROTATION};
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
    /// With --acl or --sasl-users every fetch (UDP, AF_XDP) must carry a fetch ticket, asked
    /// for on the Kafka listener: how long one is valid (keys rotate every hour, or every
    /// lifetime if longer, the previous key still accepted).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub fetch_ticket_lifetime: u64,
}

impl SecurityArgs {
    /// The gateway's fetch ticket keys: one set for the Kafka listener that issues tickets
    /// and every fetch server that checks them. None without --acl / --sasl-users (the
    /// fetch endpoint then requires no ticket).
    pub fn ticket_keys(&self) -> Option<Arc<TicketKeys>> {
        if self.acl.is_none() && self.sasl_users.is_none() {
            return None;
        }
        let lifetime = Duration::from_secs(self.fetch_ticket_lifetime.max(1));
        Some(Arc::new(TicketKeys::new(
            Instant::now(),
            lifetime,
            DEFAULT_ROTATION.max(lifetime),
        )))
    }

    /// The security of the PLAINTEXT listener and of the SASL one (if asked for).
    pub fn load(&self) -> Result<(Security, Option<(SocketAddr, Security)>)> {
        let acl = match &self.acl {
            Some(p) => Some(Arc::new(Acl::load(p)?)),
            None => None,
        };
        let plain = Security {
            sasl: None,
            acl: acl.clone(),
            tickets: None,
        };
        let sasl = match (&self.kafka_listen_sasl, &self.sasl_users) {
            (Some(addr), Some(file)) => {
                let users = Users::load(file)?;
                if users.users.is_empty() {
                    log::warn!("{}: no users: every SASL login will fail", file.display());
                }
                let sec = Security {
                    sasl: Some(Arc::new(SaslConfig::new(users))),
                    acl,
                    tickets: None,
                };
                Some((*addr, sec))
            }
            (None, Some(_)) => bail!("--sasl-users needs a SASL listener: --kafka-listen-sasl"),
            _ => None,
        };
        Ok((plain, sasl))
    }
}
