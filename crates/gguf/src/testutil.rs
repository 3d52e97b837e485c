//! Test helpers: a byte-level builder for hand-made (and hand-broken) GGUF files, and one
//! small valid file written by [`GgufWriter`] that the tests cut up.

use crate::{Array, GgmlType, GgufWriter, TensorSpec, Value};

/// Appends raw GGUF fields; nothing is validated, so any malformed file can be built.
#[derive(Debug, Default)]
pub(crate) struct Raw {
    pub(crate) buf: Vec<u8>,
}

impl Raw {
    /// Magic, version and the two counts.
    pub(crate) fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.u32(0x4655_4747).u32(version).u64(n_tensors).u64(n_kv);
        r
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Raw {
        self.buf.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Raw {
        self.buf.extend(v.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Raw {
        self.buf.extend(v.to_le_bytes());
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Raw {
        self.u64(s.len() as u64);
        self.buf.extend(s.as_bytes());
        self
    }

    /// A `key: u32` entry.
    pub(crate) fn kv_u32(&mut self, key: &str, v: u32) -> &mut Raw {
        self.str(key).u32(4).u32(v)
    }

    /// A tensor info with a raw type id.
    pub(crate) fn tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        type_id: u32,
        offset: u64,
    ) -> &mut Raw {
        self.str(name).u32(dims.len() as u32);
        dims.iter().for_each(|&d| {
            self.u64(d);
        });
        self.u32(type_id).u64(offset)
    }

    /// Zeros up to a multiple of `align`, then `n` more bytes of data.
    pub(crate) fn data(&mut self, align: usize, n: usize) -> &mut Raw {
        self.buf
            .resize(self.buf.len().next_multiple_of(align) + n, 0);
        self
    }
}

/// Metadata of every value type, nested arrays included.
pub(crate) fn sample_metadata() -> Vec<(String, Value)> {
    let nested = Array::Array(vec![
        Array::I16(vec![-1, 2]),
        Array::Array(vec![Array::Bool(vec![true])]),
    ]);
    [
        ("general.architecture", Value::String("qwen3moe".into())),
        ("a.u8", Value::U8(200)),
        ("a.i8", Value::I8(-100)),
        ("a.u16", Value::U16(60000)),
        ("a.i16", Value::I16(-30000)),
        ("a.u32", Value::U32(4_000_000_000)),
        ("a.i32", Value::I32(-2_000_000_000)),
        ("a.u64", Value::U64(u64::MAX)),
        ("a.i64", Value::I64(i64::MIN)),
        ("a.f32", Value::F32(0.25)),
        ("a.f64", Value::F64(-1e300)),
        ("a.bool", Value::Bool(true)),
        (
            "a.tokens",
            Value::Array(Array::String(vec![
                "<s>".into(),
                "héllo".into(),
                String::new(),
            ])),
        ),
        ("a.scores", Value::Array(Array::F32(vec![0.0, -1.5]))),
        ("a.nested", Value::Array(nested)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Tensors: an f32 matrix, a 3-D q8_0 expert tensor, an i32 vector.
pub(crate) fn sample_tensors() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("token_embd.weight", GgmlType::F32, [4, 2]),
        TensorSpec::new("blk.0.ffn_up_exps.weight", GgmlType::Q8_0, [32, 2, 3]),
        TensorSpec::new("pos", GgmlType::I32, [3]),
    ]
}

/// A small valid file of [`sample_metadata`] and [`sample_tensors`]; byte `i` of the data of
/// tensor `t` is `(t * 50 + i) as u8`.
pub(crate) fn sample_file() -> Vec<u8> {
    let tensors = sample_tensors();
    let mut w = GgufWriter::new(Vec::new(), &sample_metadata(), &tensors).expect("valid specs");
    for (t, spec) in tensors.iter().enumerate() {
        let (_, n) = crate::header::tensor_size(&spec.name, &spec.dims, spec.ty, 0).expect("valid");
        let data: Vec<u8> = (0..n).map(|i| (t as u64 * 50 + i) as u8).collect();
        w.write_data(&data).expect("declared size");
    }
    w.finish().expect("complete")
}
