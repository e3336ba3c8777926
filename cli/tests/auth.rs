//! Authentication and authorization on the Kafka listener, with stock clients as against a
//! Kafka cluster: `kxgw serve --kafka-listen-sasl` (SASL_PLAINTEXT) with a users file written
//! by `kxgw users add` and an ACL file; confluent-kafka, kafka-python and kcat with PLAIN and
//! SCRAM-SHA-256/512 read the allowed topic byte-exact, are refused the other one, and
//! clients without credentials or with a wrong password are refused.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

use common::{in_client_ns, wait_listening, Gateway, KXGW};
use kxgw_demo_data::{demo_key, demo_value};
use kxgw_testkit::testnet::{TestNet, GW_ADDR};

const PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/sasl_consume.py");
const PY_DESCRIBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/describe_topics.py");
const N: u64 = 3000;
const SIZE: usize = 120;

const ACL: &str = r#"
[[allow]]
principal = "User:alice"
topics = ["t"]
groups = ["kxgw-test"]
"#;

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

fn users(args: &[&str]) -> String {
    let out = Command::new(KXGW).arg("users").args(args).output().unwrap();
    assert!(out.status.success(), "kxgw users {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// "offset\tkey\tvalue" lines against the demo content of partition 0.
fn check_lines(who: &str, out: &str) {
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

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn python(
    net: &TestNet,
    client: &str,
    addr: SocketAddr,
    topic: &str,
    creds: (&str, &str, &str),
    timeout: u32,
) -> Output {
    let (mech, user, pw) = creds;
    net.client_command("timeout")
        .args(["90", "python3", PY, client, &addr.to_string(), topic, "0"])
        .args([&N.to_string(), &timeout.to_string(), mech, user, pw])
        .output()
        .expect("running python3")
}

fn kcat(net: &TestNet, addr: SocketAddr, topic: &str, sasl: Option<(&str, &str, &str)>) -> Output {
    let mut c = net.client_command("timeout");
    c.args([
        "30",
        "kcat",
        "-C",
        "-b",
        &addr.to_string(),
        "-t",
        topic,
        "-p",
        "0",
    ])
    .args(["-o", "beginning", "-e", "-f", "%o\t%k\t%s\n"]);
    if let Some((mech, user, pw)) = sasl {
        c.args(["-X", "security.protocol=SASL_PLAINTEXT"])
            .args(["-X", &format!("sasl.mechanisms={mech}")])
            .args(["-X", &format!("sasl.username={user}")])
            .args(["-X", &format!("sasl.password={pw}")]);
    }
    c.output().expect("running kcat")
}

fn setup(work: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = work.join("logs");
    let size = SIZE.to_string();
    for topic in ["t", "u"] {
        common::produce(&dir, topic, N, &["--record-size", &size]);
    }
    let users_file = work.join("users.toml");
    users(&[
        "add",
        "--file",
        users_file.to_str().unwrap(),
        "alice",
        "alice-secret",
    ]);
    users(&[
        "add",
        "--file",
        users_file.to_str().unwrap(),
        "bob",
        "bob-secret",
    ]);
    users(&["remove", "--file", users_file.to_str().unwrap(), "bob"]);
    assert_eq!(
        users(&["list", "--file", users_file.to_str().unwrap()]),
        "alice\n"
    );
    let stored = std::fs::read_to_string(&users_file).unwrap();
    assert!(
        !stored.contains("alice-secret"),
        "no password in the users file"
    );
    let acl = work.join("acl.toml");
    std::fs::write(&acl, ACL).unwrap();
    (dir, users_file, acl)
}

fn start(net: &TestNet, work: &Path) -> (Gateway, SocketAddr) {
    let (dir, users_file, acl) = setup(work);
    let sasl: SocketAddr = format!("{GW_ADDR}:9093").parse().unwrap();
    let gw = Gateway::start_with(
        net,
        &dir,
        work,
        &[
            "--kafka-listen-sasl",
            &sasl.to_string(),
            "--sasl-users",
            users_file.to_str().unwrap(),
            "--acl",
            acl.to_str().unwrap(),
        ],
    );
    assert!(wait_listening(net, sasl), "no SASL listener:\n{}", gw.log());
    (gw, sasl)
}

const ALICE: &str = "alice-secret";

#[test]
fn sasl_plaintext_and_acl_with_confluent_kafka_and_kafka_python() {
    require_tool("python3");
    let net = TestNet::new("sasl", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (gw, sasl) = start(&net, work.path());
    for client in ["confluent", "kafka-python"] {
        for mech in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let who = format!("{client} {mech}");
            let out = python(&net, client, sasl, "t", (mech, "alice", ALICE), 60);
            assert!(out.status.success(), "{who}: {}\n{}", text(&out), gw.log());
            check_lines(&who, &String::from_utf8_lossy(&out.stdout));
            let out = python(&net, client, sasl, "u", (mech, "alice", ALICE), 20);
            let t = text(&out).to_uppercase();
            assert!(
                !out.status.success() && t.contains("AUTHORIZATION"),
                "{who} on u: want a topic authorization error: {t}"
            );
        }
        let out = python(
            &net,
            client,
            sasl,
            "t",
            ("SCRAM-SHA-256", "alice", "wrong"),
            20,
        );
        let t = text(&out).to_uppercase();
        assert!(
            !out.status.success() && t.contains("AUTHENTICATION"),
            "{client} with a wrong password: {t}"
        );
        let out = python(&net, client, sasl, "t", ("-", "-", "-"), 15);
        assert!(
            !out.status.success(),
            "{client} without credentials: {}",
            text(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains('\t'),
            "no record without credentials"
        );
    }
    // kafka-python's admin client decodes the authorized operations it asks Metadata for.
    let out = net
        .client_command("timeout")
        .args([
            "60",
            "python3",
            PY_DESCRIBE,
            &sasl.to_string(),
            "PLAIN",
            "alice",
            ALICE,
            "t",
        ])
        .output()
        .expect("running python3");
    assert!(out.status.success(), "describe_topics: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "t\t0\tDESCRIBE,READ\n"
    );
    // The PLAINTEXT listener still runs, under the same ACL: anonymous reads nothing.
    let out = python(&net, "confluent", gw.addr, "t", ("-", "-", "-"), 15);
    assert!(
        !out.status.success(),
        "anonymous on PLAINTEXT: {}",
        text(&out)
    );
    let m = gw.metrics();
    let outcome = |o: &str| {
        m.lines()
            .find(|l| l.starts_with(&format!("kxgw_kafka_auth_total{{outcome=\"{o}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no auth counter {o}:\n{m}"))
    };
    assert!(outcome("ok") >= 12, "{m}");
    assert!(outcome("failed_credentials") >= 2, "{m}");
    assert!(outcome("denied_topic") >= 6, "{m}");
    assert!(outcome("unauthenticated_request") >= 2, "{m}");
    gw.stop();
}

#[test]
fn sasl_plaintext_and_acl_with_kcat() {
    require_tool("kcat");
    let net = TestNet::new("saslk", 1500).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (gw, sasl) = start(&net, work.path());
    for mech in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let out = kcat(&net, sasl, "t", Some((mech, "alice", ALICE)));
        assert!(out.status.success(), "kcat {mech}: {}", text(&out));
        check_lines(
            &format!("kcat {mech}"),
            &String::from_utf8_lossy(&out.stdout),
        );
        let out = kcat(&net, sasl, "u", Some((mech, "alice", ALICE)));
        let t = text(&out).to_lowercase();
        assert!(
            !out.status.success() && t.contains("authorization failed"),
            "kcat {mech} on u: {t}"
        );
    }
    let out = kcat(&net, sasl, "t", Some(("SCRAM-SHA-256", "alice", "wrong")));
    let t = text(&out).to_lowercase();
    assert!(
        !out.status.success() && t.contains("authentication"),
        "kcat wrong password: {t}"
    );
    let out = kcat(&net, sasl, "t", None);
    assert!(
        !out.status.success(),
        "kcat without credentials: {}",
        text(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains('\t'));
    // Raw: a Metadata request before authenticating closes the connection.
    let closed = in_client_ns(&net, move || {
        use kafka_protocol::messages::{ApiKey, MetadataRequest};
        let mut s = common::connect(sasl);
        std::io::Write::write_all(
            &mut s,
            &common::frame(ApiKey::Metadata, 9, &MetadataRequest::default()),
        )
        .unwrap();
        common::closed_by_server(&mut s)
    });
    assert!(closed, "unauthenticated Metadata must close the connection");
    gw.stop();
}
