//! The fetch server with tickets required, and the client carrying one, in memory (no
//! sockets): every refusal is one ERROR no larger than the request, counted by cause, and
//! nothing of the log is read for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::writer::{NewRecord, PartitionWriter, WriterConfig};
use crate::log::LogDir;

use super::client::{Client, ClientConfig, Event, StartAt, Subscription};
use super::server::{Server, ServerConfig};
use super::ticket::TicketKeys;
use super::wire::{self, ErrorCode, ErrorMsg, FetchRequest, IsolationLevel, PartRequest};

const GW: &str = "198.18.0.1:9093";
const ME: &str = "198.18.0.2:42001";

fn log_with(topics: &[&str]) -> (tempfile::TempDir, Arc<LogDir>) {
    let dir = tempfile::tempdir().unwrap();
    for t in topics {
        let mut w = PartitionWriter::open(dir.path(), t, 0, WriterConfig::default()).unwrap();
        for i in 0..20u8 {
            let v = vec![i; 300];
            w.append(&[NewRecord {
                timestamp: 1,
                key: None,
                value: Some(&v),
                headers: Vec::new(),
            }])
            .unwrap();
        }
        w.flush().unwrap();
    }
    let log = LogDir::open(dir.path(), None).unwrap();
    (dir, log)
}

fn server(log: Arc<LogDir>, keys: &Arc<TicketKeys>) -> Server {
    Server::new(
        log,
        ServerConfig {
            tickets: Some(Arc::clone(keys)),
            ..ServerConfig::default()
        },
    )
}

/// The address-validation token for `me` (a RETRY to a padded probe).
fn token(s: &mut Server, now: Instant, me: SocketAddr) -> [u8; wire::TOKEN_LEN] {
    let probe = fetch(wire::VERSION_3, 0, &[], &[], &[]);
    s.handle_datagram(now, me, &probe.encode(wire::MIN_INITIAL_LEN).unwrap());
    let d = s.poll_transmit(now).unwrap().to_vec();
    wire::Retry::decode(&d).unwrap().token
}

fn fetch<'a>(
    version: u8,
    id: u32,
    token: &'a [u8],
    ticket: &'a [u8],
    topics: &[&'a str],
) -> FetchRequest<'a> {
    FetchRequest {
        version,
        request_id: id,
        ack_floor: id,
        window: 1 << 20,
        max_wait_ms: 0,
        token,
        isolation: IsolationLevel::ReadUncommitted,
        ticket,
        parts: topics
            .iter()
            .map(|t| PartRequest {
                topic: t,
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
                range_start: 0,
                range_end: 0,
            })
            .collect(),
    }
}

/// Sends `d`, returns every datagram the server answers.
fn exchange(s: &mut Server, now: Instant, me: SocketAddr, d: &[u8]) -> Vec<Vec<u8>> {
    s.handle_datagram(now, me, d);
    std::iter::from_fn(|| s.poll_transmit(now).map(|t| t.to_vec())).collect()
}

/// (what, version, ticket, topic, expected code) of one refused FETCH.
type Case<'a> = (&'a str, u8, &'a [u8], &'a str, ErrorCode);

#[test]
fn every_bad_ticket_gets_one_small_error_and_is_counted() {
    let (_d, log) = log_with(&["t", "u"]);
    let t0 = Instant::now();
    let keys = Arc::new(TicketKeys::new(
        t0,
        Duration::from_secs(10),
        Duration::from_secs(60),
    ));
    let mut s = server(log, &keys);
    let me: SocketAddr = ME.parse().unwrap();
    let tok = token(&mut s, t0, me);
    let good = keys.issue(t0, "User:alice", me.ip(), &["t"]).unwrap();
    // Valid: data.
    let d = exchange(
        &mut s,
        t0,
        me,
        &fetch(3, 1, &tok, &good, &["t"]).encode(0).unwrap(),
    );
    assert!(
        wire::DataHeader::decode(&d[0]).is_ok(),
        "a valid ticket is served"
    );
    let mut forged = good.clone();
    forged[20] ^= 0x40;
    let other_addr = keys.issue(t0, "User:alice", "198.18.0.9".parse().unwrap(), &["t"]);
    let other_addr = other_addr.unwrap();
    let later = t0 + Duration::from_secs(11);
    let cases: Vec<Case<'_>> = vec![
        ("missing", 3, &[][..], "t", ErrorCode::Unauthenticated),
        ("v2", 2, &[][..], "t", ErrorCode::Unauthenticated),
        ("forged", 3, &forged[..], "t", ErrorCode::Unauthenticated),
        (
            "truncated",
            3,
            &good[..good.len() - 1],
            "t",
            ErrorCode::Unauthenticated,
        ),
        (
            "address",
            3,
            &other_addr[..],
            "t",
            ErrorCode::Unauthenticated,
        ),
        (
            "scope",
            3,
            &good[..],
            "u",
            ErrorCode::TopicAuthorizationFailed,
        ),
    ];
    for (i, (what, version, ticket, topic, code)) in cases.into_iter().enumerate() {
        let req = fetch(version, 10 + i as u32, &tok, ticket, &[topic])
            .encode(0)
            .unwrap();
        let out = exchange(&mut s, t0, me, &req);
        assert_eq!(out.len(), 1, "{what}: one datagram");
        assert!(
            out[0].len() <= req.len(),
            "{what}: no larger than the request"
        );
        let e = ErrorMsg::decode(&out[0]).unwrap();
        assert_eq!(
            (e.code, e.slot, e.request_id),
            (code, wire::SLOT_REQUEST, 10 + i as u32)
        );
    }
    // Expired: a fresh token (the old one is still valid too), a ticket past its lifetime.
    let req = fetch(3, 30, &tok, &good, &["t"]).encode(0).unwrap();
    let out = exchange(&mut s, later, me, &req);
    assert_eq!(
        ErrorMsg::decode(&out[0]).unwrap().code,
        ErrorCode::Unauthenticated
    );
    let r = &s.stats().tickets;
    assert_eq!(
        (
            r.missing,
            r.malformed,
            r.forged,
            r.expired,
            r.wrong_address,
            r.out_of_scope
        ),
        (2, 1, 1, 1, 1, 1)
    );
    assert_eq!(s.stats().fetches, 1, "nothing refused was read");
}

#[test]
fn without_tickets_configured_versions_1_to_3_are_served_alike() {
    let (_d, log) = log_with(&["t"]);
    let now = Instant::now();
    let mut s = Server::new(log, ServerConfig::default());
    let me: SocketAddr = ME.parse().unwrap();
    let tok = token(&mut s, now, me);
    for (id, v) in [(1, 1), (2, 2), (3, 3)] {
        let d = exchange(
            &mut s,
            now,
            me,
            &fetch(v, id, &tok, &[], &["t"]).encode(0).unwrap(),
        );
        let (h, _) = wire::DataHeader::decode(&d[0]).unwrap();
        assert_eq!(d[0][2], v);
        assert!(h.end_offset > 0);
    }
}

/// Moves every datagram between a client and the server until nothing is left to send.
fn run(c: &mut Client, s: &mut Server, now: Instant, me: SocketAddr) -> Vec<Event> {
    let gw: SocketAddr = GW.parse().unwrap();
    let mut events = Vec::new();
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(d) = c.poll_transmit(now) {
            s.handle_datagram(now, me, &d);
            moved = true;
        }
        while let Some(t) = s.poll_transmit(now) {
            c.handle_datagram(now, gw, &t.to_vec());
            moved = true;
        }
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
        if !moved || c.is_finished() {
            break;
        }
    }
    events
}

#[test]
fn a_client_with_a_ticket_reads_its_topic_and_is_refused_others() {
    let (_d, log) = log_with(&["t", "u"]);
    let now = Instant::now();
    let keys = Arc::new(TicketKeys::new(
        now,
        Duration::from_secs(10),
        Duration::from_secs(60),
    ));
    let mut s = server(log, &keys);
    let me: SocketAddr = ME.parse().unwrap();
    let ticket = keys.issue(now, "User:alice", me.ip(), &["t"]).unwrap();
    for (port, topic, ok) in [(42002, "t", true), (42003, "u", false)] {
        // A new consumer (request ids from 1 again) from a new port: a new session.
        let me = SocketAddr::new(me.ip(), port);
        let sub = Subscription {
            topic: topic.into(),
            partition: 0,
            start: StartAt::Earliest,
        };
        let mut c = Client::new(GW.parse().unwrap(), ClientConfig::default(), vec![sub]);
        c.set_ticket(ticket.clone());
        let ev = run(&mut c, &mut s, now, me);
        let batches = ev.iter().filter(|e| matches!(e, Event::Batch(_))).count();
        let refused = ev.iter().any(|e| {
            matches!(
                e,
                Event::PartitionError {
                    code: ErrorCode::TopicAuthorizationFailed,
                    ..
                }
            )
        });
        if ok {
            assert_eq!(batches, 20, "{topic}");
            assert_eq!(c.positions(), vec![Some(20)]);
        } else {
            assert_eq!((batches, refused), (0, true), "{topic}");
        }
    }
}

#[test]
fn a_client_whose_ticket_expired_waits_for_a_renewal_then_reads_on() {
    let (_d, log) = log_with(&["t"]);
    let t0 = Instant::now();
    let keys = Arc::new(TicketKeys::new(
        t0,
        Duration::from_millis(1000),
        Duration::from_secs(60),
    ));
    let mut s = server(log, &keys);
    let me: SocketAddr = ME.parse().unwrap();
    let sub = Subscription {
        topic: "t".into(),
        partition: 0,
        start: StartAt::Earliest,
    };
    let mut c = Client::new(GW.parse().unwrap(), ClientConfig::default(), vec![sub]);
    // Issued long ago: expired by the first FETCH.
    c.set_ticket(keys.issue(t0, "User:alice", me.ip(), &["t"]).unwrap());
    let now = t0 + Duration::from_secs(5);
    let ev = run(&mut c, &mut s, now, me);
    assert!(
        ev.iter().all(|e| matches!(e, Event::Connected)),
        "no batch, no error yet: {ev:?}"
    );
    assert!(c.ticket_refused(), "the caller is told to renew");
    assert!(
        c.poll_transmit(now).is_none(),
        "nothing asked under the refused ticket"
    );
    // Renewed: the same request asked again, the partition read to its end.
    c.set_ticket(keys.issue(now, "User:alice", me.ip(), &["t"]).unwrap());
    assert!(!c.ticket_refused());
    let ev = run(&mut c, &mut s, now, me);
    let batches = ev.iter().filter(|e| matches!(e, Event::Batch(_))).count();
    assert_eq!(batches, 20, "{ev:?}");
    // Refused again and never renewed: the subscription fails after connect_timeout.
    let later = now + Duration::from_secs(5);
    let sub = Subscription {
        topic: "t".into(),
        partition: 0,
        start: StartAt::Earliest,
    };
    let me2 = SocketAddr::new(me.ip(), 42009);
    let mut c = Client::new(GW.parse().unwrap(), ClientConfig::default(), vec![sub]);
    c.set_ticket(keys.issue(now, "User:alice", me.ip(), &["t"]).unwrap());
    let ev = run(&mut c, &mut s, later, me2);
    assert!(ev.iter().all(|e| matches!(e, Event::Connected)), "{ev:?}");
    assert!(c.ticket_refused());
    let due = c.poll_timeout().expect("the refusal's deadline");
    assert!(due <= later + ClientConfig::default().connect_timeout);
    c.handle_timeout(due);
    let failed = std::iter::from_fn(|| c.poll_event()).any(|e| {
        matches!(
            e,
            Event::PartitionError {
                code: ErrorCode::Unauthenticated,
                ..
            }
        )
    });
    assert!(failed, "an unrenewed refused ticket fails the subscription");
}
