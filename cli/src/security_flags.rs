//! `kxgw serve`'s Kafka listener security flags: listeners by security protocol (as a
//! broker's `listeners`), the SASL users file and the ACL file (standalone), the gateway's own
//! login to the cluster and the authorization cache (cluster mode); TLS in
//! [`crate::tls_flags`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use kxgw::fetch::ticket::{effective_lifetime, TicketKeys, DEFAULT_ROTATION};
use kxgw::kafka::auth::scram::ScramHash;
use kxgw::kafka::auth::{Acl, Mechanism, SaslConfig, Security, Users};
use kxgw::kafka::authority::RelayConfig;
use kxgw::kafka::upstream::login::UpstreamLogin;

/// A SASL mechanism of the gateway's own login to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamMechanism {
    /// PLAIN (the password crosses the network as it is: SASL_SSL upstreams only, or a
    /// trusted network).
    #[value(name = "PLAIN")]
    Plain,
    /// SCRAM-SHA-256.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

/// Kafka listener authentication and authorization.
#[derive(Debug, clap::Args)]
pub struct SecurityArgs {
    /// A SASL_PLAINTEXT Kafka listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), beside or
    /// instead of the PLAINTEXT --kafka-listen. Standalone: checked against --sasl-users.
    /// Cluster mode (--upstream): relayed to the cluster, which also authorizes local reads.
    #[arg(long, value_name = "ADDR:PORT")]
    pub kafka_listen_sasl: Option<SocketAddr>,
    /// SASL credentials file (written by `kxgw users add`; standalone only).
    #[arg(long, value_name = "FILE")]
    pub sasl_users: Option<PathBuf>,
    /// ACL file: once given, every listener denies the topics and groups it does not allow
    /// (PLAINTEXT clients are User:ANONYMOUS; standalone only).
    #[arg(long, value_name = "FILE")]
    pub acl: Option<PathBuf>,
    /// Cluster mode: how long the cluster's answer "may this principal read this topic" is
    /// trusted before it is asked again (a revoked ACL stops local reads within this time;
    /// fetch tickets live no longer than this, so UDP/AF_XDP reads stop within twice it).
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub authz_cache_ms: u64,
    /// Cluster mode: the gateway's own SASL user at the cluster (the watcher's login; it needs
    /// Describe on the cluster and Read on the served topics).
    #[arg(long, value_name = "USER", requires = "upstream_sasl_password_file")]
    pub upstream_sasl_user: Option<String>,
    /// File holding the password of --upstream-sasl-user (first line).
    #[arg(long, value_name = "FILE", requires = "upstream_sasl_user")]
    pub upstream_sasl_password_file: Option<PathBuf>,
    /// SASL mechanism of --upstream-sasl-user.
    #[arg(
        long,
        value_enum,
        value_name = "MECHANISM",
        default_value = "SCRAM-SHA-256"
    )]
    pub upstream_sasl_mechanism: UpstreamMechanism,
    /// The SSL and SASL_SSL listeners.
    #[command(flatten)]
    pub tls: crate::tls_flags::TlsArgs,
    /// With --acl or --sasl-users (in cluster mode: --kafka-listen-sasl) every fetch (UDP,
    /// AF_XDP) must carry a fetch ticket, asked for on the Kafka listener: how long one is
    /// valid; in cluster mode at most --authz-cache-ms (keys rotate every hour, or every
    /// lifetime if longer, the previous key still accepted).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub fetch_ticket_lifetime: u64,
}

impl SecurityArgs {
    /// The gateway's fetch ticket keys: one set for the Kafka listener that issues tickets
    /// and every fetch server that checks them. None without --acl / --sasl-users / a SASL
    /// listener (the fetch endpoint then requires no ticket). In cluster mode the SASL
    /// listener relays logins and the cluster decides the topics a ticket may name, and a
    /// ticket lives no longer than the cluster's answer is trusted (`cluster`).
    pub fn ticket_keys(&self, cluster: bool) -> Option<Arc<TicketKeys>> {
        if self.acl.is_none() && self.sasl_users.is_none() && self.kafka_listen_sasl.is_none() {
            return None;
        }
        let asked = Duration::from_secs(self.fetch_ticket_lifetime.max(1));
        let ttl = Duration::from_millis(self.authz_cache_ms);
        let lifetime = effective_lifetime(asked, cluster.then_some(ttl));
        if lifetime < asked {
            log::info!(
                "fetch tickets valid {lifetime:?}: --fetch-ticket-lifetime {}s capped at \
                 --authz-cache-ms {} (cluster mode: a ticket never outlives the cluster's \
                 answer that allowed it; consumers renew at two thirds)",
                self.fetch_ticket_lifetime,
                self.authz_cache_ms
            );
        } else {
            log::info!("fetch tickets valid {lifetime:?} (--fetch-ticket-lifetime)");
        }
        Some(Arc::new(TicketKeys::new(
            Instant::now(),
            lifetime,
            DEFAULT_ROTATION.max(lifetime),
        )))
    }

    /// The security of the PLAINTEXT listener, and the other listeners asked for (SASL,
    /// SSL, SASL_SSL, in that order) with theirs, for standalone mode or cluster mode
    /// (`cluster`).
    pub fn load(&self, cluster: bool) -> Result<(Security, Vec<(SocketAddr, Security)>)> {
        if cluster {
            return self.load_cluster();
        }
        if self.upstream_sasl_user.is_some() {
            bail!("--upstream-sasl-user is for cluster mode: give --upstream");
        }
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
            None if sasl_listener => bail!(
                "--kafka-listen-sasl/--kafka-listen-sasl-ssl need --sasl-users FILE (written by \
                 `kxgw users add`)"
            ),
            None => None,
        };
        let mut extra = Vec::new();
        if let Some(addr) = self.kafka_listen_sasl {
            let sec = Security {
                sasl: sasl.clone(),
                acl: acl.clone(),
                ..Security::default()
            };
            extra.push((addr, sec));
        }
        let sasl_ssl = Security {
            sasl,
            acl,
            ..Security::default()
        };
        extra.extend(self.tls.listeners(plain.clone(), sasl_ssl)?);
        Ok((plain, extra))
    }

    /// Cluster mode: the cluster authenticates and authorizes; nothing is checked locally.
    /// TLS ends at the gateway: the upstream connections are as the upstream flags say.
    fn load_cluster(&self) -> Result<(Security, Vec<(SocketAddr, Security)>)> {
        if self.tls.tls_client_ca.is_some() {
            bail!(
                "--tls-client-ca is for standalone mode: with --upstream the cluster authorizes \
                 the principal of each client's SASL login, and a certificate's subject cannot \
                 be passed on to it; use --kafka-listen-sasl-ssl (SASL inside TLS) instead"
            );
        }
        if self.acl.is_some() {
            bail!(
                "--acl is for standalone mode: with --upstream the cluster's ACLs decide \
                 (asked on each client's authenticated connection; see --kafka-listen-sasl)"
            );
        }
        if self.sasl_users.is_some() {
            bail!(
                "--sasl-users is for standalone mode: with --upstream the cluster verifies \
                 credentials (each client's SASL exchange is relayed to it)"
            );
        }
        let relayed = Security {
            relay: Some(Arc::new(RelayConfig::new(Duration::from_millis(
                self.authz_cache_ms,
            )))),
            ..Security::default()
        };
        let mut extra: Vec<(SocketAddr, Security)> = self
            .kafka_listen_sasl
            .map(|addr| (addr, relayed.clone()))
            .into_iter()
            .collect();
        extra.extend(self.tls.listeners(Security::default(), relayed)?);
        if extra.iter().any(|(_, s)| s.relay.is_some()) && self.upstream_sasl_user.is_none() {
            bail!(
                "--kafka-listen-sasl/--kafka-listen-sasl-ssl with --upstream relay clients' \
                 logins to the cluster's SASL listener, where the gateway's own connections must \
                 log in too: give --upstream-sasl-user USER --upstream-sasl-password-file FILE"
            );
        }
        Ok((Security::default(), extra))
    }

    /// Cluster mode: the gateway's own login, if given.
    pub fn upstream_login(&self) -> Result<Option<UpstreamLogin>> {
        let (Some(user), Some(file)) =
            (&self.upstream_sasl_user, &self.upstream_sasl_password_file)
        else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the upstream password file {}", file.display()))?;
        let password = text.lines().next().unwrap_or_default().to_string();
        if password.is_empty() {
            bail!("{}: empty password", file.display());
        }
        let mechanism = match self.upstream_sasl_mechanism {
            UpstreamMechanism::Plain => Mechanism::Plain,
            UpstreamMechanism::ScramSha256 => Mechanism::Scram(ScramHash::Sha256),
            UpstreamMechanism::ScramSha512 => Mechanism::Scram(ScramHash::Sha512),
        };
        Ok(Some(UpstreamLogin {
            mechanism,
            user: user.clone(),
            password,
        }))
    }
}
