//! ListOffsets v1-v7: earliest (-2) is the log start, latest (-1) the readable end (high
//! watermark or log end, per `--isolation`), a timestamp goes through the partition's time
//! index. Max-timestamp (-3, v7) is not served: that partition gets UNSUPPORTED_VERSION.
//! With READ_COMMITTED (v2+), latest is the last stable offset.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse};

use super::offset_for_leader_epoch::check_current_epoch;
use super::{Ctx, Leader};
use crate::kafka::chunk::{encode_response, Chunk, EncodeError};
use crate::kafka::stats::inc;
use crate::log::Partition;

/// Kafka's special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

/// `committed`: READ_COMMITTED (isolation level 1, v2+): latest is the last stable offset.
fn lookup(ctx: &Ctx, topic: &str, partition: i32, ts: i64, committed: bool) -> (i16, i64, i64) {
    match ctx.servable(topic, partition, Leader::Required) {
        Ok(p) => lookup_in(&p, ts, committed),
        Err(r) => (r.code(), -1, -1),
    }
}

fn lookup_in(p: &Partition, ts: i64, committed: bool) -> (i16, i64, i64) {
    let (topic, partition) = (p.topic(), p.partition());
    let offs = p.offsets();
    match ts {
        LATEST if committed => (0, -1, offs.last_stable),
        LATEST => (0, -1, p.readable_end()),
        EARLIEST => (0, -1, offs.log_start),
        ts if ts >= 0 => match p.offset_for_timestamp(ts) {
            Ok(Some((offset, found_ts))) => (0, found_ts, offset),
            Ok(None) => (0, -1, -1),
            Err(e) => {
                log::warn!("ListOffsets {topic}-{partition} timestamp {ts}: {e}");
                (ResponseError::UnknownServerError.code(), -1, -1)
            }
        },
        _ => (ResponseError::UnsupportedVersion.code(), -1, -1),
    }
}

/// One partition's answer (v1+): the offset, and the leader epoch of the batch holding it
/// (-1 when the partition has no epochs or nothing was found).
fn partition_answer(
    ctx: &Ctx,
    topic: &str,
    req: &ListOffsetsPartition,
    committed: bool,
) -> ListOffsetsPartitionResponse {
    let r = ListOffsetsPartitionResponse::default().with_partition_index(req.partition_index);
    let p = match ctx.servable(topic, req.partition_index, Leader::Required) {
        Ok(p) => p,
        Err(e) => {
            return r
                .with_error_code(e.code())
                .with_timestamp(-1)
                .with_offset(-1)
        }
    };
    let epochs = p.leader_epochs();
    if let Some(e) = check_current_epoch(req.current_leader_epoch, epochs.latest()) {
        return r
            .with_error_code(e.code())
            .with_timestamp(-1)
            .with_offset(-1);
    }
    let (error_code, timestamp, offset) = lookup_in(&p, req.timestamp, committed);
    let epoch = if offset < 0 {
        -1
    } else {
        epochs
            .0
            .iter()
            .rev()
            .find(|&&(_, start)| start <= offset)
            .map_or(-1, |&(e, _)| e)
    };
    r.with_error_code(error_code)
        .with_timestamp(timestamp)
        .with_offset(offset)
        .with_leader_epoch(epoch)
}

/// Answers one ListOffsets request.
pub fn handle(
    ctx: &Ctx,
    correlation_id: i32,
    version: i16,
    req: &ListOffsetsRequest,
) -> Result<Vec<Chunk>, EncodeError> {
    let committed = req.isolation_level == 1;
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let name = t.name.0.as_str();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = partition_answer(ctx, name, p, committed);
                    if version < 4 {
                        r.leader_epoch = -1; // the field exists from v4 on
                    }
                    if r.error_code != 0 {
                        inc(&ctx.stats.err_partition);
                    }
                    r
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let body = ListOffsetsResponse::default().with_topics(topics);
    encode_response(
        "ListOffsets",
        correlation_id,
        ApiKey::ListOffsets.response_header_version(version),
        &body,
        version,
        &[],
    )
}

/// ListOffsets v0, which the kafka-protocol crate no longer models (Kafka 4 dropped it):
/// decoded and encoded by hand. Request: replica_id, [topic name, [partition, timestamp,
/// max_num_offsets]]. Response: [topic name, [partition, error_code, [offset]]]. Latest and
/// earliest give one offset, as Kafka does; a timestamp gives the offset found through the
/// time index (Kafka's legacy answer lists segment base offsets by file mtime instead).
pub mod v0 {
    use bytes::{Buf, BufMut, Bytes, BytesMut};

    use super::{lookup, Ctx};
    use crate::kafka::chunk::Chunk;
    use crate::kafka::frame::{encode_response_into, RawBody};
    use crate::kafka::stats::inc;

    /// Why a v0 request does not decode.
    #[derive(Debug, thiserror::Error)]
    #[error("ListOffsets v0: {0}")]
    pub struct DecodeError(&'static str);

    struct Partition {
        index: i32,
        timestamp: i64,
        max_offsets: i32,
    }

    fn string(b: &mut Bytes) -> Result<String, DecodeError> {
        let len = b
            .try_get_i16()
            .map_err(|_| DecodeError("truncated name length"))?;
        let len = usize::try_from(len).map_err(|_| DecodeError("null topic name"))?;
        if b.remaining() < len {
            return Err(DecodeError("truncated topic name"));
        }
        String::from_utf8(b.split_to(len).to_vec()).map_err(|_| DecodeError("name not UTF-8"))
    }

    fn count(b: &mut Bytes, min_item: usize) -> Result<usize, DecodeError> {
        let n = b
            .try_get_i32()
            .map_err(|_| DecodeError("truncated array length"))?;
        let n = usize::try_from(n).map_err(|_| DecodeError("negative array length"))?;
        // Bound the allocation by what the frame can hold.
        if n.saturating_mul(min_item) > b.remaining() {
            return Err(DecodeError("array longer than the request"));
        }
        Ok(n)
    }

    #[allow(clippy::type_complexity)]
    fn decode(b: &mut Bytes) -> Result<Vec<(String, Vec<Partition>)>, DecodeError> {
        b.try_get_i32()
            .map_err(|_| DecodeError("truncated replica id"))?;
        let topics = count(b, 6)?;
        let mut out = Vec::with_capacity(topics);
        for _ in 0..topics {
            let name = string(b)?;
            let n = count(b, 16)?;
            let mut parts = Vec::with_capacity(n);
            for _ in 0..n {
                let index = b
                    .try_get_i32()
                    .map_err(|_| DecodeError("truncated partition"))?;
                let timestamp = b
                    .try_get_i64()
                    .map_err(|_| DecodeError("truncated timestamp"))?;
                let max_offsets = b.try_get_i32().map_err(|_| DecodeError("truncated max"))?;
                parts.push(Partition {
                    index,
                    timestamp,
                    max_offsets,
                });
            }
            out.push((name, parts));
        }
        Ok(out)
    }

    /// Answers one v0 request (body after the request header).
    pub fn handle(
        ctx: &Ctx,
        correlation_id: i32,
        body: &mut Bytes,
    ) -> Result<Vec<Chunk>, DecodeError> {
        let topics = decode(body)?;
        let mut out = BytesMut::new();
        out.put_i32(topics.len() as i32);
        for (name, parts) in &topics {
            out.put_i16(name.len() as i16);
            out.put_slice(name.as_bytes());
            out.put_i32(parts.len() as i32);
            for p in parts {
                let (code, _, offset) = lookup(ctx, name, p.index, p.timestamp, false);
                out.put_i32(p.index);
                out.put_i16(code);
                let found = code == 0 && offset >= 0 && p.max_offsets > 0;
                if code != 0 {
                    inc(&ctx.stats.err_partition);
                }
                if found {
                    out.put_i32(1);
                    out.put_i64(offset);
                } else {
                    out.put_i32(0);
                }
            }
        }
        let frame = encode_response_into(
            correlation_id,
            0,
            &RawBody(&out),
            0,
            BytesMut::with_capacity,
        )
        .map_err(|_| DecodeError("response larger than a frame"))?;
        Ok(vec![Chunk::Mem(frame.freeze())])
    }
}
