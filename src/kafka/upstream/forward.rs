//! One client connection's forwarding state, sans-I/O: request frames in
//! ([`Forwarder::send`]), bytes for the upstream socket out ([`Forwarder::outbound`]), the
//! upstream's bytes in ([`Forwarder::receive`]) and the client's response out
//! ([`Forwarder::take_response`]).
//!
//! One request is in flight at a time: the session holds back the requests behind it, as a
//! broker answers one request of a connection at a time, so responses reach the client in
//! request order, interleaved correctly with those the gateway answers itself.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FindCoordinatorResponse,
    MetadataResponse, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::rewrite::{self, Rewrite};
use super::ClusterView;
use crate::kafka::chunk::{encode_response, Chunk};

/// Largest upstream response accepted (a Metadata of a large cluster is a few MiB).
const MAX_RESPONSE: usize = 256 << 20;

/// Why a forwarded exchange failed (the client connection is closed, as when a broker dies).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The upstream sent a frame we cannot use.
    #[error("upstream answered badly: {0}")]
    Protocol(String),
}

#[derive(Debug)]
struct InFlight {
    client_cid: i32,
    upstream_cid: i32,
    key: i16,
    version: i16,
    rewrite: Rewrite,
}

/// An upstream answer the session asked to see ([`Rewrite::Observe`], [`Rewrite::Internal`]).
#[derive(Debug)]
pub struct Observed {
    /// The request's api key.
    pub key: i16,
    /// The request's version.
    pub version: i16,
    /// The response frame (without its size prefix, from the correlation id on).
    pub frame: Bytes,
}

/// Forwarding state of one client connection.
#[derive(Debug, Default)]
pub struct Forwarder {
    next_cid: i32,
    out: Vec<u8>,
    inbuf: BytesMut,
    in_flight: Option<InFlight>,
    used: bool,
    observed: Option<Observed>,
    /// The request in flight has not been routed to an upstream connection yet.
    unrouted: bool,
}

impl Forwarder {
    /// Queues one request frame (as received, without its size prefix) for the upstream,
    /// with the correlation id replaced by our own.
    pub fn send(&mut self, frame: &[u8], rewrite: Rewrite) {
        debug_assert!(self.in_flight.is_none() && frame.len() >= 8);
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let client_cid = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        self.next_cid = self.next_cid.wrapping_add(1);
        let upstream_cid = self.next_cid;
        self.out
            .extend_from_slice(&(frame.len() as i32).to_be_bytes());
        self.out.extend_from_slice(&frame[..4]);
        self.out.extend_from_slice(&upstream_cid.to_be_bytes());
        self.out.extend_from_slice(&frame[8..]);
        self.in_flight = Some(InFlight {
            client_cid,
            upstream_cid,
            key,
            version,
            rewrite,
        });
        self.used = true;
        self.unrouted = true;
    }

    /// The api key of the request queued by [`Self::send`], once, before any of it is
    /// written: the listener picks its upstream connection for it (see
    /// [`super::ClusterView::forward_target`]).
    pub fn take_unrouted(&mut self) -> Option<i16> {
        if !std::mem::take(&mut self.unrouted) {
            return None;
        }
        self.in_flight.as_ref().map(|f| f.key)
    }

    /// Whether a forwarded request awaits its response.
    pub fn waiting(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether this connection ever forwarded (it needs an upstream connection).
    pub fn used(&self) -> bool {
        self.used
    }

    /// The last answer to an observed or internal request, once.
    pub fn take_observed(&mut self) -> Option<Observed> {
        self.observed.take()
    }

    /// Bytes to write to the upstream; the caller drains what it wrote.
    pub fn outbound(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Feeds bytes read from the upstream.
    pub fn receive(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
    }

    /// Whether reading from the upstream is useful now.
    pub fn wants_input(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The client's response once the upstream's has arrived whole.
    pub fn take_response(
        &mut self,
        view: &ClusterView,
    ) -> Result<Option<Vec<Chunk>>, ForwardError> {
        let Some(f) = &self.in_flight else {
            if !self.inbuf.is_empty() {
                return Err(ForwardError::Protocol(
                    "bytes without a request in flight".into(),
                ));
            }
            return Ok(None);
        };
        if self.inbuf.len() < 4 {
            return Ok(None);
        }
        let size = i32::from_be_bytes([self.inbuf[0], self.inbuf[1], self.inbuf[2], self.inbuf[3]]);
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| (4..=MAX_RESPONSE).contains(&s))
            .ok_or_else(|| ForwardError::Protocol(format!("response size {size}")))?;
        if self.inbuf.len() < 4 + size {
            return Ok(None);
        }
        self.inbuf.advance(4);
        let mut frame = self.inbuf.split_to(size);
        let cid = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        if cid != f.upstream_cid {
            return Err(ForwardError::Protocol(format!(
                "correlation id {cid} in answer to {}",
                f.upstream_cid
            )));
        }
        let chunks = match f.rewrite {
            Rewrite::None => None,
            Rewrite::Observe | Rewrite::Internal => {
                let frame = frame.clone().freeze();
                let internal = f.rewrite == Rewrite::Internal;
                self.observed = Some(Observed {
                    key: f.key,
                    version: f.version,
                    frame,
                });
                // The gateway's own question: the client sees nothing of it.
                internal.then(Vec::new)
            }
            _ => rewritten(view, f, frame.clone().freeze())?,
        };
        let chunks = chunks.unwrap_or_else(|| {
            frame[..4].copy_from_slice(&f.client_cid.to_be_bytes());
            let mut wire = Vec::with_capacity(4 + size);
            wire.extend_from_slice(&(size as i32).to_be_bytes());
            wire.extend_from_slice(&frame);
            vec![Chunk::Mem(Bytes::from(wire))]
        });
        self.in_flight = None;
        Ok(Some(chunks))
    }
}

/// Decodes, rewrites and re-encodes a response; None passes it through unchanged (an error
/// answer, e.g. ApiVersions' UNSUPPORTED_VERSION in v0, keeps the cluster's bytes).
fn rewritten(
    view: &ClusterView,
    f: &InFlight,
    mut frame: Bytes,
) -> Result<Option<Vec<Chunk>>, ForwardError> {
    let bad = |e: anyhow::Error| ForwardError::Protocol(format!("{e:#}"));
    let Ok(key) = ApiKey::try_from(f.key) else {
        return Ok(None);
    };
    let v = f.version;
    // ApiVersions answers always have a v0 header (KIP-511).
    let hv = key.response_header_version(v);
    ResponseHeader::decode(&mut frame, hv).map_err(bad)?;
    fn enc<M: Encodable>(
        name: &'static str,
        cid: i32,
        hv: i16,
        body: &M,
        v: i16,
    ) -> Result<Option<Vec<Chunk>>, ForwardError> {
        encode_response(name, cid, hv, body, v, &[])
            .map(Some)
            .map_err(|e| ForwardError::Protocol(e.to_string()))
    }
    let cid = f.client_cid;
    match f.rewrite {
        Rewrite::None | Rewrite::Observe | Rewrite::Internal => Ok(None),
        Rewrite::ApiVersions => {
            let mut r = ApiVersionsResponse::decode(&mut frame, v).map_err(bad)?;
            if r.error_code != 0 {
                return Ok(None);
            }
            rewrite::api_versions(&mut r);
            enc("ApiVersions", cid, hv, &r, v)
        }
        Rewrite::Metadata => {
            let mut r = MetadataResponse::decode(&mut frame, v).map_err(bad)?;
            rewrite::metadata(view, &mut r);
            enc("Metadata", cid, hv, &r, v)
        }
        Rewrite::FindCoordinator => {
            let mut r = FindCoordinatorResponse::decode(&mut frame, v).map_err(bad)?;
            rewrite::find_coordinator(view, &mut r);
            enc("FindCoordinator", cid, hv, &r, v)
        }
        Rewrite::DescribeCluster => {
            let mut r = DescribeClusterResponse::decode(&mut frame, v).map_err(bad)?;
            rewrite::describe_cluster(view, &mut r);
            enc("DescribeCluster", cid, hv, &r, v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::frame::{decode_response, encode_request};
    use crate::kafka::session::chunks_to_vec;
    use crate::kafka::upstream::{parse_peer, ClusterConfig};
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::{
        BrokerId, HeartbeatRequest, HeartbeatResponse, MetadataRequest,
    };

    fn view() -> ClusterView {
        ClusterView::new(ClusterConfig {
            upstream: vec!["b:1".into()],
            node_id: 0,
            peers: vec![parse_peer("0=gw:7").unwrap()],
        })
    }

    /// The upstream's side: decodes the forwarded request and answers it.
    fn answer<M: Encodable>(fw: &mut Forwarder, key: ApiKey, v: i16, body: &M) -> i32 {
        let out = std::mem::take(fw.outbound());
        let cid = i32::from_be_bytes([out[8], out[9], out[10], out[11]]);
        let chunks =
            encode_response("t", cid, key.response_header_version(v), body, v, &[]).unwrap();
        fw.receive(&chunks_to_vec(&chunks).unwrap());
        cid
    }

    #[test]
    fn correlation_ids_are_remapped_both_ways_and_split_input_waits() {
        let view = view();
        let mut fw = Forwarder::default();
        let req =
            encode_request(ApiKey::Heartbeat, 4, 777, "c", &HeartbeatRequest::default()).unwrap();
        fw.send(&req[4..], Rewrite::None);
        assert!(fw.waiting());
        let up_cid = {
            let out = fw.outbound().clone();
            assert_eq!(out.len(), req.len());
            assert_eq!(&out[..8], &req[..8], "size, key and version unchanged");
            assert_eq!(&out[12..], &req[12..], "header rest and body unchanged");
            i32::from_be_bytes([out[8], out[9], out[10], out[11]])
        };
        assert_ne!(up_cid, 777);
        let resp = HeartbeatResponse::default().with_error_code(27);
        let mut wire = Vec::new();
        let chunks = encode_response("t", up_cid, 1, &resp, 4, &[]).unwrap();
        wire.extend(chunks_to_vec(&chunks).unwrap());
        fw.outbound().clear();
        fw.receive(&wire[..5]);
        assert!(fw.take_response(&view).unwrap().is_none(), "incomplete");
        fw.receive(&wire[5..]);
        let got = fw.take_response(&view).unwrap().unwrap();
        let mut b = Bytes::from(chunks_to_vec(&got).unwrap()).slice(4..);
        let r: HeartbeatResponse = decode_response(ApiKey::Heartbeat, 4, 777, &mut b).unwrap();
        assert_eq!(r.error_code, 27);
        assert!(!fw.waiting());
    }

    #[test]
    fn a_wrong_correlation_id_is_an_error() {
        let view = view();
        let mut fw = Forwarder::default();
        let req =
            encode_request(ApiKey::Heartbeat, 0, 1, "c", &HeartbeatRequest::default()).unwrap();
        fw.send(&req[4..], Rewrite::None);
        let chunks = encode_response("t", 4242, 0, &HeartbeatResponse::default(), 0, &[]).unwrap();
        fw.receive(&chunks_to_vec(&chunks).unwrap());
        assert!(fw.take_response(&view).is_err());
    }

    #[test]
    fn metadata_is_rewritten_with_the_clients_correlation_id() {
        let view = view();
        let mut fw = Forwarder::default();
        let req =
            encode_request(ApiKey::Metadata, 12, 5, "c", &MetadataRequest::default()).unwrap();
        fw.send(&req[4..], Rewrite::Metadata);
        let body =
            MetadataResponse::default().with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(0))
                .with_host(crate::kafka::apis::sb("broker"))
                .with_port(9092)]);
        answer(&mut fw, ApiKey::Metadata, 12, &body);
        let got = fw.take_response(&view).unwrap().unwrap();
        let mut b = Bytes::from(chunks_to_vec(&got).unwrap()).slice(4..);
        let r: MetadataResponse = decode_response(ApiKey::Metadata, 12, 5, &mut b).unwrap();
        assert_eq!((r.brokers[0].host.as_str(), r.brokers[0].port), ("gw", 7));
    }
}
