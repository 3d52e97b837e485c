//! `llm-server bench`: prompt-processing and generation speed on a model file, measured the way
//! llama-bench measures it (`-p 512 -n 128`: a batch of 512 prompt tokens, then 128 tokens
//! generated one at a time; random token ids; the mean of `-r` repetitions after a warm-up).
//! Prints a table like llama-bench's so the two sit side by side in BENCHMARKS.md.

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
            let t0 = Instant::now();
            m.model.forward(&prompt, &mut state, false, m.exec)?;
            if rep > 0 {
                rates.push(args.n_prompt as f64 / t0.elapsed().as_secs_f64()); // rep 0 is the warm-up
            }
        }
        row(format!("pp{}", args.n_prompt), &rates);
    }
    if args.n_gen > 0 {
        let mut rates = Vec::new();
        for rep in 0..=args.reps {
            let mut state = m.model.new_state_with(args.n_gen + 1, cache)?;
            let mut tok = token();
            let t0 = Instant::now();
            for _ in 0..args.n_gen {
                let logits = m.model.forward(&[tok], &mut state, false, m.exec)?;
                tok = engine::sampler::argmax(&logits);
            }
            if rep > 0 {
                rates.push(args.n_gen as f64 / t0.elapsed().as_secs_f64());
            }
        }
        row(format!("tg{}", args.n_gen), &rates);
    }
    Ok(())
}
