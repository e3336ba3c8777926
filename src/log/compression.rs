//! Compression of a record batch's records section (attribute bits 0-2), framed as the Java
//! client writes it:
//! - gzip: one gzip stream;
//! - snappy: the xerial framing (`0x82 SNAPPY 0`, version 1, compatible version 1, then
//!   big-endian length-prefixed raw snappy blocks of at most 32 KiB input); plain raw snappy
//!   is accepted on decode, as librdkafka does;
//! - lz4: the LZ4 frame format (64 KiB independent blocks);
//! - zstd: one zstd frame.
//!
//! Every decode is bounded: a corrupt or hostile batch gets an error, never an allocation
//! larger than the limit.

use std::io::{Read, Write};

/// Largest decompressed records section [`decompress`] accepts. Kafka's own limits
/// (`message.max.bytes`, 1 MiB by default) are far below it.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 256 << 20;

/// zstd window we allow a frame to ask for (32 MiB): frames of batches this size never need
/// more, and a hostile header cannot make the decoder allocate zstd's 128 MiB default limit.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;
/// Input bytes per xerial block (SnappyOutputStream's default).
const XERIAL_BLOCK: usize = 32 * 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("{codec:?} records decompress to more than {limit} bytes")]
    TooLarge { codec: Compression, limit: usize },
    #[error("corrupt {codec:?} data: {reason}")]
    Corrupt { codec: Compression, reason: String },
}

/// Batch attribute bits 0-2: the codec id.
pub const COMPRESSION_MASK: i16 = 0x07;

impl Compression {
    /// The codec of attribute bits 0-2.
    pub fn from_attributes(attributes: i16) -> Result<Self, CompressionError> {
        Self::from_id((attributes & COMPRESSION_MASK) as u8)
    }

    pub fn from_id(id: u8) -> Result<Self, CompressionError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(CompressionError::UnknownCodec(other)),
        })
    }

    /// The attribute bits of this codec.
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!(
                "unknown compression {s:?} (none | gzip | snappy | lz4 | zstd)"
            )),
        }
    }
}

fn corrupt(codec: Compression, e: impl std::fmt::Display) -> CompressionError {
    CompressionError::Corrupt {
        codec,
        reason: e.to_string(),
    }
}

/// Compresses `data` with `codec`, framed as the Java producer frames it.
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, CompressionError> {
    let io = |e: std::io::Error| corrupt(codec, e);
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 2),
                flate2::Compression::default(),
            );
            enc.write_all(data).map_err(io)?;
            enc.finish().map_err(io)
        }
        Compression::Snappy => xerial_compress(data),
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(
                info,
                Vec::with_capacity(data.len() / 2),
            );
            enc.write_all(data).map_err(io)?;
            enc.finish().map_err(|e| corrupt(codec, e))
        }
        // Level 3: the Java client's default.
        Compression::Zstd => zstd::bulk::compress(data, 3).map_err(io),
    }
}

fn xerial_compress(data: &[u8]) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + data.len() / 2);
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&1i32.to_be_bytes()); // version
    out.extend_from_slice(&1i32.to_be_bytes()); // compatible version
    let mut enc = snap::raw::Encoder::new();
    for chunk in data.chunks(XERIAL_BLOCK) {
        let block = enc
            .compress_vec(chunk)
            .map_err(|e| corrupt(Compression::Snappy, e))?;
        // A block of at most 32 KiB input always fits an i32.
        out.extend_from_slice(&(block.len() as i32).to_be_bytes());
        out.extend_from_slice(&block);
    }
    Ok(out)
}

/// Decompresses a records section with [`DEFAULT_MAX_DECOMPRESSED`] as the bound.
pub fn decompress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, CompressionError> {
    decompress_bounded(codec, data, DEFAULT_MAX_DECOMPRESSED)
}

/// Decompresses `data`; more than `limit` output bytes is an error (checked before they are
/// allocated).
pub fn decompress_bounded(
    codec: Compression,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, CompressionError> {
    match codec {
        Compression::None => {
            if data.len() > limit {
                return Err(CompressionError::TooLarge { codec, limit });
            }
            Ok(data.to_vec())
        }
        Compression::Gzip => read_bounded(codec, flate2::read::MultiGzDecoder::new(data), limit),
        Compression::Snappy => snappy_decompress(data, limit),
        Compression::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(data), limit),
        Compression::Zstd => {
            let mut dec = zstd::stream::read::Decoder::new(data).map_err(|e| corrupt(codec, e))?;
            dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt(codec, e))?;
            read_bounded(codec, dec.single_frame(), limit)
        }
    }
}

/// Reads `r` to its end, refusing more than `limit` bytes.
fn read_bounded(
    codec: Compression,
    r: impl Read,
    limit: usize,
) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    let cap = (limit as u64).saturating_add(1);
    r.take(cap)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, e))?;
    if out.len() > limit {
        return Err(CompressionError::TooLarge { codec, limit });
    }
    Ok(out)
}

fn snappy_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let codec = Compression::Snappy;
    if data.len() < XERIAL_HEADER_LEN || data[..8] != XERIAL_MAGIC {
        return snappy_raw(data, limit, 0).map(|(v, _)| v);
    }
    let mut out = Vec::new();
    let mut pos = XERIAL_HEADER_LEN;
    while pos < data.len() {
        let Some(len_bytes) = data.get(pos..pos + 4) else {
            return Err(corrupt(codec, format!("block length cut at byte {pos}")));
        };
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        pos += 4;
        let block = usize::try_from(len)
            .ok()
            .and_then(|l| data.get(pos..pos.checked_add(l)?))
            .ok_or_else(|| {
                corrupt(
                    codec,
                    format!("block of {len} bytes at byte {pos} runs past the data"),
                )
            })?;
        pos += block.len();
        let (v, _) = snappy_raw(block, limit, out.len())?;
        out.extend_from_slice(&v);
    }
    Ok(out)
}

/// One raw snappy block; `already` bytes are already decompressed towards `limit`.
fn snappy_raw(
    block: &[u8],
    limit: usize,
    already: usize,
) -> Result<(Vec<u8>, usize), CompressionError> {
    let codec = Compression::Snappy;
    let n = snap::raw::decompress_len(block).map_err(|e| corrupt(codec, e))?;
    if n > limit.saturating_sub(already) {
        return Err(CompressionError::TooLarge { codec, limit });
    }
    let v = snap::raw::Decoder::new()
        .decompress_vec(block)
        .map_err(|e| corrupt(codec, e))?;
    let len = v.len();
    Ok((v, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| b"kafka records "[i % 14] ^ (i / 977) as u8)
            .collect()
    }

    #[test]
    fn round_trip_every_codec_and_size() {
        for codec in ALL {
            for n in [0, 1, 100, XERIAL_BLOCK, XERIAL_BLOCK + 1, 300_000] {
                let data = sample(n);
                let c = compress(codec, &data).unwrap();
                assert_eq!(decompress(codec, &c).unwrap(), data, "{codec} {n}");
                if codec != Compression::None && n > 1000 {
                    assert!(c.len() < data.len() / 2, "{codec} {n}: {} bytes", c.len());
                }
            }
        }
    }

    #[test]
    fn ids_and_names() {
        for codec in ALL {
            assert_eq!(Compression::from_id(codec.id()).unwrap(), codec);
            assert_eq!(codec.name().parse::<Compression>().unwrap(), codec);
            assert_eq!(
                Compression::from_attributes(0x18 | i16::from(codec.id())).unwrap(),
                codec
            );
        }
        assert_eq!(
            Compression::from_id(5),
            Err(CompressionError::UnknownCodec(5))
        );
        assert!("brotli".parse::<Compression>().is_err());
    }

    #[test]
    fn framing_as_the_java_client() {
        let data = sample(100_000);
        let s = compress(Compression::Snappy, &data).unwrap();
        assert_eq!(&s[..8], &XERIAL_MAGIC);
        assert_eq!(&s[8..16], &[0, 0, 0, 1, 0, 0, 0, 1]);
        let g = compress(Compression::Gzip, &data).unwrap();
        assert_eq!(&g[..2], &[0x1f, 0x8b]);
        let l = compress(Compression::Lz4, &data).unwrap();
        assert_eq!(&l[..4], &0x184D2204u32.to_le_bytes());
        let z = compress(Compression::Zstd, &data).unwrap();
        assert_eq!(&z[..4], &0xFD2FB528u32.to_le_bytes());
    }

    #[test]
    fn plain_raw_snappy_is_accepted() {
        let data = sample(5000);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(decompress(Compression::Snappy, &raw).unwrap(), data);
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let data = sample(50_000);
        for codec in ALL.into_iter().skip(1) {
            let c = compress(codec, &data).unwrap();
            // (lz4_flex accepts a frame whose 4-byte end mark is cut: stay before it.)
            for cut in [1, c.len() / 2, c.len() - 6] {
                let r = decompress(codec, &c[..cut]);
                assert!(
                    r.is_err(),
                    "{codec} cut at {cut} gave {:?}",
                    r.map(|v| v.len())
                );
            }
            assert!(decompress(codec, b"\xffgarbage that is no frame at all").is_err());
            // A flipped byte inside the payload: an error or (no checksum) different bytes,
            // never a panic.
            let mut bad = c.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x55;
            if let Ok(v) = decompress(codec, &bad) {
                assert_ne!(v, data, "{codec}");
            }
        }
    }

    #[test]
    fn oversize_is_refused() {
        let data = vec![0u8; 1 << 20];
        for codec in ALL {
            let c = compress(codec, &data).unwrap();
            assert_eq!(
                decompress_bounded(codec, &c, 1000),
                Err(CompressionError::TooLarge { codec, limit: 1000 }),
                "{codec}"
            );
            assert_eq!(
                decompress_bounded(codec, &c, 1 << 20).unwrap().len(),
                1 << 20
            );
        }
        // A raw snappy block claiming 4 GiB is refused from its header, before allocating.
        let claim = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(matches!(
            decompress(Compression::Snappy, &claim),
            Err(CompressionError::TooLarge { .. }) | Err(CompressionError::Corrupt { .. })
        ));
        // A xerial block length past the data.
        let mut x = compress(Compression::Snappy, b"abc").unwrap();
        x[16..20].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            decompress(Compression::Snappy, &x),
            Err(CompressionError::Corrupt { .. })
        ));
    }

    #[test]
    fn compressed_batches_decode_with_crc_over_compressed_bytes() {
        use crate::log::batch;
        use crate::log::record::decode_batch;
        use crate::log::writer::BatchBuilder;
        use kxgw_demo_data::demo_value;
        for codec in ALL {
            let mut b = BatchBuilder::new();
            b.set_compression(codec);
            b.begin(40);
            for o in 40..140 {
                b.push_parts(
                    1_700_000_000_000 + o,
                    None,
                    Some(&demo_value(0, o, 300)),
                    &[],
                );
            }
            let plain_len = b.len();
            let bytes = b.finish().to_vec();
            // finish() twice gives the same batch (no double compression).
            assert_eq!(b.finish(), &bytes[..]);
            let h = batch::verify(&bytes).unwrap();
            assert_eq!(h.compression(), codec.id(), "{codec}");
            assert_eq!(
                (h.base_offset, h.records_count, h.last_offset()),
                (40, 100, 139)
            );
            if codec != Compression::None {
                assert!(
                    bytes.len() < plain_len / 2,
                    "{codec}: {} of {plain_len}",
                    bytes.len()
                );
            }
            let recs = decode_batch(&bytes).unwrap();
            assert_eq!(recs.len(), 100);
            for r in &recs {
                assert_eq!(r.value.as_deref(), Some(&demo_value(0, r.offset, 300)[..]));
            }
            // Corrupt compressed bytes with a fixed-up CRC: a decode error, not a panic.
            if codec != Compression::None {
                let mut bad = bytes.clone();
                for x in &mut bad[batch::BATCH_HEADER_LEN + 4..batch::BATCH_HEADER_LEN + 12] {
                    *x ^= 0xa5;
                }
                let crc = batch::compute_crc(&bad);
                bad[17..21].copy_from_slice(&crc.to_be_bytes());
                assert!(decode_batch(&bad).is_err(), "{codec}");
            }
        }
    }
}
