//! FetchTicket (the extension request issuing fetch tickets) through whole sessions, without
//! sockets: only after SASL, only for the topics the ACL allows, for the connection's address.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::apis::fetch_ticket::{request_frame, response_body, TicketRequest, TicketResponse};
use super::auth::users::{UserEntry, Users};
use super::auth::{Acl, SaslConfig, Security};
use super::session::SessionError;
use super::testkit::Harness;
use crate::fetch::ticket::{Reject, TicketKeys};
use crate::log::LogDir;

const ACL: &str = "[[allow]]\nprincipal = \"User:alice\"\ntopics = [\"t\"]\n";
const PEER: &str = "198.18.0.2";

fn fixture(sasl: bool, keys: Option<Arc<TicketKeys>>) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(LogDir::open(dir.path(), None).unwrap());
    let mut users = Users::default();
    users
        .users
        .insert("alice".into(), UserEntry::new("pw", 4096));
    let sec = Security {
        sasl: sasl.then(|| Arc::new(SaslConfig::new(users))),
        acl: Some(Arc::new(Acl::parse(ACL).unwrap())),
        tickets: keys,
        ..Security::default()
    };
    h.session.secure(&sec, Some(PEER.parse().unwrap()));
    (h, dir)
}

fn login(h: &mut Harness) {
    let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    let r: SaslHandshakeResponse = h.call(ApiKey::SaslHandshake, 1, &req);
    assert_eq!(r.error_code, 0);
    let req =
        SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0alice\0pw"));
    let r: SaslAuthenticateResponse = h.call(ApiKey::SaslAuthenticate, 2, &req);
    assert_eq!(r.error_code, 0);
}

fn ask(h: &mut Harness, topics: &[&str]) -> Result<TicketResponse, SessionError> {
    let req = TicketRequest {
        topics: topics.iter().map(|t| t.to_string()).collect(),
    };
    let out = h.feed(&request_frame(5, "test", &req))?;
    let (corr, resp) = response_body(&out[4..]).unwrap();
    assert_eq!(corr, 5);
    Ok(resp)
}

fn keys() -> Arc<TicketKeys> {
    Arc::new(TicketKeys::new(
        Instant::now(),
        Duration::from_secs(60),
        Duration::from_secs(600),
    ))
}

#[test]
fn an_authenticated_principal_gets_a_ticket_for_the_topics_it_may_read() {
    let k = keys();
    let (mut h, _d) = fixture(true, Some(k.clone()));
    login(&mut h);
    let r = ask(&mut h, &["t", "u"]).unwrap();
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    assert_eq!(r.topics, [("t".to_string(), 0), ("u".to_string(), 29)]);
    assert_eq!(r.lifetime(), Duration::from_secs(60));
    let peer: IpAddr = PEER.parse().unwrap();
    let t = k.check(Instant::now(), peer, &r.ticket, ["t"]).unwrap();
    assert_eq!(
        (t.principal.as_str(), &t.topics[..]),
        ("User:alice", &["t".to_string()][..])
    );
    assert_eq!(
        k.check(Instant::now(), peer, &r.ticket, ["u"]),
        Err(Reject::OutOfScope { slot: 0 })
    );
    assert_eq!(h.stats.auth.tickets_issued.load(Relaxed), 1);
    // Nothing allowed: no ticket.
    let r = ask(&mut h, &["u"]).unwrap();
    assert_eq!((r.error_code, r.ticket.len()), (29, 0));
}

#[test]
fn before_login_the_connection_closes_and_anonymous_gets_nothing_the_acl_denies() {
    let (mut h, _d) = fixture(true, Some(keys()));
    assert!(matches!(
        ask(&mut h, &["t"]),
        Err(SessionError::BadRequest { .. })
    ));
    assert_eq!(h.stats.auth.unauthenticated_request.load(Relaxed), 1);
    // PLAINTEXT listener with the ACL: User:ANONYMOUS may read nothing here.
    let (mut h, _d) = fixture(false, Some(keys()));
    let r = ask(&mut h, &["t"]).unwrap();
    assert_eq!(r.error_code, 29);
    // A gateway that requires no tickets says so.
    let (mut h, _d) = fixture(false, None);
    assert_eq!(ask(&mut h, &["t"]).unwrap().error_code, 54);
}

#[test]
fn malformed_ticket_requests_close_the_connection() {
    let (mut h, _d) = fixture(false, Some(keys()));
    let mut f = request_frame(
        1,
        "x",
        &TicketRequest {
            topics: vec!["t".into()],
        },
    );
    // Count says a million topics.
    let at = f.len() - 7;
    f[at..at + 4].copy_from_slice(&1_000_000i32.to_be_bytes());
    assert!(matches!(h.feed(&f), Err(SessionError::BadRequest { .. })));
    let (mut h, _d) = fixture(false, Some(keys()));
    let mut f = request_frame(
        1,
        "x",
        &TicketRequest {
            topics: vec!["t".into()],
        },
    );
    f[6..8].copy_from_slice(&3i16.to_be_bytes());
    let out = h.feed(&f).unwrap();
    assert_eq!(
        response_body(&out[4..]).unwrap().1.error_code,
        35,
        "v0 only"
    );
}
