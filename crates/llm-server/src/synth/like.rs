//! `synth --like FILE`: a file with another model's layout and random values. The GPU machine
//! cannot receive the real small models (the device's carry is 64 MiB), but it can receive
//! their headers; a file written from one loads and runs as the real one does in both engines
//! — the same tensors in the same types, the same tokenizer and template — so speed
//! comparisons on it hold for the real file (the values matter to no kernel).

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use gguf::{TensorSpec, Value};

use super::fill::Init;
use super::qwen35moe::Planned;
use super::Args;

/// Bytes of a file read for its layout at most (headers with 262K-token vocabularies take
/// a few MiB).
const MAX_HEADER: u64 = 256 << 20;

pub(super) fn run(args: &Args, path: &Path) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(MAX_HEADER)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let header = gguf::parse_layout(&bytes)
        .with_context(|| format!("{}: not a GGUF layout", path.display()))?;
    let md = &header.metadata;
    let arch = md
        .get_str("general.architecture")
        .context("no general.architecture")?
        .to_string();
    let n_embd = md
        .get_u64(&format!("{arch}.embedding_length"))
        .with_context(|| format!("no {arch}.embedding_length"))?;
    let mut metadata: Vec<(String, Value)> = md
        .iter()
        .filter(|(k, _)| !k.starts_with("llm_server.synth."))
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    metadata.extend([
        ("llm_server.synth.like".into(), Value::String(name)),
        ("llm_server.synth.seed".into(), Value::U64(args.seed)),
    ]);
    let specs: Vec<TensorSpec> = header
        .tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.ty, t.dims.clone()))
        .collect();
    let filler = super::filler(args, 0.0, n_embd);
    let planned: Vec<Planned> = header
        .tensors
        .iter()
        .map(|t| Planned::new(&t.name, &t.dims, init_for(&t.name, t.dims.len())))
        .collect();
    let total = super::write(&args.output, &metadata, (&planned, &specs), &filler)?;
    eprintln!(
        "synth: wrote {} like {} ({arch}, {} tensors, {:.2} GiB of tensor data) in {:.1} s",
        args.output.display(),
        path.display(),
        specs.len(),
        total as f64 / (1u64 << 30) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How a tensor of that name is filled: embeddings and norms as in a real model (the
/// activations stay in range), routers, experts and the DeltaNet parameters as `synth`'s own
/// layouts fill them, everything else (matrices, biases) as matmul weights.
fn init_for(name: &str, n_dims: usize) -> Init {
    let leaf = name.strip_suffix(".weight").unwrap_or(name);
    match leaf {
        _ if name == "token_embd.weight" => Init::Embedding,
        _ if leaf.ends_with("norm") || leaf == "rope_freqs" => Init::Norm,
        _ if leaf.ends_with("ffn_gate_inp") => Init::Router,
        _ if leaf.ends_with("_exps") && n_dims == 3 => Init::Experts,
        _ if leaf.ends_with("ssm_conv1d") => Init::Conv,
        _ if name.ends_with("ssm_dt.bias") => Init::DtBias,
        _ if leaf.ends_with("ssm_a") => Init::SsmA,
        _ => Init::Matmul,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_filled_by_their_role() {
        assert_eq!(init_for("token_embd.weight", 2), Init::Embedding);
        assert_eq!(init_for("blk.3.attn_norm.weight", 1), Init::Norm);
        assert_eq!(init_for("blk.3.attn_q_norm.weight", 1), Init::Norm);
        assert_eq!(init_for("output_norm.weight", 1), Init::Norm);
        assert_eq!(init_for("blk.0.ffn_gate_inp.weight", 2), Init::Router);
        assert_eq!(init_for("blk.0.ffn_up_exps.weight", 3), Init::Experts);
        assert_eq!(init_for("blk.0.ssm_dt.bias", 1), Init::DtBias);
        assert_eq!(init_for("blk.0.attn_q.bias", 1), Init::Matmul);
        assert_eq!(init_for("output.weight", 2), Init::Matmul);
    }
}
