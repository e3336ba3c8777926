//! Fetch tickets: what a consumer's authenticated Kafka connection proves, carried by every
//! FETCH of protocol version 3 (docs/fetch-protocol.md, "Fetch tickets").
//!
//! A ticket names the principal, the topics it may read, the consumer's IP address and an
//! expiry, sealed with HMAC-SHA256 (truncated to 16 bytes) under a key of the gateway. The
//! keys derive from one random secret per gateway: `key[id] = HMAC-SHA256(secret, "kxgw
//! ticket key" | id)`, `id` = rotation periods since the gateway started, so the Kafka
//! listener that issues tickets and every fetch server (kernel UDP, each AF_XDP queue) that
//! checks them agree without talking: they share one [`TicketKeys`]. Tickets under the
//! current key and the previous one are accepted (a ticket lives at most one period), and
//! the next one (a sibling thread whose clock read a moment later).
//!
//! Sans-I/O: time comes in as an [`Instant`]; the clock of a ticket is milliseconds since
//! the keys were made, so it means nothing outside this gateway process (the consumer is
//! told the lifetime, not the expiry).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// First byte of every ticket (its layout).
pub const TICKET_FORMAT: u8 = 1;
/// Bytes of the seal.
pub const MAC_LEN: usize = 16;
pub use super::wire::MAX_TICKET_LEN;
/// Most topics one ticket names.
pub const MAX_TOPICS: usize = 64;
/// Longest principal.
pub const MAX_PRINCIPAL_LEN: usize = 255;
/// Default ticket lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Default key rotation period (never shorter than the lifetime).
pub const DEFAULT_ROTATION: Duration = Duration::from_secs(3600);

type HmacSha256 = Hmac<Sha256>;

/// The ticket lifetime in force: `asked` (`--fetch-ticket-lifetime`), or in cluster mode
/// (`authz_ttl` given: how long the cluster's "may read" answers are trusted) never longer
/// than that, so a revoked ACL stops UDP/AF_XDP serving within the cache time plus one
/// lifetime, as it stops Kafka serving within the cache time: every renewal is a new ask
/// through the cache. Never under a millisecond (the ticket clock's unit).
pub fn effective_lifetime(asked: Duration, authz_ttl: Option<Duration>) -> Duration {
    let l = match authz_ttl {
        Some(ttl) => asked.min(ttl),
        None => asked,
    };
    l.max(Duration::from_millis(1))
}

/// The decoded contents of a ticket (what was sealed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// Which key sealed it.
    pub key_id: u32,
    /// Expiry on the gateway's ticket clock (ms since its keys were made).
    pub expiry_ms: u64,
    /// The consumer's address (the Kafka connection's source).
    pub addr: IpAddr,
    /// `User:name`.
    pub principal: String,
    /// The topics it may read (literal names).
    pub topics: Vec<String>,
}

/// Why a FETCH's ticket was refused (each counted on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// No ticket (or a protocol version without one).
    Missing,
    /// Cut short or otherwise not a ticket.
    Malformed,
    /// The seal does not verify (or names a key this gateway never had).
    Forged,
    /// Past its expiry, or under a retired key.
    Expired,
    /// Issued for another source address.
    WrongAddress,
    /// Does not name the topic of partition entry `slot`.
    OutOfScope { slot: usize },
}

impl Reject {
    /// The counter name of the cause.
    pub fn cause(self) -> &'static str {
        match self {
            Reject::Missing => "missing",
            Reject::Malformed => "malformed",
            Reject::Forged => "forged",
            Reject::Expired => "expired",
            Reject::WrongAddress => "wrong_address",
            Reject::OutOfScope { .. } => "out_of_scope",
        }
    }
}

/// Why a ticket could not be issued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("a ticket names 1..={MAX_TOPICS} topics, not {0}")]
    TopicCount(usize),
    #[error("topic name of {0} bytes (1..=249)")]
    TopicLen(usize),
    #[error("principal of {0} bytes (1..={MAX_PRINCIPAL_LEN})")]
    PrincipalLen(usize),
    #[error("ticket of {0} bytes is over {MAX_TICKET_LEN}: ask for fewer topics")]
    TooLarge(usize),
}

/// The gateway's ticket keys and clock: one per gateway, shared (in an `Arc`) by the issuer
/// and every checker.
pub struct TicketKeys {
    secret: [u8; 32],
    base: Instant,
    lifetime: Duration,
    rotation: Duration,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(
            f,
            "TicketKeys(lifetime {:?}, rotation {:?})",
            self.lifetime, self.rotation
        )
    }
}

impl TicketKeys {
    /// Fresh random keys whose clock starts at `base`.
    pub fn new(base: Instant, lifetime: Duration, rotation: Duration) -> TicketKeys {
        Self::with_secret(rand::random(), base, lifetime, rotation)
    }

    /// Keys from a given secret (tests). The rotation is at least the lifetime, so a ticket
    /// never outlives the key after the one that sealed it.
    pub fn with_secret(
        secret: [u8; 32],
        base: Instant,
        lifetime: Duration,
        rotation: Duration,
    ) -> TicketKeys {
        let lifetime = lifetime.max(Duration::from_millis(1));
        TicketKeys {
            secret,
            base,
            lifetime,
            rotation: rotation.max(lifetime),
        }
    }

    /// How long an issued ticket is valid.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn clock_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64
    }

    fn key_id(&self, now: Instant) -> u32 {
        let r = self.rotation.as_millis().max(1) as u64;
        (self.clock_ms(now) / r) as u32
    }

    fn mac(&self, key_id: u32) -> HmacSha256 {
        let mut k = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        k.update(b"kxgw ticket key");
        k.update(&key_id.to_be_bytes());
        let key = k.finalize().into_bytes();
        HmacSha256::new_from_slice(&key).expect("HMAC takes any key length")
    }

    /// A sealed ticket for `principal` at `addr` naming `topics`, valid for
    /// [`TicketKeys::lifetime`] from `now`.
    pub fn issue(
        &self,
        now: Instant,
        principal: &str,
        addr: IpAddr,
        topics: &[&str],
    ) -> Result<Vec<u8>, IssueError> {
        let t = Ticket {
            key_id: self.key_id(now),
            expiry_ms: self.clock_ms(now) + self.lifetime.as_millis() as u64,
            addr: addr.to_canonical(),
            principal: principal.to_string(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
        };
        let mut out = encode_body(&t)?;
        let mut m = self.mac(t.key_id);
        m.update(&out);
        out.extend_from_slice(&m.finalize().into_bytes()[..MAC_LEN]);
        if out.len() > MAX_TICKET_LEN {
            return Err(IssueError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Checks a FETCH's ticket before anything is read: sealed by this gateway under a
    /// current key, unexpired at `now`, issued for `src`, naming every topic in `topics` (the
    /// request's partition entries, in slot order).
    pub fn check<'a>(
        &self,
        now: Instant,
        src: IpAddr,
        ticket: &[u8],
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<Ticket, Reject> {
        if ticket.is_empty() {
            return Err(Reject::Missing);
        }
        let t = decode(ticket).ok_or(Reject::Malformed)?;
        let cur = self.key_id(now);
        let age = cur.wrapping_sub(t.key_id) as i32;
        if age > 1 {
            return Err(Reject::Expired);
        }
        if age < -1 {
            return Err(Reject::Forged);
        }
        let (body, tag) = ticket.split_at(ticket.len() - MAC_LEN);
        let mut m = self.mac(t.key_id);
        m.update(body);
        // Constant time.
        m.verify_truncated_left(tag).map_err(|_| Reject::Forged)?;
        if self.clock_ms(now) >= t.expiry_ms {
            return Err(Reject::Expired);
        }
        if t.addr != src.to_canonical() {
            return Err(Reject::WrongAddress);
        }
        for (slot, topic) in topics.into_iter().enumerate() {
            if !t.topics.iter().any(|n| n == topic) {
                return Err(Reject::OutOfScope { slot });
            }
        }
        Ok(t)
    }
}

/// Everything but the seal.
fn encode_body(t: &Ticket) -> Result<Vec<u8>, IssueError> {
    if t.topics.is_empty() || t.topics.len() > MAX_TOPICS {
        return Err(IssueError::TopicCount(t.topics.len()));
    }
    if t.principal.is_empty() || t.principal.len() > MAX_PRINCIPAL_LEN {
        return Err(IssueError::PrincipalLen(t.principal.len()));
    }
    let mut out = Vec::with_capacity(128);
    out.push(TICKET_FORMAT);
    out.extend_from_slice(&t.key_id.to_be_bytes());
    out.extend_from_slice(&t.expiry_ms.to_be_bytes());
    match t.addr {
        IpAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
    out.push(t.principal.len() as u8);
    out.extend_from_slice(t.principal.as_bytes());
    out.push(t.topics.len() as u8);
    for topic in &t.topics {
        if topic.is_empty() || topic.len() > super::wire::MAX_TOPIC_LEN {
            return Err(IssueError::TopicLen(topic.len()));
        }
        out.push(topic.len() as u8);
        out.extend_from_slice(topic.as_bytes());
    }
    Ok(out)
}

/// Decodes a ticket (seal included, not verified). None for anything that is not exactly
/// one well-formed ticket: every length is checked before it is used, nothing allocates more
/// than the input holds.
pub fn decode(ticket: &[u8]) -> Option<Ticket> {
    if ticket.len() > MAX_TICKET_LEN || ticket.len() < MAC_LEN {
        return None;
    }
    let body = &ticket[..ticket.len() - MAC_LEN];
    let mut r = Cursor(body);
    if r.u8()? != TICKET_FORMAT {
        return None;
    }
    let key_id = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    let expiry_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let addr = match r.u8()? {
        4 => IpAddr::from(<[u8; 4]>::try_from(r.take(4)?).ok()?),
        6 => IpAddr::from(<[u8; 16]>::try_from(r.take(16)?).ok()?),
        _ => return None,
    };
    let principal = r.string()?;
    let n = r.u8()? as usize;
    if n == 0 || n > MAX_TOPICS || n * 2 > r.0.len() {
        return None;
    }
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        let topic = r.string()?;
        if topic.len() > super::wire::MAX_TOPIC_LEN {
            return None;
        }
        topics.push(topic);
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(Ticket {
        key_id,
        expiry_ms,
        addr,
        principal,
        topics,
    })
}

/// Bounds-checked reads over a ticket body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A u8 length (1..) and that many UTF-8 bytes.
    fn string(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        if n == 0 {
            return None;
        }
        std::str::from_utf8(self.take(n)?).ok().map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(base: Instant) -> TicketKeys {
        TicketKeys::with_secret(
            [7; 32],
            base,
            Duration::from_secs(10),
            Duration::from_secs(60),
        )
    }

    const A: &str = "198.18.0.2";

    #[test]
    fn issued_tickets_check_for_their_address_topics_and_lifetime() {
        let t0 = Instant::now();
        let k = keys(t0);
        let a: IpAddr = A.parse().unwrap();
        let t = k.issue(t0, "User:alice", a, &["t", "orders"]).unwrap();
        let ok = k.check(t0, a, &t, ["t", "orders", "t"]).unwrap();
        assert_eq!(ok.principal, "User:alice");
        assert_eq!(ok.topics, ["t", "orders"]);
        // Replays within the lifetime from the same address are fine.
        assert!(k.check(t0 + Duration::from_secs(9), a, &t, ["t"]).is_ok());
        assert!(k.check(t0, a, &t, []).is_ok(), "an acknowledgement");
        assert_eq!(
            k.check(t0 + Duration::from_secs(10), a, &t, ["t"]),
            Err(Reject::Expired)
        );
        assert_eq!(
            k.check(t0, "198.18.0.3".parse().unwrap(), &t, ["t"]),
            Err(Reject::WrongAddress)
        );
        assert_eq!(
            k.check(t0, a, &t, ["t", "u"]),
            Err(Reject::OutOfScope { slot: 1 })
        );
        assert_eq!(k.check(t0, a, &[], ["t"]), Err(Reject::Missing));
        // IPv4-mapped IPv6 is the same address.
        let mapped: IpAddr = "::ffff:198.18.0.2".parse().unwrap();
        assert!(k.check(t0, mapped, &t, ["t"]).is_ok());
    }

    #[test]
    fn forged_truncated_and_foreign_tickets_are_refused() {
        let t0 = Instant::now();
        let k = keys(t0);
        let a: IpAddr = A.parse().unwrap();
        let t = k.issue(t0, "User:alice", a, &["t"]).unwrap();
        // Any flipped bit: the seal fails (or the body no longer parses).
        for i in 0..t.len() {
            let mut f = t.clone();
            f[i] ^= 0x01;
            let r = k.check(t0, a, &f, ["t"]);
            assert!(
                matches!(r, Err(Reject::Forged | Reject::Malformed | Reject::Expired)),
                "byte {i}: {r:?}"
            );
        }
        // Widening the scope by editing the topic list breaks the seal.
        let mut wider = t.clone();
        let at = wider.len() - MAC_LEN - 1;
        wider[at] = b'u';
        assert_eq!(k.check(t0, a, &wider, ["u"]), Err(Reject::Forged));
        for n in 0..t.len() {
            assert!(k.check(t0, a, &t[..n], ["t"]).is_err(), "prefix {n}");
        }
        let other = TicketKeys::with_secret(
            [8; 32],
            t0,
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        assert_eq!(other.check(t0, a, &t, ["t"]), Err(Reject::Forged));
    }

    #[test]
    fn the_previous_key_is_accepted_for_one_period() {
        let t0 = Instant::now();
        let k = TicketKeys::with_secret(
            [1; 32],
            t0,
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let a: IpAddr = A.parse().unwrap();
        // Issued just before the rotation, checked just after: previous key, still valid.
        let late = t0 + Duration::from_secs(59);
        let t = k.issue(late, "User:a", a, &["t"]).unwrap();
        assert_eq!(decode(&t).unwrap().key_id, 0);
        let after = t0 + Duration::from_secs(61);
        assert_eq!(k.check(after, a, &t, ["t"]).unwrap().key_id, 0);
        assert_eq!(
            decode(&k.issue(after, "User:a", a, &["t"]).unwrap())
                .unwrap()
                .key_id,
            1
        );
        // Two keys later it is expired (it could not be valid any more anyway).
        assert_eq!(
            k.check(t0 + Duration::from_secs(125), a, &t, ["t"]),
            Err(Reject::Expired)
        );
        // The rotation is never shorter than the lifetime.
        let short = TicketKeys::new(t0, Duration::from_secs(30), Duration::from_secs(1));
        let t = short.issue(t0, "User:a", a, &["t"]).unwrap();
        assert!(short
            .check(t0 + Duration::from_secs(29), a, &t, ["t"])
            .is_ok());
    }

    #[test]
    fn in_cluster_mode_the_lifetime_is_capped_by_the_authz_cache_time_in_ms() {
        let (s600, ms) = (Duration::from_secs(600), Duration::from_millis);
        assert_eq!(effective_lifetime(s600, None), s600, "standalone: as asked");
        assert_eq!(effective_lifetime(s600, Some(ms(5000))), ms(5000));
        assert_eq!(effective_lifetime(ms(1500), Some(ms(5000))), ms(1500));
        assert_eq!(effective_lifetime(s600, Some(ms(0))), ms(1), "never zero");
        // A 1500 ms ticket: valid at 1499 ms, expired at 1500, under the hour's key.
        let t0 = Instant::now();
        let life = effective_lifetime(s600, Some(ms(1500)));
        let k = TicketKeys::with_secret([3; 32], t0, life, DEFAULT_ROTATION.max(life));
        assert_eq!(k.lifetime(), ms(1500));
        let a: IpAddr = A.parse().unwrap();
        let t = k.issue(t0 + ms(100), "User:a", a, &["t"]).unwrap();
        assert!(k.check(t0 + ms(1599), a, &t, ["t"]).is_ok());
        assert_eq!(k.check(t0 + ms(1600), a, &t, ["t"]), Err(Reject::Expired));
    }

    #[test]
    fn issue_bounds() {
        let t0 = Instant::now();
        let k = keys(t0);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            k.issue(t0, "User:a", a, &[]),
            Err(IssueError::TopicCount(0))
        );
        assert_eq!(k.issue(t0, "", a, &["t"]), Err(IssueError::PrincipalLen(0)));
        assert!(matches!(
            k.issue(t0, "User:a", a, &[""]),
            Err(IssueError::TopicLen(0))
        ));
        let long = "x".repeat(200);
        let many = [long.as_str(), long.as_str(), long.as_str()];
        assert!(matches!(
            k.issue(t0, "User:a", a, &many),
            Err(IssueError::TooLarge(_))
        ));
        let t = k.issue(t0, "User:a", a, &["t"]).unwrap();
        assert!(k.check(t0, a, &t, ["t"]).is_ok());
        assert_eq!(decode(&t).unwrap().addr, a);
    }

    proptest::proptest! {
        /// No input makes the decoder or the checker panic; a decoded ticket re-encodes to
        /// the same body.
        #[test]
        fn decode_never_panics(d in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Some(t) = decode(&d) {
                let body = encode_body(&t).unwrap();
                proptest::prop_assert_eq!(&body[..], &d[..d.len() - MAC_LEN]);
            }
            let k = keys(Instant::now());
            proptest::prop_assert!(k.check(Instant::now(), A.parse().unwrap(), &d, ["t"]).is_err());
        }
    }
}
