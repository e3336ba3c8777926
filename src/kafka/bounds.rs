//! Array counts checked before the codec sees a request body.
//!
//! The kafka-protocol crate (0.18) sizes every decoded array with `Vec::with_capacity(count)`
//! straight from the wire, before reading a single element. An 18-byte Metadata request
//! claiming 2^31 topics asks for ~150 GB; the allocation fails and the process aborts (found by
//! the `kafka_request` fuzz target). So each request body this gateway decodes is first walked
//! here: every array count must fit in the bytes left, at the smallest encoded size of one
//! element. A body that passes allocates at most a small multiple of its own size.
//!
//! The walk follows the same schemas as the crate's decoders (field presence and compact
//! encodings by version). It only rejects impossible counts: a body that is short or otherwise
//! malformed is left to the codec, which reports it. The unit tests encode every version of
//! every walked request with the crate and check that the walk consumes them exactly.

use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, OffsetForLeaderEpochRequest, ProduceRequest,
    SaslAuthenticateRequest, SaslHandshakeRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::Message;

/// A count no body of this size can hold.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("array count {count} at byte {position} needs at least {needed} bytes, {remaining} left")]
pub struct ImpossibleCount {
    /// The count as received.
    pub count: i64,
    /// Byte position of the count in the body.
    pub position: usize,
    /// Bytes `count` elements take at least.
    pub needed: u64,
    /// Bytes left in the body after the count.
    pub remaining: usize,
}

/// Field kinds of the walked schemas.
#[derive(Clone, Copy)]
enum Kind {
    I8,
    I16,
    I32,
    I64,
    Uuid,
    /// String (i16 length, or compact).
    Str,
    /// Bytes (i32 length, or compact).
    Bytes,
    /// Array of structs.
    Arr(&'static [Field]),
    /// Array of i32.
    ArrI32,
    /// Array of strings.
    ArrStr,
}

/// A field present in versions `lo..=hi`.
#[derive(Clone, Copy)]
struct Field {
    lo: i16,
    hi: i16,
    kind: Kind,
}

const fn f(lo: i16, hi: i16, kind: Kind) -> Field {
    Field { lo, hi, kind }
}

const ANY: i16 = i16::MAX;

const FETCH_PARTITION: &[Field] = &[
    f(0, ANY, Kind::I32),  // partition
    f(9, ANY, Kind::I32),  // current_leader_epoch
    f(0, ANY, Kind::I64),  // fetch_offset
    f(12, ANY, Kind::I32), // last_fetched_epoch
    f(5, ANY, Kind::I64),  // log_start_offset
    f(0, ANY, Kind::I32),  // partition_max_bytes
];
const FETCH_TOPIC: &[Field] = &[
    f(0, 12, Kind::Str),    // topic
    f(13, ANY, Kind::Uuid), // topic_id
    f(0, ANY, Kind::Arr(FETCH_PARTITION)),
];
const FORGOTTEN_TOPIC: &[Field] = &[
    f(7, 12, Kind::Str),
    f(13, ANY, Kind::Uuid),
    f(7, ANY, Kind::ArrI32),
];
const FETCH: &[Field] = &[
    f(0, 14, Kind::I32),  // replica_id
    f(0, ANY, Kind::I32), // max_wait_ms
    f(0, ANY, Kind::I32), // min_bytes
    f(3, ANY, Kind::I32), // max_bytes
    f(4, ANY, Kind::I8),  // isolation_level
    f(7, ANY, Kind::I32), // session_id
    f(7, ANY, Kind::I32), // session_epoch
    f(0, ANY, Kind::Arr(FETCH_TOPIC)),
    f(7, ANY, Kind::Arr(FORGOTTEN_TOPIC)),
    f(11, ANY, Kind::Str), // rack_id
];

const METADATA_TOPIC: &[Field] = &[f(10, ANY, Kind::Uuid), f(0, ANY, Kind::Str)];
const METADATA: &[Field] = &[
    f(0, ANY, Kind::Arr(METADATA_TOPIC)),
    f(4, ANY, Kind::I8), // allow_auto_topic_creation
    f(8, 10, Kind::I8),  // include_cluster_authorized_operations
    f(8, ANY, Kind::I8), // include_topic_authorized_operations
];

const LIST_OFFSETS_PARTITION: &[Field] = &[
    f(0, ANY, Kind::I32), // partition_index
    f(4, ANY, Kind::I32), // current_leader_epoch
    f(0, ANY, Kind::I64), // timestamp
];
const LIST_OFFSETS_TOPIC: &[Field] = &[
    f(0, ANY, Kind::Str),
    f(0, ANY, Kind::Arr(LIST_OFFSETS_PARTITION)),
];
const LIST_OFFSETS: &[Field] = &[
    f(0, ANY, Kind::I32), // replica_id
    f(2, ANY, Kind::I8),  // isolation_level
    f(0, ANY, Kind::Arr(LIST_OFFSETS_TOPIC)),
    f(10, ANY, Kind::I32), // timeout_ms
];

const PRODUCE_PARTITION: &[Field] = &[f(0, ANY, Kind::I32), f(0, ANY, Kind::Bytes)];
const PRODUCE_TOPIC: &[Field] = &[
    f(0, 12, Kind::Str),
    f(13, ANY, Kind::Uuid),
    f(0, ANY, Kind::Arr(PRODUCE_PARTITION)),
];
const PRODUCE: &[Field] = &[
    f(3, ANY, Kind::Str), // transactional_id
    f(0, ANY, Kind::I16), // acks
    f(0, ANY, Kind::I32), // timeout_ms
    f(0, ANY, Kind::Arr(PRODUCE_TOPIC)),
];

const FIND_COORDINATOR: &[Field] = &[
    f(0, 3, Kind::Str),      // key
    f(1, ANY, Kind::I8),     // key_type
    f(4, ANY, Kind::ArrStr), // coordinator_keys
];

const OFFSET_COMMIT_PARTITION: &[Field] = &[
    f(0, ANY, Kind::I32), // partition_index
    f(0, ANY, Kind::I64), // committed_offset
    f(6, ANY, Kind::I32), // committed_leader_epoch
    f(0, ANY, Kind::Str), // committed_metadata
];
const OFFSET_COMMIT_TOPIC: &[Field] = &[
    f(0, ANY, Kind::Str),
    f(0, ANY, Kind::Arr(OFFSET_COMMIT_PARTITION)),
];
const OFFSET_COMMIT: &[Field] = &[
    f(0, ANY, Kind::Str), // group_id
    f(1, ANY, Kind::I32), // generation_id_or_member_epoch
    f(1, ANY, Kind::Str), // member_id
    f(7, ANY, Kind::Str), // group_instance_id
    f(2, 4, Kind::I64),   // retention_time_ms
    f(0, ANY, Kind::Arr(OFFSET_COMMIT_TOPIC)),
];

const OFFSET_FETCH_TOPIC: &[Field] = &[f(0, 7, Kind::Str), f(0, 7, Kind::ArrI32)];
const OFFSET_FETCH_GROUP_TOPIC: &[Field] = &[f(8, ANY, Kind::Str), f(8, ANY, Kind::ArrI32)];
const OFFSET_FETCH_GROUP: &[Field] = &[
    f(8, ANY, Kind::Str), // group_id
    f(9, ANY, Kind::Str), // member_id
    f(9, ANY, Kind::I32), // member_epoch
    f(8, ANY, Kind::Arr(OFFSET_FETCH_GROUP_TOPIC)),
];
const OFFSET_FETCH: &[Field] = &[
    f(0, 7, Kind::Str), // group_id
    f(0, 7, Kind::Arr(OFFSET_FETCH_TOPIC)),
    f(8, ANY, Kind::Arr(OFFSET_FETCH_GROUP)),
    f(7, ANY, Kind::I8), // require_stable
];

const JOIN_PROTOCOL: &[Field] = &[f(0, ANY, Kind::Str), f(0, ANY, Kind::Bytes)];
const JOIN_GROUP: &[Field] = &[
    f(0, ANY, Kind::Str), // group_id
    f(0, ANY, Kind::I32), // session_timeout_ms
    f(1, ANY, Kind::I32), // rebalance_timeout_ms
    f(0, ANY, Kind::Str), // member_id
    f(5, ANY, Kind::Str), // group_instance_id
    f(0, ANY, Kind::Str), // protocol_type
    f(0, ANY, Kind::Arr(JOIN_PROTOCOL)),
    f(8, ANY, Kind::Str), // reason
];

const SYNC_ASSIGNMENT: &[Field] = &[f(0, ANY, Kind::Str), f(0, ANY, Kind::Bytes)];
const SYNC_GROUP: &[Field] = &[
    f(0, ANY, Kind::Str), // group_id
    f(0, ANY, Kind::I32), // generation_id
    f(0, ANY, Kind::Str), // member_id
    f(3, ANY, Kind::Str), // group_instance_id
    f(5, ANY, Kind::Str), // protocol_type
    f(5, ANY, Kind::Str), // protocol_name
    f(0, ANY, Kind::Arr(SYNC_ASSIGNMENT)),
];

const LEAVE_MEMBER: &[Field] = &[
    f(3, ANY, Kind::Str), // member_id
    f(3, ANY, Kind::Str), // group_instance_id
    f(5, ANY, Kind::Str), // reason
];
const LEAVE_GROUP: &[Field] = &[
    f(0, ANY, Kind::Str), // group_id
    f(0, 2, Kind::Str),   // member_id
    f(3, ANY, Kind::Arr(LEAVE_MEMBER)),
];

const LIST_GROUPS: &[Field] = &[f(4, ANY, Kind::ArrStr), f(5, ANY, Kind::ArrStr)];

const DESCRIBE_GROUPS: &[Field] = &[
    f(0, ANY, Kind::ArrStr), // groups
    f(3, ANY, Kind::I8),     // include_authorized_operations
];

const OFFSET_DELETE_PARTITION: &[Field] = &[f(0, ANY, Kind::I32)];
const OFFSET_DELETE_TOPIC: &[Field] = &[
    f(0, ANY, Kind::Str),
    f(0, ANY, Kind::Arr(OFFSET_DELETE_PARTITION)),
];
const OFFSET_DELETE: &[Field] = &[
    f(0, ANY, Kind::Str), // group_id
    f(0, ANY, Kind::Arr(OFFSET_DELETE_TOPIC)),
];

const OFFSET_FOR_LEADER_PARTITION: &[Field] = &[
    f(0, ANY, Kind::I32), // partition
    f(2, ANY, Kind::I32), // current_leader_epoch
    f(0, ANY, Kind::I32), // leader_epoch
];
const OFFSET_FOR_LEADER_TOPIC: &[Field] = &[
    f(0, ANY, Kind::Str),
    f(0, ANY, Kind::Arr(OFFSET_FOR_LEADER_PARTITION)),
];
const OFFSET_FOR_LEADER_EPOCH: &[Field] = &[
    f(3, ANY, Kind::I32), // replica_id
    f(0, ANY, Kind::Arr(OFFSET_FOR_LEADER_TOPIC)),
];

// SASL requests hold no arrays; walked so a body the codec will see was sized first.
const SASL_HANDSHAKE: &[Field] = &[f(0, ANY, Kind::Str)]; // mechanism
const SASL_AUTHENTICATE: &[Field] = &[f(0, ANY, Kind::Bytes)]; // auth_bytes

/// The schema of `key`'s request body at `version`, with the first flexible version, when the
/// gateway decodes that request with the codec (other requests are never decoded).
fn schema(key: ApiKey, version: i16) -> Option<(&'static [Field], i16)> {
    fn within<M: Message>(v: i16) -> bool {
        (M::VERSIONS.min..=M::VERSIONS.max).contains(&v)
    }
    let (fields, flexible, ok) = match key {
        ApiKey::Fetch => (FETCH, 12, within::<FetchRequest>(version)),
        ApiKey::Metadata => (METADATA, 9, within::<MetadataRequest>(version)),
        ApiKey::ListOffsets => (LIST_OFFSETS, 6, within::<ListOffsetsRequest>(version)),
        ApiKey::Produce => (PRODUCE, 9, within::<ProduceRequest>(version)),
        ApiKey::FindCoordinator => (
            FIND_COORDINATOR,
            3,
            within::<FindCoordinatorRequest>(version),
        ),
        ApiKey::OffsetCommit => (OFFSET_COMMIT, 8, within::<OffsetCommitRequest>(version)),
        ApiKey::OffsetFetch => (OFFSET_FETCH, 6, within::<OffsetFetchRequest>(version)),
        ApiKey::JoinGroup => (JOIN_GROUP, 6, within::<JoinGroupRequest>(version)),
        ApiKey::SyncGroup => (SYNC_GROUP, 4, within::<SyncGroupRequest>(version)),
        ApiKey::LeaveGroup => (LEAVE_GROUP, 4, within::<LeaveGroupRequest>(version)),
        ApiKey::ListGroups => (LIST_GROUPS, 3, within::<ListGroupsRequest>(version)),
        ApiKey::DescribeGroups => (DESCRIBE_GROUPS, 5, within::<DescribeGroupsRequest>(version)),
        ApiKey::OffsetDelete => (OFFSET_DELETE, ANY, within::<OffsetDeleteRequest>(version)),
        ApiKey::OffsetForLeaderEpoch => (
            OFFSET_FOR_LEADER_EPOCH,
            4,
            within::<OffsetForLeaderEpochRequest>(version),
        ),
        ApiKey::SaslHandshake => (SASL_HANDSHAKE, ANY, within::<SaslHandshakeRequest>(version)),
        ApiKey::SaslAuthenticate => (
            SASL_AUTHENTICATE,
            2,
            within::<SaslAuthenticateRequest>(version),
        ),
        _ => return None,
    };
    ok.then_some((fields, flexible))
}

/// Checks every array count of a request body (the bytes after the request header).
/// Only impossible counts are errors; anything else is for the codec to judge.
pub fn check(key: ApiKey, version: i16, body: &[u8]) -> Result<(), ImpossibleCount> {
    let Some((fields, flexible_from)) = schema(key, version) else {
        return Ok(());
    };
    let mut w = Walker {
        buf: body,
        pos: 0,
        version,
        flexible: version >= flexible_from,
    };
    match w.walk(fields) {
        Err(Stop::Impossible(e)) => Err(e),
        Ok(()) | Err(Stop::Short) => Ok(()),
    }
}

/// Bytes a walk consumed, for the schema tests (`None` if it stopped early).
#[cfg(test)]
fn walked_len(key: ApiKey, version: i16, body: &[u8]) -> Option<usize> {
    let (fields, flexible_from) = schema(key, version)?;
    let mut w = Walker {
        buf: body,
        pos: 0,
        version,
        flexible: version >= flexible_from,
    };
    w.walk(fields).ok().map(|()| w.pos)
}

enum Stop {
    /// The body ended (the codec will say so).
    Short,
    Impossible(ImpossibleCount),
}

struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    version: i16,
    flexible: bool,
}

impl Walker<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        if n > self.remaining() {
            return Err(Stop::Short);
        }
        self.pos += n;
        Ok(())
    }

    fn int(&mut self, n: usize) -> Result<i64, Stop> {
        let b = self.buf.get(self.pos..self.pos + n).ok_or(Stop::Short)?;
        self.pos += n;
        Ok(b.iter().fold(0i64, |acc, &x| (acc << 8) | i64::from(x)))
    }

    /// An unsigned varint exactly as the codec reads it: at most 5 bytes (a continuation bit
    /// on the 5th is ignored), bits past 32 dropped.
    fn uvarint(&mut self) -> Result<u64, Stop> {
        let mut v = 0u32;
        for i in 0..5 {
            let b = *self.buf.get(self.pos).ok_or(Stop::Short)?;
            self.pos += 1;
            v |= u32::from(b & 0x7f).wrapping_shl(i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(u64::from(v))
    }

    /// A length-prefixed string or bytes field; `wide` selects the i32 prefix (bytes).
    fn blob(&mut self, wide: bool) -> Result<(), Stop> {
        let len = if self.flexible {
            self.uvarint()?.saturating_sub(1)
        } else if wide {
            u64::try_from(self.int(4)? as i32).unwrap_or(0)
        } else {
            u64::try_from(self.int(2)? as i16).unwrap_or(0)
        };
        self.skip(usize::try_from(len).unwrap_or(usize::MAX))
    }

    /// An array count, checked against the bytes left at `min_elem` bytes per element.
    fn count(&mut self, min_elem: u64) -> Result<u64, Stop> {
        let position = self.pos;
        let count: i64 = if self.flexible {
            // Compact: n + 1, 0 is null.
            self.uvarint()? as i64 - 1
        } else {
            i64::from(self.int(4)? as i32)
        };
        let Ok(n) = u64::try_from(count) else {
            return Ok(0); // null (or negative: the codec rejects it)
        };
        let needed = n.saturating_mul(min_elem.max(1));
        if needed > self.remaining() as u64 {
            return Err(Stop::Impossible(ImpossibleCount {
                count,
                position,
                needed,
                remaining: self.remaining(),
            }));
        }
        Ok(n)
    }

    fn tagged_fields(&mut self) -> Result<(), Stop> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.uvarint()?;
        for _ in 0..n {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(usize::try_from(size).unwrap_or(usize::MAX))?;
        }
        Ok(())
    }

    /// Smallest encoding of one struct at this version.
    fn min_size(&self, fields: &[Field]) -> u64 {
        let small_prefix = if self.flexible { 1 } else { 2 };
        let count_prefix = if self.flexible { 1 } else { 4 };
        let own: u64 = fields
            .iter()
            .filter(|fl| (fl.lo..=fl.hi).contains(&self.version))
            .map(|fl| match fl.kind {
                Kind::I8 => 1,
                Kind::I16 => 2,
                Kind::I32 => 4,
                Kind::I64 => 8,
                Kind::Uuid => 16,
                Kind::Str => small_prefix,
                Kind::Bytes => count_prefix,
                Kind::Arr(_) | Kind::ArrI32 | Kind::ArrStr => count_prefix,
            })
            .sum();
        own + u64::from(self.flexible)
    }

    fn walk(&mut self, fields: &[Field]) -> Result<(), Stop> {
        for fl in fields {
            if !(fl.lo..=fl.hi).contains(&self.version) {
                continue;
            }
            match fl.kind {
                Kind::I8 => self.skip(1)?,
                Kind::I16 => self.skip(2)?,
                Kind::I32 => self.skip(4)?,
                Kind::I64 => self.skip(8)?,
                Kind::Uuid => self.skip(16)?,
                Kind::Str => self.blob(false)?,
                Kind::Bytes => self.blob(true)?,
                Kind::ArrI32 => {
                    let n = self.count(4)?;
                    self.skip(n as usize * 4)?;
                }
                Kind::ArrStr => {
                    let n = self.count(if self.flexible { 1 } else { 2 })?;
                    for _ in 0..n {
                        self.blob(false)?;
                    }
                }
                Kind::Arr(inner) => {
                    let n = self.count(self.min_size(inner))?;
                    for _ in 0..n {
                        self.walk(inner)?;
                    }
                }
            }
        }
        self.tagged_fields()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn s(x: &str) -> StrBytes {
        StrBytes::from_string(x.to_string())
    }

    fn enc<R: Encodable>(r: &R, v: i16) -> Vec<u8> {
        let mut b = BytesMut::new();
        r.encode(&mut b, v).unwrap();
        b.to_vec()
    }

    /// Encodes fully populated requests (two of everything, unknown tagged fields included)
    /// at every version the codec has, and checks the walk lands exactly on the end.
    fn assert_walks<M: Message + Encodable>(key: ApiKey, make: impl Fn(i16) -> M) {
        for v in M::VERSIONS.min..=M::VERSIONS.max {
            let body = enc(&make(v), v);
            assert_eq!(
                walked_len(key, v, &body),
                Some(body.len()),
                "{key:?} v{v}: the walk must consume the body exactly"
            );
            assert_eq!(check(key, v, &body), Ok(()), "{key:?} v{v}");
        }
    }

    fn tags() -> std::collections::BTreeMap<i32, bytes::Bytes> {
        [(90, bytes::Bytes::from_static(b"xyz"))].into()
    }

    #[test]
    fn fetch_every_version() {
        assert_walks(ApiKey::Fetch, |v| {
            let part = |i| {
                let mut p = fetch_request::FetchPartition::default()
                    .with_partition(i)
                    .with_fetch_offset(77)
                    .with_partition_max_bytes(1000);
                if v >= 5 {
                    p.log_start_offset = 1;
                }
                if v >= 9 {
                    p.current_leader_epoch = 3;
                }
                if v >= 12 {
                    p.last_fetched_epoch = 2;
                    p.unknown_tagged_fields = tags();
                }
                p
            };
            let mut t =
                fetch_request::FetchTopic::default().with_partitions(vec![part(0), part(1)]);
            if v >= 13 {
                t.topic_id = uuid::Uuid::from_u128(5);
            } else {
                t.topic = TopicName(s("orders"));
            }
            let mut ft = fetch_request::ForgottenTopic::default().with_partitions(vec![1, 2, 3]);
            if v >= 13 {
                ft.topic_id = uuid::Uuid::from_u128(6);
            } else {
                ft.topic = TopicName(s("old"));
            }
            let mut r = FetchRequest::default()
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_isolation_level(1)
                .with_topics(vec![t.clone(), t]);
            if v >= 7 {
                r.session_id = 4;
                r.session_epoch = 5;
                r.forgotten_topics_data = vec![ft.clone(), ft];
            }
            if v >= 11 {
                r.rack_id = s("rack");
            }
            if v >= 12 {
                r.cluster_id = Some(s("c"));
                r.unknown_tagged_fields = tags();
            }
            if v <= 14 {
                r.replica_id = BrokerId(-1);
            }
            r
        });
    }

    #[test]
    fn offset_for_leader_epoch_every_version() {
        assert_walks(ApiKey::OffsetForLeaderEpoch, |v| {
            let p = |i| {
                offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                    .with_partition(i)
                    .with_current_leader_epoch(3)
                    .with_leader_epoch(2)
            };
            let t = offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                .with_topic(TopicName(s("t")))
                .with_partitions(vec![p(0), p(1)]);
            let mut r = OffsetForLeaderEpochRequest::default().with_topics(vec![t.clone(), t]);
            if v >= 3 {
                r.replica_id = BrokerId(-1);
            }
            if v >= 4 {
                r.unknown_tagged_fields = tags();
            }
            r
        });
    }

    #[test]
    fn metadata_every_version() {
        assert_walks(ApiKey::Metadata, |v| {
            let mut t = metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(s("a"))));
            if v >= 10 {
                t.topic_id = uuid::Uuid::from_u128(9);
            }
            let mut r = MetadataRequest::default().with_topics(Some(vec![t.clone(), t]));
            if v >= 4 {
                r.allow_auto_topic_creation = false;
            }
            if (8..=10).contains(&v) {
                r.include_cluster_authorized_operations = true;
            }
            if v >= 8 {
                r.include_topic_authorized_operations = true;
            }
            r
        });
    }

    #[test]
    fn list_offsets_every_version() {
        assert_walks(ApiKey::ListOffsets, |v| {
            let p = list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(1)
                .with_current_leader_epoch(if v >= 4 { 2 } else { -1 })
                .with_timestamp(-2);
            let t = list_offsets_request::ListOffsetsTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![p.clone(), p]);
            let mut r = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![t.clone(), t]);
            if v >= 2 {
                r.isolation_level = 1;
            }
            if v >= 10 {
                r.timeout_ms = 100;
            }
            r
        });
    }

    #[test]
    fn produce_every_version() {
        assert_walks(ApiKey::Produce, |v| {
            let p = produce_request::PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from_static(b"not-a-batch")));
            let mut t = produce_request::TopicProduceData::default()
                .with_partition_data(vec![p.clone(), p]);
            if v >= 13 {
                t.topic_id = uuid::Uuid::from_u128(1);
            } else {
                t.name = TopicName(s("t"));
            }
            ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(s("tx"))))
                .with_acks(-1)
                .with_timeout_ms(10)
                .with_topic_data(vec![t.clone(), t])
        });
    }

    #[test]
    fn sasl_apis_every_version() {
        assert_walks(ApiKey::SaslHandshake, |_| {
            SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-256"))
        });
        assert_walks(ApiKey::SaslAuthenticate, |v| {
            let mut r = SaslAuthenticateRequest::default()
                .with_auth_bytes(bytes::Bytes::from_static(b"n,,n=alice,r=abc"));
            if v >= 2 {
                r.unknown_tagged_fields = tags();
            }
            r
        });
    }

    #[test]
    fn membership_apis_every_version() {
        assert_walks(ApiKey::JoinGroup, |v| {
            let p = join_group_request::JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(bytes::Bytes::from_static(b"meta"));
            let mut r = JoinGroupRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_session_timeout_ms(6000)
                .with_rebalance_timeout_ms(9000)
                .with_member_id(s("m"))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![p.clone(), p]);
            if v >= 5 {
                r.group_instance_id = Some(s("i"));
            }
            if v >= 8 {
                r.reason = Some(s("why"));
            }
            r
        });
        assert_walks(ApiKey::SyncGroup, |v| {
            let a = sync_group_request::SyncGroupRequestAssignment::default()
                .with_member_id(s("m"))
                .with_assignment(bytes::Bytes::from_static(b"a"));
            let mut r = SyncGroupRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_generation_id(2)
                .with_member_id(s("m"))
                .with_assignments(vec![a.clone(), a]);
            if v >= 3 {
                r.group_instance_id = Some(s("i"));
            }
            if v >= 5 {
                r.protocol_type = Some(s("consumer"));
                r.protocol_name = Some(s("range"));
            }
            r
        });
        assert_walks(ApiKey::LeaveGroup, |v| {
            let mut r = LeaveGroupRequest::default().with_group_id(GroupId(s("g")));
            if v <= 2 {
                r.member_id = s("m");
            } else {
                let mut m = leave_group_request::MemberIdentity::default()
                    .with_member_id(s("m"))
                    .with_group_instance_id(Some(s("i")));
                if v >= 5 {
                    m.reason = Some(s("bye"));
                }
                r.members = vec![m.clone(), m];
            }
            r
        });
        assert_walks(ApiKey::ListGroups, |v| {
            let mut r = ListGroupsRequest::default();
            if v >= 4 {
                r.states_filter = vec![s("Stable"), s("Empty")];
            }
            if v >= 5 {
                r.types_filter = vec![s("classic")];
            }
            r
        });
        assert_walks(ApiKey::DescribeGroups, |v| {
            let mut r = DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(s("a")), GroupId(s("b"))]);
            if v >= 3 {
                r.include_authorized_operations = true;
            }
            r
        });
        assert_walks(ApiKey::OffsetDelete, |_| {
            let p = offset_delete_request::OffsetDeleteRequestPartition::default()
                .with_partition_index(3);
            let t = offset_delete_request::OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![p.clone(), p]);
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_topics(vec![t.clone(), t])
        });
    }

    #[test]
    fn group_apis_every_version() {
        assert_walks(ApiKey::FindCoordinator, |v| {
            let mut r = FindCoordinatorRequest::default();
            if v <= 3 {
                r.key = s("g");
            } else {
                r.coordinator_keys = vec![s("g1"), s("g2")];
            }
            if v >= 1 {
                r.key_type = 0;
            }
            r
        });
        assert_walks(ApiKey::OffsetCommit, |v| {
            let p = offset_commit_request::OffsetCommitRequestPartition::default()
                .with_partition_index(1)
                .with_committed_offset(5)
                .with_committed_leader_epoch(if v >= 6 { 1 } else { -1 })
                .with_committed_metadata(Some(s("m")));
            let t = offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![p.clone(), p]);
            let mut r = OffsetCommitRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_generation_id_or_member_epoch(3)
                .with_member_id(s("m"))
                .with_topics(vec![t.clone(), t]);
            if v >= 7 {
                r.group_instance_id = Some(s("i"));
            }
            if v <= 4 {
                r.retention_time_ms = 100;
            }
            r
        });
        assert_walks(ApiKey::OffsetFetch, |v| {
            let mut r = OffsetFetchRequest::default();
            if v <= 7 {
                let t = offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_indexes(vec![1, 2]);
                r.group_id = GroupId(s("g"));
                r.topics = Some(vec![t.clone(), t]);
            } else {
                let t = offset_fetch_request::OffsetFetchRequestTopics::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_indexes(vec![1, 2]);
                let mut g = offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s("g")))
                    .with_topics(Some(vec![t.clone(), t]));
                if v >= 9 {
                    g.member_id = Some(s("m"));
                    g.member_epoch = 4;
                }
                r.groups = vec![g.clone(), g];
            }
            if v >= 7 {
                r.require_stable = true;
            }
            r
        });
    }

    #[test]
    fn impossible_counts_are_refused_at_every_level() {
        // Metadata v0: topics count 2^31 - 1 in a 4-byte body (the fuzzer's find).
        let e = check(ApiKey::Metadata, 0, &[0x7f, 0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!((e.count, e.position, e.remaining), (i32::MAX as i64, 0, 0));
        // Fetch v11: one topic whose partition count is huge.
        let mut body = Vec::new();
        body.extend_from_slice(&[0; 4 * 3]); // replica, max_wait, min_bytes
        body.extend_from_slice(&[0; 4 + 1 + 8]); // max_bytes, isolation, session id+epoch
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.push(b't');
        body.extend_from_slice(&0x0100_0000i32.to_be_bytes());
        body.extend_from_slice(&[0; 64]);
        let e = check(ApiKey::Fetch, 11, &body).unwrap_err();
        assert_eq!(e.count, 0x0100_0000);
        // Flexible Fetch v12, compact forgotten-topics count 2^32-2.
        let mut body = vec![0u8; 4 * 3 + 4 + 1 + 8];
        body.push(1); // zero topics
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(check(ApiKey::Fetch, 12, &body).is_err());
        // A compact count in an over-long varint: the codec stops after 5 bytes and keeps the
        // low 32 bits (0x8bbd502b here), so must the walk (the fuzzer's second find).
        let mut body = vec![0u8; 4 * 3 + 4 + 1 + 8];
        body.extend_from_slice(&[0xab, 0xa0, 0xf5, 0xdd, 0xd8, 0x45, 0xb4]);
        let e = check(ApiKey::Fetch, 14, &body).unwrap_err();
        assert_eq!(e.count, 0x8bbd_502b - 1);
        // A count that fits passes; the codec still judges the rest.
        assert_eq!(
            check(ApiKey::Metadata, 0, &[0, 0, 0, 1, 0, 1, b'x']),
            Ok(())
        );
        // JoinGroup v5: group "g", timeouts, member "", no instance id, type "c", then a
        // protocol count of 2^31 - 1 in a body with 2 bytes left.
        let mut body = vec![0, 1, b'g'];
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(&[0, 0, 0xff, 0xff, 0, 1, b'c']);
        body.extend_from_slice(&i32::MAX.to_be_bytes());
        body.extend_from_slice(&[0, 0]);
        let e = check(ApiKey::JoinGroup, 5, &body).unwrap_err();
        assert_eq!(e.count, i64::from(i32::MAX));
        // Requests the gateway never decodes are not walked.
        assert_eq!(check(ApiKey::Heartbeat, 4, &[0xff; 8]), Ok(()));
    }
}
