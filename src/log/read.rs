//! Reads of segment files that survive a broker truncating them in place.
//!
//! A broker truncates segment files in place (`FileRecords.truncateTo`: leader-epoch
//! divergence, log recovery). Touching a mapped page past the new end of file raises SIGBUS,
//! which kills the process, so nothing in user space reads a segment through its mapping:
//! batch headers, validation scans and copied payloads are read with `pread(2)` (as Kafka's
//! own `FileRecords` reads them), where a byte past the end of file is a short read. The
//! mapping is only handed to the kernel (iovecs, `pwrite` into the AF_XDP arena), which
//! answers a page past the end of file with EFAULT, not a signal.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::batch::{BatchHeader, BATCH_HEADER_LEN, LAST_OFFSET_DELTA_OFFSET, LOG_OVERHEAD};
use super::segment::{self, ScanEnd, Scanned};

/// Bytes read per `pread` by a validation scan.
const SCAN_CHUNK: usize = 4 << 20;

/// Bytes read per `pread` when walking batch headers of small batches: one read covers the
/// headers of many of them.
const HEADER_WINDOW: usize = 8 << 10;

/// Batches at least this far apart are walked with one header-sized `pread` each, as Kafka's
/// `FileLogInputStream` does: a window would copy mostly record bytes (half of a 16 KiB batch
/// for an 8 KiB window), which the sendfile and zero-copy paths never otherwise touch.
const LARGE_STRIDE: u64 = (HEADER_WINDOW / 4) as u64;

/// Reads exactly `buf.len()` bytes at `pos`; a file that ends before is `UnexpectedEof`.
pub fn read_exact_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<()> {
    file.read_exact_at(buf, pos)
}

/// Reads up to `buf.len()` bytes at `pos`, fewer only where the file ends. Returns the count.
pub fn read_up_to(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// [`segment::scan`] over bytes `from..end` of `file`, read in chunks with `pread`. A file
/// that is shorter than `end` (truncated under the scan) ends the scan as an incomplete tail
/// at its end; an I/O error ends it as corrupt at the position that failed.
pub fn scan_file(
    file: &File,
    from: u64,
    end: u64,
    mut next_offset: i64,
    mut each: impl FnMut(usize, &BatchHeader),
) -> Scanned {
    let mut pos = from;
    let mut buf = Vec::new();
    let mut need = 0usize;
    let finish = |pos: u64, next_offset, end| Scanned {
        valid_end: pos as usize,
        next_offset,
        end,
    };
    loop {
        if pos >= end {
            return finish(pos, next_offset, ScanEnd::Clean);
        }
        let want = (end - pos).min(SCAN_CHUNK.max(need) as u64) as usize;
        buf.resize(want, 0);
        let n = match read_up_to(file, &mut buf, pos) {
            Ok(n) => n,
            Err(e) => {
                let reason = format!("read failed: {e}");
                return finish(
                    pos,
                    next_offset,
                    ScanEnd::Corrupt {
                        position: pos as usize,
                        reason,
                    },
                );
            }
        };
        let at_end = pos + n as u64 >= end || n < want;
        let s = segment::scan(&buf[..n], 0, next_offset, |p, h| each(pos as usize + p, h));
        let start = pos;
        pos += s.valid_end as u64;
        next_offset = s.next_offset;
        let shift = |p: usize| start as usize + p;
        match s.end {
            ScanEnd::Clean if at_end => {
                // Bytes of the file up to its (possibly new, shorter) end are all batches.
                let e = if n < want {
                    ScanEnd::Incomplete {
                        position: pos as usize,
                        needed: LOG_OVERHEAD,
                    }
                } else {
                    ScanEnd::Clean
                };
                return finish(pos, next_offset, e);
            }
            ScanEnd::Clean => need = 0,
            ScanEnd::Incomplete { position, needed } if !at_end => {
                // The chunk cut a batch: read again from its start, all of it at once.
                need = needed.max(BATCH_HEADER_LEN);
                debug_assert_eq!(shift(position), pos as usize);
            }
            ScanEnd::ZeroTail { position } if !at_end && position + LOG_OVERHEAD > n => {
                // The zeros may be the first bytes of a batch's base offset cut by the chunk.
                need = LOG_OVERHEAD;
            }
            ScanEnd::Incomplete { position, needed } => {
                let e = ScanEnd::Incomplete {
                    position: shift(position),
                    needed,
                };
                return finish(pos, next_offset, e);
            }
            ScanEnd::ZeroTail { position } => {
                return finish(
                    pos,
                    next_offset,
                    ScanEnd::ZeroTail {
                        position: shift(position),
                    },
                )
            }
            ScanEnd::Corrupt { position, reason } => {
                let e = ScanEnd::Corrupt {
                    position: shift(position),
                    reason,
                };
                return finish(pos, next_offset, e);
            }
        }
    }
}

/// What a header walk needs of a batch: its offsets and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSpan {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Whole batch, log overhead included.
    pub size: usize,
}

/// Walks batch headers of already validated bytes with windowed `pread`s.
pub struct HeaderReader<'a> {
    file: &'a File,
    /// End of the validated bytes: no read goes past it.
    end: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    at: u64,
    /// Position of the previous lookup: the distance to the next one is the batch size.
    last: Option<u64>,
    /// A batch whose header the caller already has (the newest one its validation scan
    /// parsed): looked up without a read, as tailing lookups mostly are.
    known: Option<(u64, BatchHeader)>,
}

/// Bytes of a batch header the walk reads: base offset, length, ..., last offset delta.
const SPAN_LEN: usize = LAST_OFFSET_DELTA_OFFSET + 4;

impl<'a> HeaderReader<'a> {
    pub fn new(file: &'a File, end: u64) -> Self {
        HeaderReader {
            file,
            end,
            buf: Vec::new(),
            at: 0,
            last: None,
            known: None,
        }
    }

    /// Answers lookups of the batch at `known.0` with its header `known.1` (validated bytes
    /// below `end`) instead of reading it.
    pub fn knowing(mut self, known: Option<(u64, BatchHeader)>) -> Self {
        self.known = known.filter(|(pos, h)| pos + h.total_len() as u64 <= self.end);
        self
    }

    fn known_at(&mut self, pos: u64) -> Option<BatchHeader> {
        let (at, h) = self.known.filter(|(at, _)| *at == pos)?;
        self.last = Some(at);
        Some(h)
    }

    /// The batch at `pos` (a batch start below `end`). An error means the file no longer holds
    /// it (truncated) or could not be read.
    pub fn span(&mut self, pos: u64) -> io::Result<BatchSpan> {
        if let Some(h) = self.known_at(pos) {
            return Ok(BatchSpan {
                base_offset: h.base_offset,
                last_offset: h.last_offset(),
                size: h.total_len(),
            });
        }
        let b = self.window(pos, SPAN_LEN)?;
        let base_offset = i64::from_be_bytes(b[0..8].try_into().unwrap_or_default());
        let len = i32::from_be_bytes(b[8..12].try_into().unwrap_or_default());
        let delta = i32::from_be_bytes(
            b[LAST_OFFSET_DELTA_OFFSET..SPAN_LEN]
                .try_into()
                .unwrap_or_default(),
        );
        if len < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("batch at byte {pos} changed since it was validated"),
            ));
        }
        Ok(BatchSpan {
            base_offset,
            last_offset: base_offset + i64::from(delta),
            size: LOG_OVERHEAD + len as usize,
        })
    }

    /// The full batch header at `pos`.
    pub fn header(&mut self, pos: u64) -> io::Result<BatchHeader> {
        if let Some(h) = self.known_at(pos) {
            return Ok(h);
        }
        let b = self.window(pos, BATCH_HEADER_LEN)?;
        BatchHeader::parse(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// `len` bytes at `pos`, from the window or a new read.
    fn window(&mut self, pos: u64, len: usize) -> io::Result<&[u8]> {
        let have = pos >= self.at && pos + len as u64 <= self.at + self.buf.len() as u64;
        // A walk starts with a header-sized read (most lookups read one or two headers, and
        // batches are often larger than a window); only short strides call for windows.
        let large = !matches!(self.last, Some(last) if pos < last + LARGE_STRIDE);
        self.last = Some(pos);
        if !have {
            if pos + len as u64 > self.end {
                return Err(eof(pos));
            }
            let window = if large {
                len.max(BATCH_HEADER_LEN)
            } else {
                HEADER_WINDOW
            };
            let want = (self.end - pos).min(window as u64) as usize;
            self.buf.resize(want, 0);
            let n = read_up_to(self.file, &mut self.buf, pos)?;
            self.buf.truncate(n);
            self.at = pos;
            if n < len {
                return Err(eof(pos));
            }
        }
        let i = (pos - self.at) as usize;
        Ok(&self.buf[i..i + len])
    }
}

fn eof(pos: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("segment file ends before the batch at byte {pos} (truncated under the reader)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch;
    use crate::log::writer::BatchBuilder;
    use std::io::Write;

    fn build(base: i64, n: usize, value_len: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.begin(base);
        let v = vec![b'v'; value_len];
        for i in 0..n {
            b.push_parts(1000 + i as i64, None, Some(&v), &[]);
        }
        b.finish().to_vec()
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn log(n: usize, value_len: usize) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(out.len());
            out.extend_from_slice(&build(i as i64 * 3, 3, value_len));
        }
        (out, starts)
    }

    #[test]
    fn chunked_scan_equals_the_in_memory_scan() {
        let (bytes, starts) = log(40, 70_000);
        let f = file_with(&bytes);
        let mut seen = Vec::new();
        let s = scan_file(&f, 0, bytes.len() as u64, 0, |p, _| seen.push(p));
        let m = segment::scan(&bytes, 0, 0, |_, _| {});
        assert_eq!(
            (s.valid_end, s.next_offset, &s.end),
            (m.valid_end, m.next_offset, &m.end)
        );
        assert_eq!(seen, starts);
        assert_eq!(s.end, ScanEnd::Clean);
    }

    #[test]
    fn a_file_shorter_than_the_scan_end_is_an_incomplete_tail() {
        let (bytes, starts) = log(10, 1000);
        let cut = starts[6] + 100;
        let f = file_with(&bytes[..cut]);
        let s = scan_file(&f, 0, bytes.len() as u64, 0, |_, _| {});
        assert_eq!(s.valid_end, starts[6]);
        assert_eq!(s.next_offset, 18);
        assert!(matches!(s.end, ScanEnd::Incomplete { position, .. } if position == starts[6]));
    }

    #[test]
    fn header_walk_of_large_batches_reads_only_their_headers() {
        // 3 records of 4000 B: batches about 12 KiB apart.
        let (bytes, starts) = log(20, 4000);
        let f = file_with(&bytes);
        let mut r = HeaderReader::new(&f, bytes.len() as u64);
        for (i, &p) in starts.iter().enumerate() {
            let s = r.span(p as u64).unwrap();
            assert_eq!(s.base_offset, i as i64 * 3);
            assert_eq!(r.header(p as u64).unwrap().base_offset, i as i64 * 3);
            if i > 0 {
                assert_eq!(
                    r.buf.len(),
                    BATCH_HEADER_LEN,
                    "batch {i}: read more than its header"
                );
            }
        }
    }

    #[test]
    fn a_known_header_answers_its_position_without_a_read() {
        let (bytes, starts) = log(4, 1000);
        let f = file_with(&bytes);
        let end = bytes.len() as u64;
        let last = starts[3] as u64;
        let h = HeaderReader::new(&f, end).header(last).unwrap();
        let mut r = HeaderReader::new(&f, end).knowing(Some((last, h)));
        assert_eq!(r.header(last).unwrap(), h);
        let s = r.span(last).unwrap();
        assert_eq!(
            (s.base_offset, s.last_offset, s.size),
            (9, 11, h.total_len())
        );
        assert!(r.buf.is_empty(), "the known batch was read");
        // Any other position is read from the file.
        assert_eq!(r.span(starts[1] as u64).unwrap().base_offset, 3);
        assert!(!r.buf.is_empty());
        // A known batch past the reader's end is not taken (the end bounds every answer).
        let mut short = HeaderReader::new(&f, last + 10).knowing(Some((last, h)));
        assert!(short.header(last).is_err());
    }

    #[test]
    fn header_walk_reads_spans_and_stops_at_a_truncation() {
        let (bytes, starts) = log(50, 300);
        let f = file_with(&bytes);
        let mut r = HeaderReader::new(&f, bytes.len() as u64);
        for (i, &p) in starts.iter().enumerate() {
            let s = r.span(p as u64).unwrap();
            assert_eq!(s.base_offset, i as i64 * 3);
            assert_eq!(s.last_offset, i as i64 * 3 + 2);
            let h = batch::verify(&bytes[p..]).unwrap();
            assert_eq!(s.size, h.total_len());
            assert_eq!(r.header(p as u64).unwrap().base_offset, h.base_offset);
        }
        f.set_len(starts[20] as u64 + 5).unwrap();
        let mut r = HeaderReader::new(&f, bytes.len() as u64);
        assert!(r.span(starts[19] as u64).is_ok());
        let e = r.span(starts[20] as u64).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
