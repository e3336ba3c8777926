//! One client connection as a sans-I/O state machine: bytes in ([`Session::receive`]),
//! response chunks out ([`Session::out`]), time and log appends as inputs
//! ([`Session::advance`]). Requests are answered strictly in order, one at a time, as a Kafka
//! broker does: a waiting (long-poll) fetch holds back the requests behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest,
    OffsetForLeaderEpochRequest, RequestHeader,
};
use kafka_protocol::protocol::Decodable;

use super::apis::groups::{self as group_apis, GroupError, Pending};
use super::apis::{self, api_versions, fetch, list_offsets, metadata, sasl, unsupported, Ctx};
use super::auth::{Acl, Authz, Exchange, Security};
use super::chunk::{Chunk, EncodeError};
use super::frame::{FrameError, Framer};
use super::group::{GroupConfig, Groups, WaiterId};
use super::outq::OutQueue;
use super::stats::inc;
use super::upstream::forward::{ForwardError, Forwarder};
use super::upstream::relay::{self, Relay};
use super::upstream::rewrite;

/// Stop answering requests while this many response bytes wait for the socket: a slow
/// consumer is throttled by its own backlog and costs the gateway nothing more.
pub const OUT_HIGH_WATER: usize = 4 << 20;

/// Why a connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Length prefix out of bounds (garbage, or a hostile 2 GiB frame).
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// A request whose header or body does not decode.
    #[error("undecodable request (api key {api_key}, v{version}): {reason}")]
    BadRequest {
        /// Raw api key.
        api_key: i16,
        /// Raw api version.
        version: i16,
        /// Decoder's complaint.
        reason: String,
    },
    /// A served API at a version outside the advertised range (Kafka closes too).
    #[error("{api:?} v{version} is not supported (served: v{min}-v{max})")]
    UnsupportedVersion {
        /// The API.
        api: ApiKey,
        /// Requested version.
        version: i16,
        /// Lowest served.
        min: i16,
        /// Highest served.
        max: i16,
    },
    /// A non-served API without a defined refusal.
    #[error("{0}")]
    Refused(#[from] unsupported::RefuseError),
    /// A response that would not encode.
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// Cluster mode: the upstream's answer to a forwarded request is unusable.
    #[error("{0}")]
    Upstream(#[from] ForwardError),
    /// A request other than ApiVersions / SaslHandshake / SaslAuthenticate before the client
    /// authenticated on a SASL listener (Kafka closes too).
    #[error("{0:?} request before SASL authentication")]
    Unauthenticated(ApiKey),
}

/// A fetch waiting for `min_bytes` or its deadline.
struct Parked {
    correlation_id: i32,
    version: i16,
    req: Box<FetchRequest>,
    deadline: Instant,
    wanted: Vec<(String, i32)>,
}

/// Per-connection protocol state.
pub struct Session {
    framer: Framer,
    out: OutQueue,
    parked: Option<Parked>,
    /// The group coordinator this connection talks to.
    groups: Arc<Groups>,
    /// Peer address (DescribeGroups' client_host).
    peer: String,
    /// A JoinGroup or SyncGroup waiting for the rebalance (holds back later requests).
    group_wait: Option<Pending>,
    /// Cluster mode: the request forwarded upstream (holds back later requests).
    forward: Forwarder,
    /// The SASL exchange, on SASL listeners.
    gate: Option<Exchange>,
    /// The listener's ACL, if any.
    acl: Option<Arc<Acl>>,
    /// What this connection's principal may read.
    authz: Arc<Authz>,
    /// Close once the queued responses are sent (failed authentication).
    closing: bool,
    /// Cluster mode on a SASL listener: the login relayed to the cluster, reads asked of it.
    relay: Option<Relay>,
    /// Fetch tickets this listener issues, for `peer_ip` (see [`apis::fetch_ticket`]).
    tickets: Option<Arc<crate::fetch::ticket::TicketKeys>>,
    peer_ip: Option<std::net::IpAddr>,
}

impl Session {
    /// A fresh connection refusing requests larger than `max_request` bytes.
    /// Its group APIs talk to a coordinator of its own (tests, fuzzing).
    pub fn new(max_request: usize) -> Self {
        let groups = Arc::new(Groups::in_memory(GroupConfig::default()));
        Self::with_groups(max_request, groups, String::new())
    }

    /// A connection from `peer` whose group APIs go to the listener's coordinator.
    pub fn with_groups(max_request: usize, groups: Arc<Groups>, peer: String) -> Self {
        Session {
            framer: Framer::new(max_request),
            out: OutQueue::default(),
            parked: None,
            groups,
            peer,
            group_wait: None,
            forward: Forwarder::default(),
            gate: None,
            acl: None,
            authz: Arc::new(super::auth::ALLOW_ALL.clone()),
            closing: false,
            relay: None,
            tickets: None,
            peer_ip: None,
        }
    }

    /// Cluster mode: the forwarding state (the listener moves its bytes to the upstream).
    pub fn forwarder(&mut self) -> &mut Forwarder {
        &mut self.forward
    }

    /// Applies the listener's security: SASL before anything else, and the ACL (as
    /// `User:ANONYMOUS` until a SASL login names the principal). `peer` is rate-limited.
    pub fn secure(&mut self, sec: &Security, peer: Option<std::net::IpAddr>) {
        self.gate = sec.sasl.clone().map(|c| Exchange::new(c, peer));
        self.acl = sec.acl.clone();
        self.tickets = sec.tickets.clone();
        self.peer_ip = peer;
        self.authz = Arc::new(Authz::new(
            self.acl.clone(),
            super::auth::ANONYMOUS.to_string(),
        ));
        self.relay = sec.relay.clone().map(|c| Relay::new(c, peer));
    }

    /// The principal a transport established (a TLS client certificate's subject): the ACL
    /// applies to it until a SASL login names another.
    pub fn set_principal(&mut self, principal: String) {
        self.authz = Arc::new(Authz::new(self.acl.clone(), principal));
    }

    /// The connection's principal (`User:ANONYMOUS` until authenticated).
    pub fn principal(&self) -> &str {
        self.authz.principal()
    }

    /// Whether the connection must close once its queued responses are sent.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The group coordinator this connection talks to.
    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// The coordinator waiter of a parked JoinGroup / SyncGroup.
    pub fn group_waiter(&self) -> Option<WaiterId> {
        self.group_wait.map(|p| p.waiter)
    }

    /// Feeds bytes read from the socket.
    pub fn receive(&mut self, data: &[u8]) {
        self.framer.extend(data);
    }

    /// Whether reading more input is useful now: only while requests can be processed or
    /// the current frame is incomplete (bounded by the frame limit), so a client that
    /// pipelines without reading its responses cannot grow our buffers.
    pub fn wants_input(&self) -> bool {
        if self.closing {
            return false;
        }
        let busy = self.is_parked() || self.out.pending_bytes() >= OUT_HIGH_WATER;
        !busy || self.framer.wants() > 0 && self.framer.buffered() < 64 * 1024
    }

    /// The responses waiting for the socket.
    pub fn out(&mut self) -> &mut OutQueue {
        &mut self.out
    }

    /// When a waiting fetch must be answered regardless of data.
    pub fn deadline(&self) -> Option<Instant> {
        self.parked.as_ref().map(|p| p.deadline)
    }

    /// Whether a waiting fetch reads `topic`-`partition`.
    pub fn waits_for(&self, topic: &str, partition: i32) -> bool {
        self.parked
            .as_ref()
            .is_some_and(|p| p.wanted.iter().any(|(t, q)| *q == partition && t == topic))
    }

    /// The partitions a waiting fetch reads (none without one).
    pub fn waited(&self) -> impl Iterator<Item = (&str, i32)> {
        self.parked
            .iter()
            .flat_map(|p| p.wanted.iter().map(|(t, q)| (t.as_str(), *q)))
    }

    /// Whether a fetch, JoinGroup, SyncGroup or forwarded request is waiting.
    pub fn is_parked(&self) -> bool {
        self.parked.is_some() || self.group_wait.is_some() || self.forward.waiting()
    }

    /// Answers what can be answered now: the waiting fetch if it became ready (data arrived
    /// or `now` passed its deadline), then queued requests until one waits or the output
    /// backlog is too large. An error means the connection must be closed.
    pub fn advance(&mut self, ctx: &Ctx, now: Instant) -> Result<(), SessionError> {
        let authz = self.authz_at(now);
        let ctx = &Ctx {
            authz: &authz,
            ..*ctx
        };
        if let Some(view) = ctx
            .node
            .cluster
            .as_deref()
            .filter(|_| self.forward.waiting())
        {
            match self.forward.take_response(view)? {
                Some(chunks) => {
                    self.out.push(chunks);
                    self.relayed(ctx, now)?;
                }
                None => return Ok(()),
            }
        }
        if let Some(p) = self.group_wait {
            let Some(reply) = self.groups.lock().coord.take_reply(p.waiter) else {
                return Ok(());
            };
            self.group_wait = None;
            self.out
                .push(group_apis::respond(&p, reply).map_err(group_error)?);
        }
        if let Some(p) = &self.parked {
            let expired = now >= p.deadline;
            // A waiting fetch ends under the authorization it was admitted with.
            let wait = Duration::from_millis(p.req.max_wait_ms.max(0) as u64);
            let authz = self.authz_at(p.deadline.checked_sub(wait).unwrap_or(now));
            let ctx = &Ctx {
                authz: &authz,
                ..*ctx
            };
            let waited = if expired {
                fetch::Waited::Expired
            } else {
                fetch::Waited::Parked
            };
            match fetch::evaluate(ctx, p.correlation_id, p.version, &p.req, waited)? {
                fetch::Outcome::Wait => return Ok(()),
                fetch::Outcome::Respond(chunks) => {
                    inc(if expired {
                        &ctx.stats.fetch_expired
                    } else {
                        &ctx.stats.fetch_woken
                    });
                    self.out.push(chunks);
                    self.parked = None;
                }
            }
        }
        while !self.closing && !self.is_parked() && self.out.pending_bytes() < OUT_HIGH_WATER {
            // Bare SASL tokens (after a v0 handshake) may be shorter than a request header.
            let raw = self.gate.as_ref().is_some_and(|g| g.raw_tokens());
            self.framer
                .set_min(if raw { 0 } else { super::frame::MIN_REQUEST });
            let Some(frame) = self.framer.next_frame()? else {
                break;
            };
            if raw {
                self.raw_token(ctx, &frame, now);
                continue;
            }
            // A login changes the principal for the requests after it.
            let authz = self.authz_at(now);
            let ctx = &Ctx {
                authz: &authz,
                ..*ctx
            };
            // Relayed first: in cluster mode a FetchTicket waits for the cluster's answer too.
            if self.relay_intercepts(ctx, &frame, now)? {
                continue;
            }
            self.serve(ctx, frame, now)?;
        }
        Ok(())
    }

    /// One request frame, answered here: the FetchTicket extension or a Kafka request.
    fn serve(&mut self, ctx: &Ctx, frame: Bytes, now: Instant) -> Result<(), SessionError> {
        if apis::fetch_ticket::is_request(&frame) {
            return self.fetch_ticket(ctx, &frame, now);
        }
        self.handle(ctx, frame, now)
    }

    fn handle(&mut self, ctx: &Ctx, mut frame: Bytes, now: Instant) -> Result<(), SessionError> {
        let head = Head::parse(&frame);
        let (version, correlation_id) = (head.version, head.correlation_id);
        if self.forward_upstream(ctx, head, &frame) {
            return Ok(());
        }
        let Ok(key) = ApiKey::try_from(head.raw_key) else {
            inc(&ctx.stats.req_unsupported);
            return Err(head.bad("unknown API key".into()));
        };
        let before_login = self.gate.as_ref().is_some_and(|g| !g.is_authenticated());
        if before_login
            && !matches!(
                key,
                ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
            )
        {
            inc(&ctx.stats.auth.unauthenticated_request);
            return Err(SessionError::Unauthenticated(key));
        }
        let served = apis::served_range(key);
        if key == ApiKey::ApiVersions && served.is_some_and(|(_, hi)| version > hi) {
            // Kafka's rule: answer a too-new ApiVersions with v0 + UNSUPPORTED_VERSION, without
            // parsing a header or body format we do not know.
            inc(&ctx.stats.req_api_versions);
            self.out
                .push(api_versions::respond_unsupported(correlation_id)?);
            return Ok(());
        }
        let header_version = key.request_header_version(version);
        let header = RequestHeader::decode(&mut frame, header_version)
            .map_err(|e| head.bad(format!("{e:#}")))?;
        // The codec allocates arrays by their wire count before reading them: refuse counts
        // the body cannot hold before it sees them (see bounds).
        super::bounds::check(key, version, &frame).map_err(|e| head.bad(e.to_string()))?;
        if key == ApiKey::Produce {
            // Advertised for librdkafka's sake (see apis::SERVED), never performed.
            inc(&ctx.stats.req_unsupported);
            if served.is_some_and(|(lo, hi)| (lo..=hi).contains(&version)) {
                self.out.push(unsupported::refuse(
                    key,
                    version,
                    correlation_id,
                    &mut frame,
                )?);
                return Ok(());
            }
        }
        let Some((min, max)) = served.filter(|&(lo, hi)| (lo..=hi).contains(&version)) else {
            inc(&ctx.stats.req_unsupported);
            if let Some((min, max)) = served {
                return Err(SessionError::UnsupportedVersion {
                    api: key,
                    version,
                    min,
                    max,
                });
            }
            let chunks = unsupported::refuse(key, version, correlation_id, &mut frame)?;
            self.out.push(chunks);
            return Ok(());
        };
        debug_assert!(min <= version && version <= max);
        if group_apis::is_group_api(key) {
            return self.handle_group(ctx, head, key, &header, &mut frame, now);
        }
        let Some(chunks) = self.dispatch(ctx, head, key, &mut frame, now)? else {
            return Ok(());
        };
        if frame.has_remaining() {
            log::debug!(
                "{key:?} v{version}: {} trailing bytes ignored",
                frame.remaining()
            );
        }
        self.out.push(chunks);
        Ok(())
    }

    /// Cluster mode: what the gateway does not serve itself goes to the cluster (a too-new
    /// ApiVersions is still answered here, in v0, so the client retries). True if forwarded.
    fn forward_upstream(&mut self, ctx: &Ctx, head: Head, frame: &Bytes) -> bool {
        let Some(view) = ctx.node.cluster.as_deref() else {
            return false;
        };
        let too_new = head.raw_key == ApiKey::ApiVersions as i16
            && apis::served_range(ApiKey::ApiVersions).is_some_and(|(_, hi)| head.version > hi);
        let Some(rw) = rewrite::route(head.raw_key).filter(|_| !too_new) else {
            return false;
        };
        inc(&view.stats.forwarded);
        self.forward.send(frame, rw);
        true
    }

    /// A served group API: answered now, or parked until the rebalance answers it.
    fn handle_group(
        &mut self,
        ctx: &Ctx,
        head: Head,
        key: ApiKey,
        header: &RequestHeader,
        frame: &mut Bytes,
        now: Instant,
    ) -> Result<(), SessionError> {
        inc(&ctx.stats.req_group);
        let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
        let caller = group_apis::Caller {
            client_id,
            host: &self.peer,
            now,
        };
        let groups = Arc::clone(&self.groups);
        let answer = group_apis::handle(
            ctx,
            &groups,
            &caller,
            key,
            head.version,
            head.correlation_id,
            frame,
        )
        .map_err(|e| match e {
            GroupError::Decode(reason) => head.bad(reason),
            GroupError::Encode(e) => SessionError::Encode(e),
        })?;
        match answer {
            group_apis::Answer::Now(chunks) => self.out.push(chunks),
            group_apis::Answer::Wait(p) => self.group_wait = Some(p),
        }
        Ok(())
    }

    /// A served non-group API at a served version: its response, or None if the request
    /// waits (a parked fetch).
    fn dispatch(
        &mut self,
        ctx: &Ctx,
        head: Head,
        key: ApiKey,
        frame: &mut Bytes,
        now: Instant,
    ) -> Result<Option<Vec<Chunk>>, SessionError> {
        let (version, correlation_id) = (head.version, head.correlation_id);
        let bad = |reason: String| head.bad(reason);
        let chunks = match key {
            ApiKey::ApiVersions => {
                inc(&ctx.stats.req_api_versions);
                // An undecodable body still gets the list, with INVALID_REQUEST (as Kafka).
                let code = match ApiVersionsRequest::decode(frame, version) {
                    Ok(_) => 0,
                    Err(_) => kafka_protocol::error::ResponseError::InvalidRequest.code(),
                };
                api_versions::respond(correlation_id, version, code)?
            }
            ApiKey::Metadata => {
                inc(&ctx.stats.req_metadata);
                let req =
                    MetadataRequest::decode(frame, version).map_err(|e| bad(format!("{e:#}")))?;
                metadata::handle(ctx, correlation_id, version, &req)?
            }
            ApiKey::ListOffsets if version == 0 => {
                inc(&ctx.stats.req_list_offsets);
                list_offsets::v0::handle(ctx, correlation_id, frame)
                    .map_err(|e| bad(e.to_string()))?
            }
            ApiKey::ListOffsets => {
                inc(&ctx.stats.req_list_offsets);
                let req = ListOffsetsRequest::decode(frame, version)
                    .map_err(|e| bad(format!("{e:#}")))?;
                list_offsets::handle(ctx, correlation_id, version, &req)?
            }
            ApiKey::Fetch => {
                inc(&ctx.stats.req_fetch);
                let req =
                    FetchRequest::decode(frame, version).map_err(|e| bad(format!("{e:#}")))?;
                return self.fetch_or_park(ctx, head, req, now);
            }
            ApiKey::SaslHandshake => {
                let req =
                    sasl::decode_handshake(frame, version).map_err(|e| bad(format!("{e:#}")))?;
                let reply =
                    sasl::handshake(ctx, self.gate.as_mut(), correlation_id, version, &req)?;
                self.closing |= reply.close;
                reply.chunks
            }
            ApiKey::SaslAuthenticate => {
                let req =
                    sasl::decode_authenticate(frame, version).map_err(|e| bad(format!("{e:#}")))?;
                let reply = sasl::authenticate(
                    ctx,
                    self.gate.as_mut(),
                    correlation_id,
                    version,
                    &req,
                    now,
                )?;
                self.closing |= reply.close;
                self.logged_in();
                reply.chunks
            }
            ApiKey::OffsetForLeaderEpoch => {
                let req = OffsetForLeaderEpochRequest::decode(frame, version)
                    .map_err(|e| bad(format!("{e:#}")))?;
                apis::offset_for_leader_epoch::handle(ctx, correlation_id, version, &req)?
            }
            _ => return Err(bad("served API without a handler".into())),
        };
        Ok(Some(chunks))
    }

    /// A Fetch answered now, or parked (None) until data arrives or `max_wait_ms` passes.
    fn fetch_or_park(
        &mut self,
        ctx: &Ctx,
        head: Head,
        req: FetchRequest,
        now: Instant,
    ) -> Result<Option<Vec<Chunk>>, SessionError> {
        let (version, correlation_id) = (head.version, head.correlation_id);
        match fetch::evaluate(ctx, correlation_id, version, &req, fetch::Waited::No)? {
            fetch::Outcome::Respond(chunks) => Ok(Some(chunks)),
            fetch::Outcome::Wait => {
                inc(&ctx.stats.fetch_parked);
                let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64);
                self.parked = Some(Parked {
                    correlation_id,
                    version,
                    wanted: fetch::wanted(ctx, &req, version),
                    req: Box::new(req),
                    deadline: now + wait,
                });
                Ok(None)
            }
        }
    }
}

/// The fixed start of every request: api key, version, correlation id.
#[derive(Clone, Copy)]
struct Head {
    raw_key: i16,
    version: i16,
    correlation_id: i32,
}

impl Head {
    /// Frames are at least MIN_REQUEST (10) bytes: key, version, correlation id are there.
    fn parse(frame: &[u8]) -> Self {
        Head {
            raw_key: i16::from_be_bytes([frame[0], frame[1]]),
            version: i16::from_be_bytes([frame[2], frame[3]]),
            correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
        }
    }

    /// The connection-closing error for an undecodable request.
    fn bad(self, reason: String) -> SessionError {
        SessionError::BadRequest {
            api_key: self.raw_key,
            version: self.version,
            reason,
        }
    }
}

impl Session {
    /// A bare token after a SaslHandshake v0.
    fn raw_token(&mut self, ctx: &Ctx, token: &[u8], now: Instant) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        let reply = sasl::raw_token(ctx, gate, token, now);
        self.closing |= reply.close;
        self.out.push(reply.chunks);
        self.logged_in();
    }

    /// The connection's authorization as it stands at `now` (cluster answers expire).
    fn authz_at(&self, now: Instant) -> Arc<Authz> {
        if self.authz.expires() {
            Arc::new(self.authz.at(now))
        } else {
            Arc::clone(&self.authz)
        }
    }

    /// Cluster mode on a SASL listener: SASL requests are relayed (and gate the rest), local
    /// reads wait for the cluster's authorization. True when the frame was taken care of.
    fn relay_intercepts(
        &mut self,
        ctx: &Ctx,
        frame: &Bytes,
        now: Instant,
    ) -> Result<bool, SessionError> {
        let Some(r) = self.relay.as_mut() else {
            return Ok(false);
        };
        match r.intercept(ctx, frame, now).map_err(relay_error)? {
            relay::Intercept::Pass => return Ok(false),
            relay::Intercept::Forward => {
                if let Some(v) = &ctx.node.cluster {
                    inc(&v.stats.forwarded);
                }
                self.forward.send(frame, rewrite::Rewrite::Observe);
            }
            relay::Intercept::Ask(wire) => self.forward.send(&wire, rewrite::Rewrite::Internal),
            relay::Intercept::Refuse(chunks) => {
                self.out.push(chunks);
                self.closing = true;
            }
        }
        Ok(true)
    }

    /// Cluster mode on a SASL listener: what the cluster's answer to a relayed or asked
    /// request means for this connection.
    fn relayed(&mut self, ctx: &Ctx, now: Instant) -> Result<(), SessionError> {
        let Some(r) = self.relay.as_mut() else {
            return Ok(());
        };
        let Some(seen) = self.forward.take_observed() else {
            return Ok(());
        };
        match r.answer(ctx, seen, now).map_err(relay_error)? {
            relay::Outcome::Continue | relay::Outcome::Asked(None) => {}
            relay::Outcome::Failed => self.closing = true,
            relay::Outcome::LoggedIn(p) => {
                log::debug!("kafka {}: the cluster authenticated {p}", self.peer);
                self.authz = Arc::new(Authz::relayed(Arc::clone(r.cache()), p, now));
            }
            relay::Outcome::Asked(Some(frame)) => {
                let authz = self.authz_at(now);
                let ctx = &Ctx {
                    authz: &authz,
                    ..*ctx
                };
                self.serve(ctx, frame, now)?;
            }
        }
        Ok(())
    }

    /// A FetchTicket extension request: answered for the authenticated principal only.
    fn fetch_ticket(&mut self, ctx: &Ctx, frame: &[u8], now: Instant) -> Result<(), SessionError> {
        let bad = |reason: String| SessionError::BadRequest {
            api_key: apis::fetch_ticket::API_KEY,
            version: frame
                .get(2..4)
                .map_or(-1, |v| i16::from_be_bytes([v[0], v[1]])),
            reason,
        };
        if self.gate.as_ref().is_some_and(|g| !g.is_authenticated()) {
            inc(&ctx.stats.auth.unauthenticated_request);
            return Err(bad("FetchTicket before SASL authentication".into()));
        }
        let asker = apis::fetch_ticket::Asker {
            keys: self.tickets.as_deref(),
            peer: self.peer_ip,
            now,
        };
        let chunks = apis::fetch_ticket::handle(ctx, &asker, frame).map_err(bad)?;
        self.out.push(chunks);
        Ok(())
    }

    /// After a successful exchange: the requests that follow run as the new principal.
    fn logged_in(&mut self) {
        if let Some(p) = self.gate.as_ref().and_then(|g| g.principal()) {
            if p != self.authz.principal() {
                log::debug!("kafka {}: authenticated as {p}", self.peer);
                self.authz = Arc::new(Authz::new(self.acl.clone(), p));
            }
        }
    }
}

fn relay_error(e: relay::RelayError) -> SessionError {
    match e {
        relay::RelayError::Unauthenticated(k) => SessionError::Unauthenticated(k),
        relay::RelayError::Version(v) => SessionError::UnsupportedVersion {
            api: ApiKey::SaslHandshake,
            version: v,
            min: 1,
            max: 1,
        },
        relay::RelayError::Bad(reason) => SessionError::BadRequest {
            api_key: -1,
            version: -1,
            reason,
        },
    }
}

fn group_error(e: GroupError) -> SessionError {
    match e {
        GroupError::Encode(e) => SessionError::Encode(e),
        GroupError::Decode(reason) => SessionError::BadRequest {
            api_key: -1,
            version: -1,
            reason,
        },
    }
}

/// Materialises chunks into bytes (tests and diagnostics: reads file ranges with pread).
pub fn chunks_to_vec(chunks: &[Chunk]) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    for c in chunks {
        match c {
            Chunk::Mem(b) => out.extend_from_slice(b),
            Chunk::File(r) => {
                let mut buf = vec![0u8; r.len];
                r.file.read_exact_at(&mut buf, r.position)?;
                out.extend_from_slice(&buf);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::testkit::{request, Harness};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn api_versions_every_served_version_lists_exactly_the_served_apis() {
        let (mut h, _d) = Harness::empty();
        for v in 0..=3 {
            let req = ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("t"))
                .with_client_software_version(StrBytes::from_static_str("1"));
            let r: ApiVersionsResponse = h.call(ApiKey::ApiVersions, v, &req);
            assert_eq!(r.error_code, 0);
            let got: Vec<(i16, i16, i16)> = r
                .api_keys
                .iter()
                .map(|k| (k.api_key, k.min_version, k.max_version))
                .collect();
            let want: Vec<(i16, i16, i16)> = apis::SERVED
                .iter()
                .map(|&(k, lo, hi)| (k as i16, lo, hi))
                .collect();
            assert_eq!(got, want);
            assert!(got.contains(&(ApiKey::FindCoordinator as i16, 0, 6)));
            assert!(got.contains(&(ApiKey::JoinGroup as i16, 0, 9)));
        }
    }

    #[test]
    fn too_new_api_versions_gets_v0_unsupported_version() {
        let (mut h, _d) = Harness::empty();
        // v4 as the crate encodes it; the gateway answers in v0 regardless.
        let out = h
            .feed(&request(
                ApiKey::ApiVersions,
                4,
                99,
                &ApiVersionsRequest::default(),
            ))
            .unwrap();
        let mut b = Bytes::copy_from_slice(&out[4..]);
        // The answer's correlation id is 99 (header v0, whatever the request's version).
        crate::kafka::frame::decode_response_header(ApiKey::ApiVersions, 0, 99, &mut b).unwrap();
        let r = ApiVersionsResponse::decode(&mut b, 0).unwrap();
        assert_eq!(r.error_code, 35);
        assert_eq!(r.api_keys.len(), 1);
        assert_eq!(r.api_keys[0].api_key, ApiKey::ApiVersions as i16);
        assert_eq!(r.api_keys[0].max_version, 3);
    }

    #[test]
    fn produce_is_refused_and_group_apis_answered_not_closed() {
        let (mut h, _d) = Harness::empty();
        let produce = ProduceRequest::default().with_acks(1).with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default().with_index(3)
                ]),
        ]);
        let r: ProduceResponse = h.call(ApiKey::Produce, 8, &produce);
        assert_eq!(r.responses[0].partition_responses[0].index, 3);
        assert_eq!(r.responses[0].partition_responses[0].error_code, 42);
        let fc = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"));
        let r: FindCoordinatorResponse = h.call(ApiKey::FindCoordinator, 2, &fc);
        assert_eq!((r.error_code, r.port), (0, 9092));
        let r: HeartbeatResponse = h.call(ApiKey::Heartbeat, 4, &HeartbeatRequest::default());
        assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID");
        // The connection is still usable afterwards.
        let r: MetadataResponse = h.call(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default().with_topics(None),
        );
        assert_eq!(r.brokers[0].port, 9092);
        assert_eq!(
            h.stats
                .req_unsupported
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn garbage_and_unknown_apis_close_the_connection() {
        let (mut h, _d) = Harness::empty();
        assert!(matches!(
            h.feed(&[0x7f, 0xff, 0xff, 0xff, 0, 0]),
            Err(SessionError::Frame(_))
        ));
        let (mut h, _d) = Harness::empty();
        let mut bogus = 12i32.to_be_bytes().to_vec();
        bogus.extend_from_slice(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0, 0]);
        assert!(matches!(
            h.feed(&bogus),
            Err(SessionError::BadRequest {
                api_key: 0x7f00,
                ..
            })
        ));
        // A Metadata request whose body is cut short.
        let (mut h, _d) = Harness::empty();
        let mut req = request(
            ApiKey::Metadata,
            4,
            1,
            &MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(StrBytes::from_static_str("abcdef"))))])),
        );
        req.truncate(req.len() - 5);
        let len = (req.len() - 4) as i32;
        req[0..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(h.feed(&req), Err(SessionError::BadRequest { .. })));
        // A served API at an unserved version.
        let (mut h, _d) = Harness::empty();
        let req = request(ApiKey::Metadata, 13, 1, &MetadataRequest::default());
        assert!(matches!(
            h.feed(&req),
            Err(SessionError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn metadata_every_version_encodes_and_reports_unknown_topics() {
        let (mut h, _d) = Harness::empty();
        for v in 0..=12 {
            let mut t = metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("nope"))));
            if v < 10 {
                t.topic_id = uuid::Uuid::nil();
            }
            let req = MetadataRequest::default().with_topics(Some(vec![t]));
            let r: MetadataResponse = h.call(ApiKey::Metadata, v, &req);
            assert_eq!(r.brokers.len(), 1, "v{v}");
            assert_eq!(r.brokers[0].host.as_str(), "198.18.0.1");
            assert_eq!(r.topics.len(), 1);
            assert_eq!(r.topics[0].error_code, 3, "v{v}");
        }
    }

    /// Random bytes after a valid length prefix never panic the session: they are either
    /// answered or make it ask for the connection to be closed.
    #[test]
    fn random_frames_never_panic() {
        use proptest::prelude::*;
        let (h, _d) = Harness::empty();
        let h = std::cell::RefCell::new(h);
        proptest!(ProptestConfig::with_cases(2000), |(key in 0i16..80, ver in -1i16..20, body in proptest::collection::vec(any::<u8>(), 6..200))| {
            let mut h = h.borrow_mut();
            h.session = Session::new(1 << 20);
            let mut frame = Vec::new();
            frame.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            frame.extend_from_slice(&key.to_be_bytes());
            frame.extend_from_slice(&ver.to_be_bytes());
            frame.extend_from_slice(&body);
            let _ = h.feed(&frame);
        });
    }
}
