//! Products with quantized weights: `mmv`/`mmv1` for a few tokens (or one expert a pair), the
//! tensor-core `gemm` for more, dense or over the tiles of expert-sorted pairs.

use crate::backend::{Cuda, CudaAct, CudaMat};
use crate::error::Result;
use crate::kernels::Src;

use super::{arg, size_err};

/// Tokens up to which a matmul reads the weights once per token group with `mmv` rather than
/// tiling them for the tensor cores.
pub(crate) const MMV_MAX: usize = 8;

/// One matrix of a `mmv` launch (`MmvMat` in matmul.cu).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MmvMat {
    w: u64,
    y: u64,
    m: i32,
    pad: i32,
}

/// `mmv`'s parameters (`MmvArgs` in matmul.cu).
#[repr(C)]
struct MmvArgs {
    mats: [MmvMat; 4],
    x: u64,
    x2: u64,
    ids: u64,
    row_bytes: u64,
    n_mats: i32,
    k: i32,
    n: i32,
    x_div: i32,
    x_stride: i32,
    pad: i32,
}

/// The input of a `mmv` launch: rows of `x` (or silu(x) ⊙ x2), `n` dense tokens or, with
/// `ids`, `n` (token, expert) pairs reading row pair / x_div.
pub(crate) struct MmvIn<'a> {
    pub(crate) x: &'a CudaAct,
    pub(crate) x2: Option<&'a CudaAct>,
    pub(crate) n: usize,
    pub(crate) ids: Option<u64>,
    pub(crate) x_div: usize,
}

/// `gemm`'s parameters (`GemmArgs` in matmul.cu).
#[repr(C)]
struct GemmArgs {
    w: u64,
    x: u64,
    y: u64,
    tiles: u64,
    n_tiles: u64,
    x_rows: u64,
    row_bytes: u64,
    expert_stride: u64,
    k: i32,
    m: i32,
    n: i32,
    x_stride: i32,
    y_stride: i32,
}

impl Cuda {
    /// `y = x·wᵀ` (a plain matrix).
    pub(crate) fn matmul_(&self, w: &CudaMat, x: &CudaAct, y: &CudaAct) -> Result<()> {
        self.matmuls_(&[(w, y)], x, None)
    }

    /// Several products of the same input: up to four matrices of one type and row length in
    /// one `mmv` launch for a few tokens, one `gemm` each for more. With `up`, the input is
    /// silu(x) ⊙ up (a SwiGLU's down projection).
    pub(crate) fn matmuls_(
        &self,
        outs: &[(&CudaMat, &CudaAct)],
        x: &CudaAct,
        up: Option<&CudaAct>,
    ) -> Result<()> {
        for (w, y) in outs {
            if w.k != x.width || y.width != w.m * w.experts || y.rows != x.rows {
                return Err(size_err(format!(
                    "{}: rows of {} by an input of {}",
                    w.name, w.k, x.width
                )));
            }
        }
        if x.rows > MMV_MAX {
            let owned;
            let x = match up {
                Some(u) => {
                    owned = self.act(x.rows, x.width)?;
                    // SAFETY: same sizes (checked by binary).
                    unsafe { self.gpu.dtod(owned.ptr(), x.ptr(), 4 * x.len())? };
                    self.binary("glu_silu", &owned, u)?;
                    &owned
                }
                None => x,
            };
            for (w, y) in outs {
                self.gemm(w, w.m * w.experts, x, y, None)?;
            }
            return Ok(());
        }
        let input = MmvIn {
            x,
            x2: up,
            n: x.rows,
            ids: None,
            x_div: 1,
        };
        let mut i = 0;
        while i < outs.len() {
            let (w0, _) = outs[i];
            let mut j = i + 1;
            while j < outs.len() && j - i < 4 && outs[j].0.ty == w0.ty && outs[j].0.k == w0.k {
                j += 1;
            }
            let group: Vec<(&CudaMat, &CudaAct, usize)> = outs[i..j]
                .iter()
                .map(|(w, y)| (*w, *y, w.m * w.experts))
                .collect();
            self.mmv(&group, &input)?;
            i = j;
        }
        Ok(())
    }

    /// One `mmv` launch over up to four matrices `(weights, output, rows)` of one type.
    pub(crate) fn mmv(
        &self,
        mats: &[(&CudaMat, &CudaAct, usize)],
        input: &MmvIn<'_>,
    ) -> Result<()> {
        let w0 = mats[0].0;
        let mut a = MmvArgs {
            mats: [MmvMat::default(); 4],
            x: input.x.ptr(),
            x2: input.x2.map_or(0, |u| u.ptr()),
            ids: input.ids.unwrap_or(0),
            row_bytes: w0.row_bytes as u64,
            n_mats: mats.len() as i32,
            k: w0.k as i32,
            n: input.n as i32,
            x_div: input.x_div as i32,
            x_stride: input.x.width as i32,
            pad: 0,
        };
        let mut rows = 0;
        for (slot, (w, y, m)) in a.mats.iter_mut().zip(mats) {
            *slot = MmvMat {
                w: w.buf.ptr(),
                y: y.ptr(),
                m: *m as i32,
                pad: 0,
            };
            rows += m;
        }
        let grid_y = if input.ids.is_some() {
            input.n as u32
        } else {
            1
        };
        // One token (or one pair a block row): `mmv1`, several rows a warp.
        let one = input.ids.is_some() || input.n == 1;
        if one && self.mmv1_variant.0 > 0 {
            let f = self.k.func(Src::Matmul, &self.wtype(w0), "mmv1")?;
            let per_block = 4 * self.mmv1_variant.0;
            // SAFETY: as below.
            return unsafe {
                self.gpu.launch(
                    &f,
                    ((rows as u32).div_ceil(per_block), grid_y, 1),
                    (128, 1, 1),
                    0,
                    &mut [arg(&a)],
                )
            };
        }
        let f = self.k.func(Src::Matmul, &self.wtype(w0), "mmv")?;
        // SAFETY: shapes checked by the callers; ids (when given) are expert numbers below
        // each matrix's expert count, written by `topk`.
        unsafe {
            self.gpu.launch(
                &f,
                ((rows as u32).div_ceil(4 / self.mmv_variant.0), grid_y, 1),
                (128, 1, 1),
                0,
                &mut [arg(&a)],
            )
        }
    }

    /// `gemm`: dense over the rows of x, or over the tiles of sorted (token, expert) pairs:
    /// `moe` = (tiles, tile count, x rows of the sorted pairs or 0, max tiles).
    pub(crate) fn gemm(
        &self,
        w: &CudaMat,
        m: usize,
        x: &CudaAct,
        y: &CudaAct,
        moe: Option<(u64, u64, u64, usize)>,
    ) -> Result<()> {
        let (tiles, n_tiles, x_rows, grid_y) = match moe {
            Some(t) => t,
            None => (0, 0, 0, y.rows.div_ceil(64)),
        };
        let a = GemmArgs {
            w: w.buf.ptr(),
            x: x.ptr(),
            y: y.ptr(),
            tiles,
            n_tiles,
            x_rows,
            row_bytes: w.row_bytes as u64,
            expert_stride: (w.m * w.row_bytes) as u64,
            k: w.k as i32,
            m: m as i32,
            n: y.rows as i32,
            x_stride: x.width as i32,
            y_stride: y.width as i32,
        };
        let f = self.k.func(Src::Matmul, &self.wtype(w), "gemm")?;
        let grid = ((m as u32).div_ceil(64), grid_y.max(1) as u32, 1);
        // SAFETY: as for mmv; tiles cover rows below y.rows (moe_sort).
        unsafe { self.gpu.launch(&f, grid, (128, 1, 1), 0, &mut [arg(&a)]) }
    }
}
