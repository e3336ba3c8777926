//! Wake-ups of fetch servers by append batches ([`crate::log::appends`]): one batch per pass,
//! at most one wake-up per server and batch, only for a server with a poll parked on a
//! partition that advanced, never the busy poller that found the append itself, and no poll
//! left parked when its append lands while it parks. In memory: server and client cores, no
//! sockets, no follower thread (the test makes the follower's pass itself).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::appends::{Cause, Watch};
use crate::log::writer::{PartitionWriter, WriterConfig};
use crate::log::{LogDir, Partition};

use super::client::{Client, ClientConfig, Event, StartAt, Subscription};
use super::server::{Server, ServerConfig};
use super::tail_tests::{append_raw, batch_at, record, segment};

const GW: &str = "198.18.0.1:9093";

/// A log of `partitions` partitions `t-<p>` of one record each (offset 0).
fn log_of(partitions: i32) -> (tempfile::TempDir, Arc<LogDir>) {
    let dir = tempfile::tempdir().unwrap();
    for p in 0..partitions {
        let mut w = PartitionWriter::open(dir.path(), "t", p, WriterConfig::default()).unwrap();
        w.append(&[record(b"v")]).unwrap();
        w.flush().unwrap();
    }
    let log = LogDir::open(dir.path(), None).unwrap();
    (dir, log)
}

/// The follower's pass over the partitions inotify named (their active segments grew).
fn follower_pass(log: &LogDir, partitions: &[i32]) {
    let parts: Vec<Arc<Partition>> = partitions
        .iter()
        .map(|&p| log.partition("t", p).unwrap())
        .collect();
    let pass: Vec<(&Partition, bool)> = parts.iter().map(|p| (&**p, true)).collect();
    log.refresh_partitions(&pass);
}

/// A following consumer of one partition.
struct Follower {
    addr: SocketAddr,
    client: Client,
    got: Vec<i64>,
}

/// One fetch server (a worker) registered with the log, its wake-ups counted, and its
/// consumers.
struct Worker {
    server: Server,
    wakes: Arc<AtomicUsize>,
    followers: Vec<Follower>,
}

impl Worker {
    /// A worker whose consumers (addresses `198.18.0.<net>.<port>`) follow `partitions` (one
    /// consumer each), each caught up and parked in a long poll at offset 1.
    fn parked(log: &Arc<LogDir>, net: u8, partitions: &[i32]) -> Worker {
        let mut w = Self::unparked(log, net, partitions);
        w.settle(partitions.len() as u64);
        for f in &w.followers {
            assert_eq!(f.got, vec![0], "{} caught up", f.addr);
        }
        w
    }

    fn unparked(log: &Arc<LogDir>, net: u8, partitions: &[i32]) -> Worker {
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = wakes.clone();
        let server =
            Server::new(log.clone(), ServerConfig::default()).with_watch(Watch::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }));
        let cfg = ClientConfig {
            follow: true,
            max_wait: Duration::from_secs(30),
            ..ClientConfig::default()
        };
        let followers = partitions
            .iter()
            .enumerate()
            .map(|(i, &p)| Follower {
                addr: format!("198.18.{net}.2:{}", 40000 + i).parse().unwrap(),
                client: Client::new(
                    GW.parse().unwrap(),
                    cfg.clone(),
                    vec![Subscription {
                        topic: "t".into(),
                        partition: p,
                        start: StartAt::Earliest,
                    }],
                ),
                got: Vec::new(),
            })
            .collect();
        Worker {
            server,
            wakes,
            followers,
        }
    }

    /// Runs the consumers until `parked` long polls have parked (1 ms steps for their
    /// retry timers; no long poll expires meanwhile).
    fn settle(&mut self, parked: u64) {
        let mut now = Instant::now();
        for _ in 0..20 {
            self.pump(now);
            if self.server.stats().long_polls >= parked {
                break;
            }
            now += Duration::from_millis(1);
            for f in &mut self.followers {
                if f.client.poll_timeout().is_some_and(|t| t <= now) {
                    f.client.handle_timeout(now);
                }
            }
        }
        assert!(self.server.stats().long_polls >= parked, "polls parked");
        assert!(self.server.poll_transmit(now).is_none());
    }

    /// Moves datagrams both ways (no loss, no time passing) until all are quiet.
    fn pump(&mut self, now: Instant) {
        let gw: SocketAddr = GW.parse().unwrap();
        loop {
            let mut moved = false;
            for f in &mut self.followers {
                while let Some(d) = f.client.poll_transmit(now) {
                    self.server.handle_datagram(now, f.addr, &d);
                    moved = true;
                }
            }
            while let Some(t) = self.server.poll_transmit(now) {
                if let Some(f) = self.followers.iter_mut().find(|f| f.addr == t.dst) {
                    f.client.handle_datagram(now, gw, &t.to_vec());
                    moved = true;
                }
            }
            for f in &mut self.followers {
                while let Some(ev) = f.client.poll_event() {
                    if let Event::Batch(b) = ev {
                        f.got
                            .extend(b.from_offset.max(b.base_offset)..b.next_offset);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }

    fn got(&self) -> Vec<Vec<i64>> {
        self.followers.iter().map(|f| f.got.clone()).collect()
    }
}

#[test]
fn one_batch_wakes_each_interested_worker_once() {
    let (dir, log) = log_of(5);
    // Worker a: 3 polls parked on partitions of the batch; worker b: 3 on a partition
    // outside it.
    let mut a = Worker::parked(&log, 2, &[0, 1, 2]);
    let mut b = Worker::parked(&log, 3, &[4, 4, 4]);
    for p in 0..4 {
        append_raw(&segment(dir.path(), p), &batch_at(1));
    }
    follower_pass(&log, &[0, 1, 2, 3]);
    let stats = log.append_stats();
    assert_eq!(stats.batches(Cause::Follower), 1, "4 partitions, one batch");
    assert_eq!(stats.wakes(Cause::Follower), 1, "one wake-up in all");
    assert_eq!(a.wakes(), 1, "a waits on 3 of them: woken once");
    assert_eq!(b.wakes(), 0, "b waits on none of them");
    let now = Instant::now();
    a.server.handle_log_append(now);
    a.pump(now);
    assert_eq!(a.got(), vec![vec![0, 1]; 3], "a's polls answered");
    b.pump(now);
    assert_eq!(b.got(), vec![vec![0]; 3], "b's stay parked");
    assert_eq!(b.server.stats().long_polls_expired, 0);
    // a's consumers parked again (at offset 2); an append to b's partition wakes only b.
    append_raw(&segment(dir.path(), 4), &batch_at(1));
    follower_pass(&log, &[4]);
    assert_eq!((a.wakes(), b.wakes()), (1, 1));
    assert_eq!(stats.batches(Cause::Follower), 2);
    b.server.handle_log_append(now);
    b.pump(now);
    assert_eq!(b.got(), vec![vec![0, 1]; 3]);
}

#[test]
fn a_busy_find_wakes_only_the_other_worker() {
    let (dir, log) = log_of(1);
    let mut a = Worker::parked(&log, 2, &[0]);
    let mut b = Worker::parked(&log, 3, &[0]);
    append_raw(&segment(dir.path(), 0), &batch_at(1));
    let now = Instant::now();
    // a busy polls: it finds and validates the append itself and answers in the same round.
    assert!(a.server.poll_tails(now));
    a.pump(now);
    assert_eq!(a.got(), vec![vec![0, 1]]);
    let stats = log.append_stats();
    assert_eq!(stats.batches(Cause::Busy), 1);
    assert_eq!(a.wakes(), 0, "no self-wake");
    assert_eq!(b.wakes(), 1, "the other worker waiting on it is woken");
    assert_eq!(stats.wakes(Cause::Busy), 1);
    b.server.handle_log_append(now);
    b.pump(now);
    assert_eq!(b.got(), vec![vec![0, 1]]);
    // The follower's notification of that append comes later: nothing new, no batch.
    follower_pass(&log, &[0]);
    assert_eq!(stats.batches(Cause::Follower), 0);
    assert_eq!((a.wakes(), b.wakes()), (0, 1));
}

#[test]
fn a_poll_parked_as_its_append_lands_is_answered() {
    let (dir, log) = log_of(1);
    let mut a = Worker::unparked(&log, 2, &[0]);
    // The append lands and is announced after the poll's empty read, before its interest
    // is registered: the announcement finds nobody to wake.
    let (seg, log2) = (segment(dir.path(), 0), log.clone());
    a.server.before_watching = Some(Box::new(move || {
        append_raw(&seg, &batch_at(1));
        follower_pass(&log2, &[0]);
    }));
    a.settle(1);
    let stats = log.append_stats();
    assert_eq!(
        stats.batches(Cause::Follower),
        1,
        "the append was announced"
    );
    assert_eq!(a.wakes(), 0, "before anyone waited on it");
    // Answered without a wake-up or the poll's deadline: the check after parking saw it.
    assert_eq!(a.got(), vec![vec![0, 1]]);
    assert_eq!(a.server.stats().long_polls_expired, 0);
    // The consumer parked again, at offset 2, and its interest is registered: the next
    // append wakes the worker.
    assert_eq!(a.server.stats().long_polls, 2);
    append_raw(&segment(dir.path(), 0), &batch_at(2));
    follower_pass(&log, &[0]);
    assert_eq!(a.wakes(), 1);
}
