//! Busy polling without a follower thread: a parked long poll is answered by the serving
//! thread's own tail check ([`Server::poll_tails`], what the driver calls every busy round),
//! never with a torn or corrupt append. In memory: server and client cores, no sockets.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::segment::{file_stem, LOG_SUFFIX};
use crate::log::writer::{BatchBuilder, NewRecord, PartitionWriter, WriterConfig};
use crate::log::LogDir;

use super::client::{Client, ClientConfig, Event, StartAt, Subscription};
use super::server::{Server, ServerConfig};

const GW: &str = "198.18.0.1:9093";
const CLIENT: &str = "198.18.0.2:40000";

pub(super) fn record(v: &[u8]) -> NewRecord<'_> {
    NewRecord {
        timestamp: 1000,
        value: Some(v),
        ..Default::default()
    }
}

/// A valid one-record batch at `base`.
pub(super) fn batch_at(base: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.begin(base);
    b.push(&record(b"tailed"));
    b.finish().to_vec()
}

/// The first segment of partition `t-<partition>`.
pub(super) fn segment(dir: &Path, partition: i32) -> PathBuf {
    dir.join(format!("t-{partition}"))
        .join(format!("{}{LOG_SUFFIX}", file_stem(0)))
}

pub(super) fn append_raw(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

struct Bed {
    dir: tempfile::TempDir,
    log: Arc<LogDir>,
    server: Server,
    client: Client,
    now: Instant,
    /// Offsets of the records delivered so far.
    got: Vec<i64>,
}

impl Bed {
    /// 3 records, a following client caught up and parked in a long poll.
    fn parked() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartitionWriter::open(dir.path(), "t", 0, WriterConfig::default()).unwrap();
        for _ in 0..3 {
            w.append(&[record(b"v")]).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        let log = LogDir::open(dir.path(), None).unwrap();
        let server = Server::new(log.clone(), ServerConfig::default());
        let cfg = ClientConfig {
            follow: true,
            max_wait: Duration::from_secs(30),
            ..ClientConfig::default()
        };
        let sub = Subscription {
            topic: "t".into(),
            partition: 0,
            start: StartAt::Earliest,
        };
        let client = Client::new(GW.parse().unwrap(), cfg, vec![sub]);
        let mut bed = Bed {
            dir,
            log,
            server,
            client,
            now: Instant::now(),
            got: Vec::new(),
        };
        for _ in 0..20 {
            bed.pump();
            if bed.got.len() == 3 && bed.server.stats().long_polls > 0 {
                break;
            }
            bed.now += Duration::from_millis(1);
            if bed.client.poll_timeout().is_some_and(|t| t <= bed.now) {
                bed.client.handle_timeout(bed.now);
            }
        }
        assert_eq!(bed.got, vec![0, 1, 2], "caught up");
        assert!(bed.server.stats().long_polls > 0, "a long poll is parked");
        assert!(bed.server.poll_transmit(bed.now).is_none());
        bed
    }

    /// Moves datagrams both ways (no loss, no time passing) until both sides are quiet.
    fn pump(&mut self) {
        let (gw, me): (SocketAddr, SocketAddr) = (GW.parse().unwrap(), CLIENT.parse().unwrap());
        loop {
            let mut moved = false;
            while let Some(d) = self.client.poll_transmit(self.now) {
                self.server.handle_datagram(self.now, me, &d);
                moved = true;
            }
            while let Some(t) = self.server.poll_transmit(self.now) {
                self.client.handle_datagram(self.now, gw, &t.to_vec());
                moved = true;
            }
            while let Some(ev) = self.client.poll_event() {
                if let Event::Batch(b) = ev {
                    self.got
                        .extend(b.from_offset.max(b.base_offset)..b.next_offset);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn payload_bytes(&self) -> u64 {
        self.server.stats().payload_bytes
    }
}

#[test]
fn growth_under_a_parked_poll_is_answered_on_the_next_turn() {
    let mut bed = Bed::parked();
    assert!(!bed.server.poll_tails(bed.now), "nothing new");
    append_raw(&segment(bed.dir.path(), 0), &batch_at(3));
    // No follower, no wake-up: without the tail check the poll stays parked.
    bed.pump();
    assert_eq!(bed.got.len(), 3);
    assert!(bed.server.poll_tails(bed.now));
    bed.pump();
    assert_eq!(bed.got, vec![0, 1, 2, 3]);
    assert_eq!(bed.server.stats().long_polls_expired, 0);
    // The reply's hops were recorded (once: its first datagram).
    let hops = bed.log.tail_hops();
    assert_eq!(hops.detect_to_validate.count(), 1);
    assert_eq!(hops.validate_to_send.count(), 1);
    // The client parked again; the next append is found the same way.
    append_raw(&segment(bed.dir.path(), 0), &batch_at(4));
    assert!(bed.server.poll_tails(bed.now));
    bed.pump();
    assert_eq!(bed.got, vec![0, 1, 2, 3, 4]);
    assert_eq!(bed.log.tail_hops().validate_to_send.count(), 2);
}

/// The catch-up reply and the tailing one go into the tail trace with their offsets, the
/// tailing one after the busy poller's refresh that made its record readable.
#[test]
fn replies_with_data_and_their_refreshes_are_traced() {
    let mut bed = Bed::parked();
    append_raw(&segment(bed.dir.path(), 0), &batch_at(3));
    assert!(bed.server.poll_tails(bed.now));
    bed.pump();
    assert_eq!(bed.got, vec![0, 1, 2, 3]);
    let dump = bed.log.tail_trace().dump();
    let rows = |kind: &str| crate::log::tail_trace::dump_rows(&dump, kind);
    let replies = rows("reply\t");
    let spans: Vec<(&str, &str, &str, &str)> = replies
        .iter()
        .map(|r| (r[1].as_str(), r[4].as_str(), r[5].as_str(), r[7].as_str()))
        .collect();
    assert_eq!(
        spans,
        [("fetch", "0", "3", "0"), ("fetch", "3", "4", "1")],
        "{dump}"
    );
    // Opening the log made 0..3 readable, the busy poller's refresh offset 3.
    let refreshes = rows("refresh\tt\t0\t");
    let ends: Vec<&str> = refreshes.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(ends, ["3", "4"], "{dump}");
    let (detected, validated): (u64, u64) = (
        refreshes[1][4].parse().unwrap(),
        refreshes[1][5].parse().unwrap(),
    );
    let sent: u64 = replies[1][6].parse().unwrap();
    assert!(detected <= validated && validated <= sent, "{dump}");
}

#[test]
fn a_torn_append_is_not_served_until_complete() {
    let mut bed = Bed::parked();
    let b = batch_at(3);
    let before = bed.payload_bytes();
    append_raw(&segment(bed.dir.path(), 0), &b[..b.len() / 2]);
    assert!(!bed.server.poll_tails(bed.now));
    bed.pump();
    assert_eq!(bed.payload_bytes(), before, "no bytes of a torn batch sent");
    assert_eq!(bed.got.len(), 3);
    append_raw(&segment(bed.dir.path(), 0), &b[b.len() / 2..]);
    assert!(bed.server.poll_tails(bed.now));
    bed.pump();
    assert_eq!(bed.got, vec![0, 1, 2, 3]);
}

#[test]
fn a_corrupt_appended_batch_is_never_served() {
    let mut bed = Bed::parked();
    let mut b = batch_at(3);
    let mid = b.len() - 3;
    b[mid] ^= 0x55;
    let before = bed.payload_bytes();
    append_raw(&segment(bed.dir.path(), 0), &b);
    assert!(!bed.server.poll_tails(bed.now));
    append_raw(&segment(bed.dir.path(), 0), &batch_at(4));
    assert!(!bed.server.poll_tails(bed.now));
    bed.pump();
    assert_eq!(bed.payload_bytes(), before, "nothing past the damage sent");
    assert_eq!(bed.got.len(), 3);
    assert_eq!(bed.log.partition("t", 0).unwrap().readable_end(), 3);
}
