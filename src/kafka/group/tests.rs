//! Coordinator state machine tests: requests and time as inputs, no sockets.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;

use super::coordinator::*;
use super::member::*;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn cfg() -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay: Duration::from_secs(3),
        ..GroupConfig::default()
    }
}

fn params(member: &str, protocols: &[&str]) -> JoinParams {
    JoinParams {
        group: "g".into(),
        member_id: member.into(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/198.18.0.2".into(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
            .collect(),
        require_known_member: true,
    }
}

fn mref(member: &str, generation: i32) -> MemberRef {
    MemberRef {
        group: "g".into(),
        generation,
        member_id: member.into(),
        instance_id: None,
    }
}

fn code(e: E) -> i16 {
    e.code()
}

/// A v4+ join: MEMBER_ID_REQUIRED, then the join with that id (parked).
fn join_v4(c: &mut Coordinator, protocols: &[&str], now: Instant) -> (String, WaiterId) {
    let Outcome::Now(r) = c.join(params("", protocols), now) else {
        panic!("first join must answer MEMBER_ID_REQUIRED");
    };
    assert_eq!(r.error, code(E::MemberIdRequired));
    assert!(r.member_id.starts_with("c-"));
    match c.join(params(&r.member_id, protocols), now) {
        Outcome::Wait(w) => (r.member_id, w),
        Outcome::Now(r) => panic!("join answered at once: {r:?}"),
    }
}

fn join_reply(c: &mut Coordinator, w: WaiterId) -> JoinReply {
    match c.take_reply(w) {
        Some(Reply::Join(j)) => j,
        other => panic!("no join reply for {w}: {other:?}"),
    }
}

fn sync_reply(c: &mut Coordinator, w: WaiterId) -> SyncReply {
    match c.take_reply(w) {
        Some(Reply::Sync(s)) => s,
        other => panic!("no sync reply for {w}: {other:?}"),
    }
}

/// Three members joined and synced: (coordinator, member ids, generation, time).
fn stable_group() -> (Coordinator, Vec<String>, i32, Instant) {
    let mut c = Coordinator::new(cfg());
    let t0 = Instant::now();
    let joined: Vec<(String, WaiterId)> = (0..3)
        .map(|_| join_v4(&mut c, &["range", "cooperative-sticky"], t0))
        .collect();
    let t1 = t0 + Duration::from_secs(4);
    c.tick(t1);
    let replies: Vec<JoinReply> = joined.iter().map(|(_, w)| join_reply(&mut c, *w)).collect();
    let gen = replies[0].generation;
    let leader = replies[0].leader.clone();
    let mut waits = Vec::new();
    for (id, _) in &joined {
        if *id == leader {
            continue;
        }
        match c.sync(&mref(id, gen), (None, None), vec![], t1) {
            Outcome::Wait(w) => waits.push((id.clone(), w)),
            Outcome::Now(r) => panic!("follower sync answered before the leader's: {r:?}"),
        }
    }
    let assignments: Vec<(String, Bytes)> = joined
        .iter()
        .map(|(id, _)| (id.clone(), Bytes::from(format!("assign-{id}"))))
        .collect();
    let Outcome::Now(r) = c.sync(&mref(&leader, gen), (None, None), assignments, t1) else {
        panic!("leader sync must answer at once");
    };
    assert_eq!(r.assignment, Bytes::from(format!("assign-{leader}")));
    for (id, w) in waits {
        assert_eq!(
            sync_reply(&mut c, w).assignment,
            Bytes::from(format!("assign-{id}"))
        );
    }
    let ids = joined.into_iter().map(|(id, _)| id).collect();
    (c, ids, gen, t1)
}

#[test]
fn three_members_join_in_one_generation_and_the_leader_assigns() {
    let mut c = Coordinator::new(cfg());
    let t0 = Instant::now();
    let a = join_v4(&mut c, &["range", "cooperative-sticky"], t0);
    let b = join_v4(&mut c, &["cooperative-sticky", "range"], t0);
    let x = join_v4(&mut c, &["cooperative-sticky"], t0 + Duration::from_secs(1));
    // Still within the initial delay (extended by the last join): nobody answered.
    c.tick(t0 + Duration::from_millis(3500));
    assert!(c.take_reply(a.1).is_none());
    assert_eq!(c.group("g").unwrap().state, State::PreparingRebalance);
    c.tick(t0 + Duration::from_secs(4));
    let ra = join_reply(&mut c, a.1);
    let rb = join_reply(&mut c, b.1);
    let rx = join_reply(&mut c, x.1);
    assert_eq!(ra.generation, 1);
    assert_eq!((rb.generation, rx.generation), (1, 1));
    // Only cooperative-sticky is common to all three.
    assert_eq!(ra.protocol_name.as_deref(), Some("cooperative-sticky"));
    assert_eq!(ra.leader, rb.leader);
    let with_members: Vec<&JoinReply> = [&ra, &rb, &rx]
        .into_iter()
        .filter(|r| !r.members.is_empty())
        .collect();
    assert_eq!(with_members.len(), 1, "only the leader gets the members");
    let leader = with_members[0];
    assert_eq!(leader.member_id, leader.leader);
    assert_eq!(leader.members.len(), 3);
    assert!(leader
        .members
        .iter()
        .all(|m| m.metadata == "meta-cooperative-sticky"));
    assert_eq!(c.group("g").unwrap().state, State::CompletingRebalance);
}

#[test]
fn sync_relays_the_leaders_assignment_and_the_group_is_stable() {
    let (c, ids, gen, _) = stable_group();
    let g = c.group("g").unwrap();
    assert_eq!(g.state, State::Stable);
    assert_eq!(g.generation, gen);
    for m in &g.members {
        assert_eq!(m.assignment, Bytes::from(format!("assign-{}", m.id)));
    }
    assert_eq!(g.members.len(), ids.len());
}

#[test]
fn bad_requests_get_the_brokers_error_codes() {
    let mut c = Coordinator::new(cfg());
    let now = Instant::now();
    let mut p = params("", &["range"]);
    p.session_timeout_ms = 10;
    assert_eq!(
        c.join(p, now),
        Outcome::Now(JoinReply::error(code(E::InvalidSessionTimeout), ""))
    );
    let mut p = params("", &["range"]);
    p.group = String::new();
    assert_eq!(
        c.join(p, now),
        Outcome::Now(JoinReply::error(code(E::InvalidGroupId), ""))
    );
    let Outcome::Now(r) = c.join(params("nobody", &["range"]), now) else {
        panic!()
    };
    assert_eq!(r.error, code(E::UnknownMemberId));
    let mut p = params("", &["range"]);
    p.protocols.clear();
    let Outcome::Now(r) = c.join(p, now) else {
        panic!()
    };
    assert_eq!(r.error, code(E::InconsistentGroupProtocol));
    assert_eq!(c.heartbeat(&mref("x", 1), now), code(E::UnknownMemberId));

    let (mut c, ids, gen, t) = stable_group();
    // A member without a protocol in common with the group.
    let Outcome::Now(r) = c.join(params("", &["roundrobin"]), t) else {
        panic!()
    };
    assert_eq!(r.error, code(E::InconsistentGroupProtocol));
    assert_eq!(c.heartbeat(&mref(&ids[0], gen), t), 0);
    assert_eq!(
        c.heartbeat(&mref(&ids[0], gen + 1), t),
        code(E::IllegalGeneration)
    );
    assert_eq!(
        c.heartbeat(&mref("stranger", gen), t),
        code(E::UnknownMemberId)
    );
    let Outcome::Now(r) = c.sync(&mref(&ids[1], gen - 1), (None, None), vec![], t) else {
        panic!()
    };
    assert_eq!(r.error, code(E::IllegalGeneration));
    let Outcome::Now(r) = c.sync(&mref(&ids[1], gen), (Some("other"), None), vec![], t) else {
        panic!()
    };
    assert_eq!(r.error, code(E::InconsistentGroupProtocol));
    assert_eq!(
        c.check_commit(&mref(&ids[0], gen - 1), t),
        code(E::IllegalGeneration)
    );
    assert_eq!(c.check_commit(&mref(&ids[0], gen), t), 0);
    // A "simple" commit (assign mode) into a group with members.
    assert_eq!(c.check_commit(&mref("", -1), t), code(E::UnknownMemberId));
}

#[test]
fn a_new_member_makes_the_others_rejoin() {
    let (mut c, ids, gen, t) = stable_group();
    let (new, w_new) = join_v4(&mut c, &["range"], t);
    assert_eq!(
        c.heartbeat(&mref(&ids[0], gen), t),
        code(E::RebalanceInProgress)
    );
    // Commits of the old generation are still accepted while preparing (commit on revoke).
    assert_eq!(c.check_commit(&mref(&ids[0], gen), t), 0);
    let mut outcomes: Vec<Outcome<JoinReply>> = ids
        .iter()
        .map(|id| c.join(params(id, &["range"]), t))
        .collect();
    // The last rejoin completes the rebalance (no waiting for the timeout) and is answered
    // at once; the earlier ones get their replies.
    let Some(Outcome::Now(last)) = outcomes.pop() else {
        panic!("the last rejoin completes the join")
    };
    assert_eq!(last.generation, gen + 1);
    let r = join_reply(&mut c, w_new);
    assert_eq!(r.generation, gen + 1);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    for o in outcomes {
        let Outcome::Wait(w) = o else { panic!("{o:?}") };
        assert_eq!(join_reply(&mut c, w).generation, gen + 1);
    }
    assert_eq!(c.group("g").unwrap().members.len(), 4);
    assert!(c.group("g").unwrap().members.iter().any(|m| m.id == new));
    // Between join and the leader's sync, commits wait for the new assignment.
    assert_eq!(
        c.check_commit(&mref(&ids[0], gen + 1), t),
        code(E::RebalanceInProgress)
    );
}

#[test]
fn a_silent_member_is_expelled_after_its_session_timeout() {
    let (mut c, ids, gen, t) = stable_group();
    // Two keep heartbeating, the third is silent.
    let mut now = t;
    for _ in 0..4 {
        now += Duration::from_secs(3);
        assert_eq!(c.heartbeat(&mref(&ids[0], gen), now), 0);
        assert_eq!(c.heartbeat(&mref(&ids[1], gen), now), 0);
        c.tick(now);
    }
    let g = c.group("g").unwrap();
    assert_eq!(g.state, State::PreparingRebalance);
    assert_eq!(g.members.len(), 2);
    assert!(!g.members.iter().any(|m| m.id == ids[2]));
    assert_eq!(
        c.heartbeat(&mref(&ids[2], gen), now),
        code(E::UnknownMemberId)
    );
    assert_eq!(
        c.heartbeat(&mref(&ids[0], gen), now),
        code(E::RebalanceInProgress)
    );
    let w0 = match c.join(params(&ids[0], &["range"]), now) {
        Outcome::Wait(w) => w,
        o => panic!("{o:?}"),
    };
    // The second survivor never rejoins: removed when the rebalance timeout passes.
    assert!(c.take_reply(w0).is_none());
    assert!(c.next_deadline().is_some());
    c.tick(now + Duration::from_millis(REBALANCE as u64 + 1));
    let r = join_reply(&mut c, w0);
    assert_eq!(r.generation, gen + 1);
    assert_eq!(r.members.len(), 1);
}

#[test]
fn leaving_rebalances_and_the_last_leave_empties_the_group() {
    let (mut c, ids, gen, t) = stable_group();
    assert_eq!(c.leave("g", &[(ids[0].clone(), None)], t), vec![0]);
    assert_eq!(
        c.leave("g", &[("ghost".into(), None)], t),
        vec![code(E::UnknownMemberId)]
    );
    assert_eq!(c.group("g").unwrap().state, State::PreparingRebalance);
    assert_eq!(
        c.leave("g", &[(ids[1].clone(), None), (ids[2].clone(), None)], t),
        vec![0, 0]
    );
    let g = c.group("g").unwrap();
    assert_eq!(g.state, State::Empty);
    assert_eq!(g.generation, gen + 1);
    assert_eq!(
        c.leave("nope", &[(ids[1].clone(), None)], t),
        vec![code(E::UnknownMemberId)]
    );
}

#[test]
fn a_restarted_static_member_takes_over_its_assignment_without_rebalance() {
    let mut c = Coordinator::new(cfg());
    let t0 = Instant::now();
    let mut waits = Vec::new();
    for inst in ["i1", "i2"] {
        let mut p = params("", &["range"]);
        p.instance_id = Some(inst.into());
        // Static members skip MEMBER_ID_REQUIRED.
        match c.join(p, t0) {
            Outcome::Wait(w) => waits.push(w),
            o => panic!("{o:?}"),
        }
    }
    c.tick(t0 + Duration::from_secs(4));
    let r: Vec<JoinReply> = waits.iter().map(|w| join_reply(&mut c, *w)).collect();
    let leader = r[0].leader.clone();
    let follower = r.iter().find(|x| x.member_id != leader).unwrap().clone();
    let t = t0 + Duration::from_secs(4);
    let fw = match c.sync(&mref(&follower.member_id, 1), (None, None), vec![], t) {
        Outcome::Wait(w) => w,
        o => panic!("{o:?}"),
    };
    let assign = vec![
        (leader.clone(), Bytes::from_static(b"L")),
        (follower.member_id.clone(), Bytes::from_static(b"F")),
    ];
    assert!(matches!(
        c.sync(&mref(&leader, 1), (None, None), assign, t),
        Outcome::Now(_)
    ));
    assert_eq!(sync_reply(&mut c, fw).assignment, Bytes::from_static(b"F"));
    // The follower restarts: same instance id, no member id.
    let mut p = params("", &["range"]);
    let inst = if r[0].member_id == follower.member_id {
        "i1"
    } else {
        "i2"
    };
    p.instance_id = Some(inst.into());
    let Outcome::Now(again) = c.join(p, t) else {
        panic!("a known static member rejoining a stable group is answered at once")
    };
    assert_eq!(again.error, 0);
    assert_eq!(again.generation, 1);
    assert_ne!(again.member_id, follower.member_id);
    assert_eq!(c.group("g").unwrap().state, State::Stable);
    let Outcome::Now(s) = c.sync(&mref(&again.member_id, 1), (None, None), vec![], t) else {
        panic!()
    };
    assert_eq!(s.assignment, Bytes::from_static(b"F"));
    // The old incarnation is fenced.
    let mut old = mref(&follower.member_id, 1);
    old.instance_id = Some(inst.into());
    assert_eq!(c.heartbeat(&old, t), code(E::FencedInstanceId));
}

#[test]
fn simple_commits_and_offsets_survive_an_empty_group() {
    let mut c = Coordinator::new(cfg());
    let now = Instant::now();
    assert_eq!(c.check_commit(&mref("", -1), now), 0);
    let committed = Committed {
        offset: 42,
        leader_epoch: -1,
        metadata: None,
        commit_ms: 1,
    };
    c.apply_commits("g", vec![("t".into(), 0, committed.clone())]);
    assert_eq!(c.offsets("g").unwrap()[&("t".to_string(), 0)], committed);
    assert_eq!(c.group("g").unwrap().commits, 1);
    assert_eq!(c.check_commit(&mref("", 3), now), code(E::UnknownMemberId));
    assert_eq!(c.check_commit(&mref("", -1), now), 0);
    // Retention: an empty group is dropped with its offsets.
    let dropped = c.tick(now + Duration::from_secs(8 * 24 * 3600));
    assert_eq!(dropped, vec!["g".to_string()]);
    assert!(c.offsets("g").is_none());
}

#[test]
fn a_member_id_never_used_lapses() {
    let mut c = Coordinator::new(cfg());
    let now = Instant::now();
    let (a, wa) = join_v4(&mut c, &["range"], now);
    // A second client got its id but never joins with it.
    let Outcome::Now(r) = c.join(params("", &["range"]), now) else {
        panic!()
    };
    assert_eq!(r.error, code(E::MemberIdRequired));
    // At the end of the initial delay the join completes without the id never used.
    c.tick(now + Duration::from_secs(4));
    let j = join_reply(&mut c, wa);
    assert_eq!(j.member_id, a);
    assert_eq!(j.members.len(), 1);
}

#[test]
fn a_member_whose_parked_join_connection_closed_is_left_out() {
    let (mut c, ids, gen, t) = stable_group();
    let (_new, w_new) = join_v4(&mut c, &["range"], t);
    let w0 = match c.join(params(&ids[0], &["range"]), t) {
        Outcome::Wait(w) => w,
        o => panic!("{o:?}"),
    };
    let w1 = match c.join(params(&ids[1], &["range"]), t) {
        Outcome::Wait(w) => w,
        o => panic!("{o:?}"),
    };
    // ids[2] never rejoins; ids[1]'s connection closes while its join is parked.
    c.forget(w1);
    c.tick(t + Duration::from_millis(SESSION as u64 + 1));
    let r = join_reply(&mut c, w_new);
    assert_eq!(r.generation, gen + 1);
    assert_eq!(join_reply(&mut c, w0).generation, gen + 1);
    assert!(c.take_reply(w1).is_none());
    let g = c.group("g").unwrap();
    assert_eq!(
        g.members.len(),
        2,
        "the closed and the silent member are gone"
    );
    assert!(!g.members.iter().any(|m| m.id == ids[1] || m.id == ids[2]));
}

#[test]
fn a_leader_that_never_syncs_is_expelled_after_the_rebalance_timeout() {
    let mut c = Coordinator::new(cfg());
    let t0 = Instant::now();
    let joined: Vec<(String, WaiterId)> = (0..3).map(|_| join_v4(&mut c, &["range"], t0)).collect();
    let t1 = t0 + Duration::from_secs(4);
    c.tick(t1);
    let replies: Vec<JoinReply> = joined.iter().map(|(_, w)| join_reply(&mut c, *w)).collect();
    let (gen, leader) = (replies[0].generation, replies[0].leader.clone());
    let followers: Vec<&String> = joined
        .iter()
        .map(|(id, _)| id)
        .filter(|id| **id != leader)
        .collect();
    let mut waits = Vec::new();
    for id in &followers {
        match c.sync(&mref(id, gen), (None, None), vec![], t1) {
            Outcome::Wait(w) => waits.push(w),
            Outcome::Now(r) => panic!("follower sync answered before the leader's: {r:?}"),
        }
    }
    // The leader keeps heartbeating (its session stays alive) but never sends SyncGroup;
    // the parked followers are not expelled for their silence meanwhile.
    for k in 1..=5 {
        let t = t1 + Duration::from_secs(5 * k);
        assert_eq!(c.heartbeat(&mref(&leader, gen), t), 0);
        c.tick(t);
        assert!(waits.iter().all(|w| c.take_reply(*w).is_none()));
    }
    assert_eq!(c.group("g").unwrap().state, State::CompletingRebalance);
    assert!(c
        .next_deadline()
        .is_some_and(|d| d <= t1 + Duration::from_millis(REBALANCE as u64)));
    let t2 = t1 + Duration::from_millis(REBALANCE as u64);
    c.tick(t2);
    // The followers waiting in SyncGroup hear REBALANCE_IN_PROGRESS; the leader is gone.
    for w in waits {
        assert_eq!(sync_reply(&mut c, w).error, code(E::RebalanceInProgress));
    }
    let g = c.group("g").unwrap();
    assert_eq!(g.state, State::PreparingRebalance);
    assert_eq!(g.members.len(), 2);
    assert!(g.members.iter().all(|m| m.id != leader));
    assert_eq!(
        c.heartbeat(&mref(&leader, gen), t2),
        code(E::UnknownMemberId)
    );
    // The followers rejoin and a new generation forms with one of them leading.
    let Outcome::Wait(first) = c.join(params(followers[0], &["range"]), t2) else {
        panic!("the first rejoin waits for the other member");
    };
    // The last rejoin completes the join phase and is answered at once.
    let Outcome::Now(second) = c.join(params(followers[1], &["range"]), t2) else {
        panic!("the last rejoin must complete the rebalance");
    };
    let r = [join_reply(&mut c, first), second];
    assert_eq!(r[0].generation, gen + 1);
    assert!(followers.contains(&&r[0].leader));
    let new_leader = r[0].leader.clone();
    let a = followers
        .iter()
        .map(|id| (id.to_string(), Bytes::from_static(b"a")))
        .collect();
    let Outcome::Now(s) = c.sync(&mref(&new_leader, gen + 1), (None, None), a, t2) else {
        panic!("the new leader's sync must answer at once");
    };
    assert_eq!(s.error, 0);
    let other = followers.iter().find(|id| ***id != new_leader).unwrap();
    let Outcome::Now(s) = c.sync(&mref(other, gen + 1), (None, None), vec![], t2) else {
        panic!("a sync in Stable answers at once");
    };
    assert_eq!((s.error, s.assignment.as_ref()), (0, &b"a"[..]));
    assert_eq!(c.group("g").unwrap().state, State::Stable);
    // Everyone synced: no sync deadline remains to expel anybody who keeps heartbeating.
    for k in 1..=7 {
        let t = t2 + Duration::from_secs(5 * k);
        for id in &followers {
            assert_eq!(c.heartbeat(&mref(id, gen + 1), t), 0);
        }
        c.tick(t);
    }
    let g = c.group("g").unwrap();
    assert_eq!((g.state, g.members.len()), (State::Stable, 2));
}
