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
    let out = stats_json(&path, &file, &args, n_chunk * n_ctx, &counts);
    std::fs::write(&args.output, serde_json::to_string_pretty(&out)? + "\n")
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "calibrate: {} tokens, {} layers, {:.1} s → {}",
        n_chunk * n_ctx,
        counts.len(),
        t0.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

fn stats_json(
    path: &Path,
    file: &GgufFile,
    args: &Args,
    tokens: usize,
    counts: &BTreeMap<usize, Vec<u64>>,
) -> Value {
    let arch = file
        .metadata()
        .get_str("general.architecture")
        .unwrap_or_default();
    let u = |k: &str| hparam(file, k).unwrap_or(0);
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "format": FORMAT,
        "version": VERSION,
        "model": {
            "name": name(path),
            "arch": arch,
            "fingerprint": fingerprint(file),
            "n_expert": u("expert_count"),
            "n_expert_used": u("expert_used_count"),
            "layers": counts.len(),
        },
        "gathered": {
            "by": "calibrate",
            "engine": "cpu",
            "text": name(&args.text.file),
            "tokens": tokens,
            "ctx": args.text.ctx_size,
            "unix_time": secs,
            "version": env!("CARGO_PKG_VERSION"),
        },
        "counts": counts.iter().map(|(l, c)| (l.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
    })
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
