//! Segment files: names, and the validation scan shared by the reader, the writer and
//! `inspect` (whole batches, CRC-checked, offsets increasing).

use std::path::{Path, PathBuf};

use super::batch::{self, BatchHeader, LOG_OVERHEAD};
use super::error::BatchError;

pub const LOG_SUFFIX: &str = ".log";
pub const INDEX_SUFFIX: &str = ".index";
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";

/// `00000000000000000042` (20 digits, as the broker names segments).
pub fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// Base offset from a segment file name `<20 digits>.log`; `None` for anything else
/// (`.log.deleted`, `.cleaned`, `.swap`, other files).
pub fn parse_log_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(LOG_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Sorted base offsets of the segments in a partition dir.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<i64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(base) = e.file_name().to_str().and_then(parse_log_name) {
            out.push(base);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub const SWAP_SUFFIX: &str = ".swap";
pub const CLEANED_SUFFIX: &str = ".cleaned";

/// The segments a broker would load from a partition dir, as its `LogLoader` recovers one:
/// `.deleted` files are ignored (deletion pending), `.cleaned` files are ignored (a cleaner
/// pass not finished), and a `<base>.log.swap` (a finished cleaner pass, renamed before its
/// final rename to `.log`) stands in place of `<base>.log`, unless its base offset is at or
/// above the smallest `.cleaned` base (an unfinished segment split, which the broker deletes).
/// The `.log` segments a swap also covers are dropped by the reader once it knows the swap's
/// end ([`crate::log::Partition`]). Sorted by base offset; (base, path, is a swap).
pub fn list_served(dir: &Path) -> std::io::Result<Vec<(i64, std::path::PathBuf, bool)>> {
    let mut logs = Vec::new();
    let mut swaps = Vec::new();
    let mut min_cleaned = i64::MAX;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_log_name(name) {
            logs.push(base);
        } else if let Some(base) = name.strip_suffix(SWAP_SUFFIX).and_then(parse_log_name) {
            swaps.push(base);
        } else if let Some(base) = name.strip_suffix(CLEANED_SUFFIX).and_then(parse_log_name) {
            min_cleaned = min_cleaned.min(base);
        }
    }
    swaps.retain(|&b| b < min_cleaned);
    let mut out: Vec<_> = logs
        .into_iter()
        .filter(|b| !swaps.contains(b))
        .map(|b| (b, dir.join(format!("{}{LOG_SUFFIX}", file_stem(b))), false))
        .collect();
    out.extend(swaps.into_iter().map(|b| {
        let path = dir.join(format!("{}{LOG_SUFFIX}{SWAP_SUFFIX}", file_stem(b)));
        (b, path, true)
    }));
    out.sort_unstable_by_key(|(b, _, _)| *b);
    Ok(out)
}

/// How a validation scan ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// All bytes are whole valid batches.
    Clean,
    /// A batch starts at `position` but the bytes end before it does (torn tail, or a write in
    /// progress): not visible, not an error for the active segment.
    Incomplete { position: usize, needed: usize },
    /// Zero bytes from `position` on (a preallocated log file): treated as the end.
    ZeroTail { position: usize },
    /// The batch at `position` is corrupt (bad CRC, impossible header, offsets going back).
    Corrupt { position: usize, reason: String },
}

impl ScanEnd {
    pub fn position(&self) -> Option<usize> {
        match self {
            ScanEnd::Clean => None,
            ScanEnd::Incomplete { position, .. }
            | ScanEnd::ZeroTail { position }
            | ScanEnd::Corrupt { position, .. } => Some(*position),
        }
    }
}

/// Result of a scan: where the valid prefix ends, the offset after its last batch.
#[derive(Clone, Debug)]
pub struct Scanned {
    pub valid_end: usize,
    pub next_offset: i64,
    pub end: ScanEnd,
}

/// Validates whole batches of `buf` from `from` on; `next_offset` is the smallest base offset
/// the next batch may have. Calls `each(position, header)` for every valid batch.
pub fn scan(
    buf: &[u8],
    from: usize,
    mut next_offset: i64,
    mut each: impl FnMut(usize, &BatchHeader),
) -> Scanned {
    let mut pos = from;
    let end = loop {
        if pos >= buf.len() {
            break ScanEnd::Clean;
        }
        let rest = &buf[pos..];
        let head = &rest[..rest.len().min(LOG_OVERHEAD)];
        if head.iter().all(|&b| b == 0) {
            // A zero length can never start a batch: either preallocated zeros, or the
            // writer extended the file and has not filled it yet. Either way: not yet data.
            break ScanEnd::ZeroTail { position: pos };
        }
        match batch::verify(rest) {
            Ok(h) => {
                if h.base_offset < next_offset {
                    break ScanEnd::Corrupt {
                        position: pos,
                        reason: format!(
                            "base offset {} below the previous batch's next offset {next_offset}",
                            h.base_offset
                        ),
                    };
                }
                each(pos, &h);
                next_offset = h.next_offset();
                pos += h.total_len();
            }
            Err(BatchError::Truncated { needed, .. }) => {
                break ScanEnd::Incomplete {
                    position: pos,
                    needed,
                }
            }
            Err(e) => {
                break ScanEnd::Corrupt {
                    position: pos,
                    reason: e.to_string(),
                }
            }
        }
    };
    Scanned {
        valid_end: pos,
        next_offset,
        end,
    }
}

/// The index file (`suffix`: [`INDEX_SUFFIX`], [`TIME_INDEX_SUFFIX`]) of the segment file
/// `segment` with base offset `base`: beside a `<base>.log.swap` the cleaner's
/// `<base>.index.swap` (the broker renames a segment's files together, the log first), else
/// `<base>.index`.
pub fn index_path(segment: &Path, base: i64, suffix: &str) -> PathBuf {
    let swap = segment
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(SWAP_SUFFIX));
    let name = if swap {
        format!("{}{suffix}{SWAP_SUFFIX}", file_stem(base))
    } else {
        format!("{}{suffix}", file_stem(base))
    };
    segment.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_files_of_a_swap_segment_are_swaps_too() {
        let d = Path::new("/logs/t-0");
        let log = d.join("00000000000000000042.log");
        let swap = d.join("00000000000000000042.log.swap");
        assert_eq!(
            index_path(&log, 42, INDEX_SUFFIX),
            d.join("00000000000000000042.index")
        );
        assert_eq!(
            index_path(&swap, 42, INDEX_SUFFIX),
            d.join("00000000000000000042.index.swap")
        );
        assert_eq!(
            index_path(&swap, 42, TIME_INDEX_SUFFIX),
            d.join("00000000000000000042.timeindex.swap")
        );
    }

    #[test]
    fn names() {
        assert_eq!(file_stem(42), "00000000000000000042");
        assert_eq!(parse_log_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_log_name("00000000000000000042.log.deleted"), None);
        assert_eq!(parse_log_name("00000000000000000042.index"), None);
        assert_eq!(parse_log_name("0000000000000000042.log"), None);
    }

    #[test]
    fn served_files_follow_the_broker_recovery_rules() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "00000000000000000000.log",
            "00000000000000000000.log.swap",
            "00000000000000000010.log",
            "00000000000000000020.log.deleted",
            "00000000000000000030.log",
            "00000000000000000040.log.cleaned",
            "00000000000000000050.log.swap",
            "00000000000000000060.log",
        ] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        let got: Vec<(i64, String, bool)> = list_served(d.path())
            .unwrap()
            .into_iter()
            .map(|(b, p, s)| (b, p.file_name().unwrap().to_str().unwrap().to_string(), s))
            .collect();
        let want = [
            (0, "00000000000000000000.log.swap", true),
            (10, "00000000000000000010.log", false),
            (30, "00000000000000000030.log", false),
            (60, "00000000000000000060.log", false),
        ];
        let want: Vec<(i64, String, bool)> = want
            .iter()
            .map(|(b, n, s)| (*b, n.to_string(), *s))
            .collect();
        assert_eq!(got, want);
    }
}
