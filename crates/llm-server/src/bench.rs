//! `llm-server bench`: prompt-processing and generation speed on a model file, measured the way
//! llama-bench measures it (`-p 512 -n 128`: a batch of 512 prompt tokens, then 128 tokens
//! generated one at a time; random token ids; the mean of `-r` repetitions after a warm-up).
//! Prints a table like llama-bench's so the two sit side by side in BENCHMARKS.md, then the
//! memory-bandwidth bound of decode: the weight bytes one generated token reads, over the read
//! bandwidth this machine gives the same number of threads.

use std::path::PathBuf;
use std::time::Instant;

use crate::cache_args::CacheArgs;
use crate::load;

/// Arguments of `llm-server bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model (default: the shipped demo model).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Prompt tokens (pp test; 0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens (tg test; 0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub reps: usize,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Skip the memory-bandwidth measurement (reads a 2 GiB buffer) after the tg test.
    #[arg(long)]
    pub no_bandwidth: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = load::model_path(args.model)?;
    let m = load::open(&path, args.threads)?;
    let n_vocab = m.model.n_vocab() as u64;
    let cache = args.cache.config();
    // llama-bench feeds random tokens; a fixed LCG keeps runs comparable.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut token = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) % n_vocab) as u32
    };
    let per_pos = m.model.new_state_with(1, cache)?.kv_bytes();
    eprintln!(
        "KV cache K {} / V {}: {per_pos} bytes per position (all layers)",
        cache.k, cache.v
    );
    let size = std::fs::metadata(&path)?.len();
    println!("| model | size | threads | test | t/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let row = |test: String, rates: &[f64]| {
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let sd = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>()
            / rates.len().max(2).saturating_sub(1) as f64)
            .sqrt();
        println!(
            "| {name} | {:.2} GiB | {} | {test} | {mean:.2} ± {sd:.2} |",
            size as f64 / (1u64 << 30) as f64,
            m.exec.threads
        );
    };
    if args.n_prompt > 0 {
        let mut rates = Vec::new();
        for rep in 0..=args.reps {
            let prompt: Vec<u32> = (0..args.n_prompt).map(|_| token()).collect();
            let mut state = m.model.new_state_with(args.n_prompt, cache)?;
            if rep == 1 {
                engine::prof::reset(); // the warm-up packs the weights: not a stage to show
            }
            let t0 = Instant::now();
            m.model
                .forward(&prompt, &mut state, engine::Logits::Last, m.exec)?;
            if rep > 0 {
                rates.push(args.n_prompt as f64 / t0.elapsed().as_secs_f64()); // rep 0 is the warm-up
            }
        }
        row(format!("pp{}", args.n_prompt), &rates);
        print_profile(&format!("pp{}", args.n_prompt));
    }
    if args.n_gen > 0 {
        let mut rates = Vec::new();
        for rep in 0..=args.reps {
            let mut state = m.model.new_state_with(args.n_gen + 1, cache)?;
            let mut tok = token();
            let t0 = Instant::now();
            for _ in 0..args.n_gen {
                let logits = m
                    .model
                    .forward(&[tok], &mut state, engine::Logits::Last, m.exec)?;
                tok = engine::sampler::argmax(&logits);
            }
            if rep > 0 {
                rates.push(args.n_gen as f64 / t0.elapsed().as_secs_f64());
            }
        }
        row(format!("tg{}", args.n_gen), &rates);
        print_profile(&format!("tg{}", args.n_gen));
        if !args.no_bandwidth {
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            let file = gguf::GgufFile::open(&path)?;
            let bytes = decode_bytes(&file);
            let bw = read_bandwidth(m.exec.threads);
            println!(
                "\ndecode reads {:.1} MB of weights per token; memory read bandwidth {:.1} GB/s \
                 ({} threads) → bound {:.1} tok/s; measured {mean:.1} ({:.0}% of the bound)",
                bytes as f64 / 1e6,
                bw / 1e9,
                m.exec.threads,
                bw / bytes as f64,
                100.0 * mean * bytes as f64 / bw
            );
        }
    }
    Ok(())
}

/// The stages `LLM_SERVER_PROFILE=1` timed since the last reset (nothing when it is off), then
/// a reset.
fn print_profile(test: &str) {
    let stages = engine::prof::report();
    engine::prof::reset();
    let Some(total) = stages
        .iter()
        .find(|s| s.0.starts_with("forward"))
        .map(|s| s.1)
    else {
        return;
    };
    println!("\nprofile of {test} (wall time of the calling thread, all reps):");
    for (name, t, calls) in stages {
        let pct = 100.0 * t.as_secs_f64() / total.as_secs_f64().max(1e-9);
        println!(
            "  {name:<36} {:>9.1} ms {pct:>5.1}%  {calls} calls",
            t.as_secs_f64() * 1e3
        );
    }
}

/// Weight bytes one decoded token reads: every tensor once, except the embedding table (one
/// row, unless it doubles as the output matrix) and routed-expert tensors (`*_exps`: the
/// `expert_used_count / expert_count` share a token routes to). KV-cache reads are left out:
/// at llama-bench's tg128 they are under 1% of the weights for these models.
fn decode_bytes(file: &gguf::GgufFile) -> u64 {
    let md = file.metadata();
    let arch = md.get_str("general.architecture").unwrap_or_default();
    let key = |k: &str| md.get_u64(&format!("{arch}.{k}"));
    let share = match (key("expert_used_count"), key("expert_count")) {
        (Some(used), Some(all)) if all > 0 => used as f64 / all as f64,
        _ => 1.0,
    };
    let tied = file.tensor("output.weight").is_none();
    file.tensors()
        .iter()
        .map(|t| {
            if t.name == "token_embd.weight" {
                if tied {
                    t.n_bytes
                } else {
                    t.n_bytes / t.dims.get(1).copied().unwrap_or(1).max(1)
                }
            } else if t.name.contains("_exps") {
                (t.n_bytes as f64 * share) as u64
            } else {
                t.n_bytes
            }
        })
        .sum()
}

/// Read bandwidth of `threads` threads summing a 2 GiB buffer (4× any L3 here), best of 3.
fn read_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 2 << 30;
    let words: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let per = words.len().div_ceil(threads.max(1));
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = words
                .chunks(per)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &w| a.wrapping_add(w))))
                .collect();
            parts.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        best = best.min(t0.elapsed().as_secs_f64());
        std::hint::black_box(total);
    }
    BYTES as f64 / best
}
