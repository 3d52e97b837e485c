//! [`GgufFile`]: a parsed, validated GGUF file and zero-copy views of its tensor data.
//!
//! The bytes are a read-only memory map (or a `Vec` for in-memory use). [`parse_header`] has
//! checked every tensor's range against the file size, so views are plain slicing; typed views
//! additionally check the element type and the address alignment.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::header::{parse_header, Header, TensorInfo};
use crate::types::GgmlType;
use crate::value::Metadata;

/// The bytes behind a [`GgufFile`].
#[derive(Debug)]
enum Storage {
    Mmap(Mmap),
    Bytes(Vec<u8>),
}

/// An open, validated GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    storage: Storage,
    header: Header,
    by_name: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps `path` read-only, parses and validates it.
    ///
    /// As with any memory map, another process truncating the file while it is open makes
    /// reads of the lost pages fault (SIGBUS); don't rewrite model files in place.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |os| Error::Io {
            path: path.to_owned(),
            os,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process; its contents are treated
        // as untrusted bytes and validated before use. The one hazard left, another process
        // shrinking the file, is documented above and cannot cause out-of-bounds slicing
        // because every length comes from the map's fixed size.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        GgufFile::new(Storage::Mmap(map))
    }

    /// Parses and validates a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::new(Storage::Bytes(bytes))
    }

    fn new(storage: Storage) -> Result<GgufFile> {
        let header = parse_header(storage_bytes(&storage))?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            storage,
            header,
            by_name,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        storage_bytes(&self.storage)
    }

    /// Everything parsed before the tensor data.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// GGUF version, 2 or 3.
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Alignment of tensor data.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// File size in bytes.
    pub fn file_size(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// Key/value metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.header.tensors[i])
    }

    /// The tensor's raw bytes. `t` must come from this file's table; for any other `t` whose
    /// range is not inside the file this returns an empty slice rather than panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = self
            .header
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| Some(s..s.checked_add(t.n_bytes)?))
            .and_then(|r| Some(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?));
        range.and_then(|r| self.bytes().get(r)).unwrap_or(&[])
    }

    /// The bytes of expert `expert` of a 3-D expert tensor `[ne0, ne1, n_expert]`: each expert
    /// is a contiguous `ne0 × ne1` matrix, so the slice is zero-copy.
    pub fn expert_data(&self, t: &TensorInfo, expert: u64) -> Result<&[u8]> {
        let no_such = || Error::NoSuchExpert {
            name: t.name.clone(),
            dims: t.dims.clone(),
            expert,
        };
        let &[ne0, ne1, n_expert] = t.dims.as_slice() else {
            return Err(no_such());
        };
        if expert >= n_expert {
            return Err(no_such());
        }
        // For a tensor of this file the shape was checked at parse time and none of this can
        // fail; checked math keeps a hand-made `TensorInfo` from panicking. ne0 is a whole
        // number of blocks, so each expert is a whole number of bytes.
        let per_expert = ne0
            .checked_mul(ne1)
            .and_then(|n| t.ty.bytes_for(n))
            .ok_or_else(no_such)?;
        let start = per_expert.checked_mul(expert).ok_or_else(no_such)?;
        let end = start.checked_add(per_expert).ok_or_else(no_such)?;
        let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
        let (start, end) = range.ok_or_else(no_such)?;
        self.tensor_data(t).get(start..end).ok_or_else(no_such)
    }

    /// An F32 tensor as `&[f32]`.
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<&[f32]> {
        self.typed(t, &[GgmlType::F32], "f32")
    }

    /// An F16 tensor as raw `&[u16]` (IEEE half bits; convert with the `half` crate).
    pub fn tensor_f16(&self, t: &TensorInfo) -> Result<&[u16]> {
        self.typed(t, &[GgmlType::F16], "f16")
    }

    /// A BF16 tensor as raw `&[u16]` (bfloat16 bits: `f32::from_bits(u32::from(b) << 16)`).
    pub fn tensor_bf16(&self, t: &TensorInfo) -> Result<&[u16]> {
        self.typed(t, &[GgmlType::BF16], "bf16")
    }

    /// An F64 tensor as `&[f64]`.
    pub fn tensor_f64(&self, t: &TensorInfo) -> Result<&[f64]> {
        self.typed(t, &[GgmlType::F64], "f64")
    }

    /// An I8 tensor as `&[i8]`.
    pub fn tensor_i8(&self, t: &TensorInfo) -> Result<&[i8]> {
        self.typed(t, &[GgmlType::I8], "i8")
    }

    /// An I16 tensor as `&[i16]`.
    pub fn tensor_i16(&self, t: &TensorInfo) -> Result<&[i16]> {
        self.typed(t, &[GgmlType::I16], "i16")
    }

    /// An I32 tensor as `&[i32]`.
    pub fn tensor_i32(&self, t: &TensorInfo) -> Result<&[i32]> {
        self.typed(t, &[GgmlType::I32], "i32")
    }

    /// An I64 tensor as `&[i64]`.
    pub fn tensor_i64(&self, t: &TensorInfo) -> Result<&[i64]> {
        self.typed(t, &[GgmlType::I64], "i64")
    }

    fn typed<T: Plain>(
        &self,
        t: &TensorInfo,
        ok: &[GgmlType],
        wanted: &'static str,
    ) -> Result<&[T]> {
        if !ok.contains(&t.ty) {
            return Err(Error::WrongTensorType {
                name: t.name.clone(),
                ty: t.ty,
                wanted,
            });
        }
        cast(self.tensor_data(t), &t.name)
    }
}

fn storage_bytes(s: &Storage) -> &[u8] {
    match s {
        Storage::Mmap(m) => m,
        Storage::Bytes(v) => v,
    }
}

/// Types for which every bit pattern is a valid value and which have no padding, so a byte
/// slice of the right alignment and length can be read as a slice of them.
///
/// # Safety
/// Implement only for such types.
unsafe trait Plain: Copy {}
// SAFETY: primitive integers and floats: no padding, every bit pattern valid.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}
// SAFETY: as above.
unsafe impl Plain for i16 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for i64 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for f64 {}

/// Reinterprets little-endian `bytes` as `&[T]` after checking address alignment and length.
fn cast<'a, T: Plain>(bytes: &'a [u8], name: &str) -> Result<&'a [T]> {
    if cfg!(target_endian = "big") {
        return Err(Error::BigEndianHost {
            name: name.to_owned(),
        });
    }
    let align = std::mem::align_of::<T>();
    let size = std::mem::size_of::<T>();
    let address = bytes.as_ptr() as usize;
    // Alignment: with `general.alignment` below the element size, data can be misaligned.
    // Length: tensor sizes are whole elements, but check rather than assume.
    if !address.is_multiple_of(align) || !bytes.len().is_multiple_of(size) {
        return Err(Error::MisalignedView {
            name: name.to_owned(),
            address,
            align,
        });
    }
    // SAFETY: the pointer is aligned for T (checked), the region is `bytes.len()` readable
    // bytes borrowed for 'a, T: Plain accepts any bit pattern, and the length in T's covers
    // exactly those bytes.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{sample_file, Raw};
    use crate::{GgufWriter, TensorSpec, Value, ALIGNMENT_KEY};

    #[test]
    fn open_maps_the_same_file_as_from_bytes() {
        let bytes = sample_file();
        let path = std::env::temp_dir().join(format!("gguf-test-{}.gguf", std::process::id()));
        std::fs::write(&path, &bytes).expect("temp file");
        let mapped = GgufFile::open(&path);
        std::fs::remove_file(&path).expect("temp file");
        let mapped = mapped.expect("valid");
        let owned = GgufFile::from_bytes(bytes).expect("valid");
        assert_eq!(mapped.header(), owned.header());
        assert_eq!(mapped.bytes(), owned.bytes());
        assert_eq!(mapped.file_size(), owned.bytes().len() as u64);
        let missing = GgufFile::open("/nonexistent/x.gguf");
        assert!(matches!(missing, Err(Error::Io { .. })));
    }

    #[test]
    fn views_are_typed_and_zero_copy() {
        let file = GgufFile::from_bytes(sample_file()).expect("valid");
        let embd = file.tensor("token_embd.weight").expect("present");
        let raw = file.tensor_data(embd);
        assert_eq!(raw.len(), 32);
        assert_eq!(
            raw.as_ptr() as usize - file.bytes().as_ptr() as usize,
            file.data_offset() as usize
        );
        let f = file.tensor_f32(embd).expect("f32");
        assert_eq!(f[0].to_le_bytes(), [0, 1, 2, 3]);
        assert!(matches!(
            file.tensor_i32(embd),
            Err(Error::WrongTensorType {
                ty: GgmlType::F32,
                ..
            })
        ));
        let pos = file.tensor("pos").expect("present");
        assert_eq!(
            file.tensor_i32(pos).expect("i32")[2],
            i32::from_le_bytes([108, 109, 110, 111])
        );
        assert!(file.tensor("nope").is_none());
    }

    #[test]
    fn expert_slices() {
        let file = GgufFile::from_bytes(sample_file()).expect("valid");
        let exps = file.tensor("blk.0.ffn_up_exps.weight").expect("present");
        let all = file.tensor_data(exps);
        for e in 0..3 {
            let slice = file.expert_data(exps, e).expect("in range");
            assert_eq!(slice, &all[e as usize * 68..(e as usize + 1) * 68]);
        }
        assert!(matches!(
            file.expert_data(exps, 3),
            Err(Error::NoSuchExpert { expert: 3, .. })
        ));
        let embd = file.tensor("token_embd.weight").expect("present");
        assert!(matches!(
            file.expert_data(embd, 0),
            Err(Error::NoSuchExpert { .. })
        ));
    }

    #[test]
    fn misaligned_views_are_errors_not_ub() {
        // Alignment 1 lets an f32 tensor start at an odd address.
        let meta = [(ALIGNMENT_KEY.to_string(), Value::U32(1))];
        let specs = [
            TensorSpec::new("a", GgmlType::I8, [1]),
            TensorSpec::new("b", GgmlType::F32, [2]),
        ];
        let mut w = GgufWriter::new(Vec::new(), &meta, &specs).expect("valid");
        w.write_data(&[7; 9]).expect("declared");
        let file = GgufFile::from_bytes(w.finish().expect("complete")).expect("valid");
        let b = file.tensor("b").expect("present");
        let addr = file.tensor_data(b).as_ptr() as usize;
        match file.tensor_f32(b) {
            Ok(v) => assert!(addr.is_multiple_of(4) && v.len() == 2),
            Err(e) => assert!(matches!(e, Error::MisalignedView { align: 4, .. })),
        }
        assert_eq!(
            file.tensor_i8(file.tensor("a").expect("present"))
                .expect("i8"),
            &[7]
        );
    }

    #[test]
    fn foreign_tensor_info_gives_empty_data() {
        let file = GgufFile::from_bytes(sample_file()).expect("valid");
        let mut t = file.tensors()[0].clone();
        t.offset = u64::MAX - 4;
        assert!(file.tensor_data(&t).is_empty());
        let mut r = Raw::header(3, 0, 0);
        r.data(32, 0);
        assert!(GgufFile::from_bytes(r.buf)
            .expect("empty is valid")
            .tensors()
            .is_empty());
    }

    #[test]
    fn cast_checks_alignment_and_length() {
        let words = [1u32, 2, 3];
        // SAFETY: reading u32s as bytes; the slice covers exactly `words`.
        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), 12) };
        assert_eq!(cast::<f32>(bytes, "t").ok().map(<[f32]>::len), Some(3));
        assert!(matches!(
            cast::<f32>(&bytes[1..5], "t"),
            Err(Error::MisalignedView { .. })
        ));
        assert!(matches!(
            cast::<f32>(&bytes[..6], "t"),
            Err(Error::MisalignedView { .. })
        ));
        assert_eq!(cast::<i8>(&bytes[1..4], "t").ok().map(<[i8]>::len), Some(3));
    }
}
