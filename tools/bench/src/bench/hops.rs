//! Per-record hops of a tailing run: the gateway's tail trace (`kxgw stats --tail-trace`:
//! when each advancing refresh detected and validated growth, when each reply with data left)
//! joined with a probe's records (offset, the producer's stamp, the arrival), all on
//! CLOCK_MONOTONIC. A record's refresh is the one that advanced the readable end past it; its
//! reply is the earliest one sent (by the probe's listener) whose offsets hold it. That gives
//! each record four hops that add up to its produce-to-consume delay: append to detection,
//! detection to validation, validation to the send, the send to the arrival.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use super::latency::{Arrival, Percentiles};

/// The hops, in path order.
pub const HOPS: [&str; 4] = [
    "append_detect",
    "detect_validate",
    "validate_send",
    "send_arrival",
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Refresh {
    topic: String,
    partition: i32,
    readable_end: i64,
    detected: u64,
    validated: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    via: String,
    topic: String,
    partition: i32,
    from: i64,
    to: i64,
    sent: u64,
    parked: bool,
}

/// A parsed tail trace.
#[derive(Debug, Default)]
pub struct Trace {
    refreshes: Vec<Refresh>,
    replies: Vec<Reply>,
}

fn field<T: std::str::FromStr>(cols: &[&str], i: usize, line: usize) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let raw = cols
        .get(i)
        .with_context(|| format!("trace line {line}: column {} missing", i + 1))?;
    raw.parse()
        .map_err(|e| anyhow::anyhow!("trace line {line}: column {} {raw:?}: {e}", i + 1))
}

impl Trace {
    /// Parses `kxgw stats --tail-trace` output (comment lines skipped).
    pub fn parse(text: &str) -> Result<Trace> {
        let mut t = Trace::default();
        for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let c: Vec<&str> = line.split('\t').collect();
            match c[0] {
                "refresh" => t.refreshes.push(Refresh {
                    topic: field(&c, 1, n)?,
                    partition: field(&c, 2, n)?,
                    readable_end: field(&c, 3, n)?,
                    detected: field(&c, 4, n)?,
                    validated: field(&c, 5, n)?,
                }),
                "reply" => t.replies.push(Reply {
                    via: field(&c, 1, n)?,
                    topic: field(&c, 2, n)?,
                    partition: field(&c, 3, n)?,
                    from: field(&c, 4, n)?,
                    to: field(&c, 5, n)?,
                    sent: field(&c, 6, n)?,
                    parked: field::<u8>(&c, 7, n)? != 0,
                }),
                other => bail!("trace line {n}: unknown entry {other:?}"),
            }
        }
        Ok(t)
    }
}

/// Parses a probe's record file ([`super::latency::write_arrivals`]).
pub fn parse_arrivals(text: &str) -> Result<Vec<Arrival>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let c: Vec<&str> = line.split('\t').collect();
        let num = |i: usize| -> Result<i64> {
            let raw = c
                .get(i)
                .with_context(|| format!("records line {n}: column {} missing", i + 1))?;
            raw.parse()
                .with_context(|| format!("records line {n}: column {} {raw:?}", i + 1))
        };
        out.push(Arrival {
            partition: i32::try_from(num(0)?).context("partition")?,
            offset: num(1)?,
            append_ns: u64::try_from(num(2)?).context("append_ns")?,
            arrival_ns: u64::try_from(num(3)?).context("arrival_ns")?,
        });
    }
    Ok(out)
}

/// The join's result.
#[derive(Debug, Default)]
pub struct Joined {
    /// Probe records.
    pub records: usize,
    /// Records with both a refresh and a reply in the trace.
    pub joined: usize,
    /// Joined records whose reply answered a parked (long-poll) request.
    pub parked: usize,
    /// Hop samples below zero (clock reads racing the write they stamp), counted as 0.
    pub clamped: usize,
    /// Samples per hop, ns, in [`HOPS`] order.
    pub hops: [Vec<u64>; 4],
}

/// The refresh that made each offset readable, per partition: readable ends ascending (the
/// earliest refresh per end); offsets in `[end[i-1], end[i])` became readable at `i`. The
/// first refresh only bounds the second (what it advanced from is not in the trace).
fn refresh_steps<'a>(trace: &'a Trace, topic: &str) -> HashMap<i32, Vec<&'a Refresh>> {
    let mut by: HashMap<i32, Vec<&Refresh>> = HashMap::new();
    for r in trace.refreshes.iter().filter(|r| r.topic == topic) {
        by.entry(r.partition).or_default().push(r);
    }
    for v in by.values_mut() {
        v.sort_by_key(|r| (r.readable_end, r.validated));
        v.dedup_by_key(|r| r.readable_end);
    }
    by
}

fn refresh_of<'a>(steps: &[&'a Refresh], offset: i64) -> Option<&'a Refresh> {
    let i = steps.partition_point(|r| r.readable_end <= offset);
    (i > 0 && i < steps.len()).then(|| steps[i])
}

/// The earliest reply of `via` carrying each (partition, offset) a probe record has.
fn first_replies<'a>(
    trace: &'a Trace,
    topic: &str,
    via: &str,
    arrivals: &[Arrival],
) -> HashMap<(i32, i64), &'a Reply> {
    let wanted: std::collections::HashSet<(i32, i64)> =
        arrivals.iter().map(|a| (a.partition, a.offset)).collect();
    let (lo, hi) = arrivals.iter().fold((i64::MAX, i64::MIN), |(lo, hi), a| {
        (lo.min(a.offset), hi.max(a.offset))
    });
    let mut replies: Vec<&Reply> = trace
        .replies
        .iter()
        .filter(|r| r.via == via && r.topic == topic)
        .collect();
    replies.sort_by_key(|r| r.sent);
    let mut first = HashMap::new();
    for r in replies {
        for o in r.from.max(lo)..r.to.min(hi.saturating_add(1)) {
            if wanted.contains(&(r.partition, o)) {
                first.entry((r.partition, o)).or_insert(r);
            }
        }
    }
    first
}

/// Joins `arrivals` (records of `topic` a probe got from the `via` listener) with `trace`.
pub fn join(trace: &Trace, topic: &str, via: &str, arrivals: &[Arrival]) -> Joined {
    let steps = refresh_steps(trace, topic);
    let replies = first_replies(trace, topic, via, arrivals);
    let mut j = Joined {
        records: arrivals.len(),
        ..Joined::default()
    };
    for a in arrivals {
        let refresh = steps
            .get(&a.partition)
            .and_then(|s| refresh_of(s, a.offset));
        let (Some(f), Some(r)) = (refresh, replies.get(&(a.partition, a.offset))) else {
            continue;
        };
        j.joined += 1;
        j.parked += usize::from(r.parked);
        let points = [a.append_ns, f.detected, f.validated, r.sent, a.arrival_ns];
        for (h, w) in j.hops.iter_mut().zip(points.windows(2)) {
            if w[1] < w[0] {
                j.clamped += 1;
            }
            h.push(w[1].saturating_sub(w[0]));
        }
    }
    j
}

impl Joined {
    /// One tab-separated line per hop (`hop NAME count p50_us p99_us p999_us max_us`), then
    /// `summary records joined parked clamped`.
    pub fn to_tsv(&self) -> String {
        let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
        let mut out = String::new();
        for (name, samples) in HOPS.iter().zip(&self.hops) {
            let mut s = samples.clone();
            match Percentiles::of(&mut s) {
                Some(p) => out.push_str(&format!(
                    "hop\t{name}\t{}\t{}\t{}\t{}\t{}\n",
                    p.count,
                    us(p.p50),
                    us(p.p99),
                    us(p.p999),
                    us(p.max)
                )),
                None => out.push_str(&format!("hop\t{name}\t0\t-\t-\t-\t-\n")),
            }
        }
        out.push_str(&format!(
            "summary\t{}\t{}\t{}\t{}\n",
            self.records, self.joined, self.parked, self.clamped
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(offset: i64, append_ns: u64, arrival_ns: u64) -> Arrival {
        Arrival {
            partition: 0,
            offset,
            append_ns,
            arrival_ns,
        }
    }

    /// Offsets 1 and 2 appended one at a time, 3 and 4 found by one refresh; the consumer
    /// caught up by a parked poll each time except offset 2 (asked for after it was readable).
    const TRACE: &str = "# kxgw tail trace\n\
        refresh\tt\t0\t1\t10\t20\n\
        refresh\tt\t0\t2\t1100\t1150\n\
        refresh\tt\t0\t3\t2100\t2130\n\
        refresh\tt\t0\t3\t2200\t2210\n\
        refresh\tt\t0\t5\t3100\t3180\n\
        refresh\tother\t0\t9\t3000\t3001\n\
        reply\tfetch\tt\t0\t1\t2\t1200\t1\n\
        reply\tfetch\tt\t0\t2\t3\t2500\t0\n\
        reply\tkafka\tt\t0\t2\t3\t2140\t1\n\
        reply\tfetch\tt\t0\t3\t5\t3300\t1\n\
        reply\tfetch\tt\t0\t1\t5\t9000\t0\n";

    #[test]
    fn each_record_gets_its_refresh_and_first_reply() {
        let trace = Trace::parse(TRACE).unwrap();
        let got = [
            arrival(1, 1000, 1300),
            arrival(2, 2000, 2600),
            arrival(3, 3000, 3400),
            arrival(4, 3050, 3400),
            arrival(7, 5000, 6000),
        ];
        let j = join(&trace, "t", "fetch", &got);
        assert_eq!((j.records, j.joined, j.parked, j.clamped), (5, 4, 3, 0));
        assert_eq!(j.hops[0], [100, 100, 100, 50]);
        assert_eq!(j.hops[1], [50, 30, 80, 80]);
        assert_eq!(j.hops[2], [50, 370, 120, 120]);
        assert_eq!(j.hops[3], [100, 100, 100, 100]);
        // The hops add up to each record's delay.
        for (i, a) in got[..4].iter().enumerate() {
            let sum: u64 = j.hops.iter().map(|h| h[i]).sum();
            assert_eq!(sum, a.delay(), "offset {}", a.offset);
        }
        // The Kafka listener's reply for offset 2; the others were the fetch protocol's.
        let k = join(&trace, "t", "kafka", &got);
        assert_eq!((k.joined, k.parked), (1, 1));
        assert_eq!(k.hops[2], [10]);
    }

    #[test]
    fn a_stamp_after_the_detection_is_clamped_and_counted() {
        let trace = Trace::parse(TRACE).unwrap();
        let j = join(&trace, "t", "fetch", &[arrival(1, 1120, 1300)]);
        assert_eq!((j.joined, j.clamped), (1, 1));
        assert_eq!(j.hops[0], [0]);
        let tsv = j.to_tsv();
        assert!(
            tsv.starts_with("hop\tappend_detect\t1\t0.0\t0.0\t0.0\t0.0\n"),
            "{tsv}"
        );
        assert!(tsv.ends_with("summary\t1\t1\t1\t1\n"), "{tsv}");
    }

    #[test]
    fn records_and_traces_parse_or_say_where_not() {
        let a =
            parse_arrivals("# partition offset append_ns arrival_ns\n0\t5\t100\t250\n").unwrap();
        assert_eq!(a, [arrival(5, 100, 250)]);
        let e = parse_arrivals("0\t5\tx\t1\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
        let e = Trace::parse("reply\tfetch\tt\t0\t1\n").unwrap_err();
        assert!(e.to_string().contains("column 6 missing"), "{e}");
        let e = Trace::parse("bogus\n").unwrap_err();
        assert!(e.to_string().contains("unknown entry"), "{e}");
        let empty = join(&Trace::default(), "t", "fetch", &[arrival(1, 1, 2)]);
        assert_eq!((empty.records, empty.joined), (1, 0));
        assert!(empty.to_tsv().contains("hop\tsend_arrival\t0\t-"));
    }
}
