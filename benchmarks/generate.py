"""How fast does the course's model write?  Tokens per second of greedy generation.

Measured side by side in one run, on the same weights and the same prompts:

* ``cached``        ``GPT.generate(use_cache=True)``: each step runs the model on
                    one new token and attends to the stored keys and values;
* ``uncached``      ``GPT.generate(use_cache=False)``: each step re-encodes the whole
                    context (up to ``max_seq_len`` tokens);
* ``uncached, all logits``  the same, but scoring every position of the context
                    instead of the last one only (``only_last_logits``): what
                    that waste would add to the baseline;
* ``transformers``  the model exported with ``moe_helpers.hf.to_hf``
                    (``LlamaForCausalLM`` / ``MixtralForCausalLM``) generating with
                    its own ``DynamicCache`` (``do_sample=False``);
* ``transformers, no cache``  the same with ``use_cache=False``: the reference
                    library's own ratio between the two, for comparison.

``GPT.generate`` computes the logits of the last position only, with or without
the cache, as transformers' ``generate`` does (``logits_to_keep=1``), so the
ratios measure the cache and nothing else.

All of them (and, for the dense model, the same cached step written as one
function of the weights, see ``one_function``) are first checked to pick the same
tokens while the sequence fits in ``max_seq_len`` (past it the course's cache
slides and transformers' does not).
Targets, with the ``laptop`` model on a CPU and 256 new tokens: cached at least
5x uncached, and no slower than transformers.

It also prints the anatomy of one cached step: how many tensor operations it runs
(``accounting.count_operations``), the time per operation, and the FLOPs of its
matrix products.  At the ``laptop`` size a step is a few hundred operations on
vectors of 128 numbers, each costing microseconds of Python and dispatch, far more
than its arithmetic: that fixed cost, not the cache, bounds the ratio.

    python benchmarks/generate.py                      # laptop dense and its 4-expert MoE
    python benchmarks/generate.py --new-tokens 128 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from moe_helpers.accounting import count_operations, flops_per_token
from moe_helpers.config import preset
from moe_helpers.growth import upcycle
from moe_helpers.layers import rope_frequencies
from moe_helpers.model import GPT

TARGET_CACHED_OVER_UNCACHED = 5.0
TARGET_CACHED_OVER_TRANSFORMERS = 1.0


def ours(model: GPT, use_cache: bool):
    return lambda prompt, new_tokens: model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)


def theirs(exported, use_cache: bool = True):
    def generate(prompt, new_tokens):
        return exported.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, use_cache=use_cache)
    return generate


def uncached_all_logits(model: GPT):
    """Uncached greedy generation that computes the logits of every position of the context and
    keeps the last row (``GPT.generate(use_cache=False)`` asks for the last position only)."""
    def generate(prompt, new_tokens):
        context = prompt
        with torch.inference_mode():
            for _ in range(new_tokens):
                logits = model(context[:, -model.cfg.max_seq_len:], with_routing=False).logits   # (B, T, V)
                context = torch.cat([context, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return context.clone()                                  # an ordinary tensor
    return generate


def one_function(model: GPT):
    """Cached greedy generation for a dense ``GPT`` written as one function of its weights: the
    same operations as ``GPT.generate``, without ``nn.Module`` calls, cache objects or
    checks -- a measure of what the model's structure costs per step, not a second model
    to use (it skips everything the course's modules do besides the arithmetic: hooks,
    sliding-window masks for multi-token steps, half precision, MoE layers)."""
    cfg = model.cfg
    if cfg.is_moe or cfg.kv_heads != cfg.n_heads:
        raise ValueError("the one-function decoder covers dense models without grouped-query attention")
    weights = {name: tensor.detach() for name, tensor in model.named_parameters()}
    layers = [{part: weights[f"layers.{i}.{part}.weight"] for part in (
        "attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo",
        "ffn_norm", "ffn.w1", "ffn.w2", "ffn.w3")} for i in range(cfg.n_layers)]
    shape, eps, half, window = (cfg.d_model,), cfg.norm_eps, cfg.head_size // 2, cfg.max_seq_len

    def generate(prompt, new_tokens):
        cos, sin = rope_frequencies(cfg.head_size, prompt.shape[1] + new_tokens, cfg.rope_theta)
        keys, values = [None] * cfg.n_layers, [None] * cfg.n_layers
        pending, out, start = prompt, [prompt], 0
        with torch.inference_mode():
            for _ in range(new_tokens):
                B, T = pending.shape
                c, s = cos[start:start + T], sin[start:start + T]
                x = F.embedding(pending, weights["tok_embeddings.weight"])
                for i, w in enumerate(layers):
                    h = F.rms_norm(x, shape, w["attention_norm"], eps)
                    q, k, v = (F.linear(h, w[f"attention.w{n}"]).view(B, T, cfg.n_heads, -1).transpose(1, 2)
                               for n in "qkv")
                    q = q * c + torch.cat([-q[..., half:], q[..., :half]], -1) * s
                    k = k * c + torch.cat([-k[..., half:], k[..., :half]], -1) * s
                    if keys[i] is not None:
                        k, v = torch.cat([keys[i], k], 2), torch.cat([values[i], v], 2)
                    keys[i], values[i] = k[:, :, -window:], v[:, :, -window:]
                    attended = F.scaled_dot_product_attention(q, keys[i] if T == 1 else k, values[i] if T == 1 else v,
                                                              is_causal=T > 1)
                    x = x + F.linear(attended.transpose(1, 2).reshape(B, T, -1), w["attention.wo"])
                    h = F.rms_norm(x, shape, w["ffn_norm"], eps)
                    x = x + F.linear(F.silu(F.linear(h, w["ffn.w1"])) * F.linear(h, w["ffn.w3"]), w["ffn.w2"])
                logits = F.linear(F.rms_norm(x[:, -1], shape, weights["norm.weight"], eps), weights["lm_head.weight"])
                start += T
                pending = logits.argmax(-1, keepdim=True)
                out.append(pending)
        return torch.cat(out, 1)
    return generate


def tokens_per_second(variants: dict, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    """Median tokens/s of each variant; the variants take turns inside every repeat, so a
    busy machine slows them all alike."""
    seconds = {name: [] for name in variants}
    for _ in range(repeats):
        for name, generate in variants.items():
            started = time.perf_counter()
            with torch.no_grad():
                generate(prompt, new_tokens)
            seconds[name].append(time.perf_counter() - started)
    return {name: prompt.shape[0] * new_tokens / statistics.median(times) for name, times in seconds.items()}


def check_same_tokens(variants: dict, prompt: torch.Tensor, fits: int) -> None:
    """Every variant's greedy tokens equal the first one's, for ``fits`` new tokens."""
    outputs = {name: generate(prompt, fits) for name, generate in variants.items()}
    first_name, first = next(iter(outputs.items()))
    for name, out in outputs.items():
        if not torch.equal(out, first):
            raise AssertionError(f"{name} picked other tokens than {first_name}")


def operations_per_cached_step(model: GPT, prompt: torch.Tensor, steps: int = 16) -> float:
    """Tensor operations per new token of cached generation (the prompt's step subtracted)."""
    counts = [count_operations(lambda: model.generate(prompt, new_tokens, temperature=0))
              for new_tokens in (1, 1 + steps)]
    return (counts[1] - counts[0]) / steps


def average_uncached_context(prompt_tokens: int, new_tokens: int, max_seq_len: int) -> float:
    """Tokens an uncached step re-encodes, on average: step i reads the prompt and the i tokens
    written so far, cropped to the last ``max_seq_len``."""
    return sum(min(prompt_tokens + i, max_seq_len) for i in range(new_tokens)) / new_tokens


def models(with_moe: bool) -> dict:
    torch.manual_seed(0)
    dense = GPT(preset("laptop").model).eval()
    chosen = {"laptop dense": dense}
    if with_moe:
        moe = upcycle(dense, 4, 2).eval()
        with torch.no_grad():                    # distinct experts, so routing matters
            for layer in moe.moe_layers:
                for expert in layer.experts:
                    for weight in expert.parameters():
                        weight.add_(0.02 * torch.randn_like(weight))
        chosen["laptop MoE (4 experts, top-2)"] = moe
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--dense-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from transformers.utils import logging as transformers_logging

        from moe_helpers.hf import to_hf
        transformers_logging.set_verbosity_error()   # its note that 264 tokens pass max_position_embeddings
    except ImportError:
        to_hf = None
    print(f"greedy generation, batch {args.batch}, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    failures = []
    for label, model in models(not args.dense_only).items():
        prompt = torch.randint(0, model.cfg.vocab_size, (args.batch, args.prompt_tokens),
                               generator=torch.Generator().manual_seed(1))
        variants = {"cached": ours(model, True), "uncached": ours(model, False),
                    "uncached, all logits": uncached_all_logits(model)}
        if not model.cfg.is_moe:
            variants["cached, one function"] = one_function(model)
        if to_hf is not None:
            exported = to_hf(model).eval()
            variants["transformers"] = theirs(exported)
            variants["transformers, no cache"] = theirs(exported, use_cache=False)
        check_same_tokens(variants, prompt, model.cfg.max_seq_len - args.prompt_tokens)
        speed = tokens_per_second(variants, prompt, args.new_tokens, args.repeats)
        print(f"\n{label}: " + ", ".join(f"{name} {value:,.0f} tokens/s" for name, value in speed.items()))
        operations = operations_per_cached_step(model, prompt)
        step_us = 1e6 * args.batch / speed["cached"]
        matmul_mflop = flops_per_token(model.cfg, args.prompt_tokens + args.new_tokens // 2).forward / 1e6
        print(f"  a cached step: {operations:.0f} tensor operations in {step_us:.0f} us, {step_us / operations:.1f} us "
              f"each; {matmul_mflop:.1f} MFLOP of arithmetic per token")
        context = average_uncached_context(args.prompt_tokens, args.new_tokens, model.cfg.max_seq_len)
        print(f"  an uncached step: re-encodes {context:.1f} tokens on average, in "
              f"{1e6 * args.batch / speed['uncached']:.0f} us")
        over_uncached = speed["cached"] / speed["uncached"]
        print(f"  cached / uncached      {over_uncached:5.2f}x   (target >= {TARGET_CACHED_OVER_UNCACHED:g}x)")
        print(f"  scoring every position would make the uncached steps "
              f"{speed['uncached'] / speed['uncached, all logits'] - 1:.0%} slower "
              f"(cached / that: {speed['cached'] / speed['uncached, all logits']:.2f}x)")
        if "cached, one function" in speed:
            print(f"  the same cached step as one function of the weights: "
                  f"{1e6 * args.batch / speed['cached, one function']:.0f} us, "
                  f"{speed['cached, one function'] / speed['uncached']:.2f}x uncached")
        if over_uncached < TARGET_CACHED_OVER_UNCACHED:
            failures.append(f"{label}: cached / uncached {over_uncached:.2f}x")
        if "transformers" in speed:
            over_theirs = speed["cached"] / speed["transformers"]
            print(f"  cached / transformers  {over_theirs:5.2f}x   (target >= {TARGET_CACHED_OVER_TRANSFORMERS:g}x)")
            if over_theirs < TARGET_CACHED_OVER_TRANSFORMERS:
                failures.append(f"{label}: cached / transformers {over_theirs:.2f}x")
            print(f"  transformers' own cached / uncached: {speed['transformers'] / speed['transformers, no cache']:.2f}x")
    print("\nall targets met" if not failures else "\nmissed: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
