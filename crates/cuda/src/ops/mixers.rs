//! The two mixers: attention over the KV cache (with the Walsh–Hadamard rotation of quantized
//! caches) and the gated DeltaNet (convolution and delta rule).

use engine::backend::{AttnBlock, AttnParams, DeltaNet};
use engine::kv::KvType;
use engine::ops::RopeStyle;

use crate::backend::{Cuda, CudaAct, CudaIndex, CudaLayer, CudaStep, CudaVec};
use crate::error::Result;
use crate::kernels::Src;

use super::{arg, size_err};

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

/// `attn_prep`'s parameters (`PrepArgs` in attention.cu).
#[repr(C)]
struct PrepArgs {
    qg: u64,
    q_cols: u64,
    k: u64,
    v: u64,
    q_norm: u64,
    k_norm: u64,
    q_out: u64,
    kc: u64,
    vc: u64,
    pos0: u64,
    qg_w: i32,
    n_head: i32,
    n_head_kv: i32,
    n_rot: i32,
    neox: i32,
    rot_k: i32,
    rot_v: i32,
    kt: i32,
    vt: i32,
    base: f32,
    eps: f32,
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

fn kv_code(t: KvType) -> i32 {
    match t {
        KvType::F16 => 1,
        KvType::Q8_0 => 8,
        KvType::Q4_0 => 2,
    }
}

impl Cuda {
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

    /// The layer's KV cache: (k, v, their types, the keys' and values' rotation chunks).
    fn kv_parts(layer: &mut CudaLayer) -> Result<(u64, u64, KvType, KvType, usize, usize)> {
        match layer {
            CudaLayer::Kv {
                k,
                v,
                kt,
                vt,
                rot_k,
                rot_v,
            } => Ok((k.ptr(), v.ptr(), *kt, *vt, *rot_k, *rot_v)),
            _ => Err(size_err("attention on a recurrent layer".into())),
        }
    }

    fn check_attn(
        p: &AttnParams,
        n: usize,
        q_width: usize,
        k: &CudaAct,
        v: &CudaAct,
    ) -> Result<()> {
        let sh = p.shape;
        let d = sh.head_dim;
        if !d.is_multiple_of(64)
            || d > 512
            || sh.n_head_kv == 0
            || !sh.n_head.is_multiple_of(sh.n_head_kv)
        {
            return Err(size_err(format!(
                "attention: heads of {d} (a multiple of 64 up to 512)"
            )));
        }
        if k.width != sh.n_head_kv * d
            || q_width != sh.n_head * d
            || k.rows != n
            || v.len() != k.len()
        {
            return Err(size_err(
                "attention: q/k/v shapes do not match the heads".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn attention_(
        &self,
        _: &CudaStep,
        layer: &mut CudaLayer,
        [q, k, v]: [&CudaAct; 3],
        p: AttnParams,
    ) -> Result<CudaAct> {
        let (kc, vc, kt, vt, rot_k, rot_v) = Self::kv_parts(layer)?;
        Self::check_attn(&p, q.rows, q.width, k, v)?;
        // Quantized caches hold rotated rows; queries get the keys' rotation, outputs the
        // values' rotation back (engine::kv).
        let k2 = self.rotated(k, rot_k)?;
        let v2 = self.rotated(v, rot_v)?;
        let q2 = self.rotated(q, rot_k)?;
        self.kv_store(k2.as_ref().unwrap_or(k), kc, kt)?;
        self.kv_store(v2.as_ref().unwrap_or(v), vc, vt)?;
        let o = self.attend(q2.as_ref().unwrap_or(q), (kc, vc, kt, vt), &p)?;
        if rot_v > 0 {
            self.fwht(&o, &o, rot_v)?;
        }
        Ok(o)
    }

    /// `attention_block` in three passes: `attn_prep` (gather, norms, RoPE, rotations, KV
    /// store), the attention, `attn_out` (rotation back, gate, the 8-bit form).
    pub(crate) fn attention_block_(
        &self,
        layer: &mut CudaLayer,
        [qg, k, v]: [&CudaAct; 3],
        b: &AttnBlock<'_, Cuda>,
    ) -> Result<CudaAct> {
        let (kc, vc, kt, vt, rot_k, rot_v) = Self::kv_parts(layer)?;
        let sh = b.attn.shape;
        let (d, n, qw) = (sh.head_dim, qg.rows, sh.n_head * sh.head_dim);
        Self::check_attn(&b.attn, n, qw, k, v)?;
        let cols_ok = |c: Option<&CudaIndex>| c.is_none_or(|c| c.len == qw);
        let norm_ok = |w: Option<&CudaVec>| w.is_none_or(|w| w.len == d);
        if !cols_ok(b.q_cols)
            || !cols_ok(b.gate_cols)
            || (b.q_cols.is_none() && qg.width != qw)
            || !norm_ok(b.q_norm)
            || !norm_ok(b.k_norm)
            || b.rope.n_rot > d
        {
            return Err(size_err(
                "attention block: projections or norms do not match the heads".into(),
            ));
        }
        let q = self.act(n, qw)?;
        let a = PrepArgs {
            qg: qg.ptr(),
            q_cols: b.q_cols.map_or(0, |c| c.buf.ptr()),
            k: k.ptr(),
            v: v.ptr(),
            q_norm: b.q_norm.map_or(0, |w| w.buf.ptr()),
            k_norm: b.k_norm.map_or(0, |w| w.buf.ptr()),
            q_out: q.ptr(),
            kc,
            vc,
            pos0: self.step.ptr(),
            qg_w: qg.width as i32,
            n_head: sh.n_head as i32,
            n_head_kv: sh.n_head_kv as i32,
            n_rot: b.rope.n_rot as i32,
            neox: i32::from(b.rope.style == RopeStyle::Neox),
            rot_k: rot_k as i32,
            rot_v: rot_v as i32,
            kt: kv_code(kt),
            vt: kv_code(vt),
            base: b.rope.base,
            eps: b.eps,
        };
        let defs = vec![("D", d.to_string())];
        let f = self.k.func(Src::Attention, &defs, "attn_prep")?;
        let slots = (sh.n_head + 2 * sh.n_head_kv) as u32;
        // SAFETY: shapes checked above; the caches hold n_ctx ≥ pos0 + n rows (the engine
        // checks the context); the column maps index qg's rows.
        unsafe {
            self.gpu.launch(
                &f,
                (slots, n as u32, 1),
                (d as u32, 1, 1),
                0,
                &mut [arg(&a)],
            )?
        };
        let mut o = self.attend(&q, (kc, vc, kt, vt), &b.attn)?;
        let q8 = self.q8_for(&o)?;
        let (qp, dp) = q8.as_ref().map_or((0, 0), |q| (q.q(), q.d()));
        let f = self.k.func(Src::Attention, &defs, "attn_out")?;
        let (op, nh, rv, qgp, gc, qgw) = (
            o.ptr(),
            sh.n_head as i32,
            rot_v as i32,
            qg.ptr(),
            b.gate_cols.map_or(0, |c| c.buf.ptr()),
            qg.width as i32,
        );
        // SAFETY: o is n × n_head·d; the gate columns index qg's rows; q/d sized by q8_for.
        unsafe {
            self.gpu.launch(
                &f,
                (sh.n_head as u32, n as u32, 1),
                (d as u32, 1, 1),
                0,
                &mut [
                    arg(&op),
                    arg(&nh),
                    arg(&rv),
                    arg(&qgp),
                    arg(&gc),
                    arg(&qgw),
                    arg(&qp),
                    arg(&dp),
                ],
            )?
        };
        o.q8 = q8.map(std::sync::Arc::new);
        Ok(o)
    }

    /// Attend: queries `q` (normed, rotated, stored keys) over the cache up to each token's
    /// position; the tensor-core kernel for a prefill, split positions for a decode step.
    fn attend(
        &self,
        q: &CudaAct,
        (kc, vc, kt, vt): (u64, u64, KvType, KvType),
        p: &AttnParams,
    ) -> Result<CudaAct> {
        let sh = p.shape;
        let (d, n) = (sh.head_dim, q.rows);
        let group = sh.n_head / sh.n_head_kv;
        let rows = n * group;
        let warps = rows.next_power_of_two().clamp(1, 8);
        let mma = n > 4 && d <= 256 && self.attn_mma;
        let grid_y = if mma {
            rows.div_ceil(64)
        } else {
            rows.div_ceil(warps)
        };
        let sms = self.gpu.sms as usize;
        // Split the positions so the GPU is busy (fixed per shape, so graph-safe): decode
        // always; a prefill with few blocks of 64 rows too.
        let n_split = match (n <= 4, mma) {
            (true, _) => (self.attn_splits as usize * sms / (sh.n_head_kv * grid_y)).clamp(1, 256),
            (false, true) => (3 * sms).div_ceil(sh.n_head_kv * grid_y).clamp(1, 8),
            (false, false) => 1,
        };
        let o = self.act(n, q.width)?;
        let part = match n_split {
            1 => None,
            _ => Some(self.scratch(4 * n_split * n * sh.n_head * (d + 2))?),
        };
        let a = AttnArgs {
            q: q.ptr(),
            k: kc,
            v: vc,
            o: o.ptr(),
            part: part.as_ref().map_or(0, |b| b.ptr()),
            pos0: self.step.ptr(),
            n: n as i32,
            n_head: sh.n_head as i32,
            n_head_kv: sh.n_head_kv as i32,
            window: p.window.unwrap_or(0) as i32,
            n_split: n_split as i32,
            kt: kv_code(kt),
            vt: kv_code(vt),
            scale: sh.scale,
        };
        let defs = vec![("D", d.to_string())];
        let grid = (sh.n_head_kv as u32, grid_y as u32, n_split as u32);
        if mma {
            // Prefill: the tensor-core kernel, 64 query rows a block.
            let f = self.k.func(Src::Attention, &defs, "attn_mma")?;
            let kc = if d >= 256 { 32 } else { 64 };
            let smem = (2 * (64 + 2 * kc) * (d + 8)) as u32;
            if smem > 48 * 1024 {
                f.set_max_smem(smem)?;
            }
            // SAFETY: as for `attn` below.
            unsafe {
                self.gpu
                    .launch(&f, grid, (128, 1, 1), smem, &mut [arg(&a)])?
            };
        } else {
            let f = self.k.func(Src::Attention, &defs, "attn")?;
            let smem = (2 * 32 * (d + 2) * 2 + warps * d * 4) as u32;
            if smem > 48 * 1024 {
                f.set_max_smem(smem)?;
            }
            // SAFETY: the caches hold n_ctx ≥ pos0 + n rows (the engine checks the context);
            // q/o are n × n_head × d; the partials n_split × rows × (d + 2).
            unsafe {
                self.gpu
                    .launch(&f, grid, ((32 * warps) as u32, 1, 1), smem, &mut [arg(&a)])?
            };
        }
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
        Ok(o)
    }

    /// The short convolution of `mix` (n × cd) into `y`, state at `state`: one thread a
    /// channel for a decode step, one a (channel, token) for a prefill, then the state kept.
    fn conv_(&self, mix: &CudaAct, state: u64, taps: u64, y: &CudaAct, dc: usize) -> Result<()> {
        let (n, cd) = (mix.rows, mix.width);
        let (mp, yp) = (mix.ptr(), y.ptr());
        let (ni, cdi, dci) = (n as i32, cd as i32, dc as i32);
        // `conv` and `conv_tokens` take the same parameters.
        let mut args = [
            arg(&mp),
            arg(&state),
            arg(&taps),
            arg(&yp),
            arg(&ni),
            arg(&cdi),
            arg(&dci),
        ];
        if n == 1 {
            let f = self.f(Src::DeltaNet, "conv")?;
            return self.launch_1d(f, cd as u64, &mut args);
        }
        let f = self.f(Src::DeltaNet, "conv_tokens")?;
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
        // Decode: four lanes a state row (more warps in flight); prefill: two (fewer shuffles
        // in the token loop) — measured, BENCHMARKS.md.
        let lpr = if n == 1 { self.delta_lpr as usize } else { 2 };
        let defines = [("DK", d.d_k.to_string()), ("LPR", lpr.to_string())];
        let f = self.k.func(Src::DeltaNet, &defines, "delta_rule")?;
        // SAFETY: the state holds nv × d_v × d_k; y n × conv_dim; o n × nv × d_v.
        unsafe {
            self.gpu.launch(
                &f,
                (nv as u32, (d.d_v / (32 / lpr)) as u32, 1),
                (32, 1, 1),
                0,
                &mut [arg(&a)],
            )?
        };
        Ok(o)
    }
}
