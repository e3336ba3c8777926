//! Cluster mode on a SASL listener, sans-I/O: the client's SaslHandshake and
//! SaslAuthenticate go to the cluster on the client's own upstream connection, before anything
//! else on it but ApiVersions; the gateway verifies no credential itself. It learns the
//! principal from the exchange (PLAIN's authcid, SCRAM client-first's `n=`), and only once
//! the cluster answered success; until then only ApiVersions and SASL are allowed (others
//! close the connection, as a broker does). A failure is passed to the client as the broker
//! sent it, counted, and the connection closes. Failed logins are rate-limited per client
//! address here too (before they reach the cluster, where they all come from the gateway's
//! own address): an address out of tokens is refused without its token being relayed.
//!
//! Once authenticated, a request served locally waits until the cluster has said whether the
//! principal may read its topics ([`super::authz`]), asked on the same upstream connection,
//! so responses keep the request order and no other connection waits.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{
    ApiKey, MetadataResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::Decodable;

use super::authz;
use super::forward::Observed;
use crate::kafka::apis::{sb, Ctx};
use crate::kafka::auth::scram;
use crate::kafka::authority::{AuthzCache, ReadAuthority, RelayConfig};
use crate::kafka::chunk::{encode_response, Chunk};
use crate::kafka::stats::inc;

/// The mechanisms whose principal the gateway can learn from the exchange.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Why the connection must close.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A request other than ApiVersions / SASL before the cluster accepted the login.
    #[error("{0:?} request before SASL authentication")]
    Unauthenticated(ApiKey),
    /// SaslHandshake v0 (bare tokens cannot be relayed with remapped correlation ids).
    #[error("SaslHandshake v{0} cannot be relayed (v1 only)")]
    Version(i16),
    /// Something that does not decode (a client request or the cluster's answer).
    #[error("{0}")]
    Bad(String),
}

/// What the session does with a request frame.
pub enum Intercept {
    /// Handle it as usual.
    Pass,
    /// Forward it and show the answer to [`Relay::answer`].
    Forward,
    /// Hold it: send this Metadata request frame (no size prefix) as the gateway's own, and
    /// handle the held frame once [`Relay::answer`] returns it.
    Ask(Vec<u8>),
    /// Answer this and close (a mechanism whose principal cannot be learnt).
    Refuse(Vec<Chunk>),
}

/// What an upstream answer meant.
pub enum Outcome {
    /// Nothing for the session to do (a challenge to pass on, a handshake accepted).
    Continue,
    /// The cluster accepted the login: requests from now on run as this principal.
    LoggedIn(String),
    /// The cluster refused: close once the answer is sent.
    Failed,
    /// The cluster answered an ask: handle the held request now.
    Asked(Option<Bytes>),
}

enum Expect {
    Handshake,
    Token,
    Ask(Vec<String>),
}

/// One client connection's relay state.
pub struct Relay {
    cfg: Arc<RelayConfig>,
    cache: Arc<AuthzCache>,
    peer: Option<IpAddr>,
    mechanism: Option<&'static str>,
    tokens: u32,
    claimed: Option<String>,
    principal: Option<String>,
    expect: Option<Expect>,
    held: Option<Bytes>,
}

fn bad(e: impl std::fmt::Display) -> RelayError {
    RelayError::Bad(e.to_string())
}

/// PLAIN's authcid: `[authzid] NUL authcid NUL password`.
fn plain_user(token: &[u8]) -> Option<String> {
    let mut parts = token.split(|&b| b == 0);
    let (_, user, _) = (parts.next()?, parts.next()?, parts.next()?);
    let user = std::str::from_utf8(user).ok()?;
    (!user.is_empty()).then(|| user.to_string())
}

impl Relay {
    /// A fresh connection from `peer` (None: not rate-limited, e.g. tests and fuzzing).
    pub fn new(cfg: Arc<RelayConfig>, peer: Option<IpAddr>) -> Self {
        Relay {
            cache: Arc::clone(&cfg.cache),
            cfg,
            peer,
            mechanism: None,
            tokens: 0,
            claimed: None,
            principal: None,
            expect: None,
            held: None,
        }
    }

    /// The cluster's answers this connection's reads are authorized by.
    pub fn cache(&self) -> &Arc<AuthzCache> {
        &self.cache
    }

    /// Decides what happens to one request frame (as framed: key, version, correlation id,
    /// rest of the header, body), before the session handles it.
    pub fn intercept(
        &mut self,
        ctx: &Ctx,
        frame: &Bytes,
        now: Instant,
    ) -> Result<Intercept, RelayError> {
        if ctx.node.cluster.is_none() {
            return Err(bad("SASL relay outside cluster mode"));
        }
        let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let Some(principal) = self.principal.clone() else {
            return match ApiKey::try_from(raw_key) {
                Ok(ApiKey::ApiVersions) => Ok(Intercept::Pass),
                Ok(ApiKey::SaslHandshake) => self.handshake(ctx, frame, version),
                Ok(ApiKey::SaslAuthenticate) => self.token(ctx, frame, version, now),
                Ok(k) => {
                    inc(&ctx.stats.auth.unauthenticated_request);
                    Err(RelayError::Unauthenticated(k))
                }
                Err(_) if crate::kafka::apis::fetch_ticket::is_request(frame) => {
                    inc(&ctx.stats.auth.unauthenticated_request);
                    Err(bad("FetchTicket before SASL authentication"))
                }
                Err(_) => Err(bad(format!("unknown API key {raw_key}"))),
            };
        };
        let Some(topics) = authz::requested_topics(ctx, frame) else {
            return Ok(Intercept::Pass);
        };
        let stale: Vec<String> = topics
            .into_iter()
            .filter(|t| self.cache.may_read(&principal, t, now).is_none())
            .collect();
        if stale.is_empty() {
            return Ok(Intercept::Pass);
        }
        let req = authz::ask(&stale);
        let wire = crate::kafka::frame::encode_request(
            ApiKey::Metadata,
            authz::ASK_VERSION,
            0,
            "kxgw",
            &req,
        )
        .map_err(bad)?;
        inc(&ctx.stats.auth.authz_asked);
        self.expect = Some(Expect::Ask(stale));
        self.held = Some(frame.clone());
        Ok(Intercept::Ask(wire[4..].to_vec()))
    }

    fn body(frame: &Bytes, key: ApiKey, version: i16) -> Result<Bytes, RelayError> {
        let mut b = frame.clone();
        RequestHeader::decode(&mut b, key.request_header_version(version)).map_err(bad)?;
        Ok(b)
    }

    fn handshake(
        &mut self,
        ctx: &Ctx,
        frame: &Bytes,
        version: i16,
    ) -> Result<Intercept, RelayError> {
        if version != 1 {
            return Err(RelayError::Version(version));
        }
        let mut b = Self::body(frame, ApiKey::SaslHandshake, version)?;
        let req = SaslHandshakeRequest::decode(&mut b, version).map_err(bad)?;
        let Some(m) = MECHANISMS.iter().find(|m| **m == req.mechanism.as_str()) else {
            inc(&ctx.stats.auth.unsupported_mechanism);
            log::info!(
                "kafka: SASL mechanism {:?} refused: the gateway relays only {MECHANISMS:?}",
                req.mechanism.as_str()
            );
            let cid = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let body = SaslHandshakeResponse::default()
                .with_error_code(E::UnsupportedSaslMechanism.code())
                .with_mechanisms(MECHANISMS.iter().map(|m| sb(m)).collect());
            let hv = ApiKey::SaslHandshake.response_header_version(version);
            let chunks =
                encode_response("SaslHandshake", cid, hv, &body, version, &[]).map_err(bad)?;
            return Ok(Intercept::Refuse(chunks));
        };
        self.mechanism = Some(*m);
        self.tokens = 0;
        self.claimed = None;
        self.expect = Some(Expect::Handshake);
        Ok(Intercept::Forward)
    }

    fn token(
        &mut self,
        ctx: &Ctx,
        frame: &Bytes,
        version: i16,
        now: Instant,
    ) -> Result<Intercept, RelayError> {
        let Some(m) = self.mechanism else {
            // No handshake: the cluster answers ILLEGAL_SASL_STATE.
            return Ok(Intercept::Forward);
        };
        let mut b = Self::body(frame, ApiKey::SaslAuthenticate, version)?;
        let req = SaslAuthenticateRequest::decode(&mut b, version).map_err(bad)?;
        if self.tokens == 0 && !self.allowed(now) {
            inc(&ctx.stats.auth.rate_limited);
            log::info!(
                "kafka: SASL login from {:?} rate-limited, not relayed",
                self.peer
            );
            let cid = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let body = SaslAuthenticateResponse::default()
                .with_error_code(E::SaslAuthenticationFailed.code())
                .with_error_message(Some(sb(
                    "Authentication failed: too many failed authentications from this \
                     address, try later",
                )));
            let hv = ApiKey::SaslAuthenticate.response_header_version(version);
            let chunks =
                encode_response("SaslAuthenticate", cid, hv, &body, version, &[]).map_err(bad)?;
            return Ok(Intercept::Refuse(chunks));
        }
        self.tokens += 1;
        if self.tokens == 1 {
            self.claimed = if m == "PLAIN" {
                plain_user(&req.auth_bytes)
            } else {
                scram::client_first_user(&req.auth_bytes)
            };
        }
        self.expect = Some(Expect::Token);
        Ok(Intercept::Forward)
    }

    fn allowed(&self, now: Instant) -> bool {
        let Some(ip) = self.peer else {
            return true;
        };
        self.cfg
            .limiter
            .lock()
            .map(|l| l.allowed(ip, now))
            .unwrap_or(true)
    }

    fn failed(&self, now: Instant) {
        if let (Some(ip), Ok(mut l)) = (self.peer, self.cfg.limiter.lock()) {
            l.failed(ip, now);
        }
    }

    /// The cluster's answer to what [`Relay::intercept`] had forwarded or asked.
    pub fn answer(
        &mut self,
        ctx: &Ctx,
        seen: Observed,
        now: Instant,
    ) -> Result<Outcome, RelayError> {
        let Some(expect) = self.expect.take() else {
            return Ok(Outcome::Continue);
        };
        let Ok(key) = ApiKey::try_from(seen.key) else {
            return Ok(Outcome::Continue);
        };
        let mut b = seen.frame;
        ResponseHeader::decode(&mut b, key.response_header_version(seen.version)).map_err(bad)?;
        match expect {
            Expect::Handshake => {
                let r = SaslHandshakeResponse::decode(&mut b, seen.version).map_err(bad)?;
                if r.error_code != 0 {
                    inc(&ctx.stats.auth.unsupported_mechanism);
                    return Ok(Outcome::Failed);
                }
                Ok(Outcome::Continue)
            }
            Expect::Token => {
                let r = SaslAuthenticateResponse::decode(&mut b, seen.version).map_err(bad)?;
                if r.error_code != 0 {
                    inc(&ctx.stats.auth.failed_upstream);
                    self.failed(now);
                    log::info!(
                        "kafka: the cluster refused the SASL login of {:?}: error {} {:?}",
                        self.claimed,
                        r.error_code,
                        r.error_message.as_deref().unwrap_or_default()
                    );
                    return Ok(Outcome::Failed);
                }
                let done = self.mechanism == Some("PLAIN") || self.tokens >= 2;
                if !done {
                    return Ok(Outcome::Continue);
                }
                let Some(user) = self.claimed.clone() else {
                    // The cluster accepted a token we cannot read a name from.
                    inc(&ctx.stats.auth.failed_malformed);
                    log::warn!("kafka: SASL login accepted upstream, but no user name in it");
                    return Ok(Outcome::Failed);
                };
                let p = format!("User:{user}");
                inc(&ctx.stats.auth.ok);
                self.principal = Some(p.clone());
                Ok(Outcome::LoggedIn(p))
            }
            Expect::Ask(topics) => {
                let r = MetadataResponse::decode(&mut b, seen.version).map_err(bad)?;
                let principal = self.principal.as_deref().unwrap_or_default();
                let allowed = self.cache.learn_answer(principal, &topics, &r, now);
                if allowed < topics.len() {
                    log::debug!(
                        "kafka: {principal}: the cluster allows {allowed} of {} topics",
                        topics.len()
                    );
                }
                if b.has_remaining() {
                    log::debug!("authz answer: {} trailing bytes", b.remaining());
                }
                Ok(Outcome::Asked(self.held.take()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_user_is_the_authcid() {
        assert_eq!(plain_user(b"\0alice\0pw").as_deref(), Some("alice"));
        assert_eq!(plain_user(b"alice\0alice\0pw").as_deref(), Some("alice"));
        assert_eq!(plain_user(b"\0\0pw"), None);
        assert_eq!(plain_user(b"alice"), None);
    }
}
