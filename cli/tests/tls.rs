//! TLS on the Kafka listener with stock clients, configured as for a Kafka cluster's SSL and
//! SASL_SSL listeners: a CA and certificates made in the test (rcgen); kcat and
//! confluent-kafka verify the gateway's certificate (`ssl.ca.location`) and consume
//! byte-exact on SSL and on SASL_SSL (SCRAM-SHA-256); a client that does not trust the CA
//! fails; with `--tls-client-ca` a client certificate's subject is the principal the ACL
//! allows and another subject is refused; TLS garbage is closed and counted by cause and never
//! stalls the gateway; bad certificate files are refused with their name; in cluster mode a
//! SASL_SSL sidecar ends TLS and relays the login to its broker, whose ACL decides.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    allowed_and_refused_topics, gateway_pki, in_client_ns, require_tool, text, users_file, Gateway,
    KXGW,
};
use kxgw_test_pki::{DnType, Issued, Pki, Usage};
use kxgw_testkit::testnet::{TestNet, GW_ADDR};

const PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/sasl_consume.py");
const N: u64 = 2000;
const SIZE: usize = 120;
const ALICE: &str = "alice-secret";

/// "offset\tkey\tvalue" lines of partition 0 (N records of SIZE bytes).
fn check_lines(who: &str, out: &Output) {
    let out = String::from_utf8_lossy(&out.stdout);
    common::check_lines(who, &out, 0, 0, N as usize, SIZE);
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// kcat reading partition 0 of `topic` from the beginning, with `-X` properties.
fn kcat(net: &TestNet, addr: SocketAddr, topic: &str, secs: u32, props: &[String]) -> Output {
    let mut c = net.client_command("timeout");
    c.args([&secs.to_string(), "kcat", "-C", "-b", &addr.to_string()])
        .args(["-t", topic, "-p", "0", "-o", "beginning", "-e"])
        .args(["-f", "%o\t%k\t%s\n"]);
    for p in props {
        c.args(["-X", p]);
    }
    c.output().expect("running kcat")
}

fn ssl_props(ca: &Path, cert: Option<&Issued>) -> Vec<String> {
    let mut v = vec![
        "security.protocol=SSL".to_string(),
        format!("ssl.ca.location={}", s(ca)),
    ];
    if let Some(c) = cert {
        v.push(format!("ssl.certificate.location={}", s(&c.cert)));
        v.push(format!("ssl.key.location={}", s(&c.key)));
    }
    v
}

fn sasl_ssl_props(ca: &Path, user: &str, pw: &str) -> Vec<String> {
    vec![
        "security.protocol=SASL_SSL".to_string(),
        format!("ssl.ca.location={}", s(ca)),
        "sasl.mechanisms=SCRAM-SHA-256".to_string(),
        format!("sasl.username={user}"),
        format!("sasl.password={pw}"),
    ]
}

/// confluent-kafka through cli/tests/py/sasl_consume.py; TLS settings in `env`.
fn confluent(
    net: &TestNet,
    addr: SocketAddr,
    topic: &str,
    creds: (&str, &str, &str),
    env: &[(&str, &Path)],
) -> Output {
    let (mech, user, pw) = creds;
    let mut c = net.client_command("timeout");
    c.args([
        "90",
        "python3",
        PY,
        "confluent",
        &addr.to_string(),
        topic,
        "0",
    ])
    .args([&N.to_string(), "30", mech, user, pw]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running python3")
}

/// `kxgw_kafka_tls_total{outcome="o"}`.
fn tls_outcome(gw: &Gateway, o: &str) -> u64 {
    let m = gw.metrics();
    m.lines()
        .find(|l| l.starts_with(&format!("kxgw_kafka_tls_total{{outcome=\"{o}\"}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no TLS counter {o}:\n{m}"))
}

fn addr(port: u16) -> SocketAddr {
    format!("{GW_ADDR}:{port}").parse().unwrap()
}

#[test]
fn ssl_and_sasl_ssl_with_kcat_and_confluent_kafka() {
    require_tool("kcat");
    require_tool("python3");
    let net = TestNet::new("tls", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dir = allowed_and_refused_topics(w, N, SIZE);
    let (pki, Issued { cert, key, .. }) = gateway_pki(w);
    let ca = pki.ca_file.clone();
    let users = users_file(w, &[("alice", ALICE)]);
    let acl = w.join("acl.toml");
    std::fs::write(
        &acl,
        "[[allow]]\nprincipal = \"User:alice\"\ntopics = [\"t\"]\ngroups = [\"kxgw-test\"]\n\
         [[allow]]\nprincipal = \"User:ANONYMOUS\"\ntopics = [\"t\"]\ngroups = [\"kxgw-test\"]\n",
    )
    .unwrap();
    let (ssl, sasl_ssl) = (addr(9094), addr(9095));
    let gw = Gateway::start_secured(
        &net,
        &dir,
        w,
        &[
            "--kafka-listen-ssl",
            &ssl.to_string(),
            "--kafka-listen-sasl-ssl",
            &sasl_ssl.to_string(),
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
            "--sasl-users",
            &s(&users),
            "--acl",
            &s(&acl),
        ],
        &[ssl, sasl_ssl],
    );
    let log = gw.log();
    for proto in ["SSL", "SASL_SSL"] {
        assert!(
            log.contains(&format!("({proto}, io copy through rustls; ")),
            "the startup line says how {proto} record bytes leave:\n{log}"
        );
    }
    assert!(
        log.contains("kTLS"),
        "the startup line says about kTLS:\n{log}"
    );

    let out = kcat(&net, ssl, "t", 30, &ssl_props(&ca, None));
    assert!(
        out.status.success(),
        "kcat SSL: {}\n{}",
        text(&out),
        gw.log()
    );
    check_lines("kcat SSL", &out);
    let out = kcat(
        &net,
        sasl_ssl,
        "t",
        30,
        &sasl_ssl_props(&ca, "alice", ALICE),
    );
    assert!(out.status.success(), "kcat SASL_SSL: {}", text(&out));
    check_lines("kcat SASL_SSL", &out);
    let out = kcat(
        &net,
        sasl_ssl,
        "u",
        20,
        &sasl_ssl_props(&ca, "alice", ALICE),
    );
    let t = text(&out).to_lowercase();
    assert!(
        !out.status.success() && t.contains("authorization failed"),
        "kcat SASL_SSL on u: {t}"
    );

    let env = [("KXGW_SSL_CA", ca.as_path())];
    let out = confluent(&net, ssl, "t", ("-", "-", "-"), &env);
    assert!(out.status.success(), "confluent SSL: {}", text(&out));
    check_lines("confluent SSL", &out);
    let out = confluent(&net, sasl_ssl, "t", ("SCRAM-SHA-256", "alice", ALICE), &env);
    assert!(out.status.success(), "confluent SASL_SSL: {}", text(&out));
    check_lines("confluent SASL_SSL", &out);
    let out = confluent(
        &net,
        sasl_ssl,
        "t",
        ("SCRAM-SHA-256", "alice", "wrong"),
        &env,
    );
    let t = text(&out).to_uppercase();
    assert!(
        !out.status.success() && t.contains("AUTHENTICATION"),
        "confluent SASL_SSL with a wrong password: {t}"
    );

    // A client that does not trust the test CA (only the system's) refuses the gateway.
    let ok_before = tls_outcome(&gw, "ok");
    let out = kcat(&net, ssl, "t", 10, &["security.protocol=SSL".to_string()]);
    assert!(!out.status.success(), "kcat without the CA: {}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains('\t'),
        "no record to a client that refused the certificate"
    );
    assert_eq!(tls_outcome(&gw, "ok"), ok_before, "no handshake completed");
    assert!(tls_outcome(&gw, "client_alert") >= 1, "{}", gw.metrics());
    assert!(ok_before >= 5, "{}", gw.metrics());
    gw.stop();
}

#[test]
fn client_certificate_subject_is_the_principal() {
    require_tool("kcat");
    require_tool("python3");
    let net = TestNet::new("mtls", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dir = allowed_and_refused_topics(w, N, SIZE);
    let (pki, Issued { cert, key, .. }) = gateway_pki(w);
    let ca = pki.ca_file.clone();
    let org = [(DnType::OrganizationName, "kxgw")];
    let alice = pki.issue(
        "alice",
        &[org[0].clone(), (DnType::CommonName, "alice")],
        Usage::Client,
    );
    let bob = pki.issue(
        "bob",
        &[org[0].clone(), (DnType::CommonName, "bob")],
        Usage::Client,
    );
    let other = Pki::new(w, "other-ca");
    let stranger = other.issue(
        "stranger",
        &[org[0].clone(), (DnType::CommonName, "alice")],
        Usage::Client,
    );
    let acl = w.join("acl.toml");
    // The principal as Kafka's default principal builder names it: RFC 2253, last RDN first.
    std::fs::write(
        &acl,
        "[[allow]]\nprincipal = \"User:CN=alice,O=kxgw\"\ntopics = [\"t\"]\ngroups = [\"kxgw-test\"]\n",
    )
    .unwrap();
    let ssl = addr(9094);
    let gw = Gateway::start_secured(
        &net,
        &dir,
        w,
        &[
            "--kafka-listen-ssl",
            &ssl.to_string(),
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
            "--tls-client-ca",
            &s(&ca),
            "--acl",
            &s(&acl),
        ],
        &[ssl],
    );

    let out = kcat(&net, ssl, "t", 30, &ssl_props(&ca, Some(&alice)));
    assert!(
        out.status.success(),
        "kcat as alice: {}\n{}",
        text(&out),
        gw.log()
    );
    check_lines("kcat alice", &out);
    let env = [
        ("KXGW_SSL_CA", ca.as_path()),
        ("KXGW_SSL_CERT", alice.cert.as_path()),
        ("KXGW_SSL_KEY", alice.key.as_path()),
    ];
    let out = confluent(&net, ssl, "t", ("-", "-", "-"), &env);
    assert!(out.status.success(), "confluent as alice: {}", text(&out));
    check_lines("confluent alice", &out);

    // Another subject from the same CA: authenticated, but the ACL does not allow it.
    let out = kcat(&net, ssl, "t", 20, &ssl_props(&ca, Some(&bob)));
    let t = text(&out).to_lowercase();
    assert!(
        !out.status.success() && t.contains("authorization failed"),
        "kcat as bob: {t}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\t'));
    let cert_refusals = tls_outcome(&gw, "client_cert");
    // No certificate, or alice's name from a CA the gateway does not trust: no handshake.
    for (who, c) in [("no certificate", None), ("another CA", Some(&stranger))] {
        let out = kcat(&net, ssl, "t", 10, &ssl_props(&ca, c));
        assert!(!out.status.success(), "kcat with {who}: {}", text(&out));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains('\t'),
            "{who}: no record"
        );
    }
    assert!(
        tls_outcome(&gw, "client_cert") >= cert_refusals + 2,
        "{}",
        gw.metrics()
    );
    gw.stop();
}

/// Reads until the server closes (true) or 5 s pass (false); what arrived is returned too.
fn until_closed(s: &mut TcpStream) -> (bool, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (true, got),
            Err(_) => {}
        }
    }
    (false, got)
}

#[test]
fn tls_garbage_is_closed_counted_and_never_stalls_the_gateway() {
    require_tool("kcat");
    let net = TestNet::new("tlsg", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dir = allowed_and_refused_topics(w, N, SIZE);
    let (pki, Issued { cert, key, .. }) = gateway_pki(w);
    let ca = pki.ca_file.clone();
    let ssl = addr(9094);
    let gw = Gateway::start_secured(
        &net,
        &dir,
        w,
        &[
            "--kafka-listen-ssl",
            &ssl.to_string(),
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
            "--tls-handshake-timeout-ms",
            "1500",
        ],
        &[ssl],
    );
    // A handshake that stops halfway, held open while others are served.
    let mut stalled = in_client_ns(&net, move || {
        let mut s = TcpStream::connect(ssl).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
            .unwrap();
        s
    });
    let t0 = Instant::now();
    let garbage = in_client_ns(&net, move || {
        use kafka_protocol::messages::{ApiKey, ApiVersionsRequest};
        let mut results = Vec::new();
        // A PLAINTEXT client on the SSL port.
        let mut s = TcpStream::connect(ssl).unwrap();
        s.write_all(&common::frame(
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        ))
        .unwrap();
        results.push(("plaintext Kafka", until_closed(&mut s)));
        // A handshake record holding a ClientHello of noise.
        let mut s = TcpStream::connect(ssl).unwrap();
        let mut noise = vec![0x16, 0x03, 0x03, 0x01, 0x00, 0x01, 0x00, 0x00, 0xfc];
        noise.extend((0..252u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
        s.write_all(&noise).unwrap();
        results.push(("noise in a TLS record", until_closed(&mut s)));
        // Half a record header, then the client's end of the stream.
        let mut s = TcpStream::connect(ssl).unwrap();
        s.write_all(&[0x16, 0x03]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        results.push(("truncated", until_closed(&mut s)));
        results
    });
    for (what, (closed, got)) in &garbage {
        assert!(*closed, "{what}: the gateway did not close the connection");
        assert!(
            got.is_empty() || got[0] == 21,
            "{what}: only a TLS alert may come back, got {got:02x?}"
        );
    }
    // The stalled handshake holds nobody up.
    let out = kcat(&net, ssl, "t", 30, &ssl_props(&ca, None));
    assert!(
        out.status.success(),
        "kcat SSL: {}\n{}",
        text(&out),
        gw.log()
    );
    check_lines("kcat SSL beside garbage", &out);
    let (closed, _) = until_closed(&mut stalled);
    assert!(closed, "the stalled handshake was not closed");
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "closed by the timeout, not before"
    );
    for outcome in ["not_tls", "malformed", "truncated", "timeout", "ok"] {
        assert!(
            tls_outcome(&gw, outcome) >= 1,
            "{outcome}:\n{}",
            gw.metrics()
        );
    }
    // `kxgw stats` prints them too.
    let out = Command::new(KXGW)
        .args(["stats", "--socket"])
        .arg(&gw.ctl)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        t.contains("kafka_tls_total") && t.contains("outcome=not_tls"),
        "kxgw stats: {t}"
    );
    gw.stop();
}

/// Missing files, a key of another certificate and a CA file without certificates are
/// refused at start, naming the file; the config-file keys are the flag names.
#[test]
fn bad_certificate_files_are_refused_with_their_name() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dir = w.join("logs");
    common::produce(&dir, "t", 10, &[]);
    let (pki, Issued { cert, key, .. }) = gateway_pki(w);
    let other_key = pki
        .issue(
            "other",
            &[(DnType::CommonName, "other")],
            Usage::Server(GW_ADDR),
        )
        .key;
    let missing = w.join("missing.pem");
    let serve = |args: &[String]| -> String {
        let out = Command::new(KXGW)
            .args(["serve", "--log-dir", &s(&dir), "--control-socket"])
            .arg(w.join("ctl.sock"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "kxgw serve {args:?} started");
        text(&out)
    };
    let listen = ["--kafka-listen-ssl".to_string(), "127.0.0.1:0".to_string()];
    let with = |c: &Path, k: &Path, extra: &[String]| {
        let mut v = listen.to_vec();
        v.extend(["--tls-cert".into(), s(c), "--tls-key".into(), s(k)]);
        v.extend(extra.iter().cloned());
        v
    };
    let e = serve(&with(&missing, &key, &[]));
    assert!(e.contains("missing.pem") && e.contains("--tls-cert"), "{e}");
    let e = serve(&with(&cert, &missing, &[]));
    assert!(e.contains("missing.pem") && e.contains("--tls-key"), "{e}");
    let e = serve(&with(&cert, &other_key, &[]));
    assert!(
        e.contains("other.key") && e.contains("does not match") && e.contains("gateway.pem"),
        "{e}"
    );
    let e = serve(&with(&cert, &key, &["--tls-client-ca".into(), s(&key)]));
    assert!(
        e.contains("gateway.key") && e.contains("--tls-client-ca"),
        "{e}"
    );
    let e = serve(&["--tls-cert".into(), s(&cert)]);
    assert!(e.contains("--tls-key"), "a certificate needs its key: {e}");
    let cfg = w.join("kxgw.toml");
    std::fs::write(
        &cfg,
        format!(
            "kafka_listen_ssl = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            s(&missing),
            s(&key)
        ),
    )
    .unwrap();
    let e = serve(&["--config".into(), s(&cfg)]);
    assert!(
        e.contains("missing.pem"),
        "config keys tls_cert, tls_key: {e}"
    );
}

/// `kxgw_kafka_bytes_sent_total{kind="k"}` (record bytes).
fn bytes_sent(gw: &Gateway, kind: &str) -> u64 {
    let m = gw.metrics();
    m.lines()
        .find(|l| l.starts_with(&format!("kxgw_kafka_bytes_sent_total{{kind=\"{kind}\"}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Cluster mode: a sidecar whose one listener is SASL_SSL, in front of a broker (a standalone
/// kxgw with a SASL_PLAINTEXT listener, users and an ACL). TLS ends at the sidecar; the login
/// is relayed to the broker over the plain upstream connection, the broker's ACL decides, and
/// the allowed topic is served by the sidecar from the log dir.
#[test]
fn sasl_ssl_sidecar_in_cluster_mode_ends_tls_and_relays_the_login_upstream() {
    require_tool("python3");
    let net = TestNet::new("tlscl", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dir = allowed_and_refused_topics(w, N, SIZE);
    let (pki, issued) = gateway_pki(w);
    let (cert, key) = (issued.cert, issued.key);
    let ca = pki.ca_file.clone();
    let users = users_file(w, &[("alice", ALICE)]);
    let out = Command::new(KXGW)
        .args(["users", "add", "--file", &s(&users), "kxgw", "kxgw-secret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "kxgw users add: {out:?}");
    let password = w.join("kxgw.password");
    std::fs::write(&password, "kxgw-secret\n").unwrap();
    let acl = w.join("acl.toml");
    std::fs::write(
        &acl,
        "[[allow]]\nprincipal = \"User:alice\"\ntopics = [\"t\"]\ngroups = [\"kxgw-test\"]\n\
         [[allow]]\nprincipal = \"User:kxgw\"\ntopics = [\"*\"]\n",
    )
    .unwrap();
    let (broker, sidecar) = (addr(9301), addr(9095));
    let os =
        |v: Vec<String>| -> Vec<std::ffi::OsString> { v.into_iter().map(Into::into).collect() };
    let b = Gateway::spawn_listening(
        &net,
        w,
        "broker",
        "broker",
        broker,
        &os(vec![
            "--log-dir".into(),
            s(&dir),
            "--kafka-listen-sasl".into(),
            broker.to_string(),
            "--sasl-users".into(),
            s(&users),
            "--acl".into(),
            s(&acl),
        ]),
    );
    let mut sidecar_args = vec![
        "--log-dir".into(),
        s(&dir),
        "--upstream".into(),
        broker.to_string(),
        "--node-id".into(),
        "0".into(),
        "--peer".into(),
        format!("0={sidecar}"),
        "--kafka-listen-sasl-ssl".into(),
        sidecar.to_string(),
        "--tls-cert".into(),
        s(&cert),
        "--tls-key".into(),
        s(&key),
        "--upstream-sasl-user".into(),
        "kxgw".into(),
        "--upstream-sasl-password-file".into(),
        s(&password),
    ];
    let gw = Gateway::spawn_listening(
        &net,
        w,
        "sidecar",
        "sidecar",
        sidecar,
        &os(sidecar_args.clone()),
    );
    // Until its watcher (logged in as kxgw) reports the broker's high watermarks.
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.metric("kxgw_upstream_checkpoint_fallback") != 0 {
        assert!(
            Instant::now() < deadline,
            "the sidecar never went live:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gw.log().contains("(SASL_SSL, io copy through rustls; "),
        "{}",
        gw.log()
    );
    let creds = ("SCRAM-SHA-256", "alice", ALICE);
    let out = confluent(&net, sidecar, "t", creds, &[("KXGW_SSL_CA", ca.as_path())]);
    assert!(
        out.status.success(),
        "t: {}\n{}\n{}",
        text(&out),
        gw.log(),
        b.log()
    );
    check_lines("confluent-kafka SASL_SSL via the sidecar", &out);
    let out = confluent(&net, sidecar, "u", creds, &[("KXGW_SSL_CA", ca.as_path())]);
    let t = text(&out).to_uppercase();
    assert!(
        !out.status.success() && t.contains("AUTHORIZATION"),
        "u via the sidecar: want a topic authorization error: {t}"
    );
    assert!(tls_outcome(&gw, "ok") >= 2, "{}", gw.metrics());
    let auth = gw.metrics();
    for outcome in ["ok", "authz_asked"] {
        assert!(
            auth.lines().any(|l| l
                .starts_with(&format!("kxgw_kafka_auth_total{{outcome=\"{outcome}\"}}"))
                && !l.ends_with(" 0")),
            "sidecar {outcome}:\n{auth}"
        );
    }
    assert!(bytes_sent(&gw, "copy") > 0, "served by the sidecar");
    assert_eq!(
        bytes_sent(&b, "sendfile") + bytes_sent(&b, "copy"),
        0,
        "not by the broker"
    );
    gw.stop();
    // Client certificates cannot name a principal the cluster would authorize: refused.
    sidecar_args.extend(["--tls-client-ca".into(), s(&ca)]);
    sidecar_args[8] = "--kafka-listen-ssl".into();
    let out = net
        .gw_command(KXGW)
        .arg("serve")
        .args(&sidecar_args)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("--tls-client-ca is for standalone mode"),
        "{t}"
    );
    b.stop();
}
