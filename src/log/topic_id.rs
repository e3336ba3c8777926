//! Topic ids: `<topic>-<partition>/partition.metadata` as a broker writes it
//! (`version: 0` / `topic_id: <id>`, the id in Kafka's `Uuid.toString()` form: URL-safe
//! base64 of the 16 bytes, without padding), else an id derived from the topic name.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

use super::error::LogError;

pub const PARTITION_METADATA: &str = "partition.metadata";

/// Kafka's text form of a topic id.
pub fn to_kafka_string(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

/// Parses Kafka's text form of a topic id.
pub fn from_kafka_string(s: &str) -> Result<Uuid, String> {
    let b = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| format!("topic id {s:?} is not URL-safe base64: {e}"))?;
    let b: [u8; 16] = b
        .try_into()
        .map_err(|b: Vec<u8>| format!("topic id {s:?} has {} bytes, not 16", b.len()))?;
    let id = Uuid::from_bytes(b);
    if id.is_nil() {
        return Err("topic id is the nil id".into());
    }
    Ok(id)
}

/// Parses `partition.metadata` text. Like the broker: fields split on ':' and whitespace, the
/// version must be 0.
pub fn parse(text: &str) -> Result<Uuid, String> {
    let mut version = None;
    let mut id = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: {line:?} is not `key: value`", i + 1))?;
        match k.trim() {
            "version" => version = Some(v.trim().to_string()),
            "topic_id" => id = Some(from_kafka_string(v.trim())?),
            other => return Err(format!("line {}: unknown field {other:?}", i + 1)),
        }
    }
    match version.as_deref() {
        Some("0") => {}
        Some(v) => return Err(format!("unsupported version {v:?}")),
        None => return Err("no version line".into()),
    }
    id.ok_or_else(|| "no topic_id line".into())
}

pub fn format(id: Uuid) -> String {
    format!("version: 0\ntopic_id: {}\n", to_kafka_string(id))
}

/// Reads `<partition dir>/partition.metadata`; `Ok(None)` when there is none.
pub fn read(partition_dir: &Path) -> Result<Option<Uuid>, LogError> {
    let path = partition_dir.join(PARTITION_METADATA);
    match std::fs::read_to_string(&path) {
        Ok(t) => parse(&t)
            .map(Some)
            .map_err(|e| LogError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io(&path, e)),
    }
}

/// Writes `partition.metadata` as a broker does (temporary file, then rename).
pub fn write(partition_dir: &Path, id: Uuid) -> Result<(), LogError> {
    let path = partition_dir.join(PARTITION_METADATA);
    let tmp = partition_dir.join(format!("{PARTITION_METADATA}.tmp"));
    std::fs::write(&tmp, format(id)).map_err(|e| LogError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))
}

/// A stable topic id derived from the name, for topics without `partition.metadata`: four
/// CRC32C lanes over salted copies of the name, with the RFC 9562 version-8 bits set, so it
/// is never the nil id nor Kafka's reserved metadata-topic id.
pub fn derived(topic: &str) -> Uuid {
    let mut bytes = [0u8; 16];
    for (lane, out) in bytes.chunks_mut(4).enumerate() {
        let seed = crc32c::crc32c(format!("kxgw-topic-id/{lane}/").as_bytes());
        let h = crc32c::crc32c_append(seed, topic.as_bytes());
        out.copy_from_slice(&h.to_be_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// One partition's `partition.metadata`: its id, none, or why it is unreadable.
pub type IdFile = (i32, Result<Option<Uuid>, String>);

/// What the partitions of one topic say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicIdCheck {
    Id(Uuid),
    /// Partitions disagree (or a file is unreadable): the topic is not served.
    Refused(String),
}

/// Decides a topic's id from its partitions' `partition.metadata` (partition, result).
/// All partitions that have one must agree; a damaged file refuses the topic too (serving
/// it under a guessed id could answer for the wrong topic). No file at all: the derived id.
pub fn decide(topic: &str, per_partition: &[IdFile]) -> TopicIdCheck {
    let mut found: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
    for (p, r) in per_partition {
        match r {
            Ok(Some(id)) => found.entry(*id).or_default().push(*p),
            Ok(None) => {}
            Err(e) => return TopicIdCheck::Refused(format!("partition {p}: {e}")),
        }
    }
    match found.len() {
        0 => TopicIdCheck::Id(derived(topic)),
        1 => TopicIdCheck::Id(*found.keys().next().unwrap_or(&derived(topic))),
        _ => TopicIdCheck::Refused(format!(
            "partitions disagree on the topic id: {}",
            found
                .iter()
                .map(|(id, ps)| format!("{} in partitions {ps:?}", to_kafka_string(*id)))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_text_form_round_trips() {
        let id = Uuid::from_bytes([
            0xfb, 0x2a, 0x10, 0x3c, 0x55, 0x01, 0x4e, 0x9f, 0xa1, 0x00, 0x7f, 0xff, 0x3e, 0x21,
            0x90, 0x08,
        ]);
        let s = to_kafka_string(id);
        assert_eq!(s.len(), 22);
        assert!(!s.contains('=') && !s.contains('+') && !s.contains('/'));
        assert_eq!(from_kafka_string(&s).unwrap(), id);
        let text = format(id);
        assert_eq!(text, format!("version: 0\ntopic_id: {s}\n"));
        assert_eq!(parse(&text).unwrap(), id);
        // As the broker writes it: no trailing newline.
        assert_eq!(parse(text.trim_end()).unwrap(), id);
    }

    #[test]
    fn malformed_files_are_refused() {
        let id = to_kafka_string(derived("t"));
        for bad in [
            String::new(),
            format!("version: 1\ntopic_id: {id}\n"),
            "version: 0\n".to_string(),
            "version: 0\ntopic_id: AAAAAAAAAAAAAAAAAAAAAA\n".to_string(),
            "version: 0\ntopic_id: not*base64\n".to_string(),
            "version: 0\ntopic_id: YWJj\n".to_string(),
            format!("version 0\ntopic_id: {id}\n"),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn partitions_must_agree() {
        let a = derived("a");
        let b = derived("b");
        assert_eq!(
            decide("t", &[(0, Ok(None))]),
            TopicIdCheck::Id(derived("t"))
        );
        assert_eq!(
            decide("t", &[(0, Ok(Some(a))), (1, Ok(None)), (2, Ok(Some(a)))]),
            TopicIdCheck::Id(a)
        );
        assert!(matches!(
            decide("t", &[(0, Ok(Some(a))), (1, Ok(Some(b)))]),
            TopicIdCheck::Refused(_)
        ));
        assert!(matches!(
            decide("t", &[(0, Ok(Some(a))), (1, Err("bad".into()))]),
            TopicIdCheck::Refused(_)
        ));
    }

    #[test]
    fn derived_ids_are_stable_distinct_and_valid() {
        let a = derived("orders");
        assert_eq!(a, derived("orders"));
        assert_ne!(a, derived("orders2"));
        assert_ne!(a, Uuid::nil());
        assert_eq!(a.get_version_num(), 8);
    }
}
