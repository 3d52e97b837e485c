//! Pre-tokenizers: split a text fragment into the words BPE merges within.
//!
//! Each variant is a hand-written matcher for the regex llama.cpp names for the
//! `tokenizer.ggml.pre` value (llama-vocab.cpp, `llm_tokenizer_bpe` constructor), written the way
//! llama.cpp's own hand-coded splitters are (unicode.cpp, `unicode_regex_split_custom_*`), so that
//! every quirk (which class a lone space joins, where `\s+(?!\S)` stops) is the same. Patterns
//! llama.cpp runs through `std::regex` are simple character-class splits here
//! ([`isolate_runs`]); they see code points exactly as llama.cpp's "collapsed" text does.

use std::ops::Range;

use super::unicode::{Classifier, LETTER, MARK, NUMBER, PUNCTUATION, WHITESPACE};

/// The pre-tokenizers llama.cpp applies for the `tokenizer.ggml.pre` values we support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    /// `gpt-2` and friends: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
    Gpt2,
    /// `smollm` (and starcoder, refact, ...): each `\p{N}` isolated, then [`PreTokenizer::Gpt2`].
    Smollm,
    /// `llama-bpe` / `llama3`: `(?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Llama3,
    /// `qwen2`: as [`PreTokenizer::Llama3`] with single digits, `\p{N}`.
    Qwen2,
    /// `qwen35`: as [`PreTokenizer::Qwen2`] with letter runs `[\p{L}\p{M}]+` taking combining marks.
    Qwen35,
    /// `default` (or no `tokenizer.ggml.pre`): four regexes in turn, see [`split_default`].
    Default,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value, if we support it; `None` for an empty
    /// value maps to `default` as llama.cpp does (with a warning there).
    pub(crate) fn from_name(pre: &str) -> Option<PreTokenizer> {
        // Only names whose llama.cpp branch (llama-vocab.cpp, `load`) sets nothing that changes
        // encoding beyond what `Vocab` models (ignore_merges and add_bos for the llama3 group).
        Some(match pre {
            "" | "default" => PreTokenizer::Default,
            "gpt-2" | "phi-2" | "mpt" | "olmo" | "exaone4" => PreTokenizer::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => PreTokenizer::Smollm,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => PreTokenizer::Llama3,
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" => {
                PreTokenizer::Qwen2
            }
            "qwen35" => PreTokenizer::Qwen35,
            _ => return None,
        })
    }

    /// Splits `text` into words: byte ranges covering it, in order.
    pub(crate) fn split(self, text: &str, cls: &Classifier, words: &mut Vec<Range<usize>>) {
        let cps = Codepoints::new(text, cls);
        let all = 0..cps.len();
        let whole = std::slice::from_ref(&all);
        let mut spans = Vec::with_capacity(text.len() / 4 + 1);
        match self {
            PreTokenizer::Gpt2 => split_gpt2(&cps, whole, &mut spans),
            PreTokenizer::Smollm => {
                let mut digits = Vec::new();
                isolate_runs(&cps, whole, &mut digits, |c, i| {
                    usize::from(c.flags[i] & NUMBER != 0)
                });
                split_gpt2(&cps, &digits, &mut spans);
            }
            PreTokenizer::Llama3 => split_llama3_family(&cps, whole, Family::LLAMA3, &mut spans),
            PreTokenizer::Qwen2 => split_llama3_family(&cps, whole, Family::QWEN2, &mut spans),
            PreTokenizer::Qwen35 => split_llama3_family(&cps, whole, Family::QWEN35, &mut spans),
            PreTokenizer::Default => split_default(&cps, &mut spans),
        }
        words.extend(
            spans
                .into_iter()
                .map(|r| cps.byte_offset[r.start]..cps.byte_offset[r.end]),
        );
    }
}

/// A fragment decoded to code points, with their classes and byte offsets.
struct Codepoints {
    cpts: Vec<u32>,
    flags: Vec<u16>,
    /// Byte offset of each code point, plus the text length at the end.
    byte_offset: Vec<usize>,
}

impl Codepoints {
    fn new(text: &str, cls: &Classifier) -> Codepoints {
        let mut cpts = Vec::with_capacity(text.len());
        let mut flags = Vec::with_capacity(text.len());
        let mut byte_offset = Vec::with_capacity(text.len() + 1);
        for (offset, c) in text.char_indices() {
            cpts.push(c as u32);
            flags.push(cls.flags(c as u32));
            byte_offset.push(offset);
        }
        byte_offset.push(text.len());
        Codepoints {
            cpts,
            flags,
            byte_offset,
        }
    }

    fn len(&self) -> usize {
        self.cpts.len()
    }
}

/// Code point past the end of the current segment (llama.cpp's `OUT_OF_RANGE`).
const OUT_OF_RANGE: u32 = u32::MAX;

/// Reads one segment of a [`Codepoints`], answering "nothing" outside it, as llama.cpp's
/// `_get_cpt` / `_get_flags` lambdas do (so lookaheads stop at segment ends).
struct Segment<'a> {
    cps: &'a Codepoints,
    range: Range<usize>,
    prev_end: usize,
    out: &'a mut Vec<Range<usize>>,
}

impl Segment<'_> {
    #[inline]
    fn cpt(&self, pos: usize) -> u32 {
        if self.range.contains(&pos) {
            self.cps.cpts[pos]
        } else {
            OUT_OF_RANGE
        }
    }

    #[inline]
    fn flags(&self, pos: usize) -> u16 {
        if self.range.contains(&pos) {
            self.cps.flags[pos]
        } else {
            0
        }
    }

    /// Ends the current word at `end` (llama.cpp `_add_token`); empty words are dropped.
    #[inline]
    fn emit(&mut self, end: usize) {
        if end > self.prev_end {
            self.out.push(self.prev_end..end);
        }
        self.prev_end = end;
    }

    /// Length of the contraction `'s|'t|'re|'ve|'m|'ll|'d` at `pos`, if any; `fold` makes the
    /// letters case-insensitive (`(?i:...)`; only ASCII letters fold to these, so ASCII folding is
    /// llama.cpp's `unicode_tolower` here).
    fn contraction(&self, pos: usize, fold: bool) -> Option<usize> {
        let end = self.range.end;
        if self.cpt(pos) != u32::from(b'\'') || pos + 1 >= end {
            return None;
        }
        let lower = |c: u32| {
            if fold && (0x41..=0x5A).contains(&c) {
                c + 0x20
            } else {
                c
            }
        };
        let next = lower(self.cpt(pos + 1));
        if [b's', b't', b'm', b'd']
            .iter()
            .any(|&b| next == u32::from(b))
        {
            return Some(2);
        }
        if pos + 2 < end {
            let next2 = lower(self.cpt(pos + 2));
            let pairs = [(b'r', b'e'), (b'v', b'e'), (b'l', b'l')];
            if pairs
                .iter()
                .any(|&(a, b)| next == u32::from(a) && next2 == u32::from(b))
            {
                return Some(3);
            }
        }
        None
    }

    /// Counts the whitespace run at `pos`; returns (length, end of its last `\r`/`\n` or 0).
    fn whitespace_run(&self, pos: usize) -> (usize, usize) {
        let (mut n, mut last_rn) = (0, 0);
        while self.flags(pos + n) & WHITESPACE != 0 {
            let c = self.cpt(pos + n);
            if c == u32::from(b'\r') || c == u32::from(b'\n') {
                last_rn = pos + n + 1;
            }
            n += 1;
        }
        (n, last_rn)
    }
}

/// GPT-2's pattern (llama.cpp `unicode_regex_split_custom_gpt2`).
fn split_gpt2(cps: &Codepoints, segments: &[Range<usize>], out: &mut Vec<Range<usize>>) {
    for range in segments {
        let mut s = Segment {
            cps,
            range: range.clone(),
            prev_end: range.start,
            out: &mut *out,
        };
        let mut pos = range.start;
        while pos < range.end {
            if let Some(n) = s.contraction(pos, false) {
                pos += n;
                s.emit(pos);
                continue;
            }
            let cpt = s.cpt(pos);
            let space = cpt == u32::from(b' ');
            let mut f2 = if space {
                s.flags(pos + 1)
            } else {
                s.flags(pos)
            };
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: one loop per class.
            let class: Option<fn(u16) -> bool> = if f2 & LETTER != 0 {
                Some(|f| f & LETTER != 0)
            } else if f2 & NUMBER != 0 {
                Some(|f| f & NUMBER != 0)
            } else if f2 & (WHITESPACE | LETTER | NUMBER) == 0 && f2 != 0 {
                Some(|f| f & (WHITESPACE | LETTER | NUMBER) == 0 && f != 0)
            } else {
                None
            };
            if let Some(in_class) = class {
                pos += usize::from(space);
                while in_class(f2) {
                    pos += 1;
                    f2 = s.flags(pos);
                }
                s.emit(pos);
                continue;
            }
            let (n, _) = s.whitespace_run(pos);
            pos += if n > 1 && s.cpt(pos + n) != OUT_OF_RANGE {
                n - 1 // `\s+(?!\S)`: leave the last space to the next word
            } else if n > 0 {
                n
            } else {
                1 // no match: the code point alone
            };
            s.emit(pos);
        }
    }
}

/// What differs between the llama3-shaped patterns.
#[derive(Clone, Copy)]
struct Family {
    /// Digits per number word: `\p{N}{1,3}` or `\p{N}`.
    max_digits: usize,
    /// Letter runs also take combining marks (`[\p{L}\p{M}]+`, qwen35).
    marks: bool,
}

impl Family {
    const LLAMA3: Family = Family {
        max_digits: 3,
        marks: false,
    };
    const QWEN2: Family = Family {
        max_digits: 1,
        marks: false,
    };
    const QWEN35: Family = Family {
        max_digits: 1,
        marks: true,
    };
}

/// The llama3 / qwen2 / qwen35 patterns (llama.cpp `unicode_regex_split_custom_llama3`,
/// `_qwen2`, `_qwen35`).
fn split_llama3_family(
    cps: &Codepoints,
    segments: &[Range<usize>],
    fam: Family,
    out: &mut Vec<Range<usize>>,
) {
    let word = if fam.marks { LETTER | MARK } else { LETTER };
    let not_punct = WHITESPACE | NUMBER | word;
    for range in segments {
        let mut s = Segment {
            cps,
            range: range.clone(),
            prev_end: range.start,
            out: &mut *out,
        };
        let mut pos = range.start;
        while pos < range.end {
            if let Some(n) = s.contraction(pos, true) {
                pos += n;
                s.emit(pos);
                continue;
            }
            let cpt = s.cpt(pos);
            let f = s.flags(pos);
            // `[^\r\n\p{L}\p{N}]?\p{L}+` (qwen35: `[\p{L}\p{M}]+`)
            let newline = cpt == u32::from(b'\r') || cpt == u32::from(b'\n');
            if !(newline || f & NUMBER != 0) && (f & word != 0 || s.flags(pos + 1) & word != 0) {
                pos += 1;
                while s.flags(pos) & word != 0 {
                    pos += 1;
                }
                s.emit(pos);
                continue;
            }
            // `\p{N}{1,max_digits}`
            if f & NUMBER != 0 {
                let mut first = pos;
                while s.flags(pos) & NUMBER != 0 {
                    pos += 1;
                    if pos - first >= fam.max_digits {
                        s.emit(pos);
                        first = pos;
                    }
                }
                s.emit(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            let space = cpt == u32::from(b' ');
            let mut f2 = if space { s.flags(pos + 1) } else { f };
            if f2 & not_punct == 0 && f != 0 {
                pos += usize::from(space);
                while f2 & not_punct == 0 && f2 != 0 {
                    pos += 1;
                    f2 = s.flags(pos);
                }
                while matches!(s.cpt(pos), 0x0A | 0x0D) {
                    pos += 1;
                }
                s.emit(pos);
                continue;
            }
            let (n, last_rn) = s.whitespace_run(pos);
            pos = if last_rn > 0 {
                last_rn // `\s*[\r\n]+`
            } else if n > 1 && s.cpt(pos + n) != OUT_OF_RANGE {
                pos + n - 1 // `\s+(?!\S)`
            } else if n > 0 {
                pos + n // `\s+`
            } else {
                pos + 1
            };
            s.emit(pos);
        }
    }
}

/// One `std::regex` split stage of llama.cpp (`unicode_regex_split_stl`) for a pattern that is a
/// character-class run: in each segment, every match becomes a word and so does every gap.
/// `match_len(cps, pos)` is the length of the match starting at `pos` (0: none); segments are
/// searched left to right for the leftmost match, as `std::regex_iterator` does.
fn isolate_runs(
    cps: &Codepoints,
    segments: &[Range<usize>],
    out: &mut Vec<Range<usize>>,
    match_len: impl Fn(&Codepoints, usize) -> usize,
) {
    for range in segments {
        let (mut gap_start, mut pos) = (range.start, range.start);
        while pos < range.end {
            let n = match_len(cps, pos).min(range.end - pos);
            if n == 0 {
                pos += 1;
                continue;
            }
            if pos > gap_start {
                out.push(gap_start..pos);
            }
            out.push(pos..pos + n);
            pos += n;
            gap_start = pos;
        }
        if range.end > gap_start {
            out.push(gap_start..range.end);
        }
    }
}

/// Length of the run of code points from `pos` (within the text) that satisfy `pred`.
fn run_len(cps: &Codepoints, pos: usize, pred: impl Fn(u32, u16) -> bool) -> usize {
    (pos..cps.len())
        .take_while(|&i| pred(cps.cpts[i], cps.flags[i]))
        .count()
}

/// llama.cpp's `default` pre-tokenizer: `[\p{P}\$\+<=>\^~\|]+`, then GPT-2's pattern, then
/// `\p{N}+`, then `[0-9][0-9][0-9]`, each splitting the words of the one before.
fn split_default(cps: &Codepoints, out: &mut Vec<Range<usize>>) {
    let all = 0..cps.len();
    let whole = std::slice::from_ref(&all);
    // Runs may not cross segment ends: `isolate_runs` clamps the length to the segment.
    let punct = |c: u32, f: u16| {
        if c < 0x80 {
            b"!\"#%&'()*,-./:;?@[\\]_{}$+<=>^~|".contains(&(c as u8))
        } else {
            f & WHITESPACE == 0 && f & 0xFF == PUNCTUATION
        }
    };
    let mut a = Vec::new();
    isolate_runs(cps, whole, &mut a, |c, i| run_len(c, i, punct));
    let mut b = Vec::new();
    split_gpt2(cps, &a, &mut b);
    let mut c = Vec::new();
    isolate_runs(cps, &b, &mut c, |c, i| {
        run_len(c, i, |_, f| f & NUMBER != 0)
    });
    let ascii_digit = |c: u32, _| (0x30..=0x39).contains(&c);
    isolate_runs(cps, &c, out, |c, i| {
        if run_len(c, i, ascii_digit) >= 3 {
            3
        } else {
            0
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        pre.split(text, &Classifier::new(), &mut out);
        out.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn gpt2_keeps_the_last_space_for_the_next_word() {
        let w = words(PreTokenizer::Gpt2, "Hello  world's 123!!\n");
        assert_eq!(w, ["Hello", " ", " world", "'s", " 123", "!!", "\n"]);
    }

    #[test]
    fn smollm_isolates_digits() {
        assert_eq!(
            words(PreTokenizer::Smollm, "a 123"),
            ["a", " ", "1", "2", "3"]
        );
    }

    #[test]
    fn qwen2_and_llama3_differ_in_digit_groups() {
        assert_eq!(
            words(PreTokenizer::Qwen2, "x 12345"),
            ["x", " ", "1", "2", "3", "4", "5"]
        );
        assert_eq!(
            words(PreTokenizer::Llama3, "x 12345"),
            ["x", " ", "123", "45"]
        );
        assert_eq!(
            words(PreTokenizer::Qwen2, "I'LL go\n\n  x"),
            ["I", "'LL", " go", "\n\n", " ", " x"]
        );
    }

    #[test]
    fn qwen35_letter_runs_take_combining_marks() {
        let text = "cafe\u{301} x";
        assert_eq!(words(PreTokenizer::Qwen35, text), ["cafe\u{301}", " x"]);
        assert_eq!(words(PreTokenizer::Qwen2, text), ["cafe", "\u{301}", " x"]);
    }

    #[test]
    fn words_cover_the_text() {
        let text = "mixed 中文 text\t\t with émoji 🙂 and 1234567 numbers!?  \r\n";
        for pre in [
            PreTokenizer::Gpt2,
            PreTokenizer::Smollm,
            PreTokenizer::Llama3,
            PreTokenizer::Qwen2,
            PreTokenizer::Qwen35,
            PreTokenizer::Default,
        ] {
            assert_eq!(words(pre, text).concat(), text, "{pre:?}");
        }
    }
}
