//! Tiled products of quantized weight rows with a batch of quantized activations: the
//! matmul fast path.
//!
//! [`vec_dot`](crate::vec_dot) reproduces ggml's generic kernels bit for bit, one (row,
//! token) pair per call, each block's integer sum reduced to a scalar before its f32 step.
//! That order is what makes it exact and what makes it slow: a horizontal reduction sits on
//! the critical path of every block, and a weight block is unpacked again for every token.
//! The tile kernels here (`x86/tile.rs`) take one weight row against up to [`TILE`] tokens,
//! unpack each block once, keep f32 partial sums in vector lanes across blocks and reduce
//! once per row — as llama.cpp's own x86 kernels do. Results equal `vec_dot`'s up to f32
//! summation order; the tests bound the difference.
//!
//! Activations are quantized once per matmul into [`QActs`]: the blocks `vec_dot` takes
//! (so the fallback and the oracle path see the same codes) plus each block's scale as f32
//! and, for Q8_0/Q8_1, `d·Σq`, so no kernel converts an f16 per pair and the 4/5-bit formats
//! can multiply unsigned codes (`Σ(q − 8)·y = Σq·y − 8·Σy`, no sign fix-up per token).

use std::ops::Range;
use std::sync::OnceLock;

use gguf::GgmlType;
use half::f16;

use crate::dot::{quantize_activations, vec_dot_type, Kernels};
use crate::error::Error;

/// Tokens one kernel call takes.
pub const TILE: usize = 4;

/// One kernel call's shape: `rows` weight rows (1, or 4 with `nt = 1`) of `row_bytes` each
/// from `w`, against tokens `t0..t0 + nt` (`1 ≤ nt ≤ TILE`); row `r`, token `t` goes to
/// `out[r·ld + t]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile<'a> {
    pub(crate) w: &'a [u8],
    pub(crate) row_bytes: usize,
    pub(crate) rows: usize,
    pub(crate) t0: usize,
    pub(crate) nt: usize,
    pub(crate) ld: usize,
}

/// A tile kernel. Unsafe only for its CPU features; [`tile_kernel`] hands out only kernels
/// this CPU runs.
pub(crate) type TileFn = unsafe fn(g: &Tile<'_>, a: &QActs, out: &mut [f32]);

/// Activations of a batch quantized for one weight type, with per-block scales unpacked.
#[derive(Debug, Clone)]
pub struct QActs {
    pub(crate) weight: GgmlType,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) data: Vec<u8>,
    pub(crate) row_bytes: usize,
    /// Per token, per block: the block's scale `d` as f32.
    pub(crate) scale: Vec<f32>,
    /// Per token, per block (Q8_0/Q8_1 only): `d·Σq`.
    pub(crate) sum: Vec<f32>,
}

impl QActs {
    /// Quantizes `x` (`n × k`, token-major) for products with `weight` rows of `k` values.
    pub fn new(weight: GgmlType, x: &[f32], k: usize) -> Result<QActs, Error> {
        let n = x.len().checked_div(k).unwrap_or(0);
        let (mut data, mut row) = (Vec::new(), Vec::new());
        for t in 0..n {
            quantize_activations(weight, &x[t * k..(t + 1) * k], &mut row)?;
            data.extend_from_slice(&row);
        }
        let row_bytes = data.len().checked_div(n).unwrap_or(0);
        let act = vec_dot_type(weight);
        let (mut scale, mut sum) = (Vec::new(), Vec::new());
        let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        match act {
            GgmlType::Q8_0 => {
                for b in data.chunks_exact(34) {
                    let d = f16_at(b, 0);
                    let s: i32 = b[2..].iter().map(|&q| i32::from(q as i8)).sum();
                    scale.push(d);
                    sum.push(d * s as f32);
                }
            }
            GgmlType::Q8_1 => {
                // ggml's Q4_1/Q5_1 kernels use the block's stored f16 `s`: so do we.
                for b in data.chunks_exact(36) {
                    scale.push(f16_at(b, 0));
                    sum.push(f16_at(b, 2));
                }
            }
            GgmlType::Q8_K => {
                for b in data.chunks_exact(292) {
                    scale.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
            _ => {}
        }
        Ok(QActs {
            weight,
            k,
            n,
            data,
            row_bytes,
            scale,
            sum,
        })
    }

    /// The batches of `parts` (same weight type and row length) one after another, so that
    /// callers can quantize slices of a large batch on several threads.
    pub fn concat(parts: Vec<QActs>) -> Result<QActs, Error> {
        let mut it = parts.into_iter();
        let Some(mut all) = it.next() else {
            return Err(Error::GemmShape("concat of no batches".into()));
        };
        for p in it {
            if p.weight != all.weight || p.k != all.k {
                return Err(Error::GemmShape(format!(
                    "concat of {} × {} activations onto {} × {}",
                    p.weight, p.k, all.weight, all.k
                )));
            }
            if p.n == 0 {
                continue;
            }
            all.row_bytes = p.row_bytes;
            all.n += p.n;
            all.data.extend_from_slice(&p.data);
            all.scale.extend_from_slice(&p.scale);
            all.sum.extend_from_slice(&p.sum);
        }
        Ok(all)
    }

    /// Tokens in the batch.
    pub fn n_tokens(&self) -> usize {
        self.n
    }

    /// The weight type the batch was quantized for.
    pub fn weight(&self) -> GgmlType {
        self.weight
    }

    /// Values per token row.
    pub fn row_len(&self) -> usize {
        self.k
    }

    /// Tokens `rows` of the batch, in that order: a MoE expert's tokens out of activations
    /// quantized once for every expert.
    pub fn gather(&self, rows: &[usize]) -> Result<QActs, Error> {
        let nb = self.blocks();
        let mut out = QActs {
            weight: self.weight,
            k: self.k,
            n: rows.len(),
            data: Vec::with_capacity(rows.len() * self.row_bytes),
            row_bytes: self.row_bytes,
            scale: Vec::with_capacity(rows.len() * nb),
            sum: Vec::new(),
        };
        for &t in rows {
            if t >= self.n {
                return Err(Error::GemmShape(format!(
                    "token {t} of a batch of {}",
                    self.n
                )));
            }
            out.data.extend_from_slice(self.row(t));
            out.scale.extend_from_slice(self.scales(t));
            if !self.sum.is_empty() {
                out.sum.extend_from_slice(self.sums(t));
            }
        }
        Ok(out)
    }

    /// Token `t`'s quantized row, as [`vec_dot`](crate::vec_dot) takes it.
    pub fn row(&self, t: usize) -> &[u8] {
        &self.data[t * self.row_bytes..(t + 1) * self.row_bytes]
    }

    /// Token `t`'s block scales (`d` as f32), one per block.
    pub(crate) fn scales(&self, t: usize) -> &[f32] {
        let nb = self.blocks();
        &self.scale[t * nb..(t + 1) * nb]
    }

    /// Token `t`'s block sums (`d·Σq`; Q8_0/Q8_1 activations only), one per block.
    pub(crate) fn sums(&self, t: usize) -> &[f32] {
        let nb = self.blocks();
        &self.sum[t * nb..(t + 1) * nb]
    }

    /// Blocks per token row.
    pub(crate) fn blocks(&self) -> usize {
        self.scale.len() / self.n.max(1)
    }
}

/// `out[j·ld + (t − tokens.start)] = row_j · x_t` for the `w.len() / row_bytes` weight rows
/// in `w` (raw blocks of `acts`' weight type) and the tokens `tokens` of `acts`.
///
/// Uses a tile kernel where this CPU has one for the type (and no scalar path is forced with
/// [`with_path`](crate::with_path)), else [`Kernels::vec_dot`] per pair.
pub fn gemm(
    w: &[u8],
    acts: &QActs,
    tokens: Range<usize>,
    out: &mut [f32],
    ld: usize,
) -> Result<(), Error> {
    let ty = acts.weight;
    let row_bytes = ty.bytes_for(acts.k as u64).ok_or(Error::PartialBlock {
        ty,
        n_elements: acts.k,
        block_size: ty.block_size(),
    })? as usize;
    if row_bytes == 0 || !w.len().is_multiple_of(row_bytes) {
        return Err(Error::GemmShape(format!(
            "{} weight bytes are not whole {ty} rows of {} values",
            w.len(),
            acts.k
        )));
    }
    let n_rows = w.len() / row_bytes;
    check_output(acts, &tokens, n_rows, out.len(), ld)?;
    let nt = tokens.len();
    let kernels = Kernels::current();
    match tile_kernel(ty).filter(|_| kernels.name() != "scalar") {
        Some(f) => {
            let call = |j: usize, rows: usize, t0: usize, nt: usize, out: &mut [f32]| {
                let g = Tile {
                    w: &w[j * row_bytes..(j + rows) * row_bytes],
                    row_bytes,
                    rows,
                    t0,
                    nt,
                    ld,
                };
                // SAFETY: `tile_kernel` returned `f` only after checking this CPU's features;
                // `g.w` holds `rows` whole rows of `ty`, `t0 + nt ≤ acts.n` (checked above),
                // and `out` reaches `(rows − 1)·ld + nt` (checked above).
                unsafe { f(&g, acts, &mut out[j * ld..]) };
            };
            if nt == 1 {
                // Decode: four rows per call (independent chains), the rest one by one.
                let quads = n_rows / 4 * 4;
                for j in (0..quads).step_by(4) {
                    call(j, 4, tokens.start, 1, out);
                }
                for j in quads..n_rows {
                    call(j, 1, tokens.start, 1, out);
                }
            } else {
                for j in 0..n_rows {
                    for t0 in (0..nt).step_by(TILE) {
                        call(j, 1, tokens.start + t0, TILE.min(nt - t0), &mut out[t0..]);
                    }
                }
            }
        }
        None => {
            for (j, wr) in w.chunks_exact(row_bytes).enumerate() {
                for (i, t) in tokens.clone().enumerate() {
                    out[j * ld + i] = kernels.vec_dot(ty, acts.k, wr, acts.row(t))?;
                }
            }
        }
    }
    Ok(())
}

/// That `tokens` lie in the batch and that `n_rows` rows × those tokens at stride `ld` fit in
/// an output of `out_len` values (row `r`, token `t` at `r·ld + t`).
pub(crate) fn check_output(
    acts: &QActs,
    tokens: &Range<usize>,
    n_rows: usize,
    out_len: usize,
    ld: usize,
) -> Result<(), Error> {
    if tokens.start > tokens.end || tokens.end > acts.n {
        return Err(Error::GemmShape(format!(
            "tokens {tokens:?} outside a batch of {}",
            acts.n
        )));
    }
    let nt = tokens.len();
    if n_rows > 1 && ld < nt || n_rows > 0 && nt > 0 && out_len < (n_rows - 1) * ld + nt {
        return Err(Error::GemmShape(format!(
            "output of {out_len} values for {n_rows} rows × {nt} tokens at stride {ld}"
        )));
    }
    Ok(())
}

/// The tile kernel for `ty` on this CPU, if there is one.
pub(crate) fn tile_kernel(ty: GgmlType) -> Option<TileFn> {
    static TABLE: OnceLock<Vec<(GgmlType, TileFn)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            crate::x86::tile_kernels()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Vec::new()
        }
    });
    table.iter().find(|(t, _)| *t == ty).map(|(_, f)| *f)
}

/// The weight types with a tile kernel on this CPU.
pub fn tile_types() -> Vec<GgmlType> {
    crate::DOT_TYPES
        .iter()
        .copied()
        .filter(|&t| tile_kernel(t).is_some())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{random_blocks, with_path};

    /// Random activations with a few large values, as real hidden states have.
    pub(crate) fn acts(k: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..k * n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5;
                if i % 97 == 0 {
                    v * 40.0
                } else {
                    v
                }
            })
            .collect()
    }

    /// Every tile kernel of every flavour this CPU has against `vec_dot` on every row ×
    /// token: several batch sizes (tile remainders 1..3) and row lengths of 1–6 super-blocks.
    #[test]
    fn tiles_match_vec_dot() {
        #[cfg(target_arch = "x86_64")]
        let flavours = crate::x86::tile_flavours();
        #[cfg(not(target_arch = "x86_64"))]
        let flavours: Vec<Vec<(GgmlType, TileFn)>> = Vec::new();
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(!flavours.is_empty() && flavours[0].len() >= 9);
        }
        for (ty, f) in flavours.into_iter().flatten() {
            for (k, n) in [(256, 1), (512, 3), (1536, 7), (256, 9)] {
                let rows = 5;
                let mut w = vec![0u8; ty.bytes_for((k * rows) as u64).unwrap() as usize];
                random_blocks(ty, &mut w, k as u64 + n as u64, 1.0).unwrap();
                let x = acts(k, n, 7 + k as u64);
                let a = QActs::new(ty, &x, k).unwrap();
                let rb = w.len() / rows;
                for (j, wr) in w.chunks_exact(rb).enumerate() {
                    let mut out = vec![0f32; n];
                    for (c, oc) in out.chunks_mut(TILE).enumerate() {
                        let g = Tile {
                            w: wr,
                            row_bytes: rb,
                            rows: 1,
                            t0: c * TILE,
                            nt: oc.len(),
                            ld: n,
                        };
                        // SAFETY: `tile_flavours` lists only kernels this CPU runs.
                        unsafe { f(&g, &a, oc) };
                    }
                    for (t, &got) in out.iter().enumerate() {
                        let want = crate::vec_dot(ty, k, wr, a.row(t)).unwrap();
                        // f32 sums of O(k) terms in another order: 1e-4 relative to the
                        // result (or absolute below 1) is far above rounding, far below
                        // any indexing or offset bug.
                        let tol = want.abs().max(1.0) * 1e-4;
                        assert!(
                            (got - want).abs() <= tol,
                            "{ty:?} k={k} row {j} token {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// `gemm` for one token (four-row kernels plus a remainder) and for a batch, every tile
    /// type, against `vec_dot`.
    #[test]
    fn gemm_matches_vec_dot_for_decode_and_batches() {
        for ty in tile_types() {
            for (k, n, rows) in [(512, 1, 7), (256, 1, 4), (256, 6, 5)] {
                let mut w = vec![0u8; ty.bytes_for((k * rows) as u64).unwrap() as usize];
                random_blocks(ty, &mut w, 11 + rows as u64, 1.0).unwrap();
                let a = QActs::new(ty, &acts(k, n, 5), k).unwrap();
                let ld = n + 1; // a stride wider than the batch must be honoured
                let mut out = vec![f32::NAN; rows * ld];
                gemm(&w, &a, 0..n, &mut out, ld).unwrap();
                let rb = w.len() / rows;
                for (j, wr) in w.chunks_exact(rb).enumerate() {
                    for t in 0..n {
                        let want = crate::vec_dot(ty, k, wr, a.row(t)).unwrap();
                        let got = out[j * ld + t];
                        let tol = want.abs().max(1.0) * 1e-4;
                        assert!(
                            (got - want).abs() <= tol,
                            "{ty:?} row {j} token {t}: {got} vs {want}"
                        );
                    }
                    assert!(
                        j + 1 == rows || out[j * ld + n].is_nan(),
                        "wrote past the tile"
                    );
                }
            }
        }
    }

    #[test]
    fn scalar_path_falls_back_exactly() {
        let ty = GgmlType::Q4_0;
        let (k, n) = (64, 3);
        let mut w = vec![0u8; ty.bytes_for((k * 2) as u64).unwrap() as usize];
        random_blocks(ty, &mut w, 3, 1.0).unwrap();
        let a = QActs::new(ty, &acts(k, n, 1), k).unwrap();
        let mut out = vec![0f32; 2 * n];
        with_path("scalar", || gemm(&w, &a, 0..n, &mut out, n))
            .unwrap()
            .unwrap();
        let want = with_path("scalar", || crate::vec_dot(ty, k, &w[..36], a.row(2)))
            .unwrap()
            .unwrap();
        assert_eq!(out[2], want);
    }

    #[test]
    fn concat_equals_one_batch() {
        let ty = GgmlType::Q4_K;
        let x = acts(256, 5, 3);
        let whole = QActs::new(ty, &x, 256).unwrap();
        let parts = vec![
            QActs::new(ty, &x[..0], 256).unwrap(),
            QActs::new(ty, &x[..2 * 256], 256).unwrap(),
            QActs::new(ty, &x[2 * 256..], 256).unwrap(),
        ];
        let joined = QActs::concat(parts).unwrap();
        assert_eq!(joined.n_tokens(), 5);
        assert_eq!(joined.data, whole.data);
        assert_eq!(joined.scale, whole.scale);
        assert!(QActs::concat(vec![whole, QActs::new(GgmlType::Q8_0, &x, 256).unwrap()]).is_err());
    }

    #[test]
    fn gather_equals_quantizing_the_rows() {
        for ty in [GgmlType::Q4_K, GgmlType::Q4_1] {
            let x = acts(256, 6, 4);
            let all = QActs::new(ty, &x, 256).unwrap();
            let rows = [4, 0, 4, 5];
            let picked: Vec<f32> = rows
                .iter()
                .flat_map(|&t| x[t * 256..(t + 1) * 256].to_vec())
                .collect();
            let want = QActs::new(ty, &picked, 256).unwrap();
            let got = all.gather(&rows).unwrap();
            assert_eq!(got.n_tokens(), 4);
            assert_eq!(
                (got.data, got.scale, got.sum),
                (want.data, want.scale, want.sum)
            );
            assert!(all.gather(&[6]).is_err());
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        let ty = GgmlType::Q8_0;
        let a = QActs::new(ty, &[0.5; 64], 32).unwrap();
        let mut out = vec![0f32; 4];
        assert!(gemm(&[0u8; 33], &a, 0..2, &mut out, 2).is_err());
        assert!(gemm(&[0u8; 34], &a, 0..3, &mut out, 2).is_err());
        assert!(gemm(&[0u8; 68], &a, 0..2, &mut out[..3], 2).is_err());
    }
}
