//! Responses from the cluster rewritten before they reach the client: every broker address
//! becomes its gateway's (where the peer map has one); node ids, leaders, replicas, ISR and
//! epochs stay the cluster's. ApiVersions becomes the intersection of the cluster's ranges
//! and what the gateway serves itself.

use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FindCoordinatorResponse, MetadataResponse,
};

use super::{Broker, ClusterView};
use crate::kafka::apis::{sb, served_range};
use crate::kafka::fetch_advert;

/// Which rewrite a forwarded request's response needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Passed through (only the correlation id changes).
    None,
    /// Version ranges intersected with the gateway's.
    ApiVersions,
    /// Broker addresses; leaders learnt.
    Metadata,
    /// Coordinator addresses (both shapes).
    FindCoordinator,
    /// Broker addresses.
    DescribeCluster,
    /// Passed through; the session sees the answer too (the SASL relay learns the outcome).
    Observe,
    /// The gateway's own request (a topic authorization ask): the answer goes to the session
    /// only, the client never sees it.
    Internal,
}

/// APIs the gateway answers itself in cluster mode (never forwarded).
pub const LOCAL: &[ApiKey] = &[
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::OffsetForLeaderEpoch,
];

/// The rewrite a request needs when forwarded, or None when it is answered locally.
pub fn route(raw_key: i16) -> Option<Rewrite> {
    let Ok(key) = ApiKey::try_from(raw_key) else {
        return Some(Rewrite::None); // unknown to us: the cluster decides
    };
    if LOCAL.contains(&key) {
        return None;
    }
    Some(match key {
        ApiKey::ApiVersions => Rewrite::ApiVersions,
        ApiKey::Metadata => Rewrite::Metadata,
        ApiKey::FindCoordinator => Rewrite::FindCoordinator,
        ApiKey::DescribeCluster => Rewrite::DescribeCluster,
        _ => Rewrite::None,
    })
}

/// The versions the gateway can handle of `key` in cluster mode: its own range for what it
/// serves or rewrites (it decodes those), anything for what passes through untouched.
fn own_range(key: ApiKey) -> Option<(i16, i16)> {
    match key {
        ApiKey::DescribeCluster => Some((0, 2)),
        // v0 sends the tokens without Kafka headers: they could not be relayed in order.
        ApiKey::SaslHandshake => Some((1, 1)),
        ApiKey::FindCoordinator => Some((0, 6)),
        k if LOCAL.contains(&k) || k == ApiKey::Metadata || k == ApiKey::ApiVersions => {
            served_range(k)
        }
        _ => Some((i16::MIN, i16::MAX)),
    }
}

/// ApiVersions: each of the cluster's ranges cut to what the gateway handles; APIs served
/// locally that the cluster lacks are not added (clients must not see more than the cluster).
pub fn api_versions(resp: &mut ApiVersionsResponse) {
    resp.api_keys.retain_mut(|k| {
        let own = match ApiKey::try_from(k.api_key) {
            Ok(key) => own_range(key),
            Err(_) => Some((i16::MIN, i16::MAX)),
        };
        let Some((lo, hi)) = own else {
            return false;
        };
        k.min_version = k.min_version.max(lo);
        k.max_version = k.max_version.min(hi);
        k.min_version <= k.max_version
    });
}

/// Metadata: brokers' addresses replaced by their gateways'; leaders recorded in the view;
/// the cluster's fetch-endpoint tag (if any) replaced by this gateway's own.
pub fn metadata(view: &ClusterView, resp: &mut MetadataResponse) {
    fetch_advert::put(
        &mut resp.unknown_tagged_fields,
        view.fetch_advert().as_ref(),
    );
    let mut brokers = Vec::new();
    for b in &mut resp.brokers {
        brokers.push(Broker {
            id: b.node_id.0,
            host: b.host.to_string(),
            port: b.port,
        });
        if let Some(g) = view.gateway(b.node_id.0) {
            b.host = sb(&g.host);
            b.port = g.port;
        }
    }
    let mut leaders = Vec::new();
    for t in &resp.topics {
        let Some(name) = &t.name else { continue };
        if t.error_code != 0 {
            continue;
        }
        for p in &t.partitions {
            leaders.push((
                name.0.to_string(),
                p.partition_index,
                p.leader_id.0,
                p.leader_epoch,
            ));
        }
    }
    view.learn(&brokers, &leaders);
}

/// FindCoordinator: the coordinator's address (v0-v3 one, v4+ one per key) replaced.
pub fn find_coordinator(view: &ClusterView, resp: &mut FindCoordinatorResponse) {
    if let Some(g) = view.gateway(resp.node_id.0).filter(|_| resp.node_id.0 >= 0) {
        resp.host = sb(&g.host);
        resp.port = g.port;
    }
    for c in &mut resp.coordinators {
        if let Some(g) = view.gateway(c.node_id.0).filter(|_| c.node_id.0 >= 0) {
            c.host = sb(&g.host);
            c.port = g.port;
        }
    }
}

/// DescribeCluster: brokers' addresses replaced.
pub fn describe_cluster(view: &ClusterView, resp: &mut DescribeClusterResponse) {
    for b in &mut resp.brokers {
        if let Some(g) = view.gateway(b.broker_id.0) {
            b.host = sb(&g.host);
            b.port = g.port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::upstream::{parse_peer, ClusterConfig};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};

    fn view() -> ClusterView {
        ClusterView::new(ClusterConfig {
            upstream: vec!["b0:9092".into()],
            node_id: 0,
            peers: vec![
                parse_peer("0=gw0:9190").unwrap(),
                parse_peer("1=gw1:9191").unwrap(),
            ],
        })
    }

    #[test]
    fn routes_keep_reads_local_and_forward_the_rest() {
        assert_eq!(route(ApiKey::Fetch as i16), None);
        assert_eq!(route(ApiKey::ListOffsets as i16), None);
        assert_eq!(route(ApiKey::Produce as i16), Some(Rewrite::None));
        assert_eq!(route(ApiKey::JoinGroup as i16), Some(Rewrite::None));
        assert_eq!(route(ApiKey::SaslHandshake as i16), Some(Rewrite::None));
        assert_eq!(route(ApiKey::Metadata as i16), Some(Rewrite::Metadata));
        assert_eq!(route(999), Some(Rewrite::None));
    }

    #[test]
    fn api_versions_is_the_intersection() {
        let k = |key: ApiKey, lo, hi| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(lo)
                .with_max_version(hi)
        };
        let mut r = ApiVersionsResponse::default().with_api_keys(vec![
            k(ApiKey::Fetch, 0, 17),
            k(ApiKey::Metadata, 0, 13),
            k(ApiKey::Produce, 0, 11),
            k(ApiKey::ListOffsets, 8, 9),
        ]);
        api_versions(&mut r);
        let got: Vec<(i16, i16, i16)> = r
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        assert_eq!(
            got,
            [
                (ApiKey::Fetch as i16, 4, 16),
                (ApiKey::Metadata as i16, 0, 12),
                (ApiKey::Produce as i16, 0, 11),
            ],
            "ListOffsets 8-9 does not meet the gateway's 0-7: dropped"
        );
    }

    #[test]
    fn metadata_addresses_become_gateways_and_leaders_are_learnt() {
        let v = view();
        let broker = |id: i32| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(sb(&format!("broker{id}")))
                .with_port(9092)
        };
        let mut r = MetadataResponse::default()
            .with_brokers(vec![broker(0), broker(1), broker(2)])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(sb("t"))))
                .with_partitions(vec![MetadataResponsePartition::default()
                    .with_partition_index(4)
                    .with_leader_id(BrokerId(1))
                    .with_leader_epoch(3)])]);
        metadata(&v, &mut r);
        let addrs: Vec<(String, i32)> = r
            .brokers
            .iter()
            .map(|b| (b.host.to_string(), b.port))
            .collect();
        assert_eq!(
            addrs,
            [
                ("gw0".into(), 9190),
                ("gw1".into(), 9191),
                ("broker2".into(), 9092)
            ]
        );
        assert_eq!(r.topics[0].partitions[0].leader_id.0, 1, "ids stay");
        assert_eq!(v.leader("t", 4), Some((1, 3)));
        assert_eq!(v.local_broker().as_deref(), Some("broker0:9092"));
    }

    #[test]
    fn metadata_carries_this_gateways_fetch_endpoint_not_the_clusters() {
        use crate::kafka::fetch_advert::{get, put, FetchAdvert, HostPort};
        let upstream_tag = FetchAdvert {
            node_id: 0,
            endpoint: HostPort::parse("broker0:7000").unwrap(),
        };
        let answer = || {
            let mut r = MetadataResponse::default();
            put(&mut r.unknown_tagged_fields, Some(&upstream_tag));
            r
        };
        let v = view();
        let mut r = answer();
        metadata(&v, &mut r);
        assert_eq!(
            get(&r.unknown_tagged_fields),
            None,
            "no endpoint here: none shown"
        );
        v.advertise_fetch(HostPort::parse("gw0:7100").unwrap());
        let mut r = answer();
        metadata(&v, &mut r);
        let got = get(&r.unknown_tagged_fields).unwrap().unwrap();
        assert_eq!((got.node_id, got.endpoint.addr()), (0, "gw0:7100".into()));
    }

    #[test]
    fn find_coordinator_both_shapes() {
        let v = view();
        let mut old = FindCoordinatorResponse::default()
            .with_node_id(BrokerId(1))
            .with_host(sb("broker1"))
            .with_port(9092);
        find_coordinator(&v, &mut old);
        assert_eq!((old.host.as_str(), old.port), ("gw1", 9191));
        let mut new = FindCoordinatorResponse::default().with_coordinators(vec![
            Coordinator::default()
                .with_node_id(BrokerId(0))
                .with_host(sb("broker0"))
                .with_port(9092),
            Coordinator::default()
                .with_node_id(BrokerId(-1))
                .with_host(sb(""))
                .with_port(-1),
        ]);
        find_coordinator(&v, &mut new);
        assert_eq!(new.coordinators[0].host.as_str(), "gw0");
        assert_eq!(new.coordinators[1].port, -1, "an error entry stays");
    }
}
