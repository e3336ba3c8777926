//! The consumer's fallback when the UDP fetch endpoint does not answer: a minimal blocking
//! Kafka client (ListOffsets v1 to resolve earliest/latest, Fetch v4) for one partition of
//! the gateway's Kafka TCP listener. No ApiVersions round trip: these versions are the
//! oldest the gateway (and every broker since 0.11) serves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::log::batch::BatchHeader;

use crate::fetch::StartAt;
use crate::kafka::frame::encode_request;

const FETCH_VERSION: i16 = 4;
const LIST_OFFSETS_VERSION: i16 = 1;
/// Kafka error code OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Largest response frame accepted.
const MAX_FRAME: usize = 256 << 20;

/// Batches of one fetch: (first wanted offset, whole batch bytes).
pub type FetchedBatches = Vec<(i64, Vec<u8>)>;

pub struct KafkaFetcher {
    stream: TcpStream,
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: u32,
    correlation: i32,
    start: StartAt,
}

impl KafkaFetcher {
    pub fn connect(
        addr: &str,
        topic: &str,
        partition: i32,
        start: StartAt,
        max_bytes: u32,
    ) -> Result<KafkaFetcher> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut k = KafkaFetcher {
            stream,
            topic: topic.to_string(),
            partition,
            offset: 0,
            max_bytes: max_bytes.max(1),
            correlation: 0,
            start,
        };
        k.offset = match start {
            StartAt::Offset(o) => o,
            StartAt::Earliest => k.list_offset(-2)?,
            StartAt::Latest => k.list_offset(-1)?,
        };
        Ok(k)
    }

    pub fn position(&self) -> i64 {
        self.offset
    }

    fn round_trip<Req: Encodable + HeaderVersion, Resp: Decodable + HeaderVersion>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp> {
        self.correlation += 1;
        let frame = encode_request(key, version, self.correlation, "kxgw-consume", req)
            .context("encoding the request")?;
        self.stream
            .write_all(&frame)
            .context("sending the request")?;
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .context("reading the response size")?;
        let n = i32::from_be_bytes(len);
        if n < 0 || n as usize > MAX_FRAME {
            bail!("response frame of {n} bytes");
        }
        let mut body = vec![0u8; n as usize];
        self.stream
            .read_exact(&mut body)
            .context("reading the response")?;
        let mut b = Bytes::from(body);
        let rh = ResponseHeader::decode(&mut b, Resp::header_version(version))
            .context("decoding the response header")?;
        if rh.correlation_id != self.correlation {
            bail!(
                "correlation id {} in answer to {}",
                rh.correlation_id,
                self.correlation
            );
        }
        Resp::decode(&mut b, version).context("decoding the response")
    }

    fn list_offset(&mut self, timestamp: i64) -> Result<i64> {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(self.partition)
                    .with_timestamp(timestamp)])]);
        let resp: ListOffsetsResponse =
            self.round_trip(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &req)?;
        let p = resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == self.partition)
            .context("ListOffsets answer without our partition")?;
        if p.error_code != 0 {
            bail!("ListOffsets: Kafka error code {}", p.error_code);
        }
        Ok(p.offset)
    }

    /// One Fetch: the whole batches it returned as (first wanted offset, batch bytes); None
    /// when there is nothing at the position (the log end).
    pub fn fetch(&mut self, max_wait_ms: i32) -> Result<Option<FetchedBatches>> {
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(self.max_bytes as i32)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(self.topic.clone())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(self.partition)
                    .with_fetch_offset(self.offset)
                    .with_partition_max_bytes(self.max_bytes as i32)])]);
        let resp: FetchResponse = self.round_trip(ApiKey::Fetch, FETCH_VERSION, &req)?;
        let p = resp
            .responses
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == self.partition)
            .context("Fetch answer without our partition")?;
        if p.error_code == OFFSET_OUT_OF_RANGE && self.start != StartAt::Latest {
            let to = self.list_offset(-2)?;
            eprintln!(
                "kxgw consume: offset {} out of range, continuing at {to}",
                self.offset
            );
            self.offset = to;
            return Ok(Some(Vec::new()));
        }
        if p.error_code != 0 {
            bail!("Fetch: Kafka error code {}", p.error_code);
        }
        let records = p.records.clone().unwrap_or_default();
        let mut out = Vec::new();
        let mut pos = 0;
        // Whole batches only; a broker may cut the last one short.
        while let Ok(h) = BatchHeader::parse(&records[pos..]) {
            let end = pos + h.total_len();
            if end > records.len() {
                break;
            }
            if h.next_offset() > self.offset {
                out.push((self.offset, records[pos..end].to_vec()));
                self.offset = h.next_offset();
            }
            pos = end;
        }
        Ok((!out.is_empty()).then_some(out))
    }
}
