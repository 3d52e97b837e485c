//! Metadata values: the 13 GGUF value types, typed arrays (nested too), their decoding and
//! encoding, and [`Metadata`], the ordered key → value table.
//!
//! Type ids and names follow llama.cpp's `enum gguf_type` and `GGUF_TYPE_NAME`. Bools must be
//! 0 or 1: llama.cpp reads any nonzero byte as true, but every writer emits 0/1, so another
//! byte means a corrupt file; rejecting it also keeps read → write byte-exact.

use std::collections::HashMap;

use crate::cursor::{vec_for, Cursor};
use crate::error::{Error, Result};

/// Arrays nested deeper than this are rejected, so a forged file cannot overflow the stack.
/// No real model nests arrays at all.
pub const MAX_ARRAY_DEPTH: u32 = 64;

/// A GGUF metadata value type, with its on-disk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // variants are the GGUF types of the same name; `name()` documents them
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

/// All value types in id order, so `ALL[id]` is the type with that id.
const ALL: [ValueType; 13] = [
    ValueType::U8,
    ValueType::I8,
    ValueType::U16,
    ValueType::I16,
    ValueType::U32,
    ValueType::I32,
    ValueType::F32,
    ValueType::Bool,
    ValueType::String,
    ValueType::Array,
    ValueType::U64,
    ValueType::I64,
    ValueType::F64,
];

impl ValueType {
    /// The type with GGUF id `id`.
    pub fn from_id(id: u32) -> Option<ValueType> {
        ALL.get(id as usize).copied()
    }

    /// The GGUF id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// llama.cpp's name for the type (`GGUF_TYPE_NAME`).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "str",
            ValueType::Array => "arr",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// Bytes of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<u64> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// The fewest bytes one value can take: a string is at least its u64 length, an array at
    /// least its u32 type and u64 count. Used to reject forged counts before allocating.
    fn min_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            fixed => fixed.fixed_size().unwrap_or(1),
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)] // one variant per GGUF value type
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Array),
}

/// A metadata array: every element has the same type; elements of an array of arrays each
/// carry their own element type.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)] // one variant per GGUF value type
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
}

impl Value {
    /// This value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// Any integer that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float, or an integer converted to f64 (exact up to 2^53).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F32(_) => ValueType::F32,
            Array::F64(_) => ValueType::F64,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
        }
    }

    /// The elements, if this is an array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }
}

/// Ordered metadata: key → value, in file order, keys unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty table.
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Appends `key`; gives the value back if the key is already present.
    pub fn insert(&mut self, key: String, value: Value) -> std::result::Result<(), Value> {
        if self.index.contains_key(&key) {
            return Err(value);
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The string value of `key`.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// The value of `key` if it is an integer (any width or sign) that fits in u64.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// The value of `key` if it is an integer that fits in i64.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// The value of `key` if it is a float or an integer.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    /// The bool value of `key`.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// The array value of `key`.
    pub fn get_array(&self, key: &str) -> Option<&Array> {
        self.get(key)?.as_array()
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Entries in file order, as the writer takes them.
    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads a u32 value type id.
pub(crate) fn read_type(c: &mut Cursor<'_>, what: &'static str) -> Result<ValueType> {
    let offset = c.pos();
    let id = c.u32(what)?;
    ValueType::from_id(id).ok_or(Error::UnknownValueType { offset, id })
}

/// Reads one value of type `ty`; `depth` counts enclosing arrays.
pub(crate) fn read_value(c: &mut Cursor<'_>, ty: ValueType, depth: u32) -> Result<Value> {
    const W: &str = "metadata value";
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8(W)?),
        ValueType::I8 => Value::I8(c.u8(W)? as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(W)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(W)?)),
        ValueType::U32 => Value::U32(c.u32(W)?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(W)?)),
        ValueType::U64 => Value::U64(c.u64(W)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(W)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(W)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(W)?)),
        ValueType::Bool => {
            let offset = c.pos();
            Value::Bool(bool_from(c.u8(W)?, offset)?)
        }
        ValueType::String => Value::String(c.string("metadata string")?),
        ValueType::Array => Value::Array(read_array(c, depth + 1)?),
    })
}

fn bool_from(byte: u8, offset: u64) -> Result<bool> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::InvalidBool { offset, byte }),
    }
}

/// Reads an array body: element type, count, elements. `depth` is this array's nesting level
/// (1 for an array that is a key's value).
pub(crate) fn read_array(c: &mut Cursor<'_>, depth: u32) -> Result<Array> {
    let start = c.pos();
    if depth > MAX_ARRAY_DEPTH {
        return Err(Error::NestingTooDeep {
            offset: start,
            max: MAX_ARRAY_DEPTH,
        });
    }
    let ty = read_type(c, "array element type")?;
    let n = c.count(ty.min_size(), "array element")?;
    if let Some(size) = ty.fixed_size() {
        // count() proved n * size <= remaining, so this cannot overflow or over-allocate.
        let data_offset = c.pos();
        let raw = c.take(n * size, "array elements")?;
        return decode_fixed(ty, raw, data_offset);
    }
    if ty == ValueType::String {
        let mut v = vec_for(n);
        for _ in 0..n {
            v.push(c.string("array string")?);
        }
        return Ok(Array::String(v));
    }
    let mut v = vec_for(n);
    for _ in 0..n {
        v.push(read_array(c, depth + 1)?);
    }
    Ok(Array::Array(v))
}

/// Decodes a packed run of fixed-size little-endian values.
fn decode_fixed(ty: ValueType, raw: &[u8], offset: u64) -> Result<Array> {
    fn le<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|ch| {
                let mut a = [0u8; N];
                a.copy_from_slice(ch);
                f(a)
            })
            .collect()
    }
    Ok(match ty {
        ValueType::U8 => Array::U8(raw.to_vec()),
        ValueType::I8 => Array::I8(raw.iter().map(|&b| b as i8).collect()),
        ValueType::U16 => Array::U16(le(raw, u16::from_le_bytes)),
        ValueType::I16 => Array::I16(le(raw, i16::from_le_bytes)),
        ValueType::U32 => Array::U32(le(raw, u32::from_le_bytes)),
        ValueType::I32 => Array::I32(le(raw, i32::from_le_bytes)),
        ValueType::U64 => Array::U64(le(raw, u64::from_le_bytes)),
        ValueType::I64 => Array::I64(le(raw, i64::from_le_bytes)),
        ValueType::F32 => Array::F32(le(raw, f32::from_le_bytes)),
        ValueType::F64 => Array::F64(le(raw, f64::from_le_bytes)),
        ValueType::Bool => Array::Bool(
            raw.iter()
                .enumerate()
                .map(|(i, &b)| bool_from(b, offset + i as u64))
                .collect::<Result<_>>()?,
        ),
        ValueType::String | ValueType::Array => Array::Array(Vec::new()),
    })
}

/// Appends a GGUF string.
pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Value {
    /// Appends the value type id and the value, as a key's value is stored.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend(self.value_type().id().to_le_bytes());
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend(v.to_le_bytes()),
            Value::U16(v) => out.extend(v.to_le_bytes()),
            Value::I16(v) => out.extend(v.to_le_bytes()),
            Value::U32(v) => out.extend(v.to_le_bytes()),
            Value::I32(v) => out.extend(v.to_le_bytes()),
            Value::U64(v) => out.extend(v.to_le_bytes()),
            Value::I64(v) => out.extend(v.to_le_bytes()),
            Value::F32(v) => out.extend(v.to_le_bytes()),
            Value::F64(v) => out.extend(v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => encode_str(s, out),
            Value::Array(a) => a.encode(out),
        }
    }
}

impl Array {
    /// Appends the element type, the count and the elements.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        fn each<T: Copy, const N: usize>(v: &[T], out: &mut Vec<u8>, f: fn(T) -> [u8; N]) {
            out.extend((v.len() as u64).to_le_bytes());
            for &x in v {
                out.extend(f(x));
            }
        }
        out.extend(self.elem_type().id().to_le_bytes());
        match self {
            Array::U8(v) => each(v, out, u8::to_le_bytes),
            Array::I8(v) => each(v, out, i8::to_le_bytes),
            Array::U16(v) => each(v, out, u16::to_le_bytes),
            Array::I16(v) => each(v, out, i16::to_le_bytes),
            Array::U32(v) => each(v, out, u32::to_le_bytes),
            Array::I32(v) => each(v, out, i32::to_le_bytes),
            Array::U64(v) => each(v, out, u64::to_le_bytes),
            Array::I64(v) => each(v, out, i64::to_le_bytes),
            Array::F32(v) => each(v, out, f32::to_le_bytes),
            Array::F64(v) => each(v, out, f64::to_le_bytes),
            Array::Bool(v) => each(v, out, |b| [u8::from(b)]),
            Array::String(v) => {
                out.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|s| encode_str(s, out));
            }
            Array::Array(v) => {
                out.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|a| a.encode(out));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: &Value) -> Result<Value> {
        let mut buf = Vec::new();
        v.encode(&mut buf);
        let mut c = Cursor::new(&buf);
        let ty = read_type(&mut c, "t")?;
        let out = read_value(&mut c, ty, 0)?;
        assert_eq!(c.remaining(), 0);
        Ok(out)
    }

    #[test]
    fn every_type_roundtrips() {
        let nested = Array::Array(vec![Array::U8(vec![1, 2]), Array::String(vec!["x".into()])]);
        for v in [
            Value::U8(1),
            Value::I8(-2),
            Value::U16(3),
            Value::I16(-4),
            Value::U32(5),
            Value::I32(-6),
            Value::U64(7),
            Value::I64(-8),
            Value::F32(1.5),
            Value::F64(-2.25),
            Value::Bool(true),
            Value::String("héllo".into()),
            Value::Array(Array::Bool(vec![true, false])),
            Value::Array(nested),
        ] {
            assert_eq!(roundtrip(&v).ok(), Some(v));
        }
    }

    #[test]
    fn ids_and_names_match_llama_cpp() {
        assert_eq!(ValueType::from_id(8), Some(ValueType::String));
        assert_eq!(ValueType::String.name(), "str");
        assert_eq!(ValueType::from_id(12).map(ValueType::id), Some(12));
        assert_eq!(ValueType::from_id(13), None);
    }

    #[test]
    fn bad_bool_and_deep_nesting_are_errors() {
        let mut buf = 7u32.to_le_bytes().to_vec();
        buf.push(2);
        let mut c = Cursor::new(&buf);
        let ty = read_type(&mut c, "t").ok();
        assert!(matches!(
            ty.map(|t| read_value(&mut c, t, 0)),
            Some(Err(Error::InvalidBool { offset: 4, byte: 2 }))
        ));

        let mut deep = Vec::new();
        for _ in 0..=MAX_ARRAY_DEPTH {
            deep.extend(9u32.to_le_bytes());
            deep.extend(1u64.to_le_bytes());
        }
        deep.extend(0u32.to_le_bytes());
        deep.extend(0u64.to_le_bytes());
        assert!(matches!(
            read_array(&mut Cursor::new(&deep), 1),
            Err(Error::NestingTooDeep { .. })
        ));
    }

    #[test]
    fn getters_convert_between_widths() {
        let mut m = Metadata::new();
        assert!(m.insert("a".into(), Value::I32(7)).is_ok());
        assert!(m.insert("b".into(), Value::I8(-1)).is_ok());
        assert!(m.insert("c".into(), Value::F32(0.5)).is_ok());
        assert!(m.insert("a".into(), Value::U8(0)).is_err());
        assert_eq!(m.get_u64("a"), Some(7));
        assert_eq!(m.get_u64("b"), None);
        assert_eq!(m.get_i64("b"), Some(-1));
        assert_eq!(m.get_f64("c"), Some(0.5));
        assert_eq!(m.get_f64("a"), Some(7.0));
        assert_eq!(m.get_str("a"), None);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }
}
