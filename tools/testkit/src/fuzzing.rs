//! Fuzz entry points: one function per untrusted-input surface, each taking arbitrary bytes and
//! required never to panic, hang or allocate without bound. The cargo-fuzz targets under
//! `fuzz/` call them, and `cli/tests/fuzz_corpus.rs` replays the committed corpus and every
//! crash file through them on stable Rust, so each crash found stays a regression test.
//!
//! - [`kafka_request`]: a byte stream from a Kafka client, through the listener's session
//!   (framing, request header, body decode, handlers, response encoding) over a real log.
//! - [`log_batch`]: record batch parsing (`batch::verify`, `batch::iter`,
//!   `record::decode_batch`), with the CRC optionally repaired so mutations reach the records.
//! - [`log_segment`]: a partition directory of fuzzed `.log`, `.index`, `.timeindex` files
//!   and checkpoint files, opened and read through [`LogDir`].
//! - [`fetch_datagrams`]: datagrams of the UDP fetch protocol, through every wire decoder,
//!   a gateway core (with the address-validation token repaired so requests get past it)
//!   and a consumer core, over the same real log as [`kafka_request`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kxgw::kafka::apis::{Ctx, NodeInfo};
use kxgw::kafka::session::{chunks_to_vec, Session};
use kxgw::kafka::stats::Stats;
use kxgw::log::batch::{self, CRC_OFFSET};
use kxgw::log::writer::{NewRecord, PartitionWriter, WriterConfig};
use kxgw::log::{record, LogDir};

/// Largest request the fuzzed session accepts (the listener's default is 100 MiB; a small
/// limit keeps the fuzzer's memory bounded while exercising the same checks).
const FUZZ_MAX_REQUEST: usize = 1 << 20;

/// A scratch directory on tmpfs when there is one (fuzzing writes files on every input).
fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

struct KafkaFixture {
    log: Arc<LogDir>,
    node: NodeInfo,
    /// The same gateway in cluster mode (nothing known of the cluster).
    cluster_node: NodeInfo,
    stats: Stats,
    security: kxgw::kafka::auth::Security,
    _dir: ScratchDir,
}

/// Removes its directory on drop (the fixture is static, so in practice at process exit
/// only when it is not; the corpus test builds its own per run).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = scratch_root().join(format!("kxgw-fuzz-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The static fixture of a process is never dropped: remove those of processes gone.
fn remove_stale_fixtures() {
    let Ok(rd) = std::fs::read_dir(scratch_root()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("kxgw-fuzz-")) else {
            continue;
        };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A log with two partitions of topic `t` (a few batches, two segments in partition 0) and
/// an empty topic `e`, so fetches, offsets and metadata requests reach real data.
fn kafka_fixture() -> &'static KafkaFixture {
    static F: OnceLock<KafkaFixture> = OnceLock::new();
    F.get_or_init(|| {
        remove_stale_fixtures();
        let dir = ScratchDir::new("kafka").expect("fuzz fixture: scratch dir");
        let cfg = WriterConfig {
            segment_bytes: 600,
            index_interval_bytes: 64,
            ..WriterConfig::default()
        };
        for (topic, part, batches) in [("t", 0, 8), ("t", 1, 2), ("e", 0, 0)] {
            let mut w = PartitionWriter::open(&dir.0, topic, part, cfg.clone())
                .expect("fuzz fixture: writer");
            for b in 0..batches {
                let recs: Vec<NewRecord> = (0..3)
                    .map(|i| NewRecord {
                        timestamp: 1_700_000_000_000 + b * 10 + i,
                        key: Some(b"k"),
                        value: Some(b"value-bytes"),
                        headers: vec![("h", Some(b"v"))],
                    })
                    .collect();
                w.append(&recs).expect("fuzz fixture: append");
            }
            w.flush().expect("fuzz fixture: flush");
        }
        let log = LogDir::open(&dir.0, None).expect("fuzz fixture: open");
        KafkaFixture {
            log,
            node: NodeInfo::gateway("198.18.0.1", 9092),
            cluster_node: NodeInfo {
                cluster: Some(Arc::new(kxgw::kafka::upstream::ClusterView::new(
                    kxgw::kafka::upstream::ClusterConfig {
                        upstream: vec!["198.18.0.2:9092".into()],
                        node_id: 0,
                        peers: Vec::new(),
                    },
                ))),
                ..NodeInfo::gateway("198.18.0.1", 9092)
            },
            stats: Stats::default(),
            security: fuzz_security(),
            _dir: dir,
        }
    })
}

/// A SASL listener's security with user alice (password "pw") and an ACL allowing her
/// topic t and group g: the second pass of [`kafka_request`].
fn fuzz_security() -> kxgw::kafka::auth::Security {
    use kxgw::kafka::auth::{users::UserEntry, Acl, SaslConfig, Security, Users};
    let mut users = Users::default();
    users
        .users
        .insert("alice".into(), UserEntry::new("pw", 4096));
    let acl =
        Acl::parse("[[allow]]\nprincipal = \"User:alice\"\ntopics = [\"t\"]\ngroups = [\"g\"]\n")
            .expect("fuzz fixture: acl");
    Security {
        sasl: Some(Arc::new(SaslConfig::new(users))),
        acl: Some(Arc::new(acl)),
        relay: None,
        tls: None,
        // FetchTicket requests (extension api key 0x4B58) are answered too.
        tickets: Some(Arc::new(kxgw::fetch::ticket::TicketKeys::new(
            Instant::now(),
            Duration::from_secs(60),
            Duration::from_secs(600),
        ))),
    }
}

/// Feeds `data` as the byte stream of one Kafka connection: the session frames it, decodes
/// and answers every request (a waiting fetch is also expired), and every response is
/// materialised, as the listener would send it. Errors are expected (the listener closes the
/// connection); panics, hangs and huge allocations are the bugs.
pub fn kafka_request(data: &[u8]) {
    let f = kafka_fixture();
    kafka_session(data, &f.node, None);
    // Again on a SASL listener with an ACL: the exchange, and refusals before and after it.
    kafka_session(data, &f.node, Some(&f.security));
    // And on a cluster-mode SASL listener relaying the exchange (the gate, the relayed
    // requests' decoding; the upstream never answers).
    let relay = kxgw::kafka::auth::Security {
        relay: Some(Arc::new(kxgw::kafka::authority::RelayConfig::new(
            Duration::from_secs(5),
        ))),
        ..Default::default()
    };
    kafka_session(data, &f.cluster_node, Some(&relay));
}

fn kafka_session(data: &[u8], node: &NodeInfo, security: Option<&kxgw::kafka::auth::Security>) {
    let f = kafka_fixture();
    let ctx = Ctx {
        log: &f.log,
        node,
        stats: &f.stats,
        authz: &kxgw::kafka::auth::ALLOW_ALL,
    };
    let mut s = Session::new(FUZZ_MAX_REQUEST);
    if let Some(sec) = security {
        s.secure(sec, None);
    }
    let now = Instant::now();
    // Fed in two pieces so a request split across reads is covered too.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    for (i, piece) in [&data[..cut], &data[cut..]].into_iter().enumerate() {
        s.receive(piece);
        let t = now + Duration::from_secs(i as u64 * 3600);
        loop {
            if s.advance(&ctx, t).is_err() {
                return;
            }
            let chunks = s.out().take();
            // Stop when nothing more is answered (a parked fetch, or all input consumed).
            if chunks.is_empty() || chunks_to_vec(&chunks).is_err() {
                break;
            }
        }
    }
    // A fetch still waiting is answered at its deadline; a parked JoinGroup / SyncGroup when
    // the coordinator's timers have all run out.
    if s.is_parked() {
        let later = now + Duration::from_secs(365 * 24 * 3600);
        s.groups().lock().tick(later);
        let _ = s.advance(&ctx, later);
        let _ = chunks_to_vec(&s.out().take());
    }
}

/// Parses `data` as record batches. If the first byte is odd, the CRC of the first batch is
/// recomputed first, so the fuzzer reaches the header and record checks behind it.
pub fn log_batch(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if flags & 1 == 1 {
        fix_crc(&mut buf);
    }
    let _ = batch::BatchHeader::parse(&buf);
    let _ = batch::verify(&buf);
    let _ = record::decode_batch(&buf);
    let _ = record::decode_batch_refs(&buf);
    for (at, h) in batch::iter(&buf).take(10_000).map_while(Result::ok) {
        let _ = record::decode_batch(&buf[at..at + h.total_len()]);
    }
}

/// Rewrites the CRC field of the batch at the front of `buf` to match its bytes (when the
/// length field is plausible), so mutated batches are not all rejected by the CRC.
fn fix_crc(buf: &mut [u8]) {
    if buf.len() < batch::BATCH_HEADER_LEN {
        return;
    }
    let len = i32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    let end = (batch::LOG_OVERHEAD + len).min(buf.len());
    if end <= batch::ATTRIBUTES_OFFSET {
        return;
    }
    let crc = batch::compute_crc(&buf[..end]);
    buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Splits `data` into the files of one partition directory (`.log`, `.index`, `.timeindex`
/// of two segments, the two checkpoint files), writes them, opens the log dir and reads
/// every offset the partition reports plus a few outside it, and a few timestamps.
///
/// Layout: `data` is cut at every `\xff\xfe\xfd\xfc` marker; the pieces in order are
/// segment 0 `.log`, `.index`, `.timeindex`, segment (base from piece 3's first 8 bytes)
/// `.log`, `.index`, `.timeindex`, `replication-offset-checkpoint`,
/// `log-start-offset-checkpoint`. Missing pieces are missing files.
pub fn log_segment(data: &[u8]) {
    let Ok(dir) = ScratchDir::new("seg") else {
        return;
    };
    let pieces = split_pieces(data, 8);
    let part = dir.0.join("f-0");
    if std::fs::create_dir(&part).is_err() {
        return;
    }
    let second_base = pieces
        .get(3)
        .and_then(|p| p.get(..8))
        .map(|b| i64::from_be_bytes(b.try_into().unwrap_or([0; 8])) & 0xffff)
        .unwrap_or(1000);
    let files = [
        (part.join(kxgw::log::segment::file_stem(0) + ".log"), 0),
        (part.join(kxgw::log::segment::file_stem(0) + ".index"), 1),
        (
            part.join(kxgw::log::segment::file_stem(0) + ".timeindex"),
            2,
        ),
        (
            part.join(kxgw::log::segment::file_stem(second_base) + ".log"),
            3,
        ),
        (
            part.join(kxgw::log::segment::file_stem(second_base) + ".index"),
            4,
        ),
        (
            part.join(kxgw::log::segment::file_stem(second_base) + ".timeindex"),
            5,
        ),
        (dir.0.join("replication-offset-checkpoint"), 6),
        (dir.0.join("log-start-offset-checkpoint"), 7),
    ];
    for (path, i) in files {
        let Some(bytes) = pieces.get(i) else { continue };
        let bytes = if i == 3 {
            bytes.get(8..).unwrap_or(&[])
        } else {
            bytes
        };
        if std::fs::write(&path, bytes).is_err() {
            return;
        }
    }
    for iso in [None, Some(kxgw::log::Isolation::LogEnd)] {
        let Ok(log) = LogDir::open(&dir.0, iso) else {
            continue;
        };
        for p in log.partitions() {
            let o = p.offsets();
            let _ = p.segment_bases();
            let mut probes = vec![o.log_start, o.log_end, o.high_watermark, -1, 0, 1, 999];
            probes.extend((o.log_start..o.log_end).take(64));
            for off in probes {
                for max in [1usize, 100, 1 << 20] {
                    if let Ok(slice) = p.read(off, max) {
                        // A served slice is whole valid batches only (copied with pread, as
                        // every user-space reader of a segment does).
                        let bytes = slice.to_vec().unwrap_or_default();
                        for b in batch::iter(&bytes) {
                            if b.is_err() {
                                panic!("read({off}, {max}) served a bad batch: {b:?}");
                            }
                        }
                    }
                }
            }
            for ts in [i64::MIN, -1, 0, 1_700_000_000_000, i64::MAX] {
                let _ = p.offset_for_timestamp(ts);
            }
        }
        let _ = log.refresh();
    }
}

/// Cuts `data` at each 4-byte marker `ff fe fd fc`, at most `n` pieces.
fn split_pieces(data: &[u8], n: usize) -> Vec<&[u8]> {
    const MARK: &[u8] = &[0xff, 0xfe, 0xfd, 0xfc];
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(4).position(|w| w == MARK) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 4..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

/// Feeds the datagrams in `data` (cut at `ff fe fd fc` markers, at most 32) to the wire
/// decoders, to a fetch gateway core as if from a client, and to a fetch consumer core as if
/// from the gateway; then drains what both want to send and fires their timers. A FETCH
/// whose token field is 20 bytes gets a valid token for the client address, so the fuzzer
/// reaches the request parser and the handlers behind the address validation. A second
/// gateway core requires fetch tickets; a version 3 FETCH whose ticket field is as long as a
/// valid ticket of the client gets that ticket, so both the refusals and the checked path run.
pub fn fetch_datagrams(data: &[u8]) {
    use kxgw::fetch::{token::TokenKeys, wire, Client, ClientConfig, Server, ServerConfig};
    use kxgw::fetch::{StartAt, Subscription};
    let f = kafka_fixture();
    let secret = [7u8; 16];
    let cfg = ServerConfig {
        token_secret: Some(secret),
        ..ServerConfig::default()
    };
    let keys = TokenKeys::with_secret(cfg.token_rotation, secret);
    let mut server = Server::new(f.log.clone(), cfg);
    let client_addr: std::net::SocketAddr = ([198, 18, 0, 2], 40000).into();
    let server_addr: std::net::SocketAddr = ([198, 18, 0, 1], 9093).into();
    let subs = vec![
        Subscription {
            topic: "t".into(),
            partition: 0,
            start: StartAt::Earliest,
        },
        Subscription {
            topic: "t".into(),
            partition: 1,
            start: StartAt::Latest,
        },
    ];
    let mut client = Client::new(server_addr, ClientConfig::default(), subs);
    let now = Instant::now();
    let token = keys.mint(client_addr.ip());
    let (mut ticketed, ticket) = ticketed_server(&f.log, secret, client_addr, now);
    for (i, d) in split_pieces(data, 32).into_iter().enumerate() {
        let t = now + Duration::from_millis(i as u64 * 5);
        let _ = wire::peek_type(d);
        let _ = wire::fetch_token(d);
        let _ = wire::decode_fetch(d);
        let _ = wire::Retry::decode(d);
        let _ = wire::DataHeader::decode(d);
        let _ = wire::ErrorMsg::decode(d);
        let mut d = d.to_vec();
        let at = wire::FETCH_FIXED_LEN;
        if d.get(at - 1) == Some(&(wire::TOKEN_LEN as u8)) && d.len() >= at + wire::TOKEN_LEN {
            d[at..at + wire::TOKEN_LEN].copy_from_slice(&token);
        }
        let _ = kxgw::fetch::ticket::decode(d.get(at + wire::TOKEN_LEN + 3..).unwrap_or_default());
        let tl = at + wire::TOKEN_LEN + 1;
        if d.get(2) == Some(&wire::VERSION_3)
            && d.get(tl..tl + 2) == Some(&(ticket.len() as u16).to_be_bytes()[..])
            && d.len() >= tl + 2 + ticket.len()
        {
            d[tl + 2..tl + 2 + ticket.len()].copy_from_slice(&ticket);
        }
        ticketed.handle_datagram(t, client_addr, &d);
        for _ in 0..10_000 {
            if ticketed.poll_transmit(t).is_none() {
                break;
            }
        }
        server.handle_datagram(t, client_addr, &d);
        client.handle_datagram(t, server_addr, &d);
        drain_fetch(&mut server, &mut client, t);
    }
    let later = now + Duration::from_secs(3600);
    server.handle_timeout(later);
    client.handle_timeout(later);
    drain_fetch(&mut server, &mut client, later);
}

/// A gateway core requiring fetch tickets, and a valid ticket of `client` for topic t.
fn ticketed_server(
    log: &Arc<kxgw::log::LogDir>,
    secret: [u8; 16],
    client: std::net::SocketAddr,
    now: Instant,
) -> (kxgw::fetch::Server, Vec<u8>) {
    use kxgw::fetch::ticket::TicketKeys;
    let keys = Arc::new(TicketKeys::with_secret(
        [9u8; 32],
        now,
        Duration::from_secs(60),
        Duration::from_secs(600),
    ));
    let ticket = keys
        .issue(now, "User:alice", client.ip(), &["t"])
        .expect("fuzz fixture: ticket");
    let cfg = kxgw::fetch::ServerConfig {
        token_secret: Some(secret),
        tickets: Some(keys),
        ..kxgw::fetch::ServerConfig::default()
    };
    (kxgw::fetch::Server::new(log.clone(), cfg), ticket)
}

/// Takes what the gateway and the consumer cores want to send (bounded: a bug that makes
/// them send forever shows up as a fuzzer timeout, not a hang here).
fn drain_fetch(server: &mut kxgw::fetch::Server, client: &mut kxgw::fetch::Client, now: Instant) {
    for _ in 0..10_000 {
        match server.poll_transmit(now) {
            Some(t) => {
                let _ = t.to_vec();
            }
            None => break,
        }
    }
    for _ in 0..10_000 {
        if client.poll_transmit(now).is_none() && client.poll_event().is_none() {
            break;
        }
    }
}

/// Joins pieces with the marker [`log_segment`] splits on (seed corpus construction).
pub fn join_pieces(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
        }
        out.extend_from_slice(p);
    }
    out
}

/// SASL frames (`(name, version, bytes)`): a PLAIN login then a Metadata request, handshakes
/// of each mechanism, a SCRAM client-first, and a v0 handshake followed by a bare token.
fn sasl_seeds() -> Vec<(&'static str, i16, Vec<u8>)> {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let hs = |m: &'static str| {
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(m))
    };
    let auth = |t: &'static [u8]| {
        SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::from_static(t))
    };
    let mut out = Vec::new();
    for v in 0..=2 {
        let login: Vec<u8> = [
            kafka_frame(ApiKey::SaslHandshake, 1, &hs("PLAIN")),
            kafka_frame(ApiKey::SaslAuthenticate, v, &auth(b"\0alice\0pw")),
            kafka_frame(ApiKey::Metadata, 9, &MetadataRequest::default()),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .collect();
        out.push(("sasl_plain_login", v, login));
        let scram: Vec<u8> = [
            kafka_frame(ApiKey::SaslHandshake, 1, &hs("SCRAM-SHA-256")),
            kafka_frame(
                ApiKey::SaslAuthenticate,
                v,
                &auth(b"n,,n=alice,r=fuzznonce"),
            ),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .collect();
        out.push(("sasl_scram_first", v, scram));
    }
    out.extend(
        kafka_frame(ApiKey::SaslHandshake, 1, &hs("GSSAPI"))
            .map(|b| ("sasl_unknown_mechanism", 1, b)),
    );
    let mut bare = kafka_frame(ApiKey::SaslHandshake, 0, &hs("PLAIN")).unwrap_or_default();
    bare.extend_from_slice(&9u32.to_be_bytes());
    bare.extend_from_slice(b"\0alice\0pw");
    out.push(("sasl_v0_bare_token", 0, bare));
    out
}

/// One Kafka request as a client encodes it (length prefix, header, body).
fn kafka_frame<R: kafka_protocol::protocol::Encodable>(
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    req: &R,
) -> Option<Vec<u8>> {
    kxgw::kafka::frame::encode_request(key, version, 7, "fuzz", req).ok()
}

/// One frame of each group API (`(name, version, bytes)`): a join that parks (v3 needs no
/// member id), then the rest of a member's life.
fn group_seeds() -> Vec<(&'static str, i16, Vec<u8>)> {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let s = StrBytes::from_static_str;
    let g = || GroupId(s("g"));
    let mut out = Vec::new();
    let join = JoinGroupRequest::default()
        .with_group_id(g())
        .with_session_timeout_ms(6000)
        .with_rebalance_timeout_ms(9000)
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(s("range"))
        .with_metadata(bytes::Bytes::from_static(b"\0\0\0\0\0\x01\0\x01t"))]);
    out.extend(kafka_frame(ApiKey::JoinGroup, 3, &join).map(|b| ("join_group", 3, b)));
    out.extend(kafka_frame(ApiKey::JoinGroup, 9, &join).map(|b| ("join_group", 9, b)));
    let sync = SyncGroupRequest::default()
        .with_group_id(g())
        .with_generation_id(1)
        .with_member_id(s("m"))
        .with_assignments(vec![
            sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(s("m"))
                .with_assignment(bytes::Bytes::from_static(b"a")),
        ]);
    out.extend(kafka_frame(ApiKey::SyncGroup, 5, &sync).map(|b| ("sync_group", 5, b)));
    let hb = HeartbeatRequest::default()
        .with_group_id(g())
        .with_generation_id(1)
        .with_member_id(s("m"));
    out.extend(kafka_frame(ApiKey::Heartbeat, 4, &hb).map(|b| ("heartbeat", 4, b)));
    let commit = OffsetCommitRequest::default()
        .with_group_id(g())
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_committed_offset(3),
                ]),
        ]);
    out.extend(kafka_frame(ApiKey::OffsetCommit, 8, &commit).map(|b| ("offset_commit", 8, b)));
    let fetch = OffsetFetchRequest::default().with_groups(vec![
        offset_fetch_request::OffsetFetchRequestGroup::default().with_group_id(g()),
    ]);
    out.extend(kafka_frame(ApiKey::OffsetFetch, 8, &fetch).map(|b| ("offset_fetch", 8, b)));
    let list = ListGroupsRequest::default();
    out.extend(kafka_frame(ApiKey::ListGroups, 5, &list).map(|b| ("list_groups", 5, b)));
    let describe = DescribeGroupsRequest::default().with_groups(vec![g()]);
    out.extend(
        kafka_frame(ApiKey::DescribeGroups, 5, &describe).map(|b| ("describe_groups", 5, b)),
    );
    let leave = LeaveGroupRequest::default()
        .with_group_id(g())
        .with_members(vec![
            leave_group_request::MemberIdentity::default().with_member_id(s("m"))
        ]);
    out.extend(kafka_frame(ApiKey::LeaveGroup, 5, &leave).map(|b| ("leave_group", 5, b)));
    let delete = OffsetDeleteRequest::default().with_group_id(g());
    out.extend(kafka_frame(ApiKey::OffsetDelete, 0, &delete).map(|b| ("offset_delete", 0, b)));
    out
}

/// Seed inputs for each target, built with the real encoders (the committed corpus starts
/// from these): `(target, name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = served_api_seeds();
    out.extend(group_seeds());
    out.extend(sasl_seeds());
    let mut seeds: Vec<(&'static str, String, Vec<u8>)> = out
        .into_iter()
        .map(|(n, v, b)| ("kafka_request", format!("{n}-v{v}"), b))
        .collect();
    // A pipelined connection: ApiVersions, Metadata, ListOffsets, Fetch back to back.
    let pipeline: Vec<u8> = seeds
        .iter()
        .filter(|(_, n, _)| {
            [
                "api_versions-v3",
                "metadata-v9",
                "list_offsets-v5",
                "fetch-v11",
            ]
            .contains(&n.as_str())
        })
        .flat_map(|(_, _, b)| b.clone())
        .collect();
    seeds.push(("kafka_request", "pipeline".into(), pipeline));

    fetch_datagram_seeds(&mut seeds);
    log_batch_seeds(&mut seeds);
    log_segment_seeds(&mut seeds);
    seeds.extend(crate::fuzzing_tls::seeds());
    seeds
}

/// Requests of the served APIs other than the group and SASL ones, at every served version.
fn served_api_seeds() -> Vec<(&'static str, i16, Vec<u8>)> {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    let mut out = Vec::new();
    let topic = || TopicName(StrBytes::from_static_str("t"));
    for v in 0..=3 {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("fuzz"))
            .with_client_software_version(StrBytes::from_static_str("1"));
        out.extend(kafka_frame(ApiKey::ApiVersions, v, &req).map(|b| ("api_versions", v, b)));
    }
    for v in 0..=12 {
        let mut t = metadata_request::MetadataRequestTopic::default().with_name(Some(topic()));
        if v >= 10 {
            t.topic_id = kxgw::kafka::apis::topic_id("t");
        }
        let req = MetadataRequest::default().with_topics(Some(vec![t]));
        out.extend(kafka_frame(ApiKey::Metadata, v, &req).map(|b| ("metadata", v, b)));
    }
    for v in 0..=7 {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic())
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-2),
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(1)
                        .with_timestamp(1_700_000_000_005),
                ])]);
        out.extend(kafka_frame(ApiKey::ListOffsets, v, &req).map(|b| ("list_offsets", v, b)));
    }
    for v in 4..=16 {
        let mut t = fetch_request::FetchTopic::default().with_partitions(vec![
            fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(4)
                .with_partition_max_bytes(1 << 20),
            fetch_request::FetchPartition::default()
                .with_partition(1)
                .with_fetch_offset(6)
                .with_partition_max_bytes(100),
        ]);
        if v >= 13 {
            t.topic_id = kxgw::kafka::apis::topic_id("t");
        } else {
            t.topic = topic();
        }
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![t]);
        out.extend(kafka_frame(ApiKey::Fetch, v, &req).map(|b| ("fetch", v, b)));
    }
    let produce = ProduceRequest::default().with_acks(1).with_topic_data(vec![
        produce_request::TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default().with_index(0)
            ]),
    ]);
    out.extend(kafka_frame(ApiKey::Produce, 3, &produce).map(|b| ("produce", 3, b)));
    let fc = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"));
    out.extend(kafka_frame(ApiKey::FindCoordinator, 2, &fc).map(|b| ("find_coordinator", 2, b)));
    out
}

/// Fetch protocol: a real exchange between a consumer core and a gateway core over the
/// fixture log (handshake FETCH, RETRY, FETCH with token, DATA, acknowledgements).
fn fetch_datagram_seeds(seeds: &mut Vec<(&'static str, String, Vec<u8>)>) {
    use kxgw::fetch::{Client, ClientConfig, Server, ServerConfig, StartAt, Subscription};
    let f = kafka_fixture();
    let mut server = Server::new(
        f.log.clone(),
        ServerConfig {
            token_secret: Some([7u8; 16]),
            ..ServerConfig::default()
        },
    );
    let ca: std::net::SocketAddr = ([198, 18, 0, 2], 40000).into();
    let sa: std::net::SocketAddr = ([198, 18, 0, 1], 9093).into();
    let sub = |p, start| Subscription {
        topic: "t".into(),
        partition: p,
        start,
    };
    let mut client = Client::new(
        sa,
        ClientConfig::default(),
        vec![sub(0, StartAt::Earliest), sub(1, StartAt::Earliest)],
    );
    let now = Instant::now();
    let mut to_server = Vec::new();
    let mut to_client = Vec::new();
    for round in 0..6u64 {
        let t = now + Duration::from_millis(round);
        while let Some(d) = client.poll_transmit(t) {
            server.handle_datagram(t, ca, &d);
            to_server.push(d);
        }
        while let Some(tx) = server.poll_transmit(t) {
            let d = tx.to_vec();
            client.handle_datagram(t, sa, &d);
            to_client.push(d);
        }
        while client.poll_event().is_some() {}
    }
    let refs: Vec<&[u8]> = to_server.iter().map(Vec::as_slice).collect();
    seeds.push((
        "fetch_datagrams",
        "client-to-gateway".into(),
        join_pieces(&refs),
    ));
    let refs: Vec<&[u8]> = to_client.iter().map(Vec::as_slice).collect();
    seeds.push((
        "fetch_datagrams",
        "gateway-to-client".into(),
        join_pieces(&refs),
    ));
    let both: Vec<&[u8]> = to_server
        .iter()
        .zip(&to_client)
        .flat_map(|(a, b)| [a.as_slice(), b.as_slice()])
        .collect();
    seeds.push(("fetch_datagrams", "interleaved".into(), join_pieces(&both)));
}

/// Batches: plain, with headers, null key, several back to back; flag byte 0 and 1.
fn log_batch_seeds(seeds: &mut Vec<(&'static str, String, Vec<u8>)>) {
    let mut b = kxgw::log::writer::BatchBuilder::new();
    let mut batches = Vec::new();
    for (base, n) in [(0i64, 1usize), (5, 3), (100, 10)] {
        b.begin(base);
        for i in 0..n {
            b.push(&NewRecord {
                timestamp: 1_700_000_000_000 + i as i64,
                key: (i % 2 == 0).then_some(b"key".as_slice()),
                value: Some(b"value"),
                headers: if i == 1 {
                    vec![("h", None), ("h2", Some(b"x"))]
                } else {
                    Vec::new()
                },
            });
        }
        batches.push(b.finish().to_vec());
    }
    for (i, bt) in batches.iter().enumerate() {
        for flag in [0u8, 1] {
            let mut v = vec![flag];
            v.extend_from_slice(bt);
            seeds.push(("log_batch", format!("batch{i}-flag{flag}"), v));
        }
    }
    let mut all = vec![0u8];
    all.extend(batches.concat());
    seeds.push(("log_batch", "three-batches".into(), all));
}

/// Segments: the files of a real partition with two segments, and checkpoints.
fn log_segment_seeds(seeds: &mut Vec<(&'static str, String, Vec<u8>)>) {
    if let Ok(dir) = ScratchDir::new("seed") {
        let cfg = WriterConfig {
            segment_bytes: 400,
            index_interval_bytes: 64,
            ..WriterConfig::default()
        };
        if let Ok(mut w) = PartitionWriter::open(&dir.0, "f", 0, cfg) {
            for i in 0..6 {
                let rec = NewRecord {
                    timestamp: 1_700_000_000_000 + i,
                    key: Some(b"k"),
                    value: Some(b"some value bytes"),
                    headers: Vec::new(),
                };
                let _ = w.append(&[rec.clone(), rec]);
            }
            let _ = w.flush();
            let part = dir.0.join("f-0");
            let bases = kxgw::log::segment::list_segments(&part).unwrap_or_default();
            let read = |base: i64, ext: &str| {
                std::fs::read(part.join(kxgw::log::segment::file_stem(base) + ext))
                    .unwrap_or_default()
            };
            let first = bases.first().copied().unwrap_or(0);
            let second = bases.get(1).copied().unwrap_or(1000);
            let mut seg2 = second.to_be_bytes().to_vec();
            seg2.extend(read(second, ".log"));
            let hw = b"0\n1\nf 0 6\n".to_vec();
            let ls = b"0\n1\nf 0 0\n".to_vec();
            let pieces: Vec<Vec<u8>> = vec![
                read(first, ".log"),
                read(first, ".index"),
                read(first, ".timeindex"),
                seg2,
                read(second, ".index"),
                read(second, ".timeindex"),
                hw,
                ls,
            ];
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            seeds.push(("log_segment", "two-segments".into(), join_pieces(&refs)));
            seeds.push(("log_segment", "one-segment".into(), join_pieces(&refs[..3])));
        }
    }
}
