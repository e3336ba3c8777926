//! Committed offsets on disk: `offsets.log` in the gateway's state directory, an append-only
//! file of checksummed records, fsynced before a commit is acknowledged, reloaded at start and
//! rewritten (write, fsync, rename, fsync the directory) when it has grown well past what is
//! live. A SIGKILL at any moment loses at most the commit being written: a torn last record
//! fails its length or CRC check and is dropped (with a log line) at the next start.
//!
//! Record: `len: u32 BE` (payload bytes), `crc32c(payload): u32 BE`, payload. Payload: kind
//! `u8` (1 commit, 2 delete partition, 3 delete group), group (`u16` length + UTF-8), then for
//! kinds 1 and 2 topic (same encoding) and partition `i32`, then for kind 1 offset `i64`,
//! leader epoch `i32`, commit time ms `i64`, metadata (`i16` length, -1 for none, + UTF-8).
//! All integers big-endian.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::coordinator::Committed;

/// File name of the offsets log in the state directory.
pub const OFFSETS_FILE: &str = "offsets.log";
const LOCK_FILE: &str = "kxgw.lock";
const HEADER: usize = 8;
/// Largest payload a valid record has (names are at most 64 KiB each).
const MAX_PAYLOAD: usize = 3 * 65_536 + 64;

/// One change to the committed offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rec {
    /// An offset committed.
    Commit {
        /// Group id.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// What was committed.
        committed: Committed,
    },
    /// An offset deleted (OffsetDelete).
    DeletePartition {
        /// Group id.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// Every offset of a group deleted (retention of an empty group).
    DeleteGroup {
        /// Group id.
        group: String,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    let len = u16::try_from(s.len()).with_context(|| format!("name of {} bytes", s.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl Rec {
    /// The framed record.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut p = Vec::with_capacity(64);
        match self {
            Rec::Commit {
                group,
                topic,
                partition,
                committed: c,
            } => {
                p.push(1);
                put_str(&mut p, group)?;
                put_str(&mut p, topic)?;
                p.extend_from_slice(&partition.to_be_bytes());
                p.extend_from_slice(&c.offset.to_be_bytes());
                p.extend_from_slice(&c.leader_epoch.to_be_bytes());
                p.extend_from_slice(&c.commit_ms.to_be_bytes());
                match &c.metadata {
                    None => p.extend_from_slice(&(-1i16).to_be_bytes()),
                    Some(m) => {
                        let len = i16::try_from(m.len()).context("offset metadata too long")?;
                        p.extend_from_slice(&len.to_be_bytes());
                        p.extend_from_slice(m.as_bytes());
                    }
                }
            }
            Rec::DeletePartition {
                group,
                topic,
                partition,
            } => {
                p.push(2);
                put_str(&mut p, group)?;
                put_str(&mut p, topic)?;
                p.extend_from_slice(&partition.to_be_bytes());
            }
            Rec::DeleteGroup { group } => {
                p.push(3);
                put_str(&mut p, group)?;
            }
        }
        let mut out = Vec::with_capacity(HEADER + p.len());
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(&p).to_be_bytes());
        out.extend_from_slice(&p);
        Ok(out)
    }

    fn decode(p: &[u8]) -> Option<Rec> {
        let mut r = Reader { b: p, pos: 0 };
        let kind = r.take(1)?[0];
        let group = r.string()?;
        let rec = match kind {
            1 => {
                let topic = r.string()?;
                let partition = r.i32()?;
                let offset = r.i64()?;
                let leader_epoch = r.i32()?;
                let commit_ms = r.i64()?;
                let len = i16::from_be_bytes(r.take(2)?.try_into().ok()?);
                let metadata = if len < 0 {
                    None
                } else {
                    Some(String::from_utf8(r.take(len as usize)?.to_vec()).ok()?)
                };
                Rec::Commit {
                    group,
                    topic,
                    partition,
                    committed: Committed {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_ms,
                    },
                }
            }
            2 => Rec::DeletePartition {
                group,
                topic: r.string()?,
                partition: r.i32()?,
            },
            3 => Rec::DeleteGroup { group },
            _ => return None,
        };
        (r.pos == p.len()).then_some(rec)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn string(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// What reading a log found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The valid records, in order.
    pub records: Vec<Rec>,
    /// Bytes of valid records (where a rewrite or append continues).
    pub valid_len: usize,
    /// Why reading stopped before the end, if it did.
    pub problem: Option<String>,
}

/// Parses a log: every record up to the first one that is torn or fails its check.
pub fn parse(data: &[u8]) -> Loaded {
    let mut out = Loaded::default();
    let mut pos = 0;
    while pos < data.len() {
        let Some(h) = data.get(pos..pos + HEADER) else {
            out.problem = Some(format!("torn record header at byte {pos}"));
            break;
        };
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if len > MAX_PAYLOAD {
            out.problem = Some(format!("impossible record length {len} at byte {pos}"));
            break;
        }
        let Some(payload) = data.get(pos + HEADER..pos + HEADER + len) else {
            out.problem = Some(format!("torn record at byte {pos} ({len} bytes announced)"));
            break;
        };
        if crc32c::crc32c(payload) != crc {
            out.problem = Some(format!("record at byte {pos} fails its CRC"));
            break;
        }
        let Some(rec) = Rec::decode(payload) else {
            out.problem = Some(format!("record at byte {pos} does not decode"));
            break;
        };
        out.records.push(rec);
        pos += HEADER + len;
        out.valid_len = pos;
    }
    out
}

/// The offsets log of one state directory (held under an exclusive lock).
pub struct OffsetStore {
    dir: PathBuf,
    file: File,
    /// Records in the file (live or superseded).
    records: u64,
    _lock: nix::fcntl::Flock<File>,
}

impl OffsetStore {
    /// Opens (creating) `dir` and its offsets log, returning the store and the records read.
    /// A torn or corrupt tail is dropped with a log line (the file is rewritten without it;
    /// a corrupt file is first kept aside as `offsets.log.corrupt`).
    pub fn open(dir: &Path) -> Result<(OffsetStore, Vec<Rec>)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .with_context(|| {
                format!(
                    "state directory {} is in use by another kxgw (lock {})",
                    dir.display(),
                    lock_path.display()
                )
            })?;
        let path = dir.join(OFFSETS_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let loaded = parse(&data);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {} for appending", path.display()))?;
        let mut store = OffsetStore {
            dir: dir.to_path_buf(),
            file,
            records: loaded.records.len() as u64,
            _lock: lock,
        };
        if let Some(problem) = &loaded.problem {
            let tail = data.len() - loaded.valid_len;
            log::warn!(
                "{}: {problem}; ignoring the last {tail} bytes (kept {} records)",
                path.display(),
                loaded.records.len()
            );
            let aside = dir.join(format!("{OFFSETS_FILE}.corrupt"));
            std::fs::write(&aside, &data)
                .with_context(|| format!("keeping the damaged log as {}", aside.display()))?;
            store.rewrite(&loaded.records)?;
        }
        Ok((store, loaded.records))
    }

    /// Appends records and waits until they are on disk.
    pub fn append(&mut self, recs: &[Rec]) -> Result<()> {
        let mut buf = Vec::new();
        for r in recs {
            buf.extend_from_slice(&r.encode()?);
        }
        self.file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("writing {}", self.dir.join(OFFSETS_FILE).display()))?;
        self.records += recs.len() as u64;
        Ok(())
    }

    /// Whether the file holds many more records than the `live` ones.
    pub fn wants_compaction(&self, live: u64) -> bool {
        self.records > 1024 && self.records > 4 * live
    }

    /// Replaces the log with exactly `live` (write a new file, fsync, rename, fsync dir).
    pub fn rewrite(&mut self, live: &[Rec]) -> Result<()> {
        let path = self.dir.join(OFFSETS_FILE);
        let tmp = self.dir.join(format!("{OFFSETS_FILE}.tmp"));
        let mut buf = Vec::new();
        for r in live {
            buf.extend_from_slice(&r.encode()?);
        }
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().with_context(|| format!("rewriting {}", path.display()))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("reopening {}", path.display()))?;
        self.records = live.len() as u64;
        Ok(())
    }
}

/// Refuses a state directory inside the log directory (which kxgw never writes).
pub fn check_state_dir(state: &Path, log_dir: &Path) -> Result<()> {
    let abs = |p: &Path| -> PathBuf { std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()) };
    let (s, l) = (abs(state), abs(log_dir));
    let l = l.canonicalize().unwrap_or(l);
    // The state dir may not exist yet: canonicalize its nearest existing ancestor.
    let mut probe = s.clone();
    let mut rest = Vec::new();
    while !probe.exists() {
        match (probe.file_name(), probe.parent()) {
            (Some(n), Some(p)) => {
                rest.push(n.to_os_string());
                probe = p.to_path_buf();
            }
            _ => break,
        }
    }
    let mut s = probe.canonicalize().unwrap_or(probe);
    for n in rest.into_iter().rev() {
        s.push(n);
    }
    if s.starts_with(&l) {
        bail!(
            "state directory {} is inside the log directory {} (which kxgw never writes): \
             give --state-dir elsewhere",
            s.display(),
            l.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(group: &str, p: i32, offset: i64) -> Rec {
        Rec::Commit {
            group: group.into(),
            topic: "t".into(),
            partition: p,
            committed: Committed {
                offset,
                leader_epoch: -1,
                metadata: Some("m".into()),
                commit_ms: 7,
            },
        }
    }

    #[test]
    fn records_round_trip_and_reload() {
        let d = tempfile::tempdir().unwrap();
        let recs = vec![
            commit("g", 0, 10),
            Rec::DeletePartition {
                group: "g".into(),
                topic: "t".into(),
                partition: 1,
            },
            Rec::DeleteGroup { group: "h".into() },
        ];
        {
            let (mut s, got) = OffsetStore::open(d.path()).unwrap();
            assert!(got.is_empty());
            s.append(&recs).unwrap();
        }
        let (_s, got) = OffsetStore::open(d.path()).unwrap();
        assert_eq!(got, recs);
    }

    #[test]
    fn a_second_store_on_the_same_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _a = OffsetStore::open(d.path()).unwrap();
        let e = OffsetStore::open(d.path()).err().unwrap();
        assert!(format!("{e:#}").contains("in use"), "{e:#}");
    }

    #[test]
    fn every_torn_tail_keeps_the_earlier_records() {
        let d = tempfile::tempdir().unwrap();
        let a = commit("g", 0, 1).encode().unwrap();
        let b = commit("g", 1, 2).encode().unwrap();
        let whole = [a.clone(), b.clone()].concat();
        for cut in a.len()..whole.len() {
            std::fs::write(d.path().join(OFFSETS_FILE), &whole[..cut]).unwrap();
            let (_s, got) = OffsetStore::open(d.path()).unwrap();
            assert_eq!(got, vec![commit("g", 0, 1)], "cut at {cut}");
            // The torn bytes are gone from the log, kept aside only when there were any.
            let now = std::fs::read(d.path().join(OFFSETS_FILE)).unwrap();
            assert_eq!(now, a, "cut at {cut}");
        }
    }

    #[test]
    fn a_corrupt_record_stops_the_load_and_is_kept_aside() {
        let d = tempfile::tempdir().unwrap();
        let a = commit("g", 0, 1).encode().unwrap();
        let mut b = commit("g", 1, 2).encode().unwrap();
        let c = commit("g", 2, 3).encode().unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x40;
        let data = [a.clone(), b, c].concat();
        std::fs::write(d.path().join(OFFSETS_FILE), &data).unwrap();
        let (mut s, got) = OffsetStore::open(d.path()).unwrap();
        assert_eq!(got, vec![commit("g", 0, 1)]);
        assert_eq!(
            std::fs::read(d.path().join("offsets.log.corrupt")).unwrap(),
            data
        );
        // Appends continue after the kept records.
        s.append(&[commit("g", 3, 4)]).unwrap();
        drop(s);
        let (_s, got) = OffsetStore::open(d.path()).unwrap();
        assert_eq!(got, vec![commit("g", 0, 1), commit("g", 3, 4)]);
    }

    #[test]
    fn garbage_never_panics() {
        use proptest::prelude::*;
        proptest!(|(data in proptest::collection::vec(any::<u8>(), 0..300))| {
            let l = parse(&data);
            prop_assert!(l.valid_len <= data.len());
        });
    }

    #[test]
    fn rewrite_compacts() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _) = OffsetStore::open(d.path()).unwrap();
        for i in 0..2000 {
            s.append(&[commit("g", 0, i)]).unwrap();
        }
        assert!(s.wants_compaction(1));
        s.rewrite(&[commit("g", 0, 1999)]).unwrap();
        assert!(!s.wants_compaction(1));
        drop(s);
        let (_s, got) = OffsetStore::open(d.path()).unwrap();
        assert_eq!(got, vec![commit("g", 0, 1999)]);
    }

    #[test]
    fn state_dir_inside_log_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_state_dir(&d.path().join("state"), d.path()).is_err());
        assert!(check_state_dir(&d.path().join("a/b"), d.path()).is_err());
        let other = tempfile::tempdir().unwrap();
        assert!(check_state_dir(other.path(), d.path()).is_ok());
    }
}
