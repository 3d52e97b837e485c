//! The vocabulary read from GGUF metadata: token texts, attributes, scores, the special ids and
//! the end-of-generation set, resolved the way llama.cpp's `llama_vocab::impl::load` does
//! (llama-vocab.cpp), including its text-based detection of EOT/FIM/EOG tokens.

use gguf::{Array, Metadata};

use super::bpe::IdMap;
use super::TokenizerError;

/// Token attributes, llama.cpp's `llama_token_attr` bits.
pub(crate) mod attr {
    /// Unknown-token (`<unk>`).
    pub(crate) const UNKNOWN: u16 = 1 << 0;
    /// Unused slot.
    pub(crate) const UNUSED: u16 = 1 << 1;
    /// Ordinary piece of text.
    pub(crate) const NORMAL: u16 = 1 << 2;
    /// Control token, recognised in text only with `parse_special`.
    pub(crate) const CONTROL: u16 = 1 << 3;
    /// Added token, always recognised in text.
    pub(crate) const USER_DEFINED: u16 = 1 << 4;
    /// SentencePiece byte-fallback token `<0xXX>`.
    pub(crate) const BYTE: u16 = 1 << 5;
}

/// Which tokenizer `tokenizer.ggml.model` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModelKind {
    /// `gpt2`: byte-level BPE.
    Bpe,
    /// `llama`: SentencePiece with scores and byte fallback.
    Spm,
}

/// Texts llama.cpp treats as end-of-generation whatever their type (llama-vocab.cpp, `load`,
/// the `special_eog_ids` loop); they are also forced to CONTROL.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
    "<|ifm|im_end|>",
];
/// EOT candidates (first match becomes `special_eot_id`, forced to CONTROL).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|plamo:fim_prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|plamo:fim_suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
    "<|plamo:fim_middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>", "<|plamo:file_separator|>"];

/// Everything the tokenizer needs from the GGUF's `tokenizer.*` keys.
#[derive(Debug)]
pub(crate) struct Vocab {
    pub(crate) kind: ModelKind,
    /// `tokenizer.ggml.pre` ("" when absent).
    pub(crate) pre: String,
    pub(crate) texts: Vec<String>,
    pub(crate) attrs: Vec<u16>,
    pub(crate) scores: Vec<f32>,
    /// Text → id; on duplicate texts the last id wins, as llama.cpp's `token_to_id[word] = i`.
    pub(crate) ids: IdMap<String, u32>,
    /// `tokenizer.ggml.merges` in rank order (BPE only).
    pub(crate) merges: Vec<String>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    /// Whole words found in the vocabulary skip BPE merges (llama3-style tokenizers).
    pub(crate) ignore_merges: bool,
    /// End-of-generation flag per id.
    pub(crate) eog: Vec<bool>,
}

fn strings<'a>(
    md: &'a Metadata,
    key: &'static str,
) -> Result<Option<&'a [String]>, TokenizerError> {
    match md.get_array(key) {
        None => Ok(None),
        Some(a) => a.as_strings().map(Some).ok_or(TokenizerError::BadKey {
            key,
            expected: "array of strings",
        }),
    }
}

impl Vocab {
    /// Reads the vocabulary; the one place the tokenizer's GGUF key names appear.
    pub(crate) fn from_gguf(md: &Metadata) -> Result<Vocab, TokenizerError> {
        let model = md
            .get_str("tokenizer.ggml.model")
            .ok_or(TokenizerError::MissingKey {
                key: "tokenizer.ggml.model",
            })?;
        let kind = match model {
            "gpt2" => ModelKind::Bpe,
            "llama" => ModelKind::Spm,
            other => {
                return Err(TokenizerError::UnsupportedModel {
                    model: other.to_string(),
                })
            }
        };
        let pre = md.get_str("tokenizer.ggml.pre").unwrap_or("").to_string();
        let texts = strings(md, "tokenizer.ggml.tokens")?
            .ok_or(TokenizerError::MissingKey {
                key: "tokenizer.ggml.tokens",
            })?
            .iter()
            .enumerate()
            // llama.cpp renames empty tokens so they stay distinct in its text → id map.
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect::<Vec<_>>();
        let n = texts.len();
        let attrs = read_attrs(md, n)?;
        let scores = read_scores(md, n)?;
        let merges = match kind {
            ModelKind::Bpe => strings(md, "tokenizer.ggml.merges")?
                .ok_or(TokenizerError::MissingKey {
                    key: "tokenizer.ggml.merges",
                })?
                .to_vec(),
            ModelKind::Spm => Vec::new(),
        };
        let ids = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut vocab = Vocab {
            kind,
            pre,
            texts,
            attrs,
            scores,
            ids,
            merges,
            bos: None,
            eos: None,
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
            ignore_merges: false,
            eog: vec![false; n],
        };
        vocab.read_flags(md);
        vocab.resolve_specials(md);
        Ok(vocab)
    }

    /// Defaults per model and pre-tokenizer, then the file's own flags (llama.cpp `load`).
    fn read_flags(&mut self, md: &Metadata) {
        match self.kind {
            ModelKind::Bpe => {
                let llama3 = [
                    "llama3",
                    "llama-v3",
                    "llama-bpe",
                    "falcon3",
                    "falcon-h1",
                    "pixtral",
                    "midm-2.0",
                    "lfm2",
                    "jina-v5-nano",
                ];
                if llama3.contains(&self.pre.as_str()) {
                    self.ignore_merges = true;
                    self.add_bos = true;
                }
            }
            ModelKind::Spm => {
                self.add_space_prefix = true;
                self.add_bos = true;
            }
        }
        if let Some(v) = md.get_bool("tokenizer.ggml.add_space_prefix") {
            self.add_space_prefix = v;
        }
        if let Some(v) = md.get_bool("tokenizer.ggml.add_bos_token") {
            self.add_bos = v;
        }
        if let Some(v) = md.get_bool("tokenizer.ggml.add_eos_token") {
            self.add_eos = v;
        }
    }

    /// Special ids from the file (out-of-range ones ignored), llama.cpp's defaults otherwise,
    /// then the text-based detection of EOT/EOM/FIM/EOG tokens and the EOG set.
    fn resolve_specials(&mut self, md: &Metadata) {
        let n = self.texts.len() as u64;
        let key = |k: &str| md.get_u64(k).filter(|&id| id < n).map(|id| id as u32);
        let in_range = |id: u32| (u64::from(id) < n).then_some(id);
        let (default_bos, default_eos) = match self.kind {
            ModelKind::Bpe => (11, 11),
            ModelKind::Spm => (1, 2),
        };
        self.bos = key("tokenizer.ggml.bos_token_id").or(in_range(default_bos));
        self.eos = key("tokenizer.ggml.eos_token_id").or(in_range(default_eos));
        let mut eot = key("tokenizer.ggml.eot_token_id");
        let mut eom = key("tokenizer.ggml.eom_token_id");
        let mut fim = [
            key("tokenizer.ggml.fim_pre_token_id").or(key("tokenizer.ggml.prefix_token_id")),
            key("tokenizer.ggml.fim_suf_token_id").or(key("tokenizer.ggml.suffix_token_id")),
            key("tokenizer.ggml.fim_mid_token_id").or(key("tokenizer.ggml.middle_token_id")),
            key("tokenizer.ggml.fim_pad_token_id"),
            key("tokenizer.ggml.fim_rep_token_id"),
            key("tokenizer.ggml.fim_sep_token_id"),
        ];
        // llama.cpp takes the first match in hash-map order; we take the lowest id (the same
        // whenever a vocabulary has at most one candidate per role, as ours do).
        self.detect(&mut eot, EOT_TEXTS);
        self.detect(&mut eom, EOM_TEXTS);
        let fim_lists = [
            FIM_PRE_TEXTS,
            FIM_SUF_TEXTS,
            FIM_MID_TEXTS,
            FIM_PAD_TEXTS,
            FIM_REP_TEXTS,
            FIM_SEP_TEXTS,
        ];
        for (slot, texts) in fim.iter_mut().zip(fim_lists) {
            self.detect(slot, texts);
        }
        self.mark_unused();
        // EOG: FIM pad/repo/sep, every EOG-looking text, then eos/eot/eom.
        let mut eog: Vec<u32> = fim[3..].iter().flatten().copied().collect();
        for text in EOG_TEXTS {
            if let Some(&id) = self.ids.get(*text) {
                self.attrs[id as usize] |= attr::CONTROL;
                eog.push(id);
            }
        }
        eog.extend([self.eos, eot, eom].into_iter().flatten());
        for id in eog {
            self.eog[id as usize] = true;
        }
        // gpt-oss's channel markers are always rendered (llama.cpp's "quick hack").
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = self.ids.get(text) {
                self.attrs[id as usize] = attr::USER_DEFINED;
            }
        }
    }

    /// Fills `slot` with the lowest id whose text is in `texts`, forcing it to CONTROL.
    fn detect(&mut self, slot: &mut Option<u32>, texts: &[&str]) {
        if slot.is_some() {
            return;
        }
        *slot = texts.iter().filter_map(|t| self.ids.get(*t).copied()).min();
        if let Some(id) = *slot {
            self.attrs[id as usize] |= attr::CONTROL;
        }
    }

    /// Control tokens named "unused" are unused (llama.cpp's auto-detection).
    fn mark_unused(&mut self) {
        for (a, text) in self.attrs.iter_mut().zip(&self.texts) {
            if *a & attr::CONTROL != 0 && text.contains("unused") {
                *a |= attr::UNUSED;
            }
        }
    }

    /// Number of tokens.
    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }
}

/// Token types → attributes (`tokenizer.ggml.token_type`; all NORMAL when absent).
fn read_attrs(md: &Metadata, n: usize) -> Result<Vec<u16>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let Some(array) = md.get_array(KEY) else {
        return Ok(vec![attr::NORMAL; n]);
    };
    let types: Vec<i64> = match array {
        Array::I32(v) => v.iter().map(|&t| i64::from(t)).collect(),
        Array::U32(v) => v.iter().map(|&t| i64::from(t)).collect(),
        _ => {
            return Err(TokenizerError::BadKey {
                key: KEY,
                expected: "array of int32",
            })
        }
    };
    if types.len() < n {
        return Err(TokenizerError::ShortArray {
            key: KEY,
            len: types.len(),
            n_vocab: n,
        });
    }
    // llama.cpp `LLAMA_TOKEN_TYPE_*` → `LLAMA_TOKEN_ATTR_*`; undefined and unknown values → 0.
    Ok(types[..n]
        .iter()
        .map(|t| match t {
            1 => attr::NORMAL,
            2 => attr::UNKNOWN,
            3 => attr::CONTROL,
            4 => attr::USER_DEFINED,
            5 => attr::UNUSED,
            6 => attr::BYTE,
            _ => 0,
        })
        .collect())
}

/// `tokenizer.ggml.scores` (f32, or i32 converted), zeros when absent.
fn read_scores(md: &Metadata, n: usize) -> Result<Vec<f32>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.scores";
    let scores: Vec<f32> = match md.get_array(KEY) {
        None => return Ok(vec![0.0; n]),
        Some(Array::F32(v)) => v.clone(),
        Some(Array::I32(v)) => v.iter().map(|&s| s as f32).collect(),
        Some(_) => {
            return Err(TokenizerError::BadKey {
                key: KEY,
                expected: "array of float32 or int32",
            })
        }
    };
    if scores.len() < n {
        return Err(TokenizerError::ShortArray {
            key: KEY,
            len: scores.len(),
            n_vocab: n,
        });
    }
    Ok(scores[..n].to_vec())
}
