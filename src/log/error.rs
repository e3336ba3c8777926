//! Errors of the log layer. Every variant that concerns a file names it, and the byte
//! position when one is known, so an operator can go straight to the damage.

use std::path::PathBuf;

/// Why one record batch (or a byte slice that should hold batches) is not acceptable.
/// Positions are relative to the slice handed in; callers add file and file position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The slice ends before the batch does (a torn tail, or a fetch cut short).
    #[error("truncated batch: needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("impossible batch length {0}")]
    BadLength(i32),
    #[error("unsupported magic {0} (only record batch v2 is supported)")]
    BadMagic(i8),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("bad batch header: {0}")]
    BadHeader(String),
    #[error("bad record at byte {position} of the batch: {reason}")]
    BadRecord { position: usize, reason: String },
    #[error("compression not supported (codec {0})")]
    Compressed(u8),
    #[error("compressed records: {0}")]
    Decompress(#[from] super::compression::CompressionError),
}

/// Errors of [`crate::log`]: I/O, corruption, offsets outside the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt at byte {position}: {reason}", path = path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("offset {offset} out of range (log start {log_start}, readable end {log_end})")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("{0}")]
    Invalid(String),
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, position: u64, reason: impl ToString) -> Self {
        LogError::Corrupt {
            path: path.into(),
            position,
            reason: reason.to_string(),
        }
    }
}
