//! Single-thread matvec speed of every kernel path: a 4096 x 4096 weight matrix of each type
//! times one activation row, reported as GB/s of weight bytes; then the tile kernels
//! (`quant::gemm`) and the packed-group kernels (`quant::gemm_packed`) on the same matvec and
//! on a cache-resident 64-row x 32-token block, as multiply-adds per nanosecond (no asserts; timings vary).
//!
//! `cargo run -p quant --release --example vec_dot_bench [TYPE...]` (default Q4_K Q8_0).

use quant::{
    gemm, gemm_packed, quantize_activations, random_blocks, GgmlType, Kernels, Packed, QActs,
};
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
        // TILE_ONLY=1 skips the vec_dot paths (for `perf stat` of the tile kernels alone).
        let tile_only = std::env::var_os("TILE_ONLY").is_some();
        for k in Kernels::available().iter().filter(|_| !tile_only) {
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
        let a = QActs::new(ty, &x, n)?;
        let mut out = vec![0f32; rows];
        let best = best_of(7, || gemm(&w, &a, 0..1, &mut out, 1))?;
        println!(
            "{:>6} {:>11}: {:7.2} GB/s  ({:6.3} ms per matvec, checksum {:.6})",
            ty.name(),
            "tile",
            w.len() as f64 / best / 1e9,
            best * 1e3,
            out.iter().sum::<f32>()
        );
        let (br, bt) = (64, 32);
        let xb: Vec<f32> = (0..bt * n)
            .map(|i| x[i % n] * (1.0 + (i / n) as f32))
            .collect();
        let ab = QActs::new(ty, &xb, n)?;
        let mut outb = vec![0f32; br * bt];
        let wb = &w[..br * row_bytes];
        let best = best_of(7, || gemm(wb, &ab, 0..bt, &mut outb, bt))?;
        println!(
            "{:>6} {:>11}: {:7.2} MAC/ns ({br} rows x {bt} tokens, cache-resident)",
            ty.name(),
            "tile gemm",
            (br * bt * n) as f64 / best / 1e9
        );
        let Some(p) = Packed::new(ty, n, &w)? else {
            continue;
        };
        let best = best_of(7, || gemm_packed(&p, 0..rows, &a, 0..1, &mut out, 1))?;
        println!(
            "{:>6} {:>11}: {:7.2} GB/s  ({:6.3} ms per matvec, checksum {:.6})",
            ty.name(),
            "packed",
            w.len() as f64 / best / 1e9,
            best * 1e3,
            out.iter().sum::<f32>()
        );
        let pb = Packed::new(ty, n, wb)?.expect("packed above");
        let best = best_of(7, || gemm_packed(&pb, 0..br, &ab, 0..bt, &mut outb, bt))?;
        println!(
            "{:>6} {:>11}: {:7.2} MAC/ns ({br} rows x {bt} tokens, cache-resident)",
            ty.name(),
            "packed gemm",
            (br * bt * n) as f64 / best / 1e9
        );
    }
    Ok(())
}

/// The fastest of `reps` runs of `f`, in seconds.
fn best_of(
    reps: usize,
    mut f: impl FnMut() -> Result<(), quant::Error>,
) -> Result<f64, quant::Error> {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}
