//! Offset checkpoint files of a broker's log dir (`replication-offset-checkpoint`,
//! `log-start-offset-checkpoint`): line "0" (version), line N, then N lines
//! "topic partition offset".

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::error::LogError;
use super::TopicPartition;

pub const REPLICATION_OFFSET_CHECKPOINT: &str = "replication-offset-checkpoint";
pub const LOG_START_OFFSET_CHECKPOINT: &str = "log-start-offset-checkpoint";

pub type Checkpoint = BTreeMap<TopicPartition, i64>;

/// Reads a checkpoint file; `Ok(None)` when it does not exist.
pub fn read(path: &Path) -> Result<Option<Checkpoint>, LogError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(path, e)),
    };
    parse(&text)
        .map(Some)
        .map_err(|(pos, reason)| LogError::corrupt(path, pos as u64, reason))
}

/// The entry lines of a Kafka checkpoint file (a version line `0`, an entry count, then that
/// many entries), each with its byte position: the frame every checkpoint format kxgw reads
/// shares (`replication-offset-checkpoint`, `leader-epoch-checkpoint`, ...). Errors carry the
/// byte position of the offending line.
pub(crate) fn entry_lines(text: &str) -> Result<Vec<(usize, &str)>, (usize, String)> {
    let mut lines = Vec::new();
    let mut pos = 0;
    for l in text.split_inclusive('\n') {
        lines.push((pos, l.trim_end_matches(['\n', '\r'])));
        pos += l.len();
    }
    let mut it = lines.into_iter();
    let (p, version) = it.next().ok_or((0, "empty file".to_string()))?;
    if version.trim() != "0" {
        return Err((p, format!("unsupported version {version:?}")));
    }
    let (p, count) = it.next().ok_or((pos, "missing entry count".to_string()))?;
    let count: usize = count
        .trim()
        .parse()
        .map_err(|_| (p, format!("bad entry count {count:?}")))?;
    let mut entries = Vec::new();
    for i in 0..count {
        entries.push(
            it.next()
                .ok_or((pos, format!("{count} entries announced, {i} present")))?,
        );
    }
    Ok(entries)
}

/// Parses checkpoint text; errors carry the byte position of the offending line.
pub fn parse(text: &str) -> Result<Checkpoint, (usize, String)> {
    let mut out = Checkpoint::new();
    for (p, line) in entry_lines(text)? {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f.as_slice() {
            [t, part, off] => part
                .parse::<i32>()
                .ok()
                .zip(off.parse::<i64>().ok())
                .map(|po| (t, po)),
            _ => None,
        };
        let (topic, (partition, offset)) =
            parsed.ok_or_else(|| (p, format!("bad entry {line:?}")))?;
        out.insert(
            TopicPartition {
                topic: topic.to_string(),
                partition,
            },
            offset,
        );
    }
    Ok(out)
}

pub fn format(entries: &Checkpoint) -> String {
    let mut s = format!("0\n{}\n", entries.len());
    for (tp, off) in entries {
        s.push_str(&format!("{} {} {}\n", tp.topic, tp.partition, off));
    }
    s
}

/// Writes a checkpoint the way a broker does: to `<file>.tmp`, fsync, rename over the file,
/// so readers see the old or the new content, never a partial one.
pub fn write(path: &Path, entries: &Checkpoint) -> Result<(), LogError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format(entries).as_bytes())?;
        f.sync_all()
    })();
    res.map_err(|e| LogError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LogError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut c = Checkpoint::new();
        c.insert(TopicPartition::new("t", 0), 42);
        c.insert(TopicPartition::new("other.topic_x", 11), 0);
        let text = format(&c);
        assert!(text.starts_with("0\n2\n"));
        assert_eq!(parse(&text).unwrap(), c);
    }

    #[test]
    fn errors_name_position() {
        assert_eq!(parse("1\n0\n").unwrap_err().0, 0);
        assert_eq!(parse("0\n2\nt 0 5\n").unwrap_err().0, 10);
        let e = parse("0\n2\nt 0 5\nt x 7\n").unwrap_err();
        assert_eq!(e.0, 10);
        assert!(parse("0\n0\n").unwrap().is_empty());
    }
}
