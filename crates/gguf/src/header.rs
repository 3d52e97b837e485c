//! Parsing and validating everything before the tensor data: magic, version, metadata, tensor
//! table, alignment, and the layout of tensor data in the file.
//!
//! Mirrors llama.cpp's `gguf_init_from_file_impl` (ggml/src/gguf.cpp) with two differences:
//! llama.cpp requires tensors to be packed in table order, we accept any order as long as each
//! tensor is aligned, inside the file and overlaps no other; and we reject bools other than 0/1.
//! llama.cpp also limits tensor names to 63 bytes; we read longer ones but never write them.

use std::collections::HashSet;

use crate::cursor::{vec_for, Cursor};
use crate::error::{Error, Result};
use crate::types::GgmlType;
use crate::value::{read_type, read_value, Metadata, Value};

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// The key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Fewest bytes a key/value takes: key length, value type, one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Fewest bytes a tensor info takes: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.ffn_up_exps.weight`.
    pub name: String,
    /// Dimensions in ggml (`ne`) order: `dims[0]` is the row length, the fastest-varying index.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Product of `dims`.
    pub n_elements: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

/// Everything parsed from a file except the tensor data itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// GGUF version, 2 or 3.
    pub version: u32,
    /// Key/value metadata, in file order.
    pub metadata: Metadata,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data (from `general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute file offset where the data section starts.
    pub data_offset: u64,
}

/// Where a tensor info's fields sit in the file, kept for error messages.
struct InfoPos {
    info: u64,
    offset_field: u64,
}

/// Parses and validates a whole GGUF file held in `bytes`: every count, size and offset is
/// checked against `bytes.len()`, so after `Ok` every tensor's data lies inside `bytes`.
pub fn parse_header(bytes: &[u8]) -> Result<Header> {
    let mut c = Cursor::new(bytes);
    let version = read_preamble(&mut c)?;
    let n_tensors = c.count(MIN_TENSOR_INFO_SIZE, "tensor")?;
    let n_kv = c.count(MIN_KV_SIZE, "metadata key")?;
    let (metadata, alignment) = read_metadata(&mut c, n_kv)?;
    let (tensors, positions) = read_tensor_infos(&mut c, n_tensors)?;
    // The data section starts at the next multiple of the alignment. The position is below the
    // slice length and the alignment at most 2^31, so this cannot overflow; saturating keeps
    // that a non-panicking fact, and a saturated offset fails the bounds check below.
    let data_offset = c.pos().checked_next_multiple_of(alignment).unwrap_or(u64::MAX);
    let header = Header { version, metadata, tensors, alignment, data_offset };
    check_layout(&header, &positions, bytes.len() as u64)?;
    Ok(header)
}

fn read_preamble(c: &mut Cursor<'_>) -> Result<u32> {
    let magic = c.u32("magic")?;
    if magic != GGUF_MAGIC {
        return Err(Error::BadMagic { found: magic });
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::UnsupportedVersion { version });
    }
    Ok(version)
}

/// Reads `n_kv` key/value pairs and the alignment they set.
fn read_metadata(c: &mut Cursor<'_>, n_kv: u64) -> Result<(Metadata, u64)> {
    let mut metadata = Metadata::new();
    let mut alignment_at = 0;
    for _ in 0..n_kv {
        let key_offset = c.pos();
        let key = c.string("metadata key")?;
        let ty = read_type(c, "metadata value type")?;
        let value_offset = c.pos();
        let value = read_value(c, ty, 0)?;
        if key == ALIGNMENT_KEY {
            alignment_at = value_offset;
        }
        if metadata.insert(key.clone(), value).is_err() {
            return Err(Error::DuplicateKey { offset: key_offset, key });
        }
    }
    let alignment = alignment_from(&metadata, alignment_at)?;
    Ok((metadata, alignment))
}

/// The alignment `general.alignment` sets (llama.cpp requires a u32 power of two), or 32.
/// `offset` is where the value sits, for the error.
pub(crate) fn alignment_from(metadata: &Metadata, offset: u64) -> Result<u64> {
    match metadata.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(other) => Err(Error::BadAlignment { offset, found: other.clone() }),
    }
}

fn read_tensor_infos(c: &mut Cursor<'_>, n: u64) -> Result<(Vec<TensorInfo>, Vec<InfoPos>)> {
    let mut tensors = vec_for(n);
    let mut positions = vec_for(n);
    let mut names = HashSet::new();
    for _ in 0..n {
        let info = c.pos();
        let (t, offset_field) = read_tensor_info(c)?;
        if !names.insert(t.name.clone()) {
            return Err(Error::DuplicateTensor { offset: info, name: t.name });
        }
        tensors.push(t);
        positions.push(InfoPos { info, offset_field });
    }
    Ok((tensors, positions))
}

/// Reads one tensor info; also returns where its offset field is.
fn read_tensor_info(c: &mut Cursor<'_>) -> Result<(TensorInfo, u64)> {
    let info = c.pos();
    let name = c.string("tensor name")?;
    let n_dims = c.u32("tensor dimension count")?;
    if n_dims as usize > MAX_DIMS {
        return Err(Error::TooManyDims { offset: info, name, n_dims: n_dims.into() });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64("tensor dimension")?);
    }
    let type_offset = c.pos();
    let id = c.u32("tensor type")?;
    let Some(ty) = GgmlType::from_id(id) else {
        return Err(Error::UnknownTensorType { offset: type_offset, name, id });
    };
    let (n_elements, n_bytes) = tensor_size(&name, &dims, ty, info)?;
    let offset_field = c.pos();
    let offset = c.u64("tensor data offset")?;
    Ok((TensorInfo { name, dims, ty, offset, n_elements, n_bytes }, offset_field))
}

/// Elements and bytes of a tensor of shape `dims` and type `ty`, checked the way ggml does:
/// every count fits in i64 and rows are whole blocks. `offset` is only for the error.
pub(crate) fn tensor_size(name: &str, dims: &[u64], ty: GgmlType, offset: u64) -> Result<(u64, u64)> {
    let overflow = || Error::ShapeOverflow { offset, name: name.to_owned(), dims: dims.to_vec(), ty };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64))
        .ok_or_else(overflow)?;
    let ne0 = dims.first().copied().unwrap_or(1);
    let block_size = ty.block_size();
    if ne0 % block_size != 0 {
        return Err(Error::PartialBlock { offset, name: name.to_owned(), ne0, ty, block_size });
    }
    let n_bytes = ty.bytes_for(n_elements).filter(|&b| b <= i64::MAX as u64).ok_or_else(overflow)?;
    Ok((n_elements, n_bytes))
}

/// Checks every tensor is aligned, inside a file of `file_size` bytes, and overlaps no other.
fn check_layout(h: &Header, pos: &[InfoPos], file_size: u64) -> Result<()> {
    for (t, p) in h.tensors.iter().zip(pos) {
        if t.offset % h.alignment != 0 {
            return Err(Error::MisalignedTensor {
                offset: p.offset_field,
                name: t.name.clone(),
                data_offset: t.offset,
                alignment: h.alignment,
            });
        }
        let end = h.data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.n_bytes));
        if end.is_none_or(|e| e > file_size) {
            return Err(Error::TensorPastEnd {
                offset: p.offset_field,
                name: t.name.clone(),
                needed: end.unwrap_or(u64::MAX),
                file_size,
            });
        }
    }
    // Sorted by offset, a tensor overlaps an earlier one iff it starts before the furthest end
    // seen so far. Empty tensors occupy no bytes and overlap nothing.
    let mut order: Vec<usize> = (0..h.tensors.len()).filter(|&i| h.tensors[i].n_bytes > 0).collect();
    order.sort_by_key(|&i| (h.tensors[i].offset, pos[i].info));
    let mut furthest: Option<(u64, usize)> = None;
    for i in order {
        let t = &h.tensors[i];
        if let Some((_, j)) = furthest.filter(|&(end, _)| t.offset < end) {
            return Err(Error::TensorOverlap {
                offset: pos[i].offset_field,
                name: t.name.clone(),
                other: h.tensors[j].name.clone(),
            });
        }
        // In bounds was checked above, so offset + n_bytes cannot overflow.
        let end = t.offset + t.n_bytes;
        if furthest.is_none_or(|(e, _)| end > e) {
            furthest = Some((end, i));
        }
    }
    Ok(())
}
