//! Writes a payload as compact JSON, byte for byte what `serde_json::to_writer` writes,
//! with less work per string: a string that needs no escape (nearly every one, keys
//! included) is checked eight bytes at a time and copied whole, where serde_json looks
//! each byte up in its escape table. On a publish of a small struct, strings are most
//! of the encoding's cost.
//!
//! Only the common shapes are written here (the data model of `derive(Serialize)`
//! types, maps with string, integer, bool or char keys); numbers, escapes and the rest
//! of the formatting are serde_json's own (`CompactFormatter`). Anything else (an error
//! from the message's own `Serialize`, a float map key, serde_json's private types
//! such as `RawValue`) makes [`write`] start over with serde_json, so the bytes, and
//! the error, are always serde_json's.

use std::fmt::{Display, Write as _};

use serde::ser::{self, Serialize};
use serde_json::ser::{CompactFormatter, Formatter};

use crate::json_text::{half_at, needs_escape, word_at, StartOver, SERDE_JSON_PRIVATE};

/// Appends `message` as JSON to `out`: the bytes, or the error, of
/// `serde_json::to_writer(out, message)`. On an error `out` is as it was.
pub(crate) fn write<M: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    message: &M,
) -> serde_json::Result<()> {
    let start = out.len();
    match message.serialize(&mut Writer { out }) {
        Ok(()) => Ok(()),
        Err(StartOver) => {
            out.truncate(start);
            let written = serde_json::to_writer(&mut *out, message);
            if written.is_err() {
                out.truncate(start);
            }
            written
        }
    }
}

type Result<T = ()> = std::result::Result<T, StartOver>;

struct Writer<'v> {
    out: &'v mut Vec<u8>,
}

impl<'v> Writer<'v> {
    /// A string, quoted; escaped by serde_json when it needs escaping.
    fn string(&mut self, text: &str) -> Result {
        if needs_escape(text.as_bytes()) {
            return escaped(self.out, text);
        }
        // Room for the quotes and for `append`'s whole words.
        self.out.reserve(text.len() + 2 + 8);
        self.out.push(b'"');
        append(self.out, text.as_bytes());
        self.out.push(b'"');
        Ok(())
    }

    /// serde_json's formatting of a number, or of punctuation.
    fn format(
        &mut self,
        write: impl FnOnce(&mut CompactFormatter, &mut Vec<u8>) -> std::io::Result<()>,
    ) -> Result {
        write(&mut CompactFormatter, self.out).map_err(|_| StartOver)
    }

    /// `{"variant":` of an enum variant with content.
    fn begin_variant(&mut self, variant: &str) -> Result {
        self.out.push(b'{');
        self.string(variant)?;
        self.out.push(b':');
        Ok(())
    }

    /// An enum variant's tuple or struct content: `{"variant":[...]}` or
    /// `{"variant":{...}}`.
    fn variant_compound<'w>(
        &'w mut self,
        variant: &str,
        len: usize,
        brackets: [u8; 2],
    ) -> Result<Compound<'w, 'v>> {
        self.begin_variant(variant)?;
        Ok(Compound::open(self, Some(len), brackets).in_variant())
    }
}

/// A value that serializes itself through its `Display`, as its text.
fn displayed<T: Display + ?Sized>(value: &T) -> Result<String> {
    let mut text = String::new();
    write!(text, "{value}").map_err(|_| StartOver)?;
    Ok(text)
}

/// Appends `bytes`; up to 16 of them as one or two whole words, then cut to length,
/// which costs less than the call to `memcpy` a copy of a few bytes makes.
fn append(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len();
    let end = out.len() + len;
    let word = |at| word_at(bytes, at);
    let half = |at| half_at(bytes, at);
    match len {
        4..=8 => {
            // The last four bytes shifted to their place: where they overlap the first
            // four, the bytes are the same.
            let both = u64::from(half(0)) | u64::from(half(len - 4)) << (8 * (len - 4));
            out.extend_from_slice(&both.to_le_bytes());
        }
        9..=16 => {
            out.extend_from_slice(&word(0).to_le_bytes());
            // The last eight without those the first word wrote.
            out.extend_from_slice(&(word(len - 8) >> (8 * (16 - len))).to_le_bytes());
        }
        _ => return out.extend_from_slice(bytes),
    }
    out.truncate(end);
}

/// A string that needs escaping, written by serde_json: apart, so the common path
/// stays small.
#[cold]
#[inline(never)]
fn escaped(out: &mut Vec<u8>, text: &str) -> Result {
    serde_json::to_writer(out, text).map_err(|_| StartOver)
}

/// An array or object being written: whether its first element is still to come.
struct Compound<'w, 'v> {
    writer: &'w mut Writer<'v>,
    first: bool,
    /// Written whole already, as `[]` or `{}`, because it said it had no elements.
    closed: bool,
    /// What closes it: `]` or `}`.
    close: u8,
    /// The content of an enum variant, inside `{"variant":`, so it closes that `}` too.
    in_variant: bool,
}

impl<'w, 'v> Compound<'w, 'v> {
    fn open(writer: &'w mut Writer<'v>, len: Option<usize>, [open, close]: [u8; 2]) -> Self {
        writer.out.push(open);
        let closed = len == Some(0);
        if closed {
            writer.out.push(close);
        }
        Compound {
            writer,
            first: true,
            closed,
            close,
            in_variant: false,
        }
    }

    fn in_variant(mut self) -> Self {
        self.in_variant = true;
        self
    }

    /// The comma before every element but the first.
    #[inline(always)]
    fn separate(&mut self) -> Result {
        if self.closed {
            // It said it had no elements, and has one: serde_json's bytes for that
            // are its own to write.
            return Err(StartOver);
        }
        if !std::mem::take(&mut self.first) {
            self.writer.out.push(b',');
        }
        Ok(())
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        self.separate()?;
        value.serialize(&mut *self.writer)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result {
        self.separate()?;
        self.writer.string(key)?;
        self.writer.out.push(b':');
        value.serialize(&mut *self.writer)
    }

    #[inline(always)]
    fn finish(self) -> Result {
        if !self.closed {
            self.writer.out.push(self.close);
        }
        if self.in_variant {
            self.writer.out.push(b'}');
        }
        Ok(())
    }
}

impl<'w, 'v> ser::Serializer for &'w mut Writer<'v> {
    type Ok = ();
    type Error = StartOver;
    type SerializeSeq = Compound<'w, 'v>;
    type SerializeTuple = Compound<'w, 'v>;
    type SerializeTupleStruct = Compound<'w, 'v>;
    type SerializeTupleVariant = Compound<'w, 'v>;
    type SerializeMap = Compound<'w, 'v>;
    type SerializeStruct = Compound<'w, 'v>;
    type SerializeStructVariant = Compound<'w, 'v>;

    fn serialize_bool(self, v: bool) -> Result {
        self.format(|f, out| f.write_bool(out, v))
    }
    fn serialize_i8(self, v: i8) -> Result {
        self.format(|f, out| f.write_i8(out, v))
    }
    fn serialize_i16(self, v: i16) -> Result {
        self.format(|f, out| f.write_i16(out, v))
    }
    fn serialize_i32(self, v: i32) -> Result {
        self.format(|f, out| f.write_i32(out, v))
    }
    fn serialize_i64(self, v: i64) -> Result {
        self.format(|f, out| f.write_i64(out, v))
    }
    fn serialize_i128(self, v: i128) -> Result {
        self.format(|f, out| f.write_i128(out, v))
    }
    fn serialize_u8(self, v: u8) -> Result {
        self.format(|f, out| f.write_u8(out, v))
    }
    fn serialize_u16(self, v: u16) -> Result {
        self.format(|f, out| f.write_u16(out, v))
    }
    fn serialize_u32(self, v: u32) -> Result {
        self.format(|f, out| f.write_u32(out, v))
    }
    fn serialize_u64(self, v: u64) -> Result {
        self.format(|f, out| f.write_u64(out, v))
    }
    fn serialize_u128(self, v: u128) -> Result {
        self.format(|f, out| f.write_u128(out, v))
    }
    fn serialize_f32(self, v: f32) -> Result {
        if !v.is_finite() {
            return self.serialize_unit();
        }
        self.format(|f, out| f.write_f32(out, v))
    }
    fn serialize_f64(self, v: f64) -> Result {
        if !v.is_finite() {
            return self.serialize_unit();
        }
        self.format(|f, out| f.write_f64(out, v))
    }
    fn serialize_char(self, v: char) -> Result {
        self.string(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result {
        self.string(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result {
        self.format(|f, out| f.write_byte_array(out, v))
    }
    fn serialize_none(self) -> Result {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &str) -> Result {
        self.string(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result {
        self.begin_variant(variant)?;
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'w, 'v>> {
        Ok(Compound::open(self, len, *b"[]"))
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'w, 'v>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Compound<'w, 'v>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'w, 'v>> {
        self.variant_compound(variant, len, *b"[]")
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'w, 'v>> {
        Ok(Compound::open(self, len, *b"{}"))
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Compound<'w, 'v>> {
        if name.starts_with(SERDE_JSON_PRIVATE) {
            return Err(StartOver);
        }
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'w, 'v>> {
        self.variant_compound(variant, len, *b"{}")
    }
    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result {
        self.string(&displayed(value)?)
    }
}

/// The traits serde splits compounds into by shape: each call writes an element, or a
/// field, of the `Compound`.
macro_rules! compound_traits {
    ($($trait:ident::$method:ident($($key:ident: $key_type:ty)?) => $write:ident;)+) => {$(
        impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = StartOver;
            fn $method<T: Serialize + ?Sized>(&mut self, $($key: $key_type,)? value: &T) -> Result {
                self.$write($($key,)? value)
            }
            fn end(self) -> Result {
                self.finish()
            }
        }
    )+};
}

compound_traits! {
    SerializeSeq::serialize_element() => element;
    SerializeTuple::serialize_element() => element;
    SerializeTupleStruct::serialize_field() => element;
    SerializeTupleVariant::serialize_field() => element;
    SerializeStruct::serialize_field(key: &'static str) => field;
    SerializeStructVariant::serialize_field(key: &'static str) => field;
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = StartOver;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result {
        self.separate()?;
        key.serialize(MapKey {
            writer: &mut *self.writer,
        })?;
        self.writer.out.push(b':');
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result {
        value.serialize(&mut *self.writer)
    }
    fn end(self) -> Result {
        self.finish()
    }
}

/// A map's key: a string, or an integer, a bool or a char written as one, as serde_json
/// writes them; any other key is left to serde_json.
struct MapKey<'w, 'v> {
    writer: &'w mut Writer<'v>,
}

impl MapKey<'_, '_> {
    /// A number or bool written inside quotes.
    fn quoted(
        self,
        write: impl FnOnce(&mut CompactFormatter, &mut Vec<u8>) -> std::io::Result<()>,
    ) -> Result {
        self.writer.out.push(b'"');
        self.writer.format(write)?;
        self.writer.out.push(b'"');
        Ok(())
    }
}

impl ser::Serializer for MapKey<'_, '_> {
    type Ok = ();
    type Error = StartOver;
    type SerializeSeq = ser::Impossible<(), StartOver>;
    type SerializeTuple = ser::Impossible<(), StartOver>;
    type SerializeTupleStruct = ser::Impossible<(), StartOver>;
    type SerializeTupleVariant = ser::Impossible<(), StartOver>;
    type SerializeMap = ser::Impossible<(), StartOver>;
    type SerializeStruct = ser::Impossible<(), StartOver>;
    type SerializeStructVariant = ser::Impossible<(), StartOver>;

    fn serialize_str(self, v: &str) -> Result {
        self.writer.string(v)
    }
    fn serialize_char(self, v: char) -> Result {
        self.writer.string(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &str) -> Result {
        self.writer.string(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result {
        value.serialize(self)
    }
    fn serialize_bool(self, v: bool) -> Result {
        self.quoted(|f, out| f.write_bool(out, v))
    }
    fn serialize_i8(self, v: i8) -> Result {
        self.quoted(|f, out| f.write_i8(out, v))
    }
    fn serialize_i16(self, v: i16) -> Result {
        self.quoted(|f, out| f.write_i16(out, v))
    }
    fn serialize_i32(self, v: i32) -> Result {
        self.quoted(|f, out| f.write_i32(out, v))
    }
    fn serialize_i64(self, v: i64) -> Result {
        self.quoted(|f, out| f.write_i64(out, v))
    }
    fn serialize_i128(self, v: i128) -> Result {
        self.quoted(|f, out| f.write_i128(out, v))
    }
    fn serialize_u8(self, v: u8) -> Result {
        self.quoted(|f, out| f.write_u8(out, v))
    }
    fn serialize_u16(self, v: u16) -> Result {
        self.quoted(|f, out| f.write_u16(out, v))
    }
    fn serialize_u32(self, v: u32) -> Result {
        self.quoted(|f, out| f.write_u32(out, v))
    }
    fn serialize_u64(self, v: u64) -> Result {
        self.quoted(|f, out| f.write_u64(out, v))
    }
    fn serialize_u128(self, v: u128) -> Result {
        self.quoted(|f, out| f.write_u128(out, v))
    }

    // The rest is serde_json's to write, or to refuse.
    fn serialize_f32(self, _: f32) -> Result {
        Err(StartOver)
    }
    fn serialize_f64(self, _: f64) -> Result {
        Err(StartOver)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result {
        Err(StartOver)
    }
    fn serialize_none(self) -> Result {
        Err(StartOver)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result {
        Err(StartOver)
    }
    fn serialize_unit(self) -> Result {
        Err(StartOver)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result {
        Err(StartOver)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result {
        Err(StartOver)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(StartOver)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
        Err(StartOver)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(StartOver)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(StartOver)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap> {
        Err(StartOver)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct> {
        Err(StartOver)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(StartOver)
    }
    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result {
        self.writer.string(&displayed(value)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::ser::{SerializeMap, SerializeSeq, Serializer};
    use serde::Serialize;
    use serde_json::{json, Value};

    use super::*;
    use crate::json_text::random::{self, Stream};

    /// Written by this writer, without starting over: the same bytes as serde_json.
    #[track_caller]
    fn written_here<T: Serialize + ?Sized>(value: &T) -> String {
        let mut out = b"kept".to_vec();
        value
            .serialize(&mut Writer { out: &mut out })
            .expect("written here, not left to serde_json");
        let expected = serde_json::to_string(value).unwrap();
        let written = String::from_utf8(out[4..].to_vec()).unwrap();
        assert_eq!(written, expected);
        written
    }

    /// Left to serde_json, with its bytes (or its error) as the result.
    #[track_caller]
    fn started_over<T: Serialize + ?Sized>(value: &T) {
        let mut here = Vec::new();
        assert!(value.serialize(&mut Writer { out: &mut here }).is_err());
        let mut out = b"kept".to_vec();
        match (write(&mut out, value), serde_json::to_vec(value)) {
            (Ok(()), Ok(expected)) => assert_eq!(out[4..], expected[..]),
            (Err(e), Err(expected)) => assert_eq!(e.to_string(), expected.to_string()),
            (got, expected) => panic!("wrote {got:?}, serde_json {expected:?}"),
        }
        assert_eq!(&out[..4], b"kept");
    }

    #[derive(Serialize)]
    struct Scalars {
        yes: bool,
        i8: i8,
        i16: i16,
        i32: i32,
        i64: i64,
        i128: i128,
        u8: u8,
        u16: u16,
        u32: u32,
        u64: u64,
        u128: u128,
        f32: f32,
        f64: f64,
        nan: f64,
        infinite: f32,
        negative_zero: f64,
        char: char,
        quote_char: char,
        unit: (),
        none: Option<String>,
        some: Option<u8>,
    }

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize)]
    struct Newtype(String);

    #[derive(Serialize)]
    struct Pair(u8, &'static str);

    #[derive(Serialize)]
    struct NoFields {}

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Newtype(u32),
        Tuple(u8, String),
        EmptyTuple(),
        Struct { side: f64, label: &'static str },
        EmptyStruct {},
    }

    #[derive(Serialize)]
    #[serde(tag = "type")]
    enum Tagged {
        Struct { value: u8 },
        Unit,
        Newtype(NoFields),
    }

    #[derive(Serialize)]
    #[serde(tag = "t", content = "c")]
    enum Adjacent {
        Tuple(u8, u8),
        Unit,
    }

    #[derive(Serialize)]
    #[serde(untagged)]
    enum Untagged {
        Number(i64),
        Text(String),
    }

    #[derive(Serialize)]
    struct Flattened {
        id: u32,
        #[serde(flatten)]
        extra: BTreeMap<String, Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        #[serde(rename = "with space \"quoted\"")]
        renamed: bool,
    }

    #[test]
    fn the_common_shapes_are_written_as_serde_json_writes_them() {
        written_here(&Scalars {
            yes: true,
            i8: -8,
            i16: i16::MIN,
            i32: -32,
            i64: i64::MAX,
            i128: i128::MIN,
            u8: 255,
            u16: 16,
            u32: u32::MAX,
            u64: 0,
            u128: u128::MAX,
            f32: 0.1,
            f64: 1e300,
            nan: f64::NAN,
            infinite: f32::NEG_INFINITY,
            negative_zero: -0.0,
            char: 'é',
            quote_char: '"',
            unit: (),
            none: None,
            some: Some(3),
        });
        written_here(&Unit);
        written_here(&Newtype("inner".into()));
        written_here(&Pair(1, "two"));
        written_here(&NoFields {});
        for shape in [
            Shape::Unit,
            Shape::Newtype(7),
            Shape::Tuple(1, "x".into()),
            Shape::EmptyTuple(),
            Shape::Struct {
                side: 2.5,
                label: "sq",
            },
            Shape::EmptyStruct {},
        ] {
            written_here(&shape);
        }
        written_here(&vec![Shape::Unit, Shape::Newtype(1)]);
        for tagged in [
            Tagged::Struct { value: 1 },
            Tagged::Unit,
            Tagged::Newtype(NoFields {}),
        ] {
            written_here(&tagged);
        }
        written_here(&Adjacent::Tuple(1, 2));
        written_here(&Adjacent::Unit);
        written_here(&[Untagged::Number(-1), Untagged::Text("t".into())]);
        written_here(&Flattened {
            id: 9,
            extra: BTreeMap::from([
                ("a".into(), json!([1, {"b": null}])),
                ("c".into(), json!("")),
            ]),
            skipped: None,
            renamed: false,
        });
        written_here(&Vec::<u8>::new());
        written_here(&vec![1u8, 2, 3]);
        written_here(&(1, "tuple", [0.5f32; 2]));
        written_here(&BTreeMap::<String, u8>::new());
        written_here(&HashMap::from([(1i64, "one")]));
        written_here(&BTreeMap::from([(true, 1), (false, 0)]));
        written_here(&BTreeMap::from([('k', [(); 0])]));
        written_here(&BTreeMap::from([(u128::MAX, ()), (0, ())]));
        written_here(&BTreeMap::from(
            [(Shape::Unit, 1)].map(|(k, v)| (Key(k), v)),
        ));
        written_here(&json!({"nested": {"deeper": [[], {}, [null, true, 1.5, -2, "s"]]}}));
    }

    /// A map key that is an enum's unit variant, ordered by nothing.
    #[derive(Serialize)]
    struct Key(Shape);

    impl PartialEq for Key {
        fn eq(&self, _: &Self) -> bool {
            true
        }
    }
    impl Eq for Key {}
    impl PartialOrd for Key {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Key {
        fn cmp(&self, _: &Self) -> std::cmp::Ordering {
            std::cmp::Ordering::Equal
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut texts: Vec<String> = (0u8..0x80).map(|b| (b as char).to_string()).collect();
        texts.extend(
            [
                "",
                "plain",
                "é ünïcode ✓ 😀",
                "\u{2028}\u{2029}\u{7f}",
                "a\"quote",
                "back\\slash",
                "tab\tnew\nline\r",
                "/slash/",
            ]
            .map(String::from),
        );
        // Every length up to a few words, with each of the escaped kinds of byte at
        // each place, and with none.
        for len in 0..40 {
            texts.push("y".repeat(len));
            for at in 0..len {
                for escaped in ["\u{1}", "\u{1f}", "\"", "\\"] {
                    let mut text = "x".repeat(len);
                    text.replace_range(at..at + 1, escaped);
                    texts.push(text);
                }
            }
        }
        for text in &texts {
            written_here(text);
            written_here(&BTreeMap::from([(text.clone(), text.clone())]));
        }
    }

    /// A value that says what it is only through its `Display`.
    struct Displayed(&'static str);

    impl Serialize for Displayed {
        fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
            serializer.collect_str(self.0)
        }
    }

    /// Raw bytes.
    struct Raw(&'static [u8]);

    impl Serialize for Raw {
        fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    #[test]
    fn displayed_values_and_bytes_are_written_as_serde_json_writes_them() {
        written_here(&Displayed("shown \"as\" text\n"));
        written_here(&BTreeMap::from([(1, Displayed("key"))]));
        written_here(&Raw(&[]));
        written_here(&Raw(&[0, 127, 255]));
    }

    /// A `Serialize` that fails with its own message.
    struct Failing;

    impl Serialize for Failing {
        fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(None)?;
            seq.serialize_element("before")?;
            Err(ser::Error::custom("this payload refuses"))
        }
    }

    /// A map keyed by floats, which serde_json quotes or refuses.
    struct FloatKeys(&'static [f64]);

    impl Serialize for FloatKeys {
        fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for key in self.0 {
                map.serialize_entry(key, "v")?;
            }
            map.end()
        }
    }

    /// A sequence that says it is empty, and is not.
    struct Lying;

    impl Serialize for Lying {
        fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(Some(0))?;
            seq.serialize_element(&1)?;
            seq.end()
        }
    }

    #[test]
    fn what_this_writer_leaves_gets_serde_json_bytes_or_error() {
        started_over(&Failing);
        started_over(&FloatKeys(&[1.5]));
        started_over(&FloatKeys(&[f64::NAN]));
        started_over(&BTreeMap::from([((1, 2), "tuple key")]));
        started_over(&BTreeMap::from([(Some("k"), "option key")]));
        started_over(
            &vec![json!(1), json!("fine"), json!({"x": 1})]
                .into_iter()
                .map(Some)
                .chain([None])
                .map(|v| (v, Lying))
                .collect::<Vec<_>>(),
        );
        let mut out = Vec::new();
        let error = write(&mut out, &Failing).unwrap_err();
        assert_eq!(error.to_string(), "this payload refuses");
        assert!(out.is_empty(), "nothing of a failed payload is kept");
    }

    #[test]
    fn random_values_are_written_as_serde_json_writes_them() {
        let mut stream = Stream(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            written_here(&random::value(&mut stream, 4));
        }
    }
}
