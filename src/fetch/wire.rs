//! Datagram formats of the kxgw fetch protocol, versions 1 to 3 (docs/fetch-protocol.md).
//! Version 2 adds the isolation level to FETCH and the last stable offset and the aborted
//! transactions to DATA; version 3 adds the fetch ticket to FETCH (DATA as in version 2);
//! RETRY and ERROR are the same in all. A gateway answers in the version of the request.
//!
//! Every datagram starts with the 4-byte common header `magic u16 = 0x4B58 ("KX") |
//! version u8 | type u8`; all integers are big-endian. Decoders never panic: any datagram
//! that does not parse is a [`WireError`] naming what was wrong.

use std::fmt;

/// "KX".
pub const MAGIC: u16 = 0x4B58;
/// What the client speaks without a fetch ticket (with one: [`VERSION_3`]).
pub const VERSION: u8 = 2;
/// Version 1: no isolation level (read_uncommitted), still answered by the gateway.
pub const VERSION_1: u8 = 1;
/// Version 2: FETCH carries the isolation level, DATA the LSO and aborted transactions.
pub const VERSION_2: u8 = 2;
/// Version 3: FETCH also carries a fetch ticket ([`super::ticket`]); DATA as version 2.
pub const VERSION_3: u8 = 3;
/// magic + version + type.
pub const COMMON_LEN: usize = 4;
/// Length of an address-validation token.
pub const TOKEN_LEN: usize = 20;
/// A FETCH without a valid token is answered only when it is at least this long (the
/// client pads it), so the RETRY it triggers is never larger than what was received.
pub const MIN_INITIAL_LEN: usize = 64;
/// Fixed part of a FETCH, before the token bytes.
pub const FETCH_FIXED_LEN: usize = COMMON_LEN + 4 + 4 + 4 + 4 + 1;
/// Fixed part of one partition entry of a FETCH: topic length, partition, offset,
/// max_bytes, range_start, range_end (the topic bytes come after the length).
pub const FETCH_PART_FIXED_LEN: usize = 2 + 4 + 8 + 4 + 4 + 4;
/// Largest topic name (Kafka's limit is 249 characters).
pub const MAX_TOPIC_LEN: usize = 249;
/// RETRY: common + request_id + token_len + token.
pub const RETRY_LEN: usize = COMMON_LEN + 4 + 1 + TOKEN_LEN;
/// DATA header of version 1, followed by the payload bytes.
pub const DATA_HEADER_LEN: usize = 92;
/// DATA header of version 2 without aborted transactions: the version 1 fields, then
/// last_stable_offset i64 and aborted_count u16.
pub const DATA_HEADER_V2_LEN: usize = DATA_HEADER_LEN + 8 + 2;
/// One aborted transaction in a version 2 DATA header: producer id i64, first offset i64.
pub const ABORTED_ENTRY_LEN: usize = 16;

/// Length of a DATA header of `version` carrying `aborted` transactions.
pub fn data_header_len(version: u8, aborted: usize) -> usize {
    if version == VERSION_1 {
        DATA_HEADER_LEN
    } else {
        DATA_HEADER_V2_LEN + aborted * ABORTED_ENTRY_LEN
    }
}

/// Whether this code speaks `version`.
pub fn supported(version: u8) -> bool {
    (VERSION_1..=VERSION_3).contains(&version)
}

/// Kafka's isolation levels (FETCH version 2; version 1 is always read_uncommitted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum IsolationLevel {
    #[default]
    ReadUncommitted = 0,
    /// Nothing at or past the last stable offset; DATA names the aborted transactions.
    ReadCommitted = 1,
}

/// Largest ticket a version 3 FETCH may carry (and [`super::ticket`] issues): keeps a FETCH
/// carrying one (plus its partitions) within a 1500-byte MTU.
pub const MAX_TICKET_LEN: usize = 512;

impl IsolationLevel {
    pub fn from_u8(v: u8) -> Option<IsolationLevel> {
        match v {
            0 => Some(IsolationLevel::ReadUncommitted),
            1 => Some(IsolationLevel::ReadCommitted),
            _ => None,
        }
    }
}
/// ERROR datagram.
pub const ERROR_LEN: usize = COMMON_LEN + 4 + 2 + 2 + 4 + 8 + 8 + 8;

/// Offset sentinels a FETCH may carry instead of an offset, as in Kafka's ListOffsets.
pub const OFFSET_EARLIEST: i64 = -2;
pub const OFFSET_LATEST: i64 = -1;

/// Datagram types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    Fetch = 1,
    Retry = 2,
    Data = 3,
    Error = 4,
}

impl MsgType {
    fn from_u8(v: u8) -> Option<MsgType> {
        match v {
            1 => Some(MsgType::Fetch),
            2 => Some(MsgType::Retry),
            3 => Some(MsgType::Data),
            4 => Some(MsgType::Error),
            _ => None,
        }
    }
}

/// DATA flags.
pub const FLAG_LAST: u8 = 0x01;
pub const FLAG_FRAGMENT: u8 = 0x02;

/// Error codes of an ERROR datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    UnknownTopicOrPartition = 1,
    OffsetOutOfRange = 2,
    /// The batch at the read position is corrupt on disk (never served) or unreadable.
    StorageError = 3,
    MalformedRequest = 4,
    UnsupportedVersion = 5,
    /// The gateway has no room for this request now (session or long-poll limits).
    Busy = 6,
    /// The gateway requires a fetch ticket and the request has no valid one (missing,
    /// malformed, forged, expired, issued for another address, or an older version).
    Unauthenticated = 7,
    /// The ticket does not name the topic of a partition entry (`slot`): nothing was read.
    TopicAuthorizationFailed = 8,
    Unknown = 0xFFFF,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::UnknownTopicOrPartition,
            2 => ErrorCode::OffsetOutOfRange,
            3 => ErrorCode::StorageError,
            4 => ErrorCode::MalformedRequest,
            5 => ErrorCode::UnsupportedVersion,
            6 => ErrorCode::Busy,
            7 => ErrorCode::Unauthenticated,
            8 => ErrorCode::TopicAuthorizationFailed,
            _ => ErrorCode::Unknown,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::UnknownTopicOrPartition => "unknown topic or partition",
            ErrorCode::OffsetOutOfRange => "offset out of range",
            ErrorCode::StorageError => "storage error",
            ErrorCode::MalformedRequest => "malformed request",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::Busy => "gateway busy",
            ErrorCode::Unauthenticated => "no valid fetch ticket",
            ErrorCode::TopicAuthorizationFailed => "topic not covered by the fetch ticket",
            ErrorCode::Unknown => "unknown error",
        };
        f.write_str(s)
    }
}

/// Why a datagram did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram too short for {what}: needs {needed} bytes, has {available}")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown datagram type {0}")]
    UnknownType(u8),
    #[error("bad {what}: {detail}")]
    BadField { what: &'static str, detail: String },
}

fn short(what: &'static str, needed: usize, available: usize) -> WireError {
    WireError::Truncated {
        what,
        needed,
        available,
    }
}

/// Cursor over a datagram; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(short(self.what, self.pos + n, self.buf.len())),
        }
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, WireError> {
        Ok(self.u32()? as i32)
    }
    fn i64(&mut self) -> Result<i64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

/// Checks the common header and returns the datagram type.
pub fn peek_type(datagram: &[u8]) -> Result<MsgType, WireError> {
    if datagram.len() < COMMON_LEN {
        return Err(short("common header", COMMON_LEN, datagram.len()));
    }
    let magic = u16::from_be_bytes([datagram[0], datagram[1]]);
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if !supported(datagram[2]) {
        return Err(WireError::UnsupportedVersion(datagram[2]));
    }
    MsgType::from_u8(datagram[3]).ok_or(WireError::UnknownType(datagram[3]))
}

/// The version byte of a datagram [`peek_type`] accepted.
pub fn peek_version(datagram: &[u8]) -> Result<u8, WireError> {
    peek_type(datagram)?;
    Ok(datagram[2])
}

fn expect_type(datagram: &[u8], t: MsgType) -> Result<(), WireError> {
    let got = peek_type(datagram)?;
    if got != t {
        return Err(WireError::UnknownType(got as u8));
    }
    Ok(())
}

fn put_common(out: &mut Vec<u8>, version: u8, t: MsgType) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(version);
    out.push(t as u8);
}

/// One partition of a FETCH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRequest<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// First offset wanted, or [`OFFSET_EARLIEST`] / [`OFFSET_LATEST`].
    pub offset: i64,
    pub max_bytes: u32,
    /// Send only bytes `range_start..range_end` of the response this read makes (a repair
    /// of lost datagrams: the same read yields the same bytes). 0..0 = all of it.
    pub range_start: u32,
    pub range_end: u32,
}

/// Consumer -> gateway: fetch (also the handshake and the acknowledgement carrier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest<'a> {
    /// Protocol version of the datagram ([`VERSION_1`] or [`VERSION_2`]).
    pub version: u8,
    /// Chosen by the client, increasing; echoed in every answer.
    pub request_id: u32,
    /// Every request with a smaller id is finished (answered or given up): the gateway
    /// releases their bytes from the flow-control window.
    pub ack_floor: u32,
    /// Bytes the client allows in flight toward it (flow-control window).
    pub window: u32,
    /// Long poll: when no partition has data, wait up to this long for an append.
    pub max_wait_ms: u32,
    /// Address-validation token from a RETRY; empty on first contact.
    pub token: &'a [u8],
    /// Version 2 (after the token); version 1 is read_uncommitted.
    pub isolation: IsolationLevel,
    /// Version 3 (after the isolation level): the fetch ticket; empty in versions 1 and 2.
    pub ticket: &'a [u8],
    pub parts: Vec<PartRequest<'a>>,
}

impl FetchRequest<'_> {
    /// Encodes, zero-padding to `min_len` (first contact pads to [`MIN_INITIAL_LEN`]).
    pub fn encode(&self, min_len: usize) -> Result<Vec<u8>, WireError> {
        if self.token.len() > u8::MAX as usize {
            return Err(WireError::BadField {
                what: "token",
                detail: format!("{} bytes", self.token.len()),
            });
        }
        if self.parts.len() > u16::MAX as usize {
            return Err(WireError::BadField {
                what: "partition count",
                detail: self.parts.len().to_string(),
            });
        }
        if self.ticket.len() > MAX_TICKET_LEN
            || (self.version < VERSION_3 && !self.ticket.is_empty())
        {
            return Err(WireError::BadField {
                what: "ticket",
                detail: format!("{} bytes in version {}", self.ticket.len(), self.version),
            });
        }
        if !supported(self.version)
            || (self.version == VERSION_1 && self.isolation != IsolationLevel::ReadUncommitted)
        {
            return Err(WireError::BadField {
                what: "version",
                detail: format!("{} with {:?}", self.version, self.isolation),
            });
        }
        let mut out = Vec::with_capacity(64);
        put_common(&mut out, self.version, MsgType::Fetch);
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&self.ack_floor.to_be_bytes());
        out.extend_from_slice(&self.window.to_be_bytes());
        out.extend_from_slice(&self.max_wait_ms.to_be_bytes());
        out.push(self.token.len() as u8);
        out.extend_from_slice(self.token);
        if self.version >= VERSION_2 {
            out.push(self.isolation as u8);
        }
        if self.version >= VERSION_3 {
            out.extend_from_slice(&(self.ticket.len() as u16).to_be_bytes());
            out.extend_from_slice(self.ticket);
        }
        out.extend_from_slice(&(self.parts.len() as u16).to_be_bytes());
        for p in &self.parts {
            if p.topic.is_empty() || p.topic.len() > MAX_TOPIC_LEN {
                return Err(WireError::BadField {
                    what: "topic",
                    detail: format!("length {}", p.topic.len()),
                });
            }
            out.extend_from_slice(&(p.topic.len() as u16).to_be_bytes());
            out.extend_from_slice(p.topic.as_bytes());
            out.extend_from_slice(&p.partition.to_be_bytes());
            out.extend_from_slice(&p.offset.to_be_bytes());
            out.extend_from_slice(&p.max_bytes.to_be_bytes());
            out.extend_from_slice(&p.range_start.to_be_bytes());
            out.extend_from_slice(&p.range_end.to_be_bytes());
        }
        if out.len() < min_len {
            out.resize(min_len, 0);
        }
        Ok(out)
    }
}

/// Reads only the request id and token of a FETCH: the gateway validates the source before
/// parsing anything else.
pub fn fetch_token(datagram: &[u8]) -> Result<(u32, &[u8]), WireError> {
    expect_type(datagram, MsgType::Fetch)?;
    let mut r = Reader::new(datagram, "FETCH");
    r.take(COMMON_LEN)?;
    let request_id = r.u32()?;
    r.take(12)?;
    let n = r.u8()? as usize;
    Ok((request_id, r.take(n)?))
}

/// Decodes a whole FETCH (after [`peek_type`] said it is one).
pub fn decode_fetch(datagram: &[u8]) -> Result<FetchRequest<'_>, WireError> {
    expect_type(datagram, MsgType::Fetch)?;
    let mut r = Reader::new(datagram, "FETCH");
    r.take(COMMON_LEN)?;
    let request_id = r.u32()?;
    let ack_floor = r.u32()?;
    let window = r.u32()?;
    let max_wait_ms = r.u32()?;
    let tlen = r.u8()? as usize;
    let token = r.take(tlen)?;
    let version = datagram[2];
    let isolation = if version >= VERSION_2 {
        let v = r.u8()?;
        IsolationLevel::from_u8(v).ok_or_else(|| WireError::BadField {
            what: "isolation level",
            detail: v.to_string(),
        })?
    } else {
        IsolationLevel::ReadUncommitted
    };
    let ticket = ticket_field(&mut r, version)?;
    let n = r.u16()? as usize;
    // Each entry needs at least its fixed part plus one topic byte: reject impossible
    // counts before allocating for them.
    if n * (FETCH_PART_FIXED_LEN + 1) > r.rest().len() {
        return Err(short(
            "FETCH partitions",
            r.pos + n * (FETCH_PART_FIXED_LEN + 1),
            datagram.len(),
        ));
    }
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let tl = r.u16()? as usize;
        if tl == 0 || tl > MAX_TOPIC_LEN {
            return Err(WireError::BadField {
                what: "topic length",
                detail: tl.to_string(),
            });
        }
        let tb = r.take(tl)?;
        let topic = std::str::from_utf8(tb).map_err(|_| WireError::BadField {
            what: "topic",
            detail: "not UTF-8".into(),
        })?;
        let partition = r.i32()?;
        let offset = r.i64()?;
        let max_bytes = r.u32()?;
        let range_start = r.u32()?;
        let range_end = r.u32()?;
        if range_end != 0 && range_end <= range_start {
            return Err(WireError::BadField {
                what: "byte range",
                detail: format!("{range_start}..{range_end}"),
            });
        }
        if offset < OFFSET_EARLIEST {
            return Err(WireError::BadField {
                what: "offset",
                detail: offset.to_string(),
            });
        }
        parts.push(PartRequest {
            topic,
            partition,
            offset,
            max_bytes,
            range_start,
            range_end,
        });
    }
    // Only zero padding may follow.
    if r.rest().iter().any(|&b| b != 0) {
        return Err(WireError::BadField {
            what: "padding",
            detail: "non-zero bytes after the last partition".into(),
        });
    }
    Ok(FetchRequest {
        version,
        request_id,
        ack_floor,
        window,
        max_wait_ms,
        token,
        isolation,
        ticket,
        parts,
    })
}

/// Version 3: the ticket after the isolation level (empty before version 3).
fn ticket_field<'a>(r: &mut Reader<'a>, version: u8) -> Result<&'a [u8], WireError> {
    if version < VERSION_3 {
        return Ok(&[]);
    }
    let n = r.u16()? as usize;
    if n > MAX_TICKET_LEN {
        return Err(WireError::BadField {
            what: "ticket length",
            detail: n.to_string(),
        });
    }
    r.take(n)
}

/// Gateway -> consumer: "repeat request `request_id` with this token".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The version of the FETCH it answers.
    pub version: u8,
    pub request_id: u32,
    pub token: [u8; TOKEN_LEN],
}

impl Retry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RETRY_LEN);
        put_common(&mut out, self.version, MsgType::Retry);
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.push(TOKEN_LEN as u8);
        out.extend_from_slice(&self.token);
        out
    }

    pub fn decode(datagram: &[u8]) -> Result<Retry, WireError> {
        expect_type(datagram, MsgType::Retry)?;
        let mut r = Reader::new(datagram, "RETRY");
        r.take(COMMON_LEN)?;
        let request_id = r.u32()?;
        let n = r.u8()? as usize;
        if n != TOKEN_LEN {
            return Err(WireError::BadField {
                what: "token length",
                detail: n.to_string(),
            });
        }
        let mut token = [0u8; TOKEN_LEN];
        token.copy_from_slice(r.take(TOKEN_LEN)?);
        Ok(Retry {
            version: datagram[2],
            request_id,
            token,
        })
    }
}

/// Header of a DATA datagram. The payload that follows is either whole record batches
/// (`FLAG_FRAGMENT` clear) or one fragment of one batch (`FLAG_FRAGMENT` set).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DataHeader {
    /// The version of the FETCH it answers (0 in a `Default` value means [`VERSION_1`]).
    pub version: u8,
    pub request_id: u32,
    /// Index of the partition in the request.
    pub slot: u16,
    pub flags: u8,
    pub partition: i32,
    /// Total payload bytes of this partition's response.
    pub resp_len: u32,
    /// Position of this datagram's payload within the response.
    pub resp_pos: u32,
    /// No batch of the log lies between this offset and the first batch here (the
    /// requested offset for the first datagram, else the next offset of the batch before).
    pub link_offset: i64,
    /// Base offset of the first batch here (the fragmented batch for a fragment).
    pub base_offset: i64,
    /// Next offset after the last batch here (of the fragmented batch for a fragment).
    pub end_offset: i64,
    /// Next offset after the whole response: where the next fetch continues.
    pub resp_next_offset: i64,
    pub high_watermark: i64,
    pub log_start: i64,
    pub log_end: i64,
    pub frag_index: u16,
    pub frag_count: u16,
    /// Fragment: length of the whole batch; 0 otherwise.
    pub batch_len: u32,
    /// Fragment: position of this fragment within the batch; 0 otherwise.
    pub frag_pos: u32,
    /// Version 2: the partition's last stable offset as of the read.
    pub last_stable: i64,
    /// Version 2, read_committed: the aborted transactions overlapping the batches of this
    /// datagram, as (producer id, first offset); see docs/fetch-protocol.md.
    pub aborted: Vec<(i64, i64)>,
}

impl DataHeader {
    pub fn is_last(&self) -> bool {
        self.flags & FLAG_LAST != 0
    }
    pub fn is_fragment(&self) -> bool {
        self.flags & FLAG_FRAGMENT != 0
    }

    fn wire_version(&self) -> u8 {
        if self.version == 0 {
            VERSION_1
        } else {
            self.version
        }
    }

    /// Bytes this header takes on the wire.
    pub fn len(&self) -> usize {
        data_header_len(self.wire_version(), self.aborted.len())
    }

    /// Never: a header has its fixed fields (for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn encode(&self) -> Vec<u8> {
        let version = self.wire_version();
        let mut out = Vec::with_capacity(self.len());
        put_common(&mut out, version, MsgType::Data);
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&self.slot.to_be_bytes());
        out.push(self.flags);
        out.push(0);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.resp_len.to_be_bytes());
        out.extend_from_slice(&self.resp_pos.to_be_bytes());
        for v in [
            self.link_offset,
            self.base_offset,
            self.end_offset,
            self.resp_next_offset,
            self.high_watermark,
            self.log_start,
            self.log_end,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.frag_index.to_be_bytes());
        out.extend_from_slice(&self.frag_count.to_be_bytes());
        out.extend_from_slice(&self.batch_len.to_be_bytes());
        out.extend_from_slice(&self.frag_pos.to_be_bytes());
        if version >= VERSION_2 {
            out.extend_from_slice(&self.last_stable.to_be_bytes());
            // The server never puts more than a datagram holds (u16 is far beyond that).
            let n = self.aborted.len().min(u16::MAX as usize);
            out.extend_from_slice(&(n as u16).to_be_bytes());
            for &(pid, first) in &self.aborted[..n] {
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&first.to_be_bytes());
            }
        }
        debug_assert_eq!(out.len(), self.len());
        out
    }

    /// Decodes the header and checks that it is consistent with the payload length.
    pub fn decode(datagram: &[u8]) -> Result<(DataHeader, &[u8]), WireError> {
        expect_type(datagram, MsgType::Data)?;
        let mut r = Reader::new(datagram, "DATA");
        r.take(COMMON_LEN)?;
        let request_id = r.u32()?;
        let slot = r.u16()?;
        let flags = r.u8()?;
        let reserved = r.u8()?;
        let version = datagram[2];
        let mut h = DataHeader {
            version,
            request_id,
            slot,
            flags,
            partition: r.i32()?,
            resp_len: r.u32()?,
            resp_pos: r.u32()?,
            link_offset: r.i64()?,
            base_offset: r.i64()?,
            end_offset: r.i64()?,
            resp_next_offset: r.i64()?,
            high_watermark: r.i64()?,
            log_start: r.i64()?,
            log_end: r.i64()?,
            ..Default::default()
        };
        h.frag_index = r.u16()?;
        h.frag_count = r.u16()?;
        h.batch_len = r.u32()?;
        h.frag_pos = r.u32()?;
        if datagram.len() < DATA_HEADER_LEN {
            return Err(short("DATA header", DATA_HEADER_LEN, datagram.len()));
        }
        if version >= VERSION_2 {
            h.last_stable = r.i64()?;
            let n = r.u16()? as usize;
            if n * ABORTED_ENTRY_LEN > r.rest().len() {
                return Err(short(
                    "DATA aborted transactions",
                    r.pos + n * ABORTED_ENTRY_LEN,
                    datagram.len(),
                ));
            }
            h.aborted.reserve_exact(n);
            for _ in 0..n {
                h.aborted.push((r.i64()?, r.i64()?));
            }
        }
        let payload = r.rest();
        let bad = |detail: String| WireError::BadField {
            what: "DATA header",
            detail,
        };
        if reserved != 0 || flags & !(FLAG_LAST | FLAG_FRAGMENT) != 0 {
            return Err(bad(format!("flags {flags:#04x}, reserved {reserved}")));
        }
        if !h.is_fragment() && (h.frag_index, h.frag_count, h.batch_len, h.frag_pos) != (0, 0, 0, 0)
        {
            return Err(bad("fragment fields in a datagram of whole batches".into()));
        }
        let end = h.resp_pos as u64 + payload.len() as u64;
        if end > h.resp_len as u64 {
            return Err(bad(format!(
                "payload {}..{end} beyond response length {}",
                h.resp_pos, h.resp_len
            )));
        }
        if h.is_last() != (end == h.resp_len as u64) {
            return Err(bad("LAST flag does not match the payload end".into()));
        }
        if payload.is_empty() && h.resp_pos != h.resp_len {
            return Err(bad("empty payload before the end of the response".into()));
        }
        if h.is_fragment() {
            let fend = h.frag_pos as u64 + payload.len() as u64;
            if fend > h.batch_len as u64 || h.frag_index >= h.frag_count {
                return Err(bad(format!(
                    "fragment {}/{} at {}+{} of a {}-byte batch",
                    h.frag_index,
                    h.frag_count,
                    h.frag_pos,
                    payload.len(),
                    h.batch_len
                )));
            }
        }
        if h.end_offset < h.base_offset || h.link_offset > h.end_offset {
            return Err(bad(format!(
                "offsets link {} base {} end {}",
                h.link_offset, h.base_offset, h.end_offset
            )));
        }
        Ok((h, payload))
    }
}

/// Gateway -> consumer: a request (or one partition of it) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    /// The version of the FETCH it answers; `UNSUPPORTED_VERSION` is sent as version 1 (the
    /// ERROR layout is the same in every version), so any consumer reads it.
    pub version: u8,
    pub request_id: u32,
    /// Partition index in the request; 0xFFFF for the request as a whole.
    pub slot: u16,
    pub code: ErrorCode,
    pub partition: i32,
    pub log_start: i64,
    /// Readable end of the partition (the offset the next record will get).
    pub log_end: i64,
    pub high_watermark: i64,
}

/// `slot` value of an error about the whole request.
pub const SLOT_REQUEST: u16 = 0xFFFF;

impl ErrorMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ERROR_LEN);
        put_common(&mut out, self.version, MsgType::Error);
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&self.slot.to_be_bytes());
        out.extend_from_slice(&(self.code as u16).to_be_bytes());
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.log_start.to_be_bytes());
        out.extend_from_slice(&self.log_end.to_be_bytes());
        out.extend_from_slice(&self.high_watermark.to_be_bytes());
        out
    }

    pub fn decode(datagram: &[u8]) -> Result<ErrorMsg, WireError> {
        expect_type(datagram, MsgType::Error)?;
        let mut r = Reader::new(datagram, "ERROR");
        r.take(COMMON_LEN)?;
        Ok(ErrorMsg {
            version: datagram[2],
            request_id: r.u32()?,
            slot: r.u16()?,
            code: ErrorCode::from_u16(r.u16()?),
            partition: r.i32()?,
            log_start: r.i64()?,
            log_end: r.i64()?,
            high_watermark: r.i64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_round_trip_and_padding() {
        let req = FetchRequest {
            version: VERSION_1,
            isolation: IsolationLevel::ReadUncommitted,
            ticket: &[],
            request_id: 7,
            ack_floor: 3,
            window: 1 << 20,
            max_wait_ms: 500,
            token: &[1, 2, 3],
            parts: vec![
                PartRequest {
                    topic: "t",
                    partition: 0,
                    offset: 42,
                    max_bytes: 65536,
                    range_start: 0,
                    range_end: 0,
                },
                PartRequest {
                    topic: "other",
                    partition: 3,
                    offset: OFFSET_EARLIEST,
                    max_bytes: 1,
                    range_start: 0,
                    range_end: 0,
                },
            ],
        };
        let plain = req.encode(0).unwrap();
        let bytes = req.encode(plain.len() + 8).unwrap();
        assert_eq!(bytes.len(), plain.len() + 8);
        assert_eq!(peek_type(&bytes).unwrap(), MsgType::Fetch);
        assert_eq!(decode_fetch(&bytes).unwrap(), req);
        assert_eq!(fetch_token(&bytes).unwrap(), (7, &[1u8, 2, 3][..]));
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() = 1;
        assert!(decode_fetch(&bad).is_err());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let req = FetchRequest {
            version: VERSION,
            isolation: IsolationLevel::ReadCommitted,
            ticket: &[],
            request_id: 1,
            ack_floor: 0,
            window: 10,
            max_wait_ms: 0,
            token: &[9; TOKEN_LEN],
            parts: vec![PartRequest {
                topic: "topic",
                partition: 1,
                offset: 5,
                max_bytes: 100,
                range_start: 0,
                range_end: 0,
            }],
        };
        let bytes = req.encode(0).unwrap();
        for n in 0..bytes.len() {
            assert!(decode_fetch(&bytes[..n]).is_err(), "prefix {n}");
        }
        for h in [
            DataHeader {
                request_id: 1,
                resp_len: 10,
                flags: FLAG_LAST,
                ..Default::default()
            },
            DataHeader {
                version: VERSION_2,
                request_id: 1,
                resp_len: 10,
                flags: FLAG_LAST,
                last_stable: 5,
                aborted: vec![(1000, 2), (1001, 3)],
                ..Default::default()
            },
        ] {
            let mut d = h.encode();
            d.extend_from_slice(&[0; 10]);
            assert!(DataHeader::decode(&d).is_ok());
            for n in 0..d.len() {
                assert!(DataHeader::decode(&d[..n]).is_err(), "prefix {n}");
            }
        }
        let e = ErrorMsg {
            version: VERSION,
            request_id: 1,
            slot: 0,
            code: ErrorCode::OffsetOutOfRange,
            partition: 0,
            log_start: 1,
            log_end: 2,
            high_watermark: 2,
        }
        .encode();
        assert_eq!(e.len(), ERROR_LEN);
        for n in 0..e.len() {
            assert!(ErrorMsg::decode(&e[..n]).is_err());
        }
        let r = Retry {
            version: VERSION_1,
            request_id: 5,
            token: [3; TOKEN_LEN],
        };
        assert_eq!(r.encode().len(), RETRY_LEN);
        assert_eq!(Retry::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn version_2_layouts() {
        let part = PartRequest {
            topic: "t",
            partition: 0,
            offset: 3,
            max_bytes: 100,
            range_start: 0,
            range_end: 0,
        };
        let mut req = FetchRequest {
            version: VERSION_2,
            request_id: 4,
            ack_floor: 1,
            window: 1 << 16,
            max_wait_ms: 0,
            token: &[5; TOKEN_LEN],
            isolation: IsolationLevel::ReadCommitted,
            ticket: &[],
            parts: vec![part.clone()],
        };
        let v2 = req.encode(0).unwrap();
        assert_eq!(v2[2], 2);
        assert_eq!(
            v2[FETCH_FIXED_LEN + TOKEN_LEN],
            1,
            "isolation after the token"
        );
        assert_eq!(decode_fetch(&v2).unwrap(), req);
        assert_eq!(fetch_token(&v2).unwrap(), (4, &[5u8; TOKEN_LEN][..]));
        let mut bad = v2.clone();
        bad[FETCH_FIXED_LEN + TOKEN_LEN] = 2;
        assert!(decode_fetch(&bad).is_err(), "unknown isolation level");
        // Version 1 has no isolation byte and cannot ask for read_committed.
        assert!(req.encode(0).is_ok());
        req.version = VERSION_1;
        assert!(req.encode(0).is_err());
        req.isolation = IsolationLevel::ReadUncommitted;
        let v1 = req.encode(0).unwrap();
        assert_eq!(v1.len() + 1, v2.len());
        assert_eq!(decode_fetch(&v1).unwrap(), req);
        // DATA v2: LSO and aborted list between the v1 fields and the payload.
        let h = DataHeader {
            version: VERSION_2,
            request_id: 4,
            flags: FLAG_LAST,
            resp_len: 3,
            last_stable: 77,
            aborted: vec![(1000, 5), (-7, i64::MAX)],
            ..Default::default()
        };
        let mut d = h.encode();
        assert_eq!(d.len(), DATA_HEADER_V2_LEN + 2 * ABORTED_ENTRY_LEN);
        assert_eq!(d.len(), h.len());
        assert_eq!(&d[92..100], &77i64.to_be_bytes());
        d.extend_from_slice(b"abc");
        let (back, payload) = DataHeader::decode(&d).unwrap();
        assert_eq!((back, payload), (h.clone(), &b"abc"[..]));
        // A count larger than the datagram is an error, not an allocation.
        d[100..102].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(DataHeader::decode(&d).is_err());
        // Version 1 DATA stays 92 bytes.
        let h1 = DataHeader {
            version: VERSION_1,
            aborted: Vec::new(),
            last_stable: 0,
            ..h
        };
        assert_eq!(h1.encode().len(), DATA_HEADER_LEN);
    }

    #[test]
    fn version_3_carries_the_ticket_after_the_isolation_level() {
        let ticket = [9u8; 40];
        let req = FetchRequest {
            version: VERSION_3,
            request_id: 4,
            ack_floor: 1,
            window: 1 << 16,
            max_wait_ms: 0,
            token: &[5; TOKEN_LEN],
            isolation: IsolationLevel::ReadCommitted,
            ticket: &ticket,
            parts: vec![PartRequest {
                topic: "t",
                partition: 0,
                offset: 3,
                max_bytes: 100,
                range_start: 0,
                range_end: 0,
            }],
        };
        let v3 = req.encode(0).unwrap();
        let at = FETCH_FIXED_LEN + TOKEN_LEN + 1;
        assert_eq!(&v3[at..at + 2], &40u16.to_be_bytes());
        assert_eq!(&v3[at + 2..at + 42], &ticket);
        assert_eq!(decode_fetch(&v3).unwrap(), req);
        assert_eq!(fetch_token(&v3).unwrap(), (4, &[5u8; TOKEN_LEN][..]));
        for n in 0..v3.len() {
            assert!(decode_fetch(&v3[..n]).is_err(), "prefix {n}");
        }
        // A ticket length past the bound is malformed, not an allocation.
        let mut bad = v3.clone();
        bad[at..at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(decode_fetch(&bad).is_err());
        // Older versions cannot carry one.
        let v2 = FetchRequest {
            version: VERSION_2,
            ..req.clone()
        };
        assert!(v2.encode(0).is_err());
        let empty = FetchRequest { ticket: &[], ..req };
        assert_eq!(empty.encode(0).unwrap().len(), v3.len() - 40);
    }

    #[test]
    fn data_header_round_trip() {
        let h = DataHeader {
            request_id: 9,
            slot: 2,
            flags: FLAG_FRAGMENT,
            partition: 4,
            resp_len: 5000,
            resp_pos: 1000,
            link_offset: 10,
            base_offset: 10,
            end_offset: 20,
            resp_next_offset: 40,
            high_watermark: 50,
            log_start: 0,
            log_end: 50,
            frag_index: 1,
            frag_count: 3,
            batch_len: 3000,
            frag_pos: 1000,
            version: VERSION_1,
            ..Default::default()
        };
        let mut d = h.encode();
        assert_eq!(d.len(), DATA_HEADER_LEN);
        d.extend_from_slice(&[7; 1000]);
        let (back, payload) = DataHeader::decode(&d).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload.len(), 1000);
        // A fragment running past its batch is rejected.
        let mut d2 = DataHeader {
            frag_pos: 2500,
            ..h.clone()
        }
        .encode();
        d2.extend_from_slice(&[7; 1000]);
        assert!(DataHeader::decode(&d2).is_err());
    }

    proptest::proptest! {
        /// No input makes a decoder panic; whatever decodes re-encodes to the same bytes.
        #[test]
        fn decoders_never_panic(mut d in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), t in 1u8..9) {
            if d.len() >= 4 && t % 2 == 0 {
                d[..4].copy_from_slice(&[0x4B, 0x58, 1 + t % 3, (t - 1) % 4 + 1]);
            }
            let _ = peek_type(&d);
            let _ = fetch_token(&d);
            if let Ok(r) = decode_fetch(&d) {
                let again = r.encode(d.len()).unwrap();
                proptest::prop_assert_eq!(&again, &d);
            }
            if let Ok((h, payload)) = DataHeader::decode(&d) {
                let mut again = h.encode();
                again.extend_from_slice(payload);
                proptest::prop_assert_eq!(&again, &d);
            }
            if let Ok(e) = ErrorMsg::decode(&d).map_err(|_| ()).and_then(|e| if e.code == ErrorCode::Unknown { Err(()) } else { Ok(e) }) {
                proptest::prop_assert_eq!(&e.encode()[..], &d[..ERROR_LEN]);
            }
            if let Ok(r) = Retry::decode(&d) {
                proptest::prop_assert_eq!(&r.encode()[..], &d[..RETRY_LEN]);
            }
        }
    }

    #[test]
    fn common_header_checks() {
        assert!(matches!(
            peek_type(&[0x4B]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            peek_type(&[0, 0, 1, 1]),
            Err(WireError::BadMagic(0))
        ));
        assert!(matches!(
            peek_type(&[0x4B, 0x58, 4, 1]),
            Err(WireError::UnsupportedVersion(4))
        ));
        assert!(matches!(
            peek_type(&[0x4B, 0x58, 1, 99]),
            Err(WireError::UnknownType(99))
        ));
    }
}
