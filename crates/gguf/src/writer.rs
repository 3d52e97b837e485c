//! [`GgufWriter`]: writes a GGUF v3 file in one pass with tensor data streamed in.
//!
//! Shapes and types are declared up front, so every tensor's offset is known before any data
//! arrives: the header, metadata and tensor table go out first, then the caller feeds tensor
//! data in table order in chunks of any size. Memory use is the header plus the caller's
//! chunk, whatever the file size. The layout matches gguf-py's `GGUFWriter` and llama.cpp's
//! `gguf_write_to_file` byte for byte: tensors packed in table order, each padded with zeros to
//! the alignment (the last one too), data section starting at the next aligned offset.

use std::collections::HashSet;
use std::io::Write;

use crate::error::{Error, Result};
use crate::header::{alignment_from, tensor_size, ALIGNMENT_KEY, GGUF_MAGIC, MAX_DIMS};
use crate::types::GgmlType;
use crate::value::{encode_str, Value};

/// The version written.
const WRITE_VERSION: u32 = 3;
/// ggml keeps tensor names in `char name[64]` with a terminating NUL.
const MAX_NAME_LEN: usize = 63;

/// A tensor to be written: name, type and shape (ggml `ne` order, row length first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// Dimensions, ggml `ne` order.
    pub dims: Vec<u64>,
}

impl TensorSpec {
    /// A spec from its parts.
    pub fn new(name: impl Into<String>, ty: GgmlType, dims: impl Into<Vec<u64>>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            ty,
            dims: dims.into(),
        }
    }
}

/// Streams a GGUF file to `W`. Wrap files in a `BufWriter`; after any `Err` the output is
/// incomplete and the writer should be dropped.
#[derive(Debug)]
pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<TensorSpec>,
    sizes: Vec<u64>,
    alignment: u64,
    /// Index of the tensor being filled; `tensors.len()` once all are complete.
    current: usize,
    /// Bytes written so far to the current tensor.
    written: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Validates `metadata` and `tensors`, then writes everything before the tensor data.
    ///
    /// The alignment comes from a `general.alignment` entry (must be a u32 power of two),
    /// else 32. Fails on empty or duplicate keys, duplicate names, names over 63 bytes, more
    /// than 4 dims, rows that are not whole blocks, and sizes that overflow. Arrays of arrays
    /// are written as given, but note llama.cpp refuses to load them (gguf-py reads them).
    pub fn new(mut out: W, metadata: &[(String, Value)], tensors: &[TensorSpec]) -> Result<Self> {
        let align_value = metadata
            .iter()
            .find(|(k, _)| k == ALIGNMENT_KEY)
            .map(|(_, v)| v);
        let alignment = alignment_from(align_value, 0)?;
        let sizes = check_tensors(tensors)?;
        let mut head = Vec::new();
        head.extend(GGUF_MAGIC.to_le_bytes());
        head.extend(WRITE_VERSION.to_le_bytes());
        head.extend((tensors.len() as u64).to_le_bytes());
        head.extend((metadata.len() as u64).to_le_bytes());
        let mut keys = HashSet::new();
        for (key, value) in metadata {
            if key.is_empty() {
                return Err(Error::EmptyKey { offset: 0 });
            }
            if !keys.insert(key.as_str()) {
                return Err(Error::DuplicateKey {
                    offset: 0,
                    key: key.clone(),
                });
            }
            encode_str(key, &mut head);
            value.encode(&mut head);
        }
        let mut offset = 0u64;
        for (t, &size) in tensors.iter().zip(&sizes) {
            encode_str(&t.name, &mut head);
            head.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| head.extend(d.to_le_bytes()));
            head.extend(t.ty.id().to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = padded(size, alignment)
                .and_then(|s| offset.checked_add(s))
                .ok_or_else(|| overflow(t))?;
        }
        let head_len = head.len() as u64;
        out.write_all(&head)
            .map_err(|source| Error::Write { source })?;
        let mut w = GgufWriter {
            out,
            tensors: tensors.to_vec(),
            sizes,
            alignment,
            current: 0,
            written: 0,
        };
        w.pad(head_len)?;
        w.skip_empty()?;
        Ok(w)
    }

    /// Appends `bytes` to the current tensor's data, moving on to the next tensor (with
    /// padding) whenever one is full. Chunks may span tensors. Fails if `bytes` runs past the
    /// last declared tensor.
    pub fn write_data(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some(&size) = self.sizes.get(self.current) else {
                return Err(Error::TooMuchData {
                    extra: bytes.len() as u64,
                });
            };
            let room = size - self.written;
            let n = usize::try_from(room).map_or(bytes.len(), |r| r.min(bytes.len()));
            let (now, rest) = bytes.split_at(n);
            self.out
                .write_all(now)
                .map_err(|source| Error::Write { source })?;
            self.written += n as u64;
            bytes = rest;
            if self.written == size {
                self.pad(size)?;
                self.current += 1;
                self.written = 0;
                self.skip_empty()?;
            }
        }
        Ok(())
    }

    /// The tensor the next `write_data` bytes go to; `None` once all data is written.
    pub fn current_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.current)
    }

    /// The data alignment in use.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Checks every declared byte was written, flushes, and returns the output.
    pub fn finish(mut self) -> Result<W> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(Error::MissingData {
                name: t.name.clone(),
                written: self.written,
                declared: self.sizes[self.current],
            });
        }
        self.out.flush().map_err(|source| Error::Write { source })?;
        Ok(self.out)
    }

    /// Zero tensors need no data: step past them (their padding is zero bytes).
    fn skip_empty(&mut self) -> Result<()> {
        while self.sizes.get(self.current) == Some(&0) {
            self.current += 1;
        }
        Ok(())
    }

    /// Writes zeros from `len` up to the next multiple of the alignment.
    fn pad(&mut self, len: u64) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut left = len.next_multiple_of(self.alignment) - len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            self.out
                .write_all(&ZEROS[..n as usize])
                .map_err(|source| Error::Write { source })?;
            left -= n;
        }
        Ok(())
    }
}

/// Validates every spec and returns the byte sizes.
fn check_tensors(tensors: &[TensorSpec]) -> Result<Vec<u64>> {
    let mut names = HashSet::new();
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.name.len() > MAX_NAME_LEN {
            return Err(Error::NameTooLong {
                name: t.name.clone(),
                len: t.name.len(),
            });
        }
        if t.dims.len() > MAX_DIMS {
            return Err(Error::TooManyDims {
                offset: 0,
                name: t.name.clone(),
                n_dims: t.dims.len() as u64,
            });
        }
        if !names.insert(t.name.as_str()) {
            return Err(Error::DuplicateTensor {
                offset: 0,
                name: t.name.clone(),
            });
        }
        sizes.push(tensor_size(&t.name, &t.dims, t.ty, 0)?.1);
    }
    Ok(sizes)
}

fn padded(size: u64, alignment: u64) -> Option<u64> {
    size.checked_next_multiple_of(alignment)
}

fn overflow(t: &TensorSpec) -> Error {
    Error::ShapeOverflow {
        offset: 0,
        name: t.name.clone(),
        dims: t.dims.clone(),
        ty: t.ty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{sample_file, sample_metadata, sample_tensors};
    use crate::{Array, GgufFile};
    use proptest::prelude::*;

    fn new_err(meta: &[(String, Value)], specs: &[TensorSpec]) -> Error {
        match GgufWriter::new(Vec::new(), meta, specs) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn rejects_bad_specs() {
        let t = |name: &str, ty, dims: &[u64]| TensorSpec::new(name, ty, dims);
        let f32s = |dims: &[u64]| t("w", GgmlType::F32, dims);
        assert!(matches!(
            new_err(&[], &[f32s(&[1; 5])]),
            Error::TooManyDims { n_dims: 5, .. }
        ));
        assert!(matches!(
            new_err(&[], &[f32s(&[1]), f32s(&[2])]),
            Error::DuplicateTensor { .. }
        ));
        assert!(matches!(
            new_err(&[], &[t(&"x".repeat(64), GgmlType::F32, &[1])]),
            Error::NameTooLong { len: 64, .. }
        ));
        assert!(matches!(
            new_err(&[], &[t("q", GgmlType::Q4_K, &[128])]),
            Error::PartialBlock { .. }
        ));
        assert!(matches!(
            new_err(&[], &[f32s(&[1 << 40, 1 << 40])]),
            Error::ShapeOverflow { .. }
        ));
        let big: Vec<TensorSpec> = (0..5)
            .map(|i| t(&format!("t{i}"), GgmlType::F32, &[1 << 60]))
            .collect();
        assert!(
            matches!(new_err(&[], &big), Error::ShapeOverflow { .. }),
            "offsets overflow"
        );
        let kv = |k: &str, v| (k.to_string(), v);
        let dup = [kv("a", Value::U8(1)), kv("a", Value::U8(2))];
        assert!(matches!(new_err(&dup, &[]), Error::DuplicateKey { .. }));
        assert!(matches!(
            new_err(&[kv("", Value::U8(1))], &[]),
            Error::EmptyKey { .. }
        ));
        for bad in [Value::U32(0), Value::U32(24), Value::U64(32)] {
            let e = new_err(&[kv(ALIGNMENT_KEY, bad)], &[]);
            assert!(matches!(e, Error::BadAlignment { .. }));
        }
    }

    #[test]
    fn data_must_match_the_declared_sizes() {
        let specs = [
            TensorSpec::new("a", GgmlType::F32, [2]),
            TensorSpec::new("empty", GgmlType::F32, [0, 4]),
            TensorSpec::new("b", GgmlType::I8, [3]),
        ];
        let mut w = GgufWriter::new(Vec::new(), &[], &specs).expect("valid");
        assert_eq!(w.current_tensor().map(|t| t.name.as_str()), Some("a"));
        w.write_data(&[1; 7]).expect("fits");
        // One chunk finishing "a", skipping "empty", starting "b".
        w.write_data(&[2; 2]).expect("fits");
        assert_eq!(w.current_tensor().map(|t| t.name.as_str()), Some("b"));
        let e = w.write_data(&[3; 5]);
        assert!(matches!(e, Err(Error::TooMuchData { extra: 3 })));

        let mut w = GgufWriter::new(Vec::new(), &[], &specs).expect("valid");
        w.write_data(&[1; 9]).expect("fits");
        let e = w.finish();
        assert!(
            matches!(e, Err(Error::MissingData { ref name, written: 1, declared: 3 }) if name == "b")
        );
    }

    #[test]
    fn layout_matches_gguf_py() {
        // Header, kv, tensor table padded to 32; each tensor padded to 32, the last one too.
        let bytes = sample_file();
        let file = GgufFile::from_bytes(bytes.clone()).expect("valid");
        let offsets: Vec<u64> = file.tensors().iter().map(|t| t.offset).collect();
        assert_eq!(offsets, [0, 32, 256]);
        assert_eq!(bytes.len() as u64, file.data_offset() + 256 + 32);
        assert_eq!(&bytes[..8], b"GGUF\x03\0\0\0");
        assert_eq!(file.metadata().entries(), sample_metadata().as_slice());
        let specs: Vec<TensorSpec> = file
            .tensors()
            .iter()
            .map(|t| TensorSpec::new(t.name.clone(), t.ty, t.dims.clone()))
            .collect();
        assert_eq!(specs, sample_tensors());
    }

    fn finite_f32() -> impl Strategy<Value = f32> {
        use proptest::num::f32 as f;
        f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO | f::INFINITE
    }

    fn finite_f64() -> impl Strategy<Value = f64> {
        use proptest::num::f64 as f;
        f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO | f::INFINITE
    }

    fn array() -> impl Strategy<Value = Array> {
        use proptest::collection::vec;
        let leaf = prop_oneof![
            vec(any::<u8>(), 0..6).prop_map(Array::U8),
            vec(any::<i8>(), 0..6).prop_map(Array::I8),
            vec(any::<u16>(), 0..6).prop_map(Array::U16),
            vec(any::<i16>(), 0..6).prop_map(Array::I16),
            vec(any::<u32>(), 0..6).prop_map(Array::U32),
            vec(any::<i32>(), 0..6).prop_map(Array::I32),
            vec(any::<u64>(), 0..6).prop_map(Array::U64),
            vec(any::<i64>(), 0..6).prop_map(Array::I64),
            vec(finite_f32(), 0..6).prop_map(Array::F32),
            vec(finite_f64(), 0..6).prop_map(Array::F64),
            vec(any::<bool>(), 0..6).prop_map(Array::Bool),
            vec(".{0,8}", 0..6).prop_map(Array::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| vec(inner, 0..4).prop_map(Array::Array))
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u8>().prop_map(Value::U8),
            any::<i8>().prop_map(Value::I8),
            any::<u16>().prop_map(Value::U16),
            any::<i16>().prop_map(Value::I16),
            any::<u32>().prop_map(Value::U32),
            any::<i32>().prop_map(Value::I32),
            any::<u64>().prop_map(Value::U64),
            any::<i64>().prop_map(Value::I64),
            finite_f32().prop_map(Value::F32),
            finite_f64().prop_map(Value::F64),
            any::<bool>().prop_map(Value::Bool),
            ".{0,16}".prop_map(Value::String),
            array().prop_map(Value::Array),
        ]
    }

    /// A tensor of a type from a representative subset, with `ne0` a whole number of blocks.
    fn tensor() -> impl Strategy<Value = (GgmlType, Vec<u64>)> {
        let types = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::I8,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::BF16,
        ];
        (
            proptest::sample::select(types.to_vec()),
            0u64..3,
            proptest::collection::vec(0u64..4, 0..4),
        )
            .prop_map(|(ty, blocks, rest)| {
                let mut dims = vec![blocks * ty.block_size()];
                dims.extend(rest);
                (ty, dims)
            })
    }

    /// Writes, in chunks of `chunk` bytes, data where byte `i` is `i * 7 + seed`.
    fn write_file(
        meta: &[(String, Value)],
        specs: &[TensorSpec],
        chunk: usize,
        seed: u8,
    ) -> Result<Vec<u8>> {
        let mut w = GgufWriter::new(Vec::new(), meta, specs)?;
        let total: u64 = specs
            .iter()
            .map(|t| t.ty.bytes_for(t.dims.iter().product()).unwrap_or(0))
            .sum();
        let data: Vec<u8> = (0..total)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect();
        data.chunks(chunk).try_for_each(|c| w.write_data(c))?;
        w.finish()
    }

    proptest! {
        #[test]
        fn write_then_parse_roundtrips(
            values in proptest::collection::vec(("[a-z.]{1,12}", value()), 0..8),
            shapes in proptest::collection::vec(tensor(), 0..5),
            alignment in proptest::option::of(proptest::sample::select(vec![1u32, 2, 8, 32, 64, 256])),
            chunk in 1usize..300,
            seed: u8,
        ) {
            let mut meta: Vec<(String, Value)> = Vec::new();
            for (k, v) in values {
                if k != ALIGNMENT_KEY && meta.iter().all(|(m, _)| *m != k) {
                    meta.push((k, v));
                }
            }
            if let Some(a) = alignment {
                meta.push((ALIGNMENT_KEY.to_string(), Value::U32(a)));
            }
            let specs: Vec<TensorSpec> = shapes
                .into_iter()
                .enumerate()
                .map(|(i, (ty, dims))| TensorSpec::new(format!("t{i}"), ty, dims))
                .collect();
            let bytes = write_file(&meta, &specs, chunk, seed).expect("valid input");
            let file = GgufFile::from_bytes(bytes.clone()).expect("own output parses");
            prop_assert_eq!(file.metadata().entries(), meta.as_slice());
            prop_assert_eq!(file.alignment(), u64::from(alignment.unwrap_or(32)));
            let mut data = Vec::new();
            for (t, s) in file.tensors().iter().zip(&specs) {
                prop_assert_eq!((&t.name, t.ty, &t.dims), (&s.name, s.ty, &s.dims));
                data.extend_from_slice(file.tensor_data(t));
            }
            let expect: Vec<u8> = (0..data.len()).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect();
            prop_assert_eq!(data, expect);
            // Rewriting what was read gives the same bytes.
            let again = write_file(file.metadata().entries(), &specs, 4096, seed).expect("valid");
            prop_assert_eq!(again, bytes);
        }
    }
}
