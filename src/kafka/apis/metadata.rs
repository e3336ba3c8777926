//! Metadata v0-v12: the gateway is the only broker (node 0, the advertised host/port) and
//! leads every partition it serves; or, playing one broker of a static cluster (`--node-id`,
//! `--peer`), every broker holds a replica and partition `p` is led by the `p mod n`-th. Topics are the log directory's; unknown names get
//! UNKNOWN_TOPIC_OR_PARTITION, unknown ids UNKNOWN_TOPIC_ID. Nothing is ever created.
//! From v9 the response carries the gateway's fetch endpoint ([`fetch_advert`]).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse, TopicName};
use uuid::Uuid;

use super::{sb, Ctx};
use crate::kafka::chunk::{encode_response, Chunk, EncodeError};
use crate::kafka::fetch_advert::{self, FetchAdvert};
use crate::kafka::stats::inc;

fn topic_entry(ctx: &Ctx, version: i16, name: &str, partitions: &[i32]) -> MetadataResponseTopic {
    let brokers: Vec<BrokerId> = ctx.node.brokers().iter().map(|b| BrokerId(b.id)).collect();
    let parts = partitions
        .iter()
        .map(|&p| {
            // Leader epochs exist from v7 on (the codec refuses the field before).
            let epoch = match ctx.log.partition(name, p) {
                Some(p) if version >= 7 => p.leader_epoch(),
                _ => -1,
            };
            let leader = match ctx.led_elsewhere(name, p) {
                Some(e) => e.leader,
                None => ctx.node.node_id,
            };
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_epoch(epoch)
                .with_leader_id(BrokerId(leader))
                .with_replica_nodes(brokers.clone())
                .with_isr_nodes(brokers.clone())
        })
        .collect();
    let mut t = MetadataResponseTopic::default()
        .with_name(Some(TopicName(sb(name))))
        .with_partitions(parts);
    if version >= 10 {
        t.topic_id = ctx.topic_id(name);
    }
    t
}

fn unknown(version: i16, name: Option<&str>, id: Uuid) -> MetadataResponseTopic {
    // Response names are nullable from v12 only.
    let shown = match name {
        Some(n) => Some(TopicName(sb(n))),
        None if version < 12 => Some(TopicName(sb(""))),
        None => None,
    };
    let mut t = MetadataResponseTopic::default().with_name(shown);
    if name.is_some() || version < 10 {
        t.error_code = ResponseError::UnknownTopicOrPartition.code();
    } else {
        t.error_code = ResponseError::UnknownTopicId.code();
        t.topic_id = id;
    }
    t
}

/// A topic the principal may not describe: TOPIC_AUTHORIZATION_FAILED, whether it exists
/// or not (asked by id, the name stays hidden).
fn denied(version: i16, name: Option<&str>, id: Uuid) -> MetadataResponseTopic {
    let mut t = unknown(version, name, id);
    t.error_code = ResponseError::TopicAuthorizationFailed.code();
    t.topic_id = if name.is_some() { Uuid::nil() } else { id };
    t
}

/// Answers one Metadata request.
pub fn handle(
    ctx: &Ctx,
    correlation_id: i32,
    version: i16,
    req: &MetadataRequest,
) -> Result<Vec<Chunk>, EncodeError> {
    let all = ctx.topics();
    // v0 has no null: an empty list means "all topics"; v1+ null means all, empty means none.
    let wants_all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let mut topics = Vec::new();
    if wants_all {
        // As a broker: topics the principal may not describe are left out of "all topics".
        for (name, parts) in all.iter().filter(|(n, _)| ctx.authz.topic(n)) {
            topics.push(topic_entry(ctx, version, name, parts));
        }
    } else {
        for want in req.topics.iter().flatten() {
            let name = match &want.name {
                Some(n) => Some(n.0.to_string()),
                None if version >= 10 => ctx.topic_by_id(want.topic_id),
                None => None,
            };
            if let Some(n) = name.as_deref().filter(|n| !ctx.authz.topic(n)) {
                inc(&ctx.stats.auth.denied_topic);
                topics.push(denied(
                    version,
                    want.name.as_ref().map(|_| n),
                    want.topic_id,
                ));
                continue;
            }
            match name.as_deref().and_then(|n| all.get_key_value(n)) {
                Some((n, parts)) => topics.push(topic_entry(ctx, version, n, parts)),
                None => {
                    inc(&ctx.stats.err_partition);
                    let asked = want.name.as_ref().map(|n| n.0.as_str());
                    topics.push(unknown(version, asked, want.topic_id));
                }
            }
        }
    }
    authorized_operations(
        &mut topics,
        version,
        req.include_topic_authorized_operations,
    );
    let brokers: Vec<MetadataResponseBroker> = ctx
        .node
        .brokers()
        .iter()
        .map(|b| {
            let mut broker = MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(sb(&b.host))
                .with_port(b.port);
            broker.rack = None;
            broker
        })
        .collect();
    let controller = brokers.first().map_or(ctx.node.node_id, |b| b.node_id.0);
    let mut body = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if version >= 1 {
        body.controller_id = BrokerId(controller);
    }
    if version >= 2 {
        body.cluster_id = Some(sb(&ctx.node.cluster_id));
    }
    if (8..=10).contains(&version) {
        // Describe (AclOperation 8) when asked: the one cluster operation a gateway grants.
        body.cluster_authorized_operations = if req.include_cluster_authorized_operations {
            crate::kafka::upstream::authz::DESCRIBE_BIT
        } else {
            i32::MIN
        };
    }
    // v9+ (tagged fields): where this gateway serves the fetch protocol.
    let advert = ctx.node.fetch.as_ref().map(|ep| FetchAdvert {
        node_id: ctx.node.node_id,
        endpoint: ep.clone(),
    });
    fetch_advert::put(&mut body.unknown_tagged_fields, advert.as_ref());
    encode_response(
        "Metadata",
        correlation_id,
        ApiKey::Metadata.response_header_version(version),
        &body,
        version,
        &[],
    )
}

/// v8+: each topic's operations the principal may perform (Describe and Read: the topics
/// shown are the ones it may read; the gateway takes no writes), when asked; INT32_MIN when
/// not asked and for refused topics, as a broker answers.
fn authorized_operations(topics: &mut [MetadataResponseTopic], version: i16, asked: bool) {
    use crate::kafka::upstream::authz::{DESCRIBE_BIT, READ_BIT};
    let refused = ResponseError::TopicAuthorizationFailed.code();
    for t in topics.iter_mut().filter(|_| version >= 8) {
        t.topic_authorized_operations = if asked && t.error_code != refused {
            READ_BIT | DESCRIBE_BIT
        } else {
            i32::MIN
        };
    }
}
