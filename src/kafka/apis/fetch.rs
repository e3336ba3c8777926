//! Fetch v4-v16 (v13+ address topics by id). Sessionless: every request is a full fetch
//! and responses carry session id 0, which clients take as "no incremental session"; an
//! incremental request (non-zero session id) gets FETCH_SESSION_ID_NOT_FOUND.
//!
//! Record bytes are never copied here: each non-empty partition becomes a [`Hole`] whose
//! placeholder views the segment mapping and whose range is the segment file position.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::FetchPartition;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName,
};

use super::offset_for_leader_epoch::check_current_epoch;
use super::{sb, Ctx, Leader, Refusal};
use crate::kafka::chunk::{encode_response, Chunk, EncodeError, FileRange, Hole};
use crate::kafka::stats::inc;
use crate::log::tail_trace::Via;
use crate::log::{LogError, Partition, ReadSlice};

/// Result of evaluating a fetch against the log as it is now.
pub enum Outcome {
    /// Send this response.
    Respond(Vec<Chunk>),
    /// Not enough bytes for `min_bytes` yet and the deadline has not passed: wait.
    Wait,
}

/// The partitions a fetch reads, by topic name (what a waiting fetch is woken for).
pub fn wanted(ctx: &Ctx, req: &FetchRequest, version: i16) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in &req.topics {
        let name = if version >= 13 {
            ctx.topic_by_id(t.topic_id)
        } else {
            Some(t.topic.0.to_string())
        };
        if let Some(name) = name {
            out.extend(t.partitions.iter().map(|p| (name.clone(), p.partition)));
        }
    }
    out
}

/// Keeps a read slice mapped while its placeholder is alive.
struct MappedRecords(ReadSlice);

impl AsRef<[u8]> for MappedRecords {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

fn hole(slice: &ReadSlice) -> Hole {
    Hole {
        placeholder: Bytes::from_owner(MappedRecords(slice.clone())),
        range: FileRange {
            file: Arc::clone(&slice.file),
            position: slice.position,
            len: slice.len,
        },
    }
}

fn error_partition(index: i32, code: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(code)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_records(Some(Bytes::new()))
}

/// How long a fetch has waited so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// It just arrived.
    No,
    /// It was parked and is evaluated again (the log grew, or a busy loop's turn).
    Parked,
    /// Its `max_wait_ms` elapsed: it is answered whatever it finds.
    Expired,
}

/// Reads every requested partition and answers if `min_bytes` is met, an error must be
/// reported, or the fetch's wait expired. Kafka's size rules: `partition_max_bytes` per
/// partition, `max_bytes` overall, but the first batch of the first non-empty partition is
/// returned whole even if larger, so a consumer can always make progress. An answer with
/// records goes into the log dir's tail trace ([`crate::log::tail_trace`]).
pub fn evaluate(
    ctx: &Ctx,
    correlation_id: i32,
    version: i16,
    req: &FetchRequest,
    waited: Waited,
) -> Result<Outcome, EncodeError> {
    let expired = waited == Waited::Expired;
    let mut body = FetchResponse::default();
    if req.session_id != 0 {
        body.error_code = ResponseError::FetchSessionIdNotFound.code();
        inc(&ctx.stats.err_partition);
        return respond(correlation_id, version, &body, &[]).map(Outcome::Respond);
    }
    let mut acc = Gathered {
        holes: Vec::new(),
        served: Vec::new(),
        total: 0,
        any_error: false,
        max_bytes: usize::try_from(req.max_bytes).unwrap_or(0),
        // READ_COMMITTED: bounded by the last stable offset, with the aborted transactions.
        committed: req.isolation_level == 1,
    };
    for t in &req.topics {
        let name = if version >= 13 {
            ctx.topic_by_id(t.topic_id)
        } else {
            Some(t.topic.0.to_string())
        };
        let mut parts = Vec::with_capacity(t.partitions.len());
        for fp in &t.partitions {
            let pd = fetch_partition(ctx, version, name.as_deref(), fp, &mut acc, &mut body);
            parts.push(pd);
        }
        let mut tr = FetchableTopicResponse::default().with_partitions(parts);
        if version >= 13 {
            tr.topic_id = t.topic_id;
        } else {
            tr.topic = TopicName(sb(name.as_deref().unwrap_or_default()));
        }
        body.responses.push(tr);
    }
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
    let no_partitions = req.topics.iter().all(|t| t.partitions.is_empty());
    let ready =
        expired || acc.any_error || no_partitions || req.max_wait_ms <= 0 || acc.total >= min_bytes;
    if !ready {
        return Ok(Outcome::Wait);
    }
    if acc.any_error {
        for tr in &body.responses {
            for pd in &tr.partitions {
                if pd.error_code != 0 {
                    inc(&ctx.stats.err_partition);
                }
            }
        }
    }
    let chunks = respond(correlation_id, version, &body, &acc.holes)?;
    // Queued now and written in the same loop turn: the time the reply leaves.
    let sent = crate::log::tail::clock_ns();
    let parked = waited != Waited::No;
    for (p, from, to) in &acc.served {
        let tp = (p.topic(), p.partition());
        ctx.log
            .tail_trace()
            .reply(tp, Via::Kafka, (*from, *to), sent, parked);
    }
    Ok(Outcome::Respond(chunks))
}

/// What a fetch has gathered so far, across its partitions.
struct Gathered {
    /// The record ranges, in response order.
    holes: Vec<Hole>,
    /// Per partition with records: its first offset asked for and the end of what it got.
    served: Vec<(Arc<Partition>, i64, i64)>,
    /// Their total size.
    total: usize,
    /// Whether some partition carries an error (then the fetch answers at once).
    any_error: bool,
    /// The request's `max_bytes`.
    max_bytes: usize,
    /// READ_COMMITTED.
    committed: bool,
}

/// One partition of a fetch of topic `name` (None: an unknown topic id).
fn fetch_partition(
    ctx: &Ctx,
    version: i16,
    name: Option<&str>,
    fp: &FetchPartition,
    acc: &mut Gathered,
    body: &mut FetchResponse,
) -> PartitionData {
    let Some(name) = name else {
        acc.any_error = true;
        return error_partition(fp.partition, ResponseError::UnknownTopicId.code());
    };
    let p = match ctx.servable(name, fp.partition, Leader::Required) {
        Ok(p) => p,
        Err(r) => {
            acc.any_error = true;
            return refused_partition(version, fp.partition, r, body);
        }
    };
    let epoch = p.leader_epoch();
    if let Some(e) = check_current_epoch(fp.current_leader_epoch, epoch) {
        acc.any_error = true;
        return error_partition(fp.partition, e.code());
    }
    let remaining = acc.max_bytes.saturating_sub(acc.total);
    let limit = usize::try_from(fp.partition_max_bytes)
        .unwrap_or(0)
        .min(if acc.total == 0 {
            acc.max_bytes.max(1)
        } else {
            remaining
        });
    let mut pd = PartitionData::default()
        .with_partition_index(fp.partition)
        .with_aborted_transactions(acc.committed.then(Vec::new))
        .with_records(Some(Bytes::new()));
    if version >= 12 && epoch >= 0 {
        pd.current_leader = LeaderIdAndEpoch::default()
            .with_leader_id(BrokerId(ctx.node.node_id))
            .with_leader_epoch(epoch);
    }
    let offs = if limit == 0 {
        p.offsets()
    } else {
        match p.read_isolated(fp.fetch_offset, limit, acc.committed) {
            Ok(slice) => {
                // Past the first non-empty partition, a batch must fit what is left.
                if !slice.is_empty() && (acc.total == 0 || slice.len <= remaining) {
                    if acc.committed {
                        pd.aborted_transactions = Some(aborted_list(
                            &p.aborted_txns(fp.fetch_offset, slice.next_offset),
                        ));
                    }
                    acc.total += slice.len;
                    acc.served
                        .push((Arc::clone(&p), fp.fetch_offset, slice.next_offset));
                    let h = hole(&slice);
                    pd.records = Some(h.placeholder.clone());
                    acc.holes.push(h);
                }
                slice.offsets
            }
            Err(e) => {
                acc.any_error = true;
                pd.error_code = read_error_code(name, fp.partition, &e);
                p.offsets()
            }
        }
    };
    let end = offs.readable_end(ctx.log.isolation());
    pd.high_watermark = end;
    pd.last_stable_offset = offs.last_stable;
    pd.log_start_offset = offs.log_start;
    pd
}

/// A partition [`Ctx::servable`] refused. Not ours to serve: the client refreshes its
/// metadata and goes to the leader (v12+ name it, v16+ say where it is).
fn refused_partition(
    version: i16,
    partition: i32,
    refusal: Refusal,
    body: &mut FetchResponse,
) -> PartitionData {
    let mut pd = error_partition(partition, refusal.code());
    let Refusal::NotLeader(e) = refusal else {
        return pd;
    };
    if version >= 12 {
        pd.current_leader = LeaderIdAndEpoch::default()
            .with_leader_id(BrokerId(e.leader))
            .with_leader_epoch(e.epoch);
    }
    if let Some(b) = e.endpoint.filter(|_| version >= 16) {
        if !body.node_endpoints.iter().any(|n| n.node_id.0 == b.id) {
            body.node_endpoints.push(
                NodeEndpoint::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(sb(&b.host))
                    .with_port(b.port),
            );
        }
    }
    pd
}

/// The partition error for a failed log read.
fn read_error_code(name: &str, partition: i32, e: &LogError) -> i16 {
    match e {
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        LogError::Corrupt { .. } => {
            log::warn!("Fetch {name}-{partition}: {e}");
            ResponseError::CorruptMessage.code()
        }
        // A segment truncated under the reader: retriable, as a broker answers a failed log
        // read; the next refresh sees the new end.
        LogError::Io { .. } => {
            log::warn!("Fetch {name}-{partition}: {e}");
            ResponseError::KafkaStorageError.code()
        }
        _ => {
            log::warn!("Fetch {name}-{partition}: {e}");
            ResponseError::UnknownServerError.code()
        }
    }
}

fn aborted_list(txns: &[(i64, i64)]) -> Vec<AbortedTransaction> {
    txns.iter()
        .map(|&(pid, first)| {
            AbortedTransaction::default()
                .with_producer_id(ProducerId(pid))
                .with_first_offset(first)
        })
        .collect()
}

fn respond(
    correlation_id: i32,
    version: i16,
    body: &FetchResponse,
    holes: &[Hole],
) -> Result<Vec<Chunk>, EncodeError> {
    encode_response(
        "Fetch",
        correlation_id,
        ApiKey::Fetch.response_header_version(version),
        body,
        version,
        holes,
    )
}
