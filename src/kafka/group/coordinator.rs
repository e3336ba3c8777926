//! The classic group protocol as a sans-I/O state machine, modelled on Kafka's classic
//! `GroupCoordinator`: requests and the time are inputs, replies (now, or later for a parked
//! JoinGroup / SyncGroup) are outputs. Committed offsets live here in memory; the caller
//! persists them (see [`super::store`]) before applying them.
//!
//! States: Empty (no members, maybe offsets) → PreparingRebalance (waiting for members to
//! (re)join, until all did or the rebalance timeout) → CompletingRebalance (joins answered,
//! waiting for the leader's SyncGroup) → Stable. A member not heard from within its session
//! timeout is expelled and the group rebalances.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;

use super::member::{
    JoinReply, JoinedMember, Member, Outcome, Reply, SyncReply, SyncReply as Sync, WaiterId,
};

/// Offsets metadata longer than this is refused (Kafka's offset.metadata.max.bytes).
pub const MAX_METADATA: usize = 4096;

/// Coordinator settings (Kafka's broker-side group settings).
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// group.min.session.timeout.ms
    pub min_session_timeout: Duration,
    /// group.max.session.timeout.ms
    pub max_session_timeout: Duration,
    /// group.initial.rebalance.delay.ms: how long the first rebalance of an empty group waits
    /// for more members (extended by each join, up to the rebalance timeout).
    pub initial_rebalance_delay: Duration,
    /// How long an empty group's offsets are kept (offsets.retention.minutes); None: forever.
    pub empty_retention: Option<Duration>,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(1800),
            initial_rebalance_delay: Duration::from_secs(3),
            empty_retention: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// Group states of the classic protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No members.
    Empty,
    /// Waiting for members to join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Assignment distributed.
    Stable,
    /// Being removed.
    Dead,
}

impl State {
    /// The name DescribeGroups and ListGroups use.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The next offset to consume.
    pub offset: i64,
    /// Leader epoch the client gave (-1: none).
    pub leader_epoch: i32,
    /// Client metadata.
    pub metadata: Option<String>,
    /// Commit time, milliseconds since the epoch.
    pub commit_ms: i64,
}

/// Offsets of one group, by (topic, partition).
pub type GroupOffsets = BTreeMap<(String, i32), Committed>;

/// A JoinGroup request, protocol-independent.
#[derive(Clone, Debug, Default)]
pub struct JoinParams {
    /// Group id.
    pub group: String,
    /// Member id ("" for a new member).
    pub member_id: String,
    /// `group.instance.id`.
    pub instance_id: Option<String>,
    /// Client id from the request header.
    pub client_id: String,
    /// Peer address.
    pub client_host: String,
    /// Session timeout in ms.
    pub session_timeout_ms: i32,
    /// Rebalance timeout in ms (v0: the session timeout).
    pub rebalance_timeout_ms: i32,
    /// Protocol type ("consumer").
    pub protocol_type: String,
    /// Protocols in order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new dynamic member first gets MEMBER_ID_REQUIRED with its id.
    pub require_known_member: bool,
}

/// Who a heartbeat, sync, commit or leave names.
#[derive(Clone, Debug, Default)]
pub struct MemberRef {
    /// Group id.
    pub group: String,
    /// Generation the member believes in.
    pub generation: i32,
    /// Member id.
    pub member_id: String,
    /// Static instance id.
    pub instance_id: Option<String>,
}

/// A read-only view of one group (DescribeGroups, stats).
#[derive(Clone, Debug)]
pub struct GroupView {
    /// Group id.
    pub id: String,
    /// State.
    pub state: State,
    /// Generation.
    pub generation: i32,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen protocol.
    pub protocol: String,
    /// Leader member id.
    pub leader: String,
    /// Members.
    pub members: Vec<Member>,
    /// Rebalances started since the gateway started.
    pub rebalances: u64,
    /// Offset commits accepted since the gateway started.
    pub commits: u64,
}

#[derive(Debug)]
struct Group {
    id: String,
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, with the time they lapse.
    pending: HashMap<String, Instant>,
    /// group.instance.id → member id.
    statics: HashMap<String, String>,
    rebalance_deadline: Option<Instant>,
    /// Members of this generation that have not sent SyncGroup yet (Kafka's pending sync
    /// members), and when they are expelled for it: a leader that never syncs must not
    /// leave the others parked forever.
    awaiting_sync: BTreeSet<String>,
    sync_deadline: Option<Instant>,
    /// During the initial delay of a rebalance from Empty: the latest it may be extended to.
    initial_cap: Option<Instant>,
    empty_since: Option<Instant>,
    rebalances: u64,
    commits: u64,
}

impl Group {
    fn new(id: &str, now: Instant) -> Self {
        Group {
            id: id.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            rebalance_deadline: None,
            awaiting_sync: BTreeSet::new(),
            sync_deadline: None,
            initial_cap: None,
            empty_since: Some(now),
            rebalances: 0,
            commits: 0,
        }
    }

    /// Whether `p` can join: the first member sets the protocol type; later ones must share
    /// it and at least one protocol with every other member.
    fn compatible(&self, p: &JoinParams) -> bool {
        if p.protocol_type.is_empty() || p.protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.id != p.member_id)
            .collect();
        if others.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(p.protocol_type.as_str())
            && p.protocols
                .iter()
                .any(|(name, _)| others.iter().all(|m| m.supports(name)))
    }

    /// The instance check every member request makes: a static member's id must be the one
    /// registered for its instance id.
    fn fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id.is_some_and(|i| {
            self.statics
                .get(i)
                .is_some_and(|registered| registered != member_id)
        })
    }

    /// The protocol every member supports with the most first-choice votes.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| self.members.values().all(|m| m.supports(n)))
            .collect();
        let mut best: Option<(&String, usize)> = None;
        for c in &candidates {
            let votes = self
                .members
                .values()
                .filter(|m| {
                    m.protocols
                        .iter()
                        .map(|(n, _)| n)
                        .find(|n| candidates.contains(n))
                        == Some(*c)
                })
                .count();
            if best.is_none_or(|(_, v)| votes > v) {
                best = Some((c, votes));
            }
        }
        best.map(|(c, _)| c.clone())
    }

    fn join_reply(&self, member_id: &str) -> JoinReply {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            let proto = self.protocol.as_deref().unwrap_or_default();
            self.members
                .values()
                .map(|m| JoinedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata(proto),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinReply {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    fn sync_reply(&self, assignment: Bytes) -> SyncReply {
        SyncReply {
            error: 0,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment,
        }
    }

    /// `id` sent its SyncGroup of this generation.
    fn synced(&mut self, id: &str) {
        self.awaiting_sync.remove(id);
        if self.awaiting_sync.is_empty() {
            self.sync_deadline = None;
        }
    }

    fn view(&self) -> GroupView {
        GroupView {
            id: self.id.clone(),
            state: self.state,
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: self.protocol.clone().unwrap_or_default(),
            leader: self.leader.clone().unwrap_or_default(),
            members: self.members.values().cloned().collect(),
            rebalances: self.rebalances,
            commits: self.commits,
        }
    }
}

/// Replies produced while handling one input, delivered to parked requests.
#[derive(Default)]
struct Mailbox {
    replies: HashMap<WaiterId, Reply>,
    woken: Vec<WaiterId>,
}

impl Mailbox {
    fn send(&mut self, w: WaiterId, r: Reply) {
        self.replies.insert(w, r);
        self.woken.push(w);
    }
}

/// The coordinator of every group this gateway hosts.
pub struct Coordinator {
    cfg: GroupConfig,
    groups: BTreeMap<String, Group>,
    offsets: BTreeMap<String, GroupOffsets>,
    next_waiter: WaiterId,
    mail: Mailbox,
}

fn new_member_id(client_id: &str) -> String {
    let prefix = if client_id.is_empty() {
        "member"
    } else {
        client_id
    };
    format!(
        "{prefix}-{}",
        uuid::Uuid::from_u128(rand::random()).simple()
    )
}

fn ms(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

impl Coordinator {
    /// An empty coordinator.
    pub fn new(cfg: GroupConfig) -> Self {
        Coordinator {
            cfg,
            groups: BTreeMap::new(),
            offsets: BTreeMap::new(),
            next_waiter: 1,
            mail: Mailbox::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &GroupConfig {
        &self.cfg
    }

    fn waiter(&mut self) -> WaiterId {
        let w = self.next_waiter;
        self.next_waiter += 1;
        w
    }

    /// The delayed reply for `waiter`, once there is one.
    pub fn take_reply(&mut self, waiter: WaiterId) -> Option<Reply> {
        self.mail.replies.remove(&waiter)
    }

    /// Waiters that got a reply since the last call (the I/O layer wakes their connections).
    pub fn take_woken(&mut self) -> Vec<WaiterId> {
        std::mem::take(&mut self.mail.woken)
    }

    /// A parked request's connection went away: nobody takes its reply. A member whose join
    /// was parked counts as not rejoined again (expelled at its session timeout, or left out
    /// when the rebalance times out), as when a broker's member connection drops.
    pub fn forget(&mut self, waiter: WaiterId) {
        self.mail.replies.remove(&waiter);
        for g in self.groups.values_mut() {
            for m in g.members.values_mut() {
                if m.sync_waiter == Some(waiter) {
                    m.sync_waiter = None;
                }
                if m.join_waiter == Some(waiter) {
                    m.join_waiter = None;
                }
            }
        }
    }

    /// JoinGroup.
    pub fn join(&mut self, p: JoinParams, now: Instant) -> Outcome<JoinReply> {
        let err = |code: E| Outcome::Now(JoinReply::error(code.code(), &p.member_id));
        if p.group.is_empty() {
            return err(E::InvalidGroupId);
        }
        let session = ms(p.session_timeout_ms);
        if p.session_timeout_ms < 0
            || session < self.cfg.min_session_timeout
            || session > self.cfg.max_session_timeout
        {
            return err(E::InvalidSessionTimeout);
        }
        if !self.groups.contains_key(&p.group) {
            if !p.member_id.is_empty() {
                return err(E::UnknownMemberId);
            }
            self.groups
                .insert(p.group.clone(), Group::new(&p.group, now));
        }
        let w = self.waiter();
        let Some(g) = self.groups.get_mut(&p.group) else {
            return err(E::CoordinatorNotAvailable);
        };
        if g.state == State::Dead {
            return err(E::CoordinatorNotAvailable);
        }
        if !g.compatible(&p) {
            return err(E::InconsistentGroupProtocol);
        }
        let cfg = &self.cfg;
        let mail = &mut self.mail;
        if p.member_id.is_empty() {
            join_new(g, cfg, mail, p, w, now)
        } else {
            join_known(g, cfg, mail, p, w, now)
        }
    }

    /// SyncGroup. `assignments` is what the leader sends (ignored from followers).
    pub fn sync(
        &mut self,
        r: &MemberRef,
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Outcome<SyncReply> {
        let w = self.waiter();
        let err = |code: E| Outcome::Now(Sync::error(code.code()));
        let Some(g) = self.groups.get_mut(&r.group) else {
            return err(E::UnknownMemberId);
        };
        if let Err(e) = check_member(g, r) {
            return err(e);
        }
        let (ptype, pname) = protocol;
        if ptype.is_some_and(|t| g.protocol_type.as_deref() != Some(t))
            || pname.is_some_and(|n| g.protocol.as_deref() != Some(n))
        {
            return err(E::InconsistentGroupProtocol);
        }
        if matches!(g.state, State::CompletingRebalance | State::Stable) {
            g.synced(&r.member_id);
        }
        match g.state {
            State::Empty | State::Dead => err(E::UnknownMemberId),
            State::PreparingRebalance => err(E::RebalanceInProgress),
            State::Stable => {
                let m = &mut g.members.get_mut(&r.member_id);
                let a = m.as_ref().map(|m| m.assignment.clone()).unwrap_or_default();
                if let Some(m) = m {
                    m.heard_from(now);
                }
                Outcome::Now(g.sync_reply(a))
            }
            State::CompletingRebalance => {
                if let Some(m) = g.members.get_mut(&r.member_id) {
                    m.heard_from(now);
                    if let Some(old) = m.sync_waiter.replace(w) {
                        self.mail
                            .send(old, Reply::Sync(Sync::error(E::RebalanceInProgress.code())));
                    }
                }
                if g.leader.as_deref() == Some(r.member_id.as_str()) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in g.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    g.state = State::Stable;
                    let replies: Vec<(WaiterId, Bytes)> = g
                        .members
                        .values_mut()
                        .filter_map(|m| m.sync_waiter.take().map(|w| (w, m.assignment.clone())))
                        .collect();
                    for (waiter, a) in replies {
                        self.mail.send(waiter, Reply::Sync(g.sync_reply(a)));
                    }
                }
                match self.mail.replies.remove(&w) {
                    Some(Reply::Sync(s)) => {
                        self.mail.woken.retain(|x| *x != w);
                        Outcome::Now(s)
                    }
                    _ => Outcome::Wait(w),
                }
            }
        }
    }

    /// Heartbeat: an error code.
    pub fn heartbeat(&mut self, r: &MemberRef, now: Instant) -> i16 {
        let Some(g) = self.groups.get_mut(&r.group) else {
            return E::UnknownMemberId.code();
        };
        match g.state {
            State::Dead => return E::CoordinatorNotAvailable.code(),
            State::Empty => return E::UnknownMemberId.code(),
            _ => {}
        }
        if let Err(e) = check_member(g, r) {
            return e.code();
        }
        if let Some(m) = g.members.get_mut(&r.member_id) {
            m.heard_from(now);
        }
        if g.state == State::PreparingRebalance {
            E::RebalanceInProgress.code()
        } else {
            0
        }
    }

    /// LeaveGroup of `members` (member id, instance id): one error code each.
    pub fn leave(
        &mut self,
        group: &str,
        members: &[(String, Option<String>)],
        now: Instant,
    ) -> Vec<i16> {
        let Some(g) = self.groups.get_mut(group) else {
            return vec![E::UnknownMemberId.code(); members.len()];
        };
        let mut codes = Vec::with_capacity(members.len());
        let mut removed = false;
        for (member_id, instance_id) in members {
            let target = match instance_id {
                Some(i) => match g.statics.get(i) {
                    Some(reg) if member_id.is_empty() || reg == member_id => Some(reg.clone()),
                    Some(_) => {
                        codes.push(E::FencedInstanceId.code());
                        continue;
                    }
                    None => None,
                },
                None => Some(member_id.clone()),
            };
            let Some(id) = target else {
                codes.push(E::UnknownMemberId.code());
                continue;
            };
            if g.pending.remove(&id).is_some() {
                codes.push(0);
                removed = true;
            } else if g.members.contains_key(&id) {
                remove_member(g, &mut self.mail, &id);
                codes.push(0);
                removed = true;
            } else {
                codes.push(E::UnknownMemberId.code());
            }
        }
        if removed {
            after_removal(g, &self.cfg, &mut self.mail, now);
        }
        codes
    }

    /// Whether an OffsetCommit of `r` may be applied (0), or its error code. A commit with
    /// generation -1 and no member is a "simple" commit (assign-mode consumers), allowed
    /// while the group has no members.
    pub fn check_commit(&mut self, r: &MemberRef, now: Instant) -> i16 {
        if r.group.is_empty() {
            return E::InvalidGroupId.code();
        }
        let simple = r.generation < 0 && r.member_id.is_empty() && r.instance_id.is_none();
        let Some(g) = self.groups.get_mut(&r.group) else {
            if r.generation < 0 {
                self.groups
                    .insert(r.group.clone(), Group::new(&r.group, now));
                return 0;
            }
            return E::IllegalGeneration.code();
        };
        match g.state {
            State::Dead => return E::CoordinatorNotAvailable.code(),
            State::Empty if simple => return 0,
            _ if simple => return E::UnknownMemberId.code(),
            _ => {}
        }
        if let Err(e) = check_member(g, r) {
            return e.code();
        }
        if g.state == State::CompletingRebalance {
            return E::RebalanceInProgress.code();
        }
        if let Some(m) = g.members.get_mut(&r.member_id) {
            m.heard_from(now);
        }
        0
    }

    /// Applies checked commits (after they were made durable).
    pub fn apply_commits(&mut self, group: &str, commits: Vec<(String, i32, Committed)>) {
        if let Some(g) = self.groups.get_mut(group) {
            g.commits += 1;
        }
        let offsets = self.offsets.entry(group.to_string()).or_default();
        for (t, p, c) in commits {
            offsets.insert((t, p), c);
        }
    }

    /// Loads an offset read back from the state store (the group is created Empty).
    pub fn restore(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        c: Committed,
        now: Instant,
    ) {
        self.groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group, now));
        self.offsets
            .entry(group.to_string())
            .or_default()
            .insert((topic.to_string(), partition), c);
    }

    /// A group's committed offsets.
    pub fn offsets(&self, group: &str) -> Option<&GroupOffsets> {
        self.offsets.get(group)
    }

    /// Every group's committed offsets.
    pub fn all_offsets(&self) -> &BTreeMap<String, GroupOffsets> {
        &self.offsets
    }

    /// Deletes offsets of an Empty group or of topics no member subscribes to (the caller
    /// checks subscriptions): GROUP_ID_NOT_FOUND if the group does not exist.
    pub fn delete_offsets(&mut self, group: &str, parts: &[(String, i32)]) -> i16 {
        if !self.groups.contains_key(group) {
            return E::GroupIdNotFound.code();
        }
        if let Some(o) = self.offsets.get_mut(group) {
            for (t, p) in parts {
                o.remove(&(t.clone(), *p));
            }
        }
        0
    }

    /// A group's view.
    pub fn group(&self, id: &str) -> Option<GroupView> {
        self.groups.get(id).map(Group::view)
    }

    /// Every group.
    pub fn groups(&self) -> Vec<GroupView> {
        self.groups.values().map(Group::view).collect()
    }

    /// The next time [`Coordinator::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for g in self.groups.values() {
            for d in [g.rebalance_deadline, g.sync_deadline]
                .into_iter()
                .flatten()
            {
                consider(d);
            }
            for m in g.members.values().filter(|m| m.expires_silently()) {
                consider(m.expires);
            }
            for &d in g.pending.values() {
                consider(d);
            }
            if let (Some(since), Some(keep)) = (g.empty_since, self.cfg.empty_retention) {
                if g.state == State::Empty {
                    consider(since + keep);
                }
            }
        }
        next
    }

    /// Expels silent members, completes timed-out rebalances, drops expired empty groups.
    /// Returns the groups removed (whose offsets the caller deletes from the store).
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        let cfg = self.cfg.clone();
        let mut dropped = Vec::new();
        for g in self.groups.values_mut() {
            let expired: Vec<String> = g
                .members
                .values()
                .filter(|m| m.expires_silently() && m.expires <= now)
                .map(|m| m.id.clone())
                .collect();
            let lapsed: Vec<String> = g
                .pending
                .iter()
                .filter(|(_, &d)| d <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                log::info!("group {}: member {id} expired (no heartbeat)", g.id);
                remove_member(g, &mut self.mail, id);
            }
            for id in &lapsed {
                g.pending.remove(id);
            }
            let unsynced: Vec<String> = match g.sync_deadline {
                Some(d) if d <= now => std::mem::take(&mut g.awaiting_sync).into_iter().collect(),
                _ => Vec::new(),
            };
            for id in &unsynced {
                log::info!("group {}: member {id} did not send SyncGroup in time", g.id);
                remove_member(g, &mut self.mail, id);
            }
            if !expired.is_empty() || !lapsed.is_empty() || !unsynced.is_empty() {
                after_removal(g, &cfg, &mut self.mail, now);
            }
            if g.state == State::PreparingRebalance
                && g.rebalance_deadline.is_some_and(|d| d <= now)
            {
                complete_join(g, &mut self.mail, now);
            }
            if let (State::Empty, Some(since), Some(keep)) =
                (g.state, g.empty_since, cfg.empty_retention)
            {
                if since + keep <= now {
                    dropped.push(g.id.clone());
                }
            }
        }
        for id in &dropped {
            log::info!("group {id}: empty past its retention, offsets removed");
            self.groups.remove(id);
            self.offsets.remove(id);
        }
        dropped
    }
}

fn check_member(g: &Group, r: &MemberRef) -> Result<(), E> {
    if g.state == State::Dead {
        return Err(E::CoordinatorNotAvailable);
    }
    if g.fenced(&r.member_id, r.instance_id.as_deref()) {
        return Err(E::FencedInstanceId);
    }
    if !g.members.contains_key(&r.member_id) {
        return Err(E::UnknownMemberId);
    }
    if r.generation != g.generation {
        return Err(E::IllegalGeneration);
    }
    Ok(())
}

/// The rebalance timeout of a join (v0 has none: the session timeout stands in).
fn rebalance_timeout(p: &JoinParams) -> Duration {
    if p.rebalance_timeout_ms > 0 {
        ms(p.rebalance_timeout_ms)
    } else {
        ms(p.session_timeout_ms)
    }
}

fn new_member(p: &JoinParams, id: String, waiter: Option<WaiterId>, now: Instant) -> Member {
    let session_timeout = ms(p.session_timeout_ms);
    let mut m = Member {
        id,
        instance_id: p.instance_id.clone(),
        client_id: p.client_id.clone(),
        client_host: p.client_host.clone(),
        session_timeout,
        rebalance_timeout: rebalance_timeout(p),
        protocols: p.protocols.clone(),
        assignment: Bytes::new(),
        join_waiter: waiter,
        sync_waiter: None,
        expires: now,
    };
    m.heard_from(now);
    m
}

/// A JoinGroup without a member id.
fn join_new(
    g: &mut Group,
    cfg: &GroupConfig,
    mail: &mut Mailbox,
    p: JoinParams,
    w: WaiterId,
    now: Instant,
) -> Outcome<JoinReply> {
    let id = new_member_id(&p.client_id);
    if let Some(inst) = &p.instance_id {
        if let Some(old) = g.statics.get(inst).cloned() {
            return static_rejoin(g, cfg, mail, p, &old, id, w, now);
        }
    } else if p.require_known_member {
        g.pending.insert(id.clone(), now + ms(p.session_timeout_ms));
        return Outcome::Now(JoinReply::error(E::MemberIdRequired.code(), &id));
    }
    add_and_rebalance(g, cfg, mail, &p, id, w, now)
}

#[allow(clippy::too_many_arguments)]
fn static_rejoin(
    g: &mut Group,
    cfg: &GroupConfig,
    mail: &mut Mailbox,
    p: JoinParams,
    old_id: &str,
    new_id: String,
    w: WaiterId,
    now: Instant,
) -> Outcome<JoinReply> {
    let Some(mut m) = g.members.remove(old_id) else {
        return add_and_rebalance(g, cfg, mail, &p, new_id, w, now);
    };
    // The old incarnation's parked requests are answered: it has been replaced.
    let fenced = E::FencedInstanceId.code();
    if let Some(old) = m.join_waiter.take() {
        mail.send(old, Reply::Join(JoinReply::error(fenced, old_id)));
    }
    if let Some(old) = m.sync_waiter.take() {
        mail.send(old, Reply::Sync(Sync::error(fenced)));
    }
    let same = m.protocols == p.protocols;
    let was_leader = g.leader.as_deref() == Some(old_id);
    m.id = new_id.clone();
    m.protocols = p.protocols.clone();
    m.session_timeout = ms(p.session_timeout_ms);
    m.client_id = p.client_id.clone();
    m.client_host = p.client_host.clone();
    m.heard_from(now);
    if was_leader {
        g.leader = Some(new_id.clone());
    }
    if let Some(inst) = &p.instance_id {
        g.statics.insert(inst.clone(), new_id.clone());
    }
    if g.state == State::Stable && same && !was_leader {
        // A restarted follower with unchanged metadata keeps its assignment (KIP-345).
        g.members.insert(new_id.clone(), m);
        return Outcome::Now(g.join_reply(&new_id));
    }
    m.join_waiter = Some(w);
    g.members.insert(new_id, m);
    if g.state != State::PreparingRebalance {
        prepare_rebalance(g, cfg, mail, now);
    }
    try_complete_join(g, mail, now);
    waiting(g, mail, w)
}

fn add_and_rebalance(
    g: &mut Group,
    cfg: &GroupConfig,
    mail: &mut Mailbox,
    p: &JoinParams,
    id: String,
    w: WaiterId,
    now: Instant,
) -> Outcome<JoinReply> {
    if g.members.is_empty() {
        g.protocol_type = Some(p.protocol_type.clone());
    }
    if let Some(inst) = &p.instance_id {
        g.statics.insert(inst.clone(), id.clone());
    }
    g.members
        .insert(id.clone(), new_member(p, id, Some(w), now));
    if g.state == State::PreparingRebalance {
        if let (Some(cap), Some(d)) = (g.initial_cap, g.rebalance_deadline) {
            // Still in the initial delay: wait a little longer for more members.
            g.rebalance_deadline = Some(d.max((now + cfg.initial_rebalance_delay).min(cap)));
        }
    } else {
        prepare_rebalance(g, cfg, mail, now);
    }
    try_complete_join(g, mail, now);
    waiting(g, mail, w)
}

/// `Wait(w)`, or the reply if the join completed right away.
fn waiting(_g: &Group, mail: &mut Mailbox, w: WaiterId) -> Outcome<JoinReply> {
    match mail.replies.remove(&w) {
        Some(Reply::Join(j)) => {
            mail.woken.retain(|x| *x != w);
            Outcome::Now(j)
        }
        Some(other) => {
            mail.replies.insert(w, other);
            Outcome::Wait(w)
        }
        None => Outcome::Wait(w),
    }
}

/// A JoinGroup with a member id.
fn join_known(
    g: &mut Group,
    cfg: &GroupConfig,
    mail: &mut Mailbox,
    p: JoinParams,
    w: WaiterId,
    now: Instant,
) -> Outcome<JoinReply> {
    if g.pending.remove(&p.member_id).is_some() {
        let id = p.member_id.clone();
        return add_and_rebalance(g, cfg, mail, &p, id, w, now);
    }
    let err = |code: E| Outcome::Now(JoinReply::error(code.code(), &p.member_id));
    if g.fenced(&p.member_id, p.instance_id.as_deref()) {
        return err(E::FencedInstanceId);
    }
    let is_leader = g.leader.as_deref() == Some(p.member_id.as_str());
    let state = g.state;
    let Some(m) = g.members.get_mut(&p.member_id) else {
        return err(E::UnknownMemberId);
    };
    let same = m.protocols == p.protocols;
    m.heard_from(now);
    match state {
        State::Empty | State::Dead => return err(E::UnknownMemberId),
        State::CompletingRebalance if same => return Outcome::Now(g.join_reply(&p.member_id)),
        State::Stable if same && !is_leader => return Outcome::Now(g.join_reply(&p.member_id)),
        _ => {}
    }
    m.protocols = p.protocols.clone();
    m.session_timeout = ms(p.session_timeout_ms);
    m.rebalance_timeout = rebalance_timeout(&p);
    if let Some(old) = m.join_waiter.replace(w) {
        mail.send(
            old,
            Reply::Join(JoinReply::error(
                E::RebalanceInProgress.code(),
                &p.member_id,
            )),
        );
    }
    if state != State::PreparingRebalance {
        prepare_rebalance(g, cfg, mail, now);
    }
    try_complete_join(g, mail, now);
    waiting(g, mail, w)
}

fn prepare_rebalance(g: &mut Group, cfg: &GroupConfig, mail: &mut Mailbox, now: Instant) {
    if g.state == State::CompletingRebalance {
        let code = E::RebalanceInProgress.code();
        for m in g.members.values_mut() {
            m.assignment = Bytes::new();
            if let Some(w) = m.sync_waiter.take() {
                mail.send(w, Reply::Sync(Sync::error(code)));
            }
        }
    }
    let was_empty = g.state == State::Empty;
    g.awaiting_sync.clear();
    g.sync_deadline = None;
    g.state = State::PreparingRebalance;
    g.empty_since = None;
    g.rebalances += 1;
    let timeout = g
        .members
        .values()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or_default();
    if was_empty {
        g.rebalance_deadline = Some(now + cfg.initial_rebalance_delay.min(timeout));
        g.initial_cap = Some(now + timeout.max(cfg.initial_rebalance_delay.min(timeout)));
    } else {
        g.rebalance_deadline = Some(now + timeout);
        g.initial_cap = None;
    }
    log::info!(
        "group {}: preparing rebalance (generation {}, {} members)",
        g.id,
        g.generation,
        g.members.len()
    );
}

/// Completes the join phase once every member rejoined (outside the initial delay).
fn try_complete_join(g: &mut Group, mail: &mut Mailbox, now: Instant) {
    if g.state == State::PreparingRebalance
        && g.initial_cap.is_none()
        && g.pending.is_empty()
        && g.members.values().all(|m| m.join_waiter.is_some())
    {
        complete_join(g, mail, now);
    }
}

fn complete_join(g: &mut Group, mail: &mut Mailbox, now: Instant) {
    let absent: Vec<String> = g
        .members
        .values()
        .filter(|m| m.join_waiter.is_none())
        .map(|m| m.id.clone())
        .collect();
    for id in absent {
        log::info!("group {}: member {id} did not rejoin in time", g.id);
        remove_member(g, mail, &id);
    }
    g.pending.clear();
    g.rebalance_deadline = None;
    g.initial_cap = None;
    g.generation += 1;
    if g.members.is_empty() {
        g.state = State::Empty;
        g.protocol = None;
        g.leader = None;
        g.empty_since = Some(now);
        log::info!("group {}: empty (generation {})", g.id, g.generation);
        return;
    }
    g.protocol = g.select_protocol();
    if !g.leader.as_ref().is_some_and(|l| g.members.contains_key(l)) {
        g.leader = g.members.keys().next().cloned();
    }
    g.state = State::CompletingRebalance;
    g.awaiting_sync = g.members.keys().cloned().collect();
    let sync_timeout = g.members.values().map(|m| m.rebalance_timeout).max();
    g.sync_deadline = sync_timeout.map(|t| now + t);
    let waiters: Vec<(String, WaiterId)> = g
        .members
        .values_mut()
        .filter_map(|m| {
            m.heard_from(now);
            m.join_waiter.take().map(|w| (m.id.clone(), w))
        })
        .collect();
    for (id, w) in waiters {
        mail.send(w, Reply::Join(g.join_reply(&id)));
    }
    log::info!(
        "group {}: generation {} with {} members, protocol {:?}, leader {:?}",
        g.id,
        g.generation,
        g.members.len(),
        g.protocol,
        g.leader
    );
}

/// Removes a member, answering its parked requests.
fn remove_member(g: &mut Group, mail: &mut Mailbox, id: &str) {
    let Some(m) = g.members.remove(id) else {
        return;
    };
    g.synced(id);
    if let Some(inst) = &m.instance_id {
        if g.statics.get(inst).is_some_and(|x| x == id) {
            g.statics.remove(inst);
        }
    }
    let code = E::UnknownMemberId.code();
    if let Some(w) = m.join_waiter {
        mail.send(w, Reply::Join(JoinReply::error(code, id)));
    }
    if let Some(w) = m.sync_waiter {
        mail.send(w, Reply::Sync(Sync::error(code)));
    }
}

/// After members left or expired: rebalance the rest (or finish the current rebalance).
fn after_removal(g: &mut Group, cfg: &GroupConfig, mail: &mut Mailbox, now: Instant) {
    match g.state {
        State::Stable | State::CompletingRebalance => {
            prepare_rebalance(g, cfg, mail, now);
            try_complete_join(g, mail, now);
        }
        State::PreparingRebalance => {
            if g.members.is_empty() {
                // Nobody left to wait for, not even in the initial delay.
                g.initial_cap = None;
            }
            try_complete_join(g, mail, now);
        }
        State::Empty | State::Dead => {}
    }
}
