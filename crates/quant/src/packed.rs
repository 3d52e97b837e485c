//! Weights repacked eight rows at a time: the layout the fastest matmul kernels read.
//!
//! The tile kernels of `gemm.rs` take a weight row in its file layout: every 32 values they
//! reduce a vector of per-value products to one number per (row, token), and every block they
//! unpack again per row. Interleaving eight rows removes both costs. In a packed *group* the
//! codes of eight rows sit side by side four bytes at a time (a "quad"): one 32-byte vector
//! holds four consecutive codes of each of the eight rows, so one `vpdpbusd` against four
//! activation bytes broadcast to every lane gives eight rows' partial sums in eight i32 lanes,
//! and the per-row scales of a block load as one vector of eight. Nothing is reduced
//! horizontally; a group's result for a token is one vector of eight rows. llama.cpp's CPU
//! backend repacks Q4_0/IQ4_NL/Q4_K the same way ("x8" blocks in ggml-cpu/repack.cpp); the
//! layouts here are our own, one per format, chosen so that a kernel unpacks each code vector
//! with the same one to three operations the row kernels use.
//!
//! A packed group-block (eight rows × one block of the format) holds:
//!
//! | type | bytes | layout (offsets in bytes) |
//! |---|---:|---|
//! | Q4_0, IQ4_NL | 144 | `d` f16 ×8 @0, nibble quads ×4 @16 |
//! | Q4_1 | 160 | `d` @0, `m` @16, nibble quads @32 |
//! | Q5_0 | 176 | `d` @0, fifth bits @16, nibble quads @48 |
//! | Q5_1 | 192 | `d` @0, `m` @16, fifth bits @32, nibble quads @64 |
//! | Q8_0 | 272 | `d` @0, code quads ×8 @16 |
//! | Q4_K | 1184 | `d` @0, `dmin` @16, scales [8 sub-blocks][8 rows] u8 @32, mins @96, nibble quads ×32 @160 |
//! | Q5_K | 1440 | as Q4_K, then `qh` quads ×8 @160, nibble quads @416 |
//! | Q6_K | 1680 | `d` @0, scale pairs [8 chunks][8 rows][2] i8 @16, `ql` quads ×32 @144, `qh` quads ×16 @1168 |
//!
//! A quad `q` of a stream is 32 bytes: row `r`'s bytes `4q..4q+4` of that stream at `4r`. The
//! streams are the file's own (`qs`, `ql`, `qh`), so packing moves bytes and leaves nibble
//! and bit positions alone — except the legacy fifth bits, which are regrouped so that bit `c`
//! of byte `i` of a row is the fifth bit of value `4c + i` (one shift brings the bits of code
//! vector `c` into place). Sizes equal the file's eight rows except the K-quants' unpacked
//! 6-bit scales (+32 bytes a super-block group, 2.8%).

use std::ops::Range;
use std::sync::OnceLock;

use gguf::GgmlType;

use crate::error::Error;
use crate::gemm::QActs;
use crate::k_quants::scale_min_k4;

/// Rows per packed group.
pub const GROUP: usize = 8;

/// One kernel call: the group at the start of `w` (its blocks one after another; `w` runs on
/// through the following groups, which the kernel may prefetch but does not compute) against
/// tokens `t0..t0 + nt` (`1 ≤ nt ≤ TILE`, `PAIR_TILE` for the pair kernels), row `r`, token
/// `t` into `out[r·ld + t]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PTile<'a> {
    pub(crate) w: &'a [u8],
    /// Bytes from one group to the next in `w` (the pair kernels' second group).
    pub(crate) stride: usize,
    pub(crate) t0: usize,
    pub(crate) nt: usize,
    pub(crate) ld: usize,
    /// Whether to prefetch the following group-blocks (the first token tile of a group: later
    /// tiles find the group in cache).
    pub(crate) prefetch: bool,
}

/// A packed kernel; unsafe only for its CPU features (see [`packed_kernel`]).
pub(crate) type PackedFn = unsafe fn(g: &PTile<'_>, a: &QActs, out: &mut [f32]);

/// Bytes of one group-block of `ty` (eight rows × one block), for the types with a layout.
fn group_block_bytes(ty: GgmlType) -> Option<usize> {
    Some(match ty {
        GgmlType::Q4_0 | GgmlType::IQ4_NL => 144,
        GgmlType::Q4_1 => 160,
        GgmlType::Q5_0 => 176,
        GgmlType::Q5_1 => 192,
        GgmlType::Q8_0 => 272,
        GgmlType::Q4_K => 1184,
        GgmlType::Q5_K => 1440,
        GgmlType::Q6_K => 1680,
        _ => return None,
    })
}

/// Bytes of one packed group of eight `ty` rows of `k` values, if `ty` has a packed kernel
/// on this CPU (and `k` is whole blocks).
pub fn group_bytes(ty: GgmlType, k: usize) -> Option<usize> {
    packed_kernel(ty)?;
    let bs = ty.block_size() as usize;
    if k == 0 || !k.is_multiple_of(bs) {
        return None;
    }
    Some(k / bs * group_block_bytes(ty)?)
}

/// Packs eight consecutive rows of `ty` (`rows`: 8 × the row's bytes, `k` values each) into
/// `out` (`group_bytes(ty, k)`).
pub fn pack_group(ty: GgmlType, k: usize, rows: &[u8], out: &mut [u8]) -> Result<(), Error> {
    let gbb = group_block_bytes(ty).ok_or(Error::Unsupported {
        ty,
        op: crate::Op::Pack,
    })?;
    let (bs, bb) = (ty.block_size() as usize, ty.type_size() as usize);
    let nb = k / bs;
    if !k.is_multiple_of(bs) || rows.len() != GROUP * nb * bb || out.len() != nb * gbb {
        return Err(Error::GemmShape(format!(
            "packing {} bytes of {ty} rows of {k} values into {} bytes",
            rows.len(),
            out.len()
        )));
    }
    let rb = nb * bb;
    for (b, dst) in out.chunks_exact_mut(gbb).enumerate() {
        let blk: [&[u8]; GROUP] = std::array::from_fn(|r| &rows[r * rb + b * bb..][..bb]);
        pack_block(ty, &blk, dst);
    }
    Ok(())
}

/// Row `r`'s bytes `at..at + len` of each block in `blk`, four at a time, into quads at `to`.
fn quads(blk: &[&[u8]; GROUP], at: usize, len: usize, dst: &mut [u8], to: usize) {
    for q in 0..len / 4 {
        for (r, b) in blk.iter().enumerate() {
            let o = to + 32 * q + 4 * r;
            dst[o..o + 4].copy_from_slice(&b[at + 4 * q..at + 4 * q + 4]);
        }
    }
}

/// Two bytes at `at` of each row, side by side at `to` (an f16 per row).
fn halves(blk: &[&[u8]; GROUP], at: usize, dst: &mut [u8], to: usize) {
    for (r, b) in blk.iter().enumerate() {
        dst[to + 2 * r..to + 2 * r + 2].copy_from_slice(&b[at..at + 2]);
    }
}

/// The legacy fifth bits regrouped: byte `i` of a row, bit `c` = fifth bit of value `4c + i`.
fn fifth_bits(blk: &[&[u8]; GROUP], at: usize, dst: &mut [u8], to: usize) {
    for (r, b) in blk.iter().enumerate() {
        let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        for i in 0..4 {
            dst[to + 4 * r + i] = (0..8).map(|c| (((qh >> (4 * c + i)) & 1) << c) as u8).sum();
        }
    }
}

/// One group-block of `ty` from the same block of eight rows (layouts: module docs).
fn pack_block(ty: GgmlType, blk: &[&[u8]; GROUP], dst: &mut [u8]) {
    match ty {
        GgmlType::Q4_0 | GgmlType::IQ4_NL => {
            halves(blk, 0, dst, 0);
            quads(blk, 2, 16, dst, 16);
        }
        GgmlType::Q4_1 => {
            halves(blk, 0, dst, 0);
            halves(blk, 2, dst, 16);
            quads(blk, 4, 16, dst, 32);
        }
        GgmlType::Q5_0 => {
            halves(blk, 0, dst, 0);
            fifth_bits(blk, 2, dst, 16);
            quads(blk, 6, 16, dst, 48);
        }
        GgmlType::Q5_1 => {
            halves(blk, 0, dst, 0);
            halves(blk, 2, dst, 16);
            fifth_bits(blk, 4, dst, 32);
            quads(blk, 8, 16, dst, 64);
        }
        GgmlType::Q8_0 => {
            halves(blk, 0, dst, 0);
            quads(blk, 2, 32, dst, 16);
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            halves(blk, 0, dst, 0);
            halves(blk, 2, dst, 16);
            for (r, b) in blk.iter().enumerate() {
                let s: &[u8; 12] = b[4..16].try_into().expect("12 scale bytes");
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, s);
                    dst[32 + 8 * j + r] = sc;
                    dst[96 + 8 * j + r] = m;
                }
            }
            if ty == GgmlType::Q5_K {
                quads(blk, 16, 32, dst, 160);
                quads(blk, 48, 128, dst, 416);
            } else {
                quads(blk, 16, 128, dst, 160);
            }
        }
        GgmlType::Q6_K => {
            halves(blk, 208, dst, 0);
            for (r, b) in blk.iter().enumerate() {
                for s in 0..8 {
                    let o = 16 + 16 * s + 2 * r;
                    dst[o..o + 2].copy_from_slice(&b[192 + 2 * s..192 + 2 * s + 2]);
                }
            }
            quads(blk, 0, 128, dst, 144);
            quads(blk, 128, 64, dst, 1168);
        }
        _ => unreachable!("pack_block called for {ty} without a layout"),
    }
}

/// Whole groups of eight rows of one weight matrix, packed.
#[derive(Debug, Clone)]
pub struct Packed {
    ty: GgmlType,
    k: usize,
    group_bytes: usize,
    data: Vec<u8>,
}

impl Packed {
    /// Packs `w` (whole rows of `ty`, `k` values each, a multiple of eight of them). `None`
    /// where `ty` has no packed kernel on this CPU.
    pub fn new(ty: GgmlType, k: usize, w: &[u8]) -> Result<Option<Packed>, Error> {
        let Some(gb) = group_bytes(ty, k) else {
            return Ok(None);
        };
        let rows8 = GROUP * ty.bytes_for(k as u64).unwrap_or(0) as usize;
        if rows8 == 0 || !w.len().is_multiple_of(rows8) {
            return Err(Error::GemmShape(format!(
                "{} bytes are not whole groups of eight {ty} rows of {k} values",
                w.len()
            )));
        }
        let mut data = vec![0u8; w.len() / rows8 * gb];
        for (src, dst) in w.chunks_exact(rows8).zip(data.chunks_exact_mut(gb)) {
            pack_group(ty, k, src, dst)?;
        }
        Ok(Some(Packed::from_groups(ty, k, data)?))
    }

    /// Groups packed elsewhere with [`pack_group`] (a caller packing on several threads),
    /// one after another in `data`.
    pub fn from_groups(ty: GgmlType, k: usize, data: Vec<u8>) -> Result<Packed, Error> {
        let gb = group_bytes(ty, k).ok_or(Error::Unsupported {
            ty,
            op: crate::Op::Pack,
        })?;
        if !data.len().is_multiple_of(gb) {
            return Err(Error::GemmShape(format!(
                "{} bytes are not whole packed groups of {gb}",
                data.len()
            )));
        }
        Ok(Packed {
            ty,
            k,
            group_bytes: gb,
            data,
        })
    }

    /// Packed rows (eight per group).
    pub fn rows(&self) -> usize {
        self.data.len() / self.group_bytes * GROUP
    }

    /// The weight type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
}

/// [`gemm`](crate::gemm) for packed rows: `out[j·ld + (t − tokens.start)]` is the dot of
/// packed row `rows.start + j` with token `t`; `rows` is whole groups (start and end
/// multiples of eight, within the packed rows).
pub fn gemm_packed(
    p: &Packed,
    rows: Range<usize>,
    acts: &QActs,
    tokens: Range<usize>,
    out: &mut [f32],
    ld: usize,
) -> Result<(), Error> {
    let f = packed_kernel(p.ty).ok_or(Error::Unsupported {
        ty: p.ty,
        op: crate::Op::Pack,
    })?;
    if acts.weight != p.ty || acts.k != p.k {
        return Err(Error::GemmShape(format!(
            "{} × {} activations against packed {} rows of {}",
            acts.weight, acts.k, p.ty, p.k
        )));
    }
    let bad_rows =
        !rows.start.is_multiple_of(GROUP) || !rows.end.is_multiple_of(GROUP) || rows.end > p.rows();
    if bad_rows {
        return Err(Error::GemmShape(format!(
            "rows {rows:?} of {} packed (whole groups of {GROUP})",
            p.rows()
        )));
    }
    crate::gemm::check_output(acts, &tokens, rows.len(), out.len(), ld)?;
    let nt = tokens.len();
    let pair = packed_pair_kernel(p.ty);
    let groups = rows.start / GROUP..rows.end / GROUP;
    let mut g = groups.start;
    while g < groups.end {
        // Two groups at once where a pair kernel exists and two are left.
        let (k, n) = match pair {
            Some(fp) if g + 1 < groups.end => (fp, 2),
            _ => (f, 1),
        };
        let i = g - groups.start;
        let w = &p.data[g * p.group_bytes..];
        let tile_len = if n == 2 { PAIR_TILE } else { crate::TILE };
        for t0 in (0..nt).step_by(tile_len) {
            let tile = PTile {
                w,
                stride: p.group_bytes,
                t0: tokens.start + t0,
                nt: tile_len.min(nt - t0),
                ld,
                prefetch: t0 == 0,
            };
            // SAFETY: `packed_kernel` and `packed_pair_kernel` hand out only kernels this CPU
            // runs; `w` starts with `n` whole groups of `p.ty` rows of `acts.k` values, the
            // tokens are inside the batch and `out` reaches row `8(i + n) − 1`, token
            // `t0 + nt − 1` (all checked above).
            unsafe { k(&tile, acts, &mut out[GROUP * i * ld + t0..]) };
        }
        g += n;
    }
    Ok(())
}

/// Tokens per call of a pair kernel: sixteen rows on 32 zmm registers leave room for eight
/// tokens' sums, so each unpacked group-block serves twice as many tokens as in `TILE`.
pub(crate) const PAIR_TILE: usize = 8;

/// The two-group kernel for `ty` on this CPU, if any (`x86/packed512.rs`; none under
/// `with_path("scalar")` or with `LLM_SERVER_NO_ZMM` set).
pub(crate) fn packed_pair_kernel(ty: GgmlType) -> Option<PackedFn> {
    static TABLE: OnceLock<Vec<(GgmlType, PackedFn)>> = OnceLock::new();
    fn init() -> Vec<(GgmlType, PackedFn)> {
        if std::env::var_os("LLM_SERVER_NO_ZMM").is_some() {
            return Vec::new();
        }
        #[cfg(target_arch = "x86_64")]
        return crate::x86::packed_pair_kernels();
        #[cfg(not(target_arch = "x86_64"))]
        Vec::new()
    }
    find_kernel(&TABLE, init, ty)
}

/// The packed kernel for `ty` on this CPU, if any (none under `with_path("scalar")`).
pub(crate) fn packed_kernel(ty: GgmlType) -> Option<PackedFn> {
    static TABLE: OnceLock<Vec<(GgmlType, PackedFn)>> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    let init = crate::x86::packed_kernels;
    #[cfg(not(target_arch = "x86_64"))]
    let init = Vec::new;
    find_kernel(&TABLE, init, ty)
}

/// `ty`'s entry of a kernel table made once by `init`, unless the scalar path is forced.
fn find_kernel(
    table: &OnceLock<Vec<(GgmlType, PackedFn)>>,
    init: fn() -> Vec<(GgmlType, PackedFn)>,
    ty: GgmlType,
) -> Option<PackedFn> {
    if crate::Kernels::current().name() == "scalar" {
        return None;
    }
    let table = table.get_or_init(init);
    table.iter().find(|(t, _)| *t == ty).map(|(_, f)| *f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::tests::acts;
    use crate::random_blocks;

    /// Every packed kernel of every flavour this CPU has, against `vec_dot` for each row ×
    /// token: two groups, row lengths of one to five super-blocks, batches with every tile
    /// remainder.
    #[test]
    fn packed_kernels_match_vec_dot() {
        #[cfg(target_arch = "x86_64")]
        let flavours = crate::x86::packed_flavours();
        #[cfg(not(target_arch = "x86_64"))]
        let flavours: Vec<Vec<(GgmlType, PackedFn)>> = Vec::new();
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(!flavours.is_empty() && flavours[0].len() == 9);
        }
        for (ty, f) in flavours.into_iter().flatten() {
            check_against_vec_dot(ty, f, 1, crate::TILE);
        }
    }

    /// The two-group (512-bit) kernels, the same way: one call covers both groups.
    #[test]
    fn pair_kernels_match_vec_dot() {
        #[cfg(target_arch = "x86_64")]
        for (ty, f) in crate::x86::packed_pair_kernels() {
            check_against_vec_dot(ty, f, 2, PAIR_TILE);
        }
    }

    /// Kernel `f` over two groups of `ty` rows, `per_call` groups and up to `tile` tokens per
    /// call.
    fn check_against_vec_dot(ty: GgmlType, f: PackedFn, per_call: usize, tile: usize) {
        for (k, n) in [(256, 1), (512, 3), (1280, 6), (256, 9), (512, 15)] {
            let rows = 2 * GROUP;
            let rb = ty.bytes_for(k as u64).unwrap() as usize;
            let mut w = vec![0u8; rows * rb];
            random_blocks(ty, &mut w, 3 + k as u64, 1.0).unwrap();
            let p = Packed::new(ty, k, &w).unwrap().unwrap();
            let a = QActs::new(ty, &acts(k, n, k as u64 + 1), k).unwrap();
            for g in (0..2).step_by(per_call) {
                let gw = &p.data[g * p.group_bytes..];
                let mut out = vec![f32::NAN; per_call * GROUP * n];
                for t0 in (0..n).step_by(tile) {
                    let tile = PTile {
                        w: gw,
                        stride: p.group_bytes,
                        t0,
                        nt: tile.min(n - t0),
                        ld: n,
                        prefetch: true,
                    };
                    // SAFETY: the flavour lists hold only kernels this CPU runs.
                    unsafe { f(&tile, &a, &mut out[t0..]) };
                }
                for r in 0..per_call * GROUP {
                    let wr = &w[(g * GROUP + r) * rb..][..rb];
                    for t in 0..n {
                        let want = crate::vec_dot(ty, k, wr, a.row(t)).unwrap();
                        let got = out[r * n + t];
                        // Another f32 summation order: far above rounding, far below any
                        // code, scale or offset taken from the wrong place.
                        let tol = want.abs().max(1.0) * 1e-4;
                        assert!(
                            (got - want).abs() <= tol,
                            "{ty:?} k={k} row {} token {t}: {got} vs {want}",
                            g * GROUP + r
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_packed_honours_ranges_and_stride() {
        for ty in [GgmlType::Q4_K, GgmlType::Q8_0] {
            let (k, n, rows) = (256, 5, 24);
            let rb = ty.bytes_for(k as u64).unwrap() as usize;
            let mut w = vec![0u8; rows * rb];
            random_blocks(ty, &mut w, 9, 1.0).unwrap();
            let Some(p) = Packed::new(ty, k, &w).unwrap() else {
                return; // no packed kernels on this CPU
            };
            assert_eq!(p.rows(), rows);
            let a = QActs::new(ty, &acts(k, n, 2), k).unwrap();
            let ld = n + 1;
            let mut out = vec![f32::NAN; 16 * ld];
            gemm_packed(&p, 8..24, &a, 1..n, &mut out, ld).unwrap();
            for j in 0..16 {
                let wr = &w[(8 + j) * rb..][..rb];
                for t in 1..n {
                    let want = crate::vec_dot(ty, k, wr, a.row(t)).unwrap();
                    let got = out[j * ld + t - 1];
                    assert!((got - want).abs() <= want.abs().max(1.0) * 1e-4);
                }
                assert!(out[j * ld + n - 1].is_nan() && out[j * ld + n].is_nan());
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let ty = GgmlType::Q8_0;
        let k = 64;
        let rb = ty.bytes_for(k as u64).unwrap() as usize;
        assert!(Packed::new(ty, k, &vec![0u8; 7 * rb]).is_err() || group_bytes(ty, k).is_none());
        let Some(p) = Packed::new(ty, k, &vec![0u8; 8 * rb]).unwrap() else {
            return;
        };
        let a = QActs::new(ty, &[0.5; 128], k).unwrap();
        let mut out = vec![0f32; 16];
        assert!(gemm_packed(&p, 0..4, &a, 0..2, &mut out, 2).is_err());
        assert!(gemm_packed(&p, 0..16, &a, 0..2, &mut out, 2).is_err());
        assert!(gemm_packed(&p, 0..8, &a, 0..3, &mut out, 2).is_err());
        assert!(gemm_packed(&p, 0..8, &a, 0..2, &mut out[..15], 2).is_err());
        let other = QActs::new(GgmlType::Q4_0, &[0.5; 128], k).unwrap();
        assert!(gemm_packed(&p, 0..8, &other, 0..2, &mut out, 2).is_err());
        assert!(pack_group(GgmlType::F32, k, &[], &mut []).is_err());
        assert!(gemm_packed(&p, 0..8, &a, 0..2, &mut out, 2).is_ok());
    }
}
