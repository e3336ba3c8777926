//! Consumer groups end to end: `kxgw serve --kafka-listen` as the group coordinator in the
//! gateway namespace, groups of stock clients (kcat -G, confluent-kafka, kafka-python, kafkajs)
//! in the consumer namespace, a 4-partition topic of 200,000 records written by `kxgw produce`.
//! Each member prints "PARTITION<TAB>OFFSET" per record; the test checks the union.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Gateway, KXGW};
use kxgw_testkit::testnet::{KillOnDrop, TestNet};

const PY_GROUP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/group_consume.py");
const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
const TOPIC: &str = "events";
const PARTITIONS: i32 = 4;
const PER_PARTITION: u64 = 50_000;
const TOTAL: usize = (PARTITIONS as u64 * PER_PARTITION) as usize;

/// The groups of different tests would compete for the two cores and make session timeouts
/// fire spuriously: one group test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug)]
enum Client {
    Kcat,
    Confluent,
    KafkaPython,
    Kafkajs,
}

fn require(cmd: &str, what: &str) {
    let ok = Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{what} is needed by this test (scripts/install-deps.sh installs it)"
    );
}

fn require_client(c: Client) {
    match c {
        Client::Kcat => require("command -v kcat", "kcat"),
        Client::Confluent => require("python3 -c 'import confluent_kafka'", "confluent-kafka"),
        Client::KafkaPython => require("python3 -c 'import kafka'", "kafka-python"),
        Client::Kafkajs => require(
            &format!("command -v node && test -d {JS_DIR}/node_modules/kafkajs"),
            "node and cli/tests/js/node_modules/kafkajs (npm ci)",
        ),
    }
}

struct Member {
    child: KillOnDrop,
    out: PathBuf,
    err: PathBuf,
}

impl Member {
    fn start(
        net: &TestNet,
        client: Client,
        gw: &Gateway,
        group: &str,
        work: &Path,
        extra: &[&str],
    ) -> Member {
        let n = std::fs::read_dir(work).map(|d| d.count()).unwrap_or(0);
        let out = work.join(format!("member-{n}.out"));
        let err = work.join(format!("member-{n}.err"));
        let addr = gw.addr.to_string();
        let mut cmd = match client {
            Client::Kcat => {
                let mut c = net.client_command("kcat");
                c.args(["-u", "-b", &addr, "-G", group, TOPIC, "-f", "%p\t%o\n"])
                    .args(["-X", "auto.offset.reset=earliest"])
                    .args(["-X", "session.timeout.ms=6000"])
                    .args(["-X", "heartbeat.interval.ms=1000"])
                    .args(["-X", "auto.commit.interval.ms=1000"]);
                c
            }
            Client::Confluent | Client::KafkaPython => {
                let name = if matches!(client, Client::Confluent) {
                    "confluent"
                } else {
                    "kafka-python"
                };
                let mut c = net.client_command("python3");
                c.args([PY_GROUP, name, &addr, group, TOPIC]).args(extra);
                c
            }
            Client::Kafkajs => {
                let mut c = net.client_command("node");
                c.arg(format!("{JS_DIR}/group_consume.js"))
                    .args([&addr, group, TOPIC]);
                c
            }
        };
        let child = cmd
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {client:?}: {e}"));
        Member {
            child: KillOnDrop(child),
            out,
            err,
        }
    }

    /// (partition, offset) of every record printed so far.
    fn records(&self) -> Vec<(i32, i64)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (p, o) = l.split_once('\t')?;
                Some((p.parse().ok()?, o.parse().ok()?))
            })
            .collect()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM and wait (the clients commit and leave the group on the way out).
    fn stop(&mut self) {
        let _ = self.child.terminate(Duration::from_secs(20));
    }

    fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}

/// How many times each (partition, offset) was received, over `members`.
fn tally(members: &[&Member]) -> HashMap<(i32, i64), u32> {
    let mut seen = HashMap::new();
    for m in members {
        for r in m.records() {
            *seen.entry(r).or_insert(0) += 1;
        }
    }
    seen
}

/// Waits until the members together received `want` distinct records (or `timeout`).
fn wait_distinct(members: &[&Member], want: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = tally(members).len();
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn every_record(seen: &HashMap<(i32, i64), u32>) -> Vec<(i32, i64)> {
    let mut missing = Vec::new();
    for p in 0..PARTITIONS {
        for o in 0..PER_PARTITION as i64 {
            if !seen.contains_key(&(p, o)) {
                missing.push((p, o));
            }
        }
    }
    missing
}

fn setup(tag: &str) -> (TestNet, tempfile::TempDir, PathBuf, PathBuf) {
    let (net, work, dir) = common::test_setup(tag);
    common::produce(
        &dir,
        TOPIC,
        PER_PARTITION,
        &[
            "--partitions",
            &PARTITIONS.to_string(),
            "--record-size",
            "100",
        ],
    );
    let state = work.path().join("state");
    (net, work, dir, state)
}

fn start_gateway(net: &TestNet, dir: &Path, work: &Path, state: &Path) -> Gateway {
    let state = state.to_string_lossy().into_owned();
    Gateway::start_with(net, dir, work, &["--state-dir", &state])
}

fn describe(members: &[&Member]) -> String {
    members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let out = m.output();
            let assigned: Vec<&str> = out.lines().filter(|l| l.starts_with("assigned")).collect();
            format!(
                "member {i}: {} records, {assigned:?}\nstderr: {}",
                m.records().len(),
                m.stderr()
                    .lines()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Three members of one client: together every record exactly once.
fn three_members_exactly_once(client: Client, tag: &str) {
    require_client(client);
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (net, work, dir, state) = setup(tag);
    let gw = start_gateway(&net, &dir, work.path(), &state);
    let t0 = Instant::now();
    let mut members: Vec<Member> = (0..3)
        .map(|_| Member::start(&net, client, &gw, "g1", work.path(), &[]))
        .collect();
    let refs: Vec<&Member> = members.iter().collect();
    let got = wait_distinct(&refs, TOTAL, Duration::from_secs(180));
    let elapsed = t0.elapsed();
    // Let a late duplicate (there must be none) show up before counting.
    std::thread::sleep(Duration::from_secs(2));
    for m in &mut members {
        m.stop();
    }
    let refs: Vec<&Member> = members.iter().collect();
    let seen = tally(&refs);
    let report = describe(&refs);
    assert_eq!(
        got,
        TOTAL,
        "{client:?}: distinct records\n{report}\n{}",
        gw.log()
    );
    assert!(
        every_record(&seen).is_empty(),
        "{client:?}: records missing"
    );
    let dups = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(dups, 0, "{client:?}: records received twice\n{report}");
    let counts: Vec<usize> = refs.iter().map(|m| m.records().len()).collect();
    assert!(
        counts.iter().all(|&c| c > 0),
        "{client:?}: every member gets partitions: {counts:?}\n{report}"
    );
    assert_eq!(counts.iter().sum::<usize>(), TOTAL);
    let groups = gw.metric("kxgw_group_count");
    assert_eq!(groups, 1);
    eprintln!(
        "{client:?}: 3 members received {counts:?} = {TOTAL} records exactly once in {:.1} s",
        elapsed.as_secs_f64()
    );
    gw.stop();
}

#[test]
fn kcat_group_of_three_receives_every_record_exactly_once() {
    three_members_exactly_once(Client::Kcat, "gkcat");
}

#[test]
fn confluent_kafka_group_of_three_receives_every_record_exactly_once() {
    three_members_exactly_once(Client::Confluent, "gconf");
}

#[test]
fn kafka_python_group_of_three_receives_every_record_exactly_once() {
    three_members_exactly_once(Client::KafkaPython, "gkpy");
}

#[test]
fn kafkajs_group_of_three_receives_every_record_exactly_once() {
    three_members_exactly_once(Client::Kafkajs, "gkjs");
}

#[test]
fn a_killed_member_is_expelled_and_its_partitions_reassigned() {
    let client = Client::Confluent;
    require_client(client);
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (net, work, dir, state) = setup("gkill");
    let gw = start_gateway(&net, &dir, work.path(), &state);
    // ~2,000 records/s per member: the group is mid-way when one member dies.
    let paced = ["--pace", "2000"];
    let mut members: Vec<Member> = (0..3)
        .map(|_| Member::start(&net, client, &gw, "gk", work.path(), &paced))
        .collect();
    let refs: Vec<&Member> = members.iter().collect();
    let before = wait_distinct(&refs, TOTAL / 4, Duration::from_secs(120));
    assert!(
        before >= TOTAL / 4,
        "group never got going\n{}",
        describe(&refs)
    );
    let killed_at = Instant::now();
    members[0].kill();
    let lost: Vec<i32> = {
        let out = members[0].output();
        let last = out
            .lines()
            .rfind(|l| l.starts_with("assigned "))
            .unwrap_or("");
        last.trim_start_matches("assigned ")
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    assert!(!lost.is_empty(), "the killed member had partitions");
    let refs: Vec<&Member> = members.iter().collect();
    let got = wait_distinct(&refs, TOTAL, Duration::from_secs(180));
    let took = killed_at.elapsed();
    for m in &mut members[1..] {
        m.stop();
    }
    let refs: Vec<&Member> = members.iter().collect();
    let report = describe(&refs);
    assert_eq!(
        got,
        TOTAL,
        "every record after the kill\n{report}\n{}",
        gw.log()
    );
    // The survivors took over the dead member's partitions.
    for p in &lost {
        let taken = members[1..].iter().any(|m| {
            m.output()
                .lines()
                .filter(|l| l.starts_with("assigned "))
                .skip(1)
                .any(|l| {
                    l.trim_start_matches("assigned ")
                        .split(',')
                        .any(|x| x == p.to_string())
                })
        });
        assert!(taken, "partition {p} reassigned\n{report}");
    }
    let log = gw.log();
    assert!(log.contains("expired (no heartbeat)"), "{log}");
    let seen = tally(&refs);
    let dups = seen.values().filter(|&&n| n > 1).count();
    eprintln!(
        "member with partitions {lost:?} SIGKILLed after {before} records; the group got all \
         {TOTAL} records {:.1} s later ({dups} received twice, from the last commit)",
        took.as_secs_f64()
    );
    gw.stop();
}

/// (partition → highest offset) of what a member received.
fn last_offsets(m: &Member) -> BTreeMap<i32, i64> {
    let mut last = BTreeMap::new();
    for (p, o) in m.records() {
        let e = last.entry(p).or_insert(o);
        *e = (*e).max(o);
    }
    last
}

#[test]
fn after_a_gateway_sigkill_a_rejoining_consumer_resumes_from_committed_offsets() {
    let client = Client::KafkaPython;
    require_client(client);
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (net, work, dir, state) = setup("grst");
    let mut gw = start_gateway(&net, &dir, work.path(), &state);
    const FIRST: usize = 60_000;
    let mut first = Member::start(
        &net,
        client,
        &gw,
        "resume",
        work.path(),
        &["--max", &FIRST.to_string()],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !first.exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        first.output().contains(&format!("committed {FIRST}")),
        "first consumer: {}\n{}",
        first.output().lines().last().unwrap_or_default(),
        first.stderr()
    );
    let committed = last_offsets(&first);
    // SIGKILL: no shutdown path runs; only what reached the state dir survives.
    gw.child.0.kill().unwrap();
    gw.child.0.wait().unwrap();
    let gw = start_gateway(&net, &dir, work.path(), &state);
    let log = gw.log();
    assert!(
        log.contains("committed offsets of 1 groups reloaded"),
        "{log}"
    );
    let mut second = Member::start(&net, client, &gw, "resume", work.path(), &[]);
    let got = wait_distinct(&[&first, &second], TOTAL, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    second.stop();
    assert_eq!(got, TOTAL, "{}\n{}", second.stderr(), gw.log());
    // The second consumer starts where the first one's commit left each partition.
    let mut firsts: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o) in second.records() {
        firsts.entry(p).or_insert(o);
    }
    for (p, start) in &firsts {
        let want = committed.get(p).map_or(0, |o| o + 1);
        assert_eq!(
            *start, want,
            "partition {p} resumes from its committed offset"
        );
    }
    let seen = tally(&[&first, &second]);
    assert!(every_record(&seen).is_empty());
    assert_eq!(
        seen.values().filter(|&&n| n > 1).count(),
        0,
        "nothing twice"
    );
    eprintln!(
        "first consumer committed {FIRST} records {committed:?}; after SIGKILL + restart the \
         second received {} (resumed at {firsts:?})",
        second.records().len()
    );
    gw.stop();
}

/// Sum of a group's lag over its partitions, from `kxgw stats --raw`.
fn group_lag(gw: &Gateway, group: &str) -> Option<u64> {
    let text = gw.metrics();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("kxgw_group_lag{") && l.contains(&format!("group=\"{group}\"")))
        .collect();
    if lines.len() != PARTITIONS as usize {
        return None;
    }
    Some(
        lines
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

#[test]
fn two_groups_progress_independently_and_stats_show_their_lag() {
    let client = Client::Confluent;
    require_client(client);
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (net, work, dir, state) = setup("g2grp");
    let gw = start_gateway(&net, &dir, work.path(), &state);
    const PART: usize = 80_000;
    let mut a = Member::start(&net, client, &gw, "ga", work.path(), &["--max", "80000"]);
    let mut b = Member::start(&net, client, &gw, "gb", work.path(), &[]);
    let got_b = wait_distinct(&[&b], TOTAL, Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !a.exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    b.stop();
    assert_eq!(got_b, TOTAL, "group gb reads everything: {}", b.stderr());
    let out_a = a.output();
    assert!(
        out_a.contains("committed 80000"),
        "group ga: exited {} after {} records, last line {:?}\nstderr: {}\n{}",
        a.exited(),
        tally(&[&a]).len(),
        out_a.lines().last(),
        a.stderr(),
        gw.log()
    );
    assert_eq!(tally(&[&a]).len(), PART);
    let lag_a = group_lag(&gw, "ga");
    let lag_b = group_lag(&gw, "gb");
    assert_eq!(lag_a, Some((TOTAL - PART) as u64), "{}", gw.metrics());
    assert_eq!(lag_b, Some(0), "{}", gw.metrics());
    // The summary view lists both groups too.
    let out = Command::new(KXGW)
        .args(["stats", "--socket"])
        .arg(&gw.ctl)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[group]"), "{text}");
    assert!(
        text.contains("group=ga") && text.contains("group=gb"),
        "{text}"
    );
    eprintln!("group ga lag {lag_a:?} after 80000 records, group gb lag {lag_b:?}\n{text}");
    gw.stop();
}

/// `kxgw consume --group` (records over the AF_XDP fetch path) and a confluent-kafka member
/// (Kafka TCP) in one group.
#[test]
fn a_kxgw_udp_member_and_a_confluent_member_split_the_partitions() {
    require_client(Client::Confluent);
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (net, work, dir, state) = setup("gmix");
    let fetch = format!("{}:9093", kxgw_testkit::testnet::GW_ADDR);
    let state_arg = state.to_string_lossy().into_owned();
    let gw = Gateway::start_with(
        &net,
        &dir,
        work.path(),
        &[
            "--state-dir",
            &state_arg,
            "--fetch-listen",
            &fetch,
            "--xdp-iface",
            &net.gw_if,
        ],
    );
    let out = work.path().join("kxgw-member.out");
    let err = work.path().join("kxgw-member.err");
    let child = net
        .client_command(KXGW)
        .args(["consume", "--group", "gm", "--topic", TOPIC, "--follow"])
        .args(["--fetch", &fetch, "--bootstrap", &gw.addr.to_string()])
        .args(["--format", "%p\\t%o\\n"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawning kxgw consume --group");
    let mut udp = Member {
        child: KillOnDrop(child),
        out,
        err,
    };
    let mut tcp = Member::start(&net, Client::Confluent, &gw, "gm", work.path(), &[]);
    let got = wait_distinct(&[&udp, &tcp], TOTAL, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    udp.stop();
    tcp.stop();
    let report = describe(&[&udp, &tcp]);
    assert_eq!(got, TOTAL, "distinct records\n{report}\n{}", gw.log());
    let seen = tally(&[&udp, &tcp]);
    assert!(every_record(&seen).is_empty(), "records missing");
    let dups = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(dups, 0, "records received twice\n{report}");
    let parts = |m: &Member| -> std::collections::BTreeSet<i32> {
        m.records().into_iter().map(|(p, _)| p).collect()
    };
    let (pu, pt) = (parts(&udp), parts(&tcp));
    assert!(
        !pu.is_empty() && !pt.is_empty(),
        "both members get partitions: kxgw {pu:?}, confluent {pt:?}\n{report}"
    );
    let udp_err = udp.stderr();
    assert!(udp_err.contains("group gm generation"), "{udp_err}");
    // The kxgw member left on SIGTERM after committing: the group's lag is zero.
    assert_eq!(group_lag(&gw, "gm"), Some(0), "{}", gw.metrics());
    eprintln!(
        "group gm: kxgw consume --group read partitions {pu:?} ({} records) over UDP/AF_XDP, \
         confluent-kafka {pt:?} ({} records) over TCP, every record once",
        udp.records().len(),
        tcp.records().len()
    );
    gw.stop();
}

/// The partitions a cooperative member holds after its "assigned +P" / "revoked -P" lines.
fn held(m: &Member) -> std::collections::BTreeSet<i32> {
    let mut held = std::collections::BTreeSet::new();
    for l in m.output().lines() {
        let (add, list) = if let Some(r) = l.strip_prefix("assigned +") {
            (true, r)
        } else if let Some(r) = l.strip_prefix("revoked -") {
            (false, r)
        } else {
            continue;
        };
        for p in list.split(',').filter_map(|p| p.parse::<i32>().ok()) {
            if add {
                held.insert(p);
            } else {
                held.remove(&p);
            }
        }
    }
    held
}

/// Waits until `members` together hold every partition, each once, and each member some (a
/// finished rebalance).
fn wait_held_by(members: &[&Member], timeout: Duration) -> Vec<std::collections::BTreeSet<i32>> {
    let deadline = Instant::now() + timeout;
    loop {
        let sets: Vec<_> = members.iter().map(|m| held(m)).collect();
        let total: usize = sets.iter().map(|s| s.len()).sum();
        let union: std::collections::BTreeSet<i32> = sets.iter().flatten().copied().collect();
        let done = total == PARTITIONS as usize
            && union.len() == total
            && sets.iter().all(|s| !s.is_empty());
        if done || Instant::now() > deadline {
            return sets;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn cooperative_sticky_members_rebalance_incrementally_as_members_come_and_go() {
    let client = Client::Confluent;
    require_client(client);
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (net, work, dir, state) = setup("gcoop");
    let gw = start_gateway(&net, &dir, work.path(), &state);
    // Paced (~1,500 records/s each) so that the group is mid-way through every change.
    let opts = ["--strategy", "cooperative-sticky", "--pace", "1500"];
    let mut members: Vec<Member> = (0..2)
        .map(|_| Member::start(&net, client, &gw, "gc", work.path(), &opts))
        .collect();
    let two = wait_held_by(&[&members[0], &members[1]], Duration::from_secs(60));
    let refs: Vec<&Member> = members.iter().collect();
    assert!(
        two.iter().all(|s| s.len() == 2),
        "two members hold two partitions each: {two:?}\n{}",
        describe(&refs)
    );
    wait_distinct(&refs, TOTAL / 10, Duration::from_secs(60));
    members.push(Member::start(&net, client, &gw, "gc", work.path(), &opts));
    let three = wait_held_by(&members.iter().collect::<Vec<_>>(), Duration::from_secs(60));
    let refs: Vec<&Member> = members.iter().collect();
    assert!(
        three.iter().all(|s| !s.is_empty()) && three.iter().map(|s| s.len()).sum::<usize>() == 4,
        "the third member got a partition: {three:?}\n{}",
        describe(&refs)
    );
    // Incremental: the first two kept what they still hold (they never revoked it).
    for (i, s) in three[..2].iter().enumerate() {
        assert!(
            s.is_subset(&two[i]),
            "member {i} kept its partitions: {two:?} → {three:?}"
        );
    }
    let seen_before = tally(&refs).len();
    members[0].stop();
    let after = wait_held_by(&[&members[1], &members[2]], Duration::from_secs(60));
    let refs: Vec<&Member> = members.iter().collect();
    assert_eq!(
        after.iter().map(|s| s.len()).sum::<usize>(),
        4,
        "the leaver's partitions moved to the others: {after:?}\n{}",
        describe(&refs)
    );
    for (i, s) in after.iter().enumerate() {
        assert!(
            three[i + 1].is_subset(s),
            "member {} kept its partitions",
            i + 1
        );
    }
    let got = wait_distinct(&refs, TOTAL, Duration::from_secs(240));
    std::thread::sleep(Duration::from_secs(2));
    for m in &mut members[1..] {
        m.stop();
    }
    let refs: Vec<&Member> = members.iter().collect();
    let report = describe(&refs);
    assert_eq!(got, TOTAL, "every record\n{report}\n{}", gw.log());
    let log = gw.log();
    assert!(
        log.contains("protocol Some(\"cooperative-sticky\")"),
        "the group ran cooperative-sticky\n{log}"
    );
    let seen = tally(&refs);
    let dups = seen.values().filter(|&&n| n > 1).count();
    eprintln!(
        "cooperative-sticky: {two:?} → third joins {three:?} → first leaves {after:?}; \
         {seen_before} records before the leave, all {TOTAL} received ({dups} twice), \
         {} rebalances",
        gw.metric("kxgw_group_rebalances_total")
    );
    gw.stop();
}
