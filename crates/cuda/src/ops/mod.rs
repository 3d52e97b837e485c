//! The backend's operations: argument checks, grid choice and the launch of each kernel of
//! `kernels/` (device code there, launch code here, as STYLE §10 asks): element-wise ops,
//! norms, RoPE and embeddings here; products in `matmul.rs`, the MoE in `moe.rs`, attention
//! and DeltaNet in `mixers.rs`.

pub(crate) mod matmul;
mod mixers;
mod moe;

use std::ffi::c_void;
use std::sync::Arc;

use engine::ops::{Rope, RopeStyle};

use crate::backend::{Cuda, CudaAct, CudaIndex, CudaMat, CudaStep, CudaVec};
use crate::driver::Func;
use crate::error::{Error, Result};
use crate::kernels::Src;
use matmul::{Q8Act, MMV_MAX};

/// A kernel parameter: the address of its value.
pub(crate) fn arg<T>(v: &T) -> *mut c_void {
    v as *const T as *mut c_void
}

pub(crate) fn size_err(what: String) -> Error {
    Error::Size(what)
}

/// What [`Cuda::norm_rows`] adds to the residual.
pub(crate) enum Added<'a> {
    /// Rows of the residual's shape.
    Act(&'a CudaAct),
    /// The MoE's weighted sum of its experts (and its shared expert).
    Moe(&'a Combine),
}

/// The MoE's sum as `moe_combine_norm` reads it (`struct Combine` of `norm.cu`, field by
/// field).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Combine {
    pub out: u64,
    pub slot_of: u64,
    pub weights: u64,
    pub sh: u64,
    pub gate: u64,
    pub x: u64,
    pub host: u64,
    pub k: i32,
}

/// Threads a row for the register-held norm kernels (`add_norm_r`, `moe_combine_norm`: four
/// values a thread, at most 4 chunks of the block), or `None` where a row does not suit them.
pub(crate) fn regs_norm_threads(width: usize) -> Option<u32> {
    if !width.is_multiple_of(4) || width > 4 * 4 * 1024 {
        return None;
    }
    let t = (width / 4).div_ceil(32) * 32;
    Some(t.min(1024) as u32)
}

impl Cuda {
    pub(crate) fn f(&self, src: Src, name: &'static str) -> Result<Func> {
        self.k.func(src, &[], name)
    }

    /// The matmul module's variant for weights of `w`'s type.
    pub(crate) fn wtype(&self, w: &CudaMat) -> Vec<(&'static str, String)> {
        vec![
            ("WTYPE", w.ty.id().to_string()),
            ("MMV_SPLIT", self.mmv_variant.0.to_string()),
            ("MMV_UNROLL", self.mmv_variant.1.to_string()),
            ("MMV1_ROWS", self.mmv1_variant.0.max(1).to_string()),
            ("MMV1_UNROLL", self.mmv1_variant.1.to_string()),
            ("MMVQ_UNROLL", self.mmvq_variant.1.to_string()),
            ("MMVQ_R", self.mmvq_rows.to_string()),
        ]
    }

    /// Launch `f` over `n` threads in blocks of 256.
    pub(crate) fn launch_1d(&self, f: Func, n: u64, args: &mut [*mut c_void]) -> Result<()> {
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
        if h.len() != a.len() {
            return Err(size_err(format!(
                "add_norm: {} values added to {}",
                a.len(),
                h.len()
            )));
        }
        self.norm_rows(h, Added::Act(a), w, eps)
    }

    /// `h += a` (or the MoE's sum), then the RMS norm of each row of `h` times `w`, with the
    /// 8-bit form when one-token products will read it.
    pub(crate) fn norm_rows(
        &self,
        h: &CudaAct,
        a: Added<'_>,
        w: &CudaVec,
        eps: f32,
    ) -> Result<CudaAct> {
        if w.len != h.width {
            return Err(size_err(format!(
                "add_norm: rows of {} and a norm of {}",
                h.width, w.len
            )));
        }
        let mut y = self.act(h.rows, h.width)?;
        let (hp, wp, yp, width) = (h.ptr(), w.buf.ptr(), y.ptr(), h.width as i32);
        let q8 = self.q8_for(&y)?;
        let (qp, dp) = q8.as_ref().map_or((0, 0), |q| (q.q(), q.d()));
        let threads = regs_norm_threads(h.width).filter(|_| self.norm_fused);
        let (f, block) = match (&a, threads) {
            (Added::Act(_), Some(t)) => (self.f(Src::Norm, "add_norm_r")?, t),
            (Added::Act(_), None) => (self.f(Src::Norm, "add_norm")?, 256),
            (Added::Moe(_), Some(t)) => (self.f(Src::Norm, "moe_combine_norm")?, t),
            (Added::Moe(_), None) => return Err(size_err("moe_combine_norm: width".into())),
        };
        let ap = match &a {
            Added::Act(a) => a.ptr(),
            Added::Moe(_) => 0,
        };
        let second = match &a {
            Added::Act(_) => arg(&ap),
            Added::Moe(c) => arg(*c),
        };
        // SAFETY: h, a and y hold rows of `width`; w holds `width`; a Combine's buffers hold
        // the pairs' rows, their weights and slots, the shared expert's rows and its gate.
        unsafe {
            self.gpu.launch(
                &f,
                (h.rows as u32, 1, 1),
                (block, 1, 1),
                0,
                &mut [
                    arg(&hp),
                    second,
                    arg(&wp),
                    arg(&yp),
                    arg(&width),
                    arg(&eps),
                    arg(&qp),
                    arg(&dp),
                ],
            )?
        };
        y.q8 = q8.map(Arc::new);
        Ok(y)
    }

    /// An empty 8-bit form for `y` when a kernel writing `y` should make one: few rows (the
    /// one-token or few-pair products that read it) of a width the blocks divide.
    pub(crate) fn q8_for(&self, y: &CudaAct) -> Result<Option<Q8Act>> {
        if self.mmvq_variant.0 == 0 || y.rows > MMV_MAX || !y.width.is_multiple_of(32) {
            return Ok(None);
        }
        Ok(Some(Q8Act::new(
            self.scratch(Q8Act::bytes(y.rows, y.width))?,
            y.rows,
            y.width,
        )))
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
        let mut y = self.act(o.rows, o.width)?;
        let groups = (o.len() / w.len) as i32;
        let (op, wp, zp, yp, width) = (o.ptr(), w.buf.ptr(), z.ptr(), y.ptr(), w.len as i32);
        let q8 = if w.len.is_multiple_of(32) {
            self.q8_for(&y)?
        } else {
            None
        };
        let (qp, dp) = q8.as_ref().map_or((0, 0), |q| (q.q(), q.d()));
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
                    arg(&qp),
                    arg(&dp),
                ],
            )?
        };
        y.q8 = q8.map(Arc::new);
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
}
