//! Every op of the CUDA backend against the CPU backend (and, for the products, against an
//! f64 reference on the dequantized weights), on random inputs with poisoned outputs: the
//! error bounds are ‖gpu − ref‖ / ‖ref‖. GPU only: `cargo test -p cuda -- --ignored` on the
//! GPU machine (`scripts/device/gpu-tests.sh`).

mod common;

use common::{close, gpu, rand, tensor, tensors};
use engine::backend::{
    AttnBlock, AttnParams, Backend, Cpu, CpuAct, CpuStep, DeltaNet, DeltaShape, Experts, Glu,
    SharedExpert,
};
use engine::kv::{CacheConfig, KvType};
use engine::ops::{AttnShape, Exec, Rope, RopeStyle};
use gguf::GgmlType as T;

fn exec() -> Exec {
    Exec { threads: 4 }
}

fn cpu_act(width: usize, data: Vec<f32>) -> CpuAct {
    CpuAct { data, width }
}

/// `x` as `quant_q8` leaves it: blocks of 32 rounded to 8 bits with scale max|x| / 127.
fn q8_round(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|b| {
            let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let d = amax / 127.0;
            b.iter().map(move |v| (v * inv).round_ties_even() * d)
        })
        .collect()
}

/// Every weight type the kernels read natively.
const TYPES: [T; 16] = cuda::NATIVE_TYPES;

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn matmul_every_type_and_batch_size() {
    let g = gpu();
    let mut seed = 1;
    for ty in TYPES {
        for (k, m) in [(256usize, 200usize), (512, 67), (2048, 45)] {
            seed += 1;
            let name = format!("w.{ty}.{k}.{m}");
            let w = tensor(&name, ty, &[k as u64, m as u64], seed);
            let wd = w.to_f32().expect("dequantize");
            let gm = g.mat(w.clone()).expect("upload");
            for n in [1usize, 3, 8, 9, 64, 100] {
                let x = rand(n * k, seed * 7 + n as u64);
                // One token with an integer-dot type: the kernel sees x in 8 bits.
                let q8 = n == 1 && cuda::Q8_TYPES.contains(&ty);
                let xr = if q8 { q8_round(&x) } else { x.clone() };
                let want: Vec<f32> = (0..n)
                    .flat_map(|t| {
                        let (x, wd) = (&xr, &wd);
                        (0..m).map(move |r| {
                            (0..k)
                                .map(|i| wd[r * k + i] as f64 * x[t * k + i] as f64)
                                .sum::<f64>() as f32
                        })
                    })
                    .collect();
                let s = g.step(&vec![0; n], 0).expect("step");
                let gx = g.upload_act(n, k, &x).expect("x");
                let got = g
                    .download_act(&g.matmul(&s, &gm, &gx).expect("mm"))
                    .expect("y");
                // mmv multiplies in f32 (mmvq: integer dots on the 8-bit x, exact up to the
                // f32 scaling); gemm rounds both operands to f16.
                let bound = if n <= 8 { 1e-5 } else { 3e-3 };
                close(
                    &format!("matmul {ty} k={k} m={m} n={n} vs f64"),
                    &got,
                    &want,
                    bound,
                );
                let cs = CpuStep::new(&vec![0; n], 0, exec());
                let cpu = Cpu.matmul(&cs, &w, &cpu_act(k, x.clone())).expect("cpu mm");
                // The CPU quantizes activations (Q8_0/Q8_K) for its integer dots.
                close(&format!("matmul {ty} n={n} vs cpu"), &got, &cpu.data, 3e-2);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn embedding_rows_every_type() {
    let g = gpu();
    for (i, ty) in TYPES.into_iter().enumerate() {
        let (k, rows) = (256usize, 50usize);
        let w = tensor(
            &format!("emb.{ty}"),
            ty,
            &[k as u64, rows as u64],
            100 + i as u64,
        );
        let ids: Vec<u32> = vec![3, 0, 49, 17, 17, 8];
        let s = g.step(&ids, 5).expect("step");
        let gm = g.mat(w.clone()).expect("upload");
        let got = g
            .download_act(&g.embed(&s, &gm).expect("embed"))
            .expect("dl");
        let cs = CpuStep::new(&ids, 5, exec());
        let want = Cpu.embed(&cs, &w).expect("cpu");
        close(&format!("get_rows {ty}"), &got, &want.data, 1e-6);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn norms_and_elementwise() {
    let g = gpu();
    let (n, w) = (7usize, 1024usize);
    let s = g.step(&vec![0; n], 0).expect("step");
    let cs = CpuStep::new(&vec![0; n], 0, exec());
    let x = rand(n * w, 1);
    let y = rand(n * w, 2);
    let up = |v: &[f32], width: usize| g.upload_act(v.len() / width, width, v).expect("up");
    let dl = |a: &cuda::CudaAct| g.download_act(a).expect("dl");
    let vec = |v: Vec<f32>| g.vector(v).expect("vec");
    let s3 = |rows: usize| g.step(&vec![0; rows], 0).expect("step");
    let cs3 = |rows: usize| CpuStep::new(&vec![0; rows], 0, exec());
    // Row norm and per-head norm.
    for group in [w, 64] {
        let wv = rand(group, 3 + group as u64);
        let got = g
            .rms_norm(&s, &up(&x, w), &vec(wv.clone()), 1e-6)
            .expect("norm");
        let want = Cpu
            .rms_norm(&cs, &cpu_act(w, x.clone()), &wv, 1e-6)
            .expect("cpu");
        close(
            &format!("rms_norm group {group}"),
            &dl(&got),
            &want.data,
            1e-5,
        );
        let mut gi = up(&x, w);
        g.rms_norm_inplace(&s, &mut gi, &vec(wv.clone()), 1e-6)
            .expect("inplace");
        let mut ci = cpu_act(w, x.clone());
        Cpu.rms_norm_inplace(&cs, &mut ci, &wv, 1e-6).expect("cpu");
        close(
            &format!("rms_norm_inplace group {group}"),
            &dl(&gi),
            &ci.data,
            1e-5,
        );
    }
    // Binary ops.
    let mut a = up(&x, w);
    g.add(&s, &mut a, &up(&y, w)).expect("add");
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    close("add", &dl(&a), &want, 0.0);
    let mut a = up(&x, w);
    g.sigmoid_mul(&s, &mut a, &up(&y, w)).expect("sigmoid_mul");
    let mut c = cpu_act(w, x.clone());
    Cpu.sigmoid_mul(&cs, &mut c, &cpu_act(w, y.clone()))
        .expect("cpu");
    close("sigmoid_mul", &dl(&a), &c.data, 1e-6);
    for kind in [Glu::Silu, Glu::Gelu] {
        let big: Vec<f32> = x.iter().map(|v| v * 12.0).collect();
        let got = g.glu(&s, up(&big, w), &up(&y, w), kind).expect("glu");
        let want = Cpu
            .glu(&cs, cpu_act(w, big.clone()), &cpu_act(w, y.clone()), kind)
            .expect("cpu");
        close(&format!("glu {kind:?}"), &dl(&got), &want.data, 1e-5);
    }
    let mut a = up(&x, w);
    g.scale(&s, &mut a, 0.37).expect("scale");
    close(
        "scale",
        &dl(&a),
        &x.iter().map(|v| v * 0.37).collect::<Vec<_>>(),
        0.0,
    );
    let b = rand(w, 9);
    let mut a = up(&x, w);
    g.add_bias(&s, &mut a, &vec(b.clone())).expect("bias");
    let mut c = cpu_act(w, x.clone());
    Cpu.add_bias(&cs, &mut c, &b).expect("cpu");
    close("add_bias", &dl(&a), &c.data, 0.0);
    let mut a = up(&x, w);
    g.softcap(&s, &mut a, 0.5).expect("softcap");
    let mut c = cpu_act(w, x.clone());
    Cpu.softcap(&cs, &mut c, 0.5).expect("cpu");
    close("softcap", &dl(&a), &c.data, 1e-6);
    // Column gather.
    let cols: Vec<u32> = (0..100).map(|i| (i * 37 % w) as u32).collect();
    let got = g
        .gather_cols(&s, &up(&x, w), &g.index(cols.clone()).expect("idx"))
        .expect("gather");
    let want = Cpu
        .gather_cols(&cs, &cpu_act(w, x.clone()), &cols)
        .expect("cpu");
    close("gather_cols", &dl(&got), &want.data, 0.0);
    // The fused residual add + norm, and DeltaNet's gated norm.
    let gv = rand(w, 11);
    let mut a = up(&x, w);
    let got = g
        .add_norm(&s, &mut a, &up(&y, w), &vec(gv.clone()), 1e-6)
        .expect("add_norm");
    let mut c = cpu_act(w, x.clone());
    let want = Cpu
        .add_norm(&cs, &mut c, &cpu_act(w, y.clone()), &gv, 1e-6)
        .expect("cpu");
    close("add_norm: sum", &dl(&a), &c.data, 0.0);
    close("add_norm: norm", &dl(&got), &want.data, 1e-5);
    // Widths for each path: the register-held kernel (one chunk a thread, several, a
    // partial warp) and the one-pass fallback (not a multiple of 4, wider than 16,384).
    for width in [64usize, 100, 576, 2048, 6144, 16384, 16388, 17000] {
        let rows = 3;
        let (x, y, gv) = (
            rand(rows * width, 21),
            rand(rows * width, 22),
            rand(width, 23),
        );
        let mut a = up(&x, width);
        let got = g
            .add_norm(&s3(rows), &mut a, &up(&y, width), &vec(gv.clone()), 1e-6)
            .expect("add_norm");
        let mut c = cpu_act(width, x.clone());
        let want = Cpu
            .add_norm(&cs3(rows), &mut c, &cpu_act(width, y), &gv, 1e-6)
            .expect("cpu");
        close(&format!("add_norm {width}: sum"), &dl(&a), &c.data, 0.0);
        close(&format!("add_norm {width}"), &dl(&got), &want.data, 1e-5);
    }
    let nw = rand(64, 12);
    let got = g
        .norm_gate(&s, &up(&x, w), &vec(nw.clone()), &up(&y, w), 1e-6)
        .expect("norm_gate");
    let want = Cpu
        .norm_gate(
            &cs,
            &cpu_act(w, x.clone()),
            &nw,
            &cpu_act(w, y.clone()),
            1e-6,
        )
        .expect("cpu");
    close("norm_gate", &dl(&got), &want.data, 1e-5);
    // Keeping the last rows.
    let kept = g.keep_rows(&s, up(&x, w), 5).expect("keep");
    close("keep_rows", &dl(&kept), &x[5 * w..], 0.0);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn rope_normal_neox_and_partial() {
    let g = gpu();
    let (n, heads, hd) = (5usize, 3usize, 64usize);
    let x = rand(n * heads * hd, 21);
    for (style, n_rot) in [
        (RopeStyle::Normal, 64),
        (RopeStyle::Neox, 64),
        (RopeStyle::Neox, 16),
    ] {
        let rope = Rope {
            n_rot,
            base: 10_000.0,
            style,
        };
        let s = g.step(&vec![0; n], 1234).expect("step");
        let mut a = g.upload_act(n, heads * hd, &x).expect("x");
        g.rope(&s, &mut a, hd, rope).expect("rope");
        let cs = CpuStep::new(&vec![0; n], 1234, exec());
        let mut c = cpu_act(heads * hd, x.clone());
        Cpu.rope(&cs, &mut c, hd, rope).expect("cpu");
        close(
            &format!("rope {style:?} n_rot {n_rot}"),
            &g.download_act(&a).expect("dl"),
            &c.data,
            2e-5,
        );
    }
}

/// Three calls (prefill, one token, a few tokens) through both backends' caches.
fn attention_case(kt: KvType, vt: KvType, hd: usize, group: usize, window: Option<usize>) {
    let g = gpu();
    let n_head_kv = 2;
    let n_head = n_head_kv * group;
    let cache = CacheConfig { k: kt, v: vt };
    let mut gl = g.kv_layer(n_head_kv, hd, 64, cache).expect("gpu cache");
    let mut cl = Cpu.kv_layer(n_head_kv, hd, 64, cache).expect("cpu cache");
    let p = AttnParams {
        shape: AttnShape {
            n_head,
            n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        },
        window,
    };
    let quantized = kt != KvType::F16 || vt != KvType::F16;
    let mut pos = 0;
    for (call, n) in [37usize, 1, 5].into_iter().enumerate() {
        let seed = 1000 * call as u64 + hd as u64 + group as u64;
        let q = rand(n * n_head * hd, seed);
        let k = rand(n * n_head_kv * hd, seed + 1);
        let v = rand(n * n_head_kv * hd, seed + 2);
        let s = g.step(&vec![0; n], pos).expect("step");
        let up = |d: &[f32], w: usize| g.upload_act(n, w, d).expect("up");
        let (gq, gk, gv) = (
            up(&q, n_head * hd),
            up(&k, n_head_kv * hd),
            up(&v, n_head_kv * hd),
        );
        let got = g.attention(&s, &mut gl, [&gq, &gk, &gv], p).expect("attn");
        let cs = CpuStep::new(&vec![0; n], pos, exec());
        let (cq, ck, cv) = (
            cpu_act(n_head * hd, q),
            cpu_act(n_head_kv * hd, k),
            cpu_act(n_head_kv * hd, v),
        );
        let want = Cpu
            .attention(&cs, &mut cl, [&cq, &ck, &cv], p)
            .expect("cpu");
        // The CPU scores quantized keys with a Q8_0 query; the GPU in f32 for a decode step,
        // with f16 queries and probabilities on the tensor cores for a prefill.
        let bound = if quantized {
            3e-2
        } else if n > 4 {
            3e-3
        } else {
            1e-4
        };
        let what =
            format!("attention {kt}/{vt} hd {hd} group {group} window {window:?} call {call}");
        close(&what, &g.download_act(&got).expect("dl"), &want.data, bound);
        pos += n;
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn attention_cache_types_heads_and_windows() {
    for hd in [64, 128, 256] {
        for group in [1, 4] {
            attention_case(KvType::F16, KvType::F16, hd, group, None);
        }
    }
    attention_case(KvType::F16, KvType::F16, 256, 2, Some(20));
    for (kt, vt) in [
        (KvType::Q8_0, KvType::Q8_0),
        (KvType::Q4_0, KvType::Q4_0),
        (KvType::Q8_0, KvType::F16),
    ] {
        attention_case(kt, vt, 64, 3, None);
        attention_case(kt, vt, 256, 8, None);
    }
}

fn deltanet_case(d_k: usize, d_v: usize, grouped: bool) {
    let g = gpu();
    let shape = DeltaShape {
        n_k_head: 2,
        n_v_head: 4,
        d_k,
        d_v,
        d_conv: 4,
        grouped,
        eps: 1e-6,
    };
    let (cd, nv) = (shape.conv_dim(), shape.n_v_head);
    let taps = rand(cd * 4, 31);
    let dt = rand(nv, 32);
    let a: Vec<f32> = rand(nv, 33).iter().map(|v| -(v.exp())).collect();
    let (gt, gdt, ga) = (
        g.vector(taps.clone()).expect("v"),
        g.vector(dt.clone()).expect("v"),
        g.vector(a.clone()).expect("v"),
    );
    let gp = DeltaNet {
        conv1d: &gt,
        dt: &gdt,
        a: &ga,
        shape,
    };
    let cp = DeltaNet {
        conv1d: &taps,
        dt: &dt,
        a: &a,
        shape,
    };
    let conv_len = cd * 3;
    let ssm_len = nv * d_v * d_k;
    let mut gl = g.recurrent_layer(conv_len, ssm_len).expect("state");
    let mut cl = Cpu.recurrent_layer(conv_len, ssm_len).expect("state");
    for (call, n) in [1usize, 70, 1, 3].into_iter().enumerate() {
        let seed = 500 + call as u64 * 10 + d_k as u64;
        let mix = rand(n * cd, seed);
        let beta = rand(n * nv, seed + 1);
        let alpha = rand(n * nv, seed + 2);
        let s = g.step(&vec![0; n], 0).expect("step");
        let up = |d: &[f32], w: usize| g.upload_act(n, w, d).expect("up");
        let got = g
            .deltanet(
                &s,
                &mut gl,
                &gp,
                &up(&mix, cd),
                [&up(&beta, nv), &up(&alpha, nv)],
            )
            .expect("deltanet");
        let cs = CpuStep::new(&vec![0; n], 0, exec());
        let want = Cpu
            .deltanet(
                &cs,
                &mut cl,
                &cp,
                &cpu_act(cd, mix),
                [&cpu_act(nv, beta), &cpu_act(nv, alpha)],
            )
            .expect("cpu");
        let what = format!("deltanet dk {d_k} dv {d_v} grouped {grouped} call {call} n {n}");
        close(&what, &g.download_act(&got).expect("dl"), &want.data, 1e-3);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn deltanet_decode_and_prefill_carry_state() {
    deltanet_case(32, 32, false);
    deltanet_case(128, 128, false);
    deltanet_case(64, 128, true);
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn moe_decode_and_grouped_prefill() {
    let g = gpu();
    // Shared experts as wide as the routed ones (Qwen3.5's) ride in the experts' launches.
    for (ty, e, ff, sh_ff) in [
        (T::F16, 128usize, 64usize, 128usize),
        (T::Q4_K, 256, 256, 256),
        (T::Q4_K, 256, 256, 512),
        (T::Q8_0, 256, 128, 128),
    ] {
        let (ne, k) = (16usize, 4usize);
        let u = |v: usize| v as u64;
        let specs = [
            ("gate_inp", T::F32, vec![u(e), u(ne)]),
            ("gate_exps", ty, vec![u(e), u(ff), u(ne)]),
            ("up_exps", ty, vec![u(e), u(ff), u(ne)]),
            ("down_exps", ty, vec![u(ff), u(e), u(ne)]),
            ("gate_shexp", ty, vec![u(e), u(sh_ff)]),
            ("up_shexp", ty, vec![u(e), u(sh_ff)]),
            ("down_shexp", ty, vec![u(sh_ff), u(e)]),
        ];
        let ts = tensors(
            &specs
                .iter()
                .enumerate()
                .map(|(i, (n, t, d))| {
                    let len = d.iter().product::<u64>() as usize;
                    (
                        format!("moe.{ty}.{sh_ff}.{n}"),
                        *t,
                        d.clone(),
                        rand(len, 40 + i as u64),
                    )
                })
                .collect::<Vec<_>>(),
        );
        let shexp_gate = rand(e, 49);
        for with_shared in [false, true] {
            let cpu_m = Experts::<Cpu> {
                gate_inp: ts[0].clone(),
                gate_exps: ts[1].clone(),
                up_exps: ts[2].clone(),
                down_exps: ts[3].clone(),
                n_expert_used: k,
                n_expert: ne,
                n_ff_exp: ff,
                shared: with_shared.then(|| SharedExpert {
                    gate: ts[4].clone(),
                    up: ts[5].clone(),
                    down: ts[6].clone(),
                    gate_inp: Some(shexp_gate.clone()),
                }),
            };
            let up = |i: usize| g.mat(ts[i].clone()).expect("upload");
            let gpu_m = Experts::<cuda::Cuda> {
                gate_inp: up(0),
                gate_exps: up(1),
                up_exps: up(2),
                down_exps: up(3),
                n_expert_used: k,
                n_expert: ne,
                n_ff_exp: ff,
                shared: with_shared.then(|| SharedExpert {
                    gate: up(4),
                    up: up(5),
                    down: up(6),
                    gate_inp: Some(g.vector(shexp_gate.clone()).expect("vec")),
                }),
            };
            for n in [1usize, 2, 40] {
                let x = rand(n * e, 60 + n as u64);
                let s = g.step(&vec![0; n], 0).expect("step");
                let got = g
                    .moe(&s, &gpu_m, &g.upload_act(n, e, &x).expect("x"))
                    .expect("moe");
                let cs = CpuStep::new(&vec![0; n], 0, exec());
                let want = Cpu.moe(&cs, &cpu_m, &cpu_act(e, x.clone())).expect("cpu");
                let what = format!("moe {ty} shared {with_shared} ({sh_ff}) n {n}");
                close(&what, &g.download_act(&got).expect("dl"), &want.data, 3e-2);
                // Summed into a residual and normed in one pass.
                let (h0, nw) = (rand(n * e, 70 + n as u64), rand(e, 71));
                let mut h = g.upload_act(n, e, &h0).expect("h");
                let gw = g.vector(nw.clone()).expect("w");
                let got = g
                    .moe_add_norm(
                        &s,
                        &gpu_m,
                        &g.upload_act(n, e, &x).expect("x"),
                        (&mut h, &gw, 1e-6),
                    )
                    .expect("moe_add_norm");
                let mut ch = cpu_act(e, h0);
                let want = Cpu
                    .moe_add_norm(&cs, &cpu_m, &cpu_act(e, x.clone()), (&mut ch, &nw, 1e-6))
                    .expect("cpu");
                let dl = |a: &cuda::CudaAct| g.download_act(a).expect("dl");
                close(&format!("{what}: residual"), &dl(&h), &ch.data, 3e-2);
                close(&format!("{what}: + norm"), &dl(&got), &want.data, 3e-2);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn gated_down_projection() {
    let g = gpu();
    for (ty, ff, e) in [(T::Q4_K, 512usize, 256usize), (T::F16, 96, 64)] {
        let w = tensor(&format!("down.{ty}"), ty, &[ff as u64, e as u64], 77);
        let gm = g.mat(w.clone()).expect("upload");
        for kind in [Glu::Silu, Glu::Gelu] {
            for n in [1usize, 5, 33] {
                let gate: Vec<f32> = rand(n * ff, 80 + n as u64)
                    .iter()
                    .map(|v| 4.0 * v)
                    .collect();
                let upv = rand(n * ff, 90 + n as u64);
                let s = g.step(&vec![0; n], 0).expect("step");
                let got = g
                    .glu_matmul(
                        &s,
                        g.upload_act(n, ff, &gate).expect("g"),
                        &g.upload_act(n, ff, &upv).expect("u"),
                        kind,
                        &gm,
                    )
                    .expect("glu_matmul");
                let cs = CpuStep::new(&vec![0; n], 0, exec());
                let want = Cpu
                    .glu_matmul(&cs, cpu_act(ff, gate), &cpu_act(ff, upv), kind, &w)
                    .expect("cpu");
                let what = format!("glu_matmul {ty} {kind:?} n {n}");
                close(&what, &g.download_act(&got).expect("dl"), &want.data, 3e-2);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn norms_hand_their_8_bit_form_to_the_next_product() {
    // A one-token norm also writes its output in 8 bits; the next product reads that: the
    // result must be the f64 product with the 8-bit rounding of the norm's f32 output.
    let g = gpu();
    let s = g.step(&[0], 0).expect("step");
    let (width, m) = (512usize, 70usize);
    let wt = tensor("w.fused", T::Q4_K, &[width as u64, m as u64], 5);
    let wd = wt.to_f32().expect("dequantize");
    let gm = g.mat(wt).expect("upload");
    let check = |what: &str, y: &cuda::CudaAct| {
        let yv = q8_round(&g.download_act(y).expect("y"));
        let want: Vec<f32> = (0..m)
            .map(|r| {
                (0..width)
                    .map(|i| wd[r * width + i] as f64 * yv[i] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let got = g
            .download_act(&g.matmul(&s, &gm, y).expect("mm"))
            .expect("dl");
        close(what, &got, &want, 1e-5);
    };
    let up = |v: &[f32]| g.upload_act(1, width, v).expect("up");
    let mut h = up(&rand(width, 1));
    let y = g
        .add_norm(
            &s,
            &mut h,
            &up(&rand(width, 2)),
            &g.vector(rand(width, 3)).expect("v"),
            1e-6,
        )
        .expect("add_norm");
    check("add_norm → matmul", &y);
    let y = g
        .norm_gate(
            &s,
            &up(&rand(width, 4)),
            &g.vector(rand(64, 6)).expect("v"),
            &up(&rand(width, 7)),
            1e-6,
        )
        .expect("norm_gate");
    check("norm_gate → matmul", &y);
}

fn attention_block_case(kt: KvType, vt: KvType, hd: usize, group: usize) {
    // Qwen3.5's layout: per head its query then its gate in one projection row; per-head
    // norms of q and k; partial NeoX RoPE.
    let g = gpu();
    let n_head_kv = 2;
    let n_head = n_head_kv * group;
    let cache = CacheConfig { k: kt, v: vt };
    let mut gl = g.kv_layer(n_head_kv, hd, 64, cache).expect("gpu cache");
    let mut cl = Cpu.kv_layer(n_head_kv, hd, 64, cache).expect("cpu cache");
    let q_cols: Vec<u32> = (0..n_head * hd)
        .map(|c| ((c / hd) * 2 * hd + c % hd) as u32)
        .collect();
    let gate_cols: Vec<u32> = q_cols.iter().map(|c| c + hd as u32).collect();
    let (qn, kn) = (rand(hd, 7), rand(hd, 8));
    let (gqc, ggc) = (
        g.index(q_cols.clone()).expect("i"),
        g.index(gate_cols.clone()).expect("i"),
    );
    let (gqn, gkn) = (
        g.vector(qn.clone()).expect("v"),
        g.vector(kn.clone()).expect("v"),
    );
    let rope = Rope {
        n_rot: hd / 4,
        base: 10_000_000.0,
        style: RopeStyle::Neox,
    };
    let attn = AttnParams {
        shape: AttnShape {
            n_head,
            n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        },
        window: None,
    };
    let quantized = kt != KvType::F16 || vt != KvType::F16;
    let mut pos = 0;
    for (call, n) in [37usize, 1, 5].into_iter().enumerate() {
        let seed = 3000 * call as u64 + hd as u64 + group as u64;
        let qg: Vec<f32> = rand(n * 2 * n_head * hd, seed)
            .iter()
            .map(|v| 3.0 * v)
            .collect();
        let k = rand(n * n_head_kv * hd, seed + 1);
        let v = rand(n * n_head_kv * hd, seed + 2);
        let s = g.step(&vec![0; n], pos).expect("step");
        let up = |d: &[f32], w: usize| g.upload_act(n, w, d).expect("up");
        let b = AttnBlock {
            q_cols: Some(&gqc),
            gate_cols: Some(&ggc),
            q_norm: Some(&gqn),
            k_norm: Some(&gkn),
            eps: 1e-6,
            rope,
            attn,
        };
        let acts = [
            up(&qg, 2 * n_head * hd),
            up(&k, n_head_kv * hd),
            up(&v, n_head_kv * hd),
        ];
        let got = g.attention_block(&s, &mut gl, acts, b).expect("block");
        let cs = CpuStep::new(&vec![0; n], pos, exec());
        let (cqc, cgc) = (q_cols.clone(), gate_cols.clone());
        let b = AttnBlock {
            q_cols: Some(&cqc),
            gate_cols: Some(&cgc),
            q_norm: Some(&qn),
            k_norm: Some(&kn),
            eps: 1e-6,
            rope,
            attn,
        };
        let acts = [
            cpu_act(2 * n_head * hd, qg),
            cpu_act(n_head_kv * hd, k),
            cpu_act(n_head_kv * hd, v),
        ];
        let want = Cpu.attention_block(&cs, &mut cl, acts, b).expect("cpu");
        let bound = if quantized {
            3e-2
        } else if n > 4 {
            3e-3
        } else {
            1e-4
        };
        let what = format!("attention_block {kt}/{vt} hd {hd} group {group} call {call}");
        close(&what, &g.download_act(&got).expect("dl"), &want.data, bound);
        pos += n;
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/device/gpu-tests.sh"]
fn attention_block_norms_rope_rotation_gate() {
    for hd in [64, 256] {
        attention_block_case(KvType::F16, KvType::F16, hd, 4);
        attention_block_case(KvType::Q8_0, KvType::Q8_0, hd, 8);
    }
    attention_block_case(KvType::Q4_0, KvType::F16, 128, 2);
}
