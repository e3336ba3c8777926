//! Record batch v2 (magic 2) headers: parsing, validation (length, magic, CRC32C), iteration.
//!
//! Layout (big endian): baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 |
//! crc u32 | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordsCount i32 | records...
//! The CRC (Castagnoli) covers attributes..end of batch.

pub use super::error::BatchError;

/// v2 header length including baseOffset and batchLength.
pub const BATCH_HEADER_LEN: usize = 61;
/// baseOffset (8) + batchLength (4): the bytes not counted by batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// Offset of the CRC field and of the first byte it covers.
pub const CRC_OFFSET: usize = 17;
pub const ATTRIBUTES_OFFSET: usize = 21;
pub const LAST_OFFSET_DELTA_OFFSET: usize = 23;
/// Largest batch we accept: Kafka's segment size and message size limits are i32 too.
pub const MAX_BATCH_LEN: usize = i32::MAX as usize;

/// Attribute bits (the codec bits belong to [`super::compression`]).
pub use super::compression::COMPRESSION_MASK;
pub const TIMESTAMP_TYPE_LOG_APPEND: i16 = 0x08;
pub const TRANSACTIONAL: i16 = 0x10;
pub const CONTROL: i16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

#[inline]
pub(crate) fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
#[inline]
pub(crate) fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
#[inline]
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

impl BatchHeader {
    /// Parses the 61-byte header at the front of `buf` and checks that its fields are
    /// possible (length, magic, offsets, counts). Does not look at the CRC or the records.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < LOG_OVERHEAD {
            return Err(BatchError::Truncated {
                needed: LOG_OVERHEAD,
                available: buf.len(),
            });
        }
        let batch_length = be_i32(buf, 8);
        if batch_length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::BadLength(batch_length));
        }
        if buf.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_LEN,
                available: buf.len(),
            });
        }
        let h = BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length,
            partition_leader_epoch: be_i32(buf, 12),
            magic: buf[16] as i8,
            crc: be_i32(buf, CRC_OFFSET) as u32,
            attributes: be_i16(buf, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        };
        if h.magic != 2 {
            return Err(BatchError::BadMagic(h.magic));
        }
        if h.base_offset < 0 {
            return Err(BatchError::BadHeader(format!(
                "negative base offset {}",
                h.base_offset
            )));
        }
        if h.last_offset_delta < 0
            || h.base_offset
                .checked_add(h.last_offset_delta.into())
                .is_none()
        {
            return Err(BatchError::BadHeader(format!(
                "impossible last offset delta {}",
                h.last_offset_delta
            )));
        }
        if h.records_count < 0 {
            return Err(BatchError::BadHeader(format!(
                "negative record count {}",
                h.records_count
            )));
        }
        Ok(h)
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Bytes the whole batch occupies on disk / on the wire.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> u8 {
        (self.attributes & COMPRESSION_MASK) as u8
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }
}

/// CRC32C as stored in the header: over attributes..end of the batch.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..])
}

/// Validates magic, length sanity and CRC32C of the whole batch at the front of `batch`
/// (bytes after the batch are ignored).
pub fn verify(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = BatchHeader::parse(batch)?;
    let total = h.total_len();
    if batch.len() < total {
        return Err(BatchError::Truncated {
            needed: total,
            available: batch.len(),
        });
    }
    let computed = compute_crc(&batch[..total]);
    if computed != h.crc {
        return Err(BatchError::BadCrc {
            stored: h.crc,
            computed,
        });
    }
    Ok(h)
}

/// Iterates the whole batches of `buf`, verifying each (header and CRC). Yields
/// `(position in buf, header)`; the first error ends the iteration (a truncated last batch
/// gives `BatchError::Truncated`).
pub fn iter(buf: &[u8]) -> BatchIter<'_> {
    BatchIter {
        buf,
        pos: 0,
        done: false,
    }
}

pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(usize, BatchHeader), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        match verify(&self.buf[self.pos..]) {
            Ok(h) => {
                let at = self.pos;
                self.pos += h.total_len();
                Some(Ok((at, h)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::writer::{BatchBuilder, NewRecord};

    fn sample(base: i64, n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.begin(base);
        for i in 0..n {
            let v = format!("value-{i}");
            b.push(&NewRecord {
                timestamp: 1_700_000_000_000 + i as i64,
                key: None,
                value: Some(v.as_bytes()),
                headers: Vec::new(),
            });
        }
        b.finish().to_vec()
    }

    #[test]
    fn parse_and_verify() {
        let buf = sample(42, 3);
        let h = verify(&buf).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.last_offset(), 44);
        assert_eq!(h.records_count, 3);
        assert_eq!(h.magic, 2);
        assert_eq!(h.total_len(), buf.len());
        assert_eq!(h.producer_id, -1);
        assert_eq!(h.producer_epoch, -1);
        assert_eq!(h.base_sequence, -1);
        assert_eq!(h.base_timestamp, 1_700_000_000_000);
        assert_eq!(h.max_timestamp, 1_700_000_000_002);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let buf = sample(0, 2);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            let r = verify(&bad);
            // Bytes before the CRC-covered area (offset, length, epoch, magic) change the
            // header or length instead; the epoch is the one field neither covers (as in Kafka).
            if (12..16).contains(&i) {
                assert!(r.is_ok(), "epoch byte {i}");
            } else {
                assert!(
                    r.is_err() || r.unwrap().base_offset != 0,
                    "byte {i} not caught"
                );
            }
        }
    }

    #[test]
    fn truncated_and_garbage() {
        let buf = sample(0, 2);
        for cut in 0..buf.len() {
            assert!(verify(&buf[..cut]).is_err());
        }
        assert!(matches!(verify(&[0u8; 61]), Err(BatchError::BadLength(0))));
        let mut bad = buf.clone();
        bad[16] = 1;
        assert!(matches!(verify(&bad), Err(BatchError::BadMagic(1))));
    }

    #[test]
    fn iterate() {
        let mut buf = sample(0, 2);
        buf.extend(sample(2, 5));
        buf.extend(sample(7, 1));
        let got: Vec<_> = iter(&buf).map(|r| r.unwrap().1.base_offset).collect();
        assert_eq!(got, vec![0, 2, 7]);
        let cut = &buf[..buf.len() - 1];
        let res: Vec<_> = iter(cut).collect();
        assert_eq!(res.len(), 3);
        assert!(matches!(res[2], Err(BatchError::Truncated { .. })));
    }
}
