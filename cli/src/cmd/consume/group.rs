//! `kxgw consume --group G`: a member of consumer group G. Membership, offsets and
//! rebalances go through the coordinator of the Kafka listener (`--bootstrap`), driven by
//! the sans-I/O [`GroupMember`]; the records of the assigned partitions come over the UDP
//! fetch protocol (`--fetch`), one UDP consumer per generation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use kxgw::fetch::consumer::UdpConsumer;
use kxgw::fetch::{Event, StartAt, Subscription};
use kxgw::kafka::client::Connection;
use kxgw::kafka::group_member::{find_coordinator, GroupMember, MemberConfig, MemberEvent, Tp};

use super::{Args, Sink};

const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(30);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the member until it left the group (Ctrl-C, --count, or without --follow once its
/// partitions are read to their end). Returns the transport and loss-recovery summaries.
pub(super) fn run(
    args: &Args,
    group: &str,
    sink: &mut Sink<'_>,
    stop: &AtomicBool,
) -> Result<(String, String)> {
    let (Some(fetch), Some(bootstrap)) = (args.fetch, args.bootstrap.as_deref()) else {
        bail!("--group needs --fetch ADDR (records) and --bootstrap HOST:PORT (the coordinator)");
    };
    let mut conn = Connection::connect(bootstrap, "kxgw-consume")
        .with_context(|| format!("connecting to the Kafka listener {bootstrap}"))?;
    let coordinator = find_coordinator(&mut conn, group)?;
    if coordinator != bootstrap {
        conn = Connection::connect(&coordinator, "kxgw-consume")
            .with_context(|| format!("connecting to the coordinator {coordinator} of {group}"))?;
    }
    // A JoinGroup is answered when the rebalance completes: up to the rebalance timeout.
    conn.set_timeout(REBALANCE_TIMEOUT + Duration::from_secs(5))?;
    let cfg = MemberConfig {
        group: group.to_string(),
        topics: vec![args.topic.clone()],
        session_timeout: SESSION_TIMEOUT,
        rebalance_timeout: REBALANCE_TIMEOUT,
        heartbeat_interval: HEARTBEAT_INTERVAL,
        commit_interval: COMMIT_INTERVAL,
    };
    let mut member = GroupMember::new(cfg, Instant::now());
    let mut udp: Option<UdpConsumer> = None;
    let mut stats = (0u64, 0u64, 0u64);
    while !member.is_done() {
        if stop.load(Ordering::Relaxed) || sink.done() {
            member.leave();
        }
        while let Some(req) = member.poll_request(Instant::now()) {
            let resp = req
                .call(&mut conn)
                .with_context(|| format!("talking to the coordinator {coordinator}"))?;
            member.handle_response(resp, Instant::now())?;
        }
        while let Some(ev) = member.poll_event() {
            match ev {
                MemberEvent::Assigned(parts) => {
                    udp = assigned(args, group, member.generation(), fetch, parts)?;
                }
                MemberEvent::Revoked => {
                    if let Some(u) = udp.take() {
                        let st = u.client().stats();
                        stats.0 += st.refetches;
                        stats.1 += st.timeouts;
                        stats.2 += st.crc_errors;
                    }
                }
                MemberEvent::Left => {}
            }
        }
        if member.is_done() {
            break;
        }
        let wait = member
            .poll_timeout()
            .map_or(Duration::from_millis(50), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(50));
        match udp.as_mut() {
            Some(u) if member.is_active() => {
                if read(args, u, sink, &mut member, fetch, wait)? {
                    member.leave();
                }
            }
            // Nothing assigned: without --follow there is nothing to wait for.
            None if member.is_active() && !args.follow => member.leave(),
            _ => std::thread::sleep(wait),
        }
        if args.follow {
            std::io::Write::flush(&mut sink.out)?;
        }
    }
    Ok((
        format!(
            "kxgw UDP fetch {fetch}, member of group {group} via {coordinator} ({} rebalances)",
            member.rebalances
        ),
        format!(
            "loss recovered: {} re-fetches, {} timeouts, {} CRC errors",
            stats.0, stats.1, stats.2
        ),
    ))
}

/// A new assignment: a UDP consumer of its partitions from the committed offsets.
fn assigned(
    args: &Args,
    group: &str,
    generation: i32,
    fetch: std::net::SocketAddr,
    parts: Vec<(Tp, Option<i64>)>,
) -> Result<Option<UdpConsumer>> {
    let names: Vec<String> = parts
        .iter()
        .map(|((t, p), at)| match at {
            Some(o) => format!("{t}-{p}@{o}"),
            None => format!("{t}-{p}"),
        })
        .collect();
    eprintln!(
        "kxgw consume: group {group} generation {generation}: assigned [{}]",
        names.join(", ")
    );
    if parts.is_empty() {
        return Ok(None);
    }
    // No committed offset: start where --from-beginning / --from-end say.
    let reset = if args.from_end {
        StartAt::Latest
    } else {
        StartAt::Earliest
    };
    let subs = parts
        .into_iter()
        .map(|((topic, partition), at)| Subscription {
            topic,
            partition,
            start: at.map_or(reset, StartAt::Offset),
        })
        .collect();
    let u = UdpConsumer::connect(fetch, super::client_config(args), subs)
        .with_context(|| format!("opening a UDP socket toward {fetch}"))?;
    Ok(Some(u))
}

/// One round of UDP fetching; Ok(true) when the member should leave (read to the end
/// without --follow, --count reached, or a partition failed).
fn read(
    args: &Args,
    u: &mut UdpConsumer,
    sink: &mut Sink<'_>,
    member: &mut GroupMember,
    fetch: std::net::SocketAddr,
    wait: Duration,
) -> Result<bool> {
    u.poll(wait)
        .with_context(|| format!("fetching from {fetch}"))?;
    while let Some(ev) = u.next_event() {
        match ev {
            Event::Batch(b) => {
                sink.batch(b.partition, b.from_offset, &b.data)?;
                if let Some(&next) = sink.tally.next_of.get(&b.partition) {
                    member.consumed(&(args.topic.clone(), b.partition), next);
                }
                u.recycle(b.data);
            }
            Event::OffsetReset { from, to, sub } => {
                eprintln!("kxgw consume: offset {from} out of range (subscription {sub}), continuing at {to}");
            }
            Event::PartitionError {
                code,
                log_start,
                log_end,
                sub,
            } => {
                sink.error(format!(
                    "{} subscription {sub}: {code} (log start {log_start}, end {log_end})",
                    args.topic
                ));
                return Ok(true);
            }
            Event::Unreachable => bail!(
                "the fetch endpoint {fetch} did not answer within {} ms",
                args.connect_timeout_ms
            ),
            Event::Connected | Event::CaughtUp { .. } => {}
        }
        if sink.done() {
            return Ok(true);
        }
    }
    Ok(u.client().is_finished())
}
