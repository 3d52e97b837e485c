//! The CPU backend: weights read in place from the memory map (packed on first use), f32
//! activations in `Vec`s, the worker pool and the x86 kernels of `quant`, `matmul`, `attn`
//! and `models/deltanet`.

use crate::error::{Error, Result};
use crate::kv::{CacheConfig, KvCache, KvPass};
use crate::models::deltanet;
use crate::ops::{self, Exec, Rope};
use crate::weights::QTensor;

use super::{AttnParams, Backend, DeltaNet, Experts, Glu, Request, Seq};

/// The CPU backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Activations on the CPU: `data.len() / width` rows.
#[derive(Clone, Debug)]
pub struct CpuAct {
    /// Row-major values.
    pub data: Vec<f32>,
    /// Values per row.
    pub width: usize,
}

impl CpuAct {
    fn zeros(rows: usize, width: usize) -> CpuAct {
        CpuAct {
            data: vec![0f32; rows * width],
            width,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.width.max(1)
    }
}

/// One layer's memory of a sequence on the CPU.
#[derive(Debug)]
pub enum CpuLayer {
    /// Keys and values, position-major, in the state's cache types.
    Kv {
        /// Keys.
        k: KvCache,
        /// Values.
        v: KvCache,
    },
    /// DeltaNet: the last `d_conv − 1` inputs of the short convolution (per channel, oldest
    /// first: `[conv_dim][d_conv − 1]`) and the per-head state matrices (`[n_v_head][v][k]`,
    /// value index major, as ggml stores them), f32 like llama.cpp's (`type_r/type_s`).
    Recurrent {
        /// Convolution taps.
        conv: Vec<f32>,
        /// Delta-rule state.
        ssm: Vec<f32>,
    },
    /// One layer of several sequences in a batched forward ([`Backend::forward_batch`]): each
    /// sequence's own layer, in the order of the step's segments, moved in for the call.
    Batch(Vec<CpuLayer>),
}

/// A CPU forward call's context.
#[derive(Debug)]
pub struct CpuStep {
    tokens: Vec<u32>,
    /// The sequences the rows belong to, in row order (one but in a batched forward).
    segs: Vec<Segment>,
    exec: Exec,
}

/// Rows of a step that continue one sequence, from its position `pos0`.
#[derive(Clone, Debug)]
struct Segment {
    rows: std::ops::Range<usize>,
    pos0: usize,
}

impl CpuStep {
    /// A step by hand (tests, benchmarks): `tokens` from position `pos0`.
    pub fn new(tokens: &[u32], pos0: usize, exec: Exec) -> CpuStep {
        CpuStep {
            tokens: tokens.to_vec(),
            segs: vec![Segment {
                rows: 0..tokens.len(),
                pos0,
            }],
            exec,
        }
    }

    /// The first segment's position: the step's, unless it is batched.
    fn pos0(&self) -> usize {
        self.segs.first().map_or(0, |g| g.pos0)
    }
}

impl CpuAct {
    /// A copy of rows `r`.
    fn rows_of(&self, r: std::ops::Range<usize>) -> CpuAct {
        CpuAct {
            data: self.data[r.start * self.width..r.end * self.width].to_vec(),
            width: self.width,
        }
    }
}

/// `op` for each segment of a batched step over that sequence's own layer and rows `xs`; the
/// outputs stacked in row order. Attention and DeltaNet are the ops a sequence's state
/// separates; every other op sees the batch as rows.
fn per_segment<const N: usize>(
    s: &CpuStep,
    layers: &mut [CpuLayer],
    xs: [&CpuAct; N],
    mut op: impl FnMut(&CpuStep, &mut CpuLayer, [&CpuAct; N]) -> Result<CpuAct>,
) -> Result<CpuAct> {
    check(layers.len() == s.segs.len(), || {
        format!("{} layers for {} sequences", layers.len(), s.segs.len())
    })?;
    let mut out: Option<CpuAct> = None;
    for (g, l) in s.segs.iter().zip(layers) {
        let sub = CpuStep::new(&s.tokens[g.rows.clone()], g.pos0, s.exec);
        let parts = xs.map(|x| x.rows_of(g.rows.clone()));
        let o = op(&sub, l, std::array::from_fn(|i| &parts[i]))?;
        match &mut out {
            None => out = Some(o),
            Some(acc) => acc.data.extend_from_slice(&o.data),
        }
    }
    out.ok_or_else(|| Error::Shape("a batched step without sequences".into()))
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    match ok {
        true => Ok(()),
        false => Err(Error::Shape(what())),
    }
}

impl Backend for Cpu {
    type Mat = QTensor;
    type Vector = Vec<f32>;
    type Index = Vec<u32>;
    type Act = CpuAct;
    type Layer = CpuLayer;
    type SeqExtra = ();
    type Step = CpuStep;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn mat(&self, t: QTensor) -> Result<QTensor> {
        Ok(t)
    }

    fn vector(&self, v: Vec<f32>) -> Result<Vec<f32>> {
        Ok(v)
    }

    fn index(&self, cols: Vec<u32>) -> Result<Vec<u32>> {
        Ok(cols)
    }

    fn kv_layer(
        &self,
        n_head_kv: usize,
        head_dim: usize,
        n_ctx: usize,
        cache: CacheConfig,
    ) -> Result<CpuLayer> {
        Ok(CpuLayer::Kv {
            k: KvCache::keys(cache.k, n_head_kv, head_dim, n_ctx)?,
            v: KvCache::values(cache.v, n_head_kv, head_dim, n_ctx)?,
        })
    }

    fn recurrent_layer(&self, conv: usize, ssm: usize) -> Result<CpuLayer> {
        Ok(CpuLayer::Recurrent {
            conv: vec![0f32; conv],
            ssm: vec![0f32; ssm],
        })
    }

    fn kv_bytes(&self, l: &CpuLayer) -> usize {
        match l {
            CpuLayer::Kv { k, v } => k.bytes() + v.bytes(),
            CpuLayer::Recurrent { .. } => 0,
            CpuLayer::Batch(ls) => ls.iter().map(|l| self.kv_bytes(l)).sum(),
        }
    }

    fn save_layer(&self, l: &CpuLayer) -> Result<Option<Vec<u8>>> {
        Ok(match l {
            CpuLayer::Kv { .. } => None,
            CpuLayer::Recurrent { conv, ssm } => Some(
                conv.iter()
                    .chain(ssm.iter())
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            CpuLayer::Batch(_) => return Err(Error::Shape("a batched step's layer saved".into())),
        })
    }

    fn load_layer(&self, l: &mut CpuLayer, saved: &[u8]) -> Result<()> {
        let CpuLayer::Recurrent { conv, ssm } = l else {
            return Err(Error::Shape(
                "a recurrent state saved for a KV layer".into(),
            ));
        };
        if saved.len() != 4 * (conv.len() + ssm.len()) {
            return Err(Error::Shape(format!(
                "a saved recurrent state of {} bytes for a layer of {}",
                saved.len(),
                4 * (conv.len() + ssm.len())
            )));
        }
        let mut vals = saved
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        conv.iter_mut()
            .chain(ssm.iter_mut())
            .zip(&mut vals)
            .for_each(|(d, v)| *d = v);
        Ok(())
    }

    fn forward(
        &self,
        req: Request<'_>,
        seq: &mut Seq<Cpu>,
        graph: &mut super::Graph<'_, Cpu>,
    ) -> Result<Vec<f32>> {
        let _stage = crate::prof::stage("forward (total)");
        crate::pool::flush_denormals();
        let step = CpuStep::new(req.tokens, req.pos0, req.exec);
        Ok(graph(&step, &mut seq.layers)?.data)
    }

    fn batches(&self) -> bool {
        true
    }

    fn forward_batch(
        &self,
        reqs: &[Request<'_>],
        seqs: &mut [&mut Seq<Cpu>],
        graph: &mut super::Graph<'_, Cpu>,
    ) -> Result<Vec<f32>> {
        let _stage = crate::prof::stage("forward (total)");
        crate::pool::flush_denormals();
        let n_layer = seqs.first().map_or(0, |q| q.layers.len());
        check(
            reqs.len() == seqs.len() && seqs.iter().all(|q| q.layers.len() == n_layer),
            || "a batch of sequences of different models".into(),
        )?;
        let (mut tokens, mut segs) = (Vec::new(), Vec::new());
        for r in reqs {
            segs.push(Segment {
                rows: tokens.len()..tokens.len() + r.tokens.len(),
                pos0: r.pos0,
            });
            tokens.extend_from_slice(r.tokens);
        }
        let exec = reqs.first().map_or(Exec { threads: 1 }, |r| r.exec);
        let step = CpuStep { tokens, segs, exec };
        // Each sequence's layers moved into one batch layer per layer, and back after the
        // graph, whatever it returned.
        let mut layers: Vec<Vec<CpuLayer>> = (0..n_layer).map(|_| Vec::new()).collect();
        for q in seqs.iter_mut() {
            for (col, l) in layers.iter_mut().zip(std::mem::take(&mut q.layers)) {
                col.push(l);
            }
        }
        let mut layers: Vec<CpuLayer> = layers.into_iter().map(CpuLayer::Batch).collect();
        let out = graph(&step, &mut layers);
        for l in layers {
            if let CpuLayer::Batch(ls) = l {
                for (q, l) in seqs.iter_mut().zip(ls) {
                    q.layers.push(l);
                }
            }
        }
        Ok(out?.data)
    }

    fn embed(&self, s: &CpuStep, table: &QTensor) -> Result<CpuAct> {
        let mut h = CpuAct::zeros(s.tokens.len(), table.row_len());
        for (row, &id) in h.data.chunks_exact_mut(table.row_len()).zip(&s.tokens) {
            table.dequant_row(id as usize, row)?;
        }
        Ok(h)
    }

    fn scale(&self, _: &CpuStep, x: &mut CpuAct, c: f32) -> Result<()> {
        x.data.iter_mut().for_each(|v| *v *= c);
        Ok(())
    }

    fn rms_norm(&self, s: &CpuStep, x: &CpuAct, w: &Vec<f32>, eps: f32) -> Result<CpuAct> {
        check(x.width.is_multiple_of(w.len().max(1)), || {
            format!("rms_norm: rows of {} by groups of {}", x.width, w.len())
        })?;
        let _stage = crate::prof::stage("norms, residuals");
        let mut out = CpuAct::zeros(x.rows(), x.width);
        ops::rms_norm_par(&x.data, w, eps, &mut out.data, s.exec)?;
        Ok(out)
    }

    fn rms_norm_inplace(&self, _: &CpuStep, x: &mut CpuAct, w: &Vec<f32>, eps: f32) -> Result<()> {
        check(x.width.is_multiple_of(w.len().max(1)), || {
            format!("rms_norm: rows of {} by groups of {}", x.width, w.len())
        })?;
        ops::rms_norm_inplace(&mut x.data, w, eps);
        Ok(())
    }

    fn add(&self, _: &CpuStep, h: &mut CpuAct, a: &CpuAct) -> Result<()> {
        check(h.data.len() == a.data.len(), || {
            format!("add: {} and {} values", h.data.len(), a.data.len())
        })?;
        let _stage = crate::prof::stage("norms, residuals");
        ops::add_inplace(&mut h.data, &a.data);
        Ok(())
    }

    fn add_norm(
        &self,
        s: &CpuStep,
        h: &mut CpuAct,
        a: &CpuAct,
        w: &Vec<f32>,
        eps: f32,
    ) -> Result<CpuAct> {
        self.add(s, h, a)?;
        self.rms_norm(s, h, w, eps)
    }

    fn add_bias(&self, _: &CpuStep, x: &mut CpuAct, b: &Vec<f32>) -> Result<()> {
        check(x.width == b.len(), || {
            format!("bias of {} on rows of {}", b.len(), x.width)
        })?;
        ops::add_bias(&mut x.data, b);
        Ok(())
    }

    fn matmul(&self, s: &CpuStep, w: &QTensor, x: &CpuAct) -> Result<CpuAct> {
        let [out] = self.matmuls(s, [w], x)?;
        Ok(out)
    }

    fn matmuls<const N: usize>(
        &self,
        s: &CpuStep,
        w: [&QTensor; N],
        x: &CpuAct,
    ) -> Result<[CpuAct; N]> {
        for m in &w {
            check(m.row_len() == x.width, || {
                format!(
                    "{}: rows of {} by an input of {}",
                    m.name,
                    m.row_len(),
                    x.width
                )
            })?;
        }
        let n = x.rows();
        let mut outs = w.map(|m| CpuAct::zeros(n, m.n_rows()));
        {
            let bufs: [&mut [f32]; N] = {
                let mut it = outs.iter_mut();
                std::array::from_fn(|_| match it.next() {
                    Some(o) => &mut o.data[..],
                    None => unreachable!("N outputs for N matrices"),
                })
            };
            ops::matmuls(w, &x.data, n, bufs, s.exec)?;
        }
        Ok(outs)
    }

    fn gather_cols(&self, _: &CpuStep, x: &CpuAct, cols: &Vec<u32>) -> Result<CpuAct> {
        check(cols.iter().all(|&c| (c as usize) < x.width), || {
            format!("gather_cols: a column past {}", x.width)
        })?;
        let mut out = CpuAct::zeros(x.rows(), cols.len());
        for (o, r) in out
            .data
            .chunks_exact_mut(cols.len().max(1))
            .zip(x.data.chunks_exact(x.width.max(1)))
        {
            o.iter_mut()
                .zip(cols)
                .for_each(|(o, &c)| *o = r[c as usize]);
        }
        Ok(out)
    }

    fn rope(&self, s: &CpuStep, x: &mut CpuAct, head_dim: usize, rope: Rope) -> Result<()> {
        let w = x.width.max(1);
        for g in &s.segs {
            let rows = x.data[g.rows.start * w..g.rows.end * w].chunks_exact_mut(w);
            for (t, row) in rows.enumerate() {
                rope.apply(row, head_dim, g.pos0 + t);
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        s: &CpuStep,
        layer: &mut CpuLayer,
        [q, k, v]: [&CpuAct; 3],
        p: AttnParams,
    ) -> Result<CpuAct> {
        if let CpuLayer::Batch(ls) = layer {
            return per_segment(s, ls, [q, k, v], |s, l, qkv| self.attention(s, l, qkv, p));
        }
        let CpuLayer::Kv { k: kc, v: vc } = layer else {
            return Err(Error::StateMismatch { layer: 0 });
        };
        let kvw = p.shape.n_head_kv * p.shape.head_dim;
        check(k.width == kvw && v.width == kvw, || {
            format!(
                "attention: k/v rows of {} and {}, heads need {kvw}",
                k.width, v.width
            )
        })?;
        let mut pass = KvPass::new(kc, vc, s.pos0())?;
        for (kt, vt) in k.data.chunks_exact(kvw).zip(v.data.chunks_exact(kvw)) {
            pass.push(kt, vt)?;
        }
        let mut o = CpuAct::zeros(q.rows(), q.width);
        pass.attend_all(&q.data, p.window, p.shape, &mut o.data, s.exec)?;
        Ok(o)
    }

    fn sigmoid_mul(&self, _: &CpuStep, x: &mut CpuAct, g: &CpuAct) -> Result<()> {
        check(x.data.len() == g.data.len(), || {
            "sigmoid_mul: sizes differ".into()
        })?;
        x.data
            .iter_mut()
            .zip(&g.data)
            .for_each(|(o, &g)| *o *= ops::sigmoid(g));
        Ok(())
    }

    fn glu(&self, s: &CpuStep, mut gate: CpuAct, up: &CpuAct, kind: Glu) -> Result<CpuAct> {
        check(gate.data.len() == up.data.len(), || {
            "glu: sizes differ".into()
        })?;
        match kind {
            Glu::Silu => ops::swiglu_par(&mut gate.data, &up.data, s.exec)?,
            Glu::Gelu => ops::gated_par(&mut gate.data, &up.data, 8, s.exec, &|g, u| {
                g.iter_mut()
                    .zip(u)
                    .for_each(|(g, &u)| *g = ops::gelu_ggml(*g) * u);
            })?,
        }
        Ok(gate)
    }

    fn glu_matmul(
        &self,
        s: &CpuStep,
        gate: CpuAct,
        up: &CpuAct,
        kind: Glu,
        w: &QTensor,
    ) -> Result<CpuAct> {
        let g = self.glu(s, gate, up, kind)?;
        self.matmul(s, w, &g)
    }

    fn moe(&self, s: &CpuStep, m: &Experts<Cpu>, x: &CpuAct) -> Result<CpuAct> {
        let mut y = CpuAct {
            data: super::moe::forward(m, &x.data, s.exec)?, // ffn_moe_out
            width: x.width,
        };
        let Some(sh) = &m.shared else {
            return Ok(y);
        };
        let [gate, up] = self.matmuls(s, [&sh.gate, &sh.up], x)?;
        let out = self.glu_matmul(s, gate, &up, Glu::Silu, &sh.down)?; // ffn_shexp
        let e = x.width;
        let _stage = crate::prof::stage("moe shared-expert gate");
        for ((yt, st), xt) in y
            .data
            .chunks_exact_mut(e)
            .zip(out.data.chunks_exact(e))
            .zip(x.data.chunks_exact(e))
        {
            let g = sh
                .gate_inp
                .as_ref()
                .map_or(1.0, |g| ops::sigmoid(ops::dot(g, xt)));
            yt.iter_mut().zip(st).for_each(|(a, &b)| *a += g * b);
        }
        Ok(y) // ffn_out
    }

    fn deltanet(
        &self,
        s: &CpuStep,
        layer: &mut CpuLayer,
        p: &DeltaNet<'_, Cpu>,
        mix: &CpuAct,
        [beta, alpha]: [&CpuAct; 2],
    ) -> Result<CpuAct> {
        if let CpuLayer::Batch(ls) = layer {
            return per_segment(s, ls, [mix, beta, alpha], |s, l, [m, b, a]| {
                self.deltanet(s, l, p, m, [b, a])
            });
        }
        let CpuLayer::Recurrent { conv, ssm } = layer else {
            return Err(Error::StateMismatch { layer: 0 });
        };
        let d = p.shape;
        let nv = d.n_v_head;
        check(
            mix.width == d.conv_dim() && beta.width == nv && alpha.width == nv,
            || "deltanet: input widths do not match the layer".into(),
        )?;
        let glue = crate::prof::stage("deltanet glue: gates");
        let beta: Vec<f32> = beta.data.iter().map(|&v| ops::sigmoid(v)).collect();
        let g: Vec<f32> = alpha
            .data
            .chunks_exact(nv)
            .flat_map(|at| (0..nv).map(move |j| p.a[j] * softplus(at[j] + p.dt[j])))
            .collect();
        drop(glue);
        let (q, k, v) = conv_qkv(p, conv, &mix.data, s.exec)?;
        let inputs = deltanet::Inputs {
            q: &q,
            k: &k,
            v: &v,
            beta: &beta,
            g: &g,
        };
        let dims = deltanet::Dims {
            n_k_head: d.n_k_head,
            d_k: d.d_k,
            d_v: d.d_v,
            k_head: (0..nv).map(|j| d.k_head(j)).collect(),
        };
        Ok(CpuAct {
            data: deltanet::run(ssm, &inputs, &dims, s.exec),
            width: nv * d.d_v,
        })
    }

    fn norm_gate(
        &self,
        s: &CpuStep,
        o: &CpuAct,
        w: &Vec<f32>,
        z: &CpuAct,
        eps: f32,
    ) -> Result<CpuAct> {
        let hv = w.len();
        check(
            o.data.len() == z.data.len() && o.width.is_multiple_of(hv),
            || "norm_gate: sizes differ".into(),
        )?;
        let _glue = crate::prof::stage("deltanet glue: output norm");
        let mut out = CpuAct::zeros(o.rows(), o.width);
        crate::matmul::par_rows(&mut out.data, hv, 16 * hv, s.exec, &|i, nt| {
            ops::rms_norm(&o.data[i * hv..(i + 1) * hv], w, eps, nt);
            nt.iter_mut()
                .zip(&z.data[i * hv..(i + 1) * hv])
                .for_each(|(v, &zv)| *v *= ops::silu(zv));
            Ok(())
        })?;
        Ok(out)
    }

    fn keep_rows(&self, _: &CpuStep, mut x: CpuAct, first: usize) -> Result<CpuAct> {
        let first = first.min(x.rows());
        x.data.drain(..first * x.width);
        Ok(x)
    }

    fn softcap(&self, _: &CpuStep, x: &mut CpuAct, c: f32) -> Result<()> {
        x.data.iter_mut().for_each(|v| *v = (*v / c).tanh() * c);
        Ok(())
    }
}

/// Spec §4.2 steps 3–4 for every token: the short convolution, then q and k L2-normalised
/// per key head (q also scaled by 1/√d_k); returns q, k (`n × n_k_head·d_k`) and v
/// (`n × d_inner`).
fn conv_qkv(
    p: &DeltaNet<'_, Cpu>,
    conv: &mut [f32],
    mix: &[f32],
    exec: Exec,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let d = p.shape;
    let (cd, dk) = (d.conv_dim(), d.d_k);
    let kw = d.n_k_head * dk;
    let di = d.n_v_head * d.d_v;
    let n = mix.len() / cd;
    let glue = crate::prof::stage("deltanet glue: conv");
    let y = deltanet::conv(p.conv1d, d.d_conv, conv, mix, exec)?; // 3.
    drop(glue);
    let _glue = crate::prof::stage("deltanet glue: q/k/v");
    let (mut q, mut k) = (vec![0f32; n * kw], vec![0f32; n * kw]);
    let mut v = vec![0f32; n * di];
    let q_scale = 1.0 / (dk as f32).sqrt();
    // q, k and v of token t, normed: one row of `v` per token, q and k alongside it.
    let (qd, kd) = (
        crate::matmul::Disjoint::new(&mut q),
        crate::matmul::Disjoint::new(&mut k),
    );
    crate::matmul::par_rows(&mut v, di, 4 * cd, exec, &|t, vt| {
        let yt = &y[t * cd..(t + 1) * cd];
        // SAFETY: token t alone writes row t of q and of k.
        let (qt, kt) = unsafe { (qd.slice(t * kw, kw), kd.slice(t * kw, kw)) };
        qt.copy_from_slice(&yt[..kw]);
        kt.copy_from_slice(&yt[kw..2 * kw]);
        vt.copy_from_slice(&yt[2 * kw..]);
        for (qh, kh) in qt.chunks_exact_mut(dk).zip(kt.chunks_exact_mut(dk)) {
            l2_norm(qh, d.eps, q_scale);
            l2_norm(kh, d.eps, 1.0);
        }
        Ok(())
    })?;
    Ok((q, k, v))
}

/// ln(1 + eˣ), linear past 20 as ggml's softplus (ggml `ggml_softplus` threshold).
pub(crate) fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `x ← x / max(‖x‖, eps) · scale` (ggml `l2_norm`).
pub(crate) fn l2_norm(x: &mut [f32], eps: f32, scale: f32) {
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let s = scale / norm.max(eps);
    x.iter_mut().for_each(|v| *v *= s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_norm_unit() {
        let mut x = vec![3.0, 4.0];
        l2_norm(&mut x, 1e-6, 1.0);
        assert!((x[0] - 0.6).abs() < 1e-6 && (x[1] - 0.8).abs() < 1e-6);
    }
}
