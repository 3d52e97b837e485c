//! The MoE op: router and top-k, the chosen experts (one `mmv1` launch a projection with the
//! experts' ids for a few tokens, expert-sorted pairs through the grouped `gemm` for more),
//! the shared expert, and one pass summing everything.

use std::sync::Arc;

use engine::backend::Experts;

use crate::backend::{Cuda, CudaAct, CudaMat, CudaStep, CudaVec};
use crate::error::Result;
use crate::kernels::Src;
use crate::pool::Block;

use super::matmul::{MmvIn, QMat, QRows};
use super::{arg, regs_norm_threads, size_err, Added, Combine};

/// Experts routed per MoE decode call below which the chosen experts go through `mmv` with
/// their ids, above which pairs are sorted by expert for the grouped `gemm`.
const MOE_MMV_PAIRS: usize = 64;

/// A MoE call's routing: per (token, slot) pair its expert id, per pair its weight; under
/// hybrid placement also per pair the expert's slot on the GPU (−1: in RAM).
struct Route {
    ids: Block,
    gids: Option<Block>,
    weights: CudaAct,
    n: usize,
    k: usize,
}

impl Route {
    /// The expert ids the GPU's products read: slots under hybrid placement.
    fn gpu_ids(&self) -> u64 {
        self.gids.as_ref().unwrap_or(&self.ids).ptr()
    }
}

/// Pairs sorted by expert for the grouped product: per pair its row in expert order, per row
/// its token, tiles of one expert's rows, their count.
struct Sorted {
    buf: Block,
    pairs: usize,
    max_tiles: usize,
}

impl Sorted {
    fn slot_of(&self) -> u64 {
        self.buf.ptr()
    }
    fn x_row(&self) -> u64 {
        self.buf.ptr() + 4 * self.pairs as u64
    }
    fn tiles(&self) -> u64 {
        self.buf.ptr() + 8 * self.pairs as u64
    }
    fn n_tiles(&self) -> u64 {
        self.tiles() + 12 * self.max_tiles as u64
    }
}

impl Cuda {
    /// The MoE of `x`; with `fuse` (the residual, the next norm, its epsilon) added to the
    /// residual and normed ([`engine::backend::Backend::moe_add_norm`]).
    pub(crate) fn moe_(
        &self,
        step: &CudaStep,
        e: &Experts<Cuda>,
        x: &CudaAct,
        fuse: Option<(&mut CudaAct, &CudaVec, f32)>,
    ) -> Result<CudaAct> {
        let (n, k, ne, ff, emb) = (x.rows, e.n_expert_used, e.n_expert, e.n_ff_exp, x.width);
        if ne > 1024 || k > 32 || k == 0 || e.gate_exps.experts != ne || e.gate_exps.k != emb {
            return Err(size_err(format!(
                "moe: {ne} experts, {k} a token (at most 1024 and 32)"
            )));
        }
        let route = self.route(e, x)?; // ffn_moe_logits, ffn_moe_topk, ffn_moe_weights_norm
        let pairs = n * k;
        let mats = [&e.gate_exps, &e.up_exps, &e.down_exps];
        let q8 = pairs <= MOE_MMV_PAIRS && mats.iter().all(|w| self.q8_ok(w));
        // Hybrid placement: a batch's grouped products stream the RAM experts to the GPU
        // (`stream_experts`); fewer pairs go to the pool on the side stream while the GPU does
        // its experts.
        let streamed = pairs > MOE_MMV_PAIRS
            && mats.iter().all(|w| self.streamable(w))
            && self.stream_pays(
                &e.gate_exps,
                n,
                k,
                mats.iter().map(|w| w.m * w.row_bytes).sum(),
                step.exec,
            )?;
        let host = match &e.gate_exps.host {
            Some(_) if !streamed => {
                Some(self.queue_ram_experts(route.ids.ptr(), &route.weights, x, mats, step.exec)?)
            }
            _ => None,
        };
        // The shared expert rides in the experts' launches when its matrices match theirs:
        // its gate and up rows after the pairs' rows, its down product beside theirs.
        let merged = q8
            && e.gate_exps.ty == e.up_exps.ty
            && e.shared.as_ref().is_some_and(|sh| {
                sh.gate.m == ff
                    && sh.up.m == ff
                    && sh.gate.ty == e.gate_exps.ty
                    && sh.up.ty == e.gate_exps.ty
                    && sh.down.ty == e.down_exps.ty
                    && sh.down.k == ff
            });
        let extra = if merged { n } else { 0 };
        let gate = self.act(pairs + extra, ff)?;
        let up = self.act(pairs + extra, ff)?;
        let down = self.act(pairs, emb)?;
        let mut shared_out = None;
        // The tokens in 8 bits once, for the experts and the shared expert.
        let xq = match (&x.q8, q8) {
            (_, false) => None,
            (Some(q), true) => Some(q.clone()),
            (None, true) => Some(Arc::new(self.quantize(x, None)?)),
        };
        let sorted = if let Some(xq) = &xq {
            let rows = |x_div| QRows {
                tokens: n,
                ids: Some((route.gpu_ids(), pairs, x_div)),
            };
            let mut gu = vec![
                QMat::by_id(&e.gate_exps, &gate),
                QMat::by_id(&e.up_exps, &up),
            ];
            if let Some(sh) = e.shared.as_ref().filter(|_| merged) {
                gu.push(QMat::dense(&sh.gate, &gate.view(pairs, n)));
                gu.push(QMat::dense(&sh.up, &up.view(pairs, n)));
            }
            if e.gate_exps.ty == e.up_exps.ty {
                self.mmvq(&gu, xq, rows(k))?;
            } else {
                self.mmvq(&gu[..1], xq, rows(k))?;
                self.mmvq(&gu[1..], xq, rows(k))?;
            }
            // ffn_moe_down of silu(gate) ⊙ up, quantized in one pass (the shared expert's
            // rows too when merged).
            let hq = self.quantize(&gate, Some(&up))?;
            let mut dm = vec![QMat::by_id(&e.down_exps, &down)];
            if let Some(sh) = e.shared.as_ref().filter(|_| merged) {
                let out = self.act(n, emb)?;
                dm.push(QMat {
                    x_off: pairs,
                    ..QMat::dense(&sh.down, &out)
                });
                shared_out = Some((out, sh.gate_inp.as_ref().map_or(0, |g| g.buf.ptr())));
            }
            self.mmvq(&dm, &hq, rows(1))?;
            None
        } else if pairs <= MOE_MMV_PAIRS {
            let by_id = |xin, x2, x_div| MmvIn {
                x: xin,
                x2,
                n: pairs,
                ids: Some(route.gpu_ids()),
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
            // Streamed: every expert is in the staging copy, in id order.
            let ids = match streamed {
                true => route.ids.ptr(),
                false => route.gpu_ids(),
            };
            let s = self.sort(&route, ids, ne)?;
            let t = |rows: u64| Some((s.tiles(), s.n_tiles(), rows, s.max_tiles));
            let whole = |w: &CudaMat| match streamed {
                true => self.stream_experts(w),
                false => Ok(w.clone()),
            };
            self.gemm(&whole(&e.gate_exps)?, ff, x, &gate, t(s.x_row()))?;
            self.gemm(&whole(&e.up_exps)?, ff, x, &up, t(s.x_row()))?;
            self.binary("glu_silu", &gate, &up)?;
            self.gemm(&whole(&e.down_exps)?, emb, &gate, &down, t(0))?;
            Some(s)
        };
        // The shared expert (ffn_shexp), then everything summed in one pass.
        let shared = match &e.shared {
            _ if merged => shared_out,
            Some(sh) => {
                let (sg, su) = (self.act(n, sh.gate.m)?, self.act(n, sh.gate.m)?);
                let xq = xq.as_deref().filter(|_| n == 1);
                self.matmuls_q8(&[(&sh.gate, &sg), (&sh.up, &su)], x, None, xq)?;
                let out = self.act(n, emb)?;
                self.matmuls_(&[(&sh.down, &out)], &sg, Some(&su))?;
                Some((out, sh.gate_inp.as_ref().map_or(0, |g| g.buf.ptr())))
            }
            None => None,
        };
        let slot_of = sorted.as_ref().map_or(0, Sorted::slot_of);
        if host.is_some() {
            self.join_ram()?;
        }
        let host_ptr = host.as_ref().map_or(0, CudaAct::ptr);
        match fuse {
            Some((h, w, eps)) if self.norm_fused && regs_norm_threads(emb).is_some() => {
                let (sh, gate) = shared.as_ref().map_or((0, 0), |(o, g)| (o.ptr(), *g));
                let c = Combine {
                    out: down.ptr(),
                    slot_of,
                    weights: route.weights.ptr(),
                    sh,
                    gate,
                    x: x.ptr(),
                    host: host_ptr,
                    k: k as i32,
                };
                self.norm_rows(h, Added::Moe(&c), w, eps)
            }
            Some((h, w, eps)) => {
                let y = self.combine(&route, (&down, slot_of), shared.as_ref(), x, host_ptr)?;
                self.add_norm_(h, &y, w, eps)
            }
            None => self.combine(&route, (&down, slot_of), shared.as_ref(), x, host_ptr),
        }
    }

    /// The router's logits and the top-k choice per token.
    fn route(&self, e: &Experts<Cuda>, x: &CudaAct) -> Result<Route> {
        let (n, k, ne) = (x.rows, e.n_expert_used, e.n_expert);
        let logits = self.act(n, ne)?;
        let slot = e.gate_exps.host.as_ref().map(|h| h.slot_dev.ptr());
        let r = Route {
            ids: self.scratch(4 * n * k)?,
            gids: match slot {
                Some(_) => Some(self.scratch(4 * n * k)?),
                None => None,
            },
            weights: self.act(n, k)?,
            n,
            k,
        };
        let (lp, ip, wp) = (logits.ptr(), r.ids.ptr(), r.weights.ptr());
        let (nei, ki, ni) = (ne as i32, k as i32, n as i32);
        let (sp, gp) = (slot.unwrap_or(0), r.gids.as_ref().map_or(0, Block::ptr));
        let g = &e.gate_inp;
        if self.route_fused
            && n == 1
            && g.ty == gguf::GgmlType::F32
            && (g.m, g.k, g.experts) == (ne, x.width, 1)
            && x.width.is_multiple_of(4)
            && x.ptr().is_multiple_of(16)
        {
            let f = self.f(Src::Moe, "route1")?;
            let (w, xp, kk, done) = (g.buf.ptr(), x.ptr(), x.width as i32, self.route_done.ptr());
            // SAFETY: the router ne × K f32, x K f32 (16-byte aligned), logits ne, the
            // counter one u32 (0 between launches); ids, weights and slots k; the slot map ne.
            unsafe {
                self.gpu.launch(
                    &f,
                    ((ne as u32).div_ceil(4), 1, 1),
                    (128, 1, 1),
                    0,
                    &mut [
                        arg(&w),
                        arg(&xp),
                        arg(&kk),
                        arg(&nei),
                        arg(&ki),
                        arg(&lp),
                        arg(&done),
                        arg(&ip),
                        arg(&wp),
                        arg(&sp),
                        arg(&gp),
                    ],
                )?
            };
            return Ok(r);
        }
        self.matmul_(&e.gate_inp, x, &logits)?;
        let f = self.f(Src::Moe, "topk")?;
        // SAFETY: logits n × ne; ids, weights and slots n × k; the slot map ne.
        unsafe {
            self.gpu.launch(
                &f,
                ((n as u32).div_ceil(4), 1, 1),
                (128, 1, 1),
                0,
                &mut [
                    arg(&lp),
                    arg(&nei),
                    arg(&ki),
                    arg(&ni),
                    arg(&ip),
                    arg(&wp),
                    arg(&sp),
                    arg(&gp),
                ],
            )?
        };
        Ok(r)
    }

    /// Sort the pairs by expert on the device (no host sync: the grouped product reads the
    /// tile count from device memory).
    fn sort(&self, r: &Route, ids: u64, ne: usize) -> Result<Sorted> {
        let pairs = r.n * r.k;
        let max_tiles = pairs.div_ceil(64) + ne;
        let s = Sorted {
            buf: self.scratch(4 * (2 * pairs + 3 * max_tiles + 1))?,
            pairs,
            max_tiles,
        };
        let f = self.f(Src::Moe, "moe_sort")?;
        let (ip, np, ki, nei, tile) = (ids, pairs as i32, r.k as i32, ne as i32, 64i32);
        let (slot, xrow, tiles, n_tiles) = (s.slot_of(), s.x_row(), s.tiles(), s.n_tiles());
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
        Ok(s)
    }

    /// `y = Σ weights · down[slot] + σ(gate·x) · shared`, 256 columns of a token a block.
    fn combine(
        &self,
        r: &Route,
        (down, slot_of): (&CudaAct, u64),
        shared: Option<&(CudaAct, u64)>,
        x: &CudaAct,
        host: u64,
    ) -> Result<CudaAct> {
        let emb = x.width;
        let y = self.act(r.n, emb)?;
        let f = self.f(Src::Moe, "moe_combine")?;
        let (dp, wp, yp, xp, ki, w) = (
            down.ptr(),
            r.weights.ptr(),
            y.ptr(),
            x.ptr(),
            r.k as i32,
            emb as i32,
        );
        let (shp, gp) = shared.map_or((0, 0), |(o, g)| (o.ptr(), *g));
        // SAFETY: down holds the pairs' rows (in slot order when sorted); y, x and the shared
        // output n × emb; the gate emb.
        unsafe {
            self.gpu.launch(
                &f,
                (r.n as u32, (emb as u32).div_ceil(256), 1),
                (256, 1, 1),
                0,
                &mut [
                    arg(&dp),
                    arg(&slot_of),
                    arg(&wp),
                    arg(&shp),
                    arg(&gp),
                    arg(&xp),
                    arg(&host),
                    arg(&yp),
                    arg(&ki),
                    arg(&w),
                ],
            )?
        };
        Ok(y)
    }
}
