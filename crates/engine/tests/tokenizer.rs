//! Token ids of the real test vocabularies against llama.cpp's, from the goldens that
//! `tools/tokenizer-golden/golden.py` wrote (tests/golden/tokenizer/manifest.json), plus
//! detokenization round trips and a 1 MB encode timing (printed, not asserted).
//!
//! Models come from `$LLM_SERVER_MODELS` (scripts/fetch-models.py --print-env) and the Qwen3.5
//! vocabulary from `$LLM_SERVER_QWEN35_GGUF` (any `llm-server synth` qwen35moe file); a test whose
//! file is not given prints why and passes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use engine::Tokenizer;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test vocabulary a GGUF holds, named as golden.py names it.
fn vocab_name(md: &gguf::Metadata) -> Option<&'static str> {
    let model = md.get_str("tokenizer.ggml.model")?;
    let pre = md.get_str("tokenizer.ggml.pre").unwrap_or("");
    match (model, pre) {
        ("gpt2", "smollm") => Some("smollm2"),
        ("llama", "default") => Some("gemma3"),
        ("gpt2", "qwen2") => Some("qwen2"),
        ("gpt2", "qwen35") => Some("qwen35"),
        _ => None,
    }
}

/// The tokenizer of the model file holding vocabulary `name`, or why there is none.
/// `smollm2-pre-<pre>` is SmolLM2's vocabulary with `tokenizer.ggml.pre = <pre>`, as golden.py
/// derives it, to check pre-tokenizers no test model uses.
fn load(name: &str) -> Result<Tokenizer, String> {
    let (base, pre) = match name.split_once("-pre-") {
        Some((base, pre)) => (base, Some(pre)),
        None => (name, None),
    };
    let mut paths: Vec<PathBuf> = std::env::var_os("LLM_SERVER_MODELS")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    paths.extend(std::env::var_os("LLM_SERVER_QWEN35_GGUF").map(PathBuf::from));
    for path in paths {
        let file = gguf::GgufFile::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if vocab_name(file.metadata()) != Some(base) {
            continue;
        }
        let md = match pre {
            None => file.metadata().clone(),
            Some(pre) => with_pre(file.metadata(), pre),
        };
        return Tokenizer::from_gguf(&md).map_err(|e| format!("{}: {e}", path.display()));
    }
    Err(format!(
        "no model with the {base} vocabulary in $LLM_SERVER_MODELS / $LLM_SERVER_QWEN35_GGUF \
         (run `eval \"$(python3 scripts/fetch-models.py --print-env)\"`; for qwen35, \
         `llm-server synth --preset tiny -o F.gguf` and LLM_SERVER_QWEN35_GGUF=F.gguf)"
    ))
}

/// `md` with `tokenizer.ggml.pre` replaced.
fn with_pre(md: &gguf::Metadata, pre: &str) -> gguf::Metadata {
    let mut out = gguf::Metadata::new();
    for (key, value) in md.entries() {
        let value = if key == "tokenizer.ggml.pre" {
            gguf::Value::String(pre.to_string())
        } else {
            value.clone()
        };
        assert!(out.insert(key.clone(), value).is_ok());
    }
    out
}

fn read_ids(path: &Path) -> Vec<u32> {
    let mut raw = Vec::new();
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut raw)
        .expect("gzip");
    raw.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Describes the first difference between two id lists, with the texts around it.
fn first_difference(tok: &Tokenizer, ours: &[u32], theirs: &[u32]) -> Option<String> {
    let at = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .or_else(|| (ours.len() != theirs.len()).then(|| ours.len().min(theirs.len())))?;
    let show = |ids: &[u32]| {
        let lo = at.saturating_sub(3);
        ids[lo.min(ids.len())..(at + 5).min(ids.len())]
            .iter()
            .map(|&id| format!("{id}:{:?}", String::from_utf8_lossy(tok.token_bytes(id))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(format!(
        "first difference at id {at}:\n  ours:      {}\n  llama.cpp: {}",
        show(ours),
        show(theirs)
    ))
}

/// Compares every golden of vocabulary `name`; returns the number of ids compared.
fn check_goldens(name: &str, tok: &Tokenizer) -> usize {
    let golden = root().join("tests/golden/tokenizer");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(golden.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    let mut compared = 0;
    let entries = manifest["entries"].as_array().expect("entries");
    for e in entries.iter().filter(|e| e["vocab"] == name) {
        let text = std::fs::read_to_string(root().join(e["text"].as_str().expect("text")))
            .expect("text file");
        let (add, parse) = (
            e["add_special"].as_bool().expect("bool"),
            e["parse_special"].as_bool().expect("bool"),
        );
        let theirs = read_ids(&golden.join(e["ids"].as_str().expect("ids")));
        let ours = tok.encode(&text, add, parse);
        if let Some(diff) = first_difference(tok, &ours, &theirs) {
            let wrong = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
            panic!("{name} {} add_special={add} parse_special={parse}: {wrong} of {} ids differ, lengths {} vs {}; {diff}",
                e["text"], theirs.len(), ours.len(), theirs.len());
        }
        if let Some(detok) = e["detok"].as_str() {
            let expected = std::fs::read(golden.join(detok)).expect("detok");
            assert_eq!(
                tok.decode(&theirs),
                String::from_utf8_lossy(&expected),
                "{name}: decode differs from llama_detokenize"
            );
        }
        compared += theirs.len();
        println!(
            "{name}: {} add_special={add} parse_special={parse}: {} ids identical",
            e["text"],
            theirs.len()
        );
    }
    assert!(compared > 0, "no goldens for {name}");
    compared
}

/// `decode(encode(x)) == x` on both test texts, with and without parse_special.
fn check_round_trips(name: &str, tok: &Tokenizer) {
    for rel in [
        "tests/data/tokenizer/mixed.txt",
        "tests/data/wikitext-2-raw/wiki.test.raw",
    ] {
        let text = std::fs::read_to_string(root().join(rel)).expect("text");
        for parse in [false, true] {
            let decoded = tok.decode(&tok.encode(&text, false, parse));
            assert!(
                decoded == text,
                "{name}: {rel} parse_special={parse} does not round-trip"
            );
        }
    }
    // Streaming: the bytes of every token, concatenated, are the text.
    let text =
        std::fs::read_to_string(root().join("tests/data/tokenizer/mixed.txt")).expect("text");
    let bytes: Vec<u8> = tok
        .encode(&text, false, false)
        .iter()
        .flat_map(|&id| tok.token_bytes(id).to_vec())
        .collect();
    assert_eq!(String::from_utf8_lossy(&bytes), text);
}

/// Prints how long encoding 1 MB of WikiText takes (the timing is reported, never asserted).
fn print_timing(name: &str, tok: &Tokenizer) {
    let text = std::fs::read_to_string(root().join("tests/data/wikitext-2-raw/wiki.test.raw"))
        .expect("text");
    let mut end = 1 << 20;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let start = Instant::now();
    let ids = tok.encode(&text[..end], true, false);
    let took = start.elapsed();
    println!(
        "{name}: encoded {end} bytes into {} ids in {:.1} ms",
        ids.len(),
        took.as_secs_f64() * 1e3
    );
}

fn check(name: &str) {
    let tok = match load(name) {
        Ok(tok) => tok,
        Err(why) => {
            println!("SKIPPED {name}: {why}");
            return;
        }
    };
    let n = check_goldens(name, &tok);
    check_round_trips(name, &tok);
    print_timing(name, &tok);
    println!("{name}: {n} ids identical to llama.cpp b11549");
}

#[test]
fn smollm2_matches_llama_cpp() {
    check("smollm2");
}

#[test]
fn gemma3_matches_llama_cpp() {
    check("gemma3");
}

#[test]
fn qwen2_matches_llama_cpp() {
    check("qwen2");
}

#[test]
fn qwen35_matches_llama_cpp() {
    check("qwen35");
}

#[test]
fn llama_bpe_pre_tokenizer_matches_llama_cpp() {
    check("smollm2-pre-llama-bpe");
}

#[test]
fn default_pre_tokenizer_matches_llama_cpp() {
    check("smollm2-pre-default");
}

#[test]
fn gpt2_pre_tokenizer_matches_llama_cpp() {
    check("smollm2-pre-gpt-2");
}

#[test]
fn special_ids_and_eog_follow_llama_cpp() {
    if let Ok(tok) = load("qwen2") {
        let im_end = tok.token_id("<|im_end|>").expect("<|im_end|>");
        assert!(tok.is_eog(im_end) && tok.is_eog(tok.token_id("<|endoftext|>").expect("eot")));
        assert!(!tok.is_eog(tok.token_id("<|im_start|>").expect("<|im_start|>")));
        assert_eq!(tok.eos(), Some(im_end));
    }
    if let Ok(tok) = load("gemma3") {
        assert_eq!((tok.bos(), tok.eos()), (Some(2), Some(1)));
        assert!(tok.is_eog(tok.token_id("<end_of_turn>").expect("eot")) && tok.is_eog(1));
        assert_eq!(tok.encode("hi", true, false)[0], 2);
    }
}
