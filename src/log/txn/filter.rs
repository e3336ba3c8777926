//! READ_COMMITTED on the consumer side, as librdkafka (and the Java consumer) apply it to
//! what a fetch returns: the gateway (or broker) names the aborted transactions overlapping
//! the data it sends as (producer id, first offset); a transactional data batch of a producer
//! with an aborted transaction starting at or before its base offset is dropped, until that
//! producer's ABORT marker ends the transaction. Control batches (the markers) are never
//! handed to the application, at either isolation level.
//!
//! Fed in offset order, batch by batch; the aborted list may arrive in pieces, repeated, and
//! ahead of the data it covers (a producer's transactions never overlap, so an entry that
//! starts at or before a marker already passed for that producer is an old one and ignored).

use std::collections::{BTreeSet, HashMap};

use super::{marker_of, Marker};
use crate::log::batch::BatchHeader;

/// What to do with one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Data for the application.
    Deliver,
    /// A control batch (transaction marker or other control record): skipped.
    Control,
    /// A data batch of an aborted transaction: skipped.
    Aborted,
}

/// Per partition: the aborted transactions not yet ended by their marker.
#[derive(Clone, Debug, Default)]
pub struct AbortedFilter {
    /// Producer id -> first offsets of its aborted transactions whose marker is still ahead.
    pending: HashMap<i64, BTreeSet<i64>>,
    /// Producer id -> offset of the last marker passed.
    ended: HashMap<i64, i64>,
}

impl AbortedFilter {
    /// An aborted transaction of `producer_id` starting at `first_offset` (duplicates merge).
    pub fn add(&mut self, producer_id: i64, first_offset: i64) {
        if self
            .ended
            .get(&producer_id)
            .is_some_and(|&m| first_offset <= m)
        {
            return;
        }
        self.pending
            .entry(producer_id)
            .or_default()
            .insert(first_offset);
    }

    /// Judges the next batch in offset order (`batch`: its CRC-checked bytes, read only
    /// for a control batch's marker).
    pub fn check(&mut self, h: &BatchHeader, batch: &[u8]) -> Verdict {
        let pid = h.producer_id;
        if h.is_control() {
            if h.is_transactional() && pid >= 0 {
                let marker = marker_of(batch).unwrap_or(Marker::Other(-1));
                if matches!(marker, Marker::Abort | Marker::Commit) {
                    let at = h.base_offset;
                    let e = self.ended.entry(pid).or_insert(at);
                    *e = (*e).max(at);
                }
                if marker == Marker::Abort {
                    if let Some(set) = self.pending.get_mut(&pid) {
                        let later = set.split_off(&(h.base_offset + 1));
                        *set = later;
                        if set.is_empty() {
                            self.pending.remove(&pid);
                        }
                    }
                }
            }
            return Verdict::Control;
        }
        if h.is_transactional() && pid >= 0 {
            let aborted = self
                .pending
                .get(&pid)
                .and_then(|s| s.first())
                .is_some_and(|&first| h.base_offset >= first);
            if aborted {
                return Verdict::Aborted;
            }
        }
        Verdict::Deliver
    }

    /// Forgets everything (the position moved).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.ended.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{CONTROL, TRANSACTIONAL};
    use crate::log::txn_writer::FIRST_PRODUCER_ID;
    use crate::log::LogDir;

    fn header(base: i64, pid: i64, attributes: i16) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes,
            last_offset_delta: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: 0,
            records_count: 1,
        }
    }

    #[test]
    fn aborted_batches_up_to_the_producers_marker() {
        let mut f = AbortedFilter::default();
        let data = |b| header(b, 7, TRANSACTIONAL);
        // An entry arriving early (ahead of its data) and twice.
        f.add(7, 3);
        f.add(7, 3);
        assert_eq!(f.check(&data(0), &[]), Verdict::Deliver);
        assert_eq!(f.check(&data(3), &[]), Verdict::Aborted);
        assert_eq!(f.check(&header(4, 8, TRANSACTIONAL), &[]), Verdict::Deliver);
        assert_eq!(f.check(&header(5, -1, 0), &[]), Verdict::Deliver);
        assert_eq!(f.check(&data(6), &[]), Verdict::Aborted);
        // A control batch whose marker cannot be read is still never delivered.
        assert_eq!(
            f.check(&header(7, 7, TRANSACTIONAL | CONTROL), &[]),
            Verdict::Control
        );
        assert_eq!(f.check(&data(8), &[]), Verdict::Aborted);
    }

    /// The transactional writer's log (see `txn::tests::write_txn_log`: 20 records, 2 per
    /// batch, every 3rd transaction aborted, the last one open), filtered batch by batch from
    /// the partition's own aborted list, keeps exactly the committed records below the LSO.
    #[test]
    fn filter_keeps_exactly_the_committed_records() {
        let dir = tempfile::tempdir().unwrap();
        crate::log::txn::tests::write_txn_log(dir.path());
        let log = LogDir::open(dir.path(), None).unwrap();
        let p = log.partition("t", 0).unwrap();
        let lso = p.offsets().last_stable;
        let (mut kept, mut skipped) = (Vec::new(), (0, 0));
        let mut f = AbortedFilter::default();
        let mut at = 0;
        // Small reads, so the aborted list arrives per read as a consumer gets it.
        while at < lso {
            let slice = p.read_isolated(at, 1, true).unwrap();
            for (pid, first) in p.aborted_txns(at, slice.next_offset) {
                assert!(pid >= FIRST_PRODUCER_ID);
                f.add(pid, first);
            }
            let bytes = slice.to_vec().unwrap();
            for b in crate::log::batch::iter(&bytes) {
                let (pos, h) = b.unwrap();
                let raw = &bytes[pos..pos + h.total_len()];
                match f.check(&h, raw) {
                    Verdict::Deliver => {
                        for r in crate::log::record::decode_batch_refs(raw).unwrap().1 {
                            kept.push(r.offset);
                        }
                    }
                    Verdict::Control => skipped.0 += 1,
                    Verdict::Aborted => skipped.1 += 1,
                }
            }
            at = slice.next_offset;
        }
        assert_eq!(lso, 22);
        let committed: Vec<i64> = (0..8).chain([12, 13, 16, 17, 20, 21]).collect();
        assert_eq!(kept, committed);
        // Markers below the LSO: 8, 9 (txns 1, 2), 18 (abort of txn 3), 19 (txn 4).
        assert_eq!(skipped, (4, 2));
    }
}
