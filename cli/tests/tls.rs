//! TLS on the Kafka listener with stock clients, configured as for a Kafka cluster's SSL and
//! SASL_SSL listeners: a CA and certificates made in the test (rcgen); kcat and
//! confluent-kafka verify the gateway's certificate (`ssl.ca.location`) and consume
//! byte-exact on SSL and on SASL_SSL (SCRAM-SHA-256); a client that does not trust the CA
//! fails; with `--tls-client-ca` a client certificate's subject is the principal the ACL
//! allows and another subject is refused; TLS garbage is closed and counted by cause and never
//! stalls the gateway; bad certificate files are refused with their name.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{in_client_ns, wait_listening, Gateway, KXGW};
use kxgw_demo_data::{demo_key, demo_value};
use kxgw_testkit::testnet::{TestNet, GW_ADDR};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};

const PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/sasl_consume.py");
const N: u64 = 2000;
const SIZE: usize = 120;
const ALICE: &str = "alice-secret";

fn require_tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is needed by this test (scripts/install-deps.sh installs it)"
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// "offset\tkey\tvalue" lines against the demo content of partition 0.
fn check_lines(who: &str, out: &Output) {
    let out = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = out.lines().filter(|l| l.contains('\t')).collect();
    assert_eq!(lines.len(), N as usize, "{who}: record count\n{out}");
    for (i, line) in lines.iter().enumerate() {
        let mut f = line.splitn(3, '\t');
        let offset: i64 = f.next().unwrap().parse().expect("offset");
        let (key, value) = (f.next().unwrap(), f.next().unwrap_or_default());
        let want = i as i64;
        assert_eq!(offset, want, "{who}: offsets in order without gaps");
        assert_eq!(key.as_bytes(), &demo_key(want)[..], "{who}: key at {want}");
        assert!(
            value.as_bytes() == &demo_value(0, want, SIZE)[..],
            "{who}: value at offset {want} differs"
        );
    }
}

/// A test CA, the gateway's certificate (for GW_ADDR) and client certificates, as PEM files.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate's PEM file.
    ca_file: PathBuf,
}

fn params(dn: &[(DnType, &str)]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    for (t, v) in dn {
        p.distinguished_name.push(t.clone(), *v);
    }
    p
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = params(&[(DnType::CommonName, name)]);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let ca_file = dir.join(format!("{name}.pem"));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
            ca_file,
        }
    }

    /// Issues `name`.pem / `name`.key; a server certificate names GW_ADDR.
    fn issue(&self, name: &str, dn: &[(DnType, &str)], server: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = params(dn);
        if server {
            p.subject_alt_names = vec![SanType::IpAddress(GW_ADDR.parse().unwrap())];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
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

fn ssl_props(ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> Vec<String> {
    let mut v = vec![
        "security.protocol=SSL".to_string(),
        format!("ssl.ca.location={}", s(ca)),
    ];
    if let Some((c, k)) = cert {
        v.push(format!("ssl.certificate.location={}", s(c)));
        v.push(format!("ssl.key.location={}", s(k)));
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

fn users_file(work: &Path) -> PathBuf {
    let f = work.join("users.toml");
    let out = Command::new(KXGW)
        .args(["users", "add", "--file", &s(&f), "alice", ALICE])
        .output()
        .unwrap();
    assert!(out.status.success(), "kxgw users add: {out:?}");
    f
}

/// `kxgw_kafka_tls_total{outcome="o"}`.
fn tls_outcome(gw: &Gateway, o: &str) -> u64 {
    let m = gw.metrics();
    m.lines()
        .find(|l| l.starts_with(&format!("kxgw_kafka_tls_total{{outcome=\"{o}\"}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no TLS counter {o}:\n{m}"))
}

fn logs(work: &Path) -> PathBuf {
    let dir = work.join("logs");
    for topic in ["t", "u"] {
        common::produce(&dir, topic, N, &["--record-size", &SIZE.to_string()]);
    }
    dir
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
    let dir = logs(w);
    let pki = Pki::new(w, "kxgw-test-ca");
    let (cert, key) = pki.issue("gateway", &[(DnType::CommonName, "kxgw")], true);
    let ca = pki.ca_file.clone();
    let users = users_file(w);
    let acl = w.join("acl.toml");
    std::fs::write(
        &acl,
        "[[allow]]\nprincipal = \"User:alice\"\ntopics = [\"t\"]\ngroups = [\"kxgw-test\"]\n\
         [[allow]]\nprincipal = \"User:ANONYMOUS\"\ntopics = [\"t\"]\ngroups = [\"kxgw-test\"]\n",
    )
    .unwrap();
    let (ssl, sasl_ssl) = (addr(9094), addr(9095));
    let gw = Gateway::start_with(
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
    );
    assert!(wait_listening(&net, ssl) && wait_listening(&net, sasl_ssl));
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
    let dir = logs(w);
    let pki = Pki::new(w, "kxgw-test-ca");
    let (cert, key) = pki.issue("gateway", &[(DnType::CommonName, "kxgw")], true);
    let ca = pki.ca_file.clone();
    let org = [(DnType::OrganizationName, "kxgw")];
    let alice = pki.issue(
        "alice",
        &[org[0].clone(), (DnType::CommonName, "alice")],
        false,
    );
    let bob = pki.issue("bob", &[org[0].clone(), (DnType::CommonName, "bob")], false);
    let other = Pki::new(w, "other-ca");
    let stranger = other.issue(
        "stranger",
        &[org[0].clone(), (DnType::CommonName, "alice")],
        false,
    );
    let acl = w.join("acl.toml");
    // The principal as Kafka's default principal builder names it: RFC 2253, last RDN first.
    std::fs::write(
        &acl,
        "[[allow]]\nprincipal = \"User:CN=alice,O=kxgw\"\ntopics = [\"t\"]\ngroups = [\"kxgw-test\"]\n",
    )
    .unwrap();
    let ssl = addr(9094);
    let gw = Gateway::start_with(
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
    );
    assert!(wait_listening(&net, ssl));

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
        ("KXGW_SSL_CERT", alice.0.as_path()),
        ("KXGW_SSL_KEY", alice.1.as_path()),
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
    let dir = logs(w);
    let pki = Pki::new(w, "kxgw-test-ca");
    let (cert, key) = pki.issue("gateway", &[(DnType::CommonName, "kxgw")], true);
    let ca = pki.ca_file.clone();
    let ssl = addr(9094);
    let gw = Gateway::start_with(
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
    );
    assert!(wait_listening(&net, ssl));
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
    let pki = Pki::new(w, "kxgw-test-ca");
    let (cert, key) = pki.issue("gateway", &[(DnType::CommonName, "kxgw")], true);
    let (_, other_key) = pki.issue("other", &[(DnType::CommonName, "other")], true);
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
