//! Zigzag varints as Kafka's record format v2 uses them (protobuf style: 7 bits per byte,
//! least significant group first, high bit = more).

/// Encoded size of a zigzag varint for `v`.
pub fn len_i64(v: i64) -> usize {
    let mut z = zigzag(v);
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Appends the zigzag varint encoding of `v` to `out`.
#[inline]
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    let mut z = zigzag(v);
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Decodes a zigzag varint (up to 10 bytes) from the front of `buf`: (value, bytes used).
/// `None` when the bytes end early or the encoding is longer than 64 bits.
pub fn get_i64(buf: &[u8]) -> Option<(i64, usize)> {
    let mut z: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        z |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let v = ((z >> 1) as i64) ^ -((z & 1) as i64);
            return Some((v, i + 1));
        }
    }
    None
}

/// Like [`get_i64`] but the value must fit an i32 (Kafka's varint, as opposed to varlong).
pub fn get_i32(buf: &[u8]) -> Option<(i32, usize)> {
    let (v, n) = get_i64(buf)?;
    if n > 5 {
        return None;
    }
    i32::try_from(v).ok().map(|v| (v, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        // Values and bytes from the protobuf/Kafka specification of zigzag encoding.
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
            (
                i64::MAX,
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
            (
                i64::MIN,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for &(v, bytes) in cases {
            let mut out = Vec::new();
            put_i64(&mut out, v);
            assert_eq!(out, bytes, "encode {v}");
            assert_eq!(len_i64(v), bytes.len(), "len {v}");
            assert_eq!(get_i64(bytes), Some((v, bytes.len())), "decode {v}");
        }
    }

    #[test]
    fn malformed() {
        assert_eq!(get_i64(&[]), None);
        assert_eq!(get_i64(&[0x80]), None);
        assert_eq!(get_i64(&[0xff; 11]), None);
        // 2^31 does not fit a varint (i32).
        let mut out = Vec::new();
        put_i64(&mut out, 1 << 31);
        assert_eq!(get_i32(&out), None);
        assert_eq!(get_i32(&[0x01]), Some((-1, 1)));
    }
}
