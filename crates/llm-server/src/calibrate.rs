//! `llm-server calibrate` and the expert-stats file (issue 11 req. 2): how often a text makes
//! the router choose each expert of each layer, for `--expert-stats` (the placement planner
//! puts the most used experts on the GPU).
//!
//! The file is JSON, `"format": "llm-server expert-stats"`, `"version": 1`:
//!
//! ```json
//! {"format": "llm-server expert-stats", "version": 1,
//!  "model": {"name": "…gguf", "arch": "qwen35moe", "fingerprint": "fnv1a64:…",
//!            "n_expert": 256, "n_expert_used": 8, "layers": 40},
//!  "gathered": {"by": "calibrate", "engine": "cpu", "text": "wiki.test.raw", "tokens": 4096,
//!               "ctx": 512, "date": "2026-12-02T…Z", "version": "0.1.0"},
//!  "counts": {"0": [12, 0, 31, …], …}}
//! ```
//!
//! `counts[layer][expert]` is the number of (token, slot) choices of that expert; each layer's
//! counts sum to tokens × n_expert_used. `fingerprint` hashes the file's tensor table and its
//! first router matrix, so a stats file made for another model (or another quantization of
//! it) is refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use engine::Logits;
use gguf::GgufFile;
use serde_json::{json, Value};

use crate::device_args::{hparam, DeviceArgs};
use crate::load;

/// `llm-server calibrate` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model file (GGUF).
    #[arg(short, long)]
    pub model: Option<PathBuf>,
    /// Where to write the stats (JSON).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[command(flatten)]
    pub text: TextArgs,
}

/// The text a command runs through models in chunks (`calibrate`, `quality`).
#[derive(clap::Args, Debug)]
pub struct TextArgs {
    /// The text.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Tokens a chunk (each chunk is a fresh sequence).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub ctx_size: usize,
    /// At most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Worker threads.
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
}

/// The stats format's name and version.
pub const FORMAT: &str = "llm-server expert-stats";
pub const VERSION: u64 = 1;

/// FNV-1a over the tensor table (names, types, shapes) and the first router matrix's bytes.
pub fn fingerprint(file: &GgufFile) -> String {
    let mut h = crate::fnv::Fnv::default();
    for t in file.tensors() {
        h.eat(t.name.as_bytes()).eat(&(t.ty as u32).to_le_bytes());
        for d in &t.dims {
            h.eat(&d.to_le_bytes());
        }
    }
    if let Some(r) = file
        .tensors()
        .iter()
        .find(|t| t.name.ends_with(".ffn_gate_inp.weight"))
    {
        h.eat(file.tensor_data(r));
    }
    format!("fnv1a64:{:016x}", h.get())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = load::model_path(args.model.clone())?;
    let text = std::fs::read_to_string(&args.text.file)
        .with_context(|| format!("cannot read {}", args.text.file.display()))?;
    // The CPU engine routes as the GPU does; it is where the counting hook lives.
    let cpu = DeviceArgs {
        device: Some("cpu".into()),
        ..Default::default()
    };
    let file = load::open_gguf(&path)?;
    if hparam(&file, "expert_count").unwrap_or(0) == 0 {
        bail!(
            "{}: not a mixture-of-experts model ({})",
            path.display(),
            file.metadata()
                .get_str("general.architecture")
                .unwrap_or_default()
        );
    }
    let m = load::open(&path, args.text.threads, &cpu)?;
    let n_ctx = args.text.ctx_size.max(2);
    let tokens = m.tokenizer.encode(&text, true, false);
    let n_chunk = (tokens.len() / n_ctx).min(args.text.chunks.unwrap_or(usize::MAX));
    if n_chunk == 0 {
        bail!(
            "{} tokenizes to {} tokens, less than one chunk of {n_ctx}",
            args.text.file.display(),
            tokens.len()
        );
    }
    engine::routing::start();
    let t0 = std::time::Instant::now();
    for (i, chunk) in tokens.chunks_exact(n_ctx).take(n_chunk).enumerate() {
        let mut st = m.model.new_state(n_ctx)?;
        // Hidden: every row through every layer (Last would route only the last token in the
        // last layer), and no output matrix.
        m.model.forward(chunk, &mut st, Logits::Hidden, m.exec)?;
        eprint!("\rcalibrate: chunk {}/{n_chunk}", i + 1);
    }
    eprintln!();
    let counts = engine::routing::take();
    let gathered = json!({
        "by": "calibrate",
        "engine": "cpu",
        "text": file_name(&args.text.file),
        "tokens": n_chunk * n_ctx,
        "ctx": args.text.ctx_size,
    });
    write(&args.output, &path, &file, gathered, &counts)?;
    eprintln!(
        "calibrate: {} tokens, {} layers, {:.1} s → {}",
        n_chunk * n_ctx,
        counts.len(),
        t0.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Write the stats file for `model` (`file`, its GGUF) to `out`: the counts and how they were
/// `gathered` (the time and our version added).
pub fn write(
    out: &Path,
    model: &Path,
    file: &GgufFile,
    mut gathered: Value,
    counts: &BTreeMap<usize, Vec<u64>>,
) -> anyhow::Result<()> {
    let arch = file
        .metadata()
        .get_str("general.architecture")
        .unwrap_or_default();
    let u = |k: &str| hparam(file, k).unwrap_or(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    gathered["unix_time"] = json!(secs);
    gathered["version"] = json!(env!("CARGO_PKG_VERSION"));
    let v = json!({
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "name": file_name(model),
            "arch": arch,
            "fingerprint": fingerprint(file),
            "n_expert": u("expert_count"),
            "n_expert_used": u("expert_used_count"),
            "layers": counts.len(),
        },
        "gathered": gathered,
        "counts": counts.iter().map(|(l, c)| (l.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
    });
    // Whole or not at all: a reader never sees half a file.
    let tmp = out.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&v)? + "\n")
        .and_then(|()| std::fs::rename(&tmp, out))
        .with_context(|| format!("cannot write {}", out.display()))
}

/// `--expert-stats-out FILE` of `serve` and `bench`: routing counts of live traffic (the CPU
/// engine's MoE, or under hybrid placement the decode steps' hand-offs), written by
/// [`LiveStats::save`].
#[derive(clap::Args, Debug, Default, Clone)]
pub struct LiveArgs {
    /// Count how often each layer's router picks each expert in what this command runs, and
    /// write it as an expert-stats file (the format of `calibrate`, for `--expert-stats`). On
    /// the GPU the counts come from decode steps with experts in RAM (their choices cross to
    /// the host); a model wholly on the GPU needs no placement statistics.
    #[arg(long = "expert-stats-out", value_name = "FILE")]
    pub expert_stats_out: Option<PathBuf>,
}

/// Live routing statistics being gathered.
#[derive(Debug)]
pub struct LiveStats {
    out: PathBuf,
    model: PathBuf,
    by: &'static str,
}

impl LiveStats {
    /// Start counting for `model` when `args` asks for a file (`by`: the command).
    pub fn start(args: &LiveArgs, model: &Path, by: &'static str) -> Option<LiveStats> {
        let out = args.expert_stats_out.clone()?;
        engine::routing::start();
        Some(LiveStats {
            out,
            model: model.to_path_buf(),
            by,
        })
    }

    /// Write what was counted so far (counting goes on).
    pub fn save(&self) -> anyhow::Result<()> {
        let file = crate::load::open_gguf(&self.model)?;
        let mut counts = engine::routing::snapshot();
        // Layers nothing was counted for (wholly on the GPU) as zeros: uniform to the planner.
        let n_expert = hparam(&file, "expert_count").unwrap_or(0) as usize;
        for t in file.tensors() {
            let layer = t
                .name
                .strip_prefix("blk.")
                .and_then(|r| r.strip_suffix(".ffn_gate_exps.weight"))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(l) = layer {
                counts.entry(l).or_insert_with(|| vec![0; n_expert]);
            }
        }
        let used = hparam(&file, "expert_used_count").unwrap_or(1).max(1);
        let tokens = counts
            .values()
            .map(|c| c.iter().sum::<u64>() / used)
            .max()
            .unwrap_or(0);
        let gathered = json!({"by": self.by, "engine": "live", "tokens": tokens});
        write(&self.out, &self.model, &file, gathered, &counts)
    }
}

/// Read `path` as stats for `file`: per layer, per expert, its count. Errors name what does
/// not match.
pub fn read(path: &Path, file: &GgufFile) -> anyhow::Result<BTreeMap<usize, Vec<u64>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --expert-stats {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("--expert-stats {}: not JSON", path.display()))?;
    let what = |m: &str| anyhow::anyhow!("--expert-stats {}: {m}", path.display());
    if v["format"] != FORMAT {
        return Err(what(&format!(
            "not an expert-stats file (\"format\" is not {FORMAT:?})"
        )));
    }
    if v["version"].as_u64() != Some(VERSION) {
        return Err(what(&format!(
            "version {} (this build reads {VERSION})",
            v["version"]
        )));
    }
    let fp = fingerprint(file);
    if v["model"]["fingerprint"].as_str() != Some(&fp) {
        return Err(what(&format!(
            "made for another model ({} {}, this one is {fp}): run `llm-server calibrate` on \
             this file",
            v["model"]["name"], v["model"]["fingerprint"]
        )));
    }
    let mut out = BTreeMap::new();
    let Some(counts) = v["counts"].as_object() else {
        return Err(what("no \"counts\" object"));
    };
    for (l, c) in counts {
        let layer: usize = l
            .parse()
            .map_err(|_| what(&format!("layer {l:?} is not a number")))?;
        let row: Option<Vec<u64>> = c
            .as_array()
            .map(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
            .unwrap_or(None);
        let row = row.ok_or_else(|| what(&format!("layer {l}: counts must be whole numbers")))?;
        out.insert(layer, row);
    }
    Ok(out)
}
