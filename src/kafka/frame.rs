//! Framing: `i32 size ++ size bytes`, for requests and responses. A request size that is
//! negative, too small for a request header, or above the limit means the peer is not speaking
//! the protocol (or is hostile): the connection is closed, as a Kafka broker does
//! (`InvalidReceiveException`).
//!
//! Every frame the crate and its tools write or read goes through here: [`encode_request`] and
//! [`decode_response`] on the client side, [`encode_response_into`] on the server side (the
//! listener's writer splices file ranges through it), [`Framer`] for the requests it receives.

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

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
    min: usize,
}

impl Framer {
    /// A framer refusing requests larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Framer {
            buf: BytesMut::new(),
            limit,
            min: MIN_REQUEST,
        }
    }

    /// Sets the smallest frame accepted (bare SASL tokens after a SaslHandshake v0 may be
    /// shorter than a request header).
    pub fn set_min(&mut self, min: usize) {
        self.min = min;
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
            .filter(|&s| (self.min..=self.limit).contains(&s));
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

/// `frame` with its `i32` size in front: for frames written by hand (versions the codec does
/// not have, malformed requests in tests).
pub fn size_prefixed(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&(frame.len() as i32).to_be_bytes());
    out.extend_from_slice(frame);
    out
}

/// A body encoded already (a version the codec does not have, such as ListOffsets v0), so it
/// can be framed by [`encode_response_into`] like any message.
pub struct RawBody<'a>(pub &'a [u8]);

impl Encodable for RawBody<'_> {
    fn encode<B: ByteBufMut>(&self, buf: &mut B, _version: i16) -> anyhow::Result<()> {
        buf.put_slice(self.0);
        Ok(())
    }

    fn compute_size(&self, _version: i16) -> anyhow::Result<usize> {
        Ok(self.0.len())
    }
}

/// Encodes one response frame: the `i32` size, the response header (`header_version`, with
/// `correlation_id`), then `body` at `version`, into the buffer `new_buf` makes for a frame of
/// the given total size. The listener passes a buffer that splices file ranges; others pass
/// `BytesMut::with_capacity`.
pub fn encode_response_into<B: ByteBufMut, M: Encodable>(
    correlation_id: i32,
    header_version: i16,
    body: &M,
    version: i16,
    new_buf: impl FnOnce(usize) -> B,
) -> anyhow::Result<B> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let total = header.compute_size(header_version)? + body.compute_size(version)?;
    let Ok(frame_len) = i32::try_from(total) else {
        bail!("response of {total} bytes exceeds the i32 frame");
    };
    let mut buf = new_buf(4 + total);
    buf.put_i32(frame_len);
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, version)?;
    Ok(buf)
}

/// Largest response a client accepts (a bad size prefix must not allocate gigabytes).
pub const MAX_RESPONSE: usize = 256 << 20;

/// The size a response frame's `i32` prefix announces, checked against [`MAX_RESPONSE`].
pub fn response_size(prefix: [u8; 4]) -> anyhow::Result<usize> {
    let n = i32::from_be_bytes(prefix);
    match usize::try_from(n) {
        Ok(n) if n <= MAX_RESPONSE => Ok(n),
        _ => bail!("response frame of {n} bytes"),
    }
}

/// Takes the first whole response frame (without its size prefix) off the front of `wire`.
pub fn split_response(wire: &mut Bytes) -> anyhow::Result<Bytes> {
    let Some(prefix) = wire.get(..4) else {
        bail!("{} bytes: no response size", wire.len());
    };
    let n = response_size(prefix.try_into()?)?;
    if wire.len() < 4 + n {
        bail!("response frame of {n} bytes, {} received", wire.len() - 4);
    }
    wire.advance(4);
    Ok(wire.split_to(n))
}

/// Decodes the response header at the front of `frame` (a response frame without its size
/// prefix) in the header version `key` and `version` call for and checks it answers
/// `correlation`; `frame` is left holding the body.
pub fn decode_response_header(
    key: ApiKey,
    version: i16,
    correlation: i32,
    frame: &mut Bytes,
) -> anyhow::Result<()> {
    let h = ResponseHeader::decode(frame, key.response_header_version(version))
        .context("decoding the response header")?;
    if h.correlation_id != correlation {
        bail!(
            "correlation id {} in answer to {correlation}",
            h.correlation_id
        );
    }
    Ok(())
}

/// Decodes one response (header checked by [`decode_response_header`], then the body);
/// whatever follows the response in `frame` is left there.
pub fn decode_response<R: Decodable>(
    key: ApiKey,
    version: i16,
    correlation: i32,
    frame: &mut Bytes,
) -> anyhow::Result<R> {
    decode_response_header(key, version, correlation, frame)?;
    R::decode(frame, version).with_context(|| format!("decoding a {key:?} v{version} response"))
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
    fn responses_round_trip_and_bad_frames_are_refused() {
        use kafka_protocol::messages::MetadataResponse;
        let body = MetadataResponse::default().with_throttle_time_ms(7);
        for version in [3i16, 9] {
            let key = ApiKey::Metadata;
            let hv = key.response_header_version(version);
            let wire = encode_response_into(5, hv, &body, version, BytesMut::with_capacity)
                .unwrap()
                .freeze();
            // Two frames back to back: each is taken off whole.
            let mut two = Bytes::from([wire.as_ref(), wire.as_ref()].concat());
            for _ in 0..2 {
                let mut f = split_response(&mut two).unwrap();
                let got: MetadataResponse = decode_response(key, version, 5, &mut f).unwrap();
                assert_eq!(got, body);
                assert_eq!(f.len(), 0);
            }
            assert!(split_response(&mut two).is_err());
            let mut f = wire.slice(4..);
            assert!(decode_response::<MetadataResponse>(key, version, 6, &mut f).is_err());
            let mut short = wire.slice(..wire.len() - 1);
            assert!(split_response(&mut short).is_err());
        }
        let raw =
            encode_response_into(31, 0, &RawBody(&[1, 2]), 0, BytesMut::with_capacity).unwrap();
        assert_eq!(raw.as_ref(), &[0, 0, 0, 6, 0, 0, 0, 31, 1, 2]);
        assert_eq!(size_prefixed(&[9]), vec![0, 0, 0, 1, 9]);
        for prefix in [-1i32, (MAX_RESPONSE + 1) as i32] {
            assert!(response_size(prefix.to_be_bytes()).is_err(), "{prefix}");
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
