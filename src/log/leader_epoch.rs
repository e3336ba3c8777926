//! `<topic>-<partition>/leader-epoch-checkpoint` (Kafka's LeaderEpochCheckpointFile): line
//! "0" (version), line N, then N lines "epoch startOffset", epochs increasing. And the
//! broker's OffsetForLeaderEpoch rule over it.

use std::path::Path;

use super::error::LogError;

pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// Epoch -> first offset written in it, sorted by epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochs(pub Vec<(i32, i64)>);

/// Kafka's UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET.
pub const UNDEFINED: (i32, i64) = (-1, -1);

impl LeaderEpochs {
    /// Parses the checkpoint text; errors give the byte position of the bad line.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut out: Vec<(i32, i64)> = Vec::new();
        for (p, line) in super::checkpoint::entry_lines(text)? {
            let f: Vec<&str> = line.split_whitespace().collect();
            let e = match f.as_slice() {
                [e, o] => e.parse::<i32>().ok().zip(o.parse::<i64>().ok()),
                _ => None,
            };
            let (epoch, start) = e.ok_or_else(|| (p, format!("bad entry {line:?}")))?;
            if epoch < 0 || start < 0 {
                return Err((p, format!("negative epoch or offset in {line:?}")));
            }
            if let Some(&(pe, po)) = out.last() {
                if epoch <= pe || start < po {
                    return Err((
                        p,
                        format!("entry {line:?} does not follow epoch {pe} at offset {po}"),
                    ));
                }
            }
            out.push((epoch, start));
        }
        Ok(LeaderEpochs(out))
    }

    pub fn format(&self) -> String {
        let mut s = format!("0\n{}\n", self.0.len());
        for (e, o) in &self.0 {
            s.push_str(&format!("{e} {o}\n"));
        }
        s
    }

    /// Reads the checkpoint of a partition dir; `Ok(None)` when there is none.
    pub fn read(partition_dir: &Path) -> Result<Option<Self>, LogError> {
        let path = partition_dir.join(LEADER_EPOCH_CHECKPOINT);
        match std::fs::read_to_string(&path) {
            Ok(t) => Self::parse(&t)
                .map(Some)
                .map_err(|(at, why)| LogError::corrupt(&path, at as u64, why)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LogError::io(&path, e)),
        }
    }

    /// Writes the checkpoint (temporary file, then rename).
    pub fn write(&self, partition_dir: &Path) -> Result<(), LogError> {
        let path = partition_dir.join(LEADER_EPOCH_CHECKPOINT);
        let tmp = partition_dir.join(format!("{LEADER_EPOCH_CHECKPOINT}.tmp"));
        std::fs::write(&tmp, self.format()).map_err(|e| LogError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))
    }

    /// Records that `epoch` starts at `offset` (a no-op when it is not newer than the last).
    pub fn assign(&mut self, epoch: i32, offset: i64) {
        if self.0.last().is_none_or(|&(e, _)| epoch > e) {
            self.0.push((epoch, offset));
        }
    }

    /// The current (latest) epoch; -1 without entries.
    pub fn latest(&self) -> i32 {
        self.0.last().map_or(-1, |&(e, _)| e)
    }

    /// Entries that start after the log end are not in effect (the broker truncates them).
    pub fn bounded(&self, log_end: i64) -> LeaderEpochs {
        LeaderEpochs(
            self.0
                .iter()
                .copied()
                .filter(|&(_, o)| o <= log_end)
                .collect(),
        )
    }

    /// The broker's `endOffsetFor`: for the requested epoch, (the largest epoch <= it, the
    /// start offset of the first epoch above it); the latest epoch ends at the log end; an
    /// epoch above the latest, or -1, is UNDEFINED; one below the first gives the first's
    /// start offset.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        if requested < 0 || self.0.is_empty() {
            return UNDEFINED;
        }
        if requested == self.latest() {
            return (requested, log_end);
        }
        let Some(&(_, higher_start)) = self.0.iter().find(|&&(e, _)| e > requested) else {
            return UNDEFINED;
        };
        match self.0.iter().rev().find(|&&(e, _)| e <= requested) {
            Some(&(floor, _)) => (floor, higher_start),
            None => (requested, higher_start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let e = LeaderEpochs::parse("0\n3\n0 0\n2 150\n5 300\n").unwrap();
        assert_eq!(e.0, vec![(0, 0), (2, 150), (5, 300)]);
        assert_eq!(LeaderEpochs::parse(&e.format()).unwrap(), e);
        assert_eq!(e.latest(), 5);
        assert!(LeaderEpochs::parse("0\n0\n").unwrap().0.is_empty());
    }

    #[test]
    fn malformed_files_name_the_line() {
        assert_eq!(LeaderEpochs::parse("").unwrap_err().0, 0);
        assert_eq!(LeaderEpochs::parse("1\n0\n").unwrap_err().0, 0);
        assert_eq!(LeaderEpochs::parse("0\nx\n").unwrap_err().0, 2);
        assert_eq!(LeaderEpochs::parse("0\n2\n0 0\n").unwrap_err().0, 8);
        assert_eq!(LeaderEpochs::parse("0\n2\n0 0\n1 x\n").unwrap_err().0, 8);
        // Epochs must increase and offsets not go back.
        assert_eq!(LeaderEpochs::parse("0\n2\n3 10\n2 20\n").unwrap_err().0, 9);
        assert_eq!(LeaderEpochs::parse("0\n2\n1 10\n2 5\n").unwrap_err().0, 9);
        assert!(LeaderEpochs::parse("0\n1\n-1 0\n").is_err());
    }

    #[test]
    fn end_offset_for_follows_the_broker() {
        let e = LeaderEpochs(vec![(1, 0), (3, 100), (4, 250)]);
        let leo = 400;
        assert_eq!(e.end_offset_for(4, leo), (4, 400));
        assert_eq!(e.end_offset_for(3, leo), (3, 250));
        assert_eq!(e.end_offset_for(2, leo), (1, 100));
        assert_eq!(e.end_offset_for(1, leo), (1, 100));
        assert_eq!(e.end_offset_for(0, leo), (0, 0));
        assert_eq!(e.end_offset_for(5, leo), UNDEFINED);
        assert_eq!(e.end_offset_for(-1, leo), UNDEFINED);
        assert_eq!(LeaderEpochs::default().end_offset_for(0, leo), UNDEFINED);
        assert_eq!(e.bounded(200).0, vec![(1, 0), (3, 100)]);
    }
}
