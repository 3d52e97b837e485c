//! Weights: typed, shape-checked views of a GGUF file's tensors.
//!
//! A [`QTensor`] keeps the file alive (an `Arc`) and its byte range, so models can hold weights
//! without lifetimes and the data stays zero-copy in the memory map. A matrix the matmuls use
//! also gets, on its first matmul, a copy packed eight rows at a time (`quant::Packed`, the
//! layout of the fastest kernels); lookups of single rows (embeddings) keep reading the map.

use std::sync::{Arc, OnceLock};

use gguf::{GgmlType, GgufFile};

use crate::error::{Error, Result};

/// One tensor of a GGUF file: type, shape (GGUF `ne` order) and its bytes in the map.
#[derive(Clone, Debug)]
pub struct QTensor {
    file: Arc<GgufFile>,
    /// The GGUF name, for errors and dumps.
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// Shape, contiguous dimension first.
    pub dims: Vec<u64>,
    index: usize,
    /// The packed copy, made by the first [`QTensor::packed`] (shared by clones).
    packed: Arc<OnceLock<Option<quant::Packed>>>,
}

impl QTensor {
    /// The raw bytes.
    pub fn data(&self) -> &[u8] {
        self.file.tensor_data(&self.file.tensors()[self.index])
    }

    /// Elements per row (`ne0`).
    pub fn row_len(&self) -> usize {
        self.dims[0] as usize
    }

    /// Number of rows (product of the other dims).
    pub fn n_rows(&self) -> usize {
        self.dims[1..].iter().product::<u64>() as usize
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.bytes_for(self.dims[0]).unwrap_or(0) as usize
    }

    /// Row `r` dequantized into `out` (`row_len` values).
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let rb = self.row_bytes();
        let bytes = self
            .data()
            .get(r * rb..(r + 1) * rb)
            .ok_or_else(|| Error::BadShape {
                name: self.name.clone(),
                expected: vec![self.dims[0], r as u64 + 1],
                found: self.dims.clone(),
            })?;
        quant::dequantize(self.ty, bytes, out)?;
        Ok(())
    }

    /// The first `8·⌊n_rows / 8⌋` rows packed for `quant::gemm_packed`, packed on first use
    /// by `pack` (which gets the row bytes and returns the packed copy); `None` where the type
    /// has no packed kernel on this CPU, or `LLM_SERVER_PACK=0` is set (for A/B runs).
    pub(crate) fn packed(
        &self,
        pack: impl FnOnce(&[u8]) -> Result<Option<quant::Packed>>,
    ) -> Result<Option<&quant::Packed>> {
        if let Some(p) = self.packed.get() {
            return Ok(p.as_ref());
        }
        let off = std::env::var("LLM_SERVER_PACK").is_ok_and(|v| v == "0");
        let rows = self.n_rows() / quant::GROUP * quant::GROUP;
        let p = if off || rows == 0 || quant::group_bytes(self.ty, self.row_len()).is_none() {
            None
        } else {
            pack(&self.data()[..rows * self.row_bytes()])?
        };
        // Another thread may have packed it meanwhile: either copy is the same.
        Ok(self.packed.get_or_init(|| p).as_ref())
    }

    /// The whole tensor as f32 (for small tensors: norms, biases).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        Ok(quant::dequantize_to_vec(self.ty, self.data())?)
    }
}

/// The tensors of one file, looked up by name with shape checks.
#[derive(Clone, Debug)]
pub struct Weights {
    file: Arc<GgufFile>,
}

impl Weights {
    /// Wrap an opened file.
    pub fn new(file: Arc<GgufFile>) -> Weights {
        Weights { file }
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &gguf::Metadata {
        self.file.metadata()
    }

    /// Whether the file has a tensor called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    /// Tensor `name`, which must have shape `dims`.
    pub fn get(&self, name: &str, dims: &[u64]) -> Result<QTensor> {
        let t = self.optional(name, dims)?;
        t.ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
        })
    }

    /// Tensor `name` if present; if present it must have shape `dims`.
    pub fn optional(&self, name: &str, dims: &[u64]) -> Result<Option<QTensor>> {
        let Some(index) = self.file.tensors().iter().position(|t| t.name == name) else {
            return Ok(None);
        };
        let info = &self.file.tensors()[index];
        if info.dims != dims {
            return Err(Error::BadShape {
                name: name.into(),
                expected: dims.to_vec(),
                found: info.dims.clone(),
            });
        }
        Ok(Some(QTensor {
            file: self.file.clone(),
            name: name.to_string(),
            ty: info.ty,
            dims: info.dims.clone(),
            index,
            packed: Arc::default(),
        }))
    }

    /// A 1-D tensor (norm weight, bias) as f32 values.
    pub fn vector(&self, name: &str, len: u64) -> Result<Vec<f32>> {
        self.get(name, &[len])?.to_f32()
    }

    /// An optional 1-D tensor as f32 values.
    pub fn optional_vector(&self, name: &str, len: u64) -> Result<Option<Vec<f32>>> {
        self.optional(name, &[len])?.map(|t| t.to_f32()).transpose()
    }
}
