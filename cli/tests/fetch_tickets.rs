//! Fetch tickets end to end (issue 19, the fast path authorized): `kxgw serve` with a SASL
//! listener, a users file and an ACL requires a ticket on every FETCH, over kernel UDP and
//! over AF_XDP (copy mode, XDP attached). `kxgw consume` with credentials gets its ticket on
//! the Kafka listener and reads `t` verified; raw datagrams from the test with no ticket, a
//! forged, truncated, expired one, one for topic `u`, or an older protocol version each get
//! one ERROR no larger than the request and nothing else, counted per cause.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{consume_fetch, in_client_ns, verified_summary, Gateway, KXGW};
use kxgw::fetch::wire::{self, ErrorCode, ErrorMsg};
use kxgw::kafka::auth::client::Credentials;
use kxgw::kafka::auth::scram::ScramHash;
use kxgw::kafka::auth::Mechanism;
use kxgw::kafka::ticket_client::request_ticket;
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

const N: u64 = 3000;
const FETCH_PORT: u16 = 9093;
const SASL_PORT: u16 = 9094;
/// Short, so the expired case does not wait long (and `consume` renews on the way).
const LIFETIME_SECS: u64 = 3;

const ACL: &str = r#"
[[allow]]
principal = "User:alice"
topics = ["t"]
"#;

fn endpoint() -> SocketAddr {
    format!("{GW_ADDR}:{FETCH_PORT}").parse().unwrap()
}

fn sasl_listener() -> String {
    format!("{GW_ADDR}:{SASL_PORT}")
}

/// Topics t and u, user alice, the ACL; returns (log dir, users file, ACL file, password file).
fn setup(work: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let dir = work.join("logs");
    for topic in ["t", "u"] {
        common::produce(&dir, topic, N, &["--record-size", "120"]);
    }
    let users = work.join("users.toml");
    let out = std::process::Command::new(KXGW)
        .args(["users", "add", "--file"])
        .arg(&users)
        .args(["alice", "alice-secret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "kxgw users add: {out:?}");
    let acl = work.join("acl.toml");
    std::fs::write(&acl, ACL).unwrap();
    let pw = work.join("alice.pw");
    std::fs::write(&pw, "alice-secret\n").unwrap();
    (dir, users, acl, pw)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What came back for one raw FETCH.
struct Case {
    what: &'static str,
    sent: usize,
    got: Vec<Vec<u8>>,
}

/// Sends `d` and collects every datagram answered until 300 ms pass without one.
fn send(sock: &UdpSocket, what: &'static str, d: Vec<u8>) -> Case {
    sock.send(&d).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    Case {
        what,
        sent: d.len(),
        got,
    }
}

/// A raw FETCH of partition 0 of `topic` (protocol `version`, request `id`).
fn fetch(version: u8, id: u32, token: &[u8], ticket: &[u8], topic: &str) -> Vec<u8> {
    common::raw_fetch(version, id, token, ticket, topic, 0)
}

/// In the consumer namespace: a ticket for alice and topic t, an address-validation token,
/// then one FETCH per case; the expired case after the ticket's lifetime.
fn raw_cases(net: &TestNet) -> Vec<Case> {
    let listener = sasl_listener();
    in_client_ns(net, move || {
        let creds = Credentials {
            mechanism: Mechanism::Scram(ScramHash::Sha512),
            user: "alice".into(),
            password: "alice-secret".into(),
        };
        let issued = request_ticket(&listener, Some(&creds), &["t"], Duration::from_secs(10))
            .expect("a ticket for alice")
            .expect("this gateway requires tickets");
        assert_eq!(issued.lifetime, Duration::from_secs(LIFETIME_SECS));
        let t = issued.ticket;
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.connect(endpoint()).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // The Kafka port accepting does not mean the fetch endpoint is up yet: probe again.
        let mut token = None;
        for _ in 0..50 {
            let retry = send(
                &sock,
                "probe",
                common::raw_fetch(wire::VERSION_3, 0, &[], &[], "", wire::MIN_INITIAL_LEN),
            );
            if let Some(d) = retry.got.first() {
                assert_eq!(retry.got.len(), 1, "one RETRY to the probe");
                token = Some(wire::Retry::decode(d).expect("RETRY").token);
                break;
            }
        }
        let token = token.expect("the fetch endpoint never answered the probe");
        let mut forged = t.clone();
        forged[20] ^= 0x20;
        let cases = vec![
            send(&sock, "valid", fetch(3, 1, &token, &t, "t")),
            send(&sock, "missing", fetch(3, 2, &token, &[], "t")),
            send(&sock, "version 2", fetch(2, 3, &token, &[], "t")),
            send(&sock, "forged", fetch(3, 4, &token, &forged, "t")),
            send(
                &sock,
                "truncated",
                fetch(3, 5, &token, &t[..t.len() - 3], "t"),
            ),
            send(&sock, "topic u", fetch(3, 6, &token, &t, "u")),
        ];
        std::thread::sleep(Duration::from_secs(LIFETIME_SECS) + Duration::from_millis(300));
        let mut cases = cases;
        cases.push(send(&sock, "expired", fetch(3, 7, &token, &t, "t")));
        cases
    })
}

/// The gateway's `kxgw_fetch_ticket_rejected_total` per cause (all transports and queues),
/// once every expected count is published (the drivers publish their counters periodically).
fn wait_rejects(gw: &Gateway, want: &[(&str, u64)]) -> Vec<(String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = gw.metrics();
        let got: Vec<(String, u64)> = want
            .iter()
            .map(|(cause, _)| {
                let label = format!("cause=\"{cause}\"");
                let n = m
                    .lines()
                    .filter(|l| {
                        l.split([' ', '{']).next() == Some("kxgw_fetch_ticket_rejected_total")
                            && l.contains(&label)
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64;
                (cause.to_string(), n)
            })
            .collect();
        let ok = got.iter().zip(want).all(|((_, g), (_, w))| g == w);
        if ok || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_raw(cases: &[Case]) {
    for c in cases {
        if c.what == "valid" {
            assert!(
                c.got.iter().any(|d| wire::DataHeader::decode(d).is_ok()),
                "a valid ticket is served: {} datagrams",
                c.got.len()
            );
            continue;
        }
        assert_eq!(c.got.len(), 1, "{}: exactly one datagram back", c.what);
        let d = &c.got[0];
        assert!(
            d.len() <= c.sent,
            "{}: {} bytes back for {} sent",
            c.what,
            d.len(),
            c.sent
        );
        let e = ErrorMsg::decode(d).unwrap_or_else(|err| panic!("{}: not an ERROR: {err}", c.what));
        let want = if c.what == "topic u" {
            ErrorCode::TopicAuthorizationFailed
        } else {
            ErrorCode::Unauthenticated
        };
        assert_eq!((e.code, e.slot), (want, wire::SLOT_REQUEST), "{}", c.what);
    }
}

/// `kxgw consume` with `creds` reads t verified, renews its ticket on a long tailing run, is
/// refused u (no ticket for it), and without credentials is refused by the fetch endpoint.
fn consume_checks(net: &TestNet, dir: &Path, creds: [&str; 8]) {
    let fetch = endpoint().to_string();
    let mut args = vec!["--from-beginning", "--verify", "--count", "3000"];
    args.extend(creds);
    let out = consume_fetch(net, &fetch, "t", &args);
    assert!(
        out.status.success(),
        "consume t with a ticket:\n{}",
        text(&out)
    );
    let (n, end, _) = verified_summary(&out);
    assert_eq!((n, end), (N, N as i64));
    assert!(text(&out).contains("via kxgw UDP fetch"), "{}", text(&out));
    // A long run: the ticket (3 s) expires under a tailing consumer, which renews it; the
    // records appended after its first ticket expired still arrive.
    let follower = net
        .client_command(KXGW)
        .args(["consume", "--fetch", fetch.as_str(), "--topic", "t"])
        .args([
            "--from-beginning",
            "--follow",
            "--verify",
            "--count",
            "3200",
        ])
        .args(creds)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut follower = KillOnDrop(follower);
    std::thread::sleep(Duration::from_secs(LIFETIME_SECS) + Duration::from_millis(1500));
    assert!(
        follower.0.try_wait().unwrap().is_none(),
        "the tailing consumer still runs past its first ticket's expiry"
    );
    common::produce(dir, "t", 200, &["--record-size", "120"]);
    let (status, stdout) = follower
        .wait_output(Duration::from_secs(20))
        .unwrap()
        .expect("the tailing consumer did not get the appended records");
    assert!(status.success(), "tailing consume: {status}\n{stdout}");
    assert!(stdout.contains("verified 3200 records"), "{stdout}");
    // Topic u: no ticket for it (the ACL), and nothing read.
    let mut args = vec!["--from-beginning", "--count", "1"];
    args.extend(creds);
    let out = consume_fetch(net, &fetch, "u", &args);
    assert!(!out.status.success(), "consume u must fail");
    assert!(
        text(&out).contains("refused a fetch ticket"),
        "{}",
        text(&out)
    );
    // Without credentials: refused by the fetch endpoint itself.
    let out = consume_fetch(net, &fetch, "t", &["--from-beginning", "--count", "1"]);
    assert!(!out.status.success(), "consume without a ticket must fail");
    assert!(
        text(&out).contains("no valid fetch ticket"),
        "{}",
        text(&out)
    );
}

/// One counter of the gateway summed over its label sets, restricted to `label`.
fn counter(gw: &Gateway, name: &str, label: &str) -> u64 {
    gw.metrics()
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The whole check on one gateway (kernel UDP, or AF_XDP in copy mode with XDP attached).
fn tickets_required(tag: &str, xdp: bool, mechanism: &str) {
    let (net, work, _) = common::test_setup(tag);
    let (dir, users, acl, pw) = setup(work.path());
    let (users, acl, pw) = (
        users.to_str().unwrap().to_string(),
        acl.to_str().unwrap().to_string(),
        pw.to_str().unwrap().to_string(),
    );
    let (lifetime, fetch, listener) = (
        LIFETIME_SECS.to_string(),
        endpoint().to_string(),
        sasl_listener(),
    );
    let mut extra: Vec<&str> = vec![
        "--kafka-listen-sasl",
        listener.as_str(),
        "--sasl-users",
        users.as_str(),
        "--acl",
        acl.as_str(),
        "--fetch-listen",
        fetch.as_str(),
        "--fetch-ticket-lifetime",
        lifetime.as_str(),
    ];
    let iface = net.gw_if.clone();
    if xdp {
        extra.extend([
            "--xdp-iface",
            iface.as_str(),
            "--require-xdp",
            "--arena-mib",
            "64",
        ]);
    }
    let gw = Gateway::start_with(&net, &dir, work.path(), &extra);

    let cases = raw_cases(&net);
    if xdp {
        assert!(net.gw_has_xdp().unwrap(), "XDP attached");
        assert!(gw.log().contains("over AF_XDP"), "{}", gw.log());
    }
    check_raw(&cases);
    let want = [
        ("missing", 2),
        ("malformed", 1),
        ("forged", 1),
        ("expired", 1),
        ("wrong_address", 0),
        ("out_of_scope", 1),
    ];
    let got = wait_rejects(&gw, &want);
    let want: Vec<(String, u64)> = want.iter().map(|(c, n)| (c.to_string(), *n)).collect();
    assert_eq!(got, want, "refusals counted per cause\n{}", gw.metrics());

    let creds: [&str; 8] = [
        "--ticket-from",
        listener.as_str(),
        "--sasl-user",
        "alice",
        "--sasl-mechanism",
        mechanism,
        "--sasl-password-file",
        pw.as_str(),
    ];
    consume_checks(&net, &dir, creds);
    let issued = counter(&gw, "kxgw_kafka_auth_total", "outcome=\"ticket_issued\"");
    assert!(
        issued >= 3,
        "tickets issued to the raw test, to consume and renewed: {issued}"
    );
    let log = gw.stop();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn tickets_over_kernel_udp() {
    tickets_required("tku", false, "SCRAM-SHA-256");
}

#[test]
fn tickets_over_af_xdp() {
    tickets_required("tkx", true, "PLAIN");
}
