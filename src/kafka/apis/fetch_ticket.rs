//! FetchTicket: a kxgw extension request on the Kafka listener that issues fetch tickets
//! for the UDP / AF_XDP fetch endpoint (docs/fetch-protocol.md, "Fetch tickets").
//!
//! API key [`API_KEY`] (0x4B58, "KX"), far outside Kafka's range and never listed in
//! ApiVersions, so stock clients never send it. Request header v1 (key, version,
//! correlation id, client id), response header v0 (correlation id), as Kafka's classic APIs;
//! only version 0:
//!
//! ```text
//! request:  topics        INT32 count (1..=64), then STRING each
//! response: error_code    INT16
//!           error_message NULLABLE_STRING
//!           lifetime_ms   INT64   how long the ticket is valid from now
//!           ticket        BYTES   (INT32 length; empty on error)
//!           topics        INT32 count, then (STRING name, INT16 error_code) per asked topic
//! ```
//!
//! Each topic is checked with the decision the Kafka path uses ([`Ctx::authorized`]: the
//! principal of the connection under the listener's ACL, or in cluster mode the cluster's
//! answer, asked first on the client's upstream connection); the ticket names the allowed
//! ones, for the connection's source address. Error codes: TOPIC_AUTHORIZATION_FAILED (29)
//! when no topic is allowed, SECURITY_DISABLED (54) when the gateway requires no tickets,
//! INVALID_REQUEST (42) for a request that cannot get one, UNSUPPORTED_VERSION (35).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError as E;

use super::Ctx;
use crate::fetch::ticket::{TicketKeys, MAX_TOPICS};
use crate::kafka::chunk::Chunk;
use crate::kafka::stats::inc;

/// The extension's API key: "KX".
pub const API_KEY: i16 = 0x4B58;
/// The one version.
pub const VERSION: i16 = 0;

/// Whether a request frame (size prefix removed) is a FetchTicket request.
pub fn is_request(frame: &[u8]) -> bool {
    frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == API_KEY
}

/// The request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketRequest {
    pub topics: Vec<String>,
}

/// The response body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketResponse {
    pub error_code: i16,
    pub error_message: Option<String>,
    /// Valid for this long from the answer.
    pub lifetime_ms: i64,
    pub ticket: Vec<u8>,
    /// Per topic asked: 0 when the ticket names it, else why not.
    pub topics: Vec<(String, i16)>,
}

impl TicketResponse {
    /// How long the ticket is valid.
    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.lifetime_ms.max(0) as u64)
    }
}

/// Bounds-checked reads of the big-endian Kafka primitives.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!("{n} bytes wanted, {} left", self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().map_err(|_| "i16")?,
        ))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| "i32")?,
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| "i64")?,
        ))
    }
    fn nullable_string(&mut self) -> Result<Option<String>, String> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        let b = self.take(n as usize)?;
        std::str::from_utf8(b)
            .map(|s| Some(s.to_string()))
            .map_err(|_| "string is not UTF-8".to_string())
    }
    fn string(&mut self) -> Result<String, String> {
        self.nullable_string()?
            .ok_or_else(|| "null string".to_string())
    }
    /// An INT32 array count, refused before allocating when the bytes left cannot hold
    /// `count` entries of at least `min_entry` bytes (as [`crate::kafka::bounds`]).
    fn count(&mut self, max: usize, min_entry: usize) -> Result<usize, String> {
        let n = self.i32()?;
        let n = usize::try_from(n).map_err(|_| format!("array count {n}"))?;
        if n > max || n * min_entry > self.0.len() {
            return Err(format!("array count {n} ({} bytes left)", self.0.len()));
        }
        Ok(n)
    }
}

fn put_string(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

impl TicketRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i32(self.topics.len() as i32);
        for t in &self.topics {
            put_string(&mut b, t);
        }
        b.to_vec()
    }

    pub fn decode(body: &[u8]) -> Result<TicketRequest, String> {
        let mut r = Reader(body);
        let n = r.count(MAX_TOPICS, 2)?;
        let mut topics = Vec::with_capacity(n);
        for _ in 0..n {
            topics.push(r.string()?);
        }
        Ok(TicketRequest { topics })
    }
}

impl TicketResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(self.error_code);
        match &self.error_message {
            Some(m) => put_string(&mut b, m),
            None => b.put_i16(-1),
        }
        b.put_i64(self.lifetime_ms);
        b.put_i32(self.ticket.len() as i32);
        b.put_slice(&self.ticket);
        b.put_i32(self.topics.len() as i32);
        for (t, code) in &self.topics {
            put_string(&mut b, t);
            b.put_i16(*code);
        }
        b.to_vec()
    }

    pub fn decode(body: &[u8]) -> Result<TicketResponse, String> {
        let mut r = Reader(body);
        let error_code = r.i16()?;
        let error_message = r.nullable_string()?;
        let lifetime_ms = r.i64()?;
        let n = r.count(crate::fetch::ticket::MAX_TICKET_LEN, 1)?;
        let ticket = r.take(n)?.to_vec();
        let n = r.count(MAX_TOPICS, 4)?;
        let mut topics = Vec::with_capacity(n);
        for _ in 0..n {
            topics.push((r.string()?, r.i16()?));
        }
        Ok(TicketResponse {
            error_code,
            error_message,
            lifetime_ms,
            ticket,
            topics,
        })
    }
}

/// A size-prefixed FetchTicket request frame (header v1).
pub fn request_frame(correlation_id: i32, client_id: &str, req: &TicketRequest) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i32(0);
    b.put_i16(API_KEY);
    b.put_i16(VERSION);
    b.put_i32(correlation_id);
    put_string(&mut b, client_id);
    b.put_slice(&req.encode());
    let len = (b.len() - 4) as i32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.to_vec()
}

/// Splits a response frame (size prefix removed) into its correlation id and body.
pub fn response_body(frame: &[u8]) -> Result<(i32, TicketResponse), String> {
    let mut r = Reader(frame);
    let correlation_id = r.i32()?;
    Ok((correlation_id, TicketResponse::decode(r.0)?))
}

/// The well-formed topic names a FetchTicket v0 request frame (size prefix removed) asks
/// for, deduplicated: what cluster mode asks the cluster about before answering
/// ([`crate::kafka::upstream::authz::requested_topics`]). None when it does not decode (its
/// handler refuses it).
pub fn requested_topics(frame: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader(frame);
    let (_key, version, _correlation_id) = (r.i16().ok()?, r.i16().ok()?, r.i32().ok()?);
    r.nullable_string().ok()?;
    if version != VERSION {
        return None;
    }
    let mut topics = TicketRequest::decode(r.0).ok()?.topics;
    topics.retain(|t| !t.is_empty() && t.len() <= crate::fetch::wire::MAX_TOPIC_LEN);
    topics.sort_unstable();
    topics.dedup();
    Some(topics)
}

/// What the connection asking brings: its principal is in the [`Ctx`].
pub struct Asker<'a> {
    /// The gateway's keys (None: its fetch endpoint requires no ticket).
    pub keys: Option<&'a TicketKeys>,
    /// The connection's source address: the ticket is for it.
    pub peer: Option<IpAddr>,
    pub now: Instant,
}

/// Answers a FetchTicket request frame (size prefix removed). Err: the frame does not parse
/// (the connection closes, as for any undecodable request).
pub fn handle(ctx: &Ctx, asker: &Asker, frame: &[u8]) -> Result<Vec<Chunk>, String> {
    let mut r = Reader(frame);
    let (_key, version, correlation_id) = (r.i16()?, r.i16()?, r.i32()?);
    let _client_id = r.nullable_string()?;
    let resp = if version != VERSION {
        refusal(E::UnsupportedVersion.code(), "FetchTicket v0 only")
    } else {
        answer(ctx, asker, &TicketRequest::decode(r.0)?)
    };
    let body = resp.encode();
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_i32((4 + body.len()) as i32);
    out.put_i32(correlation_id);
    out.put_slice(&body);
    Ok(vec![Chunk::Mem(Bytes::from(out))])
}

fn refusal(code: i16, message: &str) -> TicketResponse {
    TicketResponse {
        error_code: code,
        error_message: Some(message.to_string()),
        ..TicketResponse::default()
    }
}

fn answer(ctx: &Ctx, asker: &Asker, req: &TicketRequest) -> TicketResponse {
    let Some(keys) = asker.keys else {
        return refusal(
            E::SecurityDisabled.code(),
            "this gateway's fetch endpoint requires no ticket",
        );
    };
    let Some(peer) = asker.peer else {
        return refusal(
            E::InvalidRequest.code(),
            "no source address to bind a ticket to",
        );
    };
    if req.topics.is_empty() {
        return refusal(
            E::InvalidRequest.code(),
            "a ticket names at least one topic",
        );
    }
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut allowed = Vec::new();
    for t in &req.topics {
        let code = if t.is_empty() || t.len() > crate::fetch::wire::MAX_TOPIC_LEN {
            E::InvalidTopicException.code()
        } else {
            match ctx.authorized(t) {
                Ok(()) => {
                    // A name asked twice is named once.
                    if !allowed.contains(&t.as_str()) {
                        allowed.push(t.as_str());
                    }
                    0
                }
                Err(e) => e.code(),
            }
        };
        topics.push((t.clone(), code));
    }
    if allowed.is_empty() {
        return TicketResponse {
            topics,
            ..refusal(
                E::TopicAuthorizationFailed.code(),
                &format!("{} may read none of these topics", ctx.authz.principal()),
            )
        };
    }
    match keys.issue(asker.now, ctx.authz.principal(), peer, &allowed) {
        Ok(ticket) => {
            inc(&ctx.stats.auth.tickets_issued);
            log::debug!(
                "kafka {peer}: fetch ticket for {} ({allowed:?})",
                ctx.authz.principal()
            );
            TicketResponse {
                error_code: 0,
                error_message: None,
                lifetime_ms: keys.lifetime().as_millis() as i64,
                ticket,
                topics,
            }
        }
        Err(e) => TicketResponse {
            topics,
            ..refusal(E::InvalidRequest.code(), &e.to_string())
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_bad_counts_are_refused_before_allocating() {
        let req = TicketRequest {
            topics: vec!["t".into(), "orders".into()],
        };
        assert_eq!(TicketRequest::decode(&req.encode()).unwrap(), req);
        let resp = TicketResponse {
            error_code: 0,
            error_message: None,
            lifetime_ms: 600_000,
            ticket: vec![1, 2, 3],
            topics: vec![("t".into(), 0), ("u".into(), 29)],
        };
        assert_eq!(TicketResponse::decode(&resp.encode()).unwrap(), resp);
        let enc = req.encode();
        for n in 0..enc.len() {
            assert!(TicketRequest::decode(&enc[..n]).is_err(), "prefix {n}");
        }
        for bad in [i32::MAX, -1, 65, 3] {
            let mut b = bad.to_be_bytes().to_vec();
            b.extend_from_slice(&[0, 1, b't']);
            assert!(TicketRequest::decode(&b).is_err(), "count {bad}");
        }
        let f = request_frame(7, "kxgw", &req);
        assert!(is_request(&f[4..]));
        assert_eq!(
            requested_topics(&f[4..]),
            Some(vec!["orders".to_string(), "t".to_string()])
        );
        assert_eq!(requested_topics(&f[4..f.len() - 1]), None);
        assert_eq!(
            i32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
    }
}
