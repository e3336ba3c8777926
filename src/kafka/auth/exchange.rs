//! One connection's SASL exchange, sans-I/O: the session feeds it the SaslHandshake mechanism
//! and each SaslAuthenticate token, and sends back what it answers. As a Kafka broker: one
//! handshake, then tokens until success or failure; a failure ends the connection.
//! SaslHandshake v0 clients send their tokens as bare length-prefixed frames (no Kafka
//! header): [`Exchange::raw_tokens`] tells the session to frame them so.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;

use super::scram::{ScramError, ScramHash, ScramServer, Step};
use super::SaslConfig;

/// A SASL mechanism the gateway offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616, checked against the stored SCRAM-SHA-256 credential.
    Plain,
    /// RFC 5802 / 7677.
    Scram(ScramHash),
}

impl Mechanism {
    /// Every mechanism, in the order they are listed to clients.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::Scram(ScramHash::Sha256),
        Mechanism::Scram(ScramHash::Sha512),
    ];

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(h) => h.mechanism(),
        }
    }
}

/// Why an exchange failed (each is counted apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Unknown user or wrong password.
    Credentials,
    /// A token that does not follow the mechanism's grammar.
    Malformed,
    /// Too many failures from this address lately: not even checked.
    RateLimited,
}

/// The answer to a SaslHandshake.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Mechanism selected: tokens follow.
    Accepted,
    /// Not offered: UNSUPPORTED_SASL_MECHANISM with the enabled list, then close.
    Unsupported,
    /// A second handshake: ILLEGAL_SASL_STATE.
    Illegal,
}

/// The answer to one token.
#[derive(Debug, PartialEq, Eq)]
pub enum Token {
    /// Send this challenge; the client answers with another token.
    Continue(Vec<u8>),
    /// Authenticated: send this last message.
    Success(Vec<u8>),
    /// SASL_AUTHENTICATION_FAILED with `message`, then close.
    Failed {
        /// Why (for the counters and the log).
        cause: Failure,
        /// What the client is told.
        message: String,
        /// What the log says.
        detail: String,
    },
    /// A token before a handshake, or after the end: ILLEGAL_SASL_STATE, then close.
    Illegal,
}

enum State {
    Start,
    Plain,
    Scram(ScramHash, ScramServer),
    Authenticated(String),
    Failed,
}

/// One connection's exchange.
pub struct Exchange {
    cfg: Arc<SaslConfig>,
    peer: Option<IpAddr>,
    state: State,
    raw: bool,
}

impl Exchange {
    /// A connection from `peer` (None: not rate-limited, e.g. tests and fuzzing).
    pub fn new(cfg: Arc<SaslConfig>, peer: Option<IpAddr>) -> Self {
        Exchange {
            cfg,
            peer,
            state: State::Start,
            raw: false,
        }
    }

    /// The mechanisms offered.
    pub fn mechanisms(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.cfg.mechanisms.iter().map(|m| m.name())
    }

    /// The authenticated principal (`User:name`), once authenticated.
    pub fn principal(&self) -> Option<String> {
        match &self.state {
            State::Authenticated(u) => Some(format!("User:{u}")),
            _ => None,
        }
    }

    /// Whether the client authenticated.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated(_))
    }

    /// Whether the next frames are bare tokens (after a v0 handshake, until the end).
    pub fn raw_tokens(&self) -> bool {
        self.raw && matches!(self.state, State::Plain | State::Scram(..))
    }

    /// A SaslHandshake at `version` naming `mechanism`.
    pub fn handshake(&mut self, mechanism: &str, version: i16) -> Handshake {
        if !matches!(self.state, State::Start) {
            return Handshake::Illegal;
        }
        let Some(m) = self
            .cfg
            .mechanisms
            .iter()
            .copied()
            .find(|m| m.name() == mechanism)
        else {
            self.state = State::Failed;
            return Handshake::Unsupported;
        };
        self.state = match m {
            Mechanism::Plain => State::Plain,
            Mechanism::Scram(h) => State::Scram(h, ScramServer::Start),
        };
        self.raw = version == 0;
        Handshake::Accepted
    }

    /// One client token (a SaslAuthenticate's auth_bytes, or a bare frame after v0).
    pub fn token(&mut self, token: &[u8], now: Instant) -> Token {
        let mechanism = match &self.state {
            State::Plain => Mechanism::Plain,
            State::Scram(h, _) => Mechanism::Scram(*h),
            _ => return Token::Illegal,
        };
        let fail = |cause, detail: String| Token::Failed {
            cause,
            message: format!(
                "Authentication failed during authentication due to invalid credentials with \
                 SASL mechanism {}",
                mechanism.name()
            ),
            detail,
        };
        if let Some(ip) = self.peer {
            let allowed = self
                .cfg
                .limiter
                .lock()
                .map(|l| l.allowed(ip, now))
                .unwrap_or(true);
            if !allowed {
                self.state = State::Failed;
                return Token::Failed {
                    cause: Failure::RateLimited,
                    message: "Authentication failed: too many failed authentications from \
                              this address, try later"
                        .into(),
                    detail: format!("rate-limited ({ip})"),
                };
            }
        }
        let answer = match std::mem::replace(&mut self.state, State::Failed) {
            State::Plain => self.plain(token),
            State::Scram(h, mut server) => {
                let cfg = Arc::clone(&self.cfg);
                match server.step(
                    h,
                    token,
                    |u| cfg.users.credential(u, h).cloned(),
                    &new_nonce(),
                    |u| cfg.fake_salt(u),
                ) {
                    Ok(Step::Continue(reply)) => {
                        self.state = State::Scram(h, server);
                        Ok(Token::Continue(reply))
                    }
                    Ok(Step::Success { user, reply }) => {
                        self.state = State::Authenticated(user);
                        Ok(Token::Success(reply))
                    }
                    Err(ScramError::BadProof) => Err((Failure::Credentials, "bad proof".into())),
                    Err(e) => Err((Failure::Malformed, e.to_string())),
                }
            }
            _ => return Token::Illegal,
        };
        match answer {
            Ok(t) => t,
            Err((cause, detail)) => {
                if let (Some(ip), Ok(mut l)) = (self.peer, self.cfg.limiter.lock()) {
                    l.failed(ip, now);
                }
                fail(cause, detail)
            }
        }
    }

    /// PLAIN: `[authzid] NUL authcid NUL password`, authzid empty or the user itself.
    fn plain(&mut self, token: &[u8]) -> Result<Token, (Failure, String)> {
        let malformed = |d: &str| (Failure::Malformed, format!("PLAIN: {d}"));
        let text = std::str::from_utf8(token).map_err(|_| malformed("not UTF-8"))?;
        let mut parts = text.split('\0');
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not authzid NUL user NUL password"));
        };
        if user.is_empty() || password.is_empty() {
            return Err(malformed("empty user or password"));
        }
        if !authzid.is_empty() && authzid != user {
            return Err(malformed("authorization id differs from the user"));
        }
        let ok = self
            .cfg
            .users
            .credential(user, ScramHash::Sha256)
            .is_some_and(|c| c.verify_password(ScramHash::Sha256, password));
        if !ok {
            return Err((Failure::Credentials, format!("PLAIN: user {user:?}")));
        }
        self.state = State::Authenticated(user.to_string());
        Ok(Token::Success(Vec::new()))
    }
}

fn new_nonce() -> String {
    let mut n = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut n);
    B64.encode(n)
}

#[cfg(test)]
mod tests {
    use super::super::scram::tests::client_final;
    use super::super::users::{UserEntry, Users};
    use super::*;

    fn cfg() -> Arc<SaslConfig> {
        let mut u = Users::default();
        u.users.insert("alice".into(), UserEntry::new("pw", 4096));
        Arc::new(SaslConfig::new(u))
    }

    fn failed(t: &Token) -> Option<Failure> {
        match t {
            Token::Failed { cause, .. } => Some(*cause),
            _ => None,
        }
    }

    #[test]
    fn plain_success_and_failures() {
        let c = cfg();
        let now = Instant::now();
        let mut x = Exchange::new(Arc::clone(&c), None);
        assert_eq!(
            x.token(b"\0alice\0pw", now),
            Token::Illegal,
            "before handshake"
        );
        assert_eq!(x.handshake("PLAIN", 1), Handshake::Accepted);
        assert!(!x.raw_tokens());
        assert_eq!(x.token(b"\0alice\0pw", now), Token::Success(vec![]));
        assert_eq!(x.principal().as_deref(), Some("User:alice"));
        assert_eq!(x.handshake("PLAIN", 1), Handshake::Illegal);
        assert_eq!(
            x.token(b"\0alice\0pw", now),
            Token::Illegal,
            "after the end"
        );
        for (tok, want) in [
            (&b"\0alice\0nope"[..], Failure::Credentials),
            (b"\0bob\0pw", Failure::Credentials),
            (b"alice\0pw", Failure::Malformed),
            (b"bob\0alice\0pw", Failure::Malformed),
            (b"\0alice\0", Failure::Malformed),
            (b"\0\xff\0pw", Failure::Malformed),
        ] {
            let mut x = Exchange::new(Arc::clone(&c), None);
            x.handshake("PLAIN", 0);
            assert!(x.raw_tokens());
            assert_eq!(failed(&x.token(tok, now)), Some(want), "{tok:?}");
            assert!(x.principal().is_none() && !x.raw_tokens());
        }
    }

    #[test]
    fn scram_both_hashes() {
        let c = cfg();
        let now = Instant::now();
        for h in ScramHash::ALL {
            for (pw, ok) in [("pw", true), ("wrong", false)] {
                let mut x = Exchange::new(Arc::clone(&c), None);
                assert_eq!(x.handshake(h.mechanism(), 1), Handshake::Accepted);
                let Token::Continue(sf) = x.token(b"n,,n=alice,r=cn", now) else {
                    panic!("challenge expected")
                };
                let (cf, want) =
                    client_final(h, pw, "n=alice,r=cn", std::str::from_utf8(&sf).unwrap());
                let t = x.token(cf.as_bytes(), now);
                if ok {
                    assert_eq!(t, Token::Success(want));
                    assert_eq!(x.principal().as_deref(), Some("User:alice"));
                } else {
                    assert_eq!(failed(&t), Some(Failure::Credentials));
                }
            }
        }
    }

    #[test]
    fn unknown_mechanism_and_rate_limit() {
        let c = cfg();
        let mut x = Exchange::new(Arc::clone(&c), None);
        assert_eq!(x.handshake("GSSAPI", 1), Handshake::Unsupported);
        assert_eq!(
            x.mechanisms().collect::<Vec<_>>(),
            ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
        );
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        let now = Instant::now();
        for _ in 0..10 {
            let mut x = Exchange::new(Arc::clone(&c), Some(ip));
            x.handshake("PLAIN", 1);
            assert_eq!(
                failed(&x.token(b"\0alice\0x", now)),
                Some(Failure::Credentials)
            );
        }
        // Even the right password is not checked now, from this address only.
        let mut x = Exchange::new(Arc::clone(&c), Some(ip));
        x.handshake("PLAIN", 1);
        assert_eq!(
            failed(&x.token(b"\0alice\0pw", now)),
            Some(Failure::RateLimited)
        );
        let mut x = Exchange::new(Arc::clone(&c), Some("198.18.0.10".parse().unwrap()));
        x.handshake("PLAIN", 1);
        assert_eq!(x.token(b"\0alice\0pw", now), Token::Success(vec![]));
    }
}
