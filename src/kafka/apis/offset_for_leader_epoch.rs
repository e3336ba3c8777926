//! OffsetForLeaderEpoch v2-v4 (API 23), answered from the partition's
//! `leader-epoch-checkpoint` with the broker's rule (see [`LeaderEpochs::end_offset_for`]):
//! consumers (librdkafka, the Java client) use it to detect log truncation after a leader
//! change. A `current_leader_epoch` older than the partition's gets FENCED_LEADER_EPOCH, a
//! newer one UNKNOWN_LEADER_EPOCH, as a broker answers.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{ApiKey, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::{Ctx, Leader};
use crate::kafka::chunk::{encode_response, Chunk, EncodeError};
use crate::kafka::stats::inc;
use crate::log::leader_epoch::UNDEFINED;

/// The error a request's `current_leader_epoch` gets against the partition's `current`
/// epoch (-1 in the request, or a partition without epochs: not checked).
pub fn check_current_epoch(requested: i32, current: i32) -> Option<ResponseError> {
    if requested < 0 || current < 0 || requested == current {
        None
    } else if requested < current {
        Some(ResponseError::FencedLeaderEpoch)
    } else {
        Some(ResponseError::UnknownLeaderEpoch)
    }
}

fn answer(ctx: &Ctx, topic: &str, partition: i32, current: i32, wanted: i32) -> EpochEndOffset {
    let r = EpochEndOffset::default().with_partition(partition);
    // Answered from the local checkpoint without asking who leads the partition.
    let p = match ctx.servable(topic, partition, Leader::NotChecked) {
        Ok(p) => p,
        Err(e) => {
            return r
                .with_error_code(e.code())
                .with_leader_epoch(UNDEFINED.0)
                .with_end_offset(UNDEFINED.1)
        }
    };
    let epochs = p.leader_epochs();
    if let Some(e) = check_current_epoch(current, epochs.latest()) {
        return r
            .with_error_code(e.code())
            .with_leader_epoch(UNDEFINED.0)
            .with_end_offset(UNDEFINED.1);
    }
    let (epoch, end) = epochs.end_offset_for(wanted, p.offsets().log_end);
    r.with_leader_epoch(epoch).with_end_offset(end)
}

/// Answers one OffsetForLeaderEpoch request.
pub fn handle(
    ctx: &Ctx,
    correlation_id: i32,
    version: i16,
    req: &OffsetForLeaderEpochRequest,
) -> Result<Vec<Chunk>, EncodeError> {
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let r = answer(
                        ctx,
                        t.topic.0.as_str(),
                        p.partition,
                        p.current_leader_epoch,
                        p.leader_epoch,
                    );
                    if r.error_code != 0 {
                        inc(&ctx.stats.err_partition);
                    }
                    r
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    let body = OffsetForLeaderEpochResponse::default().with_topics(topics);
    encode_response(
        "OffsetForLeaderEpoch",
        correlation_id,
        ApiKey::OffsetForLeaderEpoch.response_header_version(version),
        &body,
        version,
        &[],
    )
}

#[cfg(test)]
mod tests;
