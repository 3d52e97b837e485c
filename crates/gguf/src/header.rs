//! Parsing and validating everything before the tensor data: magic, version, metadata, tensor
//! table, alignment, and the layout of tensor data in the file.
//!
//! Mirrors llama.cpp's `gguf_init_from_reader` (ggml/src/gguf.cpp, b11549). Differences, each
//! deliberate:
//! - llama.cpp requires tensors packed in table order; we accept any order as long as each
//!   tensor is aligned, inside the file and overlaps no other (the checks that keep views safe).
//! - llama.cpp reads any nonzero bool byte as true; we reject bytes other than 0/1 as
//!   corruption (no writer produces them), which also keeps read → write byte-exact.
//! - llama.cpp rejects arrays of arrays; we read them (gguf-py writes them), depth-limited.
//! - llama.cpp rejects tensor names of 64+ bytes; we read them but the writer refuses them.

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
    let (header, positions) = read_layout(bytes)?;
    check_layout(&header, &positions, bytes.len() as u64)?;
    Ok(header)
}

/// The metadata and tensor table of a file cut anywhere after its tensor table (its first
/// `data_offset` bytes, say): what [`parse_header`] reads, without checking that the data
/// lies inside `bytes` — for tools that need a model's layout, not its weights.
pub fn parse_layout(bytes: &[u8]) -> Result<Header> {
    Ok(read_layout(bytes)?.0)
}

/// Preamble, metadata and tensor table, with where each tensor info sits.
fn read_layout(bytes: &[u8]) -> Result<(Header, Vec<InfoPos>)> {
    let mut c = Cursor::new(bytes);
    let version = read_preamble(&mut c)?;
    let n_tensors = c.count(MIN_TENSOR_INFO_SIZE, "tensor")?;
    let n_kv = c.count(MIN_KV_SIZE, "metadata key")?;
    let (metadata, alignment) = read_metadata(&mut c, n_kv)?;
    let (tensors, positions) = read_tensor_infos(&mut c, n_tensors)?;
    // The data section starts at the next multiple of the alignment. The position is below the
    // slice length and the alignment at most 2^31, so this cannot overflow; saturating keeps
    // that a non-panicking fact, and a saturated offset fails the bounds check.
    let data_offset = c
        .pos()
        .checked_next_multiple_of(alignment)
        .unwrap_or(u64::MAX);
    let header = Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    };
    Ok((header, positions))
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
        if key.is_empty() {
            return Err(Error::EmptyKey { offset: key_offset });
        }
        let ty = read_type(c, "metadata value type")?;
        let value_offset = c.pos();
        let value = read_value(c, ty, 0)?;
        if key == ALIGNMENT_KEY {
            alignment_at = value_offset;
        }
        if metadata.insert(key.clone(), value).is_err() {
            return Err(Error::DuplicateKey {
                offset: key_offset,
                key,
            });
        }
    }
    let alignment = alignment_from(metadata.get(ALIGNMENT_KEY), alignment_at)?;
    Ok((metadata, alignment))
}

/// The alignment a `general.alignment` value sets (llama.cpp requires a u32 power of two),
/// or 32 without one. `offset` is where the value sits, for the error.
pub(crate) fn alignment_from(value: Option<&Value>, offset: u64) -> Result<u64> {
    match value {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(other) => Err(Error::BadAlignment {
            offset,
            found: other.clone(),
        }),
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
            return Err(Error::DuplicateTensor {
                offset: info,
                name: t.name,
            });
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
        return Err(Error::TooManyDims {
            offset: info,
            name,
            n_dims: n_dims.into(),
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64("tensor dimension")?);
    }
    let type_offset = c.pos();
    let id = c.u32("tensor type")?;
    let Some(ty) = GgmlType::from_id(id) else {
        return Err(Error::UnknownTensorType {
            offset: type_offset,
            name,
            id,
        });
    };
    let (n_elements, n_bytes) = tensor_size(&name, &dims, ty, info)?;
    let offset_field = c.pos();
    let offset = c.u64("tensor data offset")?;
    Ok((
        TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_elements,
            n_bytes,
        },
        offset_field,
    ))
}

/// Elements and bytes of a tensor of shape `dims` and type `ty`, checked the way ggml does:
/// every count fits in i64 and rows are whole blocks. `offset` is only for the error.
pub(crate) fn tensor_size(
    name: &str,
    dims: &[u64],
    ty: GgmlType,
    offset: u64,
) -> Result<(u64, u64)> {
    let overflow = || Error::ShapeOverflow {
        offset,
        name: name.to_owned(),
        dims: dims.to_vec(),
        ty,
    };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64))
        .ok_or_else(overflow)?;
    let ne0 = dims.first().copied().unwrap_or(1);
    let block_size = ty.block_size();
    if ne0 % block_size != 0 {
        return Err(Error::PartialBlock {
            offset,
            name: name.to_owned(),
            ne0,
            ty,
            block_size,
        });
    }
    let n_bytes = ty
        .bytes_for(n_elements)
        .filter(|&b| b <= i64::MAX as u64)
        .ok_or_else(overflow)?;
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
        let end = h
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
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
    let mut order: Vec<usize> = (0..h.tensors.len())
        .filter(|&i| h.tensors[i].n_bytes > 0)
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{sample_file, Raw};

    fn err(bytes: &[u8]) -> Error {
        match parse_header(bytes) {
            Ok(h) => panic!("expected an error, parsed {h:?}"),
            Err(e) => e,
        }
    }

    /// A file with one f32 tensor `[8]` at `offset` and `extra_kv` before it.
    fn one_tensor(kvs: &[(&str, u32)], offset: u64, data: usize) -> Vec<u8> {
        let mut r = Raw::header(3, 1, kvs.len() as u64);
        kvs.iter().for_each(|&(k, v)| {
            r.kv_u32(k, v);
        });
        r.tensor("w", &[8], 0, offset).data(32, data);
        r.buf
    }

    #[test]
    fn sample_file_parses() {
        let bytes = sample_file();
        let h = parse_header(&bytes).expect("valid");
        assert_eq!((h.version, h.alignment, h.data_offset % 32), (3, 32, 0));
        assert_eq!(h.tensors.len(), 3);
        assert_eq!(h.tensors[1].n_bytes, 6 * 34);
        assert_eq!(h.tensors[1].offset, 32);
        assert_eq!(h.metadata.len(), 15);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample_file();
        let h = parse_header(&bytes).expect("valid");
        // Past the end of the last tensor only padding is missing, which readers don't need.
        let last_end = h
            .tensors
            .iter()
            .map(|t| h.data_offset + t.offset + t.n_bytes)
            .max();
        let last_end = last_end.expect("has tensors") as usize;
        for len in 0..bytes.len() {
            assert_eq!(
                parse_header(&bytes[..len]).is_err(),
                len < last_end,
                "cut at {len}"
            );
        }
    }

    #[test]
    fn bad_magic_and_versions() {
        let mut bytes = sample_file();
        bytes[0] = b'X';
        assert!(matches!(
            err(&bytes),
            Error::BadMagic { found: 0x4655_4758 }
        ));
        for v in [0, 1, 4] {
            let e = err(&Raw::header(v, 0, 0).buf);
            assert!(matches!(e, Error::UnsupportedVersion { version } if version == v));
        }
        assert!(err(&Raw::header(1, 0, 0).buf).to_string().contains("v1"));
        assert!(parse_header(&Raw::header(2, 0, 0).buf).is_ok());
    }

    #[test]
    fn absurd_counts_fail_before_allocating() {
        let e = err(&Raw::header(3, u64::MAX, 0).buf);
        assert!(
            matches!(
                e,
                Error::CountTooLarge {
                    offset: 8,
                    what: "tensor",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(&Raw::header(3, 0, 1 << 60).buf);
        assert!(
            matches!(
                e,
                Error::CountTooLarge {
                    offset: 16,
                    what: "metadata key",
                    ..
                }
            ),
            "{e}"
        );

        let mut r = Raw::header(3, 0, 1);
        r.u64(u64::MAX - 3).u32(0).u32(0);
        assert!(
            matches!(err(&r.buf), Error::Truncated { offset: 32, wanted, .. } if wanted == u64::MAX - 3)
        );

        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(9).u32(8).u64(1 << 40).u64(0);
        let e = err(&r.buf);
        assert!(
            matches!(e, Error::CountTooLarge { count, needed, remaining: 8, .. }
            if count == 1 << 40 && needed == 8 << 40),
            "{e}"
        );
        // 12 bytes left is enough for one nested array header, not for two.
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(9).u32(9).u64(2).u32(0).u64(0);
        assert!(matches!(
            err(&r.buf),
            Error::CountTooLarge {
                count: 2,
                remaining: 12,
                ..
            }
        ));
    }

    #[test]
    fn bad_values() {
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(13).u32(0);
        assert!(matches!(
            err(&r.buf),
            Error::UnknownValueType { offset: 33, id: 13 }
        ));
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(7).u8(2);
        assert!(matches!(
            err(&r.buf),
            Error::InvalidBool {
                offset: 37,
                byte: 2
            }
        ));
        let mut r = Raw::header(3, 0, 1);
        r.u64(1).u8(0xff).u32(4).u32(0);
        assert!(matches!(
            err(&r.buf),
            Error::InvalidUtf8 {
                offset: 32,
                what: "metadata key"
            }
        ));
        let mut r = Raw::header(3, 0, 2);
        r.kv_u32("k", 1).kv_u32("k", 2);
        let e = err(&r.buf);
        assert!(
            matches!(&e, Error::DuplicateKey { offset: 41, key } if key == "k"),
            "{e}"
        );
    }

    #[test]
    fn bad_alignment() {
        for a in [0, 3, 48] {
            let e = err(&one_tensor(&[(ALIGNMENT_KEY, a)], 0, 32));
            assert!(matches!(e, Error::BadAlignment { found: Value::U32(f), .. } if f == a));
        }
        let mut r = Raw::header(3, 0, 1);
        r.str(ALIGNMENT_KEY).u32(10).u64(32);
        assert!(matches!(
            err(&r.buf),
            Error::BadAlignment {
                found: Value::U64(32),
                ..
            }
        ));
        let mut r = Raw::header(3, 1, 1);
        r.kv_u32(ALIGNMENT_KEY, 64)
            .tensor("w", &[8], 0, 0)
            .data(64, 32);
        let h = parse_header(&r.buf).expect("valid");
        assert_eq!((h.alignment, h.data_offset), (64, 128));
        // Alignment 1: no padding at all.
        let mut r = Raw::header(3, 1, 1);
        r.kv_u32(ALIGNMENT_KEY, 1)
            .tensor("w", &[1], 24, 3)
            .data(1, 4);
        let h = parse_header(&r.buf).expect("valid");
        assert_eq!(h.data_offset as usize, r.buf.len() - 4);
    }

    #[test]
    fn bad_tensor_infos() {
        let mut r = Raw::header(3, 1, 0);
        r.tensor("w", &[1, 1, 1, 1, 1], 0, 0).data(32, 4);
        assert!(matches!(
            err(&r.buf),
            Error::TooManyDims {
                offset: 24,
                n_dims: 5,
                ..
            }
        ));
        let mut r = Raw::header(3, 1, 0);
        r.tensor("w", &[8], 4, 0).data(32, 32);
        let e = err(&r.buf);
        assert!(
            matches!(&e, Error::UnknownTensorType { offset: 45, id: 4, name } if name == "w"),
            "{e}"
        );
        let mut r = Raw::header(3, 1, 0);
        r.tensor("w", &[16], 8, 0).data(32, 34);
        assert!(matches!(
            err(&r.buf),
            Error::PartialBlock {
                ne0: 16,
                block_size: 32,
                ..
            }
        ));
        let mut r = Raw::header(3, 1, 0);
        r.tensor("w", &[1 << 32, 1 << 32], 0, 0).data(32, 0);
        assert!(matches!(err(&r.buf), Error::ShapeOverflow { .. }));
        let mut r = Raw::header(3, 1, 0);
        r.tensor("w", &[1 << 62], 0, 0).data(32, 0);
        assert!(
            matches!(err(&r.buf), Error::ShapeOverflow { .. }),
            "bytes overflow i64"
        );
        let mut r = Raw::header(3, 2, 0);
        r.tensor("w", &[8], 0, 0)
            .tensor("w", &[8], 0, 32)
            .data(32, 64);
        assert!(matches!(
            err(&r.buf),
            Error::DuplicateTensor { offset: 57, .. }
        ));
    }

    #[test]
    fn bad_tensor_placement() {
        let e = err(&one_tensor(&[], 4, 36));
        assert!(matches!(
            e,
            Error::MisalignedTensor {
                offset: 49,
                data_offset: 4,
                alignment: 32,
                ..
            }
        ));
        let e = err(&one_tensor(&[], 0, 31));
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                Error::TensorPastEnd {
                    needed: 96,
                    file_size: 95,
                    ..
                }
            ),
            "{msg}"
        );
        assert_eq!(
            msg,
            "at byte 49: tensor 'w' extends past end of file (needs 96 bytes, file has 95)"
        );
        let e = err(&one_tensor(&[], u64::MAX - 31, 32));
        assert!(matches!(
            e,
            Error::TensorPastEnd {
                needed: u64::MAX,
                ..
            }
        ));

        let mut r = Raw::header(3, 3, 0);
        r.tensor("a", &[16], 0, 64)
            .tensor("b", &[0], 0, 0)
            .tensor("c", &[24], 0, 32)
            .data(32, 128);
        let e = err(&r.buf);
        let msg = e.to_string();
        assert!(
            matches!(&e, Error::TensorOverlap { name, other, .. } if name == "a" && other == "c"),
            "{msg}"
        );
        // Tensors in any order, with gaps, and empty tensors anywhere are fine.
        let mut r = Raw::header(3, 3, 0);
        r.tensor("a", &[16], 0, 96)
            .tensor("b", &[0], 0, 0)
            .tensor("c", &[8], 0, 0)
            .data(32, 160);
        assert!(parse_header(&r.buf).is_ok());
    }
}
