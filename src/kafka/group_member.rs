//! A consumer-group member of the classic protocol as a sans-I/O state machine: what
//! `kxgw consume --group` runs against a Kafka listener's coordinator while its records come
//! over the UDP fetch protocol.
//!
//! The driver asks [`GroupMember::poll_request`] for the next request, sends it, and hands
//! the decoded answer to [`GroupMember::handle_response`]; [`GroupMember::poll_event`] says
//! which partitions to fetch from where, and when to stop. One request is in flight at a
//! time. The flow is the Java consumer's (eager rebalancing): JoinGroup (again with the id a
//! MEMBER_ID_REQUIRED answer gave), Metadata and the assignment if this member leads, SyncGroup,
//! OffsetFetch for the assigned partitions, then Heartbeat and OffsetCommit on timers; on
//! REBALANCE_IN_PROGRESS the partitions are revoked, what was consumed committed and the
//! member rejoins; on exit it commits and sends LeaveGroup.
//!
//! Subscriptions and assignments use the standard "consumer" protocol encoding (a version
//! prefix, then ConsumerProtocolSubscription / ConsumerProtocolAssignment), so a group can
//! mix this member with librdkafka, Java or Python ones; the leader's assignors are "range"
//! and "roundrobin", which every stock client also offers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, GroupId, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

/// Request versions the member sends (every broker since 2.3 and the gateway answer them).
pub const JOIN_VERSION: i16 = 5;
pub const SYNC_VERSION: i16 = 3;
pub const HEARTBEAT_VERSION: i16 = 3;
pub const OFFSET_FETCH_VERSION: i16 = 5;
pub const OFFSET_COMMIT_VERSION: i16 = 5;
pub const LEAVE_VERSION: i16 = 3;
pub const METADATA_VERSION: i16 = 1;

/// The assignors this member offers, in its order of preference.
pub const ASSIGNORS: [&str; 2] = ["range", "roundrobin"];

/// A member's settings.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub group: String,
    pub topics: Vec<String>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// How often consumed positions are committed (auto-commit).
    pub commit_interval: Duration,
}

/// A partition of the group's topics.
pub type Tp = (String, i32);

/// A request to send.
#[derive(Debug)]
pub enum Request {
    Join(JoinGroupRequest),
    Metadata(MetadataRequest),
    Sync(SyncGroupRequest),
    OffsetFetch(OffsetFetchRequest),
    Heartbeat(HeartbeatRequest),
    Commit(OffsetCommitRequest),
    Leave(LeaveGroupRequest),
}

/// The answer to the last [`Request`].
#[derive(Debug)]
pub enum Response {
    Join(JoinGroupResponse),
    Metadata(MetadataResponse),
    Sync(SyncGroupResponse),
    OffsetFetch(OffsetFetchResponse),
    Heartbeat(HeartbeatResponse),
    Commit(OffsetCommitResponse),
    Leave(LeaveGroupResponse),
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// Fetch these partitions, from the committed offset (None: nothing committed, start
    /// where the consumer's reset policy says).
    Assigned(Vec<(Tp, Option<i64>)>),
    /// Stop fetching every partition (a rebalance started).
    Revoked,
    /// The member left the group; the driver may exit.
    Left,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Joining,
    Metadata,
    Syncing,
    FetchingOffsets,
    Active,
    /// Committing before a rejoin.
    Revoking,
    /// Committing, then LeaveGroup.
    Leaving,
    Left,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Join,
    Metadata,
    Sync,
    OffsetFetch,
    Heartbeat,
    Commit,
    Leave,
}

/// The member state machine.
#[derive(Debug)]
pub struct GroupMember {
    cfg: MemberConfig,
    phase: Phase,
    member_id: String,
    generation: i32,
    protocol: String,
    /// The leader's view of the members: (member id, subscribed topics).
    members: Vec<(String, Vec<String>)>,
    assignments: Vec<(String, Bytes)>,
    assigned: Vec<Tp>,
    /// Next offset to consume per partition (what a commit sends).
    positions: BTreeMap<Tp, i64>,
    committed: BTreeMap<Tp, i64>,
    next_heartbeat: Instant,
    next_commit: Instant,
    in_flight: Option<Sent>,
    events: VecDeque<MemberEvent>,
    /// Rebalances this member went through (for the driver's summary).
    pub rebalances: u64,
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl GroupMember {
    pub fn new(cfg: MemberConfig, now: Instant) -> GroupMember {
        GroupMember {
            cfg,
            phase: Phase::Joining,
            member_id: String::new(),
            generation: -1,
            protocol: String::new(),
            members: Vec::new(),
            assignments: Vec::new(),
            assigned: Vec::new(),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            next_heartbeat: now,
            next_commit: now,
            in_flight: None,
            events: VecDeque::new(),
            rebalances: 0,
        }
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The partitions currently assigned.
    pub fn assigned(&self) -> &[Tp] {
        &self.assigned
    }

    /// Whether the member left the group.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Left
    }

    /// Whether a rebalance is under way (the driver does not fetch meanwhile).
    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    /// Records of `tp` up to `next - 1` were consumed.
    pub fn consumed(&mut self, tp: &Tp, next: i64) {
        if self.assigned.contains(tp) {
            self.positions.insert(tp.clone(), next);
        }
    }

    /// Commit what was consumed, leave the group, then report [`MemberEvent::Left`].
    pub fn leave(&mut self) {
        match self.phase {
            Phase::Left | Phase::Leaving => {}
            // Nothing assigned yet, or a generation that is being replaced: just leave.
            _ => self.phase = Phase::Leaving,
        }
    }

    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// When [`GroupMember::poll_request`] will have something without a response arriving.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.phase == Phase::Active && self.in_flight.is_none())
            .then(|| self.next_heartbeat.min(self.next_commit))
    }

    /// The next request to send, if one is due.
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        if self.in_flight.is_some() {
            return None;
        }
        let (sent, req) = match self.phase {
            Phase::Joining => (Sent::Join, Request::Join(self.join_request())),
            Phase::Metadata => (Sent::Metadata, Request::Metadata(self.metadata_request())),
            Phase::Syncing => (Sent::Sync, Request::Sync(self.sync_request())),
            Phase::FetchingOffsets => (
                Sent::OffsetFetch,
                Request::OffsetFetch(self.offset_fetch_request()),
            ),
            Phase::Active if now >= self.next_commit && self.dirty() => {
                self.next_commit = now + self.cfg.commit_interval;
                (Sent::Commit, Request::Commit(self.commit_request()))
            }
            Phase::Active if now >= self.next_heartbeat => {
                self.next_heartbeat = now + self.cfg.heartbeat_interval;
                (
                    Sent::Heartbeat,
                    Request::Heartbeat(self.heartbeat_request()),
                )
            }
            Phase::Active => return None,
            Phase::Revoking | Phase::Leaving if self.dirty() && self.generation >= 0 => {
                (Sent::Commit, Request::Commit(self.commit_request()))
            }
            Phase::Revoking => {
                self.rejoin();
                return self.poll_request(now);
            }
            Phase::Leaving if self.member_id.is_empty() => {
                self.left();
                return None;
            }
            Phase::Leaving => (Sent::Leave, Request::Leave(self.leave_request())),
            Phase::Left => return None,
        };
        self.in_flight = Some(sent);
        Some(req)
    }

    /// The answer to the request in flight. Err: an error a member cannot recover from
    /// (an incompatible group, a protocol violation).
    pub fn handle_response(&mut self, resp: Response, now: Instant) -> Result<()> {
        let sent = self
            .in_flight
            .take()
            .context("a response without a request")?;
        match (sent, resp) {
            (Sent::Join, Response::Join(r)) => self.on_join(r),
            (Sent::Metadata, Response::Metadata(r)) => self.on_metadata(r),
            (Sent::Sync, Response::Sync(r)) => self.on_sync(r),
            (Sent::OffsetFetch, Response::OffsetFetch(r)) => self.on_offset_fetch(r, now),
            (Sent::Heartbeat, Response::Heartbeat(r)) => self.on_heartbeat(r.error_code),
            (Sent::Commit, Response::Commit(r)) => self.on_commit(r),
            (Sent::Leave, Response::Leave(_)) => {
                self.left();
                Ok(())
            }
            (sent, resp) => bail!("the answer to {sent:?} was {resp:?}"),
        }
    }

    fn dirty(&self) -> bool {
        self.positions
            .iter()
            .any(|(tp, o)| self.committed.get(tp) != Some(o))
    }

    fn left(&mut self) {
        self.phase = Phase::Left;
        self.events.push_back(MemberEvent::Left);
    }

    /// Starts over with JoinGroup (partitions already revoked).
    fn rejoin(&mut self) {
        self.positions.clear();
        self.committed.clear();
        self.assigned.clear();
        self.phase = Phase::Joining;
    }

    /// The group rebalances: stop fetching, commit (if the generation still counts), rejoin.
    fn revoke(&mut self, commit: bool) {
        if !self.assigned.is_empty() || self.phase == Phase::Active {
            self.events.push_back(MemberEvent::Revoked);
        }
        self.rebalances += 1;
        if self.phase == Phase::Leaving {
            return;
        }
        if commit {
            self.phase = Phase::Revoking;
        } else {
            self.rejoin();
        }
    }

    /// After an error code every member may get: Ok(true) if it was handled (rejoin).
    fn group_error(&mut self, code: i16) -> bool {
        match code {
            c if c == E::UnknownMemberId.code() => {
                self.member_id.clear();
                self.generation = -1;
                self.revoke(false);
                true
            }
            c if c == E::IllegalGeneration.code() => {
                self.revoke(false);
                true
            }
            c if c == E::RebalanceInProgress.code() => {
                self.revoke(true);
                true
            }
            _ => false,
        }
    }

    fn join_request(&self) -> JoinGroupRequest {
        let meta = encode_subscription(&self.cfg.topics);
        JoinGroupRequest::default()
            .with_group_id(GroupId(sb(&self.cfg.group)))
            .with_session_timeout_ms(ms(self.cfg.session_timeout))
            .with_rebalance_timeout_ms(ms(self.cfg.rebalance_timeout))
            .with_member_id(sb(&self.member_id))
            .with_protocol_type(sb("consumer"))
            .with_protocols(
                ASSIGNORS
                    .iter()
                    .map(|a| {
                        JoinGroupRequestProtocol::default()
                            .with_name(sb(a))
                            .with_metadata(meta.clone())
                    })
                    .collect(),
            )
    }

    fn on_join(&mut self, r: JoinGroupResponse) -> Result<()> {
        let code = r.error_code;
        if code == E::MemberIdRequired.code() {
            self.member_id = r.member_id.to_string();
            return Ok(());
        }
        if code == E::UnknownMemberId.code() {
            self.member_id.clear();
            return Ok(());
        }
        if code == E::RebalanceInProgress.code() {
            return Ok(());
        }
        if code != 0 {
            bail!(
                "JoinGroup of group {}: {}",
                self.cfg.group,
                error_name(code)
            );
        }
        self.member_id = r.member_id.to_string();
        self.generation = r.generation_id;
        self.protocol = r.protocol_name.map(|p| p.to_string()).unwrap_or_default();
        self.assignments.clear();
        if r.leader == r.member_id {
            if !ASSIGNORS.contains(&self.protocol.as_str()) {
                bail!(
                    "the group chose assignor {:?}, which this member does not have",
                    self.protocol
                );
            }
            self.members = r
                .members
                .iter()
                .map(|m| {
                    let topics = decode_subscription(m.metadata.clone()).unwrap_or_default();
                    (m.member_id.to_string(), topics)
                })
                .collect();
            self.phase = Phase::Metadata;
        } else {
            self.phase = Phase::Syncing;
        }
        Ok(())
    }

    fn metadata_request(&self) -> MetadataRequest {
        let topics: BTreeSet<&String> = self.members.iter().flat_map(|(_, t)| t).collect();
        MetadataRequest::default().with_topics(Some(
            topics
                .into_iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(sb(t)))))
                .collect(),
        ))
    }

    fn on_metadata(&mut self, r: MetadataResponse) -> Result<()> {
        let mut counts = BTreeMap::new();
        for t in &r.topics {
            if let (0, Some(name)) = (t.error_code, &t.name) {
                counts.insert(name.0.to_string(), t.partitions.len() as i32);
            }
        }
        let plan = assign(&self.protocol, &self.members, &counts);
        self.assignments = self
            .members
            .iter()
            .map(|(id, _)| {
                let parts = plan.get(id).cloned().unwrap_or_default();
                (id.clone(), encode_assignment(&parts))
            })
            .collect();
        self.phase = Phase::Syncing;
        Ok(())
    }

    fn sync_request(&self) -> SyncGroupRequest {
        SyncGroupRequest::default()
            .with_group_id(GroupId(sb(&self.cfg.group)))
            .with_generation_id(self.generation)
            .with_member_id(sb(&self.member_id))
            .with_assignments(
                self.assignments
                    .iter()
                    .map(|(id, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(sb(id))
                            .with_assignment(a.clone())
                    })
                    .collect(),
            )
    }

    fn on_sync(&mut self, r: SyncGroupResponse) -> Result<()> {
        if r.error_code != 0 {
            if self.group_error(r.error_code) {
                return Ok(());
            }
            bail!(
                "SyncGroup of group {}: {}",
                self.cfg.group,
                error_name(r.error_code)
            );
        }
        let parts = decode_assignment(r.assignment).context("the assignment SyncGroup gave")?;
        self.assigned = parts
            .into_iter()
            .filter(|(t, _)| self.cfg.topics.contains(t))
            .collect();
        self.assigned.sort();
        self.phase = Phase::FetchingOffsets;
        Ok(())
    }

    fn offset_fetch_request(&self) -> OffsetFetchRequest {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in &self.assigned {
            topics.entry(t).or_default().push(*p);
        }
        OffsetFetchRequest::default()
            .with_group_id(GroupId(sb(&self.cfg.group)))
            .with_topics(Some(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(sb(t)))
                            .with_partition_indexes(ps)
                    })
                    .collect(),
            ))
    }

    fn on_offset_fetch(&mut self, r: OffsetFetchResponse, now: Instant) -> Result<()> {
        if r.error_code != 0 {
            if self.group_error(r.error_code) {
                return Ok(());
            }
            bail!("OffsetFetch: {}", error_name(r.error_code));
        }
        let mut starts = Vec::with_capacity(self.assigned.len());
        for tp in &self.assigned {
            let got = r
                .topics
                .iter()
                .filter(|t| t.name.0.as_str() == tp.0)
                .flat_map(|t| &t.partitions)
                .find(|p| p.partition_index == tp.1);
            let at = match got {
                Some(p) if p.error_code != 0 => {
                    bail!(
                        "OffsetFetch of {}-{}: {}",
                        tp.0,
                        tp.1,
                        error_name(p.error_code)
                    )
                }
                Some(p) if p.committed_offset >= 0 => Some(p.committed_offset),
                _ => None,
            };
            if let Some(o) = at {
                self.committed.insert(tp.clone(), o);
                self.positions.insert(tp.clone(), o);
            }
            starts.push((tp.clone(), at));
        }
        self.events.push_back(MemberEvent::Assigned(starts));
        self.phase = Phase::Active;
        self.next_heartbeat = now + self.cfg.heartbeat_interval;
        self.next_commit = now + self.cfg.commit_interval;
        Ok(())
    }

    fn heartbeat_request(&self) -> HeartbeatRequest {
        HeartbeatRequest::default()
            .with_group_id(GroupId(sb(&self.cfg.group)))
            .with_generation_id(self.generation)
            .with_member_id(sb(&self.member_id))
    }

    fn on_heartbeat(&mut self, code: i16) -> Result<()> {
        if code == 0 || self.group_error(code) {
            return Ok(());
        }
        bail!(
            "Heartbeat of group {}: {}",
            self.cfg.group,
            error_name(code)
        )
    }

    fn commit_request(&self) -> OffsetCommitRequest {
        let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((t, p), o) in &self.positions {
            topics.entry(t).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*p)
                    .with_committed_offset(*o)
                    .with_committed_metadata(Some(sb(""))),
            );
        }
        OffsetCommitRequest::default()
            .with_group_id(GroupId(sb(&self.cfg.group)))
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(sb(&self.member_id))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(sb(t)))
                            .with_partitions(ps)
                    })
                    .collect(),
            )
    }

    fn on_commit(&mut self, r: OffsetCommitResponse) -> Result<()> {
        let mut failed = None;
        for t in &r.topics {
            for p in &t.partitions {
                let tp = (t.name.0.to_string(), p.partition_index);
                if p.error_code == 0 {
                    if let Some(o) = self.positions.get(&tp) {
                        self.committed.insert(tp, *o);
                    }
                } else {
                    failed = Some(p.error_code);
                }
            }
        }
        match (self.phase, failed) {
            // The commit on the way out or into a rejoin was the last word either way.
            (Phase::Leaving, _) => {
                self.committed = self.positions.clone();
            }
            (Phase::Revoking, _) => self.rejoin(),
            (_, None) => {}
            (_, Some(code)) if self.group_error(code) => {}
            (_, Some(code)) => bail!(
                "OffsetCommit of group {}: {}",
                self.cfg.group,
                error_name(code)
            ),
        }
        Ok(())
    }

    fn leave_request(&self) -> LeaveGroupRequest {
        LeaveGroupRequest::default()
            .with_group_id(GroupId(sb(&self.cfg.group)))
            .with_members(vec![
                MemberIdentity::default().with_member_id(sb(&self.member_id))
            ])
    }
}

impl Request {
    /// Sends the request over a blocking connection and reads its answer.
    pub fn call(self, conn: &mut super::client::Connection) -> Result<Response> {
        use kafka_protocol::messages::ApiKey as K;
        Ok(match self {
            Request::Join(r) => Response::Join(conn.call(K::JoinGroup, JOIN_VERSION, &r)?),
            Request::Metadata(r) => {
                Response::Metadata(conn.call(K::Metadata, METADATA_VERSION, &r)?)
            }
            Request::Sync(r) => Response::Sync(conn.call(K::SyncGroup, SYNC_VERSION, &r)?),
            Request::OffsetFetch(r) => {
                Response::OffsetFetch(conn.call(K::OffsetFetch, OFFSET_FETCH_VERSION, &r)?)
            }
            Request::Heartbeat(r) => {
                Response::Heartbeat(conn.call(K::Heartbeat, HEARTBEAT_VERSION, &r)?)
            }
            Request::Commit(r) => {
                Response::Commit(conn.call(K::OffsetCommit, OFFSET_COMMIT_VERSION, &r)?)
            }
            Request::Leave(r) => Response::Leave(conn.call(K::LeaveGroup, LEAVE_VERSION, &r)?),
        })
    }
}

/// FindCoordinator v1 for `group` over `conn`: the coordinator's HOST:PORT.
pub fn find_coordinator(conn: &mut super::client::Connection, group: &str) -> Result<String> {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    let req = FindCoordinatorRequest::default()
        .with_key(sb(group))
        .with_key_type(0);
    let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 1, &req)?;
    if r.error_code != 0 {
        bail!(
            "FindCoordinator of group {group}: {}",
            error_name(r.error_code)
        );
    }
    let host = r.host.as_str();
    Ok(if host.contains(':') {
        format!("[{host}]:{}", r.port)
    } else {
        format!("{host}:{}", r.port)
    })
}

fn ms(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// A Kafka error code by name.
pub fn error_name(code: i16) -> String {
    match kafka_protocol::error::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} ({code})"),
        None => format!("error code {code}"),
    }
}

/// The "consumer" protocol's subscription: version 0 (topics, no user data), which every
/// client decodes.
pub fn encode_subscription(topics: &[String]) -> Bytes {
    let sub =
        ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| sb(t)).collect());
    let mut b = BytesMut::new();
    b.extend_from_slice(&0i16.to_be_bytes());
    // Encoding a v0 subscription of strings cannot fail; an empty one is still valid.
    let _ = sub.encode(&mut b, 0);
    b.freeze()
}

/// Reads the version prefix and decodes the body at that version (newer ones at the highest
/// the codec knows: fields are only ever appended).
fn versioned<M: Decodable + Message>(mut b: Bytes) -> Result<M> {
    if b.len() < 2 {
        bail!("{} bytes, no version", b.len());
    }
    let v = b.get_i16().clamp(0, M::VERSIONS.max);
    M::decode(&mut b, v).map_err(|e| anyhow::anyhow!("decoding: {e}"))
}

/// The topics of a member's subscription metadata.
pub fn decode_subscription(b: Bytes) -> Result<Vec<String>> {
    let sub: ConsumerProtocolSubscription = versioned(b)?;
    Ok(sub.topics.iter().map(|t| t.to_string()).collect())
}

/// The "consumer" protocol's assignment, version 0.
pub fn encode_assignment(parts: &[Tp]) -> Bytes {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        topics.entry(t).or_default().push(*p);
    }
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        topics
            .into_iter()
            .map(|(t, ps)| {
                AssignedTopic::default()
                    .with_topic(TopicName(sb(t)))
                    .with_partitions(ps)
            })
            .collect(),
    );
    let mut b = BytesMut::new();
    b.extend_from_slice(&0i16.to_be_bytes());
    let _ = a.encode(&mut b, 0);
    b.freeze()
}

/// The partitions of an assignment (empty bytes: nothing assigned, as a coordinator sends a
/// member the leader left out).
pub fn decode_assignment(b: Bytes) -> Result<Vec<Tp>> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let a: ConsumerProtocolAssignment = versioned(b)?;
    Ok(a.assigned_partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
        .collect())
}

/// The leader's plan: member id → partitions, by `protocol` ("range" or "roundrobin", as
/// Kafka's RangeAssignor and RoundRobinAssignor), over the topics' partition counts.
pub fn assign(
    protocol: &str,
    members: &[(String, Vec<String>)],
    counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<Tp>> {
    let mut plan: BTreeMap<String, Vec<Tp>> = members
        .iter()
        .map(|(id, _)| (id.clone(), Vec::new()))
        .collect();
    let subscribers = |topic: &str| -> Vec<&String> {
        let mut v: Vec<&String> = members
            .iter()
            .filter(|(_, ts)| ts.iter().any(|t| t == topic))
            .map(|(id, _)| id)
            .collect();
        v.sort();
        v
    };
    if protocol == "roundrobin" {
        let mut ids: Vec<&String> = members.iter().map(|(id, _)| id).collect();
        ids.sort();
        let mut next = 0usize;
        for (topic, &n) in counts {
            for p in 0..n {
                // The next member in the circle that subscribes to the topic.
                for _ in 0..ids.len() {
                    let id = ids[next % ids.len()];
                    next += 1;
                    if subscribers(topic).contains(&id) {
                        if let Some(v) = plan.get_mut(id) {
                            v.push((topic.clone(), p));
                        }
                        break;
                    }
                }
            }
        }
        return plan;
    }
    for (topic, &n) in counts {
        let subs = subscribers(topic);
        if subs.is_empty() {
            continue;
        }
        let (each, extra) = (n / subs.len() as i32, n % subs.len() as i32);
        let mut p = 0;
        for (i, id) in subs.into_iter().enumerate() {
            let take = each + i32::from((i as i32) < extra);
            if let Some(v) = plan.get_mut(id) {
                v.extend((p..p + take).map(|q| (topic.clone(), q)));
            }
            p += take;
        }
    }
    plan
}

#[cfg(test)]
#[path = "group_member_tests.rs"]
mod tests;
