//! Contents of kxgw's demo records, written by `kxgw produce` and checked by `kxgw consume
//! --verify`, `kxgw demo` and the tests: keys `key-<offset>` and values whose every byte
//! depends on partition and offset, so a consumer can tell a wrong, shifted or torn record.
//! Nothing here knows the log format (that is the `kxgw` library's `log::writer`).

use std::io::Write;

/// Demo key of `offset`: `key-000000000042` (16 bytes, printable).
pub fn demo_key(offset: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    push_demo_key(&mut k, offset);
    k
}

/// Demo key padded with `k` or cut to `size` bytes.
pub fn demo_key_sized(offset: i64, size: usize) -> Vec<u8> {
    let mut k = demo_key(offset);
    k.resize(size, b'k');
    k
}

const ALPHABET_LEN: usize = 26;
const PATTERN_LEN: usize = 4096 + ALPHABET_LEN;
/// "abc...zabc..." so that filler can be copied in large chunks.
static PATTERN: [u8; PATTERN_LEN] = {
    let mut a = [0u8; PATTERN_LEN];
    let mut i = 0;
    while i < PATTERN_LEN {
        a[i] = b'a' + (i % ALPHABET_LEN) as u8;
        i += 1;
    }
    a
};

/// Demo value: `p<partition>-o<offset, 12 digits>-` followed by letters where byte `i` is
/// `'a' + (offset + i) % 26`; cut to `size`. Printable, no newline, different per offset, so
/// any consumer can check what it received.
pub fn demo_value(partition: i32, offset: i64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    demo_value_into(&mut v, partition, offset, size);
    v
}

/// Appends `v` in decimal, zero-padded to `width` digits (`format!("{v:0width$}")` without
/// the formatting machinery: `produce` writes millions of these).
fn push_padded(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let mut i = tmp.len();
    while v > 0 {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let digits = (tmp.len() - i).max(width).clamp(1, tmp.len());
    out.extend_from_slice(&tmp[tmp.len() - digits..]);
}

/// Appends `key-<offset, 12 digits>` to `out`.
pub fn push_demo_key(out: &mut Vec<u8>, offset: i64) {
    match u64::try_from(offset) {
        Ok(o) => {
            out.extend_from_slice(b"key-");
            push_padded(out, o, 12);
        }
        // Writing into a Vec cannot fail.
        Err(_) => drop(write!(out, "key-{offset:012}")),
    }
}

/// [`demo_value`] appended to `out` (no allocation when `out` has room).
pub fn demo_value_into(out: &mut Vec<u8>, partition: i32, offset: i64, size: usize) {
    let start = out.len();
    match (u64::try_from(partition), u64::try_from(offset)) {
        (Ok(p), Ok(o)) => {
            out.push(b'p');
            push_padded(out, p, 1);
            out.extend_from_slice(b"-o");
            push_padded(out, o, 12);
            out.push(b'-');
        }
        // Writing into a Vec cannot fail.
        _ => drop(write!(out, "p{partition}-o{offset:012}-")),
    }
    out.truncate(start + size);
    let mut i = out.len() - start;
    while i < size {
        let phase = ((offset as u64).wrapping_add(i as u64) % ALPHABET_LEN as u64) as usize;
        let n = (size - i).min(PATTERN_LEN - ALPHABET_LEN);
        out.extend_from_slice(&PATTERN[phase..phase + n]);
        i += n;
    }
}

/// True when `value` is exactly `demo_value(partition, offset, value.len())`.
pub fn is_demo_value(partition: i32, offset: i64, value: &[u8]) -> bool {
    let mut v = Vec::with_capacity(value.len());
    demo_value_into(&mut v, partition, offset, value.len());
    v == value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_decimal_matches_format() {
        for v in [
            0u64,
            1,
            9,
            10,
            42,
            999_999_999_999,
            1_000_000_000_000,
            u64::MAX,
        ] {
            for w in [1usize, 12, 20] {
                let mut out = Vec::new();
                push_padded(&mut out, v, w);
                assert_eq!(out, format!("{v:0w$}").into_bytes(), "{v} {w}");
            }
        }
        for o in [-5i64, 0, 7, 123_456_789_012_345] {
            assert_eq!(demo_key(o), format!("key-{o:012}").into_bytes());
            for p in [-1i32, 0, 17] {
                let want = format!("p{p}-o{o:012}-");
                assert_eq!(&demo_value(p, o, want.len())[..], want.as_bytes());
            }
        }
    }

    #[test]
    fn demo_content() {
        assert_eq!(demo_key(42), b"key-000000000042");
        let v = demo_value(3, 42, 40);
        assert_eq!(v.len(), 40);
        assert_eq!(&v[..17], b"p3-o000000000042-");
        assert!(v.iter().all(|b| b.is_ascii_graphic()));
        assert!(is_demo_value(3, 42, &v));
        assert!(!is_demo_value(3, 43, &v));
        assert_eq!(demo_value(0, 1, 5), b"p0-o0");
        let long = demo_value(0, 7, 10_000);
        assert_eq!(long.len(), 10_000);
        assert_eq!(long[9_999], b'a' + ((7 + 9_999) % 26) as u8);
    }
}
