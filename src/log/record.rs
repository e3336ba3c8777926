//! Records inside a v2 batch (after decompression, [`records_section`]): length varint | attributes i8 |
//! timestampDelta varlong | offsetDelta varint | keyLen varint | key | valueLen varint | value |
//! headerCount varint | (keyLen varint | key | valueLen varint | value)*.

use std::borrow::Cow;

use super::batch::{BatchHeader, BATCH_HEADER_LEN, TIMESTAMP_TYPE_LOG_APPEND};
use super::compression::{self, Compression};
use super::error::BatchError;
use super::varint;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// One record as borrowed views into the batch bytes (no copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

impl RecordRef<'_> {
    pub fn to_owned(&self) -> Result<Record, BatchError> {
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            let k = std::str::from_utf8(k).map_err(|_| BatchError::BadRecord {
                position: 0,
                reason: "header key is not UTF-8".into(),
            })?;
            headers.push((k.to_string(), v.map(<[u8]>::to_vec)));
        }
        Ok(Record {
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers,
        })
    }
}

/// Decodes every record of one whole batch, any codec (checks the CRC first).
pub fn decode_batch(batch: &[u8]) -> Result<Vec<Record>, BatchError> {
    let (h, body) = records_section(batch)?;
    let refs = decode_records(&h, &body)?;
    refs.iter().map(RecordRef::to_owned).collect()
}

/// Like [`decode_batch`] without copying keys and values (uncompressed batches only: see
/// [`records_section`] + [`decode_records`] for any codec).
pub fn decode_batch_refs(batch: &[u8]) -> Result<(BatchHeader, Vec<RecordRef<'_>>), BatchError> {
    let h = super::batch::verify(batch)?;
    if h.compression() != 0 {
        return Err(BatchError::Compressed(h.compression()));
    }
    let body = &batch[BATCH_HEADER_LEN..h.total_len()];
    let out = decode_records(&h, body)?;
    Ok((h, out))
}

/// Verifies the batch (header, CRC) and returns its records section: borrowed when
/// uncompressed, decompressed (bounded by
/// [`DEFAULT_MAX_DECOMPRESSED`](super::compression::DEFAULT_MAX_DECOMPRESSED)) otherwise.
pub fn records_section(batch: &[u8]) -> Result<(BatchHeader, Cow<'_, [u8]>), BatchError> {
    let h = super::batch::verify(batch)?;
    let body = &batch[BATCH_HEADER_LEN..h.total_len()];
    let codec = Compression::from_attributes(h.attributes)?;
    if codec == Compression::None {
        return Ok((h, Cow::Borrowed(body)));
    }
    Ok((h, Cow::Owned(compression::decompress(codec, body)?)))
}

/// Decodes the `h.records_count` records of an (uncompressed) records section.
pub fn decode_records<'a>(
    h: &BatchHeader,
    body: &'a [u8],
) -> Result<Vec<RecordRef<'a>>, BatchError> {
    let mut cur = Cursor { buf: body, pos: 0 };
    let mut out = Vec::with_capacity(h.records_count.clamp(0, 4096) as usize);
    for _ in 0..h.records_count {
        out.push(cur.record(h)?);
    }
    if cur.pos != body.len() {
        return Err(cur.err(format!(
            "{} bytes after the last of {} records",
            body.len() - cur.pos,
            h.records_count
        )));
    }
    Ok(out)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: impl Into<String>) -> BatchError {
        BatchError::BadRecord {
            position: BATCH_HEADER_LEN + self.pos,
            reason: reason.into(),
        }
    }

    fn varlong(&mut self) -> Result<i64, BatchError> {
        let (v, n) =
            varint::get_i64(&self.buf[self.pos..]).ok_or_else(|| self.err("bad varlong"))?;
        self.pos += n;
        Ok(v)
    }

    fn varint(&mut self) -> Result<i32, BatchError> {
        let (v, n) =
            varint::get_i32(&self.buf[self.pos..]).ok_or_else(|| self.err("bad varint"))?;
        self.pos += n;
        Ok(v)
    }

    fn bytes(&mut self, end: usize, what: &str) -> Result<Option<&'a [u8]>, BatchError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        if self.pos + len > end {
            return Err(self.err(format!("{what} of {len} bytes runs past the record")));
        }
        let s = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(Some(s))
    }

    fn record(&mut self, h: &BatchHeader) -> Result<RecordRef<'a>, BatchError> {
        let len = self.varint()?;
        if len < 0 || self.pos + len as usize > self.buf.len() {
            return Err(self.err(format!("record length {len} runs past the batch")));
        }
        let end = self.pos + len as usize;
        if self.pos >= end {
            return Err(self.err("empty record"));
        }
        self.pos += 1; // attributes: unused in v2
        let ts_delta = self.varlong()?;
        let offset_delta = self.varint()?;
        let key = self.bytes(end, "key")?;
        let value = self.bytes(end, "value")?;
        let n_headers = self.varint()?;
        if n_headers < 0 {
            return Err(self.err(format!("negative header count {n_headers}")));
        }
        let mut headers = Vec::new();
        for _ in 0..n_headers {
            let k = self
                .bytes(end, "header key")?
                .ok_or_else(|| self.err("null header key"))?;
            let v = self.bytes(end, "header value")?;
            headers.push((k, v));
        }
        if self.pos != end {
            return Err(self.err(format!("record length {len} does not match its fields")));
        }
        // With LogAppendTime the broker stamps the batch: every record has its max timestamp.
        let timestamp = if h.attributes & TIMESTAMP_TYPE_LOG_APPEND != 0 {
            h.max_timestamp
        } else {
            h.base_timestamp.wrapping_add(ts_delta)
        };
        Ok(RecordRef {
            offset: h.base_offset + i64::from(offset_delta),
            timestamp,
            key,
            value,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::writer::{BatchBuilder, NewRecord};

    #[test]
    fn round_trip() {
        let mut b = BatchBuilder::new();
        b.begin(100);
        let recs = [
            NewRecord {
                timestamp: 5_000,
                key: Some(b"k1"),
                value: Some(b"hello"),
                headers: vec![("h", Some(b"x".as_slice())), ("n", None)],
            },
            NewRecord {
                timestamp: 4_990,
                key: None,
                value: None,
                headers: vec![],
            },
            NewRecord {
                timestamp: 6_000,
                key: Some(b""),
                value: Some(&[0u8; 300]),
                headers: vec![],
            },
        ];
        for r in &recs {
            b.push(r);
        }
        let batch = b.finish().to_vec();
        let got = decode_batch(&batch).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].offset, 100);
        assert_eq!(got[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(got[0].value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            got[0].headers,
            vec![
                ("h".to_string(), Some(b"x".to_vec())),
                ("n".to_string(), None)
            ]
        );
        assert_eq!(got[1].offset, 101);
        assert_eq!(got[1].timestamp, 4_990);
        assert_eq!(got[1].key, None);
        assert_eq!(got[1].value, None);
        assert_eq!(got[2].offset, 102);
        assert_eq!(got[2].value.as_ref().map(Vec::len), Some(300));
        let h = crate::log::batch::verify(&batch).unwrap();
        assert_eq!(h.max_timestamp, 6_000);
        assert_eq!(h.base_timestamp, 5_000);
    }

    #[test]
    fn log_append_time_stamps_every_record() {
        let mut b = BatchBuilder::new();
        b.begin(0);
        for ts in [10, 20] {
            b.push(&NewRecord {
                timestamp: ts,
                ..Default::default()
            });
        }
        let mut batch = b.finish().to_vec();
        // What a broker with message.timestamp.type=LogAppendTime stores.
        batch[22] |= 0x08;
        batch[35..43].copy_from_slice(&99i64.to_be_bytes());
        let crc = crate::log::batch::compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        let got: Vec<i64> = decode_batch(&batch)
            .unwrap()
            .iter()
            .map(|r| r.timestamp)
            .collect();
        assert_eq!(got, vec![99, 99]);
    }
}
