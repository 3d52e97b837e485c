//! Byte-level BPE merges within one pre-tokenized word (llama.cpp `llm_tokenizer_bpe_session`).
//!
//! A word's symbols start as its bytes (each byte is one character of GPT-2's alphabet, so this
//! is the same as llama.cpp splitting the byte-encoded word into UTF-8 characters); the
//! lowest-rank adjacent pair merges first, ties to the leftmost, through a heap of candidate
//! pairs and a linked list of symbols. Ranks are looked up by token-id pair, with a by-text table
//! for the rare merge whose halves are not tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::unicode::byte_to_char;
use super::vocab::Vocab;

/// A fast multiplicative hasher (FxHash-like) for the tokenizer's tables: the id-pair table is
/// hit once per candidate pair and the text table once per SentencePiece bigram, where SipHash
/// would dominate. The keys come from the model file, not from users, so flooding resistance
/// is not needed.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.write_u64(u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56));
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A `HashMap` with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// One merge: its rank and the id of the merged text (`None` if that text is not a token).
#[derive(Clone, Copy, Debug)]
struct Merge {
    rank: u32,
    merged: Option<u32>,
}

/// Merge ranks from `tokenizer.ggml.merges`.
#[derive(Debug)]
pub(crate) struct BpeMerges {
    /// Token of each byte's GPT-2 character.
    byte_token: [Option<u32>; 256],
    by_ids: IdMap<(u32, u32), Merge>,
    /// Merges with a half that is not a token, keyed by text.
    by_text: HashMap<(String, String), u32>,
}

impl BpeMerges {
    /// Parses `"left right"` merge lines (split at the first space after the first character,
    /// as llama.cpp does; lines without one are ignored) into rank tables; the first occurrence
    /// of a pair keeps its rank.
    pub(crate) fn new(vocab: &Vocab) -> BpeMerges {
        let mut byte_token = [None; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            *slot = vocab
                .ids
                .get(byte_to_char(b as u8).to_string().as_str())
                .copied();
        }
        let mut by_ids = IdMap::default();
        let mut by_text = HashMap::new();
        for (rank, line) in vocab.merges.iter().enumerate() {
            let Some(split) = line
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i)
            else {
                continue;
            };
            let (left, right) = (&line[..split], &line[split + 1..]);
            let rank = rank as u32;
            match (vocab.ids.get(left), vocab.ids.get(right)) {
                (Some(&l), Some(&r)) => {
                    let merged = vocab.ids.get(&[left, right].concat()).copied();
                    by_ids.entry((l, r)).or_insert(Merge { rank, merged });
                }
                _ => {
                    by_text
                        .entry((left.to_string(), right.to_string()))
                        .or_insert(rank);
                }
            }
        }
        BpeMerges {
            byte_token,
            by_ids,
            by_text,
        }
    }
}

/// A symbol of the word being merged: a byte span and its token, if the span is one.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
    id: Option<u32>,
}

/// A candidate merge of symbols `left` and `right` (adjacent when queued).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Pair {
    rank: u32,
    left: u32,
    right: u32,
    /// Byte length of the merged text when queued: a pair whose symbols changed since is stale.
    size: u32,
}

impl Ord for Pair {
    /// Max-heap order: lowest rank first, then leftmost (llama.cpp `llm_bigram_bpe::comparator`).
    fn cmp(&self, other: &Pair) -> Ordering {
        other.rank.cmp(&self.rank).then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Pair) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Reusable buffers for merging words.
#[derive(Default, Debug)]
pub(crate) struct BpeSession {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Pair>,
}

/// `bytes` in GPT-2's alphabet (the vocabulary's spelling of them).
pub(crate) fn gpt2_text(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

impl BpeSession {
    /// Appends the tokens of one pre-tokenized `word` to `out`.
    pub(crate) fn tokenize_word(
        &mut self,
        vocab: &Vocab,
        merges: &BpeMerges,
        word: &[u8],
        out: &mut Vec<u32>,
    ) {
        if vocab.ignore_merges {
            if let Some(&id) = vocab.ids.get(gpt2_text(word).as_str()) {
                out.push(id);
                return;
            }
        }
        self.symbols.clear();
        self.heap.clear();
        let n = word.len() as i32;
        self.symbols.extend(word.iter().enumerate().map(|(i, &b)| {
            let i = i as i32;
            Symbol {
                start: i as u32,
                len: 1,
                prev: i - 1,
                next: if i + 1 < n { i + 1 } else { -1 },
                id: merges.byte_token[b as usize],
            }
        }));
        for i in 1..self.symbols.len() {
            self.push_pair(merges, word, i as i32 - 1, i as i32);
        }
        while let Some(pair) = self.heap.pop() {
            let (l, r) = (pair.left as usize, pair.right as usize);
            let (left, right) = (self.symbols[l], self.symbols[r]);
            if left.len == 0 || right.len == 0 || left.len + right.len != pair.size {
                continue;
            }
            let merged = self.merged_id(vocab, merges, word, &left, &right);
            self.symbols[l].len += right.len;
            self.symbols[l].id = merged;
            self.symbols[l].next = right.next;
            self.symbols[r].len = 0;
            if right.next >= 0 {
                self.symbols[right.next as usize].prev = l as i32;
            }
            self.push_pair(merges, word, left.prev, l as i32);
            self.push_pair(merges, word, l as i32, right.next);
        }
        self.emit(vocab, word, out);
    }

    /// Token of the merge of `left` and `right`.
    fn merged_id(
        &self,
        vocab: &Vocab,
        merges: &BpeMerges,
        word: &[u8],
        left: &Symbol,
        right: &Symbol,
    ) -> Option<u32> {
        if let (Some(l), Some(r)) = (left.id, right.id) {
            if let Some(m) = merges.by_ids.get(&(l, r)) {
                return m.merged;
            }
        }
        let span = &word[left.start as usize..(left.start + left.len + right.len) as usize];
        vocab.ids.get(gpt2_text(span).as_str()).copied()
    }

    /// Queues the pair (`left`, `right`) if it is a merge (llama.cpp `add_new_bigram`).
    fn push_pair(&mut self, merges: &BpeMerges, word: &[u8], left: i32, right: i32) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (self.symbols[left as usize], self.symbols[right as usize]);
        let rank = match (l.id, r.id) {
            (Some(a), Some(b)) => merges.by_ids.get(&(a, b)).map(|m| m.rank),
            _ if merges.by_text.is_empty() => None,
            _ => {
                let text =
                    |s: &Symbol| gpt2_text(&word[s.start as usize..(s.start + s.len) as usize]);
                merges.by_text.get(&(text(&l), text(&r))).copied()
            }
        };
        if let Some(rank) = rank {
            self.heap.push(Pair {
                rank,
                left: left as u32,
                right: right as u32,
                size: l.len + r.len,
            });
        }
    }

    /// Appends the final symbols; one that is not a token falls back to single-character
    /// tokens of its spelling, skipping those that do not exist (as llama.cpp does).
    fn emit(&self, vocab: &Vocab, word: &[u8], out: &mut Vec<u32>) {
        let mut i = 0i32;
        while i >= 0 && (i as usize) < self.symbols.len() {
            let s = &self.symbols[i as usize];
            match s.id {
                Some(id) => out.push(id),
                None => {
                    let text = gpt2_text(&word[s.start as usize..(s.start + s.len) as usize]);
                    // llama.cpp looks each *byte* of the spelling up as a one-byte string:
                    // only ASCII bytes can be tokens of a UTF-8 vocabulary.
                    for b in text.bytes().filter(u8::is_ascii) {
                        if let Some(&id) = vocab.ids.get(char::from(b).to_string().as_str()) {
                            out.push(id);
                        }
                    }
                }
            }
            i = s.next;
        }
    }
}
