//! `kxgw produce --compact-gaps`: rewrites segments the way Kafka's log cleaner leaves them
//! (tooling, so it lives in the binary, not in the gateway's library): records dropped from
//! a batch keep the offsets of the others (gaps inside a batch; the header keeps its last
//! offset delta, so the batch still ends where it did), and a batch left with no record is
//! dropped (gaps between batches). Each cleaned segment replaces the old one through the
//! cleaner's renames: `.cleaned` written, renamed `.swap`, the old segment renamed
//! `.deleted`, the `.swap` renamed into place, the `.deleted` removed.

use std::path::{Path, PathBuf};

use anyhow::Context;

use kxgw::log::batch::{self, BATCH_HEADER_LEN, LOG_OVERHEAD};
use kxgw::log::record::{decode_batch_refs, RecordRef};
use kxgw::log::varint::put_i64;
use kxgw::log::BatchError;

/// What `--compact-gaps` keeps: a third of the records go from inside their batches
/// (offsets ≡ 1 mod 3), and offsets 1000..1700 go entirely (whole batches: gaps between
/// batches).
pub fn demo_keep(offset: i64) -> bool {
    offset % 3 != 1 && !(1000..1700).contains(&offset)
}

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

/// The `.log` files of a partition dir, oldest first.
fn segments(part: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(part)
        .with_context(|| format!("listing {}", part.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    Ok(segs)
}

/// Compacts every segment of partition dir `part` but the last (the active segment, which
/// the cleaner never touches) with `keep`; returns how many it replaced. The old `.index` and
/// `.timeindex` of a cleaned segment point at old positions and are removed (a broker
/// rebuilds them; kxgw needs none).
pub fn clean_partition(part: &Path, keep: impl Fn(i64) -> bool + Copy) -> anyhow::Result<usize> {
    let segs = segments(part)?;
    let Some((_, older)) = segs.split_last() else {
        return Ok(0);
    };
    for seg in older {
        let name = seg
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("segment name {}", seg.display()))?;
        let sib = |suffix: &str| seg.with_file_name(format!("{name}{suffix}"));
        let bytes = std::fs::read(seg).with_context(|| format!("reading {}", seg.display()))?;
        let out = compact_segment(&bytes, keep)
            .with_context(|| format!("compacting {}", seg.display()))?;
        let step = |what: &str, r: std::io::Result<()>| {
            r.with_context(|| format!("{what} ({})", seg.display()))
        };
        step("writing .cleaned", std::fs::write(sib(".cleaned"), out))?;
        step(
            ".cleaned -> .swap",
            std::fs::rename(sib(".cleaned"), sib(".swap")),
        )?;
        step(".log -> .deleted", std::fs::rename(seg, sib(".deleted")))?;
        step(".swap -> .log", std::fs::rename(sib(".swap"), seg))?;
        step("removing .deleted", std::fs::remove_file(sib(".deleted")))?;
        for ext in ["index", "timeindex"] {
            match std::fs::remove_file(seg.with_extension(ext)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    step("removing the old index", Err(e))?
                }
                _ => {}
            }
        }
    }
    Ok(older.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxgw::log::record::decode_batch;
    use kxgw::log::writer::{BatchBuilder, NewRecord};

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
