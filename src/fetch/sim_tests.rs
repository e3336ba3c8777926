//! Server and client cores driven against each other in memory (no sockets): a real log
//! written by the log writer, a simulated network with loss, duplication and reordering,
//! virtual time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::log::writer::{NewRecord, PartitionWriter, WriterConfig};
use crate::log::{batch, record, LogDir};
use kxgw_demo_data::{demo_key, demo_value};

use super::client::{Client, ClientConfig, Event, StartAt, Subscription};
use super::server::{Server, ServerConfig};
use super::wire::{self, ErrorCode};

const GW: &str = "198.18.0.1:9093";
const TOPIC: &str = "sim";

fn gw() -> SocketAddr {
    GW.parse().unwrap()
}

/// Writes `batches` demo batches with sizes cycling through small (many per datagram),
/// medium and large (fragmented) ones; small segments so reads stop at segment ends.
fn write_log(dir: &Path, partition: i32, batches: usize) -> i64 {
    let cfg = WriterConfig {
        segment_bytes: 200_000,
        ..WriterConfig::default()
    };
    let mut w = PartitionWriter::open(dir, TOPIC, partition, cfg).unwrap();
    append(&mut w, partition, batches, 0);
    w.flush().unwrap();
    w.next_offset()
}

fn append(w: &mut PartitionWriter, partition: i32, batches: usize, salt: usize) {
    for i in 0..batches {
        let (n, size) = match (i + salt) % 5 {
            0 => (1, 20),
            1 => (3, 100),
            2 => (10, 900),
            3 => (2, 4000),
            _ => (5, 3000),
        };
        let base = w.next_offset();
        let keys: Vec<Vec<u8>> = (0..n).map(|k| demo_key(base + k as i64)).collect();
        let vals: Vec<Vec<u8>> = (0..n)
            .map(|k| demo_value(partition, base + k as i64, size))
            .collect();
        let recs: Vec<NewRecord<'_>> = (0..n)
            .map(|k| NewRecord {
                timestamp: 1,
                key: Some(&keys[k]),
                value: Some(&vals[k]),
                headers: Vec::new(),
            })
            .collect();
        w.append(&recs).unwrap();
    }
}

#[derive(Default, Clone, Copy)]
struct Faults {
    loss_to_client: f64,
    loss_to_server: f64,
    dup: f64,
    /// Extra random delay up to this many microseconds (reorders).
    jitter_us: u64,
    /// Drop every n-th datagram to the client (deterministic schedule), 0 = off.
    drop_every: u64,
    /// Drop datagrams number a..b to the client (a burst).
    burst: (u64, u64),
    /// Damage this share of the datagrams to the client (a few bytes anywhere, header
    /// included: what a device that checksums after mangling delivers), up to datagram
    /// number `damage_until`.
    damage: f64,
    damage_until: u64,
    /// Deliver this share of the datagrams to the client glued to the next 1-7 ones as one
    /// datagram (header of the first, then everything), up to `damage_until`: what QEMU's igb
    /// delivers of some UDP GSO sends (one oversized datagram instead of its segments).
    merge: f64,
}

struct Sim {
    now: Instant,
    rng: StdRng,
    faults: Faults,
    seq: u64,
    to_client_count: u64,
    queue: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    /// A datagram being glued to the next ones (`Faults::merge`): (to, bytes, still to add).
    merging: Option<(SocketAddr, Vec<u8>, u32)>,
}

impl Sim {
    fn new(seed: u64, faults: Faults) -> Sim {
        Sim {
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
            faults,
            seq: 0,
            to_client_count: 0,
            queue: BTreeMap::new(),
            merging: None,
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, d: Vec<u8>) {
        let to_client = from == gw();
        if to_client {
            self.to_client_count += 1;
            let n = self.to_client_count;
            let f = self.faults;
            if (f.drop_every > 0 && n % f.drop_every == 0) || (n >= f.burst.0 && n < f.burst.1) {
                return;
            }
        }
        let loss = if to_client {
            self.faults.loss_to_client
        } else {
            self.faults.loss_to_server
        };
        if self.rng.gen_bool(loss) {
            return;
        }
        let mut d = d;
        if to_client && self.faults.merge > 0.0 {
            match self.merging.take() {
                Some((dst, mut glued, left)) if dst == to => {
                    glued.extend_from_slice(&d);
                    if left > 1 && self.to_client_count < self.faults.damage_until {
                        self.merging = Some((dst, glued, left - 1));
                        return;
                    }
                    d = glued;
                }
                other => {
                    self.merging = other;
                    if self.to_client_count < self.faults.damage_until
                        && self.rng.gen_bool(self.faults.merge)
                    {
                        let n = self.rng.gen_range(1..=7);
                        self.merging = Some((to, d, n));
                        return;
                    }
                }
            }
        }
        if to_client
            && self.to_client_count < self.faults.damage_until
            && !d.is_empty()
            && self.rng.gen_bool(self.faults.damage)
        {
            for _ in 0..self.rng.gen_range(1..=3) {
                let i = self.rng.gen_range(0..d.len());
                d[i] ^= self.rng.gen_range(1..=255u8);
            }
        }
        let copies = if self.rng.gen_bool(self.faults.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = if self.faults.jitter_us > 0 {
                self.rng.gen_range(0..self.faults.jitter_us)
            } else {
                0
            };
            let at = self.now + Duration::from_micros(50 + jitter);
            self.seq += 1;
            self.queue.insert((at, self.seq), (from, to, d.clone()));
        }
    }
}

struct Consumer {
    addr: SocketAddr,
    client: Client,
    /// Per subscription: next expected offset; every record checked.
    next: Vec<i64>,
    records: u64,
    events: Vec<Event>,
    /// Some: collect the offsets of delivered records instead of checking the demo layout
    /// (transactional logs have gaps where markers and aborted data lie).
    collected: Option<Vec<i64>>,
}

impl Consumer {
    fn new(addr: &str, cfg: ClientConfig, subs: Vec<Subscription>) -> Consumer {
        let next = subs
            .iter()
            .map(|s| match s.start {
                StartAt::Offset(o) => o,
                _ => 0,
            })
            .collect();
        Consumer {
            addr: addr.parse().unwrap(),
            client: Client::new(gw(), cfg, subs),
            next,
            records: 0,
            events: Vec::new(),
            collected: None,
        }
    }

    /// Checks delivered batches: CRC, exactly-once in-order offsets, demo content.
    fn take_events(&mut self) {
        while let Some(ev) = self.client.poll_event() {
            if let Event::Batch(mut b) = ev {
                batch::verify(&b.data).expect("delivered batch passes its CRC");
                if let Some(c) = self.collected.as_mut() {
                    let recs = record::decode_batch(&b.data).unwrap();
                    c.extend(
                        recs.iter()
                            .map(|r| r.offset)
                            .filter(|&o| o >= b.from_offset),
                    );
                    self.client.recycle(b.data);
                    continue;
                }
                for r in record::decode_batch(&b.data).unwrap() {
                    if r.offset < b.from_offset {
                        continue;
                    }
                    assert_eq!(r.offset, self.next[b.sub], "offsets in order, exactly once");
                    self.next[b.sub] += 1;
                    self.records += 1;
                    assert_eq!(r.key.as_deref(), Some(&demo_key(r.offset)[..]));
                    let v = r.value.unwrap();
                    assert_eq!(v, demo_value(b.partition, r.offset, v.len()));
                }
                // Hand the buffer back poisoned: a reused buffer that kept stale bytes, or one
                // handed out twice, fails the CRC and content checks of a later batch.
                b.data.fill(0xAA);
                self.client.recycle(b.data);
                continue;
            }
            self.events.push(ev);
        }
    }
}

/// Runs until `done` or the virtual deadline; returns the virtual time spent.
fn run(
    sim: &mut Sim,
    server: &mut Server,
    consumers: &mut [Consumer],
    limit: Duration,
    mut hook: impl FnMut(&mut Sim, &mut Server, &mut [Consumer]) -> bool,
) -> Duration {
    let start = sim.now;
    loop {
        while let Some(t) = server.poll_transmit(sim.now) {
            assert!(
                t.len() <= server.config().max_datagram,
                "datagram over the limit"
            );
            let d = t.to_vec();
            sim.send(gw(), t.dst, d);
        }
        for c in consumers.iter_mut() {
            while let Some(d) = c.client.poll_transmit(sim.now) {
                let a = c.addr;
                sim.send(a, gw(), d);
            }
            c.take_events();
        }
        if hook(sim, server, consumers) {
            return sim.now - start;
        }
        assert!(
            sim.now - start < limit,
            "did not finish within {limit:?} of virtual time"
        );
        let mut next = sim.queue.keys().next().map(|k| k.0);
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                next = Some(next.map_or(x, |n: Instant| n.min(x)));
            }
        };
        min(server.poll_timeout());
        for c in consumers.iter() {
            min(c.client.poll_timeout());
        }
        let Some(next) = next else {
            panic!("nothing left to happen but not done");
        };
        sim.now = sim.now.max(next);
        while let Some(entry) = sim.queue.first_entry() {
            if entry.key().0 > sim.now {
                break;
            }
            let (from, to, d) = entry.remove();
            if to == gw() {
                server.handle_datagram(sim.now, from, &d);
            } else if let Some(c) = consumers.iter_mut().find(|c| c.addr == to) {
                c.client.handle_datagram(sim.now, from, &d);
            }
        }
        if server.poll_timeout().is_some_and(|t| sim.now >= t) {
            server.handle_timeout(sim.now);
        }
        for c in consumers.iter_mut() {
            if c.client.poll_timeout().is_some_and(|t| sim.now >= t) {
                c.client.handle_timeout(sim.now);
            }
        }
    }
}

fn setup(batches: usize) -> (tempfile::TempDir, Arc<LogDir>, i64) {
    let dir = tempfile::tempdir().unwrap();
    let end = write_log(dir.path(), 0, batches);
    let log = LogDir::open(dir.path(), None).unwrap();
    (dir, log, end)
}

fn server_cfg(max_datagram: usize) -> ServerConfig {
    ServerConfig {
        max_datagram,
        ..ServerConfig::default()
    }
}

fn small_window() -> ClientConfig {
    ClientConfig {
        window: 256 << 10,
        fetch_bytes: 64 << 10,
        ..ClientConfig::default()
    }
}

fn consume_all(faults: Faults, seed: u64, max_datagram: usize) -> (Consumer, Server) {
    let (_dir, log, end) = setup(400);
    let mut server = Server::new(log, server_cfg(max_datagram));
    let mut sim = Sim::new(seed, faults);
    let sub = Subscription {
        topic: TOPIC.into(),
        partition: 0,
        start: StartAt::Earliest,
    };
    let mut cs = vec![Consumer::new("198.18.0.2:40000", small_window(), vec![sub])];
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(600),
        |_, _, cs| cs[0].client.is_finished(),
    );
    let c = cs.pop().unwrap();
    eprintln!(
        "seed {seed}: {} records to offset {end}: {:?}\n  server {:?}",
        c.records,
        c.client.stats(),
        server.stats()
    );
    assert_eq!(c.next[0], end, "everything up to the log end delivered");
    assert!(
        c.events
            .iter()
            .any(|e| matches!(e, Event::CaughtUp { offset, .. } if *offset == end)),
        "caught up reported: {:?}",
        c.events
    );
    (c, server)
}

#[test]
fn clean_network_delivers_everything_in_order() {
    let (c, s) = consume_all(Faults::default(), 1, 1472);
    assert_eq!(c.client.stats().refetches, 0, "{:?}", c.client.stats());
    assert_eq!(c.client.stats().crc_errors, 0);
    assert!(s.stats().data_datagrams > 100);
}

#[test]
fn random_loss_both_ways_with_duplicates_and_reordering() {
    let faults = Faults {
        loss_to_client: 0.10,
        loss_to_server: 0.05,
        dup: 0.05,
        jitter_us: 400,
        ..Faults::default()
    };
    for seed in [2, 3] {
        let (c, _) = consume_all(faults, seed, 1472);
        let st = c.client.stats();
        assert!(st.refetches > 0 && st.duplicate_datagrams > 0, "{st:?}");
    }
}

#[test]
fn deterministic_and_burst_loss_schedules() {
    let every = Faults {
        drop_every: 7,
        ..Faults::default()
    };
    consume_all(every, 4, 1472);
    let burst = Faults {
        burst: (30, 400),
        ..Faults::default()
    };
    consume_all(burst, 5, 9000 - 28);
    // Jumbo datagrams: fewer fragments, same result.
    consume_all(
        Faults {
            loss_to_client: 0.02,
            ..Faults::default()
        },
        6,
        65507,
    );
}

/// Damaged datagrams that arrive (bytes changed anywhere, header fields included: a device
/// that mangles GSO segments and computes the UDP checksum afterwards), then a clean network:
/// the consumer that was running through the damage still gets everything, and nothing
/// wrong (`take_events` checks every record).
#[test]
fn damaged_datagrams_then_a_clean_network_deliver_everything() {
    let mut crc_errors = 0;
    let mut malformed = 0;
    for seed in 20..32 {
        let faults = Faults {
            damage: 0.05,
            damage_until: 1000,
            ..Faults::default()
        };
        let (c, _) = consume_all(faults, seed, 1472);
        crc_errors += c.client.stats().crc_errors;
        malformed += c.client.stats().malformed;
    }
    assert!(
        crc_errors > 0 && malformed > 0,
        "the damage reached the client"
    );
}

/// Datagrams glued together, as QEMU's igb delivered some UDP GSO sends (one datagram with
/// the first one's header and the bytes of several): the glued payload passes the header's
/// checks when it ends inside the batch, covers bytes it does not really hold, and used to
/// leave the consumer with a partial batch nothing would complete (the stall of the consumer
/// running when the gateway's GSO guard tripped). Then a clean network: everything arrives.
#[test]
fn glued_datagrams_then_a_clean_network_deliver_everything() {
    let (mut damaged, mut resyncs) = (0, 0);
    for seed in 40..52 {
        let faults = Faults {
            merge: 0.05,
            damage_until: 1000,
            ..Faults::default()
        };
        let (c, _) = consume_all(faults, seed, 1472);
        let st = c.client.stats();
        damaged += st.crc_errors + st.malformed;
        resyncs += st.resyncs;
    }
    eprintln!("glued datagrams: {damaged} CRC errors and malformed datagrams, {resyncs} resyncs");
    assert!(damaged > 0, "the glued datagrams reached the client");
}

#[test]
fn flow_control_bounds_bytes_in_flight() {
    let (_dir, log, end) = setup(200);
    let mut server = Server::new(log, server_cfg(1472));
    let mut sim = Sim::new(7, Faults::default());
    let cfg = ClientConfig {
        window: 32 << 10,
        fetch_bytes: 16 << 10,
        ..ClientConfig::default()
    };
    let sub = Subscription {
        topic: TOPIC.into(),
        partition: 0,
        start: StartAt::Offset(0),
    };
    let mut cs = vec![Consumer::new("198.18.0.2:40001", cfg, vec![sub])];
    let mut max_queued = 0usize;
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(60),
        |sim, _, cs| {
            // Bytes on the way to the client right after the gateway sent all it would.
            let q: usize = sim
                .queue
                .values()
                .filter(|(from, _, _)| *from == gw())
                .map(|(_, _, d)| d.len().saturating_sub(wire::DATA_HEADER_LEN))
                .sum();
            max_queued = max_queued.max(q);
            cs[0].client.is_finished()
        },
    );
    assert_eq!(cs[0].next[0], end);
    // The largest batch (~8 KiB) may exceed a fetch; the window is never exceeded by more.
    assert!(
        max_queued <= (32 << 10) + 16_384,
        "{max_queued} bytes in flight"
    );
}

#[test]
fn long_poll_is_answered_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let cfgw = WriterConfig::default();
    let mut w = PartitionWriter::open(dir.path(), TOPIC, 0, cfgw).unwrap();
    append(&mut w, 0, 10, 0);
    w.flush().unwrap();
    let log = LogDir::open(dir.path(), None).unwrap();
    let mut server = Server::new(log.clone(), server_cfg(1472));
    let mut sim = Sim::new(8, Faults::default());
    let cfg = ClientConfig {
        follow: true,
        max_wait: Duration::from_secs(5),
        ..small_window()
    };
    let sub = Subscription {
        topic: TOPIC.into(),
        partition: 0,
        start: StartAt::Earliest,
    };
    let mut cs = vec![Consumer::new("198.18.0.2:40002", cfg, vec![sub])];
    let first_end = w.next_offset();
    // Phase 1: catch up, then sit in a long poll.
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(30),
        |_, s, cs| cs[0].next[0] == first_end && s.stats().long_polls > 0,
    );
    // A while later the log grows: the parked poll is answered at once, not at expiry.
    sim.now += Duration::from_secs(1);
    append(&mut w, 0, 7, 3);
    w.flush().unwrap();
    log.refresh().unwrap();
    server.handle_log_append(sim.now);
    let new_end = w.next_offset();
    let took = run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(30),
        |_, _, cs| cs[0].next[0] == new_end,
    );
    assert!(took < Duration::from_millis(100), "answered after {took:?}");
    assert_eq!(server.stats().long_polls_expired, 0);
    // Nothing more: the poll expires after max_wait and is renewed.
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(30),
        |_, s, _| s.stats().long_polls_expired > 0,
    );
    assert_eq!(cs[0].next[0], new_end);
}

#[test]
fn several_partitions_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let e0 = write_log(dir.path(), 0, 60);
    let e1 = write_log(dir.path(), 1, 90);
    let log = LogDir::open(dir.path(), None).unwrap();
    let mut server = Server::new(log, server_cfg(1472));
    let mut sim = Sim::new(
        9,
        Faults {
            loss_to_client: 0.05,
            ..Faults::default()
        },
    );
    let subs = vec![
        Subscription {
            topic: TOPIC.into(),
            partition: 0,
            start: StartAt::Earliest,
        },
        Subscription {
            topic: TOPIC.into(),
            partition: 1,
            start: StartAt::Offset(5),
        },
    ];
    let mut cs = vec![Consumer::new("198.18.0.2:40003", small_window(), subs)];
    cs[0].next[1] = 5;
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(60),
        |_, _, cs| cs[0].client.is_finished(),
    );
    assert_eq!(cs[0].next, vec![e0, e1]);
}

#[test]
fn errors_unknown_partition_and_offset_out_of_range() {
    let (_dir, log, end) = setup(20);
    let mut server = Server::new(log, server_cfg(1472));
    let mut sim = Sim::new(10, Faults::default());
    let cfg = ClientConfig {
        auto_reset: false,
        ..small_window()
    };
    let subs = vec![
        Subscription {
            topic: "nope".into(),
            partition: 0,
            start: StartAt::Offset(0),
        },
        Subscription {
            topic: TOPIC.into(),
            partition: 0,
            start: StartAt::Offset(end + 100),
        },
    ];
    let mut cs = vec![Consumer::new("198.18.0.2:40004", cfg, subs)];
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(10),
        |_, _, cs| cs[0].client.is_finished(),
    );
    let ev = &cs[0].events;
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::PartitionError {
                sub: 0,
                code: ErrorCode::UnknownTopicOrPartition,
                ..
            }
        )),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(e, Event::PartitionError { sub: 1, code: ErrorCode::OffsetOutOfRange, log_start: 0, log_end } if *log_end == end)), "{ev:?}");
    // With auto reset the same position jumps to the end and is caught up there.
    let subs = vec![Subscription {
        topic: TOPIC.into(),
        partition: 0,
        start: StartAt::Offset(end + 100),
    }];
    let mut cs = vec![Consumer::new("198.18.0.2:40005", small_window(), subs)];
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(10),
        |_, _, cs| cs[0].client.is_finished(),
    );
    assert!(cs[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::OffsetReset { to, .. } if *to == end)));
}

#[test]
fn unvalidated_sources_never_get_more_than_they_sent() {
    let (_dir, log, _) = setup(50);
    let mut server = Server::new(log, server_cfg(1472));
    let now = Instant::now();
    let spoofed: SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let mut sent_in = 0usize;
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    // A well-formed fetch of lots of data, without a token, with a forged one, padded or not.
    for token in [&[][..], &[7u8; wire::TOKEN_LEN][..]] {
        for pad in [0, 64, 1400] {
            let req = wire::FetchRequest {
                version: wire::VERSION_1,
                isolation: wire::IsolationLevel::ReadUncommitted,
                ticket: &[],
                request_id: 1,
                ack_floor: 0,
                window: u32::MAX,
                max_wait_ms: 0,
                token,
                parts: vec![wire::PartRequest {
                    topic: TOPIC,
                    partition: 0,
                    offset: 0,
                    max_bytes: 1 << 20,
                    range_start: 0,
                    range_end: 0,
                }],
            };
            inputs.push(req.encode(pad).unwrap());
        }
    }
    for _ in 0..200 {
        let n = rng.gen_range(0..200);
        let mut d: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        if n >= 4 && rng.gen_bool(0.5) {
            d[..4].copy_from_slice(&[0x4B, 0x58, 1, rng.gen_range(0..6)]);
        }
        inputs.push(d);
    }
    let mut sent_out = 0usize;
    for d in &inputs {
        sent_in += d.len();
        server.handle_datagram(now, spoofed, d);
        while let Some(t) = server.poll_transmit(now) {
            assert_eq!(t.dst, spoofed);
            assert!(
                t.len() <= d.len(),
                "answer {} > request {}",
                t.len(),
                d.len()
            );
            sent_out += t.len();
        }
    }
    assert!(sent_out <= sent_in);
    assert!(server.stats().retries_sent > 0);
    assert_eq!(server.stats().data_datagrams, 0);
    assert_eq!(server.sessions(), 0);

    // A token is bound to the address it was sent to.
    let mut c = Client::new(
        gw(),
        small_window(),
        vec![Subscription {
            topic: TOPIC.into(),
            partition: 0,
            start: StartAt::Offset(0),
        }],
    );
    let me: SocketAddr = "198.18.0.2:40006".parse().unwrap();
    let probe = c.poll_transmit(now).unwrap();
    server.handle_datagram(now, me, &probe);
    let retry = server.poll_transmit(now).unwrap();
    c.handle_datagram(now, gw(), &retry.to_vec());
    let fetch = c.poll_transmit(now).unwrap();
    // Replayed from another address: only a RETRY comes back, to that address.
    server.handle_datagram(now, spoofed, &fetch);
    let t = server.poll_transmit(now).unwrap();
    assert!(t.len() <= fetch.len());
    assert!(server.poll_transmit(now).is_none());
    // From the right address the data flows.
    server.handle_datagram(now, me, &fetch);
    let t = server.poll_transmit(now);
    assert!(
        t.as_ref().is_some_and(|t| t.payload.is_some()),
        "{t:?} {:?}",
        server.stats()
    );
}

#[test]
fn token_rotation_is_survived() {
    let (_dir, log, end) = setup(100);
    let mut server = Server::new(log, server_cfg(1472));
    let mut sim = Sim::new(12, Faults::default());
    let sub = Subscription {
        topic: TOPIC.into(),
        partition: 0,
        start: StartAt::Offset(0),
    };
    let mut cs = vec![Consumer::new("198.18.0.2:40007", small_window(), vec![sub])];
    let mut rotated = 0;
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(60),
        |sim, s, cs| {
            // Twice in a row: the client's token goes stale mid-stream.
            if cs[0].next[0] > end / 2 && rotated == 0 {
                s.rotate_secret(sim.now);
                s.rotate_secret(sim.now);
                rotated = 1;
            }
            cs[0].client.is_finished()
        },
    );
    assert_eq!(cs[0].next[0], end);
    assert!(cs[0].client.stats().retries >= 2);
}

#[test]
fn garbage_does_not_disturb_a_consumer() {
    let (_dir, log, end) = setup(150);
    let mut server = Server::new(log, server_cfg(1472));
    let mut sim = Sim::new(13, Faults::default());
    let sub = Subscription {
        topic: TOPIC.into(),
        partition: 0,
        start: StartAt::Offset(0),
    };
    let mut cs = vec![Consumer::new("198.18.0.2:40008", small_window(), vec![sub])];
    let attacker: SocketAddr = "198.18.0.2:40009".parse().unwrap();
    let mut rng = StdRng::seed_from_u64(14);
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(60),
        |sim, _, cs| {
            for _ in 0..3 {
                let n = rng.gen_range(0..300);
                let mut d: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                if n > 4 {
                    d[..4].copy_from_slice(&[0x4B, 0x58, 1, rng.gen_range(1..5)]);
                }
                // Garbage to the gateway and, spoofed as the gateway, to the consumer.
                sim.send(attacker, gw(), d.clone());
                let me = cs[0].addr;
                sim.send(gw(), me, d);
            }
            cs[0].client.is_finished()
        },
    );
    assert_eq!(cs[0].next[0], end);
    assert!(server.stats().dropped_malformed > 0);
}

#[test]
fn consumers_share_the_gateway() {
    let (_dir, log, end) = setup(300);
    let mut server = Server::new(log, server_cfg(1472));
    let mut sim = Sim::new(
        15,
        Faults {
            loss_to_client: 0.03,
            jitter_us: 100,
            ..Faults::default()
        },
    );
    let sub = |start| Subscription {
        topic: TOPIC.into(),
        partition: 0,
        start,
    };
    let mut cs = vec![
        Consumer::new(
            "198.18.0.2:41000",
            small_window(),
            vec![sub(StartAt::Earliest)],
        ),
        Consumer::new(
            "198.18.0.2:41001",
            small_window(),
            vec![sub(StartAt::Offset(0))],
        ),
        Consumer::new(
            "198.18.0.3:41000",
            small_window(),
            vec![sub(StartAt::Offset(100))],
        ),
    ];
    cs[2].next[0] = 100;
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(60),
        |_, _, cs| cs.iter().all(|c| c.client.is_finished()),
    );
    for c in &cs {
        assert_eq!(c.next[0], end);
    }
    assert_eq!(server.sessions(), 3);
}

/// A client that asks for far more than its window: the gateway holds responses back until
/// the client acknowledges, whatever the client asked for.
#[test]
fn gateway_enforces_the_window_against_a_greedy_client() {
    let (_dir, log, _) = setup(300);
    let mut server = Server::new(log, server_cfg(1472));
    let now = Instant::now();
    let me: SocketAddr = "198.18.0.2:42000".parse().unwrap();
    // Get a token.
    let probe = wire::FetchRequest {
        version: wire::VERSION_1,
        isolation: wire::IsolationLevel::ReadUncommitted,
        ticket: &[],
        request_id: 0,
        ack_floor: 0,
        window: 0,
        max_wait_ms: 0,
        token: &[],
        parts: vec![],
    }
    .encode(wire::MIN_INITIAL_LEN)
    .unwrap();
    server.handle_datagram(now, me, &probe);
    let retry = wire::Retry::decode(&server.poll_transmit(now).unwrap().to_vec()).unwrap();
    let window = 16 << 10;
    let fetch = |id: u32, floor: u32, offset: i64| {
        wire::FetchRequest {
            version: wire::VERSION_1,
            isolation: wire::IsolationLevel::ReadUncommitted,
            ticket: &[],
            request_id: id,
            ack_floor: floor,
            window,
            max_wait_ms: 0,
            token: &retry.token,
            parts: vec![wire::PartRequest {
                topic: TOPIC,
                partition: 0,
                offset,
                max_bytes: 16 << 10,
                range_start: 0,
                range_end: 0,
            }],
        }
        .encode(0)
        .unwrap()
    };
    // Ten requests at once, never acknowledged.
    for id in 1..=10 {
        server.handle_datagram(now, me, &fetch(id, 1, 0));
    }
    let mut payload = 0;
    while let Some(t) = server.poll_transmit(now) {
        payload += t.payload.map_or(0, |p| p.len);
    }
    // One response may exceed the window (its first batch can be larger than max_bytes).
    assert!(
        payload > 0 && payload <= window as usize + 16_384,
        "{payload}"
    );
    assert!(server.stats().window_stalls > 0);
    // Acknowledging the first five lets (some of) the rest go.
    server.handle_datagram(now, me, &fetch(11, 6, 0));
    let mut more = 0;
    while let Some(t) = server.poll_transmit(now) {
        more += t.payload.map_or(0, |p| p.len);
    }
    assert!(more > 0 && more <= 2 * (window as usize + 16_384), "{more}");
}

/// A tailing consumer keeps up with a log appended at a steady rate: every record arrives,
/// each soon after its append (regression: the tail used to stall after a few records).
#[test]
fn tailing_consumer_receives_steady_appends() {
    for seed in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartitionWriter::open(dir.path(), TOPIC, 0, WriterConfig::default()).unwrap();
        append(&mut w, 0, 1, 0);
        w.flush().unwrap();
        let log = LogDir::open(dir.path(), None).unwrap();
        let mut server = Server::new(log.clone(), server_cfg(1472));
        // Appends at steps off the network's 50 µs grid (and with jitter) so some land
        // between an empty answer and the long poll that follows it.
        let faults = Faults {
            jitter_us: 40 * (seed % 2),
            ..Faults::default()
        };
        let mut sim = Sim::new(seed, faults);
        let cfg = ClientConfig {
            follow: true,
            max_wait: Duration::from_millis(500),
            ..small_window()
        };
        let sub = Subscription {
            topic: TOPIC.into(),
            partition: 0,
            start: StartAt::Offset(1),
        };
        let mut cs = vec![Consumer::new("198.18.0.2:40009", cfg, vec![sub])];
        // One small batch every ~200-400 µs of virtual time.
        let appends = 1000usize;
        let step = Duration::from_micros(173 + 61 * seed);
        let nowhere: SocketAddr = "198.18.0.9:9".parse().unwrap();
        let mut done = 0usize;
        let mut next_at = sim.now + Duration::from_millis(5);
        sim.seq += 1;
        sim.queue
            .insert((next_at, sim.seq), (gw(), nowhere, Vec::new()));
        let took = run(
            &mut sim,
            &mut server,
            &mut cs,
            Duration::from_secs(10),
            |sim, s, cs| {
                while done < appends && sim.now >= next_at {
                    append(&mut w, 0, 1, 5 * done + 1);
                    w.flush().unwrap();
                    log.refresh().unwrap();
                    s.handle_log_append(sim.now);
                    // What the append answered goes out now, as a gateway's loop does.
                    while let Some(t) = s.poll_transmit(sim.now) {
                        sim.send(gw(), t.dst, t.to_vec());
                    }
                    done += 1;
                    next_at += step;
                    if done < appends {
                        // A timer event so virtual time stops at the next append.
                        sim.seq += 1;
                        let k = (next_at, sim.seq);
                        sim.queue.insert(k, (gw(), nowhere, Vec::new()));
                    }
                }
                done == appends && cs[0].next[0] == w.next_offset()
            },
        );
        let span = step * appends as u32 + Duration::from_millis(5);
        assert!(
            took < span + Duration::from_millis(300),
            "seed {seed}: all {appends} appends delivered after {took:?} (appends took {span:?}); {:?}\n  server {:?}",
            cs[0].client.stats(),
            server.stats()
        );
    }
}

/// A validated consumer whose flow moves to another server (RSS steering it to another AF_XDP
/// queue) midway; `cfg` builds both servers. Returns the client's RETRY count.
fn move_flow_midway(cfg: ServerConfig, seed: u64) -> u64 {
    let (_dir, log, end) = setup(200);
    let mut server = Server::new(log.clone(), cfg.clone());
    let mut other = Server::new(log, cfg);
    let mut sim = Sim::new(seed, Faults::default());
    let sub = Subscription {
        topic: TOPIC.into(),
        partition: 0,
        start: StartAt::Offset(0),
    };
    let mut cs = vec![Consumer::new("198.18.0.2:40011", small_window(), vec![sub])];
    let mut moved = false;
    run(
        &mut sim,
        &mut server,
        &mut cs,
        Duration::from_secs(120),
        |_, s, cs| {
            if !moved && cs[0].next[0] > end / 2 {
                // From now on every datagram of the flow reaches the other server.
                std::mem::swap(s, &mut other);
                moved = true;
            }
            cs[0].client.is_finished()
        },
    );
    assert!(moved, "the flow moved");
    assert_eq!(cs[0].next[0], end, "everything delivered after the move");
    // `server` is now the second one: it served the rest.
    assert!(server.stats().payload_bytes > 0, "{:?}", server.stats());
    cs[0].client.stats().retries
}

#[test]
fn a_flow_moved_to_another_queue_stays_validated() {
    // What every transport worker of one gateway gets: one secret (fetch_endpoint::start).
    let gateway = server_cfg(1472).with_shared_secret();
    let queue = crate::xdp::fetch_endpoint::queue_config(&gateway, 1472);
    let retries = move_flow_midway(queue, 21);
    // One RETRY: the first contact. The second server accepts the token the first minted.
    assert_eq!(retries, 1, "the moved flow was not re-validated");
    // Control: servers with their own secrets (the old per-queue default) re-validate.
    assert!(move_flow_midway(server_cfg(1472), 21) > 1);
}

/// A transactional log (two producers, every 3rd transaction aborted, the last one open):
/// batch by batch, what a consumer must get at each isolation level, decided from the
/// markers alone (a data batch belongs to the transaction its producer's next marker ends).
fn txn_setup(records: u64) -> (tempfile::TempDir, Arc<LogDir>, Vec<i64>, Vec<i64>, i64) {
    use crate::log::txn::{marker_of, Marker};
    use crate::log::txn_writer::{self, TestValues, TxnPlan};
    let dir = tempfile::tempdir().unwrap();
    let mut w = PartitionWriter::open(dir.path(), TOPIC, 0, WriterConfig::default()).unwrap();
    let plan = TxnPlan {
        records,
        batch_records: 3,
        abort_every: 3,
        open_tail: true,
    };
    txn_writer::write(&mut w, &mut TestValues::new(0, 300), plan).unwrap();
    w.flush().unwrap();
    drop(w);
    let log = LogDir::open(dir.path(), None).unwrap();
    let p = log.partition(TOPIC, 0).unwrap();
    let lso = p.offsets().last_stable;
    let all = p.read(0, 1 << 30).unwrap().to_vec().unwrap();
    let mut batches = Vec::new();
    for b in batch::iter(&all) {
        let (pos, h) = b.unwrap();
        batches.push((h, all[pos..pos + h.total_len()].to_vec()));
    }
    let (mut committed, mut uncommitted) = (Vec::new(), Vec::new());
    for (i, (h, bytes)) in batches.iter().enumerate() {
        if h.is_control() {
            continue;
        }
        let offsets: Vec<i64> = (h.base_offset..h.next_offset()).collect();
        uncommitted.extend(&offsets);
        let ends = batches[i + 1..]
            .iter()
            .find(|(m, _)| m.is_control() && m.producer_id == h.producer_id)
            .map(|(_, m)| marker_of(m).unwrap());
        let _ = bytes;
        if h.next_offset() <= lso && (!h.is_transactional() || ends == Some(Marker::Commit)) {
            committed.extend(&offsets);
        }
    }
    assert!(lso < p.offsets().log_end, "the last transaction is open");
    (dir, log, committed, uncommitted, lso)
}

fn consume_txn(
    log: &Arc<LogDir>,
    isolation: wire::IsolationLevel,
    max_datagram: usize,
    faults: Faults,
    seed: u64,
) -> (Vec<i64>, Consumer) {
    let mut server = Server::new(log.clone(), server_cfg(max_datagram));
    let mut sim = Sim::new(seed, faults);
    let cfg = ClientConfig {
        isolation,
        fetch_bytes: 8 << 10,
        ..ClientConfig::default()
    };
    let sub = Subscription {
        topic: TOPIC.into(),
        partition: 0,
        start: StartAt::Earliest,
    };
    let mut consumers = vec![Consumer::new("198.18.0.2:40000", cfg, vec![sub])];
    consumers[0].collected = Some(Vec::new());
    run(
        &mut sim,
        &mut server,
        &mut consumers,
        Duration::from_secs(120),
        |_, _, c| c[0].client.is_finished(),
    );
    let mut c = consumers.pop().unwrap();
    (c.collected.take().unwrap(), c)
}

#[test]
fn read_committed_stops_at_the_lso_and_drops_aborted_transactions() {
    let (_dir, log, committed, uncommitted, lso) = txn_setup(300);
    assert!(committed.len() < uncommitted.len());
    let lossy = Faults {
        loss_to_client: 0.05,
        loss_to_server: 0.02,
        dup: 0.05,
        jitter_us: 300,
        ..Faults::default()
    };
    // Fragments (600) and several batches per datagram (4000), clean and lossy.
    for (i, (max_datagram, faults)) in [
        (600, Faults::default()),
        (4000, Faults::default()),
        (600, lossy),
        (4000, lossy),
    ]
    .into_iter()
    .enumerate()
    {
        let (got, c) = consume_txn(
            &log,
            wire::IsolationLevel::ReadCommitted,
            max_datagram,
            faults,
            i as u64,
        );
        assert_eq!(got, committed, "read_committed at {max_datagram}");
        assert_eq!(c.client.positions(), vec![Some(lso)], "stops at the LSO");
        assert!(c.client.stats().skipped_aborted > 0);
        let (got, c) = consume_txn(
            &log,
            wire::IsolationLevel::ReadUncommitted,
            max_datagram,
            faults,
            i as u64 + 10,
        );
        assert_eq!(got, uncommitted, "read_uncommitted at {max_datagram}");
        assert_eq!(c.client.stats().skipped_aborted, 0);
        assert!(
            c.client.stats().skipped_control > 0,
            "markers are never delivered"
        );
    }
}

/// Version 1 requests are answered in version 1 (92-byte DATA headers, read_uncommitted);
/// version 2 read_committed answers carry the LSO and stop below it.
#[test]
fn versions_1_and_2_side_by_side() {
    let (_dir, log, _, _, lso) = txn_setup(60);
    let mut server = Server::new(log.clone(), server_cfg(1472));
    let now = Instant::now();
    let me: SocketAddr = "198.18.0.2:42001".parse().unwrap();
    let part = wire::PartRequest {
        topic: TOPIC,
        partition: 0,
        offset: 0,
        max_bytes: 1 << 20,
        range_start: 0,
        range_end: 0,
    };
    let probe = wire::FetchRequest {
        version: wire::VERSION_1,
        isolation: wire::IsolationLevel::ReadUncommitted,
        ticket: &[],
        request_id: 0,
        ack_floor: 0,
        window: 1 << 20,
        max_wait_ms: 0,
        token: &[],
        parts: vec![],
    };
    server.handle_datagram(now, me, &probe.encode(wire::MIN_INITIAL_LEN).unwrap());
    let t = server.poll_transmit(now).unwrap().to_vec();
    assert_eq!(t[2], 1, "a v1 FETCH gets a v1 RETRY");
    let retry = wire::Retry::decode(&t).unwrap();
    let log_end = log.partition(TOPIC, 0).unwrap().offsets().log_end;
    for (id, version, isolation, end) in [
        (
            1,
            wire::VERSION_1,
            wire::IsolationLevel::ReadUncommitted,
            log_end,
        ),
        (2, wire::VERSION_2, wire::IsolationLevel::ReadCommitted, lso),
        (
            3,
            wire::VERSION_2,
            wire::IsolationLevel::ReadUncommitted,
            log_end,
        ),
    ] {
        let req = wire::FetchRequest {
            version,
            isolation,
            ticket: &[],
            request_id: id,
            ack_floor: id,
            window: 1 << 20,
            max_wait_ms: 0,
            token: &retry.token,
            parts: vec![part.clone()],
        };
        server.handle_datagram(now, me, &req.encode(0).unwrap());
        let mut next = None;
        while let Some(t) = server.poll_transmit(now) {
            let d = t.to_vec();
            assert!(d.len() <= 1472);
            assert_eq!(d[2], version, "answered in the request's version");
            let (h, payload) = wire::DataHeader::decode(&d).unwrap();
            assert_eq!(d.len() - payload.len(), h.len());
            if version == wire::VERSION_1 {
                assert_eq!(h.len(), wire::DATA_HEADER_LEN);
            } else {
                assert_eq!(h.last_stable, lso);
            }
            if isolation == wire::IsolationLevel::ReadUncommitted {
                assert!(h.aborted.is_empty());
            }
            assert!(h.end_offset <= end);
            next = Some(h.resp_next_offset);
            if h.is_last() {
                break;
            }
        }
        assert!(next.unwrap() <= end);
    }
    // read_committed at the LSO: an empty answer; "latest" is the LSO.
    for offset in [lso, wire::OFFSET_LATEST] {
        let req = wire::FetchRequest {
            version: wire::VERSION_2,
            isolation: wire::IsolationLevel::ReadCommitted,
            ticket: &[],
            request_id: 10 + offset.unsigned_abs() as u32,
            ack_floor: 4,
            window: 1 << 20,
            max_wait_ms: 0,
            token: &retry.token,
            parts: vec![wire::PartRequest {
                offset,
                ..part.clone()
            }],
        };
        server.handle_datagram(now, me, &req.encode(0).unwrap());
        let d = server.poll_transmit(now).unwrap().to_vec();
        let (h, payload) = wire::DataHeader::decode(&d).unwrap();
        assert!(payload.is_empty() && h.is_last());
        assert_eq!((h.link_offset, h.resp_next_offset), (lso, lso));
    }
    // A version the gateway does not speak: UNSUPPORTED_VERSION in version 1.
    let mut v4 = probe.encode(wire::MIN_INITIAL_LEN).unwrap();
    v4[2] = 4;
    server.handle_datagram(now, me, &v4);
    let d = server.poll_transmit(now).unwrap().to_vec();
    assert_eq!(d[2], 1);
    assert_eq!(
        wire::ErrorMsg::decode(&d).unwrap().code,
        ErrorCode::UnsupportedVersion
    );
}
