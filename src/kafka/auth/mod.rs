//! Authentication and authorization on the Kafka listener.
//!
//! - [`scram`]: SCRAM-SHA-256/512 credentials and the server side of the exchange.
//! - [`users`]: the credentials file (`--sasl-users`, `kxgw users add|remove`).
//! - [`exchange`]: one connection's SASL state machine (SaslHandshake, SaslAuthenticate),
//!   sans-I/O.
//! - [`limiter`]: failed authentications rate-limited per source address.
//! - [`acl`]: the ACL file (`--acl`) and [`Authz`], what a connection's principal may read.
//! - [`ReadAuthority`]: "may principal P read topic T", decided by the ACL file (standalone)
//!   or by the cluster, asked and cached ([`crate::kafka::upstream::authz`], cluster mode).
//! - [`client`]: the client side of PLAIN and SCRAM (`kxgw consume` asking for fetch tickets).

pub mod acl;
pub mod client;
pub mod exchange;
pub mod limiter;
pub mod scram;
pub mod stats;
pub mod users;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::kafka::authority::{AuthzCache, ReadAuthority};

pub use acl::Acl;
pub use exchange::{Exchange, Mechanism};
pub use users::Users;

/// The principal of connections that did not authenticate (as Kafka names it).
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// A SASL listener's settings, shared by its connections.
pub struct SaslConfig {
    /// The credentials.
    pub users: Users,
    /// The mechanisms offered, in the order SaslHandshake lists them.
    pub mechanisms: Vec<Mechanism>,
    /// Failed authentications per source address.
    pub limiter: Mutex<limiter::FailLimiter>,
    /// Key of the made-up salts shown for unknown users.
    fake_salt_key: [u8; 32],
}

impl SaslConfig {
    /// Every mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) over `users`.
    pub fn new(users: Users) -> Self {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        SaslConfig {
            users,
            mechanisms: Mechanism::ALL.to_vec(),
            limiter: Mutex::new(limiter::FailLimiter::new(Default::default())),
            fake_salt_key: key,
        }
    }

    /// The salt shown for an unknown user: stable for the process, unlinkable to others.
    pub(crate) fn fake_salt(&self, user: &str) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        let mut m =
            Hmac::<sha2::Sha256>::new_from_slice(&self.fake_salt_key).expect("hmac takes any key");
        m.update(user.as_bytes());
        m.finalize().into_bytes().to_vec()
    }
}

/// What a listener asks of its connections.
#[derive(Clone, Default)]
pub struct Security {
    /// SASL required before anything but ApiVersions (SASL_PLAINTEXT, SASL_SSL).
    pub sasl: Option<Arc<SaslConfig>>,
    /// Authorization (None: every principal reads everything).
    pub acl: Option<Arc<Acl>>,
    /// Cluster mode's SASL listener: the exchange is relayed to the cluster (no local users)
    /// and topic reads are authorized by the cluster, through this cache.
    pub relay: Option<Arc<crate::kafka::authority::RelayConfig>>,
    /// TLS first (SSL, SASL_SSL).
    pub tls: Option<Arc<crate::kafka::tls::TlsServer>>,
    /// The gateway's fetch ticket keys, when its fetch endpoint requires tickets: the
    /// listener issues them (extension request, [`crate::kafka::apis::fetch_ticket`]).
    pub tickets: Option<Arc<crate::fetch::ticket::TicketKeys>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (acl: {})", self.protocol(), self.acl.is_some())
    }
}

impl Security {
    /// Kafka's name of the listener's security protocol.
    pub fn protocol(&self) -> &'static str {
        match (
            self.tls.is_some(),
            self.sasl.is_some() || self.relay.is_some(),
        ) {
            (false, false) => "PLAINTEXT",
            (false, true) => "SASL_PLAINTEXT",
            (true, false) => "SSL",
            (true, true) => "SASL_SSL",
        }
    }
}

impl ReadAuthority for Acl {
    fn may_read(&self, principal: &str, topic: &str, _now: Instant) -> Option<bool> {
        Some(self.topic(principal, topic))
    }
}

/// What a connection's principal may access: handlers ask before serving a topic or group.
#[derive(Clone, Debug)]
pub struct Authz {
    acl: Option<Arc<Acl>>,
    principal: String,
    /// Cluster mode on a SASL listener: topic reads as the cluster answered, at `at`.
    cluster: Option<(Arc<AuthzCache>, Instant)>,
}

/// Everything allowed (no ACL file): tests, tools and listeners without `--acl`.
pub static ALLOW_ALL: Authz = Authz {
    acl: None,
    principal: String::new(),
    cluster: None,
};

impl Authz {
    /// `principal` under `acl`.
    pub fn new(acl: Option<Arc<Acl>>, principal: String) -> Self {
        Authz {
            acl,
            principal,
            cluster: None,
        }
    }

    /// `principal` authorized by the cluster's answers in `cache`, as they stand at `at`.
    pub fn relayed(cache: Arc<AuthzCache>, principal: String, at: Instant) -> Self {
        Authz {
            acl: None,
            principal,
            cluster: Some((cache, at)),
        }
    }

    /// The same decisions, as they stand at `at` (cluster mode: answers expire).
    pub fn at(&self, at: Instant) -> Self {
        let mut a = self.clone();
        if let Some((_, t)) = a.cluster.as_mut() {
            *t = at;
        }
        a
    }

    /// Whether the decisions depend on time (cluster mode).
    pub fn expires(&self) -> bool {
        self.cluster.is_some()
    }

    /// The cluster's answers, in cluster mode on a SASL listener.
    pub fn cluster_cache(&self) -> Option<&Arc<AuthzCache>> {
        self.cluster.as_ref().map(|(c, _)| c)
    }

    /// The principal (`User:name`).
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// Whether the principal may describe and read `topic`. Cluster mode: as the cluster
    /// answered within the cache time (the session asks first); unasked means no.
    pub fn topic(&self, topic: &str) -> bool {
        if let Some((cache, at)) = &self.cluster {
            return cache.may_read(&self.principal, topic, *at) == Some(true);
        }
        self.acl
            .as_ref()
            .is_none_or(|a| a.topic(&self.principal, topic))
    }

    /// Whether the principal may use consumer group `group` (cluster mode: the cluster
    /// decides, the group APIs are forwarded).
    pub fn group(&self, group: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|a| a.group(&self.principal, group))
    }
}
