//! `kxgw consume --discover --bootstrap HOST:PORT[,...]`: a topic read over UDP across a
//! cluster of gateways. Metadata at the bootstrap names each partition's leader and the
//! leader's gateway; that gateway's own Metadata answer carries its fetch endpoint (a tagged
//! field, `kxgw::kafka::fetch_advert`); each partition is then fetched from there, one UDP
//! consumer per endpoint. A partition the endpoint does not know, or an endpoint that stops
//! answering, sends the client back to Metadata (a few times, then it gives up).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kxgw::fetch::consumer::UdpConsumer;
use kxgw::fetch::wire::ErrorCode;
use kxgw::fetch::{Event, StartAt, Subscription};
use kxgw::kafka::client::Connection;
use kxgw::kafka::fetch_advert::{ask_layout, FetchAdvert, TopicLayout};

use super::{Args, Sink};

/// Times one partition may send the client back to Metadata before it gives up.
const MAX_REFRESHES: u32 = 5;
/// Pause before asking Metadata again after an error (leadership takes a moment to move).
const REFRESH_BACKOFF: Duration = Duration::from_millis(300);

/// Partitions of the topic fetched from one gateway's fetch endpoint.
struct Route {
    advert: FetchAdvert,
    addr: SocketAddr,
    /// Subscription index -> partition.
    parts: Vec<i32>,
    udp: UdpConsumer,
}

/// Where each wanted partition is to be fetched: (advert, resolved address, partitions).
type Plan = Vec<(FetchAdvert, SocketAddr, Vec<i32>)>;

/// Runs until every partition is read to its end (or --count, Ctrl-C); returns the
/// transport and loss-recovery summaries.
pub(super) fn run(
    args: &Args,
    start: StartAt,
    sink: &mut Sink<'_>,
    stop: &AtomicBool,
) -> Result<(String, String)> {
    let boots: Vec<String> = args
        .bootstrap
        .iter()
        .flat_map(|b| b.split(','))
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    let wanted = (!args.partitions.is_empty()).then(|| args.partitions.clone());
    let mut plan = Some(resolve(&boots, &args.topic, wanted.as_deref())?);
    let mut routes: Vec<Route> = Vec::new();
    let mut tries: BTreeMap<i32, u32> = BTreeMap::new();
    let mut used: Vec<String> = Vec::new();
    let mut recovery = Recovery::default();
    while !stop.load(Ordering::Relaxed) && !sink.done() {
        if let Some(plan) = plan.take() {
            for (advert, addr, parts) in plan {
                let line = format!("node {} {} {parts:?}", advert.node_id, advert.endpoint);
                if !used.contains(&line) {
                    used.push(line);
                }
                routes.push(open_route(args, start, sink, advert, addr, parts)?);
            }
        }
        if routes.is_empty() {
            break;
        }
        let wait = Duration::from_millis((50 / routes.len() as u64).max(1));
        let mut back = Vec::new();
        for r in &mut routes {
            back.extend(poll_route(r, sink, wait)?);
            if sink.done() {
                break;
            }
        }
        if args.follow {
            std::io::Write::flush(&mut sink.out)?;
        }
        // Routes done: read to their end, or every partition sent back to Metadata.
        routes.retain(|r| {
            let done = r.udp.client().is_finished();
            if done {
                recovery.add(&r.udp);
            }
            !done
        });
        if !back.is_empty() {
            plan = Some(refresh(&boots, &args.topic, back, &mut tries)?);
        }
    }
    for r in &routes {
        recovery.add(&r.udp);
    }
    Ok((
        format!(
            "kxgw UDP fetch from the endpoints advertised through {} ({})",
            boots.join(","),
            used.join("; ")
        ),
        format!(
            "loss recovered: {} re-fetches, {} timeouts, {} CRC errors",
            recovery.refetches, recovery.timeouts, recovery.crc_errors
        ),
    ))
}

/// Loss-recovery counts summed over the routes' consumers.
#[derive(Default)]
struct Recovery {
    refetches: u64,
    timeouts: u64,
    crc_errors: u64,
}

impl Recovery {
    fn add(&mut self, udp: &UdpConsumer) {
        let st = udp.client().stats();
        self.refetches += st.refetches;
        self.timeouts += st.timeouts;
        self.crc_errors += st.crc_errors;
    }
}

/// A UDP consumer of `parts` at `addr`, each from where the sink left it (else `start`).
fn open_route(
    args: &Args,
    start: StartAt,
    sink: &Sink<'_>,
    advert: FetchAdvert,
    addr: SocketAddr,
    parts: Vec<i32>,
) -> Result<Route> {
    let subs = parts
        .iter()
        .map(|&p| Subscription {
            topic: args.topic.clone(),
            partition: p,
            start: sink
                .tally
                .next_of
                .get(&p)
                .map_or(start, |&o| StartAt::Offset(o)),
        })
        .collect();
    let udp = UdpConsumer::connect(addr, super::client_config(args), subs)
        .with_context(|| format!("opening a UDP socket toward {addr}"))?;
    eprintln!(
        "kxgw consume: partitions {parts:?} of {} from node {}'s fetch endpoint {}",
        args.topic, advert.node_id, advert.endpoint
    );
    Ok(Route {
        advert,
        addr,
        parts,
        udp,
    })
}

/// Looks `parts` up again after an error, after a pause; Metadata that fails (or names no
/// leader yet) is asked again. Every try counts against each partition's budget.
fn refresh(
    boots: &[String],
    topic: &str,
    parts: Vec<i32>,
    tries: &mut BTreeMap<i32, u32>,
) -> Result<Plan> {
    loop {
        for &p in &parts {
            let n = tries.entry(p).or_default();
            *n += 1;
            if *n > MAX_REFRESHES {
                bail!("{topic}-{p}: no fetch endpoint would serve it after {MAX_REFRESHES} Metadata refreshes");
            }
        }
        std::thread::sleep(REFRESH_BACKOFF);
        match resolve(boots, topic, Some(&parts)) {
            Ok(plan) => return Ok(plan),
            Err(e) => eprintln!("kxgw consume: {e:#}; asking again"),
        }
    }
}

/// One poll of a route's consumer; returns the partitions to look up again.
fn poll_route(r: &mut Route, sink: &mut Sink<'_>, wait: Duration) -> Result<Vec<i32>> {
    let args: &Args = sink.args;
    let topic = &args.topic;
    r.udp
        .poll(wait)
        .with_context(|| format!("fetching from {}", r.addr))?;
    let mut back = Vec::new();
    while let Some(ev) = r.udp.next_event() {
        match ev {
            Event::Batch(b) => {
                sink.batch(b.partition, b.from_offset, &b.data)?;
                r.udp.recycle(b.data);
            }
            Event::PartitionError {
                sub,
                code: ErrorCode::UnknownTopicOrPartition,
                ..
            } => {
                let p = r.parts.get(sub).copied().unwrap_or(-1);
                eprintln!(
                    "kxgw consume: {topic}-{p} unknown at {} (node {}): asking Metadata again",
                    r.advert.endpoint, r.advert.node_id
                );
                back.push(p);
            }
            Event::PartitionError {
                sub,
                code,
                log_start,
                log_end,
            } => {
                let p = r.parts.get(sub).copied().unwrap_or(-1);
                sink.error(format!(
                    "{topic}-{p} at {}: {code} (log start {log_start}, end {log_end})",
                    r.advert.endpoint
                ));
            }
            Event::Unreachable => {
                eprintln!(
                    "kxgw consume: the fetch endpoint {} (node {}) did not answer: asking Metadata again",
                    r.advert.endpoint, r.advert.node_id
                );
                // The handshake failed: nothing of this route was read.
                back.extend(r.parts.iter().copied());
            }
            Event::OffsetReset { from, to, sub } => {
                let p = r.parts.get(sub).copied().unwrap_or(-1);
                eprintln!(
                    "kxgw consume: {topic}-{p}: offset {from} out of range, continuing at {to}"
                );
            }
            Event::Connected | Event::CaughtUp { .. } => {}
        }
        if sink.done() {
            break;
        }
    }
    Ok(back)
}

/// The Metadata answer of the first bootstrap server that gives one.
fn bootstrap_layout(boots: &[String], topic: &str) -> Result<(String, TopicLayout)> {
    let mut last = anyhow!("no --bootstrap server given");
    for b in boots {
        match metadata(b, Some(topic)) {
            Ok(l) if !l.leaders.is_empty() => return Ok((b.clone(), l)),
            Ok(_) => last = anyhow!("{b}: Metadata names no partition of topic {topic:?}"),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Leaders of the wanted partitions (all without a list) grouped by the fetch endpoint
/// their gateways advertise.
fn resolve(boots: &[String], topic: &str, wanted: Option<&[i32]>) -> Result<Plan> {
    let (boot, l) = bootstrap_layout(boots, topic)?;
    let parts: Vec<i32> = match wanted {
        Some(w) => w.to_vec(),
        None => l.leaders.keys().copied().collect(),
    };
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in parts {
        match l.leaders.get(&p) {
            Some(&leader) if leader >= 0 => by_leader.entry(leader).or_default().push(p),
            Some(_) => bail!("{topic}-{p}: no leader right now (Metadata at {boot})"),
            None => bail!("{topic}-{p}: no such partition (Metadata at {boot})"),
        }
    }
    let mut plan = Vec::new();
    for (leader, parts) in by_leader {
        let advert = match &l.advert {
            Some(a) if a.node_id == leader => a.clone(),
            _ => {
                let gw = l.brokers.get(&leader).ok_or_else(|| {
                    anyhow!("Metadata at {boot} names leader {leader} but not its address")
                })?;
                leader_advert(&gw.addr(), leader)?
            }
        };
        let addr = (advert.endpoint.host.as_str(), advert.endpoint.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving fetch endpoint {}", advert.endpoint))?
            .next()
            .with_context(|| format!("fetch endpoint {} has no address", advert.endpoint))?;
        plan.push((advert, addr, parts));
    }
    Ok(plan)
}

/// The fetch endpoint the gateway at `gw` (leader `leader`'s, as Metadata says) advertises.
fn leader_advert(gw: &str, leader: i32) -> Result<FetchAdvert> {
    let l = metadata(gw, None)?;
    match l.advert {
        Some(a) if a.node_id == leader => Ok(a),
        Some(a) => bail!(
            "{gw} is named as node {leader}'s gateway but advertises node {}'s fetch endpoint {} \
             (its --node-id or the --peer map is off)",
            a.node_id,
            a.endpoint
        ),
        None => bail!(
            "{gw} (node {leader}) advertises no fetch endpoint in Metadata: serve it with \
             --fetch-listen (or --fetch-advertise), or read without --discover"
        ),
    }
}

/// One Metadata exchange with `addr`: for `topic`, or for no topic (the advertisement).
fn metadata(addr: &str, topic: Option<&str>) -> Result<TopicLayout> {
    let mut conn = Connection::connect(addr, "kxgw-consume")
        .with_context(|| format!("connecting to the Kafka listener {addr}"))?;
    conn.set_timeout(Duration::from_secs(10))?;
    ask_layout(&mut conn, topic).with_context(|| format!("Metadata from {addr}"))
}
