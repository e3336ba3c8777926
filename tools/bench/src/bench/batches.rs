//! Walks the Kafka v2 record batches in a byte range a consumer received and checks each one
//! (magic, length, CRC32C over attributes..end, offset continuity), so a benchmark never counts
//! bytes that were not a correct delivery.

use thiserror::Error;

/// baseOffset(8) + batchLength(4).
const LOG_OVERHEAD: usize = 12;
/// The v2 batch header up to and including recordsCount.
const HEADER_LEN: usize = 61;

/// A received batch that is not what the log holds.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchCheckError {
    /// The range ended inside a batch header or body.
    #[error("truncated batch at byte {pos} of the response ({have} of {need} bytes)")]
    Truncated {
        pos: usize,
        have: usize,
        need: usize,
    },
    /// Not a v2 batch.
    #[error("batch at byte {pos}: magic {magic}, expected 2")]
    Magic { pos: usize, magic: i8 },
    /// batchLength below the header size.
    #[error("batch at byte {pos}: impossible length {len}")]
    Length { pos: usize, len: i32 },
    /// CRC32C mismatch.
    #[error(
        "batch at byte {pos} (base offset {base}): CRC {stored:#010x} != computed {computed:#010x}"
    )]
    Crc {
        pos: usize,
        base: i64,
        stored: u32,
        computed: u32,
    },
    /// A batch did not start where the previous one ended.
    #[error("batch at byte {pos}: base offset {base}, expected {expected}")]
    Gap {
        pos: usize,
        base: i64,
        expected: i64,
    },
}

/// What [`check`] found in a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checked {
    /// Whole batches found.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
    /// Bytes of whole batches (a trailing partial batch, which Kafka may send, is excluded).
    pub bytes: usize,
    /// Offset after the last whole batch (the next fetch offset).
    pub next_offset: i64,
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Checks every whole batch in `buf`. `expected` is the offset the consumer asked for: the first
/// batch may start before it (a fetch returns the batch containing the offset) but no batch may
/// skip past the next expected offset. A trailing partial batch is ignored, as Kafka clients do.
/// With `verify_crc` false only headers are walked.
pub fn check(buf: &[u8], expected: i64, verify_crc: bool) -> Result<Checked, BatchCheckError> {
    let mut out = Checked {
        next_offset: expected,
        ..Checked::default()
    };
    let mut pos = 0usize;
    while buf.len() - pos >= LOG_OVERHEAD {
        let base = be_i64(buf, pos);
        let len = be_i32(buf, pos + 8);
        if len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchCheckError::Length { pos, len });
        }
        let total = LOG_OVERHEAD + len as usize;
        if buf.len() - pos < total {
            if out.batches == 0 {
                return Err(BatchCheckError::Truncated {
                    pos,
                    have: buf.len() - pos,
                    need: total,
                });
            }
            break;
        }
        let batch = &buf[pos..pos + total];
        let magic = batch[16] as i8;
        if magic != 2 {
            return Err(BatchCheckError::Magic { pos, magic });
        }
        let last = base + i64::from(be_i32(batch, 23));
        if base > out.next_offset || last < out.next_offset {
            return Err(BatchCheckError::Gap {
                pos,
                base,
                expected: out.next_offset,
            });
        }
        if verify_crc {
            let stored = be_i32(batch, 17) as u32;
            let computed = crc32c::crc32c(&batch[21..]);
            if stored != computed {
                return Err(BatchCheckError::Crc {
                    pos,
                    base,
                    stored,
                    computed,
                });
            }
        }
        let count = be_i32(batch, 57).max(0) as u64;
        out.batches += 1;
        // Records before the requested offset in the first batch are not new deliveries.
        out.records += count.saturating_sub((out.next_offset - base).max(0) as u64);
        out.bytes += total;
        out.next_offset = last + 1;
        pos += total;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 batch with `n` records of `size`-byte values, built by kafka-protocol's encoder
    /// (an independent implementation of the format).
    fn batch(base: i64, n: i64, size: usize) -> Vec<u8> {
        use kafka_protocol::records::*;
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i,
                // The encoder batches records whose offset - sequence is constant.
                sequence: (base + i) as i32,
                timestamp: 1_700_000_000_000,
                key: None,
                value: Some(bytes::Bytes::from(vec![b'x'; size])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &opts).unwrap();
        buf.to_vec()
    }

    #[test]
    fn counts_whole_batches_and_ignores_partial_tail() {
        let mut buf = batch(0, 10, 100);
        let one = buf.len();
        buf.extend(batch(10, 5, 100));
        buf.extend(&batch(15, 5, 100)[..30]);
        let c = check(&buf, 0, true).unwrap();
        assert_eq!(c.batches, 2);
        assert_eq!(c.records, 15);
        assert_eq!(c.next_offset, 15);
        assert!(c.bytes > one && c.bytes < buf.len());
    }

    #[test]
    fn first_batch_may_start_before_requested_offset() {
        let buf = batch(0, 10, 10);
        let c = check(&buf, 4, true).unwrap();
        assert_eq!(c.records, 6);
        assert_eq!(c.next_offset, 10);
    }

    #[test]
    fn flipped_byte_and_gap_are_errors() {
        let mut buf = batch(0, 3, 50);
        let n = buf.len();
        buf[n - 5] ^= 1;
        assert!(matches!(
            check(&buf, 0, true),
            Err(BatchCheckError::Crc { .. })
        ));
        assert!(check(&buf, 0, false).is_ok());
        let buf = batch(7, 3, 50);
        assert!(matches!(
            check(&buf, 0, true),
            Err(BatchCheckError::Gap { .. })
        ));
        assert!(matches!(
            check(&batch(0, 1, 50)[..20], 0, true),
            Err(BatchCheckError::Truncated { .. })
        ));
    }
}
