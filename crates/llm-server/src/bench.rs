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
    /// Prompt tokens (pp tests; a comma-separated list; 0 skips them).
    #[arg(
        short = 'p',
        long = "n-prompt",
        default_value = "512",
        value_delimiter = ','
    )]
    pub n_prompt: Vec<usize>,
    /// Generated tokens (tg tests; a list; 0 skips them).
    #[arg(
        short = 'n',
        long = "n-gen",
        default_value = "128",
        value_delimiter = ','
    )]
    pub n_gen: Vec<usize>,
    /// Tokens already in the context before each test (llama-bench's `-d`; a list).
    #[arg(
        short = 'd',
        long = "n-depth",
        default_value = "0",
        value_delimiter = ','
    )]
    pub depth: Vec<usize>,
    /// Prompt tokens per forward call (llama.cpp's `-ub`).
    #[arg(long = "ubatch-size", default_value_t = 512)]
    pub ubatch: usize,
    /// Repetitions.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub reps: usize,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Plan the GPU placement for a context of at least N positions (llama-bench's
    /// `-fitc/--fit-ctx`; default: the deepest test).
    #[arg(long = "fit-ctx", value_name = "N")]
    pub fit_ctx: Option<usize>,
    /// Skip the memory-bandwidth measurement after the tg test.
    #[arg(long)]
    pub no_bandwidth: bool,
    /// `--url`: benchmark a running server instead (its own options).
    #[command(flatten)]
    pub client: crate::bench_url::UrlArgs,
    #[command(flatten)]
    pub live_stats: crate::calibrate::LiveArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub device: crate::device_args::DeviceArgs,
}

/// One timed test: `pp` prompt tokens or `tg` generated ones, after `depth` tokens.
#[derive(Clone, Copy)]
enum Test {
    Pp(usize),
    Tg(usize),
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    if args.client.url.is_some() {
        return crate::bench_url::run(args.client);
    }
    let path = load::model_path(args.model.clone())?;
    let deepest = args.depth.iter().max().copied().unwrap_or(0)
        + args
            .n_prompt
            .iter()
            .chain(&args.n_gen)
            .max()
            .copied()
            .unwrap_or(0);
    args.device.needs = crate::placement::Needs {
        n_ctx: deepest.max(args.fit_ctx.unwrap_or(0)).max(1),
        cache: args.cache.config(),
        ubatch: args.ubatch.max(1),
        logit_rows: 1,
    };
    let m = load::open_model(&path, args.threads, &args.device)?;
    let live = crate::calibrate::LiveStats::start(&args.live_stats, &path, "bench");
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
        "{} on {}; KV cache K {} / V {}: {per_pos} bytes per position (all layers)",
        m.model.arch(),
        m.model.backend(),
        cache.k,
        cache.v
    );
    let size = std::fs::metadata(&path)?.len();
    let where_ = match &m.gpu {
        Some(g) => g.gpu().describe(),
        None => format!("{} threads", m.exec.threads),
    };
    println!("| model | size | backend | test | t/s |");
    println!("| --- | ---: | --- | ---: | ---: |");
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
            "| {name} | {:.2} GiB | {where_} | {test} | {mean:.2} ± {sd:.2} |",
            size as f64 / (1u64 << 30) as f64,
        );
        mean
    };
    let tests: Vec<Test> = (args
        .n_prompt
        .iter()
        .filter(|&&p| p > 0)
        .map(|&p| Test::Pp(p)))
    .chain(args.n_gen.iter().filter(|&&n| n > 0).map(|&n| Test::Tg(n)))
    .collect();
    let ub = args.ubatch.max(1);
    let mut tg_rate = None;
    let mut peak_kv = 0;
    let mut ram_side = false;
    for &depth in &args.depth {
        for &test in &tests {
            let mut rates = Vec::new();
            for rep in 0..=args.reps {
                let len = match test {
                    Test::Pp(p) => p,
                    Test::Tg(n) => n + 1,
                };
                let mut state = m.model.new_state_with(depth + len, cache)?;
                peak_kv = peak_kv.max(state.kv_bytes());
                let fill: Vec<u32> = (0..depth).map(|_| token()).collect();
                for c in fill.chunks(ub) {
                    m.model
                        .forward(c, &mut state, engine::Logits::Last, m.exec)?;
                }
                if rep == 1 {
                    engine::prof::reset(); // the warm-up packs the weights: not a stage to show
                    if let Some(g) = &m.gpu {
                        g.gpu().profile_report()?;
                        cuda::take_host_stats();
                    }
                }
                let t0 = Instant::now();
                let n = match test {
                    Test::Pp(p) => {
                        let prompt: Vec<u32> = (0..p).map(|_| token()).collect();
                        for c in prompt.chunks(ub) {
                            m.model
                                .forward(c, &mut state, engine::Logits::Last, m.exec)?;
                        }
                        p
                    }
                    Test::Tg(n) => {
                        let mut tok = token();
                        for _ in 0..n {
                            let logits = m.model.forward(
                                &[tok],
                                &mut state,
                                engine::Logits::Last,
                                m.exec,
                            )?;
                            tok = engine::sampler::argmax(&logits);
                        }
                        n
                    }
                };
                if rep > 0 {
                    rates.push(n as f64 / t0.elapsed().as_secs_f64()); // rep 0 is the warm-up
                }
            }
            let label = match test {
                Test::Pp(p) => format!("pp{p}"),
                Test::Tg(n) => format!("tg{n}"),
            };
            let label = match depth {
                0 => label,
                d => format!("{label} @ d{d}"),
            };
            let mean = row(label.clone(), &rates);
            if matches!(test, Test::Tg(_)) && depth == 0 {
                tg_rate = Some(mean);
            }
            print_profile(&label);
            if let Some(g) = &m.gpu {
                let n = match test {
                    Test::Pp(p) => p,
                    Test::Tg(n) => n,
                };
                print_kernels(&label, &g.gpu().profile_report()?, (args.reps * n) as f64);
                ram_side |= print_ram_side(
                    &label,
                    cuda::take_host_stats(),
                    (args.reps * n) as f64,
                    mean,
                );
            }
        }
    }
    if let Some(l) = &live {
        l.save()?;
    }
    if let Some(g) = &m.gpu {
        let (free, total) = g.gpu().mem_info()?;
        println!(
            "\nGPU memory in use: {:.0} MiB of {:.0} MiB (weights {:.0} MiB, largest KV cache \
             {:.0} MiB, activation pool {:.0} MiB)",
            (total - free) as f64 / 1048576.0,
            total as f64 / 1048576.0,
            g.weight_bytes() as f64 / 1048576.0,
            peak_kv as f64 / 1048576.0,
            g.pool_bytes() as f64 / 1048576.0
        );
    }
    if let (Some(mean), false) = (tg_rate, args.no_bandwidth) {
        let file = crate::load::open_gguf(&path)?;
        let bytes = decode_bytes(&file);
        let (bw, what) = match &m.gpu {
            Some(g) => (g.copy_bandwidth(1 << 30)?, "GPU copy".to_string()),
            None => (
                read_bandwidth(m.exec.threads),
                format!("memory read, {} threads", m.exec.threads),
            ),
        };
        println!(
            "\ndecode reads {:.1} MB of weights per token; bandwidth {:.1} GB/s ({what}) → \
             bound {:.1} tok/s; measured {mean:.1} ({:.0}% of the bound)",
            bytes as f64 / 1e6,
            bw / 1e9,
            bw / bytes as f64,
            100.0 * mean * bytes as f64 / bw
        );
        if ram_side {
            println!(
                "RAM read bandwidth {:.1} GB/s ({} threads): the RAM experts' part of the bound",
                read_bandwidth(m.exec.threads) / 1e9,
                m.exec.threads
            );
        }
    }
    Ok(())
}

/// GPU time by kernel (`LLM_SERVER_CUDA_PROFILE=1`; nothing when off), per token of the test.
/// Under hybrid placement, what the RAM side did per token against the step (issue 11's
/// per-token breakdown): its jobs' time (the pool's experts and the staging copies), the bytes
/// they read and the rate while busy, and the CPU's idle rest of the step.
fn print_ram_side(test: &str, s: cuda::HostStats, tokens: f64, rate: f64) -> bool {
    // A prompt batch streams its RAM experts instead; only its last layer's one row (the
    // logits row) is a job then — not a breakdown worth a line.
    if tokens == 0.0 || (s.jobs as f64) < tokens {
        return false;
    }
    let step = 1e3 / rate;
    let busy = s.busy.as_secs_f64() * 1e3 / tokens;
    println!(
        "\n{test}: RAM experts {:.1} jobs/token, {:.1} MB/token, busy {busy:.3} ms/token \
         ({:.1} GB/s while busy); step {step:.3} ms, CPU side idle {:.3} ms ({:.0}%)",
        s.jobs as f64 / tokens,
        s.bytes as f64 / tokens / 1e6,
        s.bytes as f64 / s.busy.as_secs_f64().max(1e-9) / 1e9,
        step - busy,
        100.0 * (step - busy) / step
    );
    true
}

fn print_kernels(test: &str, kernels: &[(String, f64, u64)], tokens: f64) {
    if kernels.is_empty() {
        return;
    }
    let total: f64 = kernels.iter().map(|k| k.1).sum();
    println!(
        "\nGPU kernels of {test}: {:.3} ms of kernel time per token, {:.0} launches per token",
        total / tokens,
        kernels.iter().map(|k| k.2 as f64).sum::<f64>() / tokens
    );
    let mut sorted = kernels.to_vec();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, ms, calls) in sorted.into_iter().take(40) {
        println!(
            "  {name:<28} {:>9.1} µs/token {:>5.1}%  {:>7.1} µs/launch  {calls} launches",
            1e3 * ms / tokens,
            100.0 * ms / total,
            1e3 * ms / calls as f64
        );
    }
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
    let key = |k: &str| crate::device_args::hparam(file, k);
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
pub(crate) fn read_bandwidth(threads: usize) -> f64 {
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
