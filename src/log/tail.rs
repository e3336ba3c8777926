//! Tailing hooks: the per-partition timestamps of the last tail refresh that advanced the
//! readable end (when the growth was detected, when its bytes were validated), and the
//! per-hop histograms servers record into when they answer a parked poll with that data.
//! They let the bench see where a tailing record's time goes inside the gateway; the cost
//! is two clock reads per advancing refresh and two histogram increments per tailing reply.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::MetricsWriter;

/// Nanoseconds on CLOCK_MONOTONIC: one clock for every process of the host, in every network
/// namespace (none of ours has a time namespace), never stepped. The bench's stamping producer
/// and tailing probes read it too, so the gateway's stamps compare with theirs
/// ([`super::tail_trace`]).
pub fn clock_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    // CLOCK_MONOTONIC cannot fail on Linux; 0 is never a real stamp (see TailStamps).
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .ok()
        .and_then(|t| {
            let s = u64::try_from(t.tv_sec()).ok()?;
            let ns = u64::try_from(t.tv_nsec()).ok()?;
            s.checked_mul(1_000_000_000)?.checked_add(ns)
        })
        .unwrap_or(0)
        .max(1)
}

/// When a partition's last advancing tail refresh detected the growth and validated it
/// ([`clock_ns`]; 0: never).
#[derive(Debug, Default)]
pub struct TailStamps {
    detected: AtomicU64,
    validated: AtomicU64,
}

impl TailStamps {
    pub(crate) fn set(&self, detected: u64, validated: u64) {
        // Readers may see one stamp of the previous refresh and one of this: hop samples
        // are advisory, never used to decide what is served.
        self.detected.store(detected, Ordering::Relaxed);
        self.validated.store(validated, Ordering::Release);
    }

    /// (detected, validated) of the last advancing refresh; None before the first one.
    pub fn get(&self) -> Option<(u64, u64)> {
        let validated = self.validated.load(Ordering::Acquire);
        let detected = self.detected.load(Ordering::Relaxed);
        (validated > 0).then_some((detected.min(validated), validated))
    }
}

/// Sub-buckets per power of two: a recorded value is known within 1/SUB of itself.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `SUB` get a bucket each; above, `SUB` buckets per power of two up to 2^64.
const BUCKETS: usize = (SUB as usize) * (64 - SUB_BITS as usize + 1);

/// A log-linear histogram of nanosecond values, lock-free (one relaxed add per sample).
pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    (SUB as usize) * (e - SUB_BITS + 1) as usize + sub as usize
}

/// Largest value of bucket `i` (what a quantile reports: never below the true value).
fn bucket_max(i: usize) -> u64 {
    let sub = SUB as usize;
    if i < sub {
        return i as u64;
    }
    let e = (i / sub - 1) as u32 + SUB_BITS;
    let low = (1u64 << e) | (((i % sub) as u64) << (e - SUB_BITS));
    low.saturating_add((1u64 << (e - SUB_BITS)) - 1)
}

impl Histogram {
    pub fn record(&self, v: u64) {
        self.counts[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Nearest-rank quantile `q` (0..=1), as the upper bound of its bucket; None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_max(i));
            }
        }
        None
    }
}

/// The hops of a tailing reply inside the gateway, per log dir (every transport serving it
/// records here).
#[derive(Debug, Default)]
pub struct TailHops {
    /// Growth detected (inotify event read, or the busy poller's size check) to its bytes
    /// validated (the incremental CRC scan done, the readable end advanced).
    pub detect_to_validate: Histogram,
    /// Validated to the first datagram of the parked poll's reply handed to the transport
    /// (hooks, waker, the serving thread's wake-up, the read).
    pub validate_to_send: Histogram,
    /// Appends a busy-polling worker found and validated itself (not the follower).
    pub busy_found: AtomicU64,
}

impl TailHops {
    /// Records one tailing reply leaving at `sent` for data stamped `(detected, validated)`.
    pub fn record(&self, (detected, validated): (u64, u64), sent: u64) {
        self.detect_to_validate
            .record(validated.saturating_sub(detected));
        self.validate_to_send.record(sent.saturating_sub(validated));
    }

    /// `tail_hop_us{hop,quantile}` gauges, `tail_hop_samples_total{hop}` and
    /// `tail_busy_found_total` counters.
    pub fn write_metrics(&self, w: &mut MetricsWriter) {
        w.counter(
            "tail_busy_found_total",
            "Appends a busy-polling worker found and validated itself, without the follower's wake-up",
            &[],
            self.busy_found.load(Ordering::Relaxed),
        );
        for (hop, h) in [
            ("detect_validate", &self.detect_to_validate),
            ("validate_send", &self.validate_to_send),
        ] {
            w.counter(
                "tail_hop_samples_total",
                "Tailing replies (parked polls answered with new data) measured per hop",
                &[("hop", hop)],
                h.count(),
            );
            for (q, name) in [(0.5, "0.5"), (0.99, "0.99"), (0.999, "0.999")] {
                if let Some(v) = h.quantile(q) {
                    w.gauge(
                        "tail_hop_us",
                        "Per-hop time of tailing replies inside the gateway, microseconds (bucket upper bound, within 1/8)",
                        &[("hop", hop), ("quantile", name)],
                        v as f64 / 1000.0,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values_within_an_eighth() {
        for v in (0..5000u64).chain([1 << 20, (1 << 20) + 12345, u64::MAX / 3, u64::MAX]) {
            let i = bucket_of(v);
            assert!(i < BUCKETS, "{v}");
            let hi = bucket_max(i);
            assert!(hi >= v, "{v} above its bucket's max {hi}");
            assert!(hi - v <= v / SUB, "{v}: bucket max {hi} too far");
            if i > 0 {
                assert!(bucket_max(i - 1) < v, "{v} belongs to an earlier bucket");
            }
        }
    }

    #[test]
    fn quantiles_follow_nearest_rank() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile(0.5).unwrap();
        assert!((500_000..=500_000 + 500_000 / 8).contains(&p50), "{p50}");
        let p999 = h.quantile(0.999).unwrap();
        assert!((999_000..=999_000 + 999_000 / 8).contains(&p999), "{p999}");
    }

    #[test]
    fn stamps_read_back_ordered() {
        let s = TailStamps::default();
        assert_eq!(s.get(), None);
        s.set(10, 25);
        assert_eq!(s.get(), Some((10, 25)));
        // A detected stamp of a newer refresh than the validated one read: clamped.
        s.detected.store(40, Ordering::Relaxed);
        assert_eq!(s.get(), Some((25, 25)));
    }
}
