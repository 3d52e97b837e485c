//! Tokenizers built from a GGUF vocabulary, giving the token ids llama.cpp gives.
//!
//! - Byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-tokenizers llama.cpp names
//!   (`qwen2`, `qwen35`, `llama-bpe`, `smollm`, `gpt-2`, `default`, ...): [`pretokenize`], [`bpe`].
//! - SentencePiece (`llama`, e.g. Gemma 3): [`spm`].
//! - Special and added tokens are cut out of the text first ([`special`]); BOS/EOS follow the
//!   file's `add_bos_token` / `add_eos_token` with llama.cpp's defaults ([`vocab`]).
//!
//! `encode` mirrors `llama_tokenize(vocab, text, add_special, parse_special)`; `decode` mirrors
//! `llama_detokenize(remove_special = false, unparse_special = true)` without the lossy
//! `clean_up_tokenization_spaces` pass, so `decode(encode(x)) == x`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = gguf::GgufFile::open("model.gguf")?;
//! let tok = engine::Tokenizer::from_gguf(file.metadata())?;
//! let ids = tok.encode("Hello world", false, false);
//! assert_eq!(tok.decode(&ids), "Hello world");
//! # Ok(()) }
//! ```

mod bpe;
mod pretokenize;
mod special;
mod spm;
mod unicode;
mod unicode_data;
mod vocab;

use std::ops::Range;

use bpe::{BpeMerges, BpeSession};
use pretokenize::PreTokenizer;
use special::{Fragment, SpecialTokens};
use spm::ByteTokens;
use unicode::{char_to_byte, Classifier};
use vocab::{attr, ModelKind, Vocab};

/// Why a tokenizer could not be built from a GGUF file's metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required key is absent.
    #[error("GGUF metadata has no `{key}`")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// A key has the wrong type.
    #[error("GGUF key `{key}` is not an {expected}")]
    BadKey {
        /// The key.
        key: &'static str,
        /// The type wanted.
        expected: &'static str,
    },
    /// A per-token array is shorter than the vocabulary.
    #[error("GGUF key `{key}` has {len} entries for {n_vocab} tokens")]
    ShortArray {
        /// The key.
        key: &'static str,
        /// Its length.
        len: usize,
        /// Number of tokens.
        n_vocab: usize,
    },
    /// `tokenizer.ggml.model` names a tokenizer we do not implement.
    #[error("unsupported tokenizer model `{model}` (supported: gpt2, llama)")]
    UnsupportedModel {
        /// The value found.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error("unsupported pre-tokenizer `{pre}` (supported: qwen2, qwen35, llama-bpe, smollm, gpt-2, default and aliases)")]
    UnsupportedPre {
        /// The value found.
        pre: String,
    },
}

/// How text fragments become tokens.
#[derive(Debug)]
enum Model {
    Bpe {
        pre: PreTokenizer,
        merges: BpeMerges,
    },
    Spm {
        bytes: ByteTokens,
    },
}

/// A tokenizer for one GGUF vocabulary.
pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    special: SpecialTokens,
    classifier: Classifier,
    /// Every token's detokenized bytes, concatenated; `piece_ends[id]` is where token `id`'s end.
    pieces: Vec<u8>,
    piece_ends: Vec<usize>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.vocab.kind)
            .field("pre", &self.vocab.pre)
            .field("n_vocab", &self.n_vocab())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.*` metadata.
    pub fn from_gguf(md: &gguf::Metadata) -> Result<Tokenizer, TokenizerError> {
        let vocab = Vocab::from_gguf(md)?;
        let model = match vocab.kind {
            ModelKind::Bpe => {
                let pre = PreTokenizer::from_name(&vocab.pre).ok_or_else(|| {
                    TokenizerError::UnsupportedPre {
                        pre: vocab.pre.clone(),
                    }
                })?;
                Model::Bpe {
                    pre,
                    merges: BpeMerges::new(&vocab),
                }
            }
            ModelKind::Spm => Model::Spm {
                bytes: ByteTokens::new(&vocab),
            },
        };
        let special = SpecialTokens::new(&vocab);
        let (pieces, piece_ends) = build_pieces(&vocab);
        Ok(Tokenizer {
            vocab,
            model,
            special,
            classifier: Classifier::new(),
            pieces,
            piece_ends,
        })
    }

    /// Token ids of `text` (llama.cpp `llama_tokenize`). `add_special`: add BOS/EOS as the file's
    /// `add_bos_token` / `add_eos_token` say; `parse_special`: turn control-token texts in `text`
    /// (`<|im_start|>`, `<start_of_turn>`, ...) into their ids. User-defined (added) tokens are
    /// recognised either way, as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.vocab.add_bos {
            out.extend(self.vocab.bos);
        }
        let fragments = self.special.partition(text, parse_special);
        match &self.model {
            Model::Bpe { pre, merges } => self.encode_bpe(text, &fragments, *pre, merges, &mut out),
            Model::Spm { bytes } => self.encode_spm(text, &fragments, bytes, &mut out),
        }
        if add_special && self.vocab.add_eos {
            out.extend(self.vocab.eos);
        }
        out
    }

    fn encode_bpe(
        &self,
        text: &str,
        fragments: &[Fragment],
        pre: PreTokenizer,
        merges: &BpeMerges,
        out: &mut Vec<u32>,
    ) {
        let mut session = BpeSession::default();
        let mut words: Vec<Range<usize>> = Vec::new();
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => out.push(*id),
                Fragment::Text(range) => {
                    let piece = &text[range.clone()];
                    words.clear();
                    pre.split(piece, &self.classifier, &mut words);
                    for w in &words {
                        session.tokenize_word(
                            &self.vocab,
                            merges,
                            &piece.as_bytes()[w.clone()],
                            out,
                        );
                    }
                }
            }
        }
    }

    /// llama.cpp `tokenize`, SPM branch: a space is prefixed to text that starts the input or
    /// follows a special token (when `add_space_prefix`), spaces become `▁`, and each text
    /// fragment is merged on its own.
    fn encode_spm(
        &self,
        text: &str,
        fragments: &[Fragment],
        bytes: &ByteTokens,
        out: &mut Vec<u32>,
    ) {
        let mut prev_special = true;
        let mut escaped = String::new();
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => {
                    out.push(*id);
                    prev_special = true;
                }
                Fragment::Text(range) => {
                    escaped.clear();
                    if self.vocab.add_space_prefix && prev_special {
                        escaped.push('▁');
                    }
                    for c in text[range.clone()].chars() {
                        escaped.push(if c == ' ' { '▁' } else { c });
                    }
                    spm::tokenize(&self.vocab, bytes, &escaped, out);
                    prev_special = false;
                }
            }
        }
    }

    /// Text of `ids`: their pieces concatenated (special tokens as their text), invalid UTF-8
    /// replaced by U+FFFD. With `add_space_prefix` the space the encoder added in front of the
    /// first token is removed again (llama.cpp `detokenize`). Unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.token_bytes(id);
            let strip = i == 0 && self.vocab.add_space_prefix && piece.first() == Some(&b' ');
            bytes.extend_from_slice(if strip { &piece[1..] } else { piece });
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Bytes token `id` stands for (llama.cpp `token_to_piece` with `special = true`), for
    /// streaming detokenization, where a UTF-8 character may span tokens. Empty for an unknown id.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let id = id as usize;
        if id >= self.piece_ends.len() {
            return &[];
        }
        let start = if id == 0 { 0 } else { self.piece_ends[id - 1] };
        &self.pieces[start..self.piece_ends[id]]
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.vocab.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.vocab.eos
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos && self.vocab.bos.is_some()
    }

    /// True for tokens that end generation, the set llama.cpp builds (`special_eog_ids`): EOS,
    /// EOT, EOM, FIM pad/repo/sep and texts such as `<|im_end|>`, `<|endoftext|>`,
    /// `<end_of_turn>`, `</s>`.
    pub fn is_eog(&self, id: u32) -> bool {
        self.vocab.eog.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether token `id` is a control, user-defined or unknown token (`<|im_end|>`,
    /// `<think>`): text a grammar must not spell out with it.
    pub fn is_special(&self, id: u32) -> bool {
        let special = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
        self.vocab
            .attrs
            .get(id as usize)
            .is_some_and(|&a| a & special != 0)
    }

    /// The id of the token whose text is exactly `text` (e.g. `"<|im_start|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.ids.get(text).copied()
    }

    /// The vocabulary's text of token `id` (GPT-2 alphabet for BPE, `▁` for SentencePiece spaces).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }
}

/// Every token's piece (llama.cpp `token_to_piece(special = true)`, the `cache_token_to_piece`
/// it builds at load).
fn build_pieces(vocab: &Vocab) -> (Vec<u8>, Vec<usize>) {
    let mut pieces = Vec::new();
    let mut ends = Vec::with_capacity(vocab.len());
    for (text, &a) in vocab.texts.iter().zip(&vocab.attrs) {
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            pieces.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match vocab.kind {
                ModelKind::Spm => pieces.extend_from_slice(text.replace('▁', " ").as_bytes()),
                ModelKind::Bpe => decode_gpt2(text, &mut pieces),
            }
        } else if a & attr::BYTE != 0 {
            // `<0xXX>`; like llama.cpp's strtol, anything unparsable reads as 0.
            let hex = text.get(3..5).unwrap_or("");
            pieces.push(u8::from_str_radix(hex, 16).unwrap_or(0));
        }
        ends.push(pieces.len());
    }
    (pieces, ends)
}

/// GPT-2 alphabet → bytes (llama.cpp `llama_decode_text`, including its marker for characters
/// outside the alphabet).
fn decode_gpt2(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use gguf::{Array, Metadata, Value};

    use super::*;

    fn metadata(
        model: &str,
        pre: &str,
        tokens: &[&str],
        types: &[i32],
        extra: Vec<(&str, Value)>,
    ) -> Metadata {
        let mut md = Metadata::new();
        let strings =
            |v: &[&str]| Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()));
        let mut entries = vec![
            ("tokenizer.ggml.model", Value::String(model.into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", strings(tokens)),
            (
                "tokenizer.ggml.token_type",
                Value::Array(Array::I32(types.to_vec())),
            ),
        ];
        entries.extend(extra);
        for (k, v) in entries {
            assert!(md.insert(k.to_string(), v).is_ok());
        }
        md
    }

    /// A toy byte-level BPE vocabulary: the 256 byte characters, a few merges, two specials.
    fn toy_bpe() -> Tokenizer {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| unicode::byte_to_char(b).to_string())
            .collect();
        tokens.extend(
            [
                "he",
                "ll",
                "hell",
                "hello",
                "Ġw",
                "Ġwo",
                "<|im_end|>",
                "<tool>",
            ]
            .map(String::from),
        );
        let mut types = vec![1; tokens.len()];
        let n = types.len();
        types[n - 2] = 3;
        types[n - 1] = 4;
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
        let merges = Value::Array(Array::String(
            merges.iter().map(|s| s.to_string()).collect(),
        ));
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let md = metadata(
            "gpt2",
            "qwen2",
            &refs,
            &types,
            vec![
                ("tokenizer.ggml.merges", merges),
                ("tokenizer.ggml.eos_token_id", Value::U32(262)),
            ],
        );
        Tokenizer::from_gguf(&md).expect("toy vocabulary")
    }

    #[test]
    fn bpe_merges_by_rank_and_round_trips() {
        let tok = toy_bpe();
        let hello = tok.token_id("hello").expect("hello");
        let wo = tok.token_id("Ġwo").expect("Ġwo");
        let ids = tok.encode("hello world", false, false);
        assert_eq!(ids[..2], [hello, wo]);
        assert_eq!(tok.decode(&ids), "hello world");
        assert_eq!(tok.encode("", true, false), Vec::<u32>::new());
    }

    #[test]
    fn specials_follow_parse_special_and_added_tokens_always_split() {
        let tok = toy_bpe();
        let end = tok.token_id("<|im_end|>").expect("end");
        let tool = tok.token_id("<tool>").expect("tool");
        assert_eq!(
            tok.encode("hello<|im_end|>", false, true),
            [tok.token_id("hello").expect("hello"), end]
        );
        assert!(!tok.encode("hello<|im_end|>", false, false).contains(&end));
        assert!(tok.encode("a<tool>b", false, false).contains(&tool));
        assert!(tok.is_eog(end));
        assert_eq!(tok.decode(&[end]), "<|im_end|>");
    }

    #[test]
    fn spm_prefers_high_scores_and_falls_back_to_bytes() {
        let mut tokens = vec!["<unk>", "<s>", "</s>", "▁a", "b", "▁ab", "a", "▁"];
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        tokens.extend(bytes.iter().map(String::as_str));
        let mut types = vec![2, 3, 3, 1, 1, 1, 1, 1];
        types.extend([6; 256]);
        let mut scores = vec![0.0f32, 0.0, 0.0, -1.0, -2.0, -0.5, -3.0, -4.0];
        scores.extend([0.0; 256]);
        let md = metadata(
            "llama",
            "default",
            &tokens,
            &types,
            vec![("tokenizer.ggml.scores", Value::Array(Array::F32(scores)))],
        );
        let tok = Tokenizer::from_gguf(&md).expect("toy spm");
        // add_space_prefix defaults on for SentencePiece; BOS defaults to id 1.
        let ids = tok.encode("ab é", true, false);
        assert_eq!(ids[..2], [1, 5]);
        assert_eq!(ids[2..], [7, 8 + 0xC3, 8 + 0xA9]);
        assert_eq!(tok.decode(&ids[1..]), "ab é");
    }
}
