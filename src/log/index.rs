//! `.index` and `.timeindex` files: entry formats and the broker's cadence for writing them.
//!
//! `.index`: 8-byte entries, relative offset u32 BE (the last offset of the indexed batch minus
//! the segment base offset) and file position u32 BE of that batch.
//! `.timeindex`: 12-byte entries, timestamp i64 BE (max timestamp so far in the segment) and
//! relative offset u32 BE (last offset of the batch that carried it).
//! A broker preallocates both files (10 MiB by default) and trims them when the segment rolls,
//! so the active segment's index files end in zeroed entries: readers stop at the first entry
//! that does not advance.

use super::batch::BatchHeader;

pub const INDEX_ENTRY_LEN: usize = 8;
pub const TIME_INDEX_ENTRY_LEN: usize = 12;
/// Kafka's NO_TIMESTAMP: the time index's initial "last entry" timestamp.
pub const NO_TIMESTAMP: i64 = -1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// Parses an `.index` file's bytes. Stops (without error) at a partial trailing entry or at the
/// first entry that does not advance (the zeroed preallocated tail); returns the entries and
/// the byte position where parsing stopped early with the reason, if it did for another cause.
pub fn parse_index(buf: &[u8]) -> (Vec<IndexEntry>, Option<(usize, String)>) {
    let mut out: Vec<IndexEntry> = Vec::with_capacity(buf.len() / INDEX_ENTRY_LEN);
    for (i, c) in buf.chunks(INDEX_ENTRY_LEN).enumerate() {
        let at = i * INDEX_ENTRY_LEN;
        if c.len() < INDEX_ENTRY_LEN {
            return (
                out,
                Some((at, format!("partial entry of {} bytes", c.len()))),
            );
        }
        let e = IndexEntry {
            relative_offset: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            position: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
        };
        if let Some(&last) = out.last() {
            if e.relative_offset == 0 && e.position == 0 && c.iter().all(|&b| b == 0) {
                // Preallocated tail: fine if everything after is zero too.
                if buf[at..].iter().all(|&b| b == 0) {
                    return (out, None);
                }
                return (out, Some((at, "zeroed entry followed by data".into())));
            }
            if e.relative_offset <= last.relative_offset || e.position <= last.position {
                return (
                    out,
                    Some((at, format!("entry {e:?} does not advance past {last:?}"))),
                );
            }
        } else if e.relative_offset == 0 && e.position == 0 && buf.iter().all(|&b| b == 0) {
            return (out, None);
        }
        out.push(e);
    }
    (out, None)
}

/// Parses a `.timeindex` file's bytes, with the same tolerance as [`parse_index`].
pub fn parse_time_index(buf: &[u8]) -> (Vec<TimeIndexEntry>, Option<(usize, String)>) {
    let mut out: Vec<TimeIndexEntry> = Vec::with_capacity(buf.len() / TIME_INDEX_ENTRY_LEN);
    for (i, c) in buf.chunks(TIME_INDEX_ENTRY_LEN).enumerate() {
        let at = i * TIME_INDEX_ENTRY_LEN;
        if c.len() < TIME_INDEX_ENTRY_LEN {
            return (
                out,
                Some((at, format!("partial entry of {} bytes", c.len()))),
            );
        }
        if c.iter().all(|&b| b == 0) && buf[at..].iter().all(|&b| b == 0) {
            return (out, None);
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&c[..8]);
        let e = TimeIndexEntry {
            timestamp: i64::from_be_bytes(ts),
            relative_offset: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
        };
        if let Some(&last) = out.last() {
            if e.timestamp < last.timestamp || e.relative_offset < last.relative_offset {
                return (
                    out,
                    Some((at, format!("entry {e:?} goes back from {last:?}"))),
                );
            }
        }
        out.push(e);
    }
    (out, None)
}

/// The broker's rule for when to add index entries (LogSegment.append): before appending a
/// batch, if more than `interval` bytes were appended since the last entry, index this batch
/// (its last offset, its position) and add a time index entry for the max timestamp so far
/// (only when it is larger than the last time entry's). The max timestamp so far includes the
/// batch being appended.
#[derive(Clone, Debug)]
pub struct IndexCadence {
    pub interval: u32,
    base_offset: i64,
    bytes_since_entry: u64,
    max_ts: i64,
    offset_of_max_ts: i64,
    last_time_entry_ts: i64,
}

impl IndexCadence {
    pub fn new(base_offset: i64, interval: u32) -> Self {
        IndexCadence {
            interval,
            base_offset,
            bytes_since_entry: 0,
            max_ts: NO_TIMESTAMP,
            offset_of_max_ts: base_offset,
            last_time_entry_ts: NO_TIMESTAMP,
        }
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_ts
    }

    /// Account for the batch `h` about to be written at `position`; appends the entries due
    /// to `index` / `time_index` (encoded, ready to write).
    pub fn on_batch(
        &mut self,
        position: u64,
        h: &BatchHeader,
        index: &mut Vec<u8>,
        time_index: &mut Vec<u8>,
    ) {
        if h.max_timestamp > self.max_ts {
            self.max_ts = h.max_timestamp;
            self.offset_of_max_ts = h.last_offset();
        }
        if self.bytes_since_entry > u64::from(self.interval) {
            let rel = (h.last_offset() - self.base_offset) as u32;
            index.extend_from_slice(&rel.to_be_bytes());
            index.extend_from_slice(&(position as u32).to_be_bytes());
            self.maybe_time_entry(time_index);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += h.total_len() as u64;
    }

    /// The segment becomes inactive (roll, close): the broker adds a last time index entry for
    /// the max timestamp if it is not indexed yet.
    pub fn on_roll(&mut self, time_index: &mut Vec<u8>) {
        self.maybe_time_entry(time_index);
    }

    fn maybe_time_entry(&mut self, time_index: &mut Vec<u8>) {
        if self.max_ts > self.last_time_entry_ts {
            time_index.extend_from_slice(&self.max_ts.to_be_bytes());
            let rel = (self.offset_of_max_ts - self.base_offset) as u32;
            time_index.extend_from_slice(&rel.to_be_bytes());
            self.last_time_entry_ts = self.max_ts;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(entries: &[(u32, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (o, p) in entries {
            v.extend_from_slice(&o.to_be_bytes());
            v.extend_from_slice(&p.to_be_bytes());
        }
        v
    }

    #[test]
    fn index_with_zeroed_tail() {
        let mut buf = enc(&[(3, 4100), (9, 8300), (20, 12500)]);
        buf.resize(10 * 1024 * 1024, 0);
        let (e, err) = parse_index(&buf);
        assert_eq!(err, None);
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[2],
            IndexEntry {
                relative_offset: 20,
                position: 12500
            }
        );
        // An all-zero (freshly preallocated) index is empty, not corrupt.
        assert_eq!(parse_index(&[0u8; 64]), (vec![], None));
    }

    #[test]
    fn index_garbage_and_truncation() {
        let mut buf = enc(&[(3, 4100), (9, 8300)]);
        buf.extend_from_slice(&[0, 0, 0]);
        let (e, err) = parse_index(&buf);
        assert_eq!(e.len(), 2);
        assert_eq!(err.unwrap().0, 16);
        let buf = enc(&[(3, 4100), (2, 8300), (9, 9000)]);
        let (e, err) = parse_index(&buf);
        assert_eq!(e.len(), 1);
        assert_eq!(err.unwrap().0, 8);
    }

    #[test]
    fn time_index_parse() {
        let mut buf = Vec::new();
        for (ts, o) in [(100i64, 3u32), (150, 9)] {
            buf.extend_from_slice(&ts.to_be_bytes());
            buf.extend_from_slice(&o.to_be_bytes());
        }
        buf.resize(1200, 0);
        let (e, err) = parse_time_index(&buf);
        assert_eq!(err, None);
        assert_eq!(
            e,
            vec![
                TimeIndexEntry {
                    timestamp: 100,
                    relative_offset: 3
                },
                TimeIndexEntry {
                    timestamp: 150,
                    relative_offset: 9
                },
            ]
        );
    }
}
