//! The watcher: one background thread per gateway learning from the cluster, over the Kafka
//! protocol, which partitions the local broker leads (Metadata from the bootstrap servers)
//! and their live high watermarks, last stable offsets and log start offsets: ListOffsets
//! (LATEST and EARLIEST) at start, then one long-poll Fetch to the local broker at the known
//! high watermark (`min_bytes` 1, short `max_wait`), which the broker answers as soon as the
//! watermark moves; each answer carries the log start offset too. Each change is fed into
//! the log, one answer as one batch ([`LogDir::live_updates`]), which wakes parked readers
//! once per batch.
//!
//! When the cluster cannot be reached the last known watermarks stay in force (the
//! checkpoint file, never ahead of them, takes over where it is newer); every failure is
//! logged (once per outage) and counted, and the watcher retries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, TopicName,
};

use super::{rewrite, ClusterView};
use crate::kafka::apis::sb;
use crate::kafka::client::Connection;
use crate::kafka::stats::inc;
use crate::log::{LiveUpdates, LogDir};

/// How long the broker may hold the watcher's fetch (an upper bound on how stale a
/// watermark can be is the broker's answer latency, not this).
const MAX_WAIT_MS: i32 = 500;
/// Metadata (leadership) is refreshed at least this often.
const METADATA_EVERY: Duration = Duration::from_secs(10);
/// Pause between attempts while the cluster is unreachable.
const RETRY: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The running watcher; dropping it stops the thread.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the watcher of `log`'s partitions.
pub fn spawn(view: Arc<ClusterView>, log: Arc<LogDir>) -> std::io::Result<Watcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("kxgw-upstream".into())
        .spawn(move || run(&view, &log, &s))?;
    Ok(Watcher {
        stop,
        thread: Some(thread),
    })
}

fn run(view: &ClusterView, log: &LogDir, stop: &AtomicBool) {
    let mut failing = false;
    while !stop.load(Ordering::SeqCst) {
        match session(view, log, stop) {
            Ok(()) => failing = false,
            Err(e) => {
                let was_live = view.is_live();
                view.set_live(false);
                inc(&view.stats.watch_errors);
                if was_live {
                    inc(&view.stats.outages);
                }
                if !failing {
                    log::warn!(
                        "upstream: {e:#}; serving up to the last known high watermarks \
                         (or the checkpoint file) until the cluster answers again"
                    );
                    failing = true;
                } else {
                    log::debug!("upstream: still failing: {e:#}");
                }
                let until = Instant::now() + RETRY;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// Learns leaders from the first bootstrap server that answers.
fn refresh_metadata(view: &ClusterView) -> Result<()> {
    let mut last = None;
    for addr in &view.config().upstream {
        let r = super::login::connect(view, addr).and_then(|mut c| {
            c.set_timeout(IO_TIMEOUT)?;
            c.call::<_, MetadataResponse>(
                ApiKey::Metadata,
                9,
                &MetadataRequest::default().with_topics(None),
            )
        });
        match r {
            Ok(mut m) => {
                rewrite::metadata(view, &mut m);
                inc(&view.stats.metadata_refreshes);
                return Ok(());
            }
            Err(e) => last = Some(e.context(format!("Metadata from {addr}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no --upstream servers")))
}

/// One watch session: metadata, ListOffsets, then long-poll fetches until something fails
/// or the metadata is due again (Ok: start over at once).
fn session(view: &ClusterView, log: &LogDir, stop: &AtomicBool) -> Result<()> {
    refresh_metadata(view)?;
    let held: Vec<(String, i32)> = log
        .partitions()
        .iter()
        .map(|p| (p.topic().to_string(), p.partition()))
        .collect();
    let parts = view.led_locally(&held);
    let started = Instant::now();
    if parts.is_empty() {
        view.set_live(true);
        while started.elapsed() < METADATA_EVERY && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        return Ok(());
    }
    let addr = view
        .local_broker()
        .context("the cluster's Metadata does not list this --node-id")?;
    let mut conn =
        super::login::connect(view, &addr).with_context(|| format!("local broker {addr}"))?;
    conn.set_timeout(IO_TIMEOUT)?;
    let mut hw = list_offsets(&mut conn, &parts, LATEST)
        .with_context(|| format!("ListOffsets LATEST to {addr}"))?;
    let starts = list_offsets(&mut conn, &parts, EARLIEST)
        .with_context(|| format!("ListOffsets EARLIEST to {addr}"))?;
    {
        let mut batch = log.live_updates();
        for ((t, p), h) in &hw {
            apply(view, &mut batch, t, *p, *h, -1);
        }
        for ((t, p), s) in &starts {
            apply_start(view, log, &mut batch, t, *p, *s);
        }
    }
    if !view.is_live() {
        inc(&view.stats.live_sessions);
    }
    view.set_live(true);
    log::info!(
        "upstream: live high watermarks of {} partitions from broker {} ({addr})",
        parts.len(),
        view.config().node_id
    );
    while started.elapsed() < METADATA_EVERY && !stop.load(Ordering::SeqCst) {
        let resp: FetchResponse = conn
            .call(ApiKey::Fetch, 11, &fetch_at(&hw))
            .with_context(|| format!("Fetch from {addr}"))?;
        // One answer, one batch of appends (announced when it drops, errors included).
        let mut batch = log.live_updates();
        for t in &resp.responses {
            for pd in &t.partitions {
                let key = (t.topic.0.to_string(), pd.partition_index);
                if pd.error_code != 0 {
                    bail!(
                        "{}-{}: error {} (leadership moved or the log changed)",
                        key.0,
                        key.1,
                        pd.error_code
                    );
                }
                if pd.log_start_offset >= 0 {
                    apply_start(view, log, &mut batch, &key.0, key.1, pd.log_start_offset);
                }
                if hw.get(&key) != Some(&pd.high_watermark) {
                    apply(
                        view,
                        &mut batch,
                        &key.0,
                        key.1,
                        pd.high_watermark,
                        pd.last_stable_offset,
                    );
                    hw.insert(key, pd.high_watermark);
                }
            }
        }
    }
    Ok(())
}

fn apply(view: &ClusterView, batch: &mut LiveUpdates<'_>, topic: &str, p: i32, hw: i64, lso: i64) {
    if batch.set_live_offsets(topic, p, hw, lso) {
        inc(&view.stats.hw_updates);
    }
}

/// The cluster's log start offset bounds local reads from below (a broker that deleted or
/// was asked to delete old records answers OFFSET_OUT_OF_RANGE there, and so does the gateway,
/// even while the local disk still holds those segments).
fn apply_start(
    view: &ClusterView,
    log: &LogDir,
    batch: &mut LiveUpdates<'_>,
    topic: &str,
    p: i32,
    start: i64,
) {
    let known = log.partition(topic, p).map(|q| q.offsets().log_start);
    if batch.set_live_start(topic, p, start) {
        inc(&view.stats.log_start_updates);
        let now = log.partition(topic, p).map(|q| q.offsets().log_start);
        if now != known {
            log::info!("upstream: {topic}-{p}: log start offset {start} from the cluster");
        }
    }
}

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

fn list_offsets(
    conn: &mut Connection,
    parts: &[(String, i32)],
    timestamp: i64,
) -> Result<HashMap<(String, i32), i64>> {
    let mut by_topic: HashMap<&str, Vec<i32>> = HashMap::new();
    for (t, p) in parts {
        by_topic.entry(t).or_default().push(*p);
    }
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(
            by_topic
                .iter()
                .map(|(t, ps)| {
                    ListOffsetsTopic::default()
                        .with_name(TopicName(sb(t)))
                        .with_partitions(
                            ps.iter()
                                .map(|&p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p)
                                        .with_current_leader_epoch(-1)
                                        .with_timestamp(timestamp)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let resp: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 4, &req)?;
    let mut out = HashMap::new();
    for t in &resp.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                bail!("{}-{}: error {}", t.name.0, p.partition_index, p.error_code);
            }
            out.insert((t.name.0.to_string(), p.partition_index), p.offset);
        }
    }
    Ok(out)
}

/// A fetch at each partition's known high watermark: answered when one moves.
fn fetch_at(hw: &HashMap<(String, i32), i64>) -> FetchRequest {
    let mut by_topic: HashMap<&str, Vec<FetchPartition>> = HashMap::new();
    for ((t, p), &off) in hw {
        by_topic.entry(t).or_default().push(
            FetchPartition::default()
                .with_partition(*p)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(off)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1),
        );
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(1)
        .with_isolation_level(0)
        .with_session_epoch(-1)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    FetchTopic::default()
                        .with_topic(TopicName(sb(t)))
                        .with_partitions(ps)
                })
                .collect(),
        )
}
