//! Cluster mode on a SASL listener through a whole session, without sockets: the login is
//! relayed to the (played) upstream and gates everything else; local reads wait for the
//! cluster's authorization, asked on the same upstream connection and cached for the ttl.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::session_tests::{fetch, harness, upstream_answers};
use crate::kafka::auth::Security;
use crate::kafka::authority::{RelayConfig, READ_BIT};
use crate::kafka::session::SessionError;
use crate::kafka::testkit::{decode_response, request, Harness};

const TTL: Duration = Duration::from_millis(500);

fn relayed() -> (Harness, tempfile::TempDir) {
    let (mut h, _view, dir) = harness();
    let sec = Security {
        relay: Some(Arc::new(RelayConfig::new(TTL))),
        ..Security::default()
    };
    h.session.secure(&sec, None);
    (h, dir)
}

/// Sends `req` at `now`; nothing may be answered before the upstream is.
fn send<R: kafka_protocol::protocol::Encodable>(
    h: &mut Harness,
    key: ApiKey,
    v: i16,
    req: &R,
    now: Instant,
) {
    h.session.receive(&request(key, v, 7, req));
    assert!(h.step(now).unwrap().is_empty(), "{key:?} waits upstream");
}

/// The Metadata ask waiting in the forwarder: its topics.
fn asked(h: &mut Harness) -> Vec<String> {
    let out = h.session.forwarder().outbound().clone();
    let mut b = Bytes::from(out).slice(4..);
    assert_eq!(b.get_i16(), ApiKey::Metadata as i16);
    let v = b.get_i16();
    let mut b = Bytes::from(h.session.forwarder().outbound().clone()).slice(4..);
    RequestHeader::decode(&mut b, ApiKey::Metadata.request_header_version(v)).unwrap();
    let r = MetadataRequest::decode(&mut b, v).unwrap();
    assert!(r.include_topic_authorized_operations && !r.allow_auto_topic_creation);
    r.topics
        .unwrap()
        .iter()
        .map(|t| t.name.as_ref().unwrap().0.to_string())
        .collect()
}

fn ops(name: &str, code: i16, ops: i32) -> MetadataResponse {
    MetadataResponse::default().with_topics(vec![MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.into()))))
        .with_error_code(code)
        .with_topic_authorized_operations(ops)])
}

fn scram_login(h: &mut Harness, now: Instant) {
    let hs =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256"));
    send(h, ApiKey::SaslHandshake, 1, &hs, now);
    upstream_answers(
        h,
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeResponse::default(),
    );
    let _: SaslHandshakeResponse =
        decode_response(ApiKey::SaslHandshake, 1, 7, &h.step(now).unwrap());
    for (token, reply) in [
        (&b"n,,n=alice,r=abc"[..], &b"r=abcdef,s=c2FsdA==,i=4096"[..]),
        (&b"c=biws,r=abcdef,p=eA=="[..], &b"v=eA=="[..]),
    ] {
        let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(token));
        send(h, ApiKey::SaslAuthenticate, 2, &req, now);
        assert_eq!(
            h.session.principal(),
            "User:ANONYMOUS",
            "not before the cluster says so"
        );
        let resp = SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from_static(reply));
        upstream_answers(h, ApiKey::SaslAuthenticate, 2, &resp);
        let r: SaslAuthenticateResponse =
            decode_response(ApiKey::SaslAuthenticate, 2, 7, &h.step(now).unwrap());
        assert_eq!(&r.auth_bytes[..], reply, "the cluster's bytes, as sent");
    }
    assert_eq!(h.session.principal(), "User:alice");
}

#[test]
fn the_login_is_relayed_and_local_reads_are_asked_then_cached_until_the_ttl() {
    let (mut h, _d) = relayed();
    let now = Instant::now();
    scram_login(&mut h, now);
    // Fetch t-0: the cluster is asked first, on this connection; then the records.
    send(&mut h, ApiKey::Fetch, 12, &fetch(0, 0), now);
    assert_eq!(asked(&mut h), ["t"]);
    upstream_answers(&mut h, ApiKey::Metadata, 9, &ops("t", 0, READ_BIT));
    let r: FetchResponse = decode_response(ApiKey::Fetch, 12, 7, &h.step(now).unwrap());
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    assert!(r.responses[0].partitions[0]
        .records
        .as_ref()
        .is_some_and(|b| !b.is_empty()));
    assert_eq!(h.stats.auth.authz_asked.load(Relaxed), 1);
    // Within the ttl: from the cache, no round trip.
    h.session
        .receive(&request(ApiKey::Fetch, 12, 7, &fetch(0, 0)));
    let r: FetchResponse = decode_response(ApiKey::Fetch, 12, 7, &h.step(now + TTL).unwrap());
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    assert!(h.session.forwarder().outbound().is_empty());
    // After it: asked again, and the cluster now refuses (a revoked ACL).
    let later = now + TTL + Duration::from_millis(1);
    send(&mut h, ApiKey::Fetch, 12, &fetch(0, 0), later);
    assert_eq!(asked(&mut h), ["t"]);
    upstream_answers(&mut h, ApiKey::Metadata, 9, &ops("t", 29, i32::MIN));
    let r: FetchResponse = decode_response(ApiKey::Fetch, 12, 7, &h.step(later).unwrap());
    assert_eq!(r.responses[0].partitions[0].error_code, 29);
    assert!(h.stats.auth.denied_topic.load(Relaxed) >= 1);
    // Describe without Read is no either.
    let lo = ListOffsetsRequest::default().with_topics(vec![
        list_offsets_request::ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("u")))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1)
            ]),
    ]);
    send(&mut h, ApiKey::ListOffsets, 4, &lo, later);
    assert_eq!(asked(&mut h), ["u"]);
    upstream_answers(&mut h, ApiKey::Metadata, 9, &ops("u", 0, 1 << 8));
    let r: ListOffsetsResponse =
        decode_response(ApiKey::ListOffsets, 4, 7, &h.step(later).unwrap());
    assert_eq!(r.topics[0].partitions[0].error_code, 29);
}

#[test]
fn before_the_cluster_accepts_only_api_versions_and_sasl_pass() {
    let (mut h, _d) = relayed();
    let err = h
        .feed(&request(ApiKey::Fetch, 12, 7, &fetch(0, 0)))
        .unwrap_err();
    assert!(
        matches!(err, SessionError::Unauthenticated(ApiKey::Fetch)),
        "{err}"
    );
    assert_eq!(h.stats.auth.unauthenticated_request.load(Relaxed), 1);
    let (mut h, _d) = relayed();
    let err = h
        .feed(&request(
            ApiKey::Metadata,
            9,
            7,
            &MetadataRequest::default(),
        ))
        .unwrap_err();
    assert!(matches!(
        err,
        SessionError::Unauthenticated(ApiKey::Metadata)
    ));
    assert!(
        h.session.forwarder().outbound().is_empty(),
        "nothing reached the cluster"
    );
    // v0 handshakes would be followed by bare tokens: refused.
    let (mut h, _d) = relayed();
    let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    assert!(matches!(
        h.feed(&request(ApiKey::SaslHandshake, 0, 7, &hs)),
        Err(SessionError::UnsupportedVersion { .. })
    ));
    // A mechanism whose principal cannot be learnt: refused here, with the list, and closed.
    let (mut h, _d) = relayed();
    let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("GSSAPI"));
    let r: SaslHandshakeResponse = h.call(ApiKey::SaslHandshake, 1, &hs);
    assert_eq!(r.error_code, 33);
    assert_eq!(r.mechanisms.len(), 3);
    assert!(h.session.is_closing());
    assert!(h.session.forwarder().outbound().is_empty());
}

#[test]
fn a_refused_login_is_passed_on_as_the_cluster_sent_it_and_closes() {
    let (mut h, _d) = relayed();
    let now = Instant::now();
    let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    send(&mut h, ApiKey::SaslHandshake, 1, &hs, now);
    upstream_answers(
        &mut h,
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeResponse::default(),
    );
    h.step(now).unwrap();
    let req =
        SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0alice\0nope"));
    send(&mut h, ApiKey::SaslAuthenticate, 2, &req, now);
    let resp = SaslAuthenticateResponse::default()
        .with_error_code(58)
        .with_error_message(Some(StrBytes::from_static_str(
            "Authentication failed: Invalid username or password",
        )));
    upstream_answers(&mut h, ApiKey::SaslAuthenticate, 2, &resp);
    let r: SaslAuthenticateResponse =
        decode_response(ApiKey::SaslAuthenticate, 2, 7, &h.step(now).unwrap());
    assert_eq!(r.error_code, 58);
    assert_eq!(
        r.error_message.as_deref(),
        Some("Authentication failed: Invalid username or password")
    );
    assert!(h.session.is_closing());
    assert_eq!(h.session.principal(), "User:ANONYMOUS");
    assert_eq!(h.stats.auth.failed_upstream.load(Relaxed), 1);
}

#[test]
fn refused_logins_are_rate_limited_per_client_address_before_reaching_the_cluster() {
    let (mut h, _d) = relayed();
    let cfg = Arc::new(RelayConfig::new(TTL));
    let sec = Security {
        relay: Some(Arc::clone(&cfg)),
        ..Security::default()
    };
    let ip: std::net::IpAddr = "198.18.0.7".parse().unwrap();
    let now = Instant::now();
    let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    let token = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0a\0x"));
    for attempt in 0..11 {
        h.session = crate::kafka::session::Session::new(1 << 20);
        h.session.secure(&sec, Some(ip));
        send(&mut h, ApiKey::SaslHandshake, 1, &hs, now);
        upstream_answers(
            &mut h,
            ApiKey::SaslHandshake,
            1,
            &SaslHandshakeResponse::default(),
        );
        h.step(now).unwrap();
        h.session
            .receive(&request(ApiKey::SaslAuthenticate, 2, 7, &token));
        let out = h.step(now).unwrap();
        if attempt < 10 {
            assert!(out.is_empty(), "relayed");
            let resp = SaslAuthenticateResponse::default().with_error_code(58);
            upstream_answers(&mut h, ApiKey::SaslAuthenticate, 2, &resp);
            h.step(now).unwrap();
        } else {
            let r: SaslAuthenticateResponse = decode_response(ApiKey::SaslAuthenticate, 2, 7, &out);
            assert_eq!(r.error_code, 58);
            assert!(h.session.forwarder().outbound().is_empty(), "not relayed");
        }
        assert!(h.session.is_closing());
    }
    assert_eq!(h.stats.auth.failed_upstream.load(Relaxed), 10);
    assert_eq!(h.stats.auth.rate_limited.load(Relaxed), 1);
}

#[test]
fn offset_apis_go_to_the_cluster_which_authorizes_their_topics() {
    let (mut h, _d) = relayed();
    let now = Instant::now();
    scram_login(&mut h, now);
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default(),
                ]),
        ]);
    send(&mut h, ApiKey::OffsetCommit, 8, &req, now);
    // Forwarded as sent, on the client's own (authenticated) connection: no local ask.
    let out = h.session.forwarder().outbound().clone();
    assert_eq!(
        i16::from_be_bytes([out[4], out[5]]),
        ApiKey::OffsetCommit as i16
    );
    assert_eq!(h.stats.auth.authz_asked.load(Relaxed), 0);
    let refused = OffsetCommitResponse::default().with_topics(vec![
        offset_commit_response::OffsetCommitResponseTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![
                offset_commit_response::OffsetCommitResponsePartition::default()
                    .with_error_code(29),
            ]),
    ]);
    upstream_answers(&mut h, ApiKey::OffsetCommit, 8, &refused);
    let r: OffsetCommitResponse =
        decode_response(ApiKey::OffsetCommit, 8, 7, &h.step(now).unwrap());
    assert_eq!(
        r.topics[0].partitions[0].error_code, 29,
        "the cluster's answer"
    );
}

#[test]
fn a_fetch_ticket_names_only_the_topics_the_cluster_lets_the_principal_read() {
    use crate::fetch::ticket::{Reject, TicketKeys};
    use crate::kafka::apis::fetch_ticket::{request_frame, response_body, TicketRequest};
    let (mut h, _view, _d) = harness();
    let now = Instant::now();
    let keys = Arc::new(TicketKeys::new(
        now,
        Duration::from_secs(60),
        Duration::from_secs(600),
    ));
    let sec = Security {
        relay: Some(Arc::new(RelayConfig::new(TTL))),
        tickets: Some(Arc::clone(&keys)),
        ..Security::default()
    };
    let peer: std::net::IpAddr = "198.18.0.2".parse().unwrap();
    h.session.secure(&sec, Some(peer));
    let ask_ticket = |h: &mut Harness, topics: &[&str]| {
        let req = TicketRequest {
            topics: topics.iter().map(|t| t.to_string()).collect(),
        };
        h.session.receive(&request_frame(5, "test", &req));
    };
    // Before the cluster accepted a login: refused and closed, nothing relayed.
    ask_ticket(&mut h, &["t"]);
    assert!(h.step(now).is_err());
    assert_eq!(h.stats.auth.unauthenticated_request.load(Relaxed), 1);
    assert!(h.session.forwarder().outbound().is_empty());

    let (mut h, _view, _d) = harness();
    h.session.secure(&sec, Some(peer));
    scram_login(&mut h, now);
    // The ticket's topics are asked of the cluster first; it allows t, refuses secret.
    ask_ticket(&mut h, &["t", "secret", "t"]);
    assert!(h.step(now).unwrap().is_empty(), "waits for the cluster");
    assert_eq!(asked(&mut h), ["secret", "t"]);
    let mut answer = ops("t", 0, READ_BIT);
    answer.topics.extend(ops("secret", 29, i32::MIN).topics);
    upstream_answers(&mut h, ApiKey::Metadata, 9, &answer);
    let out = h.step(now).unwrap();
    let (corr, r) = response_body(&out[4..]).unwrap();
    assert_eq!((corr, r.error_code), (5, 0));
    assert_eq!(
        r.topics,
        [("t".into(), 0), ("secret".into(), 29), ("t".into(), 0)]
    );
    let t = keys.check(now, peer, &r.ticket, ["t"]).unwrap();
    assert_eq!(
        (t.principal.as_str(), t.topics),
        ("User:alice", vec!["t".into()])
    );
    assert_eq!(
        keys.check(now, peer, &r.ticket, ["secret"]),
        Err(Reject::OutOfScope { slot: 0 })
    );
    // secret alone, within the ttl: refused from the cache, no ticket, no round trip.
    ask_ticket(&mut h, &["secret"]);
    let out = h.step(now).unwrap();
    let (_, r) = response_body(&out[4..]).unwrap();
    assert_eq!((r.error_code, r.ticket.len()), (29, 0));
    assert!(h.session.forwarder().outbound().is_empty());
    assert_eq!(h.stats.auth.authz_asked.load(Relaxed), 1);
    assert_eq!(h.stats.auth.tickets_issued.load(Relaxed), 1);
}
