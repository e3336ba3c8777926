//! Transactional logs as a broker stores them (`kxgw produce --transactional`).
//!
//! Two transactional producers (ids [`FIRST_PRODUCER_ID`] and the next) write in rounds: in
//! each round both open a transaction, their data batches interleave (A, B, A, B: up to
//! [`BATCHES_PER_TXN`] each), then A's marker, then B's. Transactions are numbered from 1 in
//! the order they are opened; with `abort_every N` every N-th is aborted, the others are
//! committed; `open_tail` leaves the last one opened without a marker. Markers are control
//! batches (transactional + control attributes, one record: key version 0 / type
//! ABORT 0 or COMMIT 1, value version 0 / coordinator epoch 0). Each ABORT appends an entry
//! to the `.txnindex` of the segment holding the marker; at the end a producer-state
//! `.snapshot` at the log end records the producers and the open transaction, as a broker's
//! clean shutdown does.

use std::path::Path;

use super::batch::{CONTROL, TRANSACTIONAL};
use super::error::LogError;
use super::segment::file_stem;
use super::txn::{self, AbortedTxn, SnapshotEntry};
use super::writer::{now_ms, BatchBuilder, BatchFields, PartitionWriter};

/// Where the data records of [`write`] come from (`kxgw produce` uses its demo records).
pub trait BatchSource {
    /// Begins `b` at `base_offset` and adds `n` records with timestamp `ts`.
    fn fill(&mut self, b: &mut BatchBuilder, base_offset: i64, n: usize, ts: i64);
}

pub const FIRST_PRODUCER_ID: i64 = 1000;
pub const BATCHES_PER_TXN: usize = 2;

/// What to write.
#[derive(Clone, Copy, Debug)]
pub struct TxnPlan {
    /// Data records per partition.
    pub records: u64,
    pub batch_records: usize,
    /// Abort every N-th transaction (0: commit all).
    pub abort_every: u64,
    /// Leave the last transaction without a marker.
    pub open_tail: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Producer {
    id: i64,
    next_seq: i32,
    txn_first: Option<i64>,
    /// Number of the open transaction.
    txn_no: u64,
    last_offset: i64,
    batches: usize,
}

/// Counts of what one partition got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnSummary {
    pub committed: u64,
    pub aborted: u64,
    pub open: u64,
    pub batches: u64,
}

struct Ctx<'a> {
    w: &'a mut PartitionWriter,
    b: BatchBuilder,
    records: &'a mut dyn BatchSource,
    plan: TxnPlan,
    sum: TxnSummary,
}

impl Ctx<'_> {
    fn data(&mut self, p: &mut Producer, n: usize) -> Result<(), LogError> {
        let base = self.w.next_offset();
        self.b.set_fields(BatchFields {
            producer_id: p.id,
            producer_epoch: 0,
            base_sequence: p.next_seq,
            attributes: TRANSACTIONAL,
            leader_epoch: 0, // the writer stamps its current epoch
        });
        self.records.fill(&mut self.b, base, n, now_ms());
        self.w.append_built(&mut self.b)?;
        p.next_seq = p.next_seq.wrapping_add(n as i32);
        p.txn_first.get_or_insert(base);
        p.last_offset = base + n as i64 - 1;
        p.batches += 1;
        self.sum.batches += 1;
        Ok(())
    }

    /// Writes `p`'s marker; `others_open`: first offsets of the other open transactions.
    fn marker(&mut self, p: &mut Producer, others_open: Option<i64>) -> Result<(), LogError> {
        let Some(first) = p.txn_first.take() else {
            return Ok(());
        };
        let abort = self.plan.abort_every > 0 && p.txn_no % self.plan.abort_every == 0;
        let at = self.w.next_offset();
        self.b.set_fields(BatchFields {
            producer_id: p.id,
            producer_epoch: 0,
            base_sequence: -1,
            attributes: TRANSACTIONAL | CONTROL,
            leader_epoch: 0, // the writer stamps its current epoch
        });
        self.b.begin(at);
        self.b.push_parts(
            now_ms(),
            Some(&txn::marker_key(!abort)),
            Some(&txn::marker_value(0)),
            &[],
        );
        self.w.append_built(&mut self.b)?;
        p.batches = 0;
        if abort {
            self.sum.aborted += 1;
            let entry = AbortedTxn {
                producer_id: p.id,
                first_offset: first,
                last_offset: at,
                last_stable_offset: others_open.unwrap_or(at + 1),
            };
            self.w.flush()?;
            txn::append_txn_index(self.w.dir(), self.w.active_segment_base(), &entry)?;
        } else {
            self.sum.committed += 1;
        }
        Ok(())
    }
}

/// Appends `plan.records` transactional records from `records` to `w` (see the module doc).
pub fn write(
    w: &mut PartitionWriter,
    records: &mut dyn BatchSource,
    plan: TxnPlan,
) -> Result<TxnSummary, LogError> {
    let batch = plan.batch_records.max(1) as u64;
    let mut ps = [
        Producer {
            id: FIRST_PRODUCER_ID,
            ..Default::default()
        },
        Producer {
            id: FIRST_PRODUCER_ID + 1,
            ..Default::default()
        },
    ];
    let mut c = Ctx {
        w,
        b: BatchBuilder::new(),
        records,
        plan,
        sum: TxnSummary::default(),
    };
    let mut left = plan.records;
    let mut txn_no = 0u64;
    while left > 0 {
        for _ in 0..BATCHES_PER_TXN {
            for p in ps.iter_mut() {
                if left == 0 {
                    break;
                }
                if p.txn_first.is_none() {
                    txn_no += 1;
                    p.txn_no = txn_no;
                }
                let n = left.min(batch);
                c.data(p, n as usize)?;
                left -= n;
            }
        }
        let last_round = left == 0;
        // The last transaction opened is the one left open with `open_tail`.
        let open_idx = ps
            .iter()
            .enumerate()
            .filter(|(_, p)| p.txn_first.is_some())
            .max_by_key(|(_, p)| p.txn_no)
            .map(|(i, _)| i);
        for i in 0..ps.len() {
            if last_round && plan.open_tail && Some(i) == open_idx {
                c.sum.open += 1;
                continue;
            }
            let other = ps[1 - i].txn_first;
            let mut p = ps[i];
            c.marker(&mut p, other)?;
            ps[i] = p;
        }
    }
    c.w.flush()?;
    write_snapshot(c.w.dir(), c.w.next_offset(), &ps)?;
    Ok(c.sum)
}

fn write_snapshot(dir: &Path, offset: i64, ps: &[Producer]) -> Result<(), LogError> {
    let entries: Vec<SnapshotEntry> = ps
        .iter()
        .filter(|p| p.next_seq > 0)
        .map(|p| SnapshotEntry {
            producer_id: p.id,
            epoch: 0,
            last_sequence: p.next_seq - 1,
            last_offset: p.last_offset,
            offset_delta: 0,
            timestamp: now_ms(),
            coordinator_epoch: 0,
            current_txn_first_offset: p.txn_first.unwrap_or(-1),
        })
        .collect();
    let path = dir.join(format!("{}{}", file_stem(offset), txn::SNAPSHOT_SUFFIX));
    let tmp = path.with_extension("snapshot.tmp");
    std::fs::write(&tmp, txn::format_snapshot(&entries)).map_err(|e| LogError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))
}

/// Demo values of `size` bytes for `partition`, no keys or headers: what `kxgw produce
/// --transactional --key-size 0` writes, for the tests of transactional logs.
#[cfg(test)]
pub(crate) struct TestValues {
    partition: i32,
    size: usize,
}

#[cfg(test)]
impl TestValues {
    pub fn new(partition: i32, size: usize) -> TestValues {
        TestValues { partition, size }
    }
}

#[cfg(test)]
impl BatchSource for TestValues {
    fn fill(&mut self, b: &mut BatchBuilder, base_offset: i64, n: usize, ts: i64) {
        b.begin(base_offset);
        for off in base_offset..base_offset + n as i64 {
            let value = kxgw_demo_data::demo_value(self.partition, off, self.size);
            b.push_parts(ts, None, Some(&value), &[]);
        }
    }
}
