//! The [`Block`] and [`Quantize`] traits every block struct implements, and the little-endian
//! byte helpers they read and write with (safe code: no transmutes, any alignment).

use gguf::GgmlType;
use half::f16;

/// One ggml quant block: a `#[repr(C)]` struct whose size is `TYPE.type_size()` (each file
/// asserts it at compile time; `dispatch`'s tests check it against the table) and which
/// holds `TYPE.block_size()` values.
pub trait Block: Copy + Sized {
    /// The ggml type this block stores.
    const TYPE: GgmlType;
    /// Reads a block from its bytes as ggml lays them out (little-endian);
    /// `bytes.len()` must be `size_of::<Self>()`.
    fn read(bytes: &[u8]) -> Self;
    /// Writes the block's bytes into `out` (`size_of::<Self>()` bytes).
    fn write(&self, out: &mut [u8]);
    /// Dequantizes the block into `out` (`TYPE.block_size()` values).
    fn dequantize(&self, out: &mut [f32]);
}

/// A block type with a reference quantizer (ggml's `quantize_row_*_ref`).
pub trait Quantize: Block {
    /// Quantizes `TYPE.block_size()` values.
    fn quantize(x: &[f32]) -> Self;
}

/// `N` bytes of `b` from `at`.
pub(crate) fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// `N` signed bytes of `b` from `at`.
pub(crate) fn arr_i8<const N: usize>(b: &[u8], at: usize) -> [i8; N] {
    arr::<N>(b, at).map(|v| v as i8)
}

/// The little-endian f16 at `at`.
pub(crate) fn f16_at(b: &[u8], at: usize) -> f16 {
    f16::from_le_bytes(arr(b, at))
}

/// Copies `src` into `out` at `at`.
pub(crate) fn put(out: &mut [u8], at: usize, src: &[u8]) {
    out[at..at + src.len()].copy_from_slice(src);
}

/// Signed bytes as unsigned, for [`put`].
pub(crate) fn as_u8<const N: usize>(v: &[i8; N]) -> [u8; N] {
    v.map(|x| x as u8)
}

/// Dequantizes whole blocks of `B` (lengths already checked by the caller).
pub(crate) fn dequantize_blocks<B: Block>(data: &[u8], out: &mut [f32]) {
    let (ts, bs) = (B::TYPE.type_size() as usize, B::TYPE.block_size() as usize);
    for (src, dst) in data.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        B::read(src).dequantize(dst);
    }
}

/// Quantizes whole blocks of `B` (lengths already checked by the caller).
pub(crate) fn quantize_blocks<B: Quantize>(src: &[f32], out: &mut [u8]) {
    let (ts, bs) = (B::TYPE.type_size() as usize, B::TYPE.block_size() as usize);
    for (x, dst) in src.chunks_exact(bs).zip(out.chunks_exact_mut(ts)) {
        B::quantize(x).write(dst);
    }
}
