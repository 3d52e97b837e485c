//! Single-thread matvec speed of every kernel path: a 4096 x 4096 weight matrix of each type
//! times one activation row, reported as GB/s of weight bytes (no asserts; timings vary).
//!
//! `cargo run -p quant --release --example vec_dot_bench [TYPE...]` (default Q4_K Q8_0).

use quant::{quantize_activations, random_blocks, GgmlType, Kernels};
use std::time::Instant;

fn main() -> Result<(), quant::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names = if args.is_empty() {
        vec!["Q4_K".to_string(), "Q8_0".to_string()]
    } else {
        args
    };
    let (rows, n) = (4096usize, 4096usize);
    for name in names {
        let Some(ty) = GgmlType::from_name(&name) else {
            eprintln!("unknown type {name}");
            continue;
        };
        let row_bytes = ty.bytes_for(n as u64).unwrap_or(0) as usize;
        let mut w = vec![0u8; rows * row_bytes];
        random_blocks(ty, &mut w, 1, 0.02)?;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut act = Vec::new();
        quantize_activations(ty, &x, &mut act)?;
        for k in Kernels::available() {
            let mut out = vec![0f32; rows];
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = Instant::now();
                for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
                    *o = k.vec_dot(ty, n, row, &act)?;
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let check: f32 = out.iter().sum();
            println!(
                "{:>6} {:>11}: {:7.2} GB/s  ({:6.3} ms per matvec, checksum {check:.6})",
                ty.name(),
                k.name(),
                w.len() as f64 / best / 1e9,
                best * 1e3
            );
        }
    }
    Ok(())
}
