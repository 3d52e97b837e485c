//! The backend's operations: argument checks, grid choice and the launch of each kernel of
//! `kernels/` (device code there, launch code here, as STYLE §10 asks).

use std::ffi::c_void;

use engine::backend::{AttnParams, DeltaNet, Experts};
use engine::kv::KvType;
use engine::ops::{Rope, RopeStyle};

use crate::backend::{Cuda, CudaAct, CudaIndex, CudaLayer, CudaMat, CudaStep, CudaVec};
use crate::driver::Func;
use crate::error::{Error, Result};
use crate::kernels::Src;

/// A kernel parameter: the address of its value.
fn arg<T>(v: &T) -> *mut c_void {
    v as *const T as *mut c_void
}

fn size_err(what: String) -> Error {
    Error::Size(what)
}

/// Tokens up to which a matmul reads the weights once per token group with `mmv` rather than
/// tiling them for the tensor cores.
const MMV_MAX: usize = 8;

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
struct MmvIn<'a> {
    x: &'a CudaAct,
    x2: Option<&'a CudaAct>,
    n: usize,
    ids: Option<u64>,
    x_div: usize,
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

/// `attn`'s parameters (`AttnArgs` in attention.cu).
#[repr(C)]
struct AttnArgs {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    part: u64,
    pos0: u64,
    n: i32,
    n_head: i32,
    n_head_kv: i32,
    window: i32,
    n_split: i32,
    kt: i32,
    vt: i32,
    scale: f32,
}

/// `delta_rule`'s parameters (`DeltaArgs` in deltanet.cu).
#[repr(C)]
struct DeltaArgs {
    y: u64,
    beta: u64,
    alpha: u64,
    dt: u64,
    a: u64,
    state: u64,
    o: u64,
    n: i32,
    n_k_head: i32,
    n_v_head: i32,
    d_v: i32,
    grouped: i32,
    eps: f32,
}

/// Experts routed per MoE decode call below which the chosen experts go through `mmv` with
/// their ids, above which pairs are sorted by expert for the grouped `gemm`.
const MOE_MMV_PAIRS: usize = 64;

fn kv_code(t: KvType) -> i32 {
    match t {
        KvType::F16 => 1,
        KvType::Q8_0 => 8,
        KvType::Q4_0 => 2,
    }
}

impl Cuda {
    fn f(&self, src: Src, name: &'static str) -> Result<Func> {
        self.k.func(src, &[], name)
    }

    /// The matmul module's variant for weights of `w`'s type.
    fn wtype(&self, w: &CudaMat) -> Vec<(&'static str, String)> {
        vec![
            ("WTYPE", w.ty.id().to_string()),
            ("MMV_SPLIT", self.mmv_variant.0.to_string()),
            ("MMV_UNROLL", self.mmv_variant.1.to_string()),
            ("MMV1_ROWS", self.mmv1_variant.0.max(1).to_string()),
            ("MMV1_UNROLL", self.mmv1_variant.1.to_string()),
        ]
    }

    /// Launch `f` over `n` threads in blocks of 256.
    fn launch_1d(&self, f: Func, n: u64, args: &mut [*mut c_void]) -> Result<()> {
        let blocks = n.div_ceil(256).max(1) as u32;
        // SAFETY: each caller passes the kernel's parameters in order; buffers are sized by
        // the checks before the call.
        unsafe { self.gpu.launch(&f, (blocks, 1, 1), (256, 1, 1), 0, args) }
    }

    pub(crate) fn get_rows(&self, s: &CudaStep, table: &CudaMat) -> Result<CudaAct> {
        let y = self.act(s.n, table.k)?;
        let f = self.k.func(Src::Matmul, &self.wtype(table), "get_rows")?;
        let (w, rb, ids, out, k) = (
            table.buf.ptr(),
            table.row_bytes as u64,
            self.step.ptr() + 4,
            y.ptr(),
            table.k as i32,
        );
        let grid = ((table.k / 8).div_ceil(128) as u32, s.n as u32, 1);
        // SAFETY: ids are the step's n tokens (checked against the vocabulary by the engine);
        // the output holds n rows of k.
        unsafe {
            self.gpu.launch(
                &f,
                grid,
                (128, 1, 1),
                0,
                &mut [arg(&w), arg(&rb), arg(&ids), arg(&out), arg(&k)],
            )?
        };
        Ok(y)
    }

    pub(crate) fn scale_(&self, x: &CudaAct, c: f32) -> Result<()> {
        let (p, n) = (x.ptr(), x.len() as u64);
        self.launch_1d(
            self.f(Src::Elementwise, "scale")?,
            n,
            &mut [arg(&p), arg(&c), arg(&n)],
        )
    }

    pub(crate) fn softcap_(&self, x: &CudaAct, c: f32) -> Result<()> {
        let (p, n) = (x.ptr(), x.len() as u64);
        self.launch_1d(
            self.f(Src::Elementwise, "softcap")?,
            n,
            &mut [arg(&p), arg(&c), arg(&n)],
        )
    }

    pub(crate) fn add_(&self, h: &CudaAct, a: &CudaAct) -> Result<()> {
        self.binary("add", h, a)
    }

    /// An element-wise kernel `name(x, y, n)` over two activations of one shape.
    pub(crate) fn binary(&self, name: &'static str, x: &CudaAct, y: &CudaAct) -> Result<()> {
        if x.len() != y.len() {
            return Err(size_err(format!(
                "{name}: {} and {} values",
                x.len(),
                y.len()
            )));
        }
        let (a, b, n) = (x.ptr(), y.ptr(), x.len() as u64);
        self.launch_1d(
            self.f(Src::Elementwise, name)?,
            n,
            &mut [arg(&a), arg(&b), arg(&n)],
        )
    }

    pub(crate) fn add_bias_(&self, x: &CudaAct, b: &CudaVec) -> Result<()> {
        if b.len != x.width {
            return Err(size_err(format!(
                "bias of {} on rows of {}",
                b.len, x.width
            )));
        }
        let (p, bp, w, n) = (x.ptr(), b.buf.ptr(), x.width as i32, x.len() as u64);
        let f = self.f(Src::Elementwise, "add_bias")?;
        self.launch_1d(f, n, &mut [arg(&p), arg(&bp), arg(&w), arg(&n)])
    }

    pub(crate) fn rms_norm_(&self, x: &CudaAct, w: &CudaVec, eps: f32, y: &CudaAct) -> Result<()> {
        if w.len == 0 || !x.width.is_multiple_of(w.len) || y.len() != x.len() {
            return Err(size_err(format!(
                "rms_norm: rows of {} by groups of {}",
                x.width, w.len
            )));
        }
        let groups = (x.len() / w.len) as i32;
        let (xp, wp, yp, width) = (x.ptr(), w.buf.ptr(), y.ptr(), w.len as i32);
        if w.len == x.width && w.len >= 512 {
            let f = self.f(Src::Norm, "rms_norm_rows")?;
            // SAFETY: x and y hold `rows` rows of `width`; w holds `width`.
            return unsafe {
                self.gpu.launch(
                    &f,
                    (x.rows as u32, 1, 1),
                    (256, 1, 1),
                    0,
                    &mut [arg(&xp), arg(&wp), arg(&yp), arg(&width), arg(&eps)],
                )
            };
        }
        let f = self.f(Src::Norm, "rms_norm")?;
        let grid = ((groups as u32).div_ceil(4), 1, 1);
        // SAFETY: x and y hold `groups` groups of `width`; w holds `width`.
        unsafe {
            self.gpu.launch(
                &f,
                grid,
                (128, 1, 1),
                0,
                &mut [
                    arg(&xp),
                    arg(&wp),
                    arg(&yp),
                    arg(&width),
                    arg(&groups),
                    arg(&eps),
                ],
            )
        }
    }

    /// `h += a; y = rms_norm(h) ⊙ w`.
    pub(crate) fn add_norm_(
        &self,
        h: &CudaAct,
        a: &CudaAct,
        w: &CudaVec,
        eps: f32,
    ) -> Result<CudaAct> {
        if h.len() != a.len() || w.len != h.width {
            return Err(size_err(format!(
                "add_norm: rows of {} and a norm of {}",
                h.width, w.len
            )));
        }
        let y = self.act(h.rows, h.width)?;
        let (hp, ap, wp, yp, width) = (h.ptr(), a.ptr(), w.buf.ptr(), y.ptr(), h.width as i32);
        let f = self.f(Src::Norm, "add_norm")?;
        // SAFETY: h, a and y hold rows of `width`; w holds `width`.
        unsafe {
            self.gpu.launch(
                &f,
                (h.rows as u32, 1, 1),
                (256, 1, 1),
                0,
                &mut [
                    arg(&hp),
                    arg(&ap),
                    arg(&wp),
                    arg(&yp),
                    arg(&width),
                    arg(&eps),
                ],
            )?
        };
        Ok(y)
    }

    pub(crate) fn norm_gate_(
        &self,
        o: &CudaAct,
        w: &CudaVec,
        z: &CudaAct,
        eps: f32,
    ) -> Result<CudaAct> {
        if w.len == 0 || !o.width.is_multiple_of(w.len) || z.len() != o.len() {
            return Err(size_err("norm_gate: sizes differ".into()));
        }
        let y = self.act(o.rows, o.width)?;
        let groups = (o.len() / w.len) as i32;
        let (op, wp, zp, yp, width) = (o.ptr(), w.buf.ptr(), z.ptr(), y.ptr(), w.len as i32);
        let f = self.f(Src::Norm, "norm_gate")?;
        // SAFETY: o, z and y hold `groups` groups of `width`; w holds `width`.
        unsafe {
            self.gpu.launch(
                &f,
                ((groups as u32).div_ceil(4), 1, 1),
                (128, 1, 1),
                0,
                &mut [
                    arg(&op),
                    arg(&wp),
                    arg(&zp),
                    arg(&yp),
                    arg(&width),
                    arg(&groups),
                    arg(&eps),
                ],
            )?
        };
        Ok(y)
    }

    pub(crate) fn gather_cols_(&self, x: &CudaAct, cols: &CudaIndex) -> Result<CudaAct> {
        let y = self.act(x.rows, cols.len)?;
        let (xp, cp, yp) = (x.ptr(), cols.buf.ptr(), y.ptr());
        let (wi, wo, n) = (x.width as i32, cols.len as i32, x.rows as i32);
        let f = self.f(Src::Elementwise, "gather_cols")?;
        let grid = ((cols.len as u32).div_ceil(256), x.rows as u32, 1);
        // SAFETY: the column map was built for this width (the model's own splits).
        unsafe {
            self.gpu.launch(
                &f,
                grid,
                (256, 1, 1),
                0,
                &mut [arg(&xp), arg(&cp), arg(&yp), arg(&wi), arg(&wo), arg(&n)],
            )?
        };
        Ok(y)
    }

    pub(crate) fn rope_(&self, x: &CudaAct, head_dim: usize, rope: Rope) -> Result<()> {
        if head_dim == 0 || !x.width.is_multiple_of(head_dim) || rope.n_rot > head_dim {
            return Err(size_err(format!(
                "rope: rows of {} by heads of {head_dim}",
                x.width
            )));
        }
        let n_heads = (x.width / head_dim) as i32;
        let (p, pos, n) = (x.ptr(), self.step.ptr(), x.rows as i32);
        let (hd, nr, base) = (head_dim as i32, rope.n_rot as i32, rope.base);
        let neox = i32::from(rope.style == RopeStyle::Neox);
        let total = x.rows as u64 * n_heads as u64 * (rope.n_rot / 2) as u64;
        let f = self.f(Src::Rope, "rope")?;
        self.launch_1d(
            f,
            total,
            &mut [
                arg(&p),
                arg(&pos),
                arg(&n),
                arg(&n_heads),
                arg(&hd),
                arg(&nr),
                arg(&base),
                arg(&neox),
            ],
        )
    }

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
    fn mmv(&self, mats: &[(&CudaMat, &CudaAct, usize)], input: &MmvIn<'_>) -> Result<()> {
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
    fn gemm(
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

    pub(crate) fn moe_(&self, _: &CudaStep, e: &Experts<Cuda>, x: &CudaAct) -> Result<CudaAct> {
        let (n, k, ne, ff, emb) = (x.rows, e.n_expert_used, e.n_expert, e.n_ff_exp, x.width);
        if ne > 1024 || k > 32 || k == 0 || e.gate_exps.experts != ne || e.gate_exps.k != emb {
            return Err(size_err(format!(
                "moe: {ne} experts, {k} a token (at most 1024 and 32)"
            )));
        }
        let logits = self.act(n, ne)?;
        self.matmul_(&e.gate_inp, x, &logits)?; // ffn_moe_logits
        let pairs = n * k;
        let ids = self.scratch(4 * pairs)?;
        let weights = self.act(n, k)?;
        let f = self.f(Src::Moe, "topk")?;
        let (lp, nei, ki, ni, ip, wp) = (
            logits.ptr(),
            ne as i32,
            k as i32,
            n as i32,
            ids.ptr(),
            weights.ptr(),
        );
        // SAFETY: logits n × ne; ids and weights n × k.
        unsafe {
            self.gpu.launch(
                &f,
                ((n as u32).div_ceil(4), 1, 1),
                (128, 1, 1),
                0,
                &mut [arg(&lp), arg(&nei), arg(&ki), arg(&ni), arg(&ip), arg(&wp)],
            )?
        };
        let gate = self.act(pairs, ff)?;
        let up = self.act(pairs, ff)?;
        let down = self.act(pairs, emb)?;
        let sorted = if pairs <= MOE_MMV_PAIRS {
            let by_id = |xin, x2, x_div| MmvIn {
                x: xin,
                x2,
                n: pairs,
                ids: Some(ip),
                x_div,
            };
            let gu = [(&e.gate_exps, &gate, ff), (&e.up_exps, &up, ff)];
            if e.gate_exps.ty == e.up_exps.ty {
                self.mmv(&gu, &by_id(x, None, k))?;
            } else {
                self.mmv(&gu[..1], &by_id(x, None, k))?;
                self.mmv(&gu[1..], &by_id(x, None, k))?;
            }
            // ffn_moe_down of silu(gate) ⊙ up, in one pass.
            self.mmv(&[(&e.down_exps, &down, emb)], &by_id(&gate, Some(&up), 1))?;
            None
        } else {
            let max_tiles = pairs.div_ceil(64) + ne;
            let sort = self.scratch(4 * (2 * pairs + 3 * max_tiles + 1))?;
            let (slot, xrow) = (sort.ptr(), sort.ptr() + 4 * pairs as u64);
            let tiles = sort.ptr() + 8 * pairs as u64;
            let n_tiles = tiles + 12 * max_tiles as u64;
            let f = self.f(Src::Moe, "moe_sort")?;
            let (np, tile) = (pairs as i32, 64i32);
            // SAFETY: the scratch holds slot_of, x_row (pairs each), the tiles and the count.
            unsafe {
                self.gpu.launch(
                    &f,
                    (1, 1, 1),
                    (1024, 1, 1),
                    (8 * ne) as u32,
                    &mut [
                        arg(&ip),
                        arg(&np),
                        arg(&ki),
                        arg(&nei),
                        arg(&tile),
                        arg(&slot),
                        arg(&xrow),
                        arg(&tiles),
                        arg(&n_tiles),
                    ],
                )?
            };
            let t = |rows: u64| Some((tiles, n_tiles, rows, max_tiles));
            self.gemm(&e.gate_exps, ff, x, &gate, t(xrow))?;
            self.gemm(&e.up_exps, ff, x, &up, t(xrow))?;
            self.binary("glu_silu", &gate, &up)?;
            self.gemm(&e.down_exps, emb, &gate, &down, t(0))?;
            Some((sort, slot))
        };
        // The shared expert (ffn_shexp), then everything summed in one pass.
        let shared = match &e.shared {
            Some(sh) => {
                let (sg, su) = (self.act(n, sh.gate.m)?, self.act(n, sh.gate.m)?);
                self.matmuls_(&[(&sh.gate, &sg), (&sh.up, &su)], x, None)?;
                let out = self.act(n, emb)?;
                self.matmuls_(&[(&sh.down, &out)], &sg, Some(&su))?;
                Some((out, sh.gate_inp.as_ref().map_or(0, |g| g.buf.ptr())))
            }
            None => None,
        };
        let y = self.act(n, emb)?;
        let f = self.f(Src::Moe, "moe_combine")?;
        let (dp, sp, yp, xp, w) = (
            down.ptr(),
            sorted.as_ref().map_or(0, |(_, s)| *s),
            y.ptr(),
            x.ptr(),
            emb as i32,
        );
        let (shp, gp) = shared.as_ref().map_or((0, 0), |(o, g)| (o.ptr(), *g));
        // SAFETY: down holds the pairs' rows (in slot order when sorted); y, x and the shared
        // output n × emb; the gate emb.
        unsafe {
            self.gpu.launch(
                &f,
                (n as u32, 1, 1),
                (256, 1, 1),
                0,
                &mut [
                    arg(&dp),
                    arg(&sp),
                    arg(&wp),
                    arg(&shp),
                    arg(&gp),
                    arg(&xp),
                    arg(&yp),
                    arg(&ki),
                    arg(&w),
                ],
            )?
        };
        Ok(y)
    }

    /// `dst` = Walsh–Hadamard transform of `src` in chunks of `chunk`.
    fn fwht(&self, src: &CudaAct, dst: &CudaAct, chunk: usize) -> Result<()> {
        let blocks = (src.len() / chunk) as u32;
        let (s, d, c) = (src.ptr(), dst.ptr(), chunk as i32);
        let f = self.f(Src::Attention, "fwht")?;
        // SAFETY: both hold src.len() values, a multiple of chunk (head widths are).
        unsafe {
            self.gpu.launch(
                &f,
                (blocks, 1, 1),
                (chunk.min(256) as u32 / 2, 1, 1),
                (4 * chunk) as u32,
                &mut [arg(&s), arg(&d), arg(&c)],
            )
        }
    }

    fn rotated(&self, x: &CudaAct, chunk: usize) -> Result<Option<CudaAct>> {
        if chunk == 0 {
            return Ok(None);
        }
        let y = self.act(x.rows, x.width)?;
        self.fwht(x, &y, chunk)?;
        Ok(Some(y))
    }

    fn kv_store(&self, src: &CudaAct, cache: u64, ty: KvType) -> Result<()> {
        let (sp, pos, n, w, t) = (
            src.ptr(),
            self.step.ptr(),
            src.rows as i32,
            src.width as i32,
            kv_code(ty),
        );
        let f = self.f(Src::Attention, "kv_store")?;
        self.launch_1d(
            f,
            (src.len() / 32) as u64,
            &mut [arg(&sp), arg(&cache), arg(&pos), arg(&n), arg(&w), arg(&t)],
        )
    }

    pub(crate) fn attention_(
        &self,
        s: &CudaStep,
        layer: &mut CudaLayer,
        [q, k, v]: [&CudaAct; 3],
        p: AttnParams,
    ) -> Result<CudaAct> {
        let CudaLayer::Kv {
            k: kc,
            v: vc,
            kt,
            vt,
            rot_k,
            rot_v,
        } = layer
        else {
            return Err(size_err("attention on a recurrent layer".into()));
        };
        let sh = p.shape;
        let (d, n) = (sh.head_dim, q.rows);
        if d % 64 != 0 || d > 512 || !sh.n_head.is_multiple_of(sh.n_head_kv) {
            return Err(size_err(format!(
                "attention: heads of {d} (a multiple of 64 up to 512)"
            )));
        }
        if k.width != sh.n_head_kv * d
            || q.width != sh.n_head * d
            || k.rows != n
            || v.len() != k.len()
        {
            return Err(size_err(
                "attention: q/k/v shapes do not match the heads".into(),
            ));
        }
        // Quantized caches hold rotated rows; queries get the keys' rotation, outputs the
        // values' rotation back (engine::kv).
        let k2 = self.rotated(k, *rot_k)?;
        let v2 = self.rotated(v, *rot_v)?;
        let q2 = self.rotated(q, *rot_k)?;
        self.kv_store(k2.as_ref().unwrap_or(k), kc.ptr(), *kt)?;
        self.kv_store(v2.as_ref().unwrap_or(v), vc.ptr(), *vt)?;
        let q = q2.as_ref().unwrap_or(q);
        let group = sh.n_head / sh.n_head_kv;
        let rows = n * group;
        let warps = rows.next_power_of_two().clamp(1, 8);
        let grid_y = rows.div_ceil(warps);
        // Decode: split the positions so the GPU is busy (fixed per shape, so graph-safe).
        let n_split = if n <= 4 {
            (2 * self.gpu.sms as usize / (sh.n_head_kv * grid_y)).clamp(1, 64)
        } else {
            1
        };
        let o = self.act(n, q.width)?;
        let part = match n_split {
            1 => None,
            _ => Some(self.scratch(4 * n_split * n * sh.n_head * (d + 2))?),
        };
        let a = AttnArgs {
            q: q.ptr(),
            k: kc.ptr(),
            v: vc.ptr(),
            o: o.ptr(),
            part: part.as_ref().map_or(0, |b| b.ptr()),
            pos0: self.step.ptr(),
            n: n as i32,
            n_head: sh.n_head as i32,
            n_head_kv: sh.n_head_kv as i32,
            window: p.window.unwrap_or(0) as i32,
            n_split: n_split as i32,
            kt: kv_code(*kt),
            vt: kv_code(*vt),
            scale: sh.scale,
        };
        let defs = vec![("D", d.to_string())];
        let f = self.k.func(Src::Attention, &defs, "attn")?;
        let smem = (2 * 32 * (d + 2) * 2 + warps * d * 4) as u32;
        if smem > 48 * 1024 {
            f.set_max_smem(smem)?;
        }
        let grid = (sh.n_head_kv as u32, grid_y as u32, n_split as u32);
        // SAFETY: the caches hold n_ctx ≥ pos0 + n rows (the engine checks the context);
        // q/o are n × n_head × d; the partials n_split × rows × (d + 2).
        unsafe {
            self.gpu
                .launch(&f, grid, ((32 * warps) as u32, 1, 1), smem, &mut [arg(&a)])?
        };
        if let Some(part) = &part {
            let f = self.k.func(Src::Attention, &defs, "attn_combine")?;
            let (pp, op, r, ns) = (part.ptr(), o.ptr(), (n * sh.n_head) as i32, n_split as i32);
            // SAFETY: as above.
            unsafe {
                self.gpu.launch(
                    &f,
                    ((n * sh.n_head) as u32, 1, 1),
                    (d as u32, 1, 1),
                    0,
                    &mut [arg(&pp), arg(&op), arg(&r), arg(&ns)],
                )?
            };
        }
        let _ = s;
        if *rot_v > 0 {
            self.fwht(&o, &o, *rot_v)?;
        }
        Ok(o)
    }

    /// The short convolution of `mix` (n × cd) into `y`, state at `state`: one thread a
    /// channel for a decode step, one a (channel, token) for a prefill, then the state kept.
    fn conv_(&self, mix: &CudaAct, state: u64, taps: u64, y: &CudaAct, dc: usize) -> Result<()> {
        let (n, cd) = (mix.rows, mix.width);
        let (mp, yp) = (mix.ptr(), y.ptr());
        let (ni, cdi, dci) = (n as i32, cd as i32, dc as i32);
        if n == 1 {
            let f = self.f(Src::DeltaNet, "conv")?;
            let mut args = [
                arg(&mp),
                arg(&state),
                arg(&taps),
                arg(&yp),
                arg(&ni),
                arg(&cdi),
                arg(&dci),
            ];
            return self.launch_1d(f, cd as u64, &mut args);
        }
        let f = self.f(Src::DeltaNet, "conv_tokens")?;
        let mut args = [
            arg(&mp),
            arg(&state),
            arg(&taps),
            arg(&yp),
            arg(&ni),
            arg(&cdi),
            arg(&dci),
        ];
        // SAFETY: mix and y hold n × cd; the state cd × (dc − 1); the taps cd × dc.
        unsafe {
            self.gpu.launch(
                &f,
                ((cd as u32).div_ceil(256), n as u32, 1),
                (256, 1, 1),
                0,
                &mut args,
            )?
        };
        let f = self.f(Src::DeltaNet, "conv_keep")?;
        self.launch_1d(
            f,
            cd as u64,
            &mut [arg(&mp), arg(&state), arg(&ni), arg(&cdi), arg(&dci)],
        )
    }

    pub(crate) fn deltanet_(
        &self,
        _: &CudaStep,
        layer: &mut CudaLayer,
        p: &DeltaNet<'_, Cuda>,
        mix: &CudaAct,
        [beta, alpha]: [&CudaAct; 2],
    ) -> Result<CudaAct> {
        let CudaLayer::Recurrent { conv, ssm } = layer else {
            return Err(size_err("deltanet on an attention layer".into()));
        };
        let d = p.shape;
        let (n, cd, nv) = (mix.rows, d.conv_dim(), d.n_v_head);
        if mix.width != cd || beta.width != nv || alpha.width != nv || d.d_conv > 9 {
            return Err(size_err(
                "deltanet: input widths do not match the layer".into(),
            ));
        }
        if !d.d_v.is_multiple_of(32) || d.d_v > 1024 || d.d_k > 256 || !d.d_k.is_multiple_of(32) {
            return Err(size_err(format!(
                "deltanet: heads of {} × {} (multiples of 32 up to 1024 × 256)",
                d.d_v, d.d_k
            )));
        }
        let y = self.act(n, cd)?;
        self.conv_(mix, conv.ptr(), p.conv1d.buf.ptr(), &y, d.d_conv)?; // 3.
        let o = self.act(n, nv * d.d_v)?;
        let a = DeltaArgs {
            y: y.ptr(),
            beta: beta.ptr(),
            alpha: alpha.ptr(),
            dt: p.dt.buf.ptr(),
            a: p.a.buf.ptr(),
            state: ssm.ptr(),
            o: o.ptr(),
            n: n as i32,
            n_k_head: d.n_k_head as i32,
            n_v_head: nv as i32,
            d_v: d.d_v as i32,
            grouped: i32::from(d.grouped),
            eps: d.eps,
        };
        let f = self
            .k
            .func(Src::DeltaNet, &[("DK", d.d_k.to_string())], "delta_rule")?;
        // SAFETY: the state holds nv × d_v × d_k; y n × conv_dim; o n × nv × d_v.
        unsafe {
            self.gpu.launch(
                &f,
                (nv as u32, (d.d_v / 16) as u32, 1),
                (32, 1, 1),
                0,
                &mut [arg(&a)],
            )?
        };
        Ok(o)
    }
}
