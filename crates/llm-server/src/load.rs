//! Opening a model for the commands that run one: the GGUF file, its architecture, tokenizer
//! and chat template, and the thread count.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use engine::{ChatTemplate, Exec, Model, Tokenizer};

use crate::device_args::DeviceArgs;

/// The shipped demo model, used when no `-m` is given (issue 4 trains and ships it).
pub const DEFAULT_MODEL: &str = "models/demo-moe-f16.gguf";

/// A model ready to run.
pub struct Loaded {
    pub model: Box<dyn Model>,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub exec: Exec,
    /// The GPU backend, when the model runs on one.
    pub gpu: Option<Arc<cuda::Cuda>>,
}

/// The model path: `-m`, else the shipped default (with an error naming both when absent).
pub fn model_path(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p);
    }
    let default = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(DEFAULT_MODEL);
    if default.exists() {
        return Ok(default);
    }
    anyhow::bail!(
        "no model given: pass -m FILE.gguf (the default {DEFAULT_MODEL} is not in this checkout)"
    )
}

/// Open `path`: map it, build the model, its tokenizer and (if the file has one) its template.
pub fn open(path: &Path, threads: Option<usize>, device: &DeviceArgs) -> anyhow::Result<Loaded> {
    let file =
        gguf::GgufFile::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = Arc::new(file);
    let tokenizer = Tokenizer::from_gguf(file.metadata())
        .with_context(|| format!("{}: tokenizer", path.display()))?;
    let template = ChatTemplate::from_gguf(file.metadata())
        .with_context(|| format!("{}: chat template", path.display()))?;
    let (model, gpu) = crate::device_args::load(path, file, device)?;
    let mut exec = Exec::default();
    if let Some(t) = threads {
        exec.threads = t.max(1);
    }
    Ok(Loaded {
        model,
        tokenizer,
        template,
        exec,
        gpu,
    })
}
