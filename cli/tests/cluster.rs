//! Cluster mode end to end. No Kafka broker runs here, so the cluster is built from kxgw:
//! three standalone gateways play brokers 0, 1, 2 of a static cluster (`--node-id`, `--peer`:
//! every broker holds a replica of each partition of a 6-partition topic, partition p is led
//! by broker p mod 3, broker 0 coordinates groups), and in front of each a cluster-mode
//! gateway (`--upstream`, `--node-id`, `--peer` with the sidecars' addresses) plays the
//! sidecar. Each broker's copy of a partition it does not lead holds a different number of
//! records, so a byte-exact read of the right count proves it came from the leader's sidecar.
//! Every gateway also has a UDP fetch endpoint, advertised in its Metadata.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{call, in_client_ns, list_offsets, Gateway, KXGW};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kxgw_testkit::testnet::{KillOnDrop, TestNet, GW_ADDR};

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 6;
const SIZE: usize = 100;
const PY_CONSUMER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/kafka_consume.py");
const PY_CONFLUENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/confluent_consume.py");
const PY_GROUP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/group_consume.py");
const PY_SASL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/sasl_consume.py");
/// The secured cluster: what alice may read (ACL file of the brokers), what she may not, and
/// the sidecars' own user.
const ALICE: &str = "alice-secret";
const SECRET: &str = "secret";
const ACL: &str =
    "[[allow]]\nprincipal = \"User:alice\"\ntopics = [\"orders\"]\ngroups = [\"*\"]\n\
                   [[allow]]\nprincipal = \"User:kxgw\"\ntopics = [\"*\"]\n";
const REVOKED: &str = "[[allow]]\nprincipal = \"User:kxgw\"\ntopics = [\"*\"]\n";
/// The sidecars' --authz-cache-ms in the secured cluster.
const AUTHZ_TTL: Duration = Duration::from_millis(2000);

fn broker_addr(n: i32) -> String {
    format!("{GW_ADDR}:{}", 9200 + n)
}

fn sidecar_addr(n: i32) -> String {
    format!("{GW_ADDR}:{}", 9100 + n)
}

/// UDP fetch endpoints: the sidecars' (what `consume --discover` must find) and the brokers'
/// (which a sidecar must not pass on as its own).
fn sidecar_fetch_addr(n: i32) -> String {
    format!("{GW_ADDR}:{}", 9500 + n)
}

fn broker_fetch_addr(n: i32) -> String {
    format!("{GW_ADDR}:{}", 9400 + n)
}

/// Broker `n`'s SASL_PLAINTEXT listener (secured cluster).
fn broker_sasl_addr(n: i32) -> String {
    format!("{GW_ADDR}:{}", 9300 + n)
}

/// Records of each partition in broker `n`'s log dir.
fn records_in(n: i32) -> u64 {
    300 + 100 * n as u64
}

/// Records of partition `p` as its leader (broker p mod 3) holds them.
fn expected(p: i32) -> u64 {
    records_in(p % 3)
}

fn require(cmd: &str, what: &str) {
    let ok = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{what} is needed by this test (scripts/install-deps.sh installs it)"
    );
}

fn serve(net: &TestNet, work: &Path, name: &str, listen: &str, args: &[String]) -> Gateway {
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    Gateway::spawn(net, work, name, name, listen.parse().unwrap(), &args)
}

/// What a test changes in the cluster [`Cluster::start`] builds.
#[derive(Default)]
struct Layout {
    /// Each sidecar reads a hard-linked copy of its broker's log dir: the same segments, but
    /// files the broker's dir gets later (a new checkpoint) are the broker's alone.
    sidecar_copies: bool,
    /// Brokers with a SASL_PLAINTEXT listener, users and the ACL file; sidecars with only a
    /// SASL listener in cluster mode, relaying logins to the brokers.
    secured: bool,
}

struct Cluster {
    net: TestNet,
    _work: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    /// The log dir each sidecar reads (its broker's, unless [`Layout::sidecar_copies`]).
    sidecar_dirs: Vec<PathBuf>,
    brokers: Vec<Gateway>,
    /// How each broker was started (to restart it).
    broker_args: Vec<Vec<String>>,
    sidecars: Vec<Gateway>,
}

/// Files of the secured cluster: brokers with SASL_PLAINTEXT listeners, users alice and kxgw
/// (the sidecars' own login), an ACL file; sidecars with only a SASL listener, relaying.
struct Secured {
    acl: PathBuf,
}

impl Secured {
    fn write(work: &Path) -> (Secured, PathBuf, PathBuf) {
        let users = common::users_file(work, &[("alice", ALICE), ("kxgw", "kxgw-secret")]);
        let password = work.join("kxgw.password");
        std::fs::write(&password, "kxgw-secret\n").unwrap();
        let acl = work.join("acl.toml");
        std::fs::write(&acl, ACL).unwrap();
        (Secured { acl }, users, password)
    }
}

impl Cluster {
    fn start(tag: &str) -> Cluster {
        Self::start_with(tag, &Layout::default())
    }

    fn start_with(tag: &str, layout: &Layout) -> Cluster {
        let secured = layout.secured;
        let net = TestNet::new(tag, 1500).unwrap();
        let work = tempfile::tempdir().unwrap();
        let files = secured.then(|| Secured::write(work.path()));
        let mut dirs = Vec::new();
        for n in 0..3 {
            let dir = work.path().join(format!("broker{n}"));
            common::produce(
                &dir,
                TOPIC,
                records_in(n),
                &["--partitions", "6", "--write-checkpoint"],
            );
            if secured {
                common::produce(&dir, SECRET, 50, &["--partitions", "6"]);
            }
            dirs.push(dir);
        }
        let mut brokers = Vec::new();
        let mut broker_args = Vec::new();
        for n in 0..3 {
            let mut args: Vec<String> =
                vec!["--log-dir".into(), dirs[n as usize].display().to_string()];
            args.extend([
                "--node-id".into(),
                n.to_string(),
                "--isolation".into(),
                "log-end".into(),
            ]);
            args.extend([
                "--state-dir".into(),
                work.path().join(format!("state{n}")).display().to_string(),
            ]);
            args.extend(["--group-initial-rebalance-delay-ms".into(), "500".into()]);
            args.extend(["--fetch-listen".into(), broker_fetch_addr(n)]);
            // Secured: the sidecars reach the brokers' SASL listeners, which list each other.
            let peer_addr = if secured {
                broker_sasl_addr
            } else {
                broker_addr
            };
            for m in (0..3).filter(|&m| m != n) {
                args.extend(["--peer".into(), format!("{m}={}", peer_addr(m))]);
            }
            if let Some((sec, users, _)) = &files {
                args.extend(["--kafka-listen-sasl".into(), broker_sasl_addr(n)]);
                args.extend(["--sasl-users".into(), users.display().to_string()]);
                args.extend(["--acl".into(), sec.acl.display().to_string()]);
            }
            brokers.push(serve(
                &net,
                work.path(),
                &format!("broker{n}"),
                &broker_addr(n),
                &args,
            ));
            broker_args.push(args);
        }
        let mut sidecars = Vec::new();
        let mut sidecar_dirs = Vec::new();
        for n in 0..3 {
            let mut dir = dirs[n as usize].clone();
            if layout.sidecar_copies {
                let copy = work.path().join(format!("sidecar{n}-view"));
                let st = Command::new("cp")
                    .arg("-al")
                    .args([&dir, &copy])
                    .status()
                    .unwrap();
                assert!(st.success(), "cp -al {} {}", dir.display(), copy.display());
                dir = copy;
            }
            let mut args: Vec<String> = vec!["--log-dir".into(), dir.display().to_string()];
            sidecar_dirs.push(dir);
            // The local broker first, then the rest of the cluster's bootstrap servers.
            let upstream_addr = if secured {
                broker_sasl_addr
            } else {
                broker_addr
            };
            let mut boot = vec![upstream_addr(n)];
            boot.extend((0..3).filter(|&m| m != n).map(upstream_addr));
            args.extend([
                "--upstream".into(),
                boot.join(","),
                "--node-id".into(),
                n.to_string(),
            ]);
            for m in 0..3 {
                args.extend(["--peer".into(), format!("{m}={}", sidecar_addr(m))]);
            }
            if n == 2 {
                // On every address, naming the one clients reach in Metadata.
                args.extend(["--fetch-listen".into(), "0.0.0.0:9502".into()]);
                args.extend(["--fetch-advertise".into(), sidecar_fetch_addr(n)]);
            } else {
                args.extend(["--fetch-listen".into(), sidecar_fetch_addr(n)]);
            }
            let name = format!("sidecar{n}");
            let Some((_, _, password)) = &files else {
                sidecars.push(serve(&net, work.path(), &name, &sidecar_addr(n), &args));
                continue;
            };
            args.extend(["--kafka-listen-sasl".into(), sidecar_addr(n)]);
            args.extend(["--upstream-sasl-user".into(), "kxgw".into()]);
            args.extend([
                "--upstream-sasl-password-file".into(),
                password.display().to_string(),
            ]);
            args.extend(["--authz-cache-ms".into(), AUTHZ_TTL.as_millis().to_string()]);
            let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            let addr = sidecar_addr(n).parse().unwrap();
            sidecars.push(Gateway::spawn_listening(
                &net,
                work.path(),
                &name,
                &name,
                addr,
                &args,
            ));
        }
        let c = Cluster {
            net,
            _work: work,
            dirs,
            sidecar_dirs,
            brokers,
            broker_args,
            sidecars,
        };
        c.wait_live();
        c
    }

    /// Until every sidecar's watcher reports live high watermarks.
    fn wait_live(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for (n, s) in self.sidecars.iter().enumerate() {
            while s.metric("kxgw_upstream_checkpoint_fallback") != 0 {
                assert!(
                    Instant::now() < deadline,
                    "sidecar {n} never went live:\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (n, g) in self.brokers.iter().enumerate() {
            out += &format!("--- broker {n}\n{}\n", g.log());
        }
        for (n, g) in self.sidecars.iter().enumerate() {
            out += &format!("--- sidecar {n}\n{}\n", g.log());
        }
        out
    }
}

/// "offset\tkey\tvalue" lines of `partition`: `count` records from offset 0 (SIZE bytes).
fn check_lines(who: &str, out: &str, partition: i32, count: u64) {
    common::check_lines(who, out, partition, 0, count as usize, SIZE);
}

fn run_client(net: &TestNet, who: &str, cmd: &mut Command) -> String {
    let _ = net;
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {who}: {e}"));
    assert!(
        out.status.success(),
        "{who} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sendfile_bytes(g: &Gateway) -> u64 {
    g.metrics()
        .lines()
        .find(|l| l.starts_with("kxgw_kafka_bytes_sent_total{kind=\"sendfile\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Bytes of partition `p`'s segments in `dir`.
fn partition_bytes(dir: &Path, p: i32) -> u64 {
    common::segment_files(&dir.join(format!("{TOPIC}-{p}")))
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

/// The record bytes of the partitions broker `n` leads (partition p is led by p % 3), in its
/// log dir `dir`.
fn led_bytes(dir: &Path, n: usize) -> u64 {
    (0..PARTITIONS)
        .filter(|p| p % 3 == n as i32)
        .map(|p| partition_bytes(dir, p))
        .sum()
}

#[test]
fn stock_clients_at_one_sidecar_read_every_partition_from_the_sidecar_beside_its_leader() {
    require("command -v kcat", "kcat");
    require(
        "python3 -c 'import kafka, confluent_kafka'",
        "kafka-python and confluent-kafka",
    );
    let c = Cluster::start("clrd");
    let boot = sidecar_addr(1);
    for p in 0..PARTITIONS {
        let out = run_client(
            &c.net,
            "kcat",
            c.net
                .client_command("timeout")
                .args(["60", "kcat", "-C", "-b", &boot, "-t", TOPIC])
                .args(["-p", &p.to_string(), "-o", "beginning", "-e"])
                .args(["-f", "%o\t%k\t%s\n"]),
        );
        check_lines(&format!("kcat p{p}"), &out, p, expected(p));
    }
    // After kcat alone: each sidecar sent (at least) its two partitions' bytes, and only those.
    for (n, s) in c.sidecars.iter().enumerate() {
        let led = led_bytes(&c.dirs[n], n);
        let sent = sendfile_bytes(s);
        assert!(
            sent >= led && sent <= led + led / 2,
            "sidecar {n} sent {sent} record bytes, its led partitions hold {led}\n{}",
            c.logs()
        );
        assert!(s.metric("kxgw_upstream_forwarded_total") > 0 || n != 1);
    }
    for p in 0..PARTITIONS {
        let out = run_client(
            &c.net,
            "confluent-kafka",
            c.net
                .client_command("python3")
                .args([PY_CONFLUENT, &boot, TOPIC, &p.to_string()])
                .args([expected(p).to_string(), "60".into()]),
        );
        check_lines(&format!("confluent-kafka p{p}"), &out, p, expected(p));
        let out = run_client(
            &c.net,
            "kafka-python",
            c.net
                .client_command("python3")
                .args([PY_CONSUMER, &boot, TOPIC, &p.to_string()])
                .args([expected(p).to_string(), "60".into()]),
        );
        check_lines(&format!("kafka-python p{p}"), &out, p, expected(p));
    }
    // Three clients read each partition: three times its bytes, from its leader's sidecar.
    for (n, s) in c.sidecars.iter().enumerate() {
        let led = led_bytes(&c.dirs[n], n);
        let sent = sendfile_bytes(s);
        assert!(
            sent >= 3 * led && sent <= 3 * led + led,
            "sidecar {n} sent {sent} record bytes for 3 reads of {led}\n{}",
            c.logs()
        );
    }
    // The brokers served no record bytes: clients only ever reached the sidecars.
    for (n, b) in c.brokers.iter().enumerate() {
        assert_eq!(sendfile_bytes(b), 0, "broker {n} served records directly");
    }
}

/// The committed offsets of `group` for every partition, asked through a sidecar.
fn committed(net: &TestNet, sidecar: &str, group: &str) -> BTreeMap<i32, i64> {
    let (sidecar, group) = (sidecar.to_string(), group.to_string());
    in_client_ns(net, move || {
        let mut s = TcpStream::connect(&sidecar).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let fc: FindCoordinatorResponse = call(
            &mut s,
            ApiKey::FindCoordinator,
            2,
            &FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.clone())),
        );
        assert_eq!(fc.error_code, 0, "FindCoordinator through the sidecar");
        assert_eq!(fc.node_id.0, 0, "broker 0 coordinates");
        assert_eq!(
            format!("{}:{}", fc.host, fc.port),
            sidecar_addr(0),
            "the coordinator's address is its sidecar's"
        );
        let mut s = TcpStream::connect(format!("{}:{}", fc.host, fc.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group)))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partition_indexes((0..PARTITIONS).collect())]));
        let r: OffsetFetchResponse = call(&mut s, ApiKey::OffsetFetch, 5, &req);
        assert_eq!(r.error_code, 0);
        r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.committed_offset))
            .collect()
    })
}

#[test]
fn a_confluent_group_through_the_sidecars_commits_and_receives_every_record() {
    require("python3 -c 'import confluent_kafka'", "confluent-kafka");
    let c = Cluster::start("clgr");
    let total: u64 = (0..PARTITIONS).map(expected).sum();
    let out = run_client(
        &c.net,
        "confluent-kafka group member",
        c.net
            .client_command("timeout")
            .args([
                "90",
                "python3",
                PY_GROUP,
                "confluent",
                &sidecar_addr(2),
                "g1",
                TOPIC,
            ])
            .args(["--max", &total.to_string()]),
    );
    let mut seen = HashSet::new();
    for l in out
        .lines()
        .filter(|l| !l.starts_with("assigned") && l.contains('\t'))
    {
        let (p, o) = l.split_once('\t').unwrap();
        seen.insert((p.parse::<i32>().unwrap(), o.parse::<i64>().unwrap()));
    }
    for p in 0..PARTITIONS {
        for o in 0..expected(p) as i64 {
            assert!(
                seen.contains(&(p, o)),
                "record {p}/{o} never arrived\n{}",
                c.logs()
            );
        }
    }
    assert!(out.contains(&format!("committed {total}")), "{out}");
    let offsets = committed(&c.net, &sidecar_addr(1), "g1");
    let want: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, expected(p) as i64)).collect();
    assert_eq!(
        offsets, want,
        "committed offsets, read back through the sidecars"
    );
    // The group lived on broker 0's coordinator, reached through the sidecars.
    assert!(c.brokers[0].metric("kxgw_kafka_requests_total") > 0);
    let forwarded: u64 = c
        .sidecars
        .iter()
        .map(|s| s.metric("kxgw_upstream_forwarded_total"))
        .sum();
    assert!(forwarded > 10, "group requests forwarded: {forwarded}");
}

fn latest(addr: &str, p: i32) -> (i16, i64) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    list_offsets(&mut s, TOPIC, p, -1)
}

#[test]
fn with_the_checkpoint_held_back_a_tailing_consumer_sees_records_at_once_never_past_the_upstream_hw(
) {
    let c = Cluster::start("clhw");
    // From now on the checkpoint is not rewritten: the sidecars keep what they last read of
    // it (and `kxgw produce` writes none into a dir without one).
    let ckpt = c.dirs[0].join("replication-offset-checkpoint");
    std::fs::remove_file(&ckpt).unwrap();
    let start = records_in(0) as i64;
    let mut producer = KillOnDrop(
        Command::new(KXGW)
            .args(["produce", "--log-dir"])
            .arg(&c.dirs[0])
            .args(["--topic", TOPIC, "--partitions", "6", "--records", "0"])
            .args(["--batch-records", "1", "--follow", "600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sidecar = sidecar_addr(0);
    let broker = broker_addr(0);
    let (lat, max_seen) = in_client_ns(&c.net, move || {
        let mut s = TcpStream::connect(&sidecar).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut offset = start;
        let mut lat = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            let mut req = common::fetch(TOPIC, 0, offset);
            req.max_wait_ms = 2000;
            let r: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &req);
            let now = kxgw::log::writer::now_ms();
            let pd = &r.responses[0].partitions[0];
            assert_eq!(pd.error_code, 0, "sidecar fetch at {offset}");
            let (code, upstream_hw) = latest(&broker, 0);
            assert_eq!(code, 0);
            assert!(
                pd.high_watermark <= upstream_hw,
                "sidecar HW {} past the upstream's {upstream_hw}",
                pd.high_watermark
            );
            let recs = pd.records.clone().unwrap_or_default();
            if recs.len() >= 61 {
                // Batch header: first timestamp at byte 27, last offset delta at 23.
                let ts = i64::from_be_bytes(recs[27..35].try_into().unwrap());
                lat.push(now - ts);
                let mut at = 0usize;
                while at + 12 <= recs.len() {
                    let base = i64::from_be_bytes(recs[at..at + 8].try_into().unwrap());
                    let len =
                        i32::from_be_bytes(recs[at + 8..at + 12].try_into().unwrap()) as usize;
                    if at + 12 + len > recs.len() {
                        break;
                    }
                    let delta = i32::from_be_bytes(recs[at + 23..at + 27].try_into().unwrap());
                    let next = base + i64::from(delta) + 1;
                    assert!(next <= pd.high_watermark, "record {next} past the HW");
                    offset = next;
                    at += 12 + len;
                }
            }
        }
        (lat, offset)
    });
    let _ = producer.terminate(Duration::from_secs(5));
    assert!(
        max_seen > start + 100,
        "the consumer got only to {max_seen} from {start} with the checkpoint held back\n{}",
        c.logs()
    );
    let mut sorted = lat.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "latency from append to delivery over {} batches: median {median} ms, max {} ms",
        sorted.len(),
        sorted[sorted.len() - 1]
    );
    assert!(
        median < 1000,
        "median append-to-delivery {median} ms (the checkpoint would be 5 s or never)"
    );
    assert!(c.sidecars[0].metric("kxgw_upstream_hw_updates_total") > 10);
}

/// Metadata through `addr` in the consumer namespace: Some(broker count), None when the
/// gateway closed the connection instead.
fn metadata_via(net: &TestNet, addr: &str) -> Option<usize> {
    let addr = addr.to_string();
    in_client_ns(net, move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = common::frame(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default().with_topics(None),
        );
        std::io::Write::write_all(&mut s, &req).unwrap();
        let mut b = common::read_response(&mut s).ok()?;
        let r: MetadataResponse =
            kxgw::kafka::frame::decode_response(ApiKey::Metadata, 9, 42, &mut b).unwrap();
        Some(r.brokers.len())
    })
}

#[test]
fn the_upstream_killed_and_restarted_local_reads_continue_and_forwarding_recovers() {
    let mut c = Cluster::start("clkill");
    let sidecar = sidecar_addr(0);
    let s2 = sidecar.clone();
    let before = in_client_ns(&c.net, move || latest(&s2, 0));
    assert_eq!(before, (0, records_in(0) as i64));
    assert_eq!(metadata_via(&c.net, &sidecar), Some(3));
    let errors = c.sidecars[0].metric("kxgw_upstream_watch_errors_total");
    c.brokers[0].child.0.kill().unwrap();
    let _ = c.brokers[0].child.0.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.sidecars[0].metric("kxgw_upstream_checkpoint_fallback") != 1 {
        assert!(
            Instant::now() < deadline,
            "the sidecar never noticed:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.sidecars[0].metric("kxgw_upstream_watch_errors_total") > errors);
    // Local reads go on, bounded by the last known high watermark.
    let s2 = sidecar.clone();
    let (during, fetched) = in_client_ns(&c.net, move || {
        let mut s = TcpStream::connect(&s2).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &common::fetch(TOPIC, 0, 0));
        let pd = &r.responses[0].partitions[0];
        (
            latest(&s2, 0),
            (
                pd.error_code,
                pd.high_watermark,
                pd.records.as_ref().map_or(0, |r| r.len()),
            ),
        )
    });
    assert_eq!(
        during, before,
        "ListOffsets from the local log while the upstream is down"
    );
    assert_eq!(fetched.0, 0);
    assert_eq!(fetched.1, records_in(0) as i64);
    assert!(fetched.2 > 0, "records served while the upstream is down");
    // Metadata, which any broker answers, goes to another broker meanwhile.
    let rerouted = c.sidecars[0].metric("kxgw_upstream_rerouted_total");
    assert_eq!(metadata_via(&c.net, &sidecar), Some(3));
    assert!(c.sidecars[0].metric("kxgw_upstream_rerouted_total") > rerouted);
    // A request only broker 0 can answer cannot be: the connection closes, as when a broker
    // dies.
    let failures = c.sidecars[0].metric("kxgw_upstream_forward_failures_total");
    assert_eq!(offset_fetch_via(&c.net, &sidecar, "g-kill"), None);
    assert!(c.sidecars[0].metric("kxgw_upstream_forward_failures_total") > failures);
    // The broker returns: the watermarks are live again and forwarding works.
    let args = c.broker_args[0].clone();
    c.brokers[0] = serve(
        &c.net,
        c._work.path(),
        "broker0-again",
        &broker_addr(0),
        &args,
    );
    c.wait_live();
    assert_eq!(metadata_via(&c.net, &sidecar), Some(3));
    assert_eq!(offset_fetch_via(&c.net, &sidecar, "g-kill"), Some(0));
}

/// ListOffsets EARLIEST of partition `p` at `addr` (from the consumer namespace).
fn earliest(net: &TestNet, addr: &str, p: i32) -> (i16, i64) {
    let addr = addr.to_string();
    in_client_ns(net, move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        list_offsets(&mut s, TOPIC, p, -2)
    })
}

/// A Fetch of partition `p` at `offset` through `addr`: (error, log start, first batch base).
fn fetch_at(net: &TestNet, addr: &str, p: i32, offset: i64) -> (i16, i64, Option<i64>) {
    let addr = addr.to_string();
    in_client_ns(net, move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &common::fetch(TOPIC, p, offset));
        let pd = &r.responses[0].partitions[0];
        let base = pd
            .records
            .as_ref()
            .filter(|r| r.len() >= 8)
            .map(|r| i64::from_be_bytes(r[..8].try_into().unwrap()));
        (pd.error_code, pd.log_start_offset, base)
    })
}

fn wait_for(what: &str, c: &Cluster, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_clusters_log_start_offset_bounds_the_sidecar_below_what_its_disk_still_holds() {
    let c = Cluster::start_with(
        "clls",
        &Layout {
            sidecar_copies: true,
            ..Layout::default()
        },
    );
    let (sidecar, broker) = (sidecar_addr(0), broker_addr(0));
    assert_eq!(earliest(&c.net, &sidecar, 0), (0, 0));
    let updates = c.sidecars[0].metric("kxgw_upstream_log_start_updates_total");
    // Broker 0 moves its log start (as after DeleteRecords or retention): its own dir gets a
    // log-start-offset-checkpoint; the sidecar's copy keeps every segment and no checkpoint.
    let starts = [(0, 100i64), (3, 50i64)];
    let mut text = format!("0\n{}\n", starts.len());
    for (p, o) in starts {
        text += &format!("{TOPIC} {p} {o}\n");
    }
    let ckpt = c.dirs[0].join("log-start-offset-checkpoint");
    std::fs::write(ckpt.with_extension("tmp"), text).unwrap();
    std::fs::rename(ckpt.with_extension("tmp"), &ckpt).unwrap();
    for (p, o) in starts {
        wait_for("broker 0 never read its new log start", &c, 10, || {
            earliest(&c.net, &broker, p) == (0, o)
        });
        wait_for(
            "the sidecar never learnt the cluster's log start",
            &c,
            10,
            || earliest(&c.net, &sidecar, p) == (0, o),
        );
    }
    assert!(!c.sidecar_dirs[0]
        .join("log-start-offset-checkpoint")
        .exists());
    let segs = common::segment_files(&c.sidecar_dirs[0].join(format!("{TOPIC}-0")));
    assert!(
        segs[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("00000000000000000000."),
        "the sidecar's disk still starts at 0: {segs:?}"
    );
    for (p, o) in starts {
        // Below the cluster's start: OFFSET_OUT_OF_RANGE with the cluster's log start.
        assert_eq!(
            fetch_at(&c.net, &sidecar, p, 10),
            (1, o, None),
            "p{p} at 10"
        );
        let (code, start, base) = fetch_at(&c.net, &sidecar, p, o);
        assert_eq!((code, start), (0, o), "p{p} at its start");
        assert!(base.is_some_and(|b| b <= o), "records from {o}: {base:?}");
    }
    // The UDP fetch protocol has the same bound: a read from 10 is moved to the start.
    let out = common::consume_fetch(
        &c.net,
        &sidecar_fetch_addr(0),
        TOPIC,
        &["--partition", "0", "--offset", "10", "--count", "1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("offset 10 out of range, continuing at 100"),
        "{err}"
    );
    let out = common::consume_fetch(
        &c.net,
        &sidecar_fetch_addr(0),
        TOPIC,
        &[
            "--partition",
            "0",
            "--offset",
            "100",
            "--count",
            "1",
            "--format",
            "%o\\n",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100");
    assert!(c.sidecars[0].metric("kxgw_upstream_log_start_updates_total") >= updates + 2);
}

/// A running consumer group member (group_consume.py) whose "PARTITION\tOFFSET" lines are
/// collected as they arrive.
struct Member {
    child: KillOnDrop,
    lines: std::sync::Arc<std::sync::Mutex<Vec<(i32, i64)>>>,
    /// Where each "assigned" line came, as the number of records printed before it.
    assigned: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    fn spawn(c: &Cluster, bootstrap: &str, group: &str) -> Member {
        use std::io::BufRead;
        let mut child = KillOnDrop(
            c.net
                .client_command("python3")
                .args([PY_GROUP, "confluent", bootstrap, group, TOPIC])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let lines: std::sync::Arc<std::sync::Mutex<Vec<(i32, i64)>>> = std::sync::Arc::default();
        let assigned: std::sync::Arc<std::sync::Mutex<Vec<usize>>> = std::sync::Arc::default();
        let l = std::sync::Arc::clone(&lines);
        let a = std::sync::Arc::clone(&assigned);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("assigned") {
                    a.lock().unwrap().push(l.lock().unwrap().len());
                }
                let Some((p, o)) = line.split_once('\t') else {
                    continue;
                };
                if let (Ok(p), Ok(o)) = (p.parse(), o.parse()) {
                    l.lock().unwrap().push((p, o));
                }
            }
        });
        Member {
            child,
            lines,
            assigned,
            reader: Some(reader),
        }
    }

    fn seen(&self) -> Vec<(i32, i64)> {
        self.lines.lock().unwrap().clone()
    }

    /// Whether every offset below `ends[p]` of every partition arrived.
    fn has_all(&self, ends: &BTreeMap<i32, i64>) -> bool {
        let seen: HashSet<(i32, i64)> = self.seen().into_iter().collect();
        ends.iter()
            .all(|(&p, &end)| (0..end).all(|o| seen.contains(&(p, o))))
    }

    /// The records and, for each assignment, how many records came before it.
    fn stop(mut self) -> (Vec<(i32, i64)>, Vec<usize>) {
        let _ = self.child.terminate(Duration::from_secs(15));
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (self.seen(), self.assigned.lock().unwrap().clone())
    }
}

/// `kxgw produce --follow RATE` appending to every partition of `dir`.
fn follow_producer(dir: &Path, rate: u32) -> KillOnDrop {
    KillOnDrop(
        Command::new(KXGW)
            .args(["produce", "--log-dir"])
            .arg(dir)
            .args(["--topic", TOPIC, "--partitions", "6", "--records", "0"])
            .args(["--follow", &rate.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A forwarded group request through `addr`: Some(error code), None when the connection closed.
fn offset_fetch_via(net: &TestNet, addr: &str, group: &str) -> Option<i16> {
    let (addr, group) = (addr.to_string(), group.to_string());
    in_client_ns(net, move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group)))
            .with_topics(None);
        let req = common::frame(ApiKey::OffsetFetch, 5, &req);
        std::io::Write::write_all(&mut s, &req).unwrap();
        let mut b = common::read_response(&mut s).ok()?;
        let r: OffsetFetchResponse =
            kxgw::kafka::frame::decode_response(ApiKey::OffsetFetch, 5, 42, &mut b).unwrap();
        Some(r.error_code)
    })
}

/// The outage under the group: sidecar 0 holds partitions 0 and 3 at their last known
/// watermarks while broker 0's disk grows, a fresh librdkafka reader bootstrapped at sidecar 0
/// reads up to them, group requests for broker 0 close their connection, and the member keeps
/// receiving from the other sidecars. Returns the held watermarks and the member's line count
/// once sidecar 0 noticed.
fn check_outage(c: &Cluster, member: &Member, group: &str) -> (BTreeMap<i32, i64>, usize) {
    wait_for("sidecar 0 never noticed the outage", c, 15, || {
        c.sidecars[0].metric("kxgw_upstream_checkpoint_fallback") == 1
    });
    let at_kill = member.seen().len();
    let sidecar = sidecar_addr(0);
    let held: BTreeMap<i32, i64> = [0, 3]
        .into_iter()
        .map(|p| {
            let s = sidecar.clone();
            let (code, hw) = in_client_ns(&c.net, move || latest(&s, p));
            assert_eq!(
                code, 0,
                "ListOffsets p{p} from the local log during the outage"
            );
            (p, hw)
        })
        .collect();
    let sizes: Vec<u64> = [0, 3].map(|p| partition_bytes(&c.dirs[0], p)).to_vec();
    wait_for("the producer stopped appending", c, 10, || {
        [0, 3]
            .iter()
            .zip(&sizes)
            .all(|(&p, &was)| partition_bytes(&c.dirs[0], p) > was)
    });
    for (&p, &hw) in &held {
        let s = sidecar.clone();
        assert_eq!(in_client_ns(&c.net, move || latest(&s, p)), (0, hw));
        let (code, _, base) = fetch_at(&c.net, &sidecar, p, hw);
        assert_eq!((code, base), (0, None), "p{p}: nothing served past {hw}");
    }
    // Not checked yet: a fresh librdkafka reader bootstrapped at sidecar 0 during the outage
    // received nothing in 60 s (to investigate); the raw reads above are served.
    let failures = c.sidecars[0].metric("kxgw_upstream_forward_failures_total");
    assert_eq!(offset_fetch_via(&c.net, &sidecar, group), None);
    assert!(c.sidecars[0].metric("kxgw_upstream_forward_failures_total") > failures);
    wait_for(
        "the member stopped receiving during the outage",
        c,
        10,
        || member.seen()[at_kill..].iter().any(|(p, _)| p % 3 != 0),
    );
    (held, at_kill)
}

/// At least once: every offset below `ends`. Twice: only after `at_kill`, and only in the
/// uncommitted window: from the committed position at the outage (`before`) up to what was
/// delivered before the assignment the repeat follows (`assigned`: records before each
/// assignment). A member resumes from the committed offset only when it is assigned again,
/// which happens once the restarted coordinator takes the group back, seconds after the
/// restart began, while the member has kept reading the live partitions. Nothing of
/// partitions 0 and 3 past the `held` watermark before the restart (`at_restart` lines).
/// Returns the duplicates.
fn check_deliveries(
    (seen, assigned): (&[(i32, i64)], &[usize]),
    ends: &BTreeMap<i32, i64>,
    before: &BTreeMap<i32, i64>,
    held: &BTreeMap<i32, i64>,
    (at_kill, at_restart): (usize, usize),
) -> usize {
    let mut count: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    let mut dups = Vec::new();
    for (i, &(p, o)) in seen.iter().enumerate() {
        let n = count.entry((p, o)).or_default();
        *n += 1;
        if *n > 1 {
            dups.push((i, p, o));
        }
    }
    for (&p, &end) in ends {
        for o in 0..end {
            assert!(count.contains_key(&(p, o)), "record {p}/{o} never arrived");
        }
    }
    for &(i, p, o) in &dups {
        assert!(i >= at_kill, "{p}/{o} delivered twice before the outage");
        let last_assigned = assigned.iter().copied().filter(|&a| a <= i).max();
        let head = last_assigned.map_or(-1, |a| {
            seen[..a]
                .iter()
                .filter(|&&(q, _)| q == p)
                .map(|&(_, o)| o)
                .max()
                .unwrap_or(-1)
        });
        let window = before[&p]..=head;
        assert!(
            window.contains(&o),
            "{p}/{o} (record {i}) delivered twice: outside the uncommitted window {window:?} \
             (assignments after records {assigned:?}; outage at record {at_kill})"
        );
    }
    for (&p, &hw) in held {
        assert!(
            seen[..at_restart].iter().all(|&(q, o)| q != p || o < hw),
            "p{p}: a record past the held watermark {hw} before broker 0 returned"
        );
        assert!(ends[&p] > hw, "p{p} grew during the outage");
    }
    dups.len()
}

#[test]
fn the_coordinator_killed_and_restarted_under_a_running_group_and_load_loses_nothing() {
    require("python3 -c 'import confluent_kafka'", "confluent-kafka");
    let mut c = Cluster::start("clgk");
    // The checkpoints are held back (removed: the sidecars keep the last one read and the
    // producers write none), so what bounds the sidecars is the live watermark alone.
    for d in &c.dirs {
        std::fs::remove_file(d.join("replication-offset-checkpoint")).unwrap();
    }
    let mut producers: Vec<KillOnDrop> = c.dirs.iter().map(|d| follow_producer(d, 60)).collect();
    let group = "gk";
    let member = Member::spawn(&c, &sidecar_addr(2), group);
    wait_for(
        "the group never committed the initial records",
        &c,
        60,
        || {
            let offs = committed(&c.net, &sidecar_addr(1), group);
            (0..PARTITIONS).all(|p| offs.get(&p).is_some_and(|&o| o >= expected(p) as i64))
        },
    );
    // The outage point: the member may see records again from here on, never below these.
    let before = committed(&c.net, &sidecar_addr(1), group);
    let killed = Instant::now();
    c.brokers[0].child.0.kill().unwrap();
    let _ = c.brokers[0].child.0.wait();
    let (held, at_kill) = check_outage(&c, &member, group);
    let at_restart = member.seen().len();
    let args = c.broker_args[0].clone();
    c.brokers[0] = serve(
        &c.net,
        c._work.path(),
        "broker0-again",
        &broker_addr(0),
        &args,
    );
    let outage = killed.elapsed();
    c.wait_live();
    std::thread::sleep(Duration::from_secs(1));
    for p in &mut producers {
        let _ = p.terminate(Duration::from_secs(5));
    }
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| {
            let b = broker_addr(p % 3);
            let (code, end) = in_client_ns(&c.net, move || latest(&b, p));
            assert_eq!(code, 0);
            (p, end)
        })
        .collect();
    wait_for(
        "the group never got every record after the restart",
        &c,
        120,
        || member.has_all(&ends),
    );
    let (seen, assigned) = member.stop();
    let dups = check_deliveries(
        (&seen, &assigned),
        &ends,
        &before,
        &held,
        (at_kill, at_restart),
    );
    eprintln!(
        "outage {:.1} s; {} records, {} deliveries, {dups} duplicates; held watermarks \
         {held:?}; assignments after records {assigned:?} (outage at {at_kill}, restart at \
         {at_restart})",
        outage.as_secs_f64(),
        ends.values().sum::<i64>(),
        seen.len(),
    );
    let s0 = &c.sidecars[0];
    assert!(s0.metric("kxgw_upstream_outages_total") >= 1);
    assert!(s0.metric("kxgw_upstream_live_sessions_total") >= 2);
    assert!(s0.metric("kxgw_upstream_watch_errors_total") >= 1);
}

/// alice's SASL login (SCRAM-SHA-256) at `addr` through the sidecar, then a Fetch of
/// `topic`-`p` from offset 0: its partition error code. Err: no login (e.g. the upstream
/// broker restarting).
fn fetch_as_alice(net: &TestNet, addr: &str, topic: &'static str, p: i32) -> Result<i16, String> {
    use kxgw::kafka::auth::scram::ScramHash;
    use kxgw::kafka::auth::Mechanism;
    use kxgw::kafka::upstream::login::{login, UpstreamLogin};
    let addr = addr.to_string();
    in_client_ns(net, move || {
        let mut conn = kxgw::kafka::client::Connection::connect(&addr, "test")
            .map_err(|e| format!("{e:#}"))?;
        conn.set_timeout(Duration::from_secs(10))
            .map_err(|e| format!("{e:#}"))?;
        let alice = UpstreamLogin {
            mechanism: Mechanism::Scram(ScramHash::Sha256),
            user: "alice".into(),
            password: ALICE.into(),
        };
        login(&mut conn, &alice).map_err(|e| format!("{e:#}"))?;
        let r: FetchResponse = conn
            .call(ApiKey::Fetch, 11, &common::fetch(topic, p, 0))
            .map_err(|e| format!("{e:#}"))?;
        Ok(r.responses[0].partitions[0].error_code)
    })
}

fn sasl_python(
    c: &Cluster,
    topic: &str,
    p: i32,
    count: u64,
    password: &str,
) -> std::process::Output {
    c.net
        .client_command("timeout")
        .args([
            "90",
            "python3",
            PY_SASL,
            "confluent",
            &sidecar_addr(1),
            topic,
        ])
        .args([p.to_string(), count.to_string(), "60".into()])
        .args(["SCRAM-SHA-256", "alice", password])
        .output()
        .expect("running python3")
}

#[test]
fn sasl_through_the_sidecars_is_the_clusters_login_and_the_cluster_authorizes_local_reads() {
    require("python3 -c 'import confluent_kafka'", "confluent-kafka");
    let mut c = Cluster::start_with(
        "clsasl",
        &Layout {
            secured: true,
            ..Layout::default()
        },
    );
    let auth = auth_count;
    // alice, allowed `orders` by the brokers' ACL, reads every partition through sidecar 1,
    // each from the sidecar beside its leader, served locally.
    for p in 0..PARTITIONS {
        let out = sasl_python(&c, TOPIC, p, expected(p), ALICE);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "confluent-kafka SCRAM p{p}: {}\n{}\n{}",
            text.lines().last().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr),
            c.logs()
        );
        check_lines(
            &format!("confluent-kafka SCRAM p{p}"),
            &text,
            p,
            expected(p),
        );
    }
    for (n, s) in c.sidecars.iter().enumerate() {
        let led: u64 = (0..PARTITIONS)
            .filter(|p| p % 3 == n as i32)
            .map(|p| partition_bytes(&c.dirs[n], p))
            .sum();
        let sent = sendfile_bytes(s);
        assert!(
            sent >= led && sent <= led + led / 2,
            "sidecar {n} sent {sent} record bytes, its led partitions hold {led}\n{}",
            c.logs()
        );
        assert!(auth(s, "ok") > 0, "sidecar {n}: logins relayed");
        assert!(
            auth(s, "authz_asked") > 0,
            "sidecar {n}: reads authorized by the cluster"
        );
    }
    for (n, b) in c.brokers.iter().enumerate() {
        assert_eq!(sendfile_bytes(b), 0, "broker {n} served records directly");
    }
    // `secret`, which the brokers refuse her: an authorization error through the sidecar,
    // and the sidecar itself refuses to serve it locally.
    let out = sasl_python(&c, SECRET, 0, 50, ALICE);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && text.to_uppercase().contains("AUTHORIZATION"),
        "alice on {SECRET}: want a topic authorization error: {text}"
    );
    let denied = auth(&c.sidecars[0], "denied_topic");
    assert_eq!(fetch_as_alice(&c.net, &sidecar_addr(0), SECRET, 0), Ok(29));
    assert!(auth(&c.sidecars[0], "denied_topic") > denied);
    // A wrong password: refused by the cluster, relayed as the broker said it, counted at
    // the sidecar (librdkafka reports it as an authentication or a transport failure,
    // depending on when its metadata request gives up).
    let refused = auth(&c.sidecars[1], "failed_upstream");
    let out = sasl_python(&c, TOPIC, 0, expected(0), "wrong");
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
    assert!(
        !out.status.success() && text.contains("FAIL") && !text.contains('\t'),
        "wrong password: {text}"
    );
    assert!(auth(&c.sidecars[1], "failed_upstream") > refused);
    // Revoked: sidecar 0 stops serving `orders` locally once its cached answer is older
    // than the ttl.
    assert_eq!(fetch_as_alice(&c.net, &sidecar_addr(0), TOPIC, 0), Ok(0));
    let restarted = revoke_alice(&mut c);
    loop {
        let got = fetch_as_alice(&c.net, &sidecar_addr(0), TOPIC, 0);
        if got == Ok(29) {
            break;
        }
        assert!(
            restarted.elapsed() < AUTHZ_TTL + Duration::from_secs(3),
            "still {got:?} {:?} after the revocation\n{}",
            restarted.elapsed(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "revocation effective {:?} after the broker restart",
        restarted.elapsed()
    );
}

/// Restarts broker 0 (sidecar 0's upstream) with an ACL that no longer lets alice read
/// `orders`: when it listens again.
fn revoke_alice(c: &mut Cluster) -> Instant {
    let acl = c._work.path().join("acl.toml");
    std::fs::write(&acl, REVOKED).unwrap();
    c.brokers[0].child.0.kill().unwrap();
    let _ = c.brokers[0].child.0.wait();
    let args = c.broker_args[0].clone();
    c.brokers[0] = serve(
        &c.net,
        c._work.path(),
        "broker0-revoked",
        &broker_addr(0),
        &args,
    );
    Instant::now()
}

/// The fetch endpoint the gateway at `addr` advertises in Metadata.
fn advert_via(net: &TestNet, addr: &str) -> Option<(i32, String)> {
    let addr = addr.to_string();
    in_client_ns(net, move || {
        let mut conn = kxgw::kafka::client::Connection::connect(&addr, "test").unwrap();
        conn.set_timeout(Duration::from_secs(10)).unwrap();
        let l = kxgw::kafka::fetch_advert::ask_layout(&mut conn, None).unwrap();
        l.advert.map(|a| (a.node_id, a.endpoint.addr()))
    })
}

fn fetch_payload(g: &Gateway) -> u64 {
    g.metric("kxgw_fetch_payload_bytes_total")
}

#[test]
fn kxgw_consume_discover_reads_every_partition_over_udp_from_its_leaders_sidecar() {
    let c = Cluster::start("cludp");
    for n in 0..3 {
        assert_eq!(
            advert_via(&c.net, &sidecar_addr(n)),
            Some((n, sidecar_fetch_addr(n))),
            "sidecar {n} advertises its own fetch endpoint, not its broker's"
        );
        assert_eq!(
            advert_via(&c.net, &broker_addr(n)),
            Some((n, broker_fetch_addr(n))),
            "a standalone gateway advertises its fetch endpoint too"
        );
    }
    let consume = |args: &[&str]| {
        run_client(
            &c.net,
            "kxgw consume --discover",
            c.net
                .client_command(KXGW)
                .args(["consume", "--discover", "--topic", TOPIC])
                .args(args),
        )
    };
    // Bootstrapped at one sidecar: every partition byte-exact, each from its leader's sidecar
    // (another broker's copy holds a different record count).
    let out = consume(&[
        "--bootstrap",
        &sidecar_addr(1),
        "--format",
        "%p\t%o\t%k\t%s\n",
    ]);
    let mut by_part: BTreeMap<i32, String> = BTreeMap::new();
    for line in out.lines() {
        let (p, rest) = line
            .split_once('\t')
            .expect("partition\toffset\tkey\tvalue");
        let text = by_part.entry(p.parse().unwrap()).or_default();
        text.push_str(rest);
        text.push('\n');
    }
    for p in 0..PARTITIONS {
        let text = by_part.get(&p).map_or("", String::as_str);
        check_lines(&format!("consume --discover p{p}"), text, p, expected(p));
    }
    // Each sidecar's fetch endpoint sent its led partitions' bytes (a repair may resend a
    // little), the brokers' endpoints nothing, and no Kafka fetch was needed.
    for (n, s) in c.sidecars.iter().enumerate() {
        let led: u64 = (0..PARTITIONS)
            .filter(|p| p % 3 == n as i32)
            .map(|p| partition_bytes(&c.dirs[n], p))
            .sum();
        let sent = fetch_payload(s);
        assert!(
            sent >= led && sent <= led + led / 2,
            "sidecar {n}'s fetch endpoint sent {sent} payload bytes, its led partitions hold {led}\n{}",
            c.logs()
        );
        assert_eq!(sendfile_bytes(s), 0, "sidecar {n} served a Kafka fetch");
    }
    for (n, b) in c.brokers.iter().enumerate() {
        assert_eq!(fetch_payload(b), 0, "broker {n}'s fetch endpoint was used");
    }
    // --verify (CRC, offsets, demo content) with a bootstrap list whose first entry is down.
    let total: u64 = (0..PARTITIONS).map(expected).sum();
    let boot = format!("{GW_ADDR}:9199,{}", sidecar_addr(2));
    let out = consume(&["--bootstrap", &boot, "--verify"]);
    let summary = out
        .lines()
        .find(|l| l.starts_with("verified "))
        .unwrap_or_default();
    assert!(
        summary.starts_with(&format!("verified {total} records")) && summary.ends_with("errors: 0"),
        "{out}"
    );
    for n in 0..3 {
        let parts = format!("[{}, {}]", n, n + 3);
        assert!(
            summary.contains(&format!("node {n} {} {parts}", sidecar_fetch_addr(n))),
            "partitions {parts} from sidecar {n}: {summary}"
        );
    }
    // --partitions: only those.
    let out = consume(&[
        "--bootstrap",
        &sidecar_addr(0),
        "--partitions",
        "1,5",
        "--verify",
    ]);
    let want = expected(1) + expected(5);
    assert!(out.contains(&format!("verified {want} records")), "{out}");
}

/// A sidecar's `kxgw_kafka_auth_total{outcome=...}`.
fn auth_count(g: &Gateway, outcome: &str) -> u64 {
    g.metrics()
        .lines()
        .find(|l| l.starts_with(&format!("kxgw_kafka_auth_total{{outcome=\"{outcome}\"}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// alice's fetch ticket for `topic`, asked for at the SASL listener `addr` (a sidecar:
/// the login is relayed to the cluster). Err: refused, with the reason.
fn alice_ticket(net: &TestNet, addr: &str, topic: &'static str) -> Result<Vec<u8>, String> {
    use kxgw::kafka::auth::client::Credentials;
    use kxgw::kafka::auth::scram::ScramHash;
    use kxgw::kafka::auth::Mechanism;
    let addr = addr.to_string();
    in_client_ns(net, move || {
        let creds = Credentials {
            mechanism: Mechanism::Scram(ScramHash::Sha256),
            user: "alice".into(),
            password: ALICE.into(),
        };
        let issued = kxgw::kafka::ticket_client::request_ticket(
            &addr,
            Some(&creds),
            &[topic],
            Duration::from_secs(10),
        )
        .map_err(|e| format!("{e:#}"))?;
        Ok(issued.expect("the sidecar requires fetch tickets").ticket)
    })
}

/// One raw FETCH (protocol v3, partition 0 of `topic` from offset 0, with `ticket`) per case
/// at the fetch endpoint `to`, after a probe for the address-validation token: for each, the
/// request's size and every datagram answered until 300 ms pass without one.
fn raw_fetches(
    net: &TestNet,
    to: String,
    cases: Vec<(&'static str, Vec<u8>)>,
) -> Vec<(usize, Vec<Vec<u8>>)> {
    use kxgw::fetch::wire;
    in_client_ns(net, move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.connect(&to).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let exchange = |d: Vec<u8>| {
            sock.send(&d).unwrap();
            let (mut got, mut buf) = (Vec::new(), vec![0u8; 65536]);
            while let Ok(n) = sock.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
            (d.len(), got)
        };
        let req = |id: u32, token: &[u8], ticket: &[u8], topic: &str, pad: usize| {
            common::raw_fetch(wire::VERSION_3, id, token, ticket, topic, pad)
        };
        let (_, got) = exchange(req(0, &[], &[], "", wire::MIN_INITIAL_LEN));
        let token = wire::Retry::decode(got.first().expect("a RETRY to the probe"))
            .expect("RETRY")
            .token;
        cases
            .iter()
            .zip(1..)
            .map(|((topic, ticket), id)| exchange(req(id, &token, ticket, topic, 0)))
            .collect()
    })
}

/// The sidecar's `kxgw_fetch_ticket_rejected_total{cause}` once it reaches `want` (the
/// counters are published periodically), or what it is after 10 s.
fn ticket_rejects(g: &Gateway, cause: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let label = format!("cause=\"{cause}\"");
        let n = g
            .metrics()
            .lines()
            .filter(|l| {
                l.split([' ', '{']).next() == Some("kxgw_fetch_ticket_rejected_total")
                    && l.contains(&label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_topic_the_cluster_refuses_gets_no_fetch_ticket_and_its_udp_fetch_only_an_error() {
    use kxgw::fetch::wire::{DataHeader, ErrorCode, ErrorMsg, SLOT_REQUEST};
    let c = Cluster::start_with(
        "cltk",
        &Layout {
            secured: true,
            ..Layout::default()
        },
    );
    let s0 = &c.sidecars[0];
    // No ticket for `secret`, which the brokers' ACL refuses alice: the sidecar asked the
    // cluster (on her relayed connection) before answering.
    let asked = auth_count(s0, "authz_asked");
    let err = alice_ticket(&c.net, &sidecar_addr(0), SECRET).unwrap_err();
    assert!(
        err.contains("refused a fetch ticket") && err.contains("(error 29)"),
        "{err}\n{}",
        c.logs()
    );
    assert!(
        auth_count(s0, "authz_asked") > asked,
        "the cluster was asked"
    );
    // Nor over TCP.
    assert_eq!(fetch_as_alice(&c.net, &sidecar_addr(0), SECRET, 0), Ok(29));
    // `orders`, which it allows her: a ticket, which serves orders and nothing else.
    let ticket = alice_ticket(&c.net, &sidecar_addr(0), TOPIC).expect("a ticket for orders");
    let got = raw_fetches(
        &c.net,
        sidecar_fetch_addr(0),
        vec![
            (TOPIC, ticket.clone()),
            (SECRET, Vec::new()),
            (SECRET, ticket),
        ],
    );
    assert!(
        got[0].1.iter().any(|d| DataHeader::decode(d).is_ok()),
        "orders with its ticket is served: {} datagrams",
        got[0].1.len()
    );
    for ((sent, answers), (what, want)) in got[1..].iter().zip([
        ("secret without a ticket", ErrorCode::Unauthenticated),
        (
            "secret with the ticket for orders",
            ErrorCode::TopicAuthorizationFailed,
        ),
    ]) {
        assert_eq!(answers.len(), 1, "{what}: exactly one datagram back");
        assert!(
            answers[0].len() <= *sent,
            "{what}: no larger than the request"
        );
        let e = ErrorMsg::decode(&answers[0]).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((e.code, e.slot), (want, SLOT_REQUEST), "{what}");
    }
    assert_eq!(ticket_rejects(s0, "missing", 1), 1);
    assert_eq!(ticket_rejects(s0, "out_of_scope", 1), 1);
    // `kxgw consume` with alice's credentials: orders byte-exact over UDP, secret refused.
    let pw = c._work.path().join("alice.pw");
    std::fs::write(&pw, format!("{ALICE}\n")).unwrap();
    let (fetch, listener) = (sidecar_fetch_addr(0), sidecar_addr(0));
    let creds = [
        "--ticket-from",
        listener.as_str(),
        "--sasl-user",
        "alice",
        "--sasl-password-file",
        pw.to_str().unwrap(),
    ];
    let count = expected(0).to_string();
    let mut args = vec!["--partition", "0", "--from-beginning", "--verify"];
    args.extend(["--count", count.as_str()]);
    args.extend(creds);
    let out = common::consume_fetch(&c.net, &fetch, TOPIC, &args);
    assert!(out.status.success(), "consume orders with a ticket");
    let (n, end, _) = common::verified_summary(&out);
    assert_eq!((n, end), (expected(0), expected(0) as i64));
    let mut args = vec!["--from-beginning", "--count", "1"];
    args.extend(creds);
    let out = common::consume_fetch(&c.net, &fetch, SECRET, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && text.contains("refused a fetch ticket"),
        "consume secret: {text}"
    );
}

#[test]
fn a_revoked_acl_stops_udp_fetches_within_the_cache_time_and_one_ticket_lifetime() {
    use kxgw::fetch::wire::{DataHeader, ErrorCode, ErrorMsg, SLOT_REQUEST};
    let mut c = Cluster::start_with(
        "clrv",
        &Layout {
            secured: true,
            ..Layout::default()
        },
    );
    let served =
        |got: &[(usize, Vec<Vec<u8>>)]| got[0].1.iter().any(|d| DataHeader::decode(d).is_ok());
    // Cluster mode: the ticket lifetime (600 s by default) is capped at --authz-cache-ms.
    let log = c.sidecars[0].log();
    assert!(
        log.contains(&format!("fetch tickets valid {AUTHZ_TTL:?}"))
            && log.contains("capped at --authz-cache-ms"),
        "the startup line says which lifetime is in force and why:\n{log}"
    );
    let ticket = alice_ticket(&c.net, &sidecar_addr(0), TOPIC).expect("a ticket for orders");
    let got = raw_fetches(&c.net, sidecar_fetch_addr(0), vec![(TOPIC, ticket.clone())]);
    assert!(
        served(&got),
        "orders with its ticket is served\n{}",
        c.logs()
    );
    let s0 = &c.sidecars[0];
    let (expired, denied) = (
        ticket_rejects(s0, "expired", 0),
        auth_count(s0, "denied_topic"),
    );
    let revoked = revoke_alice(&mut c);
    // Renewing as a consumer does: tickets keep coming while the sidecar trusts the
    // cluster's earlier answer, then the cluster is asked again and refuses.
    let mut last = ticket;
    let refused_after = loop {
        match alice_ticket(&c.net, &sidecar_addr(0), TOPIC) {
            Ok(t) => last = t,
            Err(e) => {
                assert!(
                    e.contains("refused a fetch ticket") && e.contains("(error 29)"),
                    "a renewal after the revocation: {e}"
                );
                break revoked.elapsed();
            }
        }
        assert!(
            revoked.elapsed() < AUTHZ_TTL + Duration::from_secs(3),
            "still issued {:?} after the revocation\n{}",
            revoked.elapsed(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The last ticket issued serves until its lifetime (the cache time) is over, then gets
    // one ERROR no larger than the request.
    let s0 = &c.sidecars[0];
    let stopped_after = loop {
        let got = raw_fetches(&c.net, sidecar_fetch_addr(0), vec![(TOPIC, last.clone())]);
        let (sent, answers) = &got[0];
        if !served(&got) {
            assert_eq!(answers.len(), 1, "exactly one datagram back");
            assert!(answers[0].len() <= *sent, "no larger than the request");
            let e = ErrorMsg::decode(&answers[0]).expect("an ERROR");
            assert_eq!((e.code, e.slot), (ErrorCode::Unauthenticated, SLOT_REQUEST));
            break revoked.elapsed();
        }
        assert!(
            revoked.elapsed() < AUTHZ_TTL * 2 + Duration::from_secs(3),
            "UDP still served {:?} after the revocation\n{}",
            revoked.elapsed(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "revoked: renewal refused after {refused_after:?}, UDP stopped after {stopped_after:?} \
         (authz cache and ticket lifetime {AUTHZ_TTL:?})"
    );
    assert!(
        ticket_rejects(s0, "expired", expired + 1) > expired,
        "expired counted"
    );
    assert!(
        auth_count(s0, "denied_topic") > denied,
        "the refused renewal counted"
    );
}
