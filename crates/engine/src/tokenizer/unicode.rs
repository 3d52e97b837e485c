//! Code-point classes the pre-tokenizers need, and GPT-2's byte ↔ character alphabet.
//!
//! Classes follow llama.cpp (`unicode.cpp`, `unicode_cpt_flags_from_cpt`), not the Unicode
//! version of any Rust crate: the token ids must match llama.cpp's, and its table is from a newer
//! UCD than some libraries ship (see `unicode_data.rs`).

use std::sync::OnceLock;

use super::unicode_data::CATEGORY_RANGES;

/// Unassigned code point (`Cn`).
pub(crate) const UNDEFINED: u16 = 0x01;
/// `\p{N}`.
pub(crate) const NUMBER: u16 = 0x02;
/// `\p{L}`.
pub(crate) const LETTER: u16 = 0x04;
/// `\p{M}`.
pub(crate) const MARK: u16 = 0x10;
/// `\p{P}`.
pub(crate) const PUNCTUATION: u16 = 0x20;
/// `\s` as llama.cpp defines it (the UCD `White_Space` property).
pub(crate) const WHITESPACE: u16 = 0x100;

/// Last code point + 1.
const MAX_CODEPOINTS: usize = 0x11_0000;

/// Category bits of every code point, expanded once (1.1 MB) so a lookup is one load.
fn category_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![UNDEFINED as u8; MAX_CODEPOINTS];
        for (i, &(start, bits)) in CATEGORY_RANGES.iter().enumerate() {
            let end = CATEGORY_RANGES
                .get(i + 1)
                .map_or(MAX_CODEPOINTS, |r| r.0 as usize);
            table[start as usize..end].fill(bits);
        }
        table
    })
}

/// White_Space code points (PropList.txt), the set llama.cpp's `unicode_set_whitespace` holds.
fn is_whitespace(cpt: u32) -> bool {
    matches!(cpt, 0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029
        | 0x202F | 0x205F | 0x3000)
}

/// Category bits of `cpt` plus [`WHITESPACE`]; never zero for a valid code point, which the
/// splitters rely on (zero means "past the end of the fragment", as llama.cpp's `as_uint()`).
pub(crate) fn flags(cpt: u32) -> u16 {
    let category = category_table()
        .get(cpt as usize)
        .copied()
        .unwrap_or(UNDEFINED as u8);
    u16::from(category) | if is_whitespace(cpt) { WHITESPACE } else { 0 }
}

/// A cached flags lookup for ASCII, the common case in prose and code.
pub(crate) struct Classifier {
    ascii: [u16; 128],
}

impl Classifier {
    /// Builds the ASCII cache (and the full table behind it).
    pub(crate) fn new() -> Classifier {
        let mut ascii = [0u16; 128];
        for (cpt, slot) in ascii.iter_mut().enumerate() {
            *slot = flags(cpt as u32);
        }
        Classifier { ascii }
    }

    /// Same as [`flags`].
    #[inline]
    pub(crate) fn flags(&self, cpt: u32) -> u16 {
        match self.ascii.get(cpt as usize) {
            Some(&f) => f,
            None => flags(cpt),
        }
    }
}

/// GPT-2's printable stand-in for each byte (`bytes_to_unicode` in OpenAI's encoder.py;
/// llama.cpp `unicode_byte_to_utf8_map`): printable Latin-1 bytes map to themselves, the other
/// 68 to U+0100.. in byte order.
pub(crate) fn byte_to_char(byte: u8) -> char {
    byte_alphabet().0[byte as usize]
}

/// The byte a GPT-2 alphabet character stands for, if it is one.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cpt = c as u32;
    let table = &byte_alphabet().1;
    table.get(cpt as usize).copied().flatten()
}

type Alphabet = ([char; 256], Vec<Option<u8>>);

fn byte_alphabet() -> &'static Alphabet {
    static ALPHABET: OnceLock<Alphabet> = OnceLock::new();
    ALPHABET.get_or_init(|| {
        let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut to_char = ['\0'; 256];
        let mut to_byte = vec![None; 0x200];
        let mut next = 0x100u32;
        for b in 0..=255u8 {
            let cpt = if printable(b) {
                u32::from(b)
            } else {
                next += 1;
                next - 1
            };
            // Every value here is below U+0200, a valid scalar value.
            to_char[b as usize] = char::from_u32(cpt).unwrap_or('\0');
            to_byte[cpt as usize] = Some(b);
        }
        (to_char, to_byte)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_alphabet_round_trips_every_byte() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
    }

    #[test]
    fn classes_match_llama_cpp_on_edge_cases() {
        assert_eq!(flags('a' as u32), LETTER);
        assert_eq!(flags('7' as u32), NUMBER);
        assert_eq!(flags(' ' as u32), 0x08 | WHITESPACE);
        assert_eq!(flags('\n' as u32), 0x80 | WHITESPACE);
        assert_eq!(flags(0x0301), MARK); // combining acute accent
        assert_eq!(flags(0x00B2), NUMBER); // superscript two is No
        assert_eq!(flags('_' as u32), PUNCTUATION);
        assert_ne!(flags(0x10_FFFF), 0);
    }
}
