//! The crate's one error type.
//!
//! Every problem found in a file names the byte offset where the bad field starts, so a
//! report like "at byte 1234: ..." can be checked with `xxd -s 1234`. Writer and view errors,
//! which are not about a position in a file, name the tensor or key instead.

use std::io;
use std::path::PathBuf;

use crate::types::GgmlType;
use crate::value::Value;

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or mapped. (The OS error is in the message, not a
    /// `source`, so a printed error chain says it once.)
    #[error("{}: {os}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        os: io::Error,
    },
    /// The writer's output failed.
    #[error("writing GGUF: {source}")]
    Write {
        /// The OS error.
        source: io::Error,
    },
    /// The file ends inside a field.
    #[error("at byte {offset}: file ends inside {what} (needs {wanted} more bytes)")]
    Truncated {
        /// Where the field starts.
        offset: u64,
        /// Bytes the field needs.
        wanted: u64,
        /// The field.
        what: &'static str,
    },
    /// The first four bytes are not `GGUF`.
    #[error("at byte 0: not a GGUF file (magic {found:#010x}, expected 0x46554747 \"GGUF\")")]
    BadMagic {
        /// The little-endian u32 found.
        found: u32,
    },
    /// A version other than 2 or 3.
    #[error("at byte 4: unsupported GGUF version {version} (supported: 2, 3{})",
        if *version == 1 { "; v1 used 32-bit counts and is obsolete" } else { "" })]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// A count (of keys, tensors, array elements or string bytes) that the rest of the file
    /// cannot possibly hold; checked before anything is allocated for it.
    #[error("at byte {offset}: {what} count {count} needs at least {needed} bytes, only {remaining} left in the file")]
    CountTooLarge {
        /// Where the count field starts.
        offset: u64,
        /// What is counted.
        what: &'static str,
        /// The count read.
        count: u64,
        /// The fewest bytes `count` items can take (saturating).
        needed: u64,
        /// Bytes left after the count field.
        remaining: u64,
    },
    /// A metadata value type id outside 0..=12.
    #[error("at byte {offset}: unknown metadata value type {id}")]
    UnknownValueType {
        /// Where the type id starts.
        offset: u64,
        /// The id.
        id: u32,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`](crate::MAX_ARRAY_DEPTH).
    #[error("at byte {offset}: arrays nested more than {max} deep")]
    NestingTooDeep {
        /// Where the innermost array starts.
        offset: u64,
        /// The limit.
        max: u32,
    },
    /// A string that is not UTF-8.
    #[error("at byte {offset}: {what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string's bytes start.
        offset: u64,
        /// Which string.
        what: &'static str,
    },
    /// A bool byte other than 0 or 1.
    #[error("at byte {offset}: bool value {byte} is neither 0 nor 1")]
    InvalidBool {
        /// Where the byte is.
        offset: u64,
        /// The byte.
        byte: u8,
    },
    /// The same metadata key twice.
    #[error("at byte {offset}: duplicate metadata key '{key}'")]
    DuplicateKey {
        /// Where the second key starts (0 from the writer).
        offset: u64,
        /// The key.
        key: String,
    },
    /// An empty metadata key (llama.cpp refuses them too).
    #[error("at byte {offset}: empty metadata key")]
    EmptyKey {
        /// Where the key starts (0 from the writer).
        offset: u64,
    },
    /// `general.alignment` of the wrong type, zero, or not a power of two.
    #[error(
        "at byte {offset}: general.alignment must be a u32 nonzero power of two, found {found:?}"
    )]
    BadAlignment {
        /// Where the key's value starts (0 from the writer).
        offset: u64,
        /// The value found.
        found: Value,
    },
    /// A tensor with more dimensions than ggml's 4.
    #[error("at byte {offset}: tensor '{name}' has {n_dims} dimensions (ggml allows at most 4)")]
    TooManyDims {
        /// Where the tensor info starts.
        offset: u64,
        /// The tensor.
        name: String,
        /// Dimensions declared.
        n_dims: u64,
    },
    /// A ggml type id this crate does not know.
    #[error("at byte {offset}: tensor '{name}' has unknown ggml type id {id}")]
    UnknownTensorType {
        /// Where the type id starts.
        offset: u64,
        /// The tensor.
        name: String,
        /// The id.
        id: u32,
    },
    /// A shape whose element or byte count overflows, or a dimension above `i64::MAX`.
    #[error("at byte {offset}: tensor '{name}' shape {dims:?} of type {ty} is too large")]
    ShapeOverflow {
        /// Where the tensor info starts (0 from the writer).
        offset: u64,
        /// The tensor.
        name: String,
        /// Its dimensions, ne order.
        dims: Vec<u64>,
        /// Its type.
        ty: GgmlType,
    },
    /// `ne[0]` is not a whole number of the type's blocks.
    #[error("at byte {offset}: tensor '{name}' row length {ne0} is not a multiple of the {ty} block size {block_size}")]
    PartialBlock {
        /// Where the tensor info starts (0 from the writer).
        offset: u64,
        /// The tensor.
        name: String,
        /// The row length.
        ne0: u64,
        /// Its type.
        ty: GgmlType,
        /// Elements per block.
        block_size: u64,
    },
    /// The same tensor name twice.
    #[error("at byte {offset}: duplicate tensor name '{name}'")]
    DuplicateTensor {
        /// Where the second tensor info starts (0 from the writer).
        offset: u64,
        /// The name.
        name: String,
    },
    /// A tensor data offset that is not a multiple of the alignment.
    #[error("at byte {offset}: tensor '{name}' data offset {data_offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// Where the offset field starts.
        offset: u64,
        /// The tensor.
        name: String,
        /// The offset, relative to the data section.
        data_offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor whose data does not fit in the file.
    #[error("at byte {offset}: tensor '{name}' extends past end of file (needs {needed} bytes, file has {file_size})")]
    TensorPastEnd {
        /// Where the offset field starts.
        offset: u64,
        /// The tensor.
        name: String,
        /// File size the tensor needs (saturating).
        needed: u64,
        /// Actual file size.
        file_size: u64,
    },
    /// Two tensors whose data overlap.
    #[error("at byte {offset}: tensor '{name}' data overlaps tensor '{other}'")]
    TensorOverlap {
        /// Where the later tensor's offset field starts.
        offset: u64,
        /// The tensor starting later.
        name: String,
        /// The tensor it runs into.
        other: String,
    },
    /// A typed view asked of a tensor of another type.
    #[error("tensor '{name}' is {ty}, not {wanted}")]
    WrongTensorType {
        /// The tensor.
        name: String,
        /// Its type.
        ty: GgmlType,
        /// The type(s) the view needs.
        wanted: &'static str,
    },
    /// Tensor data not aligned for a typed view (possible with `general.alignment` 1 or 2).
    #[error(
        "tensor '{name}' data at address {address:#x} is not {align}-byte aligned for a typed view"
    )]
    MisalignedView {
        /// The tensor.
        name: String,
        /// The data's address.
        address: usize,
        /// The alignment needed.
        align: usize,
    },
    /// Typed views reinterpret little-endian bytes and need a little-endian host.
    #[error("tensor '{name}': typed views need a little-endian host")]
    BigEndianHost {
        /// The tensor.
        name: String,
    },
    /// An expert slice of a tensor that is not 3-D, or an expert index out of range.
    #[error("tensor '{name}' with dims {dims:?} has no expert {expert} (expert slices need 3-D [.., .., n_expert])")]
    NoSuchExpert {
        /// The tensor.
        name: String,
        /// Its dimensions.
        dims: Vec<u64>,
        /// The expert asked for.
        expert: u64,
    },
    /// A tensor name the writer refuses: ggml stores names in 64 bytes with a NUL.
    #[error("tensor name '{name}' is {len} bytes; ggml allows at most 63")]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// More tensor data written than the tensor table declared.
    #[error("{extra} bytes of tensor data written past the last declared tensor")]
    TooMuchData {
        /// Bytes left over.
        extra: u64,
    },
    /// `finish` before every tensor's data was written.
    #[error("tensor '{name}' got {written} of its {declared} bytes before finish")]
    MissingData {
        /// The first incomplete tensor.
        name: String,
        /// Bytes written to it.
        written: u64,
        /// Bytes declared.
        declared: u64,
    },
}
