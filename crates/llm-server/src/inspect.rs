//! `llm-server inspect`: what a GGUF file holds, readable by people (tables) or machines
//! (`--json`). Like gguf-py's `gguf-dump`, but grouped: architecture and hyperparameters first,
//! then the tokenizer in one paragraph, the tensor table, and totals by type and by role (routed
//! experts vs the rest — the split that decides where a MoE model's bytes can live).

use std::collections::BTreeMap;
use std::path::PathBuf;

use gguf::{Array, GgmlType, GgufFile, TensorInfo, Value};
use serde_json::{json, Map as JsonMap, Value as Json};

/// Arguments of `llm-server inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file.
    pub file: PathBuf,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Skip the per-tensor table (totals are still printed).
    #[arg(long)]
    pub no_tensors: bool,
}

/// Arrays longer than this are summarised (type, length, first elements) rather than printed.
const ARRAY_HEAD: usize = 8;

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = crate::load::open_gguf(&args.file)?;
    let report = Report::new(&file);
    if args.json {
        let doc = report.to_json(&args.file, !args.no_tensors);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        report.print_text(&args.file, !args.no_tensors);
    }
    Ok(())
}

/// What a tensor is for, from its name (llama.cpp's tensor names, `llama-arch.cpp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    RoutedExperts,
    SharedExpert,
    Router,
    DenseFfn,
    Attention,
    DeltaNet,
    Norm,
    Embedding,
    Output,
    Other,
}

impl Role {
    fn of(name: &str) -> Role {
        let base = name
            .strip_suffix(".weight")
            .or_else(|| name.strip_suffix(".bias"));
        let base = base.unwrap_or(name);
        let leaf = base.rsplit('.').next().unwrap_or(base);
        if leaf.ends_with("_exps") || leaf.ends_with("_chexps") {
            Role::RoutedExperts
        } else if leaf.ends_with("_shexp") {
            Role::SharedExpert
        } else if leaf == "ffn_gate_inp" || leaf == "exp_probs_b" {
            Role::Router
        } else if leaf.contains("norm") {
            Role::Norm
        } else if leaf.starts_with("ssm_") {
            Role::DeltaNet
        } else if leaf.starts_with("attn_") {
            Role::Attention
        } else if leaf.starts_with("ffn_") {
            Role::DenseFfn
        } else if leaf == "token_embd" || leaf == "per_layer_token_embd" {
            Role::Embedding
        } else if leaf == "output" {
            Role::Output
        } else {
            Role::Other
        }
    }

    fn label(self) -> &'static str {
        match self {
            Role::RoutedExperts => "routed experts",
            Role::SharedExpert => "shared experts",
            Role::Router => "routers",
            Role::DenseFfn => "dense FFN",
            Role::Attention => "attention",
            Role::DeltaNet => "DeltaNet / SSM",
            Role::Norm => "norms",
            Role::Embedding => "embeddings",
            Role::Output => "output head",
            Role::Other => "other",
        }
    }
}

/// Totals for one group of tensors.
#[derive(Default, Clone, Copy)]
struct Total {
    count: u64,
    elements: u64,
    bytes: u64,
}

impl Total {
    fn add(&mut self, t: &TensorInfo) {
        self.count += 1;
        self.elements += t.n_elements;
        self.bytes += t.n_bytes;
    }
}

struct Report<'a> {
    file: &'a GgufFile,
    arch: Option<&'a str>,
    roles: Vec<Role>,
    by_type: BTreeMap<GgmlType, Total>,
    by_role: BTreeMap<Role, Total>,
    all: Total,
}

impl<'a> Report<'a> {
    fn new(file: &'a GgufFile) -> Report<'a> {
        let arch = file.metadata().get_str("general.architecture");
        // `attn_qkv`/`attn_gate` are attention tensors in most architectures, but in
        // qwen35/qwen3next files they are DeltaNet's input projections (spec §2.2).
        let recurrent_qkv = matches!(arch, Some(a) if a.starts_with("qwen35") || a == "qwen3next");
        let roles: Vec<Role> = file
            .tensors()
            .iter()
            .map(|t| match Role::of(&t.name) {
                Role::Attention if recurrent_qkv && t.name.contains(".attn_qkv.") => Role::DeltaNet,
                Role::Attention if recurrent_qkv && t.name.contains(".attn_gate.") => {
                    Role::DeltaNet
                }
                r => r,
            })
            .collect();
        let mut report = Report {
            file,
            arch,
            roles,
            by_type: BTreeMap::new(),
            by_role: BTreeMap::new(),
            all: Total::default(),
        };
        for (t, role) in file.tensors().iter().zip(&report.roles) {
            report.by_type.entry(t.ty).or_default().add(t);
            report.by_role.entry(*role).or_default().add(t);
            report.all.add(t);
        }
        report
    }

    fn experts(&self) -> Total {
        self.by_role
            .get(&Role::RoutedExperts)
            .copied()
            .unwrap_or_default()
    }

    fn print_text(&self, path: &std::path::Path, with_tensors: bool) {
        let f = self.file;
        let md = f.metadata();
        println!("{}", path.display());
        println!(
            "  GGUF v{}, {} bytes, {} metadata keys, {} tensors, alignment {}, data at byte {}",
            f.version(),
            f.file_size(),
            md.len(),
            f.tensors().len(),
            f.alignment(),
            f.data_offset()
        );
        println!();
        println!("architecture: {}", self.arch.unwrap_or("(none)"));
        for key in [
            "general.name",
            "general.size_label",
            "general.quantization_version",
        ] {
            if let Some(v) = md.get(key) {
                println!("  {key:<40} {}", value_text(v));
            }
        }
        if let Some(ft) = md.get_u64("general.file_type") {
            println!(
                "  {:<40} {ft} ({})",
                "general.file_type",
                file_type_name(ft)
            );
        }
        self.print_hparams();
        self.print_tokenizer();
        self.print_other_metadata();
        if with_tensors {
            self.print_tensor_table();
        }
        self.print_totals();
    }

    fn print_hparams(&self) {
        let Some(arch) = self.arch else { return };
        let prefix = format!("{arch}.");
        println!();
        println!("hyperparameters ({prefix}*):");
        for (key, v) in self.file.metadata().iter() {
            if let Some(short) = key.strip_prefix(&prefix) {
                println!("  {short:<40} {}", value_text(v));
            }
        }
    }

    fn print_tokenizer(&self) {
        let md = self.file.metadata();
        if !md.iter().any(|(k, _)| k.starts_with("tokenizer.")) {
            return;
        }
        println!();
        println!("tokenizer:");
        let s = |k: &str| md.get_str(k).unwrap_or("-").to_string();
        let n = |k: &str| md.get_array(k).map_or(0, |a| a.len());
        println!(
            "  model {}, pre {}, {} tokens, {} merges",
            s("tokenizer.ggml.model"),
            s("tokenizer.ggml.pre"),
            n("tokenizer.ggml.tokens"),
            n("tokenizer.ggml.merges")
        );
        let mut ids = Vec::new();
        for (label, key) in SPECIAL_IDS {
            if let Some(id) = md.get_u64(key) {
                ids.push(format!("{label} {id}{}", token_text(md, id)));
            }
        }
        if !ids.is_empty() {
            println!("  {}", ids.join(", "));
        }
        for (key, v) in md.iter() {
            let shown = key.starts_with("tokenizer.ggml.")
                && !matches!(v, Value::Array(_))
                && !SPECIAL_IDS.iter().any(|(_, k)| *k == key)
                && key != "tokenizer.ggml.model"
                && key != "tokenizer.ggml.pre";
            if shown {
                println!("  {:<40} {}", key, value_text(v));
            }
        }
        if let Some(t) = md.get_str("tokenizer.chat_template") {
            println!(
                "  chat template: {} chars, {} lines",
                t.len(),
                t.lines().count()
            );
        }
    }

    fn print_other_metadata(&self) {
        let arch_prefix = self.arch.map(|a| format!("{a}."));
        let shown_elsewhere = |k: &str| {
            k.starts_with("tokenizer.")
                || arch_prefix.as_deref().is_some_and(|p| k.starts_with(p))
                || matches!(
                    k,
                    "general.architecture"
                        | "general.name"
                        | "general.size_label"
                        | "general.quantization_version"
                        | "general.file_type"
                )
        };
        let rest: Vec<_> = self
            .file
            .metadata()
            .iter()
            .filter(|(k, _)| !shown_elsewhere(k))
            .collect();
        if rest.is_empty() {
            return;
        }
        println!();
        println!("other metadata:");
        for (key, v) in rest {
            println!("  {key:<40} {}", value_text(v));
        }
    }

    fn print_tensor_table(&self) {
        let tensors = self.file.tensors();
        let w = tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        println!();
        println!("tensors:");
        println!(
            "  {:<w$}  {:<7}  {:<24}  {:>14}  {:>14}  role",
            "name", "type", "shape", "bytes", "offset"
        );
        for (t, role) in tensors.iter().zip(&self.roles) {
            println!(
                "  {:<w$}  {:<7}  {:<24}  {:>14}  {:>14}  {}",
                t.name,
                t.ty.name(),
                shape_text(&t.dims),
                t.n_bytes,
                self.file.data_offset() + t.offset,
                role.label()
            );
        }
    }

    fn print_totals(&self) {
        let all = self.all;
        let row = |label: &str, t: &Total| {
            println!(
                "  {:<16} {:>6} {:>16} {:>16} {:>10} {:>6.1}%",
                label,
                t.count,
                t.elements,
                t.bytes,
                human_bytes(t.bytes),
                percent(t.bytes, all.bytes)
            );
        };
        let header = |title: &str| {
            println!();
            println!("{title}:");
            println!(
                "  {:<16} {:>6} {:>16} {:>16} {:>10} {:>7}",
                "", "count", "elements", "bytes", "", "share"
            );
        };
        header("totals by type");
        for (ty, t) in &self.by_type {
            row(ty.name(), t);
        }
        header("totals by role");
        for (role, t) in &self.by_role {
            row(role.label(), t);
        }
        let experts = self.experts();
        let rest = Total {
            count: all.count - experts.count,
            elements: all.elements - experts.elements,
            bytes: all.bytes - experts.bytes,
        };
        header("experts vs the rest");
        row("routed experts", &experts);
        row("everything else", &rest);
        row("total", &all);
        if all.elements > 0 {
            println!(
                "  {:.3} bits per weight",
                all.bytes as f64 * 8.0 / all.elements as f64
            );
        }
    }

    fn to_json(&self, path: &std::path::Path, with_tensors: bool) -> Json {
        let f = self.file;
        let mut metadata = JsonMap::new();
        for (k, v) in f.metadata().iter() {
            metadata.insert(k.to_string(), value_json(v));
        }
        let total = |t: &Total| json!({"count": t.count, "elements": t.elements, "bytes": t.bytes});
        let by_type: JsonMap<String, Json> = self
            .by_type
            .iter()
            .map(|(ty, t)| (ty.name().to_string(), total(t)))
            .collect();
        let by_role: JsonMap<String, Json> = self
            .by_role
            .iter()
            .map(|(r, t)| (r.label().to_string(), total(t)))
            .collect();
        let mut doc = json!({
            "file": path.display().to_string(),
            "version": f.version(),
            "file_size": f.file_size(),
            "alignment": f.alignment(),
            "data_offset": f.data_offset(),
            "architecture": self.arch,
            "metadata": metadata,
            "totals": {
                "all": total(&self.all),
                "by_type": by_type,
                "by_role": by_role,
                "routed_experts": total(&self.experts()),
            },
        });
        if with_tensors {
            let tensors: Vec<Json> = f
                .tensors()
                .iter()
                .zip(&self.roles)
                .map(|(t, role)| {
                    json!({
                        "name": t.name,
                        "type": t.ty.name(),
                        "shape": t.dims,
                        "elements": t.n_elements,
                        "bytes": t.n_bytes,
                        "offset": f.data_offset() + t.offset,
                        "role": role.label(),
                    })
                })
                .collect();
            doc["tensors"] = Json::Array(tensors);
        }
        doc
    }
}

const SPECIAL_IDS: [(&str, &str); 6] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("eot", "tokenizer.ggml.eot_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
];

/// ` "<|im_end|>"` for a token id that is in the vocabulary, or nothing.
fn token_text(md: &gguf::Metadata, id: u64) -> String {
    match md.get_array("tokenizer.ggml.tokens") {
        Some(Array::String(tokens)) => tokens
            .get(id as usize)
            .map(|t| format!(" {t:?}"))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// llama.cpp's `enum llama_ftype` names (`include/llama.h`), for `general.file_type`.
fn file_type_name(ft: u64) -> &'static str {
    const NAMES: [(u64, &str); 31] = [
        (0, "ALL_F32"),
        (1, "MOSTLY_F16"),
        (2, "MOSTLY_Q4_0"),
        (3, "MOSTLY_Q4_1"),
        (7, "MOSTLY_Q8_0"),
        (8, "MOSTLY_Q5_0"),
        (9, "MOSTLY_Q5_1"),
        (10, "MOSTLY_Q2_K"),
        (11, "MOSTLY_Q3_K_S"),
        (12, "MOSTLY_Q3_K_M"),
        (13, "MOSTLY_Q3_K_L"),
        (14, "MOSTLY_Q4_K_S"),
        (15, "MOSTLY_Q4_K_M"),
        (16, "MOSTLY_Q5_K_S"),
        (17, "MOSTLY_Q5_K_M"),
        (18, "MOSTLY_Q6_K"),
        (19, "MOSTLY_IQ2_XXS"),
        (20, "MOSTLY_IQ2_XS"),
        (21, "MOSTLY_Q2_K_S"),
        (22, "MOSTLY_IQ3_XS"),
        (23, "MOSTLY_IQ3_XXS"),
        (24, "MOSTLY_IQ1_S"),
        (25, "MOSTLY_IQ4_NL"),
        (26, "MOSTLY_IQ3_S"),
        (27, "MOSTLY_IQ3_M"),
        (28, "MOSTLY_IQ2_S"),
        (29, "MOSTLY_IQ2_M"),
        (30, "MOSTLY_IQ4_XS"),
        (31, "MOSTLY_IQ1_M"),
        (32, "MOSTLY_BF16"),
        (38, "MOSTLY_MXFP4_MOE"),
    ];
    NAMES
        .iter()
        .find(|(id, _)| *id == ft)
        .map_or("unknown", |(_, n)| n)
}

fn shape_text(dims: &[u64]) -> String {
    let parts: Vec<String> = dims.iter().map(u64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// One line for a metadata value; long strings and arrays are cut to a readable summary.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 80 || s.contains('\n') => {
            let head: String = s.chars().take(60).collect();
            format!("{:?}… ({} chars)", head, s.len())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => array_text(a),
        // Rust's f32 Display is the shortest text that reads back the same f32 (1e-6 → 0.000001).
        Value::F32(x) => x.to_string(),
        other => scalar_json(other).to_string(),
    }
}

fn array_text(a: &Array) -> String {
    let items = array_items(a);
    let head: Vec<String> = items.iter().take(ARRAY_HEAD).map(Json::to_string).collect();
    let more = if a.len() > ARRAY_HEAD { ", …" } else { "" };
    format!(
        "[{}; {}] [{}{}]",
        a.elem_type().name(),
        a.len(),
        head.join(", "),
        more
    )
}

/// The elements of an array as JSON values (nested arrays become nested JSON arrays).
fn array_items(a: &Array) -> Vec<Json> {
    fn all<T: Clone + Into<Json>>(v: &[T]) -> Vec<Json> {
        v.iter().cloned().map(Into::into).collect()
    }
    match a {
        Array::U8(v) => all(v),
        Array::I8(v) => all(v),
        Array::U16(v) => all(v),
        Array::I16(v) => all(v),
        Array::U32(v) => all(v),
        Array::I32(v) => all(v),
        Array::U64(v) => all(v),
        Array::I64(v) => all(v),
        Array::F32(v) => v.iter().map(|x| float_json(f64::from(*x))).collect(),
        Array::F64(v) => v.iter().map(|x| float_json(*x)).collect(),
        Array::Bool(v) => all(v),
        Array::String(v) => all(v),
        Array::Array(v) => v
            .iter()
            .map(|inner| Json::Array(array_items(inner)))
            .collect(),
    }
}

/// JSON has no NaN or infinity: those become strings.
fn float_json(x: f64) -> Json {
    serde_json::Number::from_f64(x).map_or_else(|| Json::String(x.to_string()), Json::Number)
}

fn scalar_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => float_json(f64::from(*x)),
        Value::F64(x) => float_json(*x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => Json::Array(array_items(a)),
    }
}

/// Metadata for `--json`: scalars as they are; arrays longer than 64 elements as a summary
/// (`{"type", "len", "head"}`) so a 248K-token vocabulary doesn't drown the document.
fn value_json(v: &Value) -> Json {
    match v {
        Value::Array(a) if a.len() > 64 => json!({
            "type": a.elem_type().name(),
            "len": a.len(),
            "head": array_items(a).into_iter().take(ARRAY_HEAD).collect::<Vec<_>>(),
        }),
        other => scalar_json(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_from_names() {
        assert_eq!(Role::of("blk.3.ffn_gate_exps.weight"), Role::RoutedExperts);
        assert_eq!(Role::of("blk.3.ffn_down_shexp.weight"), Role::SharedExpert);
        assert_eq!(
            Role::of("blk.3.ffn_gate_inp_shexp.weight"),
            Role::SharedExpert
        );
        assert_eq!(Role::of("blk.3.ffn_gate_inp.weight"), Role::Router);
        assert_eq!(Role::of("blk.3.attn_q_norm.weight"), Role::Norm);
        assert_eq!(Role::of("blk.3.ssm_a"), Role::DeltaNet);
        assert_eq!(Role::of("blk.0.attn_k.weight"), Role::Attention);
        assert_eq!(Role::of("blk.0.ffn_up.weight"), Role::DenseFfn);
        assert_eq!(Role::of("token_embd.weight"), Role::Embedding);
        assert_eq!(Role::of("output.weight"), Role::Output);
        assert_eq!(Role::of("rope_freqs.weight"), Role::Other);
    }

    #[test]
    fn helpers() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.00 MiB");
        assert_eq!(file_type_name(15), "MOSTLY_Q4_K_M");
        assert_eq!(shape_text(&[2048, 512, 256]), "[2048, 512, 256]");
        assert_eq!(float_json(f64::NAN), Json::String("NaN".into()));
    }
}
