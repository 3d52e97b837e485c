//! Speed of the gated delta rule alone, recurrent against chunked, at Qwen3.5-35B-A3B's head
//! shape (16 key heads, 32 value heads, 128 × 128 state each) for a prefill of `N` tokens and
//! for one decode token (no asserts; timings vary).
//!
//! `cargo run -p engine --release --example deltanet_bench [N] [THREADS] [D] [recurrent|chunked]`
//! (default 512 tokens, all cores, heads of D = 128, both forms).

use std::time::Instant;

use engine::models::deltanet::{run_with, Dims, Form, Inputs};
use engine::Exec;

/// Deterministic values in [−0.5, 0.5).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Best of five runs of `n` tokens in `form`, in seconds.
fn time(d: &Dims, n: usize, form: Form, exec: Exec) -> f64 {
    let (kw, nv) = (d.n_k_head * d.d_k, d.k_head.len());
    let (mut q, mut k) = (values(n * kw, 1), values(n * kw, 2));
    for h in q.chunks_exact_mut(d.d_k).chain(k.chunks_exact_mut(d.d_k)) {
        let norm = h.iter().map(|x| x * x).sum::<f32>().sqrt();
        h.iter_mut().for_each(|x| *x /= norm);
    }
    let v = values(n * nv * d.d_v, 3);
    let beta: Vec<f32> = values(n * nv, 4).iter().map(|x| x + 0.5).collect();
    let g: Vec<f32> = values(n * nv, 5).iter().map(|x| -(x + 0.5)).collect();
    let x = Inputs {
        q: &q,
        k: &k,
        v: &v,
        beta: &beta,
        g: &g,
    };
    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut state = vec![0f32; nv * d.d_v * d.d_k];
        let t = Instant::now();
        std::hint::black_box(run_with(&mut state, &x, d, form, exec));
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let only = std::env::args()
        .skip(1)
        .find(|a| a.parse::<usize>().is_err());
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(512);
    let exec = match args.get(1) {
        Some(&threads) => Exec { threads },
        None => Exec::default(),
    };
    let width = args.get(2).copied().unwrap_or(128);
    let d = Dims {
        n_k_head: 16,
        d_k: width,
        d_v: width,
        k_head: (0..32).map(|j| j % 16).collect(),
    };
    println!("| form | tokens | threads | ms | tok/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (form, tokens) in [
        (Form::Recurrent, n),
        (Form::Chunked, n),
        (Form::Recurrent, 1),
    ] {
        let name = format!("{form:?}").to_lowercase();
        if only.as_ref().is_some_and(|o| *o != name) {
            continue;
        }
        let s = time(&d, tokens, form, exec);
        println!(
            "| {form:?} | {tokens} | {} | {:.3} | {:.0} |",
            exec.threads,
            s * 1e3,
            tokens as f64 / s
        );
    }
}
