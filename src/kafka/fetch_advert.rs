//! The fetch endpoint a gateway advertises to Kafka clients: a tagged field of the Metadata
//! response (v9+, where responses have tagged fields), so that a client bootstrapped at any
//! gateway can find where each partition leader's gateway serves the kxgw fetch protocol
//! (UDP, and AF_XDP at the same address) without a new request type. Stock clients skip
//! tags they do not know, as the protocol requires. docs/fetch-protocol.md describes it.
//!
//! Layout: top-level tag [`TAG`] of `MetadataResponse`, whose value is one Metadata v12
//! broker entry (`node_id INT32, host COMPACT_STRING, port INT32, rack
//! COMPACT_NULLABLE_STRING (null), tagged fields`): the node the answering gateway serves as
//! (standalone) or stands beside (cluster mode), and its fetch endpoint. A gateway without a
//! fetch endpoint sends no tag; in cluster mode the tag the cluster's answer may carry is
//! replaced by the sidecar's own (or removed).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::{BrokerId, MetadataResponse};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// The tag number: "KX" (0x4B58), far above the small numbers Kafka gives its own tags.
pub const TAG: i32 = 0x4B58;
/// Version of the broker-entry layout the value is encoded in.
const ENTRY_VERSION: i16 = 12;

/// A HOST:PORT a gateway advertises as its fetch endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl HostPort {
    /// Parses `HOST:PORT` (`[V6]:PORT` for IPv6).
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: port {port:?} is not a number in 1..65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s:?}: expected HOST:PORT"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }

    /// `host:port`, with brackets around an IPv6 address (what `ToSocketAddrs` takes).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr())
    }
}

/// One gateway's advertisement: the node it serves for and its fetch endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchAdvert {
    /// Broker id.
    pub node_id: i32,
    /// Where it serves the fetch protocol.
    pub endpoint: HostPort,
}

impl FetchAdvert {
    /// The tag value.
    pub fn encode(&self) -> Bytes {
        let entry = MetadataResponseBroker::default()
            .with_node_id(BrokerId(self.node_id))
            .with_host(StrBytes::from_string(self.endpoint.host.clone()))
            .with_port(i32::from(self.endpoint.port));
        let mut buf = BytesMut::new();
        // A short host and a port cannot fail to encode; an empty value would read as an
        // error at the client, never as a wrong address.
        let _ = entry.encode(&mut buf, ENTRY_VERSION);
        buf.freeze()
    }

    /// Reads a tag value; an error says what was wrong.
    pub fn decode(value: &Bytes) -> Result<FetchAdvert, String> {
        let mut b = value.clone();
        let e = MetadataResponseBroker::decode(&mut b, ENTRY_VERSION)
            .map_err(|e| format!("fetch endpoint tag: {e}"))?;
        let port = u16::try_from(e.port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("fetch endpoint tag: port {} out of range", e.port))?;
        if e.host.is_empty() {
            return Err("fetch endpoint tag: empty host".into());
        }
        Ok(FetchAdvert {
            node_id: e.node_id.0,
            endpoint: HostPort {
                host: e.host.to_string(),
                port,
            },
        })
    }
}

/// Sets (or, with None, removes) the advertisement in a Metadata response's top-level tags.
/// Versions before 9 have no tagged fields: the encoder leaves them out.
pub fn put(tags: &mut BTreeMap<i32, Bytes>, advert: Option<&FetchAdvert>) {
    match advert {
        Some(a) => {
            tags.insert(TAG, a.encode());
        }
        None => {
            tags.remove(&TAG);
        }
    }
}

/// The advertisement in a Metadata response's top-level tags, if any.
pub fn get(tags: &BTreeMap<i32, Bytes>) -> Option<Result<FetchAdvert, String>> {
    tags.get(&TAG).map(FetchAdvert::decode)
}

/// What one Metadata answer says of a topic, for a client looking for fetch endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicLayout {
    /// Kafka address of each broker (its gateway's, when asked through gateways).
    pub brokers: BTreeMap<i32, HostPort>,
    /// Leader of each partition (-1: none right now).
    pub leaders: BTreeMap<i32, i32>,
    /// The answering gateway's own advertisement.
    pub advert: Option<FetchAdvert>,
}

/// Reads `topic`'s partition leaders, the brokers' addresses and the advertisement out of a
/// Metadata response; a topic error (e.g. UNKNOWN_TOPIC_OR_PARTITION) is an error naming it.
pub fn layout(resp: &MetadataResponse, topic: &str) -> Result<TopicLayout, String> {
    let mut out = TopicLayout::default();
    for b in &resp.brokers {
        if let Some(port) = u16::try_from(b.port).ok().filter(|&p| p != 0) {
            out.brokers.insert(
                b.node_id.0,
                HostPort {
                    host: b.host.to_string(),
                    port,
                },
            );
        }
    }
    out.advert = get(&resp.unknown_tagged_fields).transpose()?;
    let Some(t) = resp
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
    else {
        return Ok(out);
    };
    if t.error_code != 0 {
        return Err(format!(
            "topic {topic:?}: Kafka error code {}",
            t.error_code
        ));
    }
    for p in &t.partitions {
        let leader = if p.error_code == 0 { p.leader_id.0 } else { -1 };
        out.leaders.insert(p.partition_index, leader);
    }
    Ok(out)
}

/// Metadata version a client asks to see the advertisement: tagged fields exist from 9; 12
/// is the newest the gateway serves.
pub const METADATA_VERSION: i16 = 12;

/// Asks Metadata over `conn` for `topic` (None: for no topic, which still carries the
/// advertisement) and reads its [`TopicLayout`].
pub fn ask_layout(
    conn: &mut crate::kafka::client::Connection,
    topic: Option<&str>,
) -> anyhow::Result<TopicLayout> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{ApiKey, MetadataRequest, TopicName};
    let topics = topic.map(|t| {
        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(t.into()))))
    });
    let req = MetadataRequest::default()
        .with_topics(Some(topics.into_iter().collect()))
        .with_allow_auto_topic_creation(false);
    let resp: MetadataResponse = conn.call(ApiKey::Metadata, METADATA_VERSION, &req)?;
    layout(&resp, topic.unwrap_or_default()).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: &MetadataResponse, v: i16) -> MetadataResponse {
        let mut buf = BytesMut::new();
        r.encode(&mut buf, v).unwrap();
        MetadataResponse::decode(&mut buf.freeze(), v).unwrap()
    }

    fn advert() -> FetchAdvert {
        FetchAdvert {
            node_id: 2,
            endpoint: HostPort::parse("198.18.0.1:9302").unwrap(),
        }
    }

    #[test]
    fn host_port_parses_and_bad_ones_say_why() {
        let v6 = HostPort::parse("[::1]:7878").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 7878));
        assert_eq!(v6.addr(), "[::1]:7878");
        assert_eq!(
            HostPort::parse("gw.example:9").unwrap().addr(),
            "gw.example:9"
        );
        for bad in ["h", ":9", "h:0", "h:x", "h:70000"] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_tag_survives_a_metadata_round_trip_from_v9_and_is_absent_before() {
        for v in [9i16, 12] {
            let mut r = MetadataResponse::default();
            put(&mut r.unknown_tagged_fields, Some(&advert()));
            let back = round_trip(&r, v);
            assert_eq!(get(&back.unknown_tagged_fields), Some(Ok(advert())), "v{v}");
        }
        let mut r = MetadataResponse::default();
        put(&mut r.unknown_tagged_fields, Some(&advert()));
        let back = round_trip(&r, 8);
        assert_eq!(get(&back.unknown_tagged_fields), None, "v8 has no tags");
        put(&mut r.unknown_tagged_fields, None);
        assert!(r.unknown_tagged_fields.is_empty());
    }

    #[test]
    fn a_standalone_gateway_advertises_its_endpoint_from_metadata_v9() {
        use crate::kafka::testkit::Harness;
        use kafka_protocol::messages::{ApiKey, MetadataRequest};
        let (mut h, _d) = Harness::empty();
        let req = MetadataRequest::default().with_topics(Some(vec![]));
        let r: MetadataResponse = h.call(ApiKey::Metadata, 12, &req);
        assert_eq!(
            get(&r.unknown_tagged_fields),
            None,
            "no fetch endpoint: no tag"
        );
        h.node.node_id = 2;
        h.node.fetch = Some(HostPort::parse("198.18.0.1:9302").unwrap());
        for v in [9, 12] {
            let r: MetadataResponse = h.call(ApiKey::Metadata, v, &req);
            assert_eq!(get(&r.unknown_tagged_fields), Some(Ok(advert())), "v{v}");
        }
        let r: MetadataResponse = h.call(ApiKey::Metadata, 8, &req);
        assert!(r.unknown_tagged_fields.is_empty(), "v8 cannot carry it");
    }

    #[test]
    fn layout_reads_leaders_addresses_and_the_advert() {
        use kafka_protocol::messages::metadata_response::{
            MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
        };
        use kafka_protocol::messages::TopicName;
        let part = |p: i32, leader: i32, err: i16| {
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(leader))
                .with_error_code(err)
        };
        let mut r = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(2))
                .with_host(StrBytes::from_static_str("gw2"))
                .with_port(9102)])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_partitions(vec![part(0, 2, 0), part(1, 1, 5)])]);
        put(&mut r.unknown_tagged_fields, Some(&advert()));
        let l = layout(&r, "t").unwrap();
        assert_eq!(l.brokers[&2].addr(), "gw2:9102");
        assert_eq!(
            l.leaders,
            BTreeMap::from([(0, 2), (1, -1)]),
            "LEADER_NOT_AVAILABLE: none"
        );
        assert_eq!(l.advert, Some(advert()));
        assert!(layout(&r, "other").unwrap().leaders.is_empty());
        r.topics[0].error_code = 3;
        assert!(layout(&r, "t").unwrap_err().contains("error code 3"));
    }

    #[test]
    fn a_damaged_value_is_an_error_not_an_address() {
        let good = advert().encode();
        for bad in [Bytes::new(), good.slice(..good.len() - 3)] {
            assert!(FetchAdvert::decode(&bad).is_err());
        }
        let zero_port = FetchAdvert {
            endpoint: HostPort {
                host: "h".into(),
                port: 0,
            },
            ..advert()
        };
        assert!(FetchAdvert::decode(&zero_port.encode()).is_err());
    }
}
