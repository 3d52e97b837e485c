//! Products with quantized weights: `mmv`/`mmv1` for a few tokens (or one expert a pair), the
//! tensor-core `gemm` for more, dense or over the tiles of expert-sorted pairs.

use crate::backend::{Cuda, CudaAct, CudaMat, Q8_TYPES};
use crate::error::Result;
use crate::kernels::Src;
use crate::pool::Block;

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

/// One matrix of a `mmvq` launch (`MmvqMat` in matmul.cu).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MmvqMat {
    w: u64,
    y: u64,
    m: i32,
    dense: i32,
    x_off: i32,
    pad: i32,
}

/// `mmvq`'s parameters (`MmvqArgs` in matmul.cu).
#[repr(C)]
struct MmvqArgs {
    mats: [MmvqMat; 4],
    xq: u64,
    xd: u64,
    ids: u64,
    row_bytes: u64,
    n_mats: i32,
    k: i32,
    x_div: i32,
    n_dense: i32,
    lanes_log2: i32,
    pad: i32,
}

/// A matrix of a `mmvq` launch: its weights, output (rows of `m`, from `y`), and either
/// `Dense` (one output row a token, reading activation row `x_off + token`) or `ById`
/// (one a (token, expert) pair, reading row `x_off + pair / x_div`).
pub(crate) struct QMat<'a> {
    pub(crate) w: &'a CudaMat,
    pub(crate) y: u64,
    pub(crate) m: usize,
    pub(crate) dense: bool,
    pub(crate) x_off: usize,
}

impl<'a> QMat<'a> {
    /// All of `w` (experts stacked) into `y`, densely.
    pub(crate) fn dense(w: &'a CudaMat, y: &CudaAct) -> QMat<'a> {
        QMat {
            w,
            y: y.ptr(),
            m: w.m * w.experts,
            dense: true,
            x_off: 0,
        }
    }
    /// One expert of `w` a pair into `y`.
    pub(crate) fn by_id(w: &'a CudaMat, y: &CudaAct) -> QMat<'a> {
        QMat {
            w,
            y: y.ptr(),
            m: w.m,
            dense: false,
            x_off: 0,
        }
    }
}

/// How a `mmvq` launch's blocks map to activations: `tokens` dense rows; with
/// `ids = (ids, pairs, x_div)`, `pairs` pairs as well.
pub(crate) struct QRows {
    pub(crate) tokens: usize,
    pub(crate) ids: Option<(u64, usize, usize)>,
}

/// Activations in 8 bits (`quant_q8`): `rows × k` int8, then `rows × k/32` f32 scales.
#[derive(Debug)]
pub(crate) struct Q8Act {
    buf: Block,
    rows: usize,
    k: usize,
}

impl Q8Act {
    /// Bytes for `rows × k` values.
    pub(crate) fn bytes(rows: usize, k: usize) -> usize {
        rows * k + 4 * rows * k / 32
    }
    pub(crate) fn new(buf: Block, rows: usize, k: usize) -> Q8Act {
        Q8Act { buf, rows, k }
    }
    pub(crate) fn q(&self) -> u64 {
        self.buf.ptr()
    }
    pub(crate) fn d(&self) -> u64 {
        self.buf.ptr() + (self.rows * self.k) as u64
    }
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
        self.matmuls_q8(outs, x, up, None)
    }

    /// `matmuls_`, with the input's 8-bit form when the caller has it already (`q8`).
    pub(crate) fn matmuls_q8(
        &self,
        outs: &[(&CudaMat, &CudaAct)],
        x: &CudaAct,
        up: Option<&CudaAct>,
        q8: Option<&Q8Act>,
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
        let mut owned_q8 = None;
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
            if x.rows == 1 && self.q8_ok(w0) {
                let attached = x.q8.as_deref().filter(|_| up.is_none());
                let xq = match q8.or(attached) {
                    Some(q) => q,
                    None => {
                        if owned_q8.is_none() {
                            owned_q8 = Some(self.quantize(x, up)?);
                        }
                        owned_q8.as_ref().expect("just set")
                    }
                };
                let mats: Vec<QMat> = outs[i..j].iter().map(|(w, y)| QMat::dense(w, y)).collect();
                let rows = QRows {
                    tokens: 1,
                    ids: None,
                };
                self.mmvq(&mats, xq, rows)?;
            } else {
                self.mmv(&group, &input)?;
            }
            i = j;
        }
        Ok(())
    }

    /// Whether one-token products with `w` take the integer path (`mmvq`).
    pub(crate) fn q8_ok(&self, w: &CudaMat) -> bool {
        self.mmvq_variant.0 == 1 && Q8_TYPES.contains(&w.ty) && w.k.is_multiple_of(32)
    }

    /// Rows of `x` (or silu(x) ⊙ up) in 8 bits, blocks of 32 with a scale each.
    pub(crate) fn quantize(&self, x: &CudaAct, up: Option<&CudaAct>) -> Result<Q8Act> {
        let (rows, k) = (x.rows, x.width);
        if !k.is_multiple_of(32) || up.is_some_and(|u| u.rows != rows || u.width != k) {
            return Err(size_err(format!(
                "quantize: rows of {k} (a multiple of 32)"
            )));
        }
        let q = Q8Act::new(self.scratch(Q8Act::bytes(rows, k))?, rows, k);
        let f = self.f(Src::Elementwise, "quant_q8")?;
        let (xp, up_p, qp, dp) = (x.ptr(), up.map_or(0, |u| u.ptr()), q.q(), q.d());
        let (stride, ki, ri) = (k as i32, k as i32, rows as i32);
        let granules = (rows * k / 8) as u32;
        // SAFETY: x (and up) rows × k floats; the scratch holds rows × k bytes and the scales.
        unsafe {
            self.gpu.launch(
                &f,
                (granules.div_ceil(256), 1, 1),
                (256, 1, 1),
                0,
                &mut [
                    arg(&xp),
                    arg(&up_p),
                    arg(&stride),
                    arg(&ki),
                    arg(&ri),
                    arg(&qp),
                    arg(&dp),
                ],
            )
        }?;
        Ok(q)
    }

    /// One `mmvq` launch: up to four matrices of one type (in `Q8_TYPES`) and row length
    /// times 8-bit activations.
    pub(crate) fn mmvq(&self, mats: &[QMat<'_>], xq: &Q8Act, rows: QRows) -> Result<()> {
        let w0 = mats[0].w;
        if mats.len() > 4
            || mats
                .iter()
                .any(|q| q.w.ty != w0.ty || q.w.k != w0.k || (!q.dense && rows.ids.is_none()))
            || xq.k != w0.k
        {
            return Err(size_err(format!("mmvq: rows of {} by {}", w0.k, xq.k)));
        }
        let units = w0.k / 32;
        let lanes_log2 = units.next_power_of_two().min(32).trailing_zeros();
        let (idp, pairs, x_div) = rows.ids.unwrap_or((0, 0, 1));
        let mut a = MmvqArgs {
            mats: [MmvqMat::default(); 4],
            xq: xq.q(),
            xd: xq.d(),
            ids: idp,
            row_bytes: w0.row_bytes as u64,
            n_mats: mats.len() as i32,
            k: w0.k as i32,
            x_div: x_div as i32,
            n_dense: rows.tokens as i32,
            lanes_log2: lanes_log2 as i32,
            pad: 0,
        };
        let mut total = 0;
        for (slot, q) in a.mats.iter_mut().zip(mats) {
            *slot = MmvqMat {
                w: q.w.buf.ptr(),
                y: q.y,
                m: q.m as i32,
                dense: i32::from(q.dense),
                x_off: q.x_off as i32,
                pad: 0,
            };
            total += q.m;
        }
        let per_block = 4 * (32 >> lanes_log2) * self.mmvq_rows;
        let grid_y = pairs.max(rows.tokens) as u32;
        let f = self.k.func(Src::Matmul, &self.wtype(w0), "mmvq")?;
        // SAFETY: the callers size every output for its rows (tokens or pairs) × m; ids are
        // expert numbers below each matrix's expert count, written by `topk`; the activation
        // rows read exist in xq.
        unsafe {
            self.gpu.launch(
                &f,
                ((total as u32).div_ceil(per_block), grid_y, 1),
                (128, 1, 1),
                0,
                &mut [arg(&a)],
            )
        }
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
