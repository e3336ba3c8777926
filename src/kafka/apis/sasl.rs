//! SaslHandshake v0-v1 and SaslAuthenticate v0-v2: the wire side of
//! [`crate::kafka::auth::Exchange`]. What a broker does, and so this listener: an unknown
//! mechanism gets UNSUPPORTED_SASL_MECHANISM with the enabled list, a failed exchange gets
//! SASL_AUTHENTICATION_FAILED with a message; both then close the connection. On a listener
//! without SASL (or after authentication) both APIs get ILLEGAL_SASL_STATE.

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{sb, Ctx};
use crate::kafka::auth::exchange::{Failure, Handshake, Token};
use crate::kafka::auth::Exchange;
use crate::kafka::chunk::{encode_response, Chunk, EncodeError};
use crate::kafka::stats::inc;

/// A response, and whether the connection ends once it is sent.
pub struct Reply {
    /// The encoded response.
    pub chunks: Vec<Chunk>,
    /// Close after sending (failed authentication, unsupported mechanism).
    pub close: bool,
}

/// Answers a SaslHandshake.
pub fn handshake(
    ctx: &Ctx,
    gate: Option<&mut Exchange>,
    correlation_id: i32,
    version: i16,
    req: &SaslHandshakeRequest,
) -> Result<Reply, EncodeError> {
    let hv = ApiKey::SaslHandshake.response_header_version(version);
    let (code, mechanisms, close) = match gate {
        None => (E::IllegalSaslState.code(), Vec::new(), false),
        Some(x) => {
            let listed: Vec<StrBytes> = x.mechanisms().map(sb).collect();
            match x.handshake(req.mechanism.as_str(), version) {
                Handshake::Accepted => (0, listed, false),
                Handshake::Unsupported => {
                    inc(&ctx.stats.auth.unsupported_mechanism);
                    log::info!(
                        "kafka: SASL mechanism {:?} refused (offered: {listed:?})",
                        req.mechanism.as_str()
                    );
                    (E::UnsupportedSaslMechanism.code(), listed, true)
                }
                Handshake::Illegal => (E::IllegalSaslState.code(), listed, false),
            }
        }
    };
    let body = SaslHandshakeResponse::default()
        .with_error_code(code)
        .with_mechanisms(mechanisms);
    let chunks = encode_response("SaslHandshake", correlation_id, hv, &body, version, &[])?;
    Ok(Reply { chunks, close })
}

/// Answers a SaslAuthenticate.
pub fn authenticate(
    ctx: &Ctx,
    gate: Option<&mut Exchange>,
    correlation_id: i32,
    version: i16,
    req: &SaslAuthenticateRequest,
    now: std::time::Instant,
) -> Result<Reply, EncodeError> {
    let hv = ApiKey::SaslAuthenticate.response_header_version(version);
    let illegal = |msg: &str| {
        SaslAuthenticateResponse::default()
            .with_error_code(E::IllegalSaslState.code())
            .with_error_message(Some(sb(msg)))
    };
    let (body, close) = match gate {
        None => (illegal("SASL is not enabled on this listener"), false),
        Some(x) if x.is_authenticated() => (
            illegal("SaslAuthenticate request received after successful authentication"),
            false,
        ),
        Some(x) => match x.token(&req.auth_bytes, now) {
            Token::Continue(b) => (ok(b), false),
            Token::Success(b) => {
                inc(&ctx.stats.auth.ok);
                (ok(b), false)
            }
            Token::Failed {
                cause,
                message,
                detail,
            } => {
                count_failure(ctx, cause);
                log::info!("kafka: SASL authentication failed: {detail}");
                let body = SaslAuthenticateResponse::default()
                    .with_error_code(E::SaslAuthenticationFailed.code())
                    .with_error_message(Some(sb(&message)));
                (body, true)
            }
            Token::Illegal => (illegal("SaslAuthenticate before SaslHandshake"), true),
        },
    };
    let chunks = encode_response("SaslAuthenticate", correlation_id, hv, &body, version, &[])?;
    Ok(Reply { chunks, close })
}

/// A bare token after a v0 handshake: the answer is a bare length-prefixed token; a failure
/// just closes (v0 has no way to say why, as with a broker).
pub fn raw_token(ctx: &Ctx, gate: &mut Exchange, token: &[u8], now: std::time::Instant) -> Reply {
    let bare = |b: Vec<u8>| {
        let mut out = (b.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&b);
        vec![Chunk::Mem(Bytes::from(out))]
    };
    match gate.token(token, now) {
        Token::Continue(b) => Reply {
            chunks: bare(b),
            close: false,
        },
        Token::Success(b) => {
            inc(&ctx.stats.auth.ok);
            Reply {
                chunks: bare(b),
                close: false,
            }
        }
        Token::Failed { cause, detail, .. } => {
            count_failure(ctx, cause);
            log::info!("kafka: SASL (v0) authentication failed: {detail}");
            Reply {
                chunks: Vec::new(),
                close: true,
            }
        }
        Token::Illegal => Reply {
            chunks: Vec::new(),
            close: true,
        },
    }
}

fn ok(auth_bytes: Vec<u8>) -> SaslAuthenticateResponse {
    SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(auth_bytes))
}

fn count_failure(ctx: &Ctx, cause: Failure) {
    inc(match cause {
        Failure::Credentials => &ctx.stats.auth.failed_credentials,
        Failure::Malformed => &ctx.stats.auth.failed_malformed,
        Failure::RateLimited => &ctx.stats.auth.rate_limited,
    });
}

/// Decodes a SaslHandshake body.
pub fn decode_handshake(body: &mut Bytes, version: i16) -> anyhow::Result<SaslHandshakeRequest> {
    use kafka_protocol::protocol::Decodable;
    SaslHandshakeRequest::decode(body, version)
}

/// Decodes a SaslAuthenticate body.
pub fn decode_authenticate(
    body: &mut Bytes,
    version: i16,
) -> anyhow::Result<SaslAuthenticateRequest> {
    use kafka_protocol::protocol::Decodable;
    SaslAuthenticateRequest::decode(body, version)
}
