//! Test helpers: a session over a real log directory, request encoding and response
//! decoding with the kafka-protocol crate (the client side of the same codec).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::apis::{Ctx, NodeInfo};
use super::session::{chunks_to_vec, Session, SessionError};
use super::stats::Stats;
use crate::log::LogDir;

pub struct Harness {
    pub log: Arc<LogDir>,
    pub node: NodeInfo,
    pub stats: Stats,
    pub session: Session,
}

impl Harness {
    pub fn new(log: Arc<LogDir>) -> Self {
        Harness {
            log,
            node: NodeInfo::gateway("198.18.0.1", 9092),
            stats: Stats::default(),
            session: Session::new(1 << 20),
        }
    }

    pub fn empty() -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Self::new(LogDir::open(dir.path(), None).unwrap()), dir)
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<u8>, SessionError> {
        self.session.receive(bytes);
        self.step(Instant::now())
    }

    pub fn step(&mut self, now: Instant) -> Result<Vec<u8>, SessionError> {
        let ctx = Ctx {
            log: &self.log,
            node: &self.node,
            stats: &self.stats,
            authz: &super::auth::ALLOW_ALL,
        };
        self.session.advance(&ctx, now)?;
        Ok(chunks_to_vec(&self.session.out().take()).unwrap())
    }

    /// Sends one request and returns its decoded response (which must be the only one).
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Resp {
        let out = self.feed(&request(key, version, 7, req)).unwrap();
        decode_response(key, version, 7, &out)
    }
}

pub fn request<Req: Encodable>(key: ApiKey, version: i16, corr: i32, req: &Req) -> Vec<u8> {
    super::frame::encode_request(key, version, corr, "test", req).unwrap()
}

pub fn decode_response<Resp: Decodable>(key: ApiKey, version: i16, corr: i32, wire: &[u8]) -> Resp {
    let mut wire = Bytes::copy_from_slice(wire);
    let mut b = super::frame::split_response(&mut wire).unwrap();
    assert_eq!(wire.len(), 0, "exactly one whole response frame");
    let resp = super::frame::decode_response(key, version, corr, &mut b).unwrap();
    assert_eq!(
        b.remaining(),
        0,
        "{key:?} v{version}: trailing bytes in response"
    );
    resp
}
