//! A tiny datagram service for the engine's self-test and as a raw AF_XDP ceiling generator
//! (no fetch protocol, no log): it echoes every request, except `GEN` requests, which make it
//! stream a deterministic byte pattern from an in-memory "segment" through the normal TX path
//! (so `sg` stages the pattern in the arena exactly as it would log pages).
//!
//! Request `GEN <position> <bytes> <size>`: send the pattern bytes `position..position+bytes`
//! in datagrams of at most `size` payload bytes (clamped to what the MTU allows). Each
//! datagram = 16-byte header (position u64 BE, length u32 BE, `RAW1`) + pattern bytes; the
//! receiver checks them with [`pattern_byte`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use kxgw::driver::{Datagram, Service, TxPayload};
use kxgw::log::SourceId;
use kxgw::xdp::WorkerContext;

/// Length of the pattern "segment"; positions wrap around it.
pub const PATTERN_LEN: u64 = 32 << 20;
/// Header of a generated datagram.
pub const GEN_HEADER: usize = 16;
/// Magic at bytes 12..16 of a generated datagram.
pub const GEN_MAGIC: &[u8; 4] = b"RAW1";

/// The pattern byte at `position` (mod [`PATTERN_LEN`]).
pub fn pattern_byte(position: u64) -> u8 {
    let p = position % PATTERN_LEN;
    (p.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// The in-memory pattern source.
pub struct Pattern {
    data: Vec<u8>,
    /// The pattern's identity for the arena (ids are unique, so nothing needs keeping).
    source: SourceId,
}

impl Pattern {
    /// Builds the pattern (32 MiB).
    pub fn new() -> Arc<Pattern> {
        Arc::new(Pattern {
            data: (0..PATTERN_LEN).map(pattern_byte).collect(),
            source: SourceId::new(Arc::new(())),
        })
    }
}

/// A slice of the pattern.
pub struct PatternSlice {
    pattern: Arc<Pattern>,
    position: u64,
    len: usize,
}

impl TxPayload for PatternSlice {
    fn bytes(&self) -> &[u8] {
        let p = self.position as usize;
        &self.pattern.data[p..p + self.len]
    }
    fn ahead(&self) -> &[u8] {
        let p = self.position as usize;
        let end = (p + (1 << 20)).min(self.pattern.data.len());
        &self.pattern.data[p..end.max(p + self.len)]
    }
    fn source(&self) -> SourceId {
        self.pattern.source.clone()
    }
    fn position(&self) -> u64 {
        self.position
    }
}

struct Job {
    dst: SocketAddr,
    next: u64,
    end: u64,
    size: usize,
}

/// Echo + generator service.
pub struct RawService {
    pattern: Arc<Pattern>,
    max_datagram: usize,
    echo: VecDeque<(SocketAddr, Vec<u8>)>,
    jobs: VecDeque<Job>,
}

impl RawService {
    /// A service for one worker.
    pub fn new(pattern: Arc<Pattern>, ctx: &WorkerContext) -> RawService {
        RawService {
            pattern,
            max_datagram: ctx.max_datagram,
            echo: VecDeque::new(),
            jobs: VecDeque::new(),
        }
    }
}

fn parse_gen(data: &[u8]) -> Option<(u64, u64, usize)> {
    let text = std::str::from_utf8(data.strip_prefix(b"GEN ")?).ok()?;
    let mut it = text.split_ascii_whitespace();
    let pos = it.next()?.parse().ok()?;
    let bytes = it.next()?.parse().ok()?;
    let size = it.next()?.parse().ok()?;
    Some((pos, bytes, size))
}

impl Service for RawService {
    type Payload = PatternSlice;

    fn handle_datagram(&mut self, _now: Instant, src: SocketAddr, _local: SocketAddr, data: &[u8]) {
        match parse_gen(data) {
            Some((pos, bytes, size)) => {
                let size = size.clamp(1, self.max_datagram - GEN_HEADER);
                self.jobs.push_back(Job {
                    dst: src,
                    next: pos,
                    end: pos.saturating_add(bytes),
                    size,
                });
            }
            None if self.echo.len() < 4096 => self.echo.push_back((src, data.to_vec())),
            None => {}
        }
    }

    fn poll_transmit(&mut self, _now: Instant) -> Option<Datagram<PatternSlice>> {
        if let Some((dst, data)) = self.echo.pop_front() {
            return Some(Datagram {
                dst,
                header: data,
                payload: None,
            });
        }
        let job = self.jobs.front_mut()?;
        let in_pattern = job.next % PATTERN_LEN;
        // A datagram never wraps around the end of the pattern.
        let len = (job.end - job.next)
            .min(job.size as u64)
            .min(PATTERN_LEN - in_pattern) as usize;
        let mut header = Vec::with_capacity(GEN_HEADER);
        header.extend_from_slice(&job.next.to_be_bytes());
        header.extend_from_slice(&(len as u32).to_be_bytes());
        header.extend_from_slice(GEN_MAGIC);
        let d = Datagram {
            dst: job.dst,
            header,
            payload: Some(PatternSlice {
                pattern: self.pattern.clone(),
                position: in_pattern,
                len,
            }),
        };
        job.next += len as u64;
        if job.next >= job.end {
            self.jobs.pop_front();
        }
        Some(d)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}
}

/// What [`fetch_pattern`] received.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawFetchReport {
    /// Verified bytes.
    pub bytes: u64,
    /// Datagrams received.
    pub datagrams: u64,
    /// GEN requests re-sent for ranges that did not arrive.
    pub retries: u64,
    /// Wall time.
    pub elapsed: std::time::Duration,
}

/// Client of the generator: asks for `bytes` pattern bytes from `position` in windows of
/// `window` bytes, datagrams of `size`, verifies every byte, re-requests missing ranges.
pub fn fetch_pattern(
    sock: &std::net::UdpSocket,
    server: SocketAddr,
    position: u64,
    bytes: u64,
    size: usize,
    window: u64,
) -> anyhow::Result<RawFetchReport> {
    use anyhow::{bail, Context};
    let pattern = Pattern::new();
    let start = Instant::now();
    let mut report = RawFetchReport::default();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
    let mut buf = vec![0u8; 65_536];
    let mut next = position;
    let end = position + bytes;
    while next < end {
        let win_end = end.min(next + window);
        // Received coverage of [next, win_end): datagram starts -> lengths.
        let mut got: std::collections::BTreeMap<u64, u64> = Default::default();
        let mut cursor = next;
        let mut attempts = 0;
        while cursor < win_end {
            if attempts > 0 {
                report.retries += 1;
            }
            attempts += 1;
            if attempts > 20 {
                bail!("range {cursor}..{win_end} never arrived after 20 requests");
            }
            let req = format!("GEN {cursor} {} {size}", win_end - cursor);
            sock.send_to(req.as_bytes(), server)
                .context("sending GEN")?;
            loop {
                let n = match sock.recv_from(&mut buf) {
                    Ok((n, _)) => n,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break
                    }
                    Err(e) => return Err(e).context("receiving"),
                };
                let d = &buf[..n];
                if n < GEN_HEADER || &d[12..16] != GEN_MAGIC {
                    continue;
                }
                let pos = u64::from_be_bytes(d[0..8].try_into()?);
                let len = u64::from(u32::from_be_bytes(d[8..12].try_into()?));
                let body = &d[GEN_HEADER..];
                if body.len() as u64 != len {
                    bail!(
                        "datagram at {pos}: header says {len} bytes, carries {}",
                        body.len()
                    );
                }
                let at = (pos % PATTERN_LEN) as usize;
                let want = pattern
                    .data
                    .get(at..at + body.len())
                    .ok_or_else(|| anyhow::anyhow!("datagram at {pos} wraps the pattern"))?;
                if body != want {
                    let i = body.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                    bail!(
                        "byte {} differs: got {:#04x}, want {:#04x}",
                        pos + i as u64,
                        body[i],
                        want[i]
                    );
                }
                report.datagrams += 1;
                if pos >= cursor && pos < win_end {
                    got.insert(pos, len);
                }
                // Advance over the contiguous covered prefix.
                while let Some(l) = got.get(&cursor) {
                    cursor += l;
                }
                if cursor >= win_end {
                    break;
                }
            }
        }
        report.bytes += win_end - next;
        next = win_end;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}
