//! What the JSON writer and reader share: the bytes a JSON string cannot hold as they
//! are (a control character, `"` and `\`), found eight at a time, and the one error by
//! which either leaves a payload to serde_json.

use std::fmt::{self, Display};

use serde::{de, ser};

/// The one error of the writer and the reader: this payload is left to serde_json,
/// whose bytes, value or error are then the result.
#[derive(Debug)]
pub(crate) struct StartOver;

impl Display for StartOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("left to serde_json")
    }
}

impl std::error::Error for StartOver {}

impl ser::Error for StartOver {
    fn custom<T: Display>(_: T) -> Self {
        StartOver
    }
}

impl de::Error for StartOver {
    fn custom<T: Display>(_: T) -> Self {
        StartOver
    }
}

/// serde_json's prefix for the structs it gives a meaning of its own (`RawValue`,
/// arbitrary-precision numbers).
pub(crate) const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

/// The eight bytes of `bytes` from `at`, as one word.
pub(crate) fn word_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The four bytes of `bytes` from `at`, as one word.
pub(crate) fn half_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Whether `byte` cannot stand as itself inside a JSON string.
fn is_special(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether JSON needs an escape for any of `bytes`: a control character, `"` or `\`.
/// Eight bytes at a time, as one word, without a branch per byte.
/// (Not `first_special(..).is_some()`: for the short strings a publish writes, its
/// overlapping words cost less than a byte loop; that form counted publish +10%.)
pub(crate) fn needs_escape(bytes: &[u8]) -> bool {
    let len = bytes.len();
    if len < 4 {
        return bytes.iter().any(|&b| is_special(b));
    }
    let word = |at| word_at(bytes, at);
    let half = |at| half_at(bytes, at);
    if len <= 8 {
        // The first four bytes and the last four, overlapping when fewer than 8.
        return special_bits(u64::from(half(0)) | u64::from(half(len - 4)) << 32) != 0;
    }
    let mut any = 0;
    let mut at = 0;
    while at + 8 < len {
        any |= special_bits(word(at));
        at += 8;
    }
    // The last eight, overlapping the words before.
    any | special_bits(word(len - 8)) != 0
}

/// Where the first of `bytes` that cannot stand in a JSON string is: the `"` that
/// ends a string read from its first byte, unless an escape or a control character
/// comes first. Eight bytes at a time.
pub(crate) fn first_special(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let bits = special_bits(word_at(bytes, at));
        if bits != 0 {
            return Some(at + bits.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| is_special(b))
        .map(|n| at + n)
}

/// The high bit of each byte of `word` (little-endian) that is below 0x20, `"` or `\`,
/// with no branch per byte. A test may also mark a byte above one that matches (its
/// borrow carries upward), never one below it and never a byte of 0x80 or above: so
/// the lowest mark is exact, and a word with none has no such byte.
fn special_bits(word: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w;
    let equal = |w: u64, b: u8| below(w ^ (ONES * u64::from(b)), 1);
    (below(word, 0x20) | equal(word, b'"') | equal(word, b'\\')) & HIGH
}

/// Random JSON for the writer's and the reader's tests.
#[cfg(test)]
pub(crate) mod random {
    use serde_json::{json, Value};

    /// A xorshift stream.
    pub(crate) struct Stream(pub(crate) u64);

    impl Stream {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A random JSON value of up to `depth` levels: signed and unsigned integers,
    /// floats (any, and short decimals), strings of ASCII and other text with and
    /// without characters that need escaping, keys with and without them.
    pub(crate) fn value(stream: &mut Stream, depth: u32) -> Value {
        let pick = stream.next() % if depth == 0 { 6 } else { 8 };
        let n = stream.next();
        match pick {
            0 => Value::Null,
            1 => Value::Bool(n.is_multiple_of(2)),
            2 => json!((n as i64) >> (n % 64)),
            3 => json!(n >> (n % 64)),
            4 if n.is_multiple_of(4) => json!(f64::from_bits(n) % 1e12),
            4 if n % 4 == 1 => json!((n % 2_000_000) as f64 / 1000.0 - 1000.0),
            4 | 5 => Value::String(
                (0..n % 24)
                    .map(|i| {
                        let c = (n >> (i % 8 * 8)) % if n.is_multiple_of(3) { 0x300 } else { 0x80 };
                        char::from_u32(c as u32).unwrap_or('?')
                    })
                    .collect(),
            ),
            6 => Value::Array((0..n % 5).map(|_| value(stream, depth - 1)).collect()),
            _ => Value::Object(
                (0..n % 5)
                    .map(|i| {
                        let key = if n.is_multiple_of(2) {
                            format!("k{i}")
                        } else {
                            format!("k{i}\u{7}\"")
                        };
                        (key, value(stream, depth - 1))
                    })
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_special_byte_is_found_at_every_position_among_any_others() {
        // Every byte value before it (some of them 0x80 and above, which a borrow
        // must not mark) and after it (where a borrow may mark, and must not count).
        let fill: Vec<u8> = (0x20..=0xff).filter(|&b| !is_special(b)).collect();
        for special in (0..0x20).chain([b'"', b'\\']) {
            for len in 0..40 {
                for at in 0..=len {
                    let mut bytes: Vec<u8> =
                        (0..len).map(|i| fill[(i * 37 + at) % fill.len()]).collect();
                    if at < len {
                        bytes[at] = special;
                        // A byte just above that a borrow could mark.
                        if at + 1 < len {
                            bytes[at + 1] = special.wrapping_add(1).max(0x20);
                        }
                    }
                    let expected = bytes.iter().position(|&b| is_special(b));
                    assert_eq!(first_special(&bytes), expected, "{bytes:?}");
                    assert_eq!(needs_escape(&bytes), expected.is_some(), "{bytes:?}");
                }
            }
        }
    }
}
