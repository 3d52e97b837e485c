//! SentencePiece (`tokenizer.ggml.model = llama`, Gemma): score-driven bigram merging with
//! byte fallback, as llama.cpp's `llm_tokenizer_spm_session` does it.
//!
//! The text arrives with spaces already escaped to `▁`. Symbols start as UTF-8 characters; the
//! adjacent pair whose concatenation is the highest-scoring token merges first (ties to the
//! leftmost). A final symbol that is a token is emitted; any other is a single character that
//! is not a token, emitted as `<0xXX>` byte tokens. (llama.cpp's `resegment` also consults a
//! reverse-merge map, but every merged symbol is a token by construction, so that path never
//! changes the result.)

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::Vocab;

#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

#[derive(Clone, Copy, Debug)]
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Bigram) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Max-heap order: highest score, then leftmost (llama.cpp `llm_bigram_spm::comparator`).
    fn cmp(&self, other: &Bigram) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Bigram) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Byte-fallback tokens `<0x00>`..`<0xFF>` (or, failing that, the byte as a one-character
/// token, as llama.cpp's `byte_to_token`).
#[derive(Debug)]
pub(crate) struct ByteTokens([Option<u32>; 256]);

impl ByteTokens {
    pub(crate) fn new(vocab: &Vocab) -> ByteTokens {
        let mut table = [None; 256];
        for (b, slot) in table.iter_mut().enumerate() {
            *slot = vocab
                .ids
                .get(format!("<0x{b:02X}>").as_str())
                .copied()
                .or_else(|| {
                    let c = u8::try_from(b).ok().filter(u8::is_ascii).map(char::from)?;
                    vocab.ids.get(c.to_string().as_str()).copied()
                });
        }
        ByteTokens(table)
    }
}

/// Appends the tokens of `text` (spaces escaped) to `out`.
pub(crate) fn tokenize(vocab: &Vocab, bytes: &ByteTokens, text: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    let n = text.chars().count() as i32;
    for (i, (start, c)) in text.char_indices().enumerate() {
        let i = i as i32;
        let next = if i + 1 < n { i + 1 } else { -1 };
        symbols.push(Symbol {
            start: start as u32,
            len: c.len_utf8() as u32,
            prev: i - 1,
            next,
        });
    }
    let mut heap = BinaryHeap::new();
    let try_add = |heap: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: i32, right: i32| {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        let size = l.len + r.len;
        let piece = &text[l.start as usize..(l.start + size) as usize];
        if let Some(&id) = vocab.ids.get(piece) {
            heap.push(Bigram {
                score: vocab.scores[id as usize],
                left: left as u32,
                right: right as u32,
                size,
            });
        }
    };
    for i in 1..symbols.len() as i32 {
        try_add(&mut heap, &symbols, i - 1, i);
    }
    while let Some(b) = heap.pop() {
        let (l, r) = (b.left as usize, b.right as usize);
        let (left, right) = (symbols[l], symbols[r]);
        if left.len == 0 || right.len == 0 || left.len + right.len != b.size {
            continue;
        }
        symbols[l].len += right.len;
        symbols[l].next = right.next;
        symbols[r].len = 0;
        if right.next >= 0 {
            symbols[right.next as usize].prev = l as i32;
        }
        try_add(&mut heap, &symbols, left.prev, l as i32);
        try_add(&mut heap, &symbols, l as i32, right.next);
    }
    let mut i = if symbols.is_empty() { -1 } else { 0 };
    while i >= 0 {
        let s = symbols[i as usize];
        let piece = &text[s.start as usize..(s.start + s.len) as usize];
        match vocab.ids.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| bytes.0[b as usize])),
        }
        i = s.next;
    }
}
