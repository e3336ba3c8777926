//! Copy-mode TX reads payload bytes with `pread` (a segment truncated in place must never
//! be touched through its mapping: that is a SIGBUS), one read per window rather than one per
//! datagram. The datagrams of one fetch response are consecutive ranges of one segment, so a
//! window of what follows (`TxPayload::ahead`) serves the next few dozen of them.
//!
//! The window is dropped at the end of every TX round, so bytes are never older than one round
//! (equal (source, position) means equal bytes anyway, see [`crate::log::SourceId`]).

use crate::driver::TxPayload;

/// Most bytes read ahead at once: 45 datagrams at MTU 1500, and small enough to stay in cache
/// until they are copied into frames.
const WINDOW: usize = 64 * 1024;

/// One window of one source's bytes.
#[derive(Default)]
pub(crate) struct ReadAhead {
    source: usize,
    start: u64,
    buf: Vec<u8>,
    /// Reads that filled the window (for tests and stats).
    pub reads: u64,
}

impl ReadAhead {
    /// Forgets the window (end of a TX round).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Copies the payload's bytes `at..at + dst.len()` into `dst`, reading the window if it
    /// does not hold them; false if the source no longer holds them.
    pub fn read<P: TxPayload>(&mut self, p: &P, at: usize, dst: &mut [u8]) -> bool {
        let Some(file) = p.file() else {
            return p.read_at(at, dst);
        };
        let pos = p.position() + at as u64;
        let end = pos + dst.len() as u64;
        let source = p.source().id;
        let held =
            source == self.source && pos >= self.start && end <= self.start + self.buf.len() as u64;
        if !held {
            // Lengths only: `ahead()` is never dereferenced here.
            let want = p.ahead().len().saturating_sub(at).clamp(dst.len(), WINDOW);
            self.buf.resize(want, 0);
            self.reads += 1;
            let got = crate::log::read::read_up_to(file, &mut self.buf, pos).unwrap_or(0);
            self.buf.truncate(got);
            self.source = source;
            self.start = pos;
            if got < dst.len() {
                self.buf.clear();
                return false;
            }
        }
        let from = (pos - self.start) as usize;
        dst.copy_from_slice(&self.buf[from..from + dst.len()]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::SourceId;
    use std::io::Write;
    use std::sync::Arc;

    struct FilePayload {
        file: std::fs::File,
        source: SourceId,
        position: u64,
        len: usize,
        ahead: Vec<u8>,
    }

    impl TxPayload for FilePayload {
        fn bytes(&self) -> &[u8] {
            &self.ahead[..self.len]
        }
        fn ahead(&self) -> &[u8] {
            &self.ahead
        }
        fn source(&self) -> SourceId {
            self.source.clone()
        }
        fn file(&self) -> Option<&std::fs::File> {
            Some(&self.file)
        }
        fn position(&self) -> u64 {
            self.position
        }
    }

    fn file_of(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(bytes).expect("write");
        f
    }

    fn payload(
        file: &std::fs::File,
        source: &SourceId,
        position: u64,
        len: usize,
        rest: usize,
    ) -> FilePayload {
        FilePayload {
            file: file.try_clone().expect("clone"),
            source: source.clone(),
            position,
            len,
            ahead: vec![0; rest],
        }
    }

    #[test]
    fn consecutive_datagrams_share_one_read() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let file = file_of(&data);
        let src = SourceId::anonymous(7);
        let mut ra = ReadAhead::default();
        let mut pos = 1000u64;
        while pos < 1000 + 40 * 1400 {
            let p = payload(&file, &src, pos, 1400, 150_000);
            let mut dst = vec![0u8; 1400];
            assert!(ra.read(&p, 0, &mut dst));
            assert_eq!(dst, data[pos as usize..pos as usize + 1400]);
            pos += 1400;
        }
        assert_eq!(ra.reads, 1);
        // Past the window: one more read.
        let p = payload(&file, &src, 1000 + WINDOW as u64, 1400, 1400);
        let mut dst = vec![0u8; 1400];
        assert!(ra.read(&p, 0, &mut dst));
        assert_eq!(ra.reads, 2);
        assert_eq!(dst, data[1000 + WINDOW..1000 + WINDOW + 1400]);
    }

    #[test]
    fn another_source_or_a_cleared_window_reads_again() {
        let file = file_of(&[5u8; 10_000]);
        let (a, b) = (SourceId::anonymous(1), SourceId::anonymous(2));
        let mut ra = ReadAhead::default();
        let mut dst = [0u8; 100];
        assert!(ra.read(&payload(&file, &a, 0, 100, 5000), 0, &mut dst));
        assert!(ra.read(&payload(&file, &b, 100, 100, 5000), 0, &mut dst));
        assert_eq!(ra.reads, 2);
        ra.clear();
        assert!(ra.read(&payload(&file, &b, 100, 100, 5000), 0, &mut dst));
        assert_eq!(ra.reads, 3);
    }

    #[test]
    fn a_truncated_source_fails_and_keeps_nothing() {
        let file = file_of(&[9u8; 3000]);
        let src = SourceId::anonymous(3);
        let mut ra = ReadAhead::default();
        let mut dst = [0u8; 1400];
        // The window reads short (file ends at 3000) but covers the first datagram.
        assert!(ra.read(&payload(&file, &src, 1000, 1400, 8000), 0, &mut dst));
        file.set_len(2000).expect("truncate");
        ra.clear();
        assert!(!ra.read(&payload(&file, &src, 1000, 1400, 8000), 0, &mut dst));
        assert!(!ra.read(&payload(&file, &src, 1000, 1400, 8000), 0, &mut dst));
        assert_eq!(ra.reads, 3);
    }

    #[test]
    fn a_source_without_a_file_uses_its_own_read() {
        struct Mem(Vec<u8>);
        impl TxPayload for Mem {
            fn bytes(&self) -> &[u8] {
                &self.0
            }
            fn source(&self) -> SourceId {
                SourceId::new(Arc::new(()))
            }
            fn position(&self) -> u64 {
                0
            }
        }
        let mut ra = ReadAhead::default();
        let mut dst = [0u8; 3];
        assert!(ra.read(&Mem(vec![1, 2, 3, 4]), 1, &mut dst));
        assert_eq!(dst, [2, 3, 4]);
        assert_eq!(ra.reads, 0);
    }
}
