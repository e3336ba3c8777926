//! The tail trace: a bounded record, per log dir, of when appended offsets became readable
//! (each advancing refresh: growth detected, bytes validated) and of when replies carrying
//! them left (each reply with data: its offsets, the time it was handed to the transport).
//! Stamps are [`clock_ns`] (CLOCK_MONOTONIC), the clock the bench's stamping producer and
//! tailing probes use too, so that the bench can join the trace with the probe's records and
//! give every record its four hops: append to detection, to validation, to the send, to the
//! consumer's arrival. Fixed-size rings, written under one uncontended lock per event, no
//! allocation after a partition's first event; the oldest entries are overwritten.
//!
//! [`clock_ns`]: super::tail::clock_ns

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Entries kept per ring (refreshes, replies).
pub const CAPACITY: usize = 16 * 1024;

/// A fixed-capacity ring that overwrites its oldest entry.
#[derive(Debug)]
pub struct Ring<T> {
    slots: Vec<T>,
    cap: usize,
    /// Where the next entry goes once the ring is full.
    next: usize,
}

impl<T: Copy> Ring<T> {
    pub fn new(cap: usize) -> Ring<T> {
        Ring {
            slots: Vec::with_capacity(cap),
            cap: cap.max(1),
            next: 0,
        }
    }

    pub fn push(&mut self, v: T) {
        if self.slots.len() < self.cap {
            self.slots.push(v);
        } else {
            self.slots[self.next] = v;
            self.next = (self.next + 1) % self.cap;
        }
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        let (new, old) = self.slots.split_at(self.next);
        old.iter().chain(new)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Which listener sent a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The kxgw fetch protocol (kernel UDP or AF_XDP).
    Fetch,
    /// The Kafka listener.
    Kafka,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Fetch => "fetch",
            Via::Kafka => "kafka",
        }
    }
}

/// A traced partition, interned: an index into the trace's name table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TraceKey(u32);

/// An advancing refresh: the readable end it advanced to.
#[derive(Clone, Copy, Debug)]
struct Refresh {
    key: TraceKey,
    readable_end: i64,
    detected: u64,
    validated: u64,
}

/// A reply with data: offsets `[from, to)` of its partition.
#[derive(Clone, Copy, Debug)]
struct Reply {
    key: TraceKey,
    via: Via,
    from: i64,
    to: i64,
    sent: u64,
    /// It answered a parked (long-poll) request.
    parked: bool,
}

#[derive(Debug)]
struct Inner {
    /// topic -> partition -> key.
    keys: HashMap<String, HashMap<i32, TraceKey>>,
    names: Vec<(String, i32)>,
    refreshes: Ring<Refresh>,
    replies: Ring<Reply>,
}

/// The trace of one log dir; every refreshing thread and every listener records into it.
#[derive(Debug)]
pub struct TailTrace {
    inner: Mutex<Inner>,
}

impl Default for TailTrace {
    fn default() -> Self {
        TailTrace::with_capacity(CAPACITY)
    }
}

impl Inner {
    fn key(&mut self, topic: &str, partition: i32) -> TraceKey {
        if let Some(k) = self.keys.get(topic).and_then(|m| m.get(&partition)) {
            return *k;
        }
        let k = TraceKey(u32::try_from(self.names.len()).unwrap_or(u32::MAX));
        self.names.push((topic.to_owned(), partition));
        self.keys
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, k);
        k
    }

    fn name(&self, k: TraceKey) -> (&str, i32) {
        self.names
            .get(k.0 as usize)
            .map_or(("?", -1), |(t, p)| (t.as_str(), *p))
    }
}

/// The header line of [`TailTrace::dump`].
pub const DUMP_HEADER: &str = "# kxgw tail trace, CLOCK_MONOTONIC ns: \
refresh topic partition readable_end detected_ns validated_ns | \
reply via topic partition from_offset to_offset sent_ns parked";

impl TailTrace {
    pub fn with_capacity(cap: usize) -> TailTrace {
        TailTrace {
            inner: Mutex::new(Inner {
                keys: HashMap::new(),
                names: Vec::new(),
                refreshes: Ring::new(cap),
                replies: Ring::new(cap),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A refresh of `topic`-`partition` that started at `detected` advanced the readable end
    /// to `readable_end` at `validated`.
    pub fn refresh(
        &self,
        (topic, partition): (&str, i32),
        readable_end: i64,
        (detected, validated): (u64, u64),
    ) {
        let mut g = self.lock();
        let key = g.key(topic, partition);
        g.refreshes.push(Refresh {
            key,
            readable_end,
            detected,
            validated,
        });
    }

    /// A reply of `via` carrying offsets `[from, to)` of `topic`-`partition` was handed to
    /// the transport at `sent`; `parked`: it answered a long poll that had waited.
    pub fn reply(
        &self,
        (topic, partition): (&str, i32),
        via: Via,
        (from, to): (i64, i64),
        sent: u64,
        parked: bool,
    ) {
        let mut g = self.lock();
        let key = g.key(topic, partition);
        g.replies.push(Reply {
            key,
            via,
            from,
            to,
            sent,
            parked,
        });
    }

    /// Entries held: (refreshes, replies).
    pub fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        (g.refreshes.len(), g.replies.len())
    }

    /// The trace as tab-separated lines after [`DUMP_HEADER`], oldest first: the refreshes,
    /// then the replies.
    pub fn dump(&self) -> String {
        let g = self.lock();
        let mut out = String::with_capacity(64 * (g.refreshes.len() + g.replies.len()) + 256);
        out.push_str(DUMP_HEADER);
        out.push('\n');
        for r in g.refreshes.iter() {
            let (t, p) = g.name(r.key);
            let _ = writeln!(
                out,
                "refresh\t{t}\t{p}\t{}\t{}\t{}",
                r.readable_end, r.detected, r.validated
            );
        }
        for r in g.replies.iter() {
            let (t, p) = g.name(r.key);
            let _ = writeln!(
                out,
                "reply\t{}\t{t}\t{p}\t{}\t{}\t{}\t{}",
                r.via.name(),
                r.from,
                r.to,
                r.sent,
                u8::from(r.parked)
            );
        }
        out
    }
}

/// Tests: the rows of a [`TailTrace::dump`] whose first field is `kind` (e.g. `"reply\t"`),
/// split into fields.
#[cfg(test)]
pub(crate) fn dump_rows(dump: &str, kind: &str) -> Vec<Vec<String>> {
    dump.lines()
        .filter(|l| l.starts_with(kind))
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_entries_oldest_first() {
        let mut r = Ring::new(3);
        assert!(r.is_empty());
        r.push(1);
        r.push(2);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [1, 2]);
        for v in 3..=7 {
            r.push(v);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [5, 6, 7]);
    }

    #[test]
    fn dump_names_partitions_and_keeps_capacity() {
        let t = TailTrace::with_capacity(2);
        t.refresh(("a", 0), 5, (100, 150));
        t.refresh(("b", 3), 9, (200, 260));
        t.refresh(("a", 0), 6, (300, 340));
        t.reply(("a", 0), Via::Kafka, (5, 6), 400, true);
        t.reply(("b", 3), Via::Fetch, (8, 9), 500, false);
        assert_eq!(t.counts(), (2, 2));
        let dump = t.dump();
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(
            lines,
            [
                DUMP_HEADER,
                "refresh\tb\t3\t9\t200\t260",
                "refresh\ta\t0\t6\t300\t340",
                "reply\tkafka\ta\t0\t5\t6\t400\t1",
                "reply\tfetch\tb\t3\t8\t9\t500\t0",
            ]
        );
    }
}
