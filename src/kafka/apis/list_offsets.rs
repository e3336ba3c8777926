//! ListOffsets v1-v7: earliest (-2) is the log start, latest (-1) the readable end (high
//! watermark or log end, per `--isolation`), a timestamp goes through the partition's time
//! index. Max-timestamp (-3, v7) is not served: that partition gets UNSUPPORTED_VERSION.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse};

use super::Ctx;
use crate::kafka::chunk::{encode_response, Chunk, EncodeError};
use crate::kafka::stats::inc;

/// Kafka's special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

fn lookup(ctx: &Ctx, topic: &str, partition: i32, ts: i64) -> (i16, i64, i64) {
    let Some(p) = ctx.log.partition(topic, partition) else {
        return (ResponseError::UnknownTopicOrPartition.code(), -1, -1);
    };
    let offs = p.offsets();
    match ts {
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

/// Answers one ListOffsets request.
pub fn handle(
    ctx: &Ctx,
    correlation_id: i32,
    version: i16,
    req: &ListOffsetsRequest,
) -> Result<Vec<Chunk>, EncodeError> {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let name = t.name.0.as_str();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let (error_code, timestamp, offset) =
                        lookup(ctx, name, p.partition_index, p.timestamp);
                    if error_code != 0 {
                        inc(&ctx.stats.err_partition);
                    }
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error_code)
                        .with_timestamp(timestamp)
                        .with_offset(offset)
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
