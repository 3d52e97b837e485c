//! Golden chat-template renderings: every case in tests/golden/chat/*.json rendered by
//! `engine::chat` must equal the Hugging Face jinja2 rendering byte for byte, or fail where
//! it failed (with the same message when the template raised it). The files embed the
//! templates, so no model is needed; tools/chat-golden/make_golden.py regenerates them.

use engine::chat::{ChatError, ChatRequest, ChatTemplate};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/chat")
}

fn load(name: &str) -> Value {
    let path = golden_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Renders every case of one golden file; returns the number of cases checked.
fn check(name: &str) -> usize {
    let doc = load(name);
    let source = doc["template"].as_str().expect("template");
    let bos = doc["bos_token"].as_str().expect("bos_token");
    let eos = doc["eos_token"].as_str().expect("eos_token");
    let now = doc["now_unix"].as_i64().expect("now_unix");
    let t = ChatTemplate::new(source, bos, eos)
        .expect("template compiles")
        .with_fixed_time(now);
    let cases = doc["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    for case in cases {
        let label = format!("{name}/{}", case["name"].as_str().unwrap_or("?"));
        let req = ChatRequest {
            messages: &case["messages"],
            tools: case.get("tools").filter(|t| !t.is_null()),
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap_or(false),
            enable_thinking: case.get("enable_thinking").and_then(Value::as_bool),
            extra: case.get("extra").and_then(Value::as_object),
        };
        let got = t.render(&req);
        match (case.get("expected"), case.get("expected_error"), got) {
            (Some(want), _, Ok(out)) if want.as_str() == Some(out.as_str()) => {}
            (Some(want), _, got) => failures.push(format!(
                "{label}: want\n{}\n--- got\n{got:?}",
                want.as_str().unwrap_or("")
            )),
            (None, Some(err), got) => {
                let raised = err["raised"].as_bool().unwrap_or(false);
                let message = err["message"].as_str().unwrap_or("");
                match got {
                    Err(ChatError::Raised { message: m, .. }) if raised && m == message => {}
                    Err(ChatError::Render { .. }) if !raised => {}
                    other => failures.push(format!("{label}: want error {err}, got {other:?}")),
                }
            }
            (None, None, _) => failures.push(format!("{label}: case has no expectation")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    cases.len()
}

#[test]
fn qwen35_matches_hf() {
    assert!(check("qwen35") >= 8);
}

#[test]
fn qwen35_golden_embeds_the_shipped_template() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../llm-server/src/synth/data/qwen35_chat_template.jinja");
    let shipped = std::fs::read_to_string(shipped).expect("qwen35 template");
    assert_eq!(
        load("qwen35")["template"].as_str(),
        Some(shipped.as_str()),
        "rerun make_golden.py"
    );
}

#[test]
fn smollm2_matches_hf() {
    assert!(check("smollm2") >= 8);
}

#[test]
fn qwen25coder_matches_hf() {
    assert!(check("qwen25coder") >= 8);
}

#[test]
fn gemma3_matches_hf() {
    assert!(check("gemma3") >= 8);
}

#[test]
fn chatml_fallback_matches_hf() {
    assert!(check("chatml_fallback") >= 8);
    let doc = load("chatml_fallback");
    assert_eq!(
        doc["template"].as_str(),
        Some(engine::chat::CHATML_TEMPLATE)
    );
}

/// The small models' GGUFs, when scripts/fetch-models.py has cached them: `from_gguf` must
/// find the same template and special tokens the golden files were made with.
#[test]
fn from_gguf_agrees_with_golden_files() {
    let Ok(paths) = std::env::var("LLM_SERVER_MODELS") else {
        eprintln!("LLM_SERVER_MODELS unset; skipping");
        return;
    };
    for path in paths.split(':').filter(|p| !p.is_empty()) {
        let file = gguf::GgufFile::open(path).expect("gguf opens");
        let t = ChatTemplate::from_gguf(file.metadata()).expect("template loads");
        let name = match Path::new(path).file_name().and_then(|n| n.to_str()) {
            Some(n) if n.starts_with("SmolLM2") => "smollm2",
            Some(n) if n.starts_with("Qwen2.5-Coder") => "qwen25coder",
            Some(n) if n.starts_with("gemma-3") => {
                assert!(t.is_none(), "gemma-3-270m's GGUF has no template");
                continue;
            }
            _ => continue,
        };
        let doc = load(name);
        let t = t.expect("template present");
        assert_eq!(Some(t.bos_token()), doc["bos_token"].as_str(), "{name}");
        assert_eq!(Some(t.eos_token()), doc["eos_token"].as_str(), "{name}");
        let md_template = file.metadata().get_str("tokenizer.chat_template");
        assert_eq!(md_template, doc["template"].as_str(), "{name}");
    }
}
