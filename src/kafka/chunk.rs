//! Responses as a sequence of chunks: encoded bytes in memory, and ranges of segment files
//! that go out with sendfile(2) (or pread + write) without passing through the encoder.
//!
//! The `kafka-protocol` encoder writes a records field as `length ++ bytes`. To splice file
//! ranges in, each records field is given a *placeholder* `Bytes` that views the log's mapped
//! pages (no copy). [`SpliceBuf`] intercepts the encoder's `put_slice` of exactly that slice
//! and emits a [`Chunk::File`] instead of copying the bytes, so the length prefixes computed
//! by the encoder are right and the record bytes never enter the response buffer.

use std::fs::File;
use std::sync::Arc;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::Encodable;

use super::frame::encode_response_into;

/// A byte range of an open file (a log segment). The `Arc<File>` keeps the inode readable
/// even if retention deletes the segment while the response is in flight.
#[derive(Clone, Debug)]
pub struct FileRange {
    /// The segment file.
    pub file: Arc<File>,
    /// File position of the first byte still to send.
    pub position: u64,
    /// Bytes still to send.
    pub len: usize,
}

/// One piece of a response, written in order.
#[derive(Clone, Debug)]
pub enum Chunk {
    /// Encoded protocol bytes (length prefix, headers, fields).
    Mem(Bytes),
    /// Record bytes sent straight from a segment file.
    File(FileRange),
}

impl Chunk {
    /// Bytes this chunk puts on the wire.
    pub fn len(&self) -> usize {
        match self {
            Chunk::Mem(b) => b.len(),
            Chunk::File(r) => r.len,
        }
    }

    /// True when the chunk carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A records field to splice: `placeholder` is what the encoder sees (its length is the
/// records length; its pointer identifies it), `range` is what goes on the wire instead.
#[derive(Clone, Debug)]
pub struct Hole {
    /// A no-copy view of the record bytes (e.g. the segment mapping).
    pub placeholder: Bytes,
    /// Where the same bytes live in the segment file.
    pub range: FileRange,
}

/// Encoder target that turns registered placeholders into file chunks.
pub struct SpliceBuf<'a> {
    cur: BytesMut,
    flushed: usize,
    chunks: Vec<Chunk>,
    holes: &'a [Hole],
    spliced: usize,
}

impl<'a> SpliceBuf<'a> {
    /// A buffer expecting about `capacity` in-memory bytes and splicing `holes`.
    pub fn new(capacity: usize, holes: &'a [Hole]) -> Self {
        SpliceBuf {
            cur: BytesMut::with_capacity(capacity),
            flushed: 0,
            chunks: Vec::with_capacity(holes.len() * 2 + 1),
            holes,
            spliced: 0,
        }
    }

    fn hole_for(&self, src: &[u8]) -> Option<&'a Hole> {
        if src.is_empty() {
            return None;
        }
        self.holes
            .iter()
            .find(|h| h.placeholder.as_ptr() == src.as_ptr() && h.placeholder.len() == src.len())
    }

    /// The chunks, and how many holes were spliced (callers check it equals the holes given).
    pub fn finish(mut self) -> (Vec<Chunk>, usize) {
        if !self.cur.is_empty() {
            self.chunks.push(Chunk::Mem(self.cur.freeze()));
        }
        (self.chunks, self.spliced)
    }
}

// SAFETY: every method delegates to the inner `BytesMut`, which upholds the `BufMut`
// contract (chunk_mut returns writable spare capacity; advance_mut only after the caller
// initialised `cnt` bytes of it). `put_slice` is overridden with a safe implementation.
unsafe impl BufMut for SpliceBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.cur.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: forwarded with the caller's guarantee that `cnt` bytes are initialised.
        unsafe { self.cur.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.cur.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if let Some(hole) = self.hole_for(src) {
            if !self.cur.is_empty() {
                let piece = self.cur.split().freeze();
                self.flushed += piece.len();
                self.chunks.push(Chunk::Mem(piece));
            }
            self.flushed += hole.range.len;
            self.chunks.push(Chunk::File(hole.range.clone()));
            self.spliced += 1;
        } else {
            self.cur.extend_from_slice(src);
        }
    }
}

// The kafka-protocol message encoders never seek (gaps are only used by the record-batch
// encoder, which this crate does not run); these keep the trait honest for the current piece.
impl ByteBufMut for SpliceBuf<'_> {
    fn offset(&self) -> usize {
        self.flushed + self.cur.len()
    }

    fn seek(&mut self, offset: usize) {
        let local = offset.saturating_sub(self.flushed);
        self.cur.resize(local, 0);
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.flushed).min(self.cur.len());
        let end = r
            .end
            .saturating_sub(self.flushed)
            .clamp(start, self.cur.len());
        &mut self.cur[start..end]
    }
}

/// Why a response could not be encoded (a bug or a value the version cannot carry).
#[derive(Debug, thiserror::Error)]
#[error("encoding {what} v{version}: {source:#}")]
pub struct EncodeError {
    /// The message being encoded.
    pub what: &'static str,
    /// Its version.
    pub version: i16,
    /// The codec's complaint.
    pub source: anyhow::Error,
}

/// Encodes a whole response frame: `i32 length ++ header ++ body`, splicing `holes`. The
/// framing is [`encode_response_into`]'s; this only supplies the splicing buffer.
pub fn encode_response<M: Encodable>(
    what: &'static str,
    correlation_id: i32,
    header_version: i16,
    body: &M,
    version: i16,
    holes: &[Hole],
) -> Result<Vec<Chunk>, EncodeError> {
    let err = |source| EncodeError {
        what,
        version,
        source,
    };
    let file_bytes: usize = holes.iter().map(|h| h.range.len).sum();
    let mut expected = 0;
    let buf = encode_response_into(correlation_id, header_version, body, version, |size| {
        expected = size;
        SpliceBuf::new(size.saturating_sub(file_bytes), holes)
    })
    .map_err(err)?;
    let written = buf.offset();
    let (chunks, spliced) = buf.finish();
    if written != expected || spliced != holes.len() {
        return Err(err(anyhow::anyhow!(
            "encoded {written} bytes / {spliced} file ranges, expected {expected} / {}",
            holes.len()
        )));
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        FetchResponse, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{ApiKey, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use std::io::Write;

    fn materialise(chunks: &[Chunk]) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut out = Vec::new();
        for c in chunks {
            match c {
                Chunk::Mem(b) => out.extend_from_slice(b),
                Chunk::File(r) => {
                    let mut buf = vec![0u8; r.len];
                    r.file.read_exact_at(&mut buf, r.position).unwrap();
                    out.extend_from_slice(&buf);
                }
            }
        }
        out
    }

    /// Two partitions whose records come from two ranges of one file: the spliced frame
    /// must decode to exactly the bytes a plain in-memory encode gives, at v11 (i32 record
    /// lengths) and v12 (compact varint lengths).
    #[test]
    fn spliced_fetch_response_equals_in_memory_encode() {
        let mut tmp = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        tmp.write_all(&content).unwrap();
        let file = Arc::new(tmp);
        let ranges = [(100usize, 300usize), (1000, 3000)];
        for version in [4i16, 11, 12] {
            let holes: Vec<Hole> = ranges
                .iter()
                .map(|&(pos, len)| Hole {
                    placeholder: Bytes::copy_from_slice(&content[pos..pos + len]),
                    range: FileRange {
                        file: file.clone(),
                        position: pos as u64,
                        len,
                    },
                })
                .collect();
            let parts = |recs: &[Bytes]| {
                recs.iter()
                    .enumerate()
                    .map(|(i, r)| {
                        PartitionData::default()
                            .with_partition_index(i as i32)
                            .with_high_watermark(77)
                            .with_records(Some(r.clone()))
                    })
                    .collect::<Vec<_>>()
            };
            let placeholders: Vec<Bytes> = holes.iter().map(|h| h.placeholder.clone()).collect();
            let resp =
                FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("t")))
                    .with_partitions(parts(&placeholders))]);
            let hv = if version >= 12 { 1 } else { 0 };
            let chunks = encode_response("Fetch", 42, hv, &resp, version, &holes).unwrap();
            assert_eq!(
                chunks
                    .iter()
                    .filter(|c| matches!(c, Chunk::File(_)))
                    .count(),
                2
            );
            let wire = materialise(&chunks);
            // Reference: the same response encoded fully in memory.
            let reference = encode_response("Fetch", 42, hv, &resp, version, &[]).unwrap();
            assert_eq!(reference.len(), 1);
            assert_eq!(wire, materialise(&reference), "v{version}");
            let mut wire = Bytes::from(wire);
            let mut body = crate::kafka::frame::split_response(&mut wire).unwrap();
            assert_eq!(wire.len(), 0);
            let back: FetchResponse =
                crate::kafka::frame::decode_response(ApiKey::Fetch, version, 42, &mut body)
                    .unwrap();
            let recs = &back.responses[0].partitions;
            assert_eq!(recs[0].records.as_deref(), Some(&content[100..400]));
            assert_eq!(recs[1].records.as_deref(), Some(&content[1000..4000]));
        }
    }
}
