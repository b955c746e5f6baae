//! Reads a payload's JSON into its type: the value, or the error, that
//! `serde_json::from_str` gives, with less work on the common shapes. A string's end
//! is found eight bytes at a time, and a string with no escape (nearly every one, keys
//! included) is handed over borrowed, where serde_json looks each byte up in a table;
//! objects, arrays, numbers and literals are read without tracking lines and columns.
//!
//! Anything this reader does not read exactly as serde_json does (a control character
//! in a string, an escaped UTF-16 surrogate, an integer of 19 digits or more, a float
//! of more than 15 digits or beyond 10^±22, bytes, a map key read as a number,
//! serde_json's private types such as `RawValue`, any syntax error or an error from the
//! type's own `Deserialize`) makes [`read`] start over with serde_json, whose value or
//! error is then the result. So what this reader gives is only ever what serde_json
//! gives; a type's `Deserialize` runs twice on a payload that starts over.

use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, Deserialize, DeserializeSeed, IgnoredAny, Visitor};

use crate::json_text::{first_special, StartOver, SERDE_JSON_PRIVATE};

/// `text` as an `M`: the value, or the error, of `serde_json::from_str(text)`.
pub(crate) fn read<'de, M: Deserialize<'de>>(text: &'de str) -> serde_json::Result<M> {
    let mut reader = Reader::new(text);
    match M::deserialize(&mut reader).and_then(|message| reader.end().map(|()| message)) {
        Ok(message) => Ok(message),
        Err(StartOver) => serde_json::from_str(text),
    }
}

type Result<T> = std::result::Result<T, StartOver>;

/// Deepest nesting read here; serde_json refuses beyond 128.
const MAX_DEPTH: u32 = 100;

struct Reader<'de> {
    text: &'de str,
    /// The next byte to read.
    at: usize,
    /// Arrays and objects open around `at`.
    depth: u32,
    /// The last string read that had escapes, unescaped (such a string cannot be
    /// borrowed from the text).
    unescaped: String,
    /// Whether the last string read had escapes, so that it is in `unescaped`. (A
    /// flag rather than a third result, so that a string read comes back in two
    /// registers.)
    escaped: bool,
}

/// A number as serde_json hands it to a visitor.
enum Number {
    Unsigned(u64),
    Negative(i64),
    Float(f64),
}

/// The powers of ten that are exact as `f64`s.
const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

impl<'de> Reader<'de> {
    /// The next byte that is not JSON whitespace, not taken.
    fn peek(&mut self) -> Result<u8> {
        let bytes = self.text.as_bytes();
        loop {
            match bytes.get(self.at) {
                Some(b' ' | b'\n' | b'\t' | b'\r') => self.at += 1,
                Some(&byte) => return Ok(byte),
                None => return Err(StartOver),
            }
        }
    }

    /// After the value: nothing but whitespace.
    fn end(&mut self) -> Result<()> {
        match self.peek() {
            Err(StartOver) => Ok(()),
            Ok(_) => Err(StartOver),
        }
    }

    /// `word` (`true`, `false`, `null`), whose first byte was peeked.
    fn literal(&mut self, word: &str) -> Result<()> {
        if self.text.as_bytes()[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(())
        } else {
            Err(StartOver)
        }
    }

    fn new(text: &'de str) -> Self {
        Reader {
            text,
            at: 0,
            depth: 0,
            unescaped: String::new(),
            escaped: false,
        }
    }

    /// A string whose `"` was peeked, as it stands in the text; when it has escapes,
    /// also unescaped into `unescaped`, with `escaped` set.
    fn string(&mut self) -> Result<&'de str> {
        let start = self.at + 1;
        let rest = &self.text.as_bytes()[start..];
        match first_special(rest) {
            Some(len) if rest[len] == b'"' => {
                self.at = start + len + 1;
                Ok(&self.text[start..start + len])
            }
            Some(len) if rest[len] == b'\\' => {
                self.unescape(start, start + len)?;
                self.escaped = true;
                Ok(&self.text[start..self.at - 1])
            }
            // A control character, or no end: serde_json refuses it.
            _ => Err(StartOver),
        }
    }

    /// The string from `start` unescaped into `self.unescaped`, its first escape at
    /// `at`, as serde_json unescapes it. An escaped UTF-16 surrogate (half of a pair,
    /// or a lone one, which serde_json refuses) is left to serde_json.
    #[cold]
    #[inline(never)]
    fn unescape(&mut self, start: usize, mut at: usize) -> Result<()> {
        let text = self.text;
        let bytes = text.as_bytes();
        let out = &mut self.unescaped;
        out.clear();
        out.push_str(&text[start..at]);
        loop {
            // `at` is at a backslash.
            let unescaped = match bytes.get(at + 1) {
                Some(b'"') => '"',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'b') => '\u{8}',
                Some(b'f') => '\u{c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => {
                    let hex = text.get(at + 2..at + 6).ok_or(StartOver)?;
                    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(StartOver);
                    }
                    let code = u32::from_str_radix(hex, 16).map_err(|_| StartOver)?;
                    at += 4;
                    char::from_u32(code).ok_or(StartOver)?
                }
                _ => return Err(StartOver),
            };
            out.push(unescaped);
            at += 2;
            let run = first_special(&bytes[at..]).ok_or(StartOver)?;
            out.push_str(&text[at..at + run]);
            at += run;
            match bytes[at] {
                b'"' => {
                    self.at = at + 1;
                    return Ok(());
                }
                b'\\' => {}
                _ => return Err(StartOver),
            }
        }
    }

    /// A string whose `"` was peeked, for `visitor`: borrowed when it can be, as
    /// serde_json hands it over.
    fn visit_string<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        let text = self.string()?;
        if std::mem::take(&mut self.escaped) {
            visitor.visit_str(&self.unescaped)
        } else {
            visitor.visit_borrowed_str(text)
        }
    }

    /// A number whose first byte was peeked: an integer of up to 18 digits (so it
    /// cannot overflow), or a float of up to 15 digits and a power of ten up to 22
    /// either way. For such a float, serde_json's two ways of making one (a
    /// multiplication or division by the power of ten, or, with its feature
    /// `float_roundtrip`, a correctly rounded parse) agree: both numbers are exact
    /// as `f64`s, so the one operation is correctly rounded. Other numbers are left to
    /// serde_json.
    fn number_value(&mut self) -> Result<Number> {
        if !numbers_are_plain() {
            return Err(StartOver);
        }
        let bytes = self.text.as_bytes();
        let negative = bytes[self.at] == b'-';
        let first = self.at + usize::from(negative);
        let mut at = first;
        let mut significand: u64 = 0;
        let mut digits = |at: &mut usize| {
            let start = *at;
            while let Some(digit @ b'0'..=b'9') = bytes.get(*at) {
                significand = significand
                    .wrapping_mul(10)
                    .wrapping_add(u64::from(digit - b'0'));
                *at += 1;
            }
            *at - start
        };
        let whole = digits(&mut at);
        if whole == 0 || (whole > 1 && bytes[first] == b'0') {
            return Err(StartOver);
        }
        let (mut fraction, mut power) = (0, 0i32);
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            fraction = digits(&mut at);
            if fraction == 0 {
                return Err(StartOver);
            }
            power = -(fraction as i32);
        }
        let exponent = matches!(bytes.get(at), Some(b'e' | b'E'));
        if exponent {
            at += 1;
            let sign = match bytes.get(at) {
                Some(&sign @ (b'+' | b'-')) => {
                    at += 1;
                    if sign == b'-' {
                        -1
                    } else {
                        1
                    }
                }
                _ => 1,
            };
            let start = at;
            let mut e = 0i32;
            while let (Some(digit @ b'0'..=b'9'), true) = (bytes.get(at), at - start < 3) {
                e = e * 10 + i32::from(digit - b'0');
                at += 1;
            }
            if at == start || bytes.get(at).is_some_and(u8::is_ascii_digit) {
                return Err(StartOver);
            }
            power += sign * e;
        }
        let number = if fraction == 0 && !exponent {
            match (negative, whole > 18) {
                (_, true) => return Err(StartOver),
                (false, false) => Number::Unsigned(significand),
                // serde_json reads `-0` as the float -0.0.
                (true, false) if significand == 0 => Number::Float(-0.0),
                (true, false) => Number::Negative(-(significand as i64)),
            }
        } else {
            if whole + fraction > 15 || power.unsigned_abs() as usize >= POWERS_OF_TEN.len() {
                return Err(StartOver);
            }
            let ten_to = POWERS_OF_TEN[power.unsigned_abs() as usize];
            let magnitude = if power >= 0 {
                significand as f64 * ten_to
            } else {
                significand as f64 / ten_to
            };
            Number::Float(if negative { -magnitude } else { magnitude })
        };
        self.at = at;
        Ok(number)
    }

    /// A number for `visitor`, or a refusal of what is not one (serde_json checks
    /// the type itself before a visitor sees it). `floats`: whether a float is read
    /// here (not for an `f32`, which serde_json may parse at single precision).
    fn number<V: Visitor<'de>>(&mut self, visitor: V, floats: bool) -> Result<V::Value> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => match self.number_value()? {
                Number::Unsigned(n) => visitor.visit_u64(n),
                Number::Negative(n) => visitor.visit_i64(n),
                Number::Float(f) if floats => visitor.visit_f64(f),
                Number::Float(_) => Err(StartOver),
            },
            _ => Err(StartOver),
        }
    }

    /// The array or object whose bracket was peeked, read by `read`, then its closing
    /// bracket.
    fn nested<T>(&mut self, close: u8, read: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.depth == MAX_DEPTH {
            return Err(StartOver);
        }
        self.depth += 1;
        self.at += 1;
        let value = read(self)?;
        if self.peek()? != close {
            return Err(StartOver);
        }
        self.at += 1;
        self.depth -= 1;
        Ok(value)
    }

    fn array<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        self.nested(b']', |reader| {
            visitor.visit_seq(Elements {
                reader,
                first: true,
            })
        })
    }

    fn object<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        self.nested(b'}', |reader| {
            visitor.visit_map(Entries {
                reader,
                first: true,
            })
        })
    }

    /// Whether another element or entry follows: after the first, a `,` is taken.
    /// A trailing comma is left to serde_json, which refuses it.
    fn another(&mut self, first: &mut bool, close: u8) -> Result<bool> {
        let mut next = self.peek()?;
        if next == close {
            return Ok(false);
        }
        if !std::mem::take(first) {
            if next != b',' {
                return Err(StartOver);
            }
            self.at += 1;
            next = self.peek()?;
            if next == close {
                return Err(StartOver);
            }
        }
        Ok(true)
    }
}

/// Whether serde_json reads a number as its value. With its feature
/// `arbitrary_precision` (which any crate in a build can turn on) it hands a visitor
/// the number's text in a map instead, so numbers are then left to it.
fn numbers_are_plain() -> bool {
    static PLAIN: OnceLock<bool> = OnceLock::new();
    *PLAIN.get_or_init(|| {
        struct Probe;
        impl<'de> Visitor<'de> for Probe {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<bool, E> {
                Ok(true)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> std::result::Result<bool, A::Error> {
                Ok(false)
            }
        }
        let mut probe = serde_json::Deserializer::from_str("1");
        de::Deserializer::deserialize_any(&mut probe, Probe).unwrap_or(false)
    })
}

/// Methods left to serde_json.
macro_rules! start_over {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method<V: Visitor<'de>>(self, $(_: $arg,)* _: V) -> Result<V::Value> {
            Err(StartOver)
        })*
    };
}

/// Methods that read as another method of the same deserializer reads.
macro_rules! same_as {
    ($target:ident: $($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            self.$target(visitor)
        })*
    };
}

/// Methods that read a number.
macro_rules! numbers {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            self.number(visitor, true)
        })*
    };
}

/// Each method accepts what serde_json's method of the same name accepts, or leaves it
/// to serde_json, and calls the visitor as serde_json calls it.
impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = StartOver;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            b'"' => self.visit_string(visitor),
            b'{' => self.object(visitor),
            b'[' => self.array(visitor),
            b't' => {
                self.literal("true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal("false")?;
                visitor.visit_bool(false)
            }
            b'n' => {
                self.literal("null")?;
                visitor.visit_unit()
            }
            _ => self.number(visitor, true),
        }
    }

    numbers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_f64
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.number(visitor, false)
    }

    start_over! {
        deserialize_i128();
        deserialize_u128();
        deserialize_bytes();
        deserialize_byte_buf();
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            b't' | b'f' => self.deserialize_any(visitor),
            _ => Err(StartOver),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            b'"' => self.visit_string(visitor),
            _ => Err(StartOver),
        }
    }

    same_as! { deserialize_str: deserialize_string deserialize_char deserialize_identifier }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            b'n' => {
                self.literal("null")?;
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            b'n' => self.deserialize_any(visitor),
            _ => Err(StartOver),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        if name.starts_with(SERDE_JSON_PRIVATE) {
            return Err(StartOver);
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            b'[' => self.array(visitor),
            _ => Err(StartOver),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.peek()? {
            b'{' => self.object(visitor),
            _ => Err(StartOver),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.peek()? {
            b'{' => self.object(visitor),
            b'[' => self.array(visitor),
            _ => Err(StartOver),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.peek()? {
            b'"' => visitor.visit_enum(UnitVariant(self)),
            b'{' => self.nested(b'}', |reader| match reader.peek()? {
                b'"' => visitor.visit_enum(VariantWithContent(reader)),
                _ => Err(StartOver),
            }),
            _ => Err(StartOver),
        }
    }

    /// Read through, so that only what serde_json would skip is skipped.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_any(IgnoredAny)?;
        visitor.visit_unit()
    }
}

/// An array's elements.
struct Elements<'r, 'de> {
    reader: &'r mut Reader<'de>,
    first: bool,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = StartOver;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.reader.another(&mut self.first, b']')? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

/// An object's entries.
struct Entries<'r, 'de> {
    reader: &'r mut Reader<'de>,
    first: bool,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = StartOver;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.reader.another(&mut self.first, b'}')? {
            return Ok(None);
        }
        // A key that is not a string: serde_json refuses it.
        if self.reader.peek()? != b'"' {
            return Err(StartOver);
        }
        seed.deserialize(MapKey(&mut *self.reader)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        colon(self.reader)?;
        seed.deserialize(&mut *self.reader)
    }
}

/// The `:` after a key.
fn colon(reader: &mut Reader<'_>) -> Result<()> {
    if reader.peek()? != b':' {
        return Err(StartOver);
    }
    reader.at += 1;
    Ok(())
}

/// An object's key, whose `"` was peeked: read as a string. serde_json also reads
/// numbers, bools and the like from inside a key's quotes; those are left to it.
struct MapKey<'r, 'de>(&'r mut Reader<'de>);

impl<'de> de::Deserializer<'de> for MapKey<'_, 'de> {
    type Error = StartOver;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.0.visit_string(visitor)
    }

    same_as! {
        deserialize_any: deserialize_str deserialize_string deserialize_identifier deserialize_char
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.0.string()?;
        self.0.escaped = false;
        visitor.visit_unit()
    }

    start_over! {
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(&'static str);
        deserialize_newtype_struct(&'static str);
        deserialize_seq();
        deserialize_tuple(usize);
        deserialize_tuple_struct(&'static str, usize);
        deserialize_map();
        deserialize_struct(&'static str, &'static [&'static str]);
        deserialize_enum(&'static str, &'static [&'static str]);
    }
}

/// An enum written as its variant's name: a unit variant.
struct UnitVariant<'r, 'de>(&'r mut Reader<'de>);

impl<'de> de::EnumAccess<'de> for UnitVariant<'_, 'de> {
    type Error = StartOver;
    type Variant = Self;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self)> {
        let variant = seed.deserialize(&mut *self.0)?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'_, 'de> {
    type Error = StartOver;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    // serde_json refuses content that is not there.
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value> {
        Err(StartOver)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value> {
        Err(StartOver)
    }

    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], _: V) -> Result<V::Value> {
        Err(StartOver)
    }
}

/// An enum written as `{"variant": content}`, after its `{`.
struct VariantWithContent<'r, 'de>(&'r mut Reader<'de>);

impl<'de> de::EnumAccess<'de> for VariantWithContent<'_, 'de> {
    type Error = StartOver;
    type Variant = Self;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self)> {
        let variant = seed.deserialize(&mut *self.0)?;
        colon(self.0)?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for VariantWithContent<'_, 'de> {
    type Error = StartOver;

    fn unit_variant(self) -> Result<()> {
        <()>::deserialize(self.0)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_seq(self.0, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_struct(self.0, "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Deserialize;
    use serde_json::Value;

    use super::*;
    use crate::json_text::random::{self, Stream};

    /// `text` as a `T` read by this reader alone (the first half of [`read`]):
    /// `StartOver` for what it leaves to serde_json.
    fn read_alone<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T> {
        let mut reader = Reader::new(text);
        T::deserialize(&mut reader).and_then(|value| reader.end().map(|()| value))
    }

    /// `text` read by this reader, without starting over: the value serde_json reads.
    #[track_caller]
    fn read_here<T>(text: &str) -> T
    where
        T: for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let here =
            read_alone::<T>(text).unwrap_or_else(|_| panic!("{text:?} was left to serde_json"));
        assert_eq!(here, serde_json::from_str::<T>(text).unwrap(), "{text:?}");
        here
    }

    /// `text` left to serde_json, and `read` giving serde_json's value or error.
    #[track_caller]
    fn started_over<T>(text: &str)
    where
        T: for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        assert!(read_alone::<T>(text).is_err(), "{text:?} was read here");
        same_as_serde_json::<T>(text);
    }

    /// `read` gives what serde_json gives: the same value, or an error of the same text.
    #[track_caller]
    fn same_as_serde_json<T>(text: &str)
    where
        T: for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        match (read::<T>(text), serde_json::from_str::<T>(text)) {
            (Ok(read), Ok(expected)) => assert_eq!(read, expected, "{text:?}"),
            (Err(read), Err(expected)) => {
                assert_eq!(read.to_string(), expected.to_string(), "{text:?}")
            }
            (read, expected) => panic!("{text:?}: read {read:?}, serde_json {expected:?}"),
        }
    }

    #[derive(Deserialize, PartialEq, Debug)]
    struct Alarm {
        message: String,
        extra: Option<String>,
    }

    #[derive(Deserialize, PartialEq, Debug)]
    struct Unit;

    #[derive(Deserialize, PartialEq, Debug)]
    struct Newtype(u32);

    #[derive(Deserialize, PartialEq, Debug)]
    struct Pair(i8, bool);

    #[derive(Deserialize, PartialEq, Debug)]
    enum Shape {
        Dot,
        Circle(u32),
        Line(i32, i32),
        Box { w: u16, h: u16 },
        Empty(),
        Nothing {},
    }

    #[derive(Deserialize, PartialEq, Debug)]
    #[serde(tag = "type")]
    enum Tagged {
        Start { at: u64 },
        Stop,
    }

    #[derive(Deserialize, PartialEq, Debug)]
    #[serde(tag = "t", content = "c")]
    enum Adjacent {
        Count(u8),
        Name(String),
    }

    #[derive(Deserialize, PartialEq, Debug)]
    #[serde(untagged)]
    enum Untagged {
        Number(i64),
        Text(String),
        Pair { a: bool, b: Option<Unit> },
    }

    #[derive(Deserialize, PartialEq, Debug)]
    struct Everything {
        #[serde(rename = "the id")]
        id: u64,
        unit: Unit,
        newtype: Newtype,
        pair: Pair,
        shapes: Vec<Shape>,
        tagged: Vec<Tagged>,
        adjacent: Vec<Adjacent>,
        untagged: Vec<Untagged>,
        #[serde(flatten)]
        rest: BTreeMap<String, Value>,
        #[serde(default)]
        missing: Vec<u8>,
        chars: (char, char),
        map: HashMap<String, i16>,
        nothing: (),
        small: (u8, i8, u16, i16, u32, i32),
        floats: (f32, f64),
    }

    #[test]
    fn the_common_shapes_are_read_as_serde_json_reads_them() {
        read_here::<Alarm>(r#"{"message":"disk full","extra":null}"#);
        read_here::<Alarm>(r#"{"extra":"seq=1","message":"disk usage above 90% on node-7"}"#);
        read_here::<Alarm>(r#"{"message":"ünïcödé ✓ 🚀","extra":"","unknown":[1,{"a":[]}]}"#);
        read_here::<Alarm>(r#"["as an array",null]"#);
        read_here::<Alarm>(" \n\t\r{ \"message\" : \"spaced\" ,\r\n \"extra\" :\t\"out\" } \n");
        read_here::<Everything>(
            r#"{"the id":18446744073709,"unit":null,"newtype":7,"pair":[-128,true],
            "shapes":["Dot",{"Circle":3},{"Line":[-1,2]},{"Box":{"w":1,"h":2}},{"Empty":[]},
            {"Nothing":{}},{"Dot":null}],
            "tagged":[{"type":"Start","at":5},{"type":"Stop"}],
            "adjacent":[{"t":"Count","c":9},{"c":"x","t":"Name"}],
            "untagged":[-5,"five",{"a":false,"b":null},{"a":true,"b":null}],
            "extra":{"deep":[[[]],{}]},"also":false,
            "chars":["a","é"],"map":{"one":1,"minus":-1,"":0},"nothing":null,
            "small":[255,-128,65535,-32768,4294967295,-2147483648],"floats":[1,-2]}"#,
        );
        read_here::<Vec<Option<bool>>>("[true,false,null]");
        read_here::<Option<Unit>>("null");
        read_here::<BTreeMap<String, Vec<u64>>>(r#"{"a":[0,1,999999999999999999],"b":[]}"#);
        read_here::<(i64, i64, i64)>("[-1,-999999999999999999,0]");
        for text in [
            "1.5",
            "-0.0",
            "-0",
            "0.0",
            "1e5",
            "1E+05",
            "2.5e-3",
            "0.1",
            "-0.3",
            "123456.789012345",
            "1e22",
            "1e-22",
            "4.35",
            "17.99",
            "999999999999999e7",
            "3",
        ] {
            assert_eq!(
                read_here::<f64>(text).to_bits(),
                serde_json::from_str::<f64>(text).unwrap().to_bits(),
                "{text}"
            );
            read_here::<Value>(text);
        }
        read_here::<f32>("5");
        read_here::<Vec<f64>>("[0.5,-1.25e2,3]");
        read_here::<Value>(r#"{"a":[1,-2,"x",true,false,null,{},[]],"b":{"c":{"d":[[1]]}}}"#);
        read_here::<serde::de::IgnoredAny>(r#"{"a":[1,"x",{"b":null}]}"#);
    }

    /// What a visitor that takes anything was handed.
    #[derive(PartialEq, Debug)]
    enum Got {
        Bool(bool),
        Unsigned(u64),
        Signed(i64),
        Text(String),
        Unit,
        None,
        Some(Box<Got>),
        Elements(usize),
        Entries(usize),
        Newtype(Box<Got>),
    }

    /// Takes any value, and counts an array's elements and an object's entries.
    struct Anything;

    impl<'de> Visitor<'de> for Anything {
        type Value = Got;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("anything")
        }
        fn visit_bool<E>(self, v: bool) -> std::result::Result<Got, E> {
            Ok(Got::Bool(v))
        }
        fn visit_u64<E>(self, v: u64) -> std::result::Result<Got, E> {
            Ok(Got::Unsigned(v))
        }
        fn visit_i64<E>(self, v: i64) -> std::result::Result<Got, E> {
            Ok(Got::Signed(v))
        }
        fn visit_str<E>(self, v: &str) -> std::result::Result<Got, E> {
            Ok(Got::Text(v.to_string()))
        }
        fn visit_unit<E>(self) -> std::result::Result<Got, E> {
            Ok(Got::Unit)
        }
        fn visit_none<E>(self) -> std::result::Result<Got, E> {
            Ok(Got::None)
        }
        fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Got, D::Error> {
            d.deserialize_any(Anything)
                .map(|got| Got::Some(Box::new(got)))
        }
        fn visit_newtype_struct<D: de::Deserializer<'de>>(
            self,
            d: D,
        ) -> std::result::Result<Got, D::Error> {
            d.deserialize_any(Anything)
                .map(|got| Got::Newtype(Box::new(got)))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Got, A::Error> {
            let mut n = 0;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(Got::Elements(n))
        }
        fn visit_map<A: de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Got, A::Error> {
            let mut n = 0;
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(Got::Entries(n))
        }
    }

    /// A value asked for with the deserializer method numbered `HINT`, by a visitor
    /// that takes anything: serde_json refuses what the method does not read before
    /// the visitor sees it, and so must this reader.
    #[derive(PartialEq, Debug)]
    struct Hinted<const HINT: u8>(Got);

    impl<'de, const HINT: u8> Deserialize<'de> for Hinted<HINT> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            let got = match HINT {
                0 => d.deserialize_bool(Anything),
                1 => d.deserialize_u64(Anything),
                2 => d.deserialize_i32(Anything),
                3 => d.deserialize_f64(Anything),
                4 => d.deserialize_str(Anything),
                5 => d.deserialize_string(Anything),
                6 => d.deserialize_char(Anything),
                7 => d.deserialize_identifier(Anything),
                8 => d.deserialize_option(Anything),
                9 => d.deserialize_unit(Anything),
                10 => d.deserialize_unit_struct("U", Anything),
                11 => d.deserialize_newtype_struct("N", Anything),
                12 => d.deserialize_seq(Anything),
                13 => d.deserialize_tuple(2, Anything),
                14 => d.deserialize_tuple_struct("T", 2, Anything),
                15 => d.deserialize_map(Anything),
                16 => d.deserialize_struct("S", &["a"], Anything),
                17 => d.deserialize_any(Anything),
                18 => d.deserialize_ignored_any(Anything),
                19 => d.deserialize_newtype_struct("$serde_json::private::RawValue", Anything),
                _ => unreachable!(),
            }?;
            Ok(Hinted(got))
        }
    }

    /// An element that reads nothing at all.
    #[derive(PartialEq, Debug)]
    struct Nothing;

    impl<'de> Deserialize<'de> for Nothing {
        fn deserialize<D: de::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
            Ok(Nothing)
        }
    }

    #[test]
    fn each_method_reads_what_serde_json_reads_with_it() {
        fn each_value<const HINT: u8>() {
            for text in [
                "true",
                "false",
                "5",
                "-5",
                "\"s\"",
                "\"ab\"",
                "null",
                "[]",
                "[1,\"x\"]",
                "{}",
                "{\"a\":1}",
                "1.5",
                // Not JSON: a method that took a wrong first byte for a bracket would
                // read on past it.
                "\"]",
                "5]",
                "t}",
                "x",
            ] {
                same_as_serde_json::<Hinted<HINT>>(text);
                same_as_serde_json::<Vec<Hinted<HINT>>>(&format!("[{text},{text}]"));
                same_as_serde_json::<BTreeMap<String, Hinted<HINT>>>(&format!("{{\"k\":{text}}}"));
            }
        }
        each_value::<0>();
        each_value::<1>();
        each_value::<2>();
        each_value::<3>();
        each_value::<4>();
        each_value::<5>();
        each_value::<6>();
        each_value::<7>();
        each_value::<8>();
        each_value::<9>();
        each_value::<10>();
        each_value::<11>();
        each_value::<12>();
        each_value::<13>();
        each_value::<14>();
        each_value::<15>();
        each_value::<16>();
        each_value::<17>();
        each_value::<18>();
        each_value::<19>();
        // serde_json's private names are its own to read.
        started_over::<Hinted<19>>("\"raw\"");
        read_here::<Hinted<11>>("\"raw\"");
        // An element that reads nothing does not let a stray comma through.
        for text in ["[,]", "[,,]", "[]", "[1]"] {
            same_as_serde_json::<Vec<Nothing>>(text);
        }
        started_over::<Vec<Nothing>>("[,]");
    }

    #[test]
    fn what_this_reader_leaves_gets_serde_json_value_or_error() {
        // Control characters, escapes serde_json refuses, and escaped surrogates.
        started_over::<Alarm>("{\"message\":\"raw\ttab\",\"extra\":null}");
        for escape in [
            r"\q",
            r"\u12",
            r"\u12G4",
            r"\u+123",
            r"\ud800",
            r"\udfff",
            r"\ud83d\ude80",
            r"\",
            r"\u",
            "\\\n",
        ] {
            started_over::<Alarm>(&format!(
                r#"{{"message":"bad {escape} escape","extra":null}}"#
            ));
            started_over::<Value>(&format!(r#"{{"key {escape}":1}}"#));
        }
        started_over::<String>("\"escaped \\n, then a raw\ttab\"");
        started_over::<String>(r#""unterminated \n"#);
        started_over::<String>(r#""unterminated \n "#);
        // A borrowed string borrows from the text only where it has no escape, as with
        // serde_json.
        assert_eq!(read::<&str>(r#""plain""#).unwrap(), "plain");
        let escaped = r#""escaped \n""#;
        assert_eq!(
            read::<&str>(escaped).unwrap_err().to_string(),
            serde_json::from_str::<&str>(escaped)
                .unwrap_err()
                .to_string()
        );
        // Numbers serde_json alone reads exactly as it does, or refuses.
        for text in [
            "1.2345678901234567",
            "1234567890123456.5",
            "1e23",
            "1e-23",
            "1e400",
            "1e1000",
            "1e0001",
            "0.0000000000000001",
            "1.",
            ".5",
            "1.e5",
            "1e",
            "1e+",
            "1e-",
            "01.5",
            "-.5",
            "-",
            "--1",
            "1.5.5",
            "1e5e5",
            "5e-324",
            "1e308",
            "1e23",
        ] {
            started_over::<f64>(text);
            started_over::<Value>(text);
        }
        started_over::<f32>("1.5");
        started_over::<i64>("-0");
        started_over::<u64>("1.0");
        started_over::<u64>("1e2");
        started_over::<u64>("18446744073709551615");
        started_over::<u64>("18446744073709551616");
        started_over::<i64>("-9223372036854775808");
        started_over::<u64>("1234567890123456789");
        started_over::<i128>("5");
        started_over::<u128>("5");
        started_over::<u64>("01");
        started_over::<u64>("-");
        started_over::<u64>("+1");
        started_over::<u8>("256");
        started_over::<i8>("-129");
        started_over::<u64>("-1");
        // Syntax serde_json refuses.
        for text in [
            "",
            " ",
            "{",
            "}",
            "[",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":1,}",
            "{,}",
            "{\"a\" 1}",
            "{\"a\":}",
            "{1:2}",
            "{\"a\":1}}",
            "[1]]",
            "nul",
            "nulls",
            "tru",
            "truex",
            "fals",
            "\"open",
            "1 2",
            "[1]x",
            "{\"message\":\"m\",\"extra\":null} x",
            "'single'",
            "\u{feff}1",
            "[\"a\"\"b\"]",
        ] {
            started_over::<Value>(text);
            started_over::<Option<Alarm>>(text);
        }
        // What the type's own `Deserialize` refuses.
        started_over::<Alarm>(r#"{"message":"m","message":"twice"}"#);
        started_over::<Alarm>(r#"{"extra":null}"#);
        started_over::<Alarm>(r#"{"message":5}"#);
        started_over::<Alarm>(r#"["one"]"#);
        started_over::<Alarm>(r#"["one",null,"three"]"#);
        started_over::<Shape>(r#""Circle""#);
        started_over::<Shape>(r#"{"Dot":null,"Circle":1}"#);
        started_over::<Shape>(r#"{"Circle":1,}"#);
        started_over::<Shape>(r#""Nowhere""#);
        started_over::<Unit>("{}");
        started_over::<bool>("1");
        started_over::<String>("1");
        started_over::<()>("[]");
        // Keys read as numbers, and bytes.
        started_over::<HashMap<u32, bool>>(r#"{"1":true}"#);
        started_over::<BTreeMap<bool, u8>>(r#"{"true":1}"#);
        started_over::<serde_bytes_like::Bytes>(r#""abc""#);
        // Nesting deeper than this reader goes: serde_json's to read, or refuse.
        for depth in [MAX_DEPTH as usize + 1, 127, 128, 129, 1000] {
            started_over::<Value>(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
        }
        read_here::<Value>(&format!(
            "{}{}",
            "[".repeat(MAX_DEPTH as usize),
            "]".repeat(MAX_DEPTH as usize)
        ));
    }

    /// A type read as bytes, as `serde_bytes` reads one.
    mod serde_bytes_like {
        use super::*;

        #[derive(PartialEq, Debug)]
        pub(super) struct Bytes(Vec<u8>);

        impl<'de> Deserialize<'de> for Bytes {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                struct Raw;
                impl Visitor<'_> for Raw {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, b: &[u8]) -> std::result::Result<Bytes, E> {
                        Ok(Bytes(b.to_vec()))
                    }
                }
                d.deserialize_bytes(Raw)
            }
        }
    }

    #[test]
    fn escaped_strings_read_as_serde_json_reads_them() {
        read_here::<Alarm>(r#"{"message":"line\nbreak","extra":"quote \" inside"}"#);
        read_here::<Alarm>(r#"{"mess\u0061ge":"key escaped","extra":"\u00e9\u00E9\/\\"}"#);
        read_here::<Alarm>(r#"{"message":"\b\f\n\r\t\u0000\u001F\uFFFF\u20AC","extra":null}"#);
        read_here::<Shape>(r#""\u0044ot""#);
        read_here::<Shape>(r#"{"Circl\u0065":3}"#);
        read_here::<BTreeMap<String, String>>(r#"{"a\"b":"c\\d","":"\"","\\":""}"#);
        // Every ASCII character, and a few others, at each place of strings of a few
        // lengths: serde_json escapes what needs it, and this reader reads it back.
        let others = ['é', '€', '🚀', '\u{7f}', '\u{80}'];
        for c in (0..128u8).map(char::from).chain(others) {
            for len in [1, 7, 8, 9, 17] {
                for at in 0..len {
                    let text: String = (0..len).map(|i| if i == at { c } else { 'a' }).collect();
                    let json = serde_json::to_string(&text).unwrap();
                    assert_eq!(read_here::<String>(&json), text);
                    read_here::<BTreeMap<String, u8>>(&format!("{{{json}:1}}"));
                }
            }
        }
    }

    #[test]
    fn short_decimals_read_as_serde_json_and_correctly_rounded() {
        let mut stream = Stream(0x1234_5678_9ABC_DEF1);
        let mut next = || stream.next();
        let mut read_without_starting_over = 0;
        for _ in 0..20_000 {
            let digits = 1 + next() % 15;
            let significand = next() % 10u64.pow(digits as u32);
            let point = (next() % (digits + 1)) as usize;
            let mut text = format!("{significand:0width$}", width = digits as usize);
            if point < text.len() && next() % 2 == 0 {
                text.insert(point.max(1), '.');
            }
            if next() % 3 == 0 {
                let e = (next() % 50) as i32 - 25;
                text = format!("{text}{}{e}", ["e", "E"][(next() % 2) as usize]);
            }
            if next() % 2 == 0 {
                text.insert(0, '-');
            }
            same_as_serde_json::<f64>(&text);
            if let Ok(read) = read_alone::<f64>(&text) {
                // What this reader reads is the correctly rounded value.
                assert_eq!(
                    read.to_bits(),
                    text.parse::<f64>().unwrap().to_bits(),
                    "{text}"
                );
                read_without_starting_over += 1;
            }
        }
        assert!(
            read_without_starting_over > 10_000,
            "{read_without_starting_over}"
        );
    }

    #[test]
    fn random_values_read_as_serde_json_reads_them() {
        let mut stream = Stream(0x9E37_79B9_7F4A_7C15);
        let mut read_without_starting_over = 0;
        for _ in 0..3000 {
            let value = random::value(&mut stream, 4);
            for text in [
                serde_json::to_string(&value).unwrap(),
                serde_json::to_string_pretty(&value).unwrap(),
            ] {
                same_as_serde_json::<Value>(&text);
                if read_alone::<Value>(&text).is_ok() {
                    read_without_starting_over += 1;
                }
            }
        }
        // Most are read here (the rest hold a float or an escape).
        assert!(
            read_without_starting_over > 3000,
            "{read_without_starting_over}"
        );
    }

    #[test]
    fn broken_json_is_refused_or_read_as_serde_json_does() {
        let mut mutations = Stream(0x2545_F491_4F6C_DD1D);
        let mut next = || mutations.next();
        let alphabet = b"{}[]:,\"\\ -0123456789.eEtrufalsn\x01\x7f";
        let mut values = Stream(7);
        for _ in 0..400 {
            let value = random::value(&mut values, 3);
            let text = serde_json::to_string(&value).unwrap();
            for _ in 0..25 {
                let mut bytes = text.clone().into_bytes();
                for _ in 0..1 + next() % 3 {
                    let at = (next() as usize) % (bytes.len() + 1);
                    let byte = alphabet[(next() as usize) % alphabet.len()];
                    match next() % 3 {
                        0 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        1 if at < bytes.len() => bytes[at] = byte,
                        _ => bytes.insert(at, byte),
                    }
                }
                // Only text that is still UTF-8 reaches the reader.
                if let Ok(broken) = String::from_utf8(bytes) {
                    same_as_serde_json::<Value>(&broken);
                    same_as_serde_json::<Option<Alarm>>(&broken);
                    same_as_serde_json::<Vec<Untagged>>(&broken);
                }
            }
        }
    }
}
