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
    /// `{arch}.pooling_type` (llama.cpp's numbering), when the file says.
    pub pooling: Option<u64>,
}

/// The model path: `-m`, else the shipped demo model, looked for where an installed binary
/// or a container keeps it: `$LLM_SERVER_DEFAULT_MODEL`, `<bin>/../share/llm-server/`,
/// next to the binary, `$XDG_DATA_HOME/llm-server/` (or `~/.local/share/llm-server/`),
/// `/usr/local/share/llm-server/`, `/usr/share/llm-server/`, then the source checkout the
/// binary was built from. The error names every place tried.
pub fn model_path(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p);
    }
    let places = default_model_places();
    if let Some(found) = places.iter().find(|p| p.is_file()) {
        eprintln!(
            "model: {} (the demo model; -m FILE for another)",
            found.display()
        );
        return Ok(found.clone());
    }
    let tried: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    anyhow::bail!(
        "no model given: pass -m FILE.gguf (the demo model {DEFAULT_MODEL} is in none of: {})",
        tried.join(", ")
    )
}

fn default_model_places() -> Vec<PathBuf> {
    let name = Path::new(DEFAULT_MODEL)
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut places = Vec::new();
    if let Some(p) = std::env::var_os("LLM_SERVER_DEFAULT_MODEL") {
        places.push(PathBuf::from(p));
    }
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        places.push(bin.join("../share/llm-server").join(&name));
        places.push(bin.join(&name));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    if let Some(d) = data {
        places.push(d.join("llm-server").join(&name));
    }
    places.push(Path::new("/usr/local/share/llm-server").join(&name));
    places.push(Path::new("/usr/share/llm-server").join(&name));
    places.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(DEFAULT_MODEL),
    );
    places
}

/// Open a GGUF file; a parse error is prefixed with the file's name (an OS error names it
/// already).
pub fn open_gguf(path: &Path) -> anyhow::Result<gguf::GgufFile> {
    gguf::GgufFile::open(path).map_err(|e| match e {
        e @ gguf::Error::Io { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(format!("cannot read {}", path.display())),
    })
}

/// The model file a command runs: mapped ([`open_gguf`]), or with `--no-mmap` read whole into
/// this process's memory (llama.cpp's meaning: the weights not in the page cache's hands).
pub fn open_model_file(path: &Path, device: &DeviceArgs) -> anyhow::Result<gguf::GgufFile> {
    if !device.no_mmap {
        return open_gguf(path);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    gguf::GgufFile::from_bytes(bytes)
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
}

/// A model without its tokenizer: what `bench` needs (llama-bench loads files whose
/// tokenizer model is `none`, and so do we).
pub struct Bare {
    pub model: Box<dyn Model>,
    pub exec: Exec,
    /// The GPU backend, when the model runs on one.
    pub gpu: Option<Arc<cuda::Cuda>>,
}

/// Open `path` for a command that feeds token ids of its own: the model, no tokenizer.
pub fn open_model(
    path: &Path,
    threads: Option<usize>,
    device: &DeviceArgs,
) -> anyhow::Result<Bare> {
    let file = open_model_file(path, device)?;
    let (model, gpu) = crate::device_args::load(path, Arc::new(file), device)?;
    let mut exec = Exec::default();
    if let Some(t) = threads {
        exec.threads = t.max(1);
    }
    Ok(Bare { model, exec, gpu })
}

/// Open `path`: map it, build the model, its tokenizer and (if the file has one) its template.
pub fn open(path: &Path, threads: Option<usize>, device: &DeviceArgs) -> anyhow::Result<Loaded> {
    let file = open_model_file(path, device)?;
    let file = Arc::new(file);
    let tokenizer = Tokenizer::from_gguf(file.metadata())
        .with_context(|| format!("{}: tokenizer", path.display()))?;
    let template = ChatTemplate::from_gguf(file.metadata())
        .with_context(|| format!("{}: chat template", path.display()))?;
    let pooling = file
        .metadata()
        .get_str("general.architecture")
        .and_then(|a| file.metadata().get_u64(&format!("{a}.pooling_type")));
    let (model, gpu) = crate::device_args::load(path, file, device)?;
    let mut exec = Exec::default();
    if let Some(t) = threads {
        exec.threads = t.max(1);
    }
    let _gpu = gpu; // the model holds the backend; run, serve and perplexity need no more
    Ok(Loaded {
        model,
        tokenizer,
        template,
        exec,
        pooling,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo model rewritten with `tokenizer.ggml.model = none` and no vocabulary (a
    /// `{arch}.vocab_size` key instead), as llama-bench accepts: `bench`'s loader takes it,
    /// the commands that need text refuse it naming the tokenizer.
    #[test]
    fn files_without_a_tokenizer_load_for_bench() {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(DEFAULT_MODEL);
        let file = gguf::GgufFile::open(&demo).expect("demo model");
        let mut md: Vec<(String, gguf::Value)> = file
            .metadata()
            .entries()
            .iter()
            .filter(|(k, _)| !k.starts_with("tokenizer."))
            .cloned()
            .collect();
        md.push((
            "tokenizer.ggml.model".into(),
            gguf::Value::String("none".into()),
        ));
        md.push(("qwen35moe.vocab_size".into(), gguf::Value::U32(6144)));
        let specs: Vec<gguf::TensorSpec> = file
            .tensors()
            .iter()
            .map(|t| gguf::TensorSpec::new(t.name.clone(), t.ty, t.dims.clone()))
            .collect();
        let path = std::env::temp_dir().join(format!("no-tokenizer-{}.gguf", std::process::id()));
        let out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut w = gguf::GgufWriter::new(out, &md, &specs).expect("header");
        for t in file.tensors() {
            w.write_data(file.tensor_data(t)).expect("data");
        }
        w.finish().expect("finish");
        let cpu = DeviceArgs {
            device: Some("cpu".into()),
            ..Default::default()
        };
        let m = open_model(&path, Some(1), &cpu).expect("bench loads it");
        let mut st = m.model.new_state(4).expect("state");
        let logits = m
            .model
            .forward(&[1, 2, 3], &mut st, engine::Logits::Last, m.exec)
            .expect("forward");
        assert_eq!(logits.len(), 6144);
        let err = open(&path, Some(1), &cpu)
            .err()
            .expect("run/serve refuse it");
        assert!(format!("{err:#}").contains("tokenizer"), "{err:#}");
        let _ = std::fs::remove_file(&path);
    }
}
