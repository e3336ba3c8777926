//! SASL and ACLs through whole sessions, without sockets: requests encoded and responses
//! decoded with the kafka-protocol crate, a log written by the log module's writer.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::auth::scram::tests::client_final;
use super::auth::scram::ScramHash;
use super::auth::users::{UserEntry, Users};
use super::auth::{Acl, SaslConfig, Security};
use super::session::SessionError;
use super::testkit::{request, Harness};
use crate::log::writer::{NewRecord, PartitionWriter, WriterConfig};
use crate::log::LogDir;

const ACL: &str = r#"
[[allow]]
principal = "User:alice"
topics = ["t"]
groups = ["ga"]
"#;

fn write(dir: &std::path::Path, topic: &str) {
    let mut w = PartitionWriter::open(dir, topic, 0, WriterConfig::default()).unwrap();
    let recs = [NewRecord {
        timestamp: 1,
        key: Some(b"k"),
        value: Some(b"v"),
        headers: vec![],
    }];
    w.append(&recs).unwrap();
    w.flush().unwrap();
}

/// A session on a log with topics t and u; `sasl` makes it a SASL listener's.
fn fixture(sasl: bool, acl: bool) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "t");
    write(dir.path(), "u");
    let mut h = Harness::new(LogDir::open(dir.path(), None).unwrap());
    let mut users = Users::default();
    users
        .users
        .insert("alice".into(), UserEntry::new("pw", 4096));
    let sec = Security {
        sasl: sasl.then(|| Arc::new(SaslConfig::new(users))),
        acl: acl.then(|| Arc::new(Acl::parse(ACL).unwrap())),
        relay: None,
        tls: None,
        tickets: None,
    };
    h.session.secure(&sec, None);
    (h, dir)
}

fn handshake(h: &mut Harness, v: i16, mech: &str) -> SaslHandshakeResponse {
    let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mech.into()));
    h.call(ApiKey::SaslHandshake, v, &req)
}

fn authenticate(h: &mut Harness, v: i16, token: &[u8]) -> SaslAuthenticateResponse {
    let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(token));
    h.call(ApiKey::SaslAuthenticate, v, &req)
}

fn metadata(h: &mut Harness, topics: Option<&[&str]>) -> Vec<(String, i16)> {
    let topics = topics.map(|ts| {
        ts.iter()
            .map(|t| {
                metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
            })
            .collect()
    });
    let r: MetadataResponse = h.call(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(topics),
    );
    r.topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code))
        .collect()
}

fn fetch_code(h: &mut Harness, topic: &str) -> i16 {
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_partition_max_bytes(1 << 20)])]);
    let r: FetchResponse = h.call(ApiKey::Fetch, 11, &req);
    r.responses[0].partitions[0].error_code
}

fn plain_login(h: &mut Harness, password: &str) -> SaslAuthenticateResponse {
    assert_eq!(handshake(h, 1, "PLAIN").error_code, 0);
    authenticate(h, 2, format!("\0alice\0{password}").as_bytes())
}

#[test]
fn requests_before_login_close_the_connection() {
    let (mut h, _d) = fixture(true, false);
    // ApiVersions is answered and lists the SASL APIs.
    let r: ApiVersionsResponse = h.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::SaslAuthenticate as i16 && k.max_version == 2));
    let md = request(ApiKey::Metadata, 12, 1, &MetadataRequest::default());
    assert!(matches!(
        h.feed(&md),
        Err(SessionError::Unauthenticated(ApiKey::Metadata))
    ));
    assert_eq!(
        h.stats
            .auth
            .unauthenticated_request
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // A token before the handshake: ILLEGAL_SASL_STATE, then closing.
    let (mut h, _d) = fixture(true, false);
    assert_eq!(authenticate(&mut h, 0, b"\0alice\0pw").error_code, 34);
    assert!(h.session.is_closing());
}

#[test]
fn plain_login_then_acl_applies_to_the_principal() {
    let (mut h, _d) = fixture(true, true);
    let r = plain_login(&mut h, "pw");
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    assert_eq!(h.session.principal(), "User:alice");
    assert_eq!(metadata(&mut h, None), [("t".to_string(), 0)]);
    assert_eq!(
        metadata(&mut h, Some(&["t", "u", "nope"])),
        [("t".into(), 0), ("u".into(), 29), ("nope".into(), 29)]
    );
    assert_eq!(fetch_code(&mut h, "t"), 0);
    assert_eq!(fetch_code(&mut h, "u"), 29);
    // Group APIs: ga allowed, gb not.
    for (g, want) in [("ga", 0), ("gb", 30)] {
        let r: FindCoordinatorResponse = h.call(
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str(g)),
        );
        assert_eq!(r.error_code, want, "{g}");
    }
    let r: HeartbeatResponse = h.call(
        ApiKey::Heartbeat,
        4,
        &HeartbeatRequest::default().with_group_id(GroupId(StrBytes::from_static_str("gb"))),
    );
    assert_eq!(r.error_code, 30);
    let r: OffsetFetchResponse = h.call(
        ApiKey::OffsetFetch,
        7,
        &OffsetFetchRequest::default().with_group_id(GroupId(StrBytes::from_static_str("gb"))),
    );
    assert_eq!(r.error_code, 30);
    // A second handshake after login is an illegal state, answered, not closed.
    assert_eq!(handshake(&mut h, 1, "PLAIN").error_code, 34);
    assert!(!h.session.is_closing());
}

#[test]
fn wrong_password_and_unknown_mechanism_are_answered_then_closed() {
    let (mut h, _d) = fixture(true, false);
    let r = plain_login(&mut h, "nope");
    assert_eq!(r.error_code, 58);
    assert!(r.error_message.unwrap().contains("PLAIN"));
    assert!(h.session.is_closing());
    // Nothing after the failure is answered.
    let more = request(ApiKey::ApiVersions, 3, 2, &ApiVersionsRequest::default());
    assert!(h.feed(&more).unwrap().is_empty());
    let (mut h, _d) = fixture(true, false);
    let r = handshake(&mut h, 1, "GSSAPI");
    assert_eq!(r.error_code, 33);
    let listed: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
    assert_eq!(listed, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
    assert!(h.session.is_closing());
    let s = &h.stats.auth;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (g(&s.unsupported_mechanism), g(&s.failed_credentials)),
        (1, 0)
    );
}

#[test]
fn scram_over_sasl_authenticate_every_version() {
    for v in 0..=2 {
        for h256 in ScramHash::ALL {
            let (mut h, _d) = fixture(true, true);
            assert_eq!(handshake(&mut h, 1, h256.mechanism()).error_code, 0);
            let first = authenticate(&mut h, v, b"n,,n=alice,r=nonce1");
            assert_eq!(first.error_code, 0);
            let sf = std::str::from_utf8(&first.auth_bytes).unwrap().to_string();
            let (cf, want) = client_final(h256, "pw", "n=alice,r=nonce1", &sf);
            let fin = authenticate(&mut h, v, cf.as_bytes());
            assert_eq!(fin.error_code, 0, "v{v} {h256:?}");
            assert_eq!(fin.auth_bytes.as_ref(), want.as_slice());
            assert_eq!(fetch_code(&mut h, "t"), 0);
        }
    }
}

#[test]
fn handshake_v0_takes_bare_tokens() {
    let (mut h, _d) = fixture(true, false);
    assert_eq!(handshake(&mut h, 0, "PLAIN").error_code, 0);
    // A bare 9-byte token (shorter than any request header).
    let token = b"\0alice\0pw";
    let mut frame = (token.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(token);
    assert_eq!(
        h.feed(&frame).unwrap(),
        [0, 0, 0, 0],
        "an empty bare token: success"
    );
    assert_eq!(fetch_code(&mut h, "u"), 0, "no ACL: everything readable");
    let (mut h, _d) = fixture(true, false);
    handshake(&mut h, 0, "PLAIN");
    let mut frame = 10u32.to_be_bytes().to_vec();
    frame.extend_from_slice(b"\0alice\0bad");
    assert!(h.feed(&frame).unwrap().is_empty());
    assert!(h.session.is_closing());
}

#[test]
fn plaintext_listener_with_acl_is_anonymous_and_sasl_apis_are_illegal() {
    let (mut h, _d) = fixture(false, true);
    assert_eq!(h.session.principal(), "User:ANONYMOUS");
    assert_eq!(metadata(&mut h, None), []);
    assert_eq!(fetch_code(&mut h, "t"), 29);
    assert_eq!(handshake(&mut h, 1, "PLAIN").error_code, 34);
    assert_eq!(authenticate(&mut h, 1, b"x").error_code, 34);
    let (mut h, _d) = fixture(false, false);
    assert_eq!(
        fetch_code(&mut h, "u"),
        0,
        "no SASL, no ACL: nothing changes"
    );
}

#[test]
fn metadata_fills_authorized_operations_only_when_asked() {
    let (mut h, _d) = fixture(true, true);
    assert_eq!(plain_login(&mut h, "pw").error_code, 0);
    let topics = |names: &[&str]| {
        Some(
            names
                .iter()
                .map(|t| {
                    metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
                })
                .collect(),
        )
    };
    for v in 8..=12 {
        let req = MetadataRequest::default()
            .with_topics(topics(&["t", "u"]))
            .with_include_topic_authorized_operations(true);
        let r: MetadataResponse = h.call(ApiKey::Metadata, v, &req);
        // Kafka's AclOperation READ (3) and DESCRIBE (8), as bits.
        assert_eq!(r.topics[0].topic_authorized_operations, (1 << 3) | (1 << 8));
        assert_eq!(r.topics[1].error_code, 29);
        assert_eq!(r.topics[1].topic_authorized_operations, i32::MIN);
        let req = MetadataRequest::default().with_topics(topics(&["t"]));
        let r: MetadataResponse = h.call(ApiKey::Metadata, v, &req);
        assert_eq!(
            r.topics[0].topic_authorized_operations,
            i32::MIN,
            "not asked"
        );
        if v <= 10 {
            assert_eq!(r.cluster_authorized_operations, i32::MIN, "not asked");
            let req = req.with_include_cluster_authorized_operations(true);
            let r: MetadataResponse = h.call(ApiKey::Metadata, v, &req);
            assert_eq!(r.cluster_authorized_operations, 1 << 8, "Describe");
        }
    }
}
