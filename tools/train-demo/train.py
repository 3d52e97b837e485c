#!/usr/bin/env python3
"""Train the demo `qwen35moe` model with transformers' Qwen3_5Moe classes; evaluate; save.

Runs on the GPU machine (one H100/H200, PyTorch 2.11, transformers 5.17) in about eight minutes,
reading the token files that train_tokenizer.py and make_chat_data.py leave in .train-carry/. Also runs on a CPU with `--smoke` (a few steps) to check the script itself.

Steps:
1. Pretraining on random windows of the training split. Warmup, then a constant learning rate
   until the held-out perplexity stops improving (no 0.5% gain over `patience` evaluations) or
   75% of the time budget is gone, then a linear decay to 10% over 25% more steps
   (warmup-stable-decay). The best evaluation's weights are kept.
2. Chat finetune: packed conversations (loss on completion tokens only) mixed half and half
   with pretraining windows, so the model learns the turn format without forgetting the text.
3. Weights rounded to fp16, the dtype the checkpoint is stored in, so that every figure below
   and every GGUF exported from the checkpoint describe exactly the same model.
4. Final fp32 evaluation (TF32 off) of the rounded model on the held-out text:
   - perplexity as llama-perplexity computes it (tools/perplexity/perplexity.cpp: the tokens
     cut into n_ctx windows, only the second half of each window scored, no BOS), so the figure
     compares directly with `llama-perplexity -c N_CTX -f heldout.txt`;
   - routing statistics per layer (README.md explains each);
   - greedy answers to a few chat prompts.
5. `save_pretrained` in fp16 (two shards, each under the 16 MB that comes back from the
   machine) and metrics.json, before the greedy answers (so a time-out there loses nothing).

Usage: train.py [--data .train-carry] [--out DIR] [--smoke]
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

# Token ids fixed by train_tokenizer.py: 6111 BPE tokens, then Qwen3.5's 33 added tokens.
ENDOFTEXT, IM_START, IM_END, VISION_PAD = 6111, 6112, 6113, 6122

CONFIG = {
    # Qwen3_5MoeTextConfig arguments: the reference architecture (spec/qwen35moe.md §1) scaled
    # down. Kept from the reference: layer pattern (full attention iff (i+1) % 4 == 0), gated
    # attention with q/k norm and partial NEOX RoPE (25% of head_dim, theta 1e7, interleaved
    # M-RoPE sections covering all rotary slots), GQA, DeltaNet with 2 value heads per key head
    # and equal key/value head dims (llama.cpp requires it), conv kernel 4, softmax top-k router
    # with renormalised weights, one sigmoid-gated shared expert, eps 1e-6. Departures, so that
    # the F16 GGUF stays under 16 MB (about 7.7M parameters): tied embeddings (the reference
    # unties them; a separate output matrix would cost 1.6M) and an expert FFN of 16.
    "model": {
        "vocab_size": 6144,
        "hidden_size": 256,
        "num_hidden_layers": 8,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "linear_num_key_heads": 4,
        "linear_num_value_heads": 8,
        "linear_key_head_dim": 32,
        "linear_value_head_dim": 32,
        "linear_conv_kernel_dim": 4,
        "num_experts": 32,
        "num_experts_per_tok": 4,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                            "mrope_section": [3, 3, 2], "mrope_interleaved": True},
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        # The reference's 0.001 left experts idle in trial runs at this size; 0.01 keeps all in use.
        "router_aux_loss_coef": 0.01,
        "bos_token_id": None,
        "eos_token_id": IM_END,
        "pad_token_id": VISION_PAD,
    },
    "pretrain": {"seq_len": 2048, "batch": 32, "lr": 2e-3, "min_lr_frac": 0.1, "warmup": 100,
                 "weight_decay": 0.1, "betas": (0.9, 0.95), "clip": 1.0, "time_budget_s": 400,
                 "eval_every": 50, "patience": 2, "min_gain": 0.005, "stable_frac": 0.75,
                 "decay_frac": 0.25, "seed": 0},
    "chat": {"steps": 150, "time_budget_s": 80, "lr": 3e-4, "batch": 32, "chat_rows": 12, "seed": 1},
    "eval": {"n_ctx": 1024, "batch": 16},
}

CHAT_PROMPTS = [
    "Hello, who are you?",
    "Who gave the State of the Union address in 1862?",
    "What is chapter 1 of Moby-Dick called?",
    "Continue this passage:\n\nCall me Ishmael. Some years ago",
    "Continue the text:\nFellow-Citizens of the Senate and House of Representatives:",
    "Quote a few lines from Hamlet, Prince of Denmark.",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load(path: Path, dtype: str) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(path, dtype=dtype).astype(np.int64))


def build_model(device) -> Qwen3_5MoeForCausalLM:
    config = Qwen3_5MoeTextConfig(**CONFIG["model"])
    model = Qwen3_5MoeForCausalLM(config).to(device)
    rot = model.model.rotary_emb.inv_freq.numel() * 2
    log(f"layer_types {config.layer_types}; rotary dims {rot} of {config.head_dim}; "
        f"experts impl {config._experts_implementation}; attn impl {config._attn_implementation}")
    return model


def forward_loss(model, x, labels, amp):
    """Next-token cross-entropy (labels -100 are skipped) plus the router balancing loss."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(input_ids=x, use_cache=False, output_router_logits=True)
    ce = F.cross_entropy(out.logits[:, :-1].float().reshape(-1, out.logits.shape[-1]),
                         labels[:, 1:].reshape(-1), ignore_index=-100)
    return ce, out.aux_loss


@torch.no_grad()
def heldout_ppl(model, ids, n_ctx, batch, amp, max_chunks=None, routing=None):
    """Perplexity over the second half of each n_ctx window, as llama-perplexity computes it."""
    model.eval()
    n_chunk = len(ids) // n_ctx
    if max_chunks:
        n_chunk = min(n_chunk, max_chunks)
    first = n_ctx // 2
    nll, count = 0.0, 0
    for i in range(0, n_chunk, batch):
        b = min(batch, n_chunk - i)
        x = ids[i * n_ctx:(i + b) * n_ctx].view(b, n_ctx).to(next(model.parameters()).device)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(input_ids=x, use_cache=False, output_router_logits=routing is not None)
        lp = torch.log_softmax(out.logits[:, first:n_ctx - 1].float(), dim=-1)
        nll -= lp.gather(-1, x[:, first + 1:, None]).sum().item()
        count += b * (n_ctx - 1 - first)
        if routing is not None:
            routing.add([r.view(b, n_ctx, -1) for r in out.router_logits])
    model.train()
    return math.exp(nll / count), count


class Routing:
    """Per-layer routing statistics over the held-out windows (see README.md, 'Routing')."""

    def __init__(self, n_layer, n_expert, k):
        self.E, self.k = n_expert, k
        self.mass = torch.zeros(n_layer, n_expert, dtype=torch.float64)
        self.load = torch.zeros(n_layer, n_expert, dtype=torch.float64)
        self.tok90 = torch.zeros(n_layer, dtype=torch.float64)
        self.overlap = torch.zeros(n_layer, dtype=torch.float64)
        self.same = torch.zeros(n_layer, dtype=torch.float64)
        self.n_tok, self.n_pair = 0, 0

    def add(self, logits_per_layer):
        for il, lg in enumerate(logits_per_layer):
            p = torch.softmax(lg.float(), dim=-1)                       # [b, T, E]
            top_p, top_i = torch.topk(p, self.k, dim=-1)
            w = top_p / top_p.sum(-1, keepdim=True)
            self.mass[il] += torch.zeros(self.E, device=p.device).index_add_(
                0, top_i.flatten(), w.flatten()).double().cpu()
            self.load[il] += torch.bincount(top_i.flatten(), minlength=self.E).double().cpu()
            cum = torch.sort(p, dim=-1, descending=True).values.cumsum(-1)
            self.tok90[il] += ((cum < 0.9).sum(-1) + 1).double().sum().cpu()
            sel = torch.zeros_like(p).scatter_(-1, top_i, 1.0)
            inter = (sel[:, 1:] * sel[:, :-1]).sum(-1)                  # [b, T-1]
            self.overlap[il] += (inter / self.k).double().sum().cpu()
            self.same[il] += (inter == self.k).double().sum().cpu()
        b, T = logits_per_layer[0].shape[:2]
        self.n_tok += b * T
        self.n_pair += b * (T - 1)

    @staticmethod
    def _cover(v, frac=0.9):
        s = torch.sort(v, descending=True).values
        return int((s.cumsum(0) / s.sum() < frac).sum().item()) + 1

    def summary(self):
        layers = []
        for il in range(self.mass.shape[0]):
            load = self.load[il] / self.load[il].sum()
            layers.append({
                "layer": il,
                "experts_for_90pct_mass": self._cover(self.mass[il]),
                "share_for_90pct_mass": self._cover(self.mass[il]) / self.E,
                "experts_for_90pct_selections": self._cover(self.load[il]),
                "max_load_over_mean": float(load.max() * self.E),
                "unused_experts": int((self.load[il] == 0).sum()),
                "per_token_experts_for_90pct_prob": float(self.tok90[il] / self.n_tok),
                "consecutive_reuse": float(self.overlap[il] / self.n_pair),
                "consecutive_same_set": float(self.same[il] / self.n_pair),
            })
        return {"tokens": self.n_tok, "n_expert": self.E, "top_k": self.k,
                "random_reuse_baseline": self.k / self.E, "layers": layers}


def pretrain(model, train_ids, held_ids, cfg, ev, amp, smoke, log_rows):
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg["seed"])
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n or n.endswith(("A_log", "dt_bias")) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=cfg["betas"], fused=dev.type == "cuda")
    T, B = cfg["seq_len"], cfg["batch"]
    budget = cfg["time_budget_s"]
    best = (float("inf"), -1, None)
    stale, decay_start, decay_len = 0, None, None
    t0 = time.time()
    step = 0
    while True:
        elapsed = time.time() - t0
        if decay_start is None and (elapsed > cfg["stable_frac"] * budget or stale >= cfg["patience"]
                                    or (smoke and step >= 6)):
            per_step = elapsed / max(step, 1)
            decay_start = step
            decay_len = max(1, min(int(cfg["decay_frac"] * step) + 1, int(0.9 * (budget - elapsed) / per_step)))
            log(f"decay from step {step} for {decay_len} steps ({'plateau' if stale >= cfg['patience'] else 'time'})")
        if decay_start is not None and step >= decay_start + decay_len:
            break
        if step < cfg["warmup"]:
            lr = cfg["lr"] * (step + 1) / cfg["warmup"]
        elif decay_start is None:
            lr = cfg["lr"]
        else:
            frac = (step - decay_start) / decay_len
            lr = cfg["lr"] * (1 - (1 - cfg["min_lr_frac"]) * frac)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_ids) - T, (B,), generator=gen)
        x = torch.stack([train_ids[s:s + T] for s in starts]).to(dev, non_blocking=True)
        ce, aux = forward_loss(model, x, x, amp)
        loss = ce + model.config.router_aux_loss_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        opt.step()
        step += 1
        last = decay_start is not None and step >= decay_start + decay_len
        if step % cfg["eval_every"] == 0 or last or (smoke and step % 3 == 0):
            ppl, _ = heldout_ppl(model, held_ids, ev["n_ctx"], ev["batch"], amp, max_chunks=2 if smoke else None)
            row = {"step": step, "tokens": step * B * T, "time_s": round(time.time() - t0, 1), "lr": lr,
                   "train_ce": round(ce.item(), 4), "aux": round(aux.item(), 4), "gnorm": round(gnorm.item(), 3),
                   "heldout_ppl": round(ppl, 3)}
            log_rows.append(row)
            log(json.dumps(row))
            if ppl < best[0] * (1 - cfg["min_gain"]):
                stale = 0
            else:
                stale += 1
            if ppl < best[0]:
                best = (ppl, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
    log(f"pretrain done: {step} steps, {step * B * T / 1e6:.1f}M tokens, {time.time() - t0:.0f}s; "
        f"best held-out ppl {best[0]:.3f} at step {best[1]}")
    model.load_state_dict(best[2])
    return {"steps": step, "tokens": step * B * T, "seconds": round(time.time() - t0, 1),
            "best_step": best[1], "best_heldout_ppl_bf16": round(best[0], 4),
            "epochs": round(step * B * T / len(train_ids), 2)}


def chat_rows(ids, mask, offsets, T):
    """Pack whole conversations into rows of T tokens; labels -100 outside completions."""
    rows_x, rows_y = [], []
    x, y = [], []
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        if b - a > T:
            continue
        if len(x) + b - a > T:
            pad = T - len(x)
            rows_x.append(x + [ENDOFTEXT] * pad)
            rows_y.append(y + [-100] * pad)
            x, y = [], []
        x += ids[a:b].tolist()
        y += torch.where(mask[a:b] > 0, ids[a:b], -100).tolist()
    return torch.tensor(rows_x), torch.tensor(rows_y)


def chat_finetune(model, data, train_ids, cfg, T, amp, smoke):
    dev = next(model.parameters()).device
    cx, cy = chat_rows(data["chat_ids"], data["chat_mask"], data["chat_offsets"], T)
    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=0.0)
    steps = 3 if smoke else cfg["steps"]
    t0 = time.time()
    n_chat = cfg["chat_rows"] if not smoke else 1
    n_text = cfg["batch"] - n_chat if not smoke else 1
    for step in range(steps):
        if time.time() - t0 > cfg["time_budget_s"]:
            break
        for g in opt.param_groups:
            g["lr"] = cfg["lr"] * (1 - step / steps)
        ri = torch.randint(0, len(cx), (n_chat,), generator=gen)
        starts = torch.randint(0, len(train_ids) - T, (n_text,), generator=gen)
        tx = torch.stack([train_ids[s:s + T] for s in starts])
        x = torch.cat([cx[ri], tx]).to(dev)
        y = torch.cat([cy[ri], tx]).to(dev)
        ce, aux = forward_loss(model, x, y, amp)
        loss = ce + model.config.router_aux_loss_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"chat step {step}: ce {ce.item():.4f} (chat rows {len(ri)}, text rows {len(starts)})")
    return {"steps": step + 1, "rows_available": len(cx), "seconds": round(time.time() - t0, 1),
            "last_ce": round(ce.item(), 4)}


@torch.no_grad()
def greedy_chat(model, tok, prompt, max_new, thinking):
    """Greedy decoding of a chat answer, recomputing the whole sequence per token (no cache)."""
    model.eval()
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n"
    if not thinking:
        text += "\n</think>\n\n"
    ids = tok.encode(text, add_special_tokens=False).ids
    dev = next(model.parameters()).device
    out = []
    for _ in range(max_new):
        logits = model(input_ids=torch.tensor([ids + out], device=dev), use_cache=False).logits
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        if nxt == IM_END:
            break
    return tok.decode(out, skip_special_tokens=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(".train-carry"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/train-demo-out")))
    ap.add_argument("--smoke", action="store_true", help="a few steps on whatever device, to test the script")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from tokenizers import Tokenizer

    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = dev.type == "cuda"
    log(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if amp else 'cpu'}")
    data = {"train": load(args.data / "train_ids.u16", "<u2"), "held": load(args.data / "heldout_ids.u16", "<u2"),
            "chat_ids": load(args.data / "chat_ids.u16", "<u2"), "chat_mask": load(args.data / "chat_mask.u8", "u1"),
            "chat_offsets": load(args.data / "chat_offsets.i32", "<i4")}
    tok = Tokenizer.from_file(str(args.data / "tokenizer.json"))
    log(f"train {len(data['train']):,} tokens, held-out {len(data['held']):,}, chat {len(data['chat_ids']):,}")

    model = build_model(dev)
    n_param = sum(p.numel() for p in model.parameters())
    m = CONFIG["model"]
    n_expert_param = m["num_hidden_layers"] * m["num_experts"] * 3 * m["hidden_size"] * m["moe_intermediate_size"]
    n_active = n_param - n_expert_param * (1 - m["num_experts_per_tok"] / m["num_experts"])
    log(f"parameters {n_param:,} (routed experts {n_expert_param:,}; active per token {n_active:,.0f})")
    metrics = {"config": CONFIG, "parameters": n_param, "active_parameters": int(n_active), "curve": []}

    ev = CONFIG["eval"]
    if args.smoke:
        CONFIG["pretrain"].update(seq_len=256, batch=2, warmup=2, eval_every=3)
        CONFIG["chat"].update(batch=2)
        ev = {"n_ctx": 256, "batch": 2}
    metrics["pretrain"] = pretrain(model, data["train"], data["held"], CONFIG["pretrain"], ev, amp,
                                   args.smoke, metrics["curve"])
    chunks = 2 if args.smoke else None
    metrics["pretrain"]["heldout_ppl_bf16_recheck"] = round(heldout_ppl(model, data["held"], ev["n_ctx"], ev["batch"], amp, chunks)[0], 4)
    metrics["chat"] = chat_finetune(model, data, data["train"], CONFIG["chat"], CONFIG["pretrain"]["seq_len"], amp, args.smoke)

    # The checkpoint is stored in fp16; evaluate exactly the stored weights, in fp32 without TF32.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    routing = Routing(m["num_hidden_layers"], m["num_experts"], m["num_experts_per_tok"])
    ppl, count = heldout_ppl(model, data["held"], ev["n_ctx"], ev["batch"], False, chunks, routing)
    metrics["final"] = {"heldout_ppl_fp32": round(ppl, 4), "scored_tokens": count, "n_ctx": ev["n_ctx"],
                        "heldout_tokens": len(data["held"])}
    log(f"final (chat-tuned, fp16 weights, fp32 math) held-out ppl {ppl:.4f} over {count} tokens, n_ctx {ev['n_ctx']}")
    metrics["routing"] = routing.summary()
    for row in metrics["routing"]["layers"]:
        log(json.dumps(row))
    model.half().save_pretrained(args.out / "ckpt", max_shard_size="14MB")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    model.float()
    metrics["generations"] = []
    for prompt in CHAT_PROMPTS[:1] if args.smoke else CHAT_PROMPTS:
        for thinking in (True, False):
            ans = greedy_chat(model, tok, prompt, 4 if args.smoke else 64, thinking)
            metrics["generations"].append({"prompt": prompt, "thinking": thinking, "answer": ans})
            log(f"{prompt!r} (thinking={thinking}) -> {ans!r}")

    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    log(f"saved to {args.out}: {sorted(p.name for p in (args.out / 'ckpt').iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
