//! Splitting text at special and added tokens before the tokenizer proper sees it
//! (llama.cpp `tokenizer_st_partition`).
//!
//! llama.cpp walks its special tokens longest text first and, for each, cuts every leftmost
//! non-overlapping occurrence out of the text fragments still unclaimed. Doing that literally
//! costs one scan of the text per special token (Gemma has 6,400 of them), so here one pass over
//! a trie finds every occurrence of every token, and the occurrences are then claimed in
//! llama.cpp's order: by token priority, then position, skipping any that overlaps text already
//! claimed. That is the same result: an occurrence llama.cpp's search would find is exactly one
//! lying inside unclaimed text and not overlapping an earlier claim of the same token.

use std::ops::Range;

use super::vocab::{attr, Vocab};

/// A piece of the input after partitioning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Ordinary text, a byte range of the input.
    Text(Range<usize>),
    /// A special token found in the text.
    Token(u32),
}

#[derive(Debug, Default)]
struct Node {
    children: Vec<(u8, u32)>,
    /// (priority, token id) of the token ending here.
    token: Option<(u32, u32)>,
}

/// All tokens with CONTROL, USER_DEFINED or UNKNOWN attributes, in a byte trie.
#[derive(Debug)]
pub(crate) struct SpecialTokens {
    nodes: Vec<Node>,
    /// First bytes of any special token: positions starting with another byte are skipped.
    first_byte: [bool; 256],
    /// Per token id in priority order: whether parse_special = false still recognises it.
    always: Vec<bool>,
    lens: Vec<u32>,
    ids: Vec<u32>,
}

impl SpecialTokens {
    /// Collects the special tokens in llama.cpp's `cache_special_tokens` order: longest text
    /// first. (llama.cpp's `std::sort` leaves equal lengths in an unspecified order; we keep id
    /// order. Equal-length special texts that overlap each other do not occur in practice.)
    pub(crate) fn new(vocab: &Vocab) -> SpecialTokens {
        let special = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
        let mut ids: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| vocab.attrs[id as usize] & special != 0)
            .collect();
        ids.sort_by_key(|&id| std::cmp::Reverse(vocab.texts[id as usize].len()));
        let mut trie = SpecialTokens {
            nodes: vec![Node::default()],
            first_byte: [false; 256],
            always: Vec::with_capacity(ids.len()),
            lens: Vec::with_capacity(ids.len()),
            ids: Vec::with_capacity(ids.len()),
        };
        for (priority, &id) in ids.iter().enumerate() {
            let text = vocab.texts[id as usize].as_bytes();
            // Control and unknown tokens are matched only with parse_special; user-defined always.
            trie.always
                .push(vocab.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) == 0);
            trie.lens.push(text.len() as u32);
            trie.ids.push(id);
            trie.insert(text, priority as u32, id);
        }
        trie
    }

    fn insert(&mut self, text: &[u8], priority: u32, id: u32) {
        let Some(&first) = text.first() else { return };
        self.first_byte[first as usize] = true;
        let mut node = 0usize;
        for &b in text {
            node = match self.nodes[node].children.iter().find(|c| c.0 == b) {
                Some(&(_, child)) => child as usize,
                None => {
                    self.nodes.push(Node::default());
                    let child = self.nodes.len() - 1;
                    self.nodes[node].children.push((b, child as u32));
                    child
                }
            };
        }
        // A duplicate text keeps its first (higher-priority) token.
        self.nodes[node].token.get_or_insert((priority, id));
    }

    /// Splits `text` into text fragments and special tokens.
    pub(crate) fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        // (priority, start) of every occurrence.
        let mut found: Vec<(u32, u32)> = Vec::new();
        for start in 0..bytes.len() {
            if !self.first_byte[bytes[start] as usize] {
                continue;
            }
            let mut node = 0usize;
            for &b in &bytes[start..] {
                match self.nodes[node].children.iter().find(|c| c.0 == b) {
                    Some(&(_, child)) => node = child as usize,
                    None => break,
                }
                if let Some((priority, _)) = self.nodes[node].token {
                    if parse_special || self.always[priority as usize] {
                        found.push((priority, start as u32));
                    }
                }
            }
        }
        if found.is_empty() {
            return if text.is_empty() {
                Vec::new()
            } else {
                vec![Fragment::Text(0..text.len())]
            };
        }
        found.sort_unstable();
        let mut claimed = vec![false; bytes.len()];
        let mut tokens: Vec<(usize, usize, u32)> = Vec::new();
        for (priority, start) in found {
            let (start, len) = (start as usize, self.lens[priority as usize] as usize);
            if claimed[start..start + len].iter().any(|&c| c) {
                continue;
            }
            claimed[start..start + len].fill(true);
            tokens.push((start, len, self.ids[priority as usize]));
        }
        tokens.sort_unstable();
        let mut fragments = Vec::with_capacity(2 * tokens.len() + 1);
        let mut pos = 0;
        for (start, len, id) in tokens {
            if start > pos {
                fragments.push(Fragment::Text(pos..start));
            }
            fragments.push(Fragment::Token(id));
            pos = start + len;
        }
        if pos < text.len() {
            fragments.push(Fragment::Text(pos..text.len()));
        }
        fragments
    }
}
