//! Rewrites segment bytes the way Kafka's log cleaner leaves them, to build compacted logs
//! for tests and demos: records dropped from a batch keep the offsets of the others (gaps
//! inside a batch; the header keeps its last offset delta, so the batch still ends where it
//! did), and a batch left with no record is dropped (gaps between batches).

use super::batch::{self, BATCH_HEADER_LEN, LOG_OVERHEAD};
use super::error::BatchError;
use super::record::{decode_batch_refs, RecordRef};
use super::varint::put_i64;

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_i64(out, -1),
        Some(b) => {
            put_i64(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// One record of a batch with base offset `base` and base timestamp `base_ts`.
fn put_record(out: &mut Vec<u8>, r: &RecordRef<'_>, base: i64, base_ts: i64) {
    let mut body = vec![0u8]; // record attributes
    put_i64(&mut body, r.timestamp - base_ts);
    put_i64(&mut body, r.offset - base);
    put_bytes(&mut body, r.key);
    put_bytes(&mut body, r.value);
    put_i64(&mut body, r.headers.len() as i64);
    for (k, v) in &r.headers {
        put_bytes(&mut body, Some(k));
        put_bytes(&mut body, *v);
    }
    put_i64(out, body.len() as i64);
    out.extend_from_slice(&body);
}

/// The batch `b` (uncompressed, create-time timestamps) with only the records whose offset
/// `keep` accepts; `None` if none is left. Header fields other than the length, record count
/// and CRC are kept.
pub fn compact_batch(
    b: &[u8],
    keep: &mut impl FnMut(i64) -> bool,
) -> Result<Option<Vec<u8>>, BatchError> {
    let (h, recs) = decode_batch_refs(b)?;
    let kept: Vec<&RecordRef<'_>> = recs.iter().filter(|r| keep(r.offset)).collect();
    if kept.is_empty() {
        return Ok(None);
    }
    let mut out = b[..BATCH_HEADER_LEN].to_vec();
    for r in &kept {
        put_record(&mut out, r, h.base_offset, h.base_timestamp);
    }
    let len = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = batch::compute_crc(&out);
    out[batch::CRC_OFFSET..batch::CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Some(out))
}

/// Every batch of `segment` compacted with [`compact_batch`].
pub fn compact_segment(
    segment: &[u8],
    mut keep: impl FnMut(i64) -> bool,
) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::with_capacity(segment.len());
    for item in batch::iter(segment) {
        let (pos, h) = item?;
        if let Some(b) = compact_batch(&segment[pos..pos + h.total_len()], &mut keep)? {
            out.extend_from_slice(&b);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::decode_batch;
    use crate::log::writer::{BatchBuilder, NewRecord};

    #[test]
    fn kept_records_keep_their_offsets_and_the_batch_its_end() {
        let mut seg = Vec::new();
        let mut b = BatchBuilder::new();
        for base in [0i64, 5, 10] {
            b.begin(base);
            for i in 0..5 {
                let v = format!("v{}", base + i);
                b.push(&NewRecord {
                    timestamp: 1000 + base + i,
                    key: Some(b"k"),
                    value: Some(v.as_bytes()),
                    headers: vec![("h", Some(b"x"))],
                });
            }
            seg.extend_from_slice(b.finish());
        }
        // Drop offsets 1, 3 and the whole second batch.
        let out = compact_segment(&seg, |o| !(o == 1 || o == 3 || (5..10).contains(&o))).unwrap();
        let batches: Vec<_> = batch::iter(&out).map(|r| r.unwrap()).collect();
        assert_eq!(batches.len(), 2);
        let (p0, h0) = &batches[0];
        assert_eq!(
            (h0.base_offset, h0.last_offset(), h0.records_count),
            (0, 4, 3)
        );
        let recs = decode_batch(&out[*p0..p0 + h0.total_len()]).unwrap();
        let offs: Vec<i64> = recs.iter().map(|r| r.offset).collect();
        assert_eq!(offs, [0, 2, 4]);
        assert_eq!(recs[1].value.as_deref(), Some(&b"v2"[..]));
        assert_eq!(recs[1].timestamp, 1002);
        assert_eq!(recs[1].headers[0].0, "h");
        assert_eq!(batches[1].1.base_offset, 10);
        assert_eq!(batches[1].1.records_count, 5);
    }
}
