//! Request handlers, one module per API. Each turns a decoded request into response chunks
//! (sans-I/O: no sockets here, only the log).

pub mod api_versions;
pub mod error_response;
pub mod fetch;
pub mod fetch_ticket;
pub mod group_admin;
pub mod group_authz;
mod group_codec;
pub mod group_offsets;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod sasl;
pub mod unsupported;

use std::collections::BTreeMap;

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::auth::Authz;
use super::stats::{inc, Stats};
use super::upstream::{self, Broker, ClusterView};
use crate::log::{LogDir, Partition};

/// The APIs and version ranges this gateway serves (what ApiVersions advertises).
///
/// Produce is the one exception: it is advertised but every produce is refused
/// (INVALID_REQUEST, "read-only gateway"), because librdkafka only enables v2 record
/// batches (its MsgVer2 feature, without which it cannot fetch at v4+) when the broker
/// advertises Produce v3 as well as Fetch v4.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 0, 7),
    (ApiKey::Metadata, 0, 12),
    // The group coordinator (apis::groups): every version the codec knows.
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    // Answered on every listener (ILLEGAL_SASL_STATE where SASL is off), as Kafka does.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The served version range of `key`, if the gateway serves it.
pub fn served_range(key: ApiKey) -> Option<(i16, i16)> {
    SERVED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, lo, hi)| (lo, hi))
}

/// The broker identity this listener advertises.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Node id (0 unless `--node-id`).
    pub node_id: i32,
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: i32,
    /// Cluster id in Metadata v2+.
    pub cluster_id: String,
    /// Standalone mode playing one broker of a static cluster: the other brokers (see
    /// [`upstream::static_brokers`]). Empty: the gateway is the only broker.
    pub peers: Vec<Broker>,
    /// Cluster mode (`--upstream`): what the gateway knows of the real cluster.
    pub cluster: Option<Arc<ClusterView>>,
    /// The fetch endpoint advertised in Metadata ([`crate::kafka::fetch_advert`]).
    pub fetch: Option<crate::kafka::fetch_advert::HostPort>,
}

impl NodeInfo {
    fn me(&self) -> Broker {
        Broker {
            id: self.node_id,
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// Standalone mode: every broker of the (static) cluster, sorted by id.
    pub fn brokers(&self) -> Vec<Broker> {
        upstream::static_brokers(&self.me(), &self.peers)
    }
}

/// Where a partition is led when not here.
#[derive(Clone, Debug)]
pub struct Elsewhere {
    /// The leader's id.
    pub leader: i32,
    /// Its leader epoch (-1 unknown).
    pub epoch: i32,
    /// Where clients reach the leader (its gateway in cluster mode).
    pub endpoint: Option<Broker>,
}

impl NodeInfo {
    /// The gateway as the only broker (node 0) of cluster `kxgw`, reached at `host:port`.
    pub fn gateway(host: impl Into<String>, port: i32) -> NodeInfo {
        NodeInfo {
            node_id: 0,
            host: host.into(),
            port,
            cluster_id: "kxgw".into(),
            peers: Vec::new(),
            cluster: None,
            fetch: None,
        }
    }
}

/// Whether [`Ctx::servable`] asks who leads the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leader {
    /// Only the leader serves it (Fetch, ListOffsets).
    Required,
    /// Any gateway holding it answers (OffsetForLeaderEpoch, from the local checkpoint).
    NotChecked,
}

/// Why [`Ctx::servable`] refuses a partition.
#[derive(Clone, Debug)]
pub enum Refusal {
    /// Not authorized, or not served.
    Error(ResponseError),
    /// Another broker leads it.
    NotLeader(Elsewhere),
}

impl Refusal {
    /// The partition's error code.
    pub fn code(&self) -> i16 {
        match self {
            Refusal::Error(e) => e.code(),
            Refusal::NotLeader(_) => ResponseError::NotLeaderOrFollower.code(),
        }
    }
}

/// What a handler needs: the log, the advertised identity, the counters.
pub struct Ctx<'a> {
    /// The log directory served.
    pub log: &'a LogDir,
    /// Advertised broker identity.
    pub node: &'a NodeInfo,
    /// Listener counters.
    pub stats: &'a Stats,
    /// What the connection's principal may read ([`crate::kafka::auth::ALLOW_ALL`] without
    /// an ACL file).
    pub authz: &'a Authz,
}

impl Ctx<'_> {
    /// Topics served, with their partition ids, sorted by name.
    pub fn topics(&self) -> BTreeMap<String, Vec<i32>> {
        let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for p in self.log.partitions() {
            topics
                .entry(p.topic().to_string())
                .or_default()
                .push(p.partition());
        }
        topics
    }

    /// The topic with id `id` (computed once per log dir refresh, see [`LogDir::topic_id`]).
    pub fn topic_by_id(&self, id: Uuid) -> Option<String> {
        self.log.topic_by_id(id)
    }

    /// Whether another broker leads `topic`-`partition` (then this gateway must not serve
    /// it): in cluster mode as the cluster says (unknown partitions are served, e.g. while the
    /// cluster is unreachable at start); in a static cluster by its layout.
    pub fn led_elsewhere(&self, topic: &str, partition: i32) -> Option<Elsewhere> {
        if let Some(view) = &self.node.cluster {
            let (leader, epoch) = view.leader(topic, partition)?;
            return (leader != self.node.node_id).then(|| Elsewhere {
                leader,
                epoch,
                endpoint: view.endpoint(leader),
            });
        }
        if self.node.peers.is_empty() {
            return None;
        }
        self.log.partition(topic, partition)?;
        let brokers = self.node.brokers();
        let leader = upstream::static_leader(&brokers, partition);
        (leader != self.node.node_id).then(|| Elsewhere {
            leader,
            epoch: self
                .log
                .partition(topic, partition)
                .map_or(-1, |p| p.leader_epoch()),
            endpoint: brokers.into_iter().find(|b| b.id == leader),
        })
    }

    /// TOPIC_AUTHORIZATION_FAILED (counted) when the client's principal may not read `topic`.
    pub fn authorized(&self, topic: &str) -> Result<(), ResponseError> {
        if self.authz.topic(topic) {
            return Ok(());
        }
        inc(&self.stats.auth.denied_topic);
        Err(ResponseError::TopicAuthorizationFailed)
    }

    /// A partition the client asks to read: TOPIC_AUTHORIZATION_FAILED when its principal
    /// may not read the topic (checked first, so a refused client learns nothing of what
    /// exists), then with [`Leader::Required`] NOT_LEADER_OR_FOLLOWER when another broker
    /// leads it (see [`Ctx::led_elsewhere`]), then UNKNOWN_TOPIC_OR_PARTITION when it is not
    /// served. The topic's ACL is checked once.
    pub fn servable(
        &self,
        topic: &str,
        partition: i32,
        leader: Leader,
    ) -> Result<Arc<Partition>, Refusal> {
        self.authorized(topic).map_err(Refusal::Error)?;
        if leader == Leader::Required {
            if let Some(e) = self.led_elsewhere(topic, partition) {
                return Err(Refusal::NotLeader(e));
            }
        }
        self.log
            .partition(topic, partition)
            .ok_or(Refusal::Error(ResponseError::UnknownTopicOrPartition))
    }

    /// The id of a served topic (`partition.metadata`, else derived from the name).
    pub fn topic_id(&self, topic: &str) -> Uuid {
        self.log.topic_id(topic).unwrap_or_else(|| topic_id(topic))
    }
}

/// The id derived from a topic name, for topics without `partition.metadata`.
pub fn topic_id(topic: &str) -> Uuid {
    crate::log::topic_id::derived(topic)
}

/// A protocol string from an owned string.
pub fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_are_stable_distinct_and_valid() {
        let a = topic_id("orders");
        assert_eq!(a, topic_id("orders"));
        assert_ne!(a, topic_id("orders2"));
        assert_ne!(a, Uuid::nil());
        assert_eq!(a.get_version_num(), 8);
    }
}
