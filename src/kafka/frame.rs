//! Request framing: `i32 size ++ size bytes`. A size that is negative, too small for a request
//! header, or above the limit means the peer is not speaking the protocol (or is hostile):
//! the connection is closed, as a Kafka broker does (`InvalidReceiveException`).

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};

/// Smallest request: api_key(2) + api_version(2) + correlation_id(4) + client_id length(2).
pub const MIN_REQUEST: usize = 10;

/// Why the input stream cannot be framed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is negative, tiny or larger than the limit.
    #[error("request length prefix {size} outside 10..={limit} bytes")]
    BadSize {
        /// The prefix as received.
        size: i64,
        /// The configured limit.
        limit: usize,
    },
}

/// Accumulates input bytes and yields whole request frames (without the length prefix).
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    limit: usize,
}

impl Framer {
    /// A framer refusing requests larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Framer {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many bytes the framer still wants before it can return the next frame
    /// (at least 1 when a frame is incomplete, 0 when one is ready or the prefix is bad).
    pub fn wants(&self) -> usize {
        match self.peek_size() {
            None => 4 - self.buf.len(),
            Some(Ok(size)) => (4 + size).saturating_sub(self.buf.len()),
            Some(Err(_)) => 0,
        }
    }

    fn peek_size(&self) -> Option<Result<usize, FrameError>> {
        if self.buf.len() < 4 {
            return None;
        }
        let size = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let ok = usize::try_from(size)
            .ok()
            .filter(|&s| (MIN_REQUEST..=self.limit).contains(&s));
        Some(ok.ok_or(FrameError::BadSize {
            size: size.into(),
            limit: self.limit,
        }))
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        match self.peek_size() {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(size)) if self.buf.len() >= 4 + size => {
                self.buf.advance(4);
                let frame = self.buf.split_to(size).freeze();
                if self.buf.is_empty() {
                    // Release the allocation of a burst once it has been consumed.
                    self.buf = BytesMut::new();
                }
                Ok(Some(frame))
            }
            Some(Ok(_)) => Ok(None),
        }
    }
}

/// Encodes one request as a client sends it: the `i32` size, the request header (in the header
/// version `key` and `version` call for), then the body. Every client-side encoder in the
/// crate (the fallback consumer, the bench client, tests and fuzz seeds) goes through here.
pub fn encode_request<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation: i32,
    client_id: &'static str,
    req: &R,
) -> anyhow::Result<Vec<u8>> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let mut buf = BytesMut::with_capacity(128);
    buf.extend_from_slice(&[0; 4]);
    header.encode(&mut buf, key.request_header_version(version))?;
    req.encode(&mut buf, version)?;
    let len = i32::try_from(buf.len() - 4)?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let mut wire = Vec::new();
        for n in [10usize, 33, 1000] {
            wire.extend_from_slice(&(n as i32).to_be_bytes());
            wire.extend((0..n).map(|i| (i % 200) as u8));
        }
        for step in [1usize, 3, 7, 4096] {
            let mut f = Framer::new(1 << 20);
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                f.extend(piece);
                while let Some(fr) = f.next_frame().unwrap() {
                    got.push(fr.len());
                }
            }
            assert_eq!(got, vec![10, 33, 1000], "step {step}");
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn hostile_prefixes_are_refused_before_buffering() {
        for prefix in [i32::MIN, -1, 0, 9, (1 << 20) + 1, i32::MAX] {
            let mut f = Framer::new(1 << 20);
            f.extend(&prefix.to_be_bytes());
            assert!(f.next_frame().is_err(), "prefix {prefix}");
            assert_eq!(f.wants(), 0);
        }
        // 2 GiB - 1: the classic "garbage that looks like a length".
        let mut f = Framer::new(100 << 20);
        f.extend(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert_eq!(
            f.next_frame(),
            Err(FrameError::BadSize {
                size: i32::MAX.into(),
                limit: 100 << 20
            })
        );
    }
}
