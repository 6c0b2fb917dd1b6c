"""How fast does the course's model write?  Tokens per second of greedy generation.

Measured side by side in one run, on the same weights and the same prompts:

* ``cached``        ``GPT.generate(use_cache=True)``: each step runs the model on
                    one new token and attends to the stored keys and values;
* ``uncached``      ``GPT.generate(use_cache=False)``: each step re-encodes the whole
                    context (up to ``max_seq_len`` tokens);
* ``transformers``  the model exported with ``moe_helpers.hf.to_hf``
                    (``LlamaForCausalLM`` / ``MixtralForCausalLM``) generating with
                    its own ``DynamicCache`` (``do_sample=False``).

The three are first checked to pick the same tokens while the sequence fits in
``max_seq_len`` (past it the course's cache slides and transformers' does not).
Targets, with the ``laptop`` model on a CPU and 256 new tokens: cached at least
5x uncached, and no slower than transformers.

    python benchmarks/generate.py                      # laptop dense and its 4-expert MoE
    python benchmarks/generate.py --new-tokens 128 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moe_helpers.config import preset
from moe_helpers.growth import upcycle
from moe_helpers.model import GPT

TARGET_CACHED_OVER_UNCACHED = 5.0
TARGET_CACHED_OVER_TRANSFORMERS = 1.0


def ours(model: GPT, use_cache: bool):
    return lambda prompt, new_tokens: model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)


def theirs(exported):
    def generate(prompt, new_tokens):
        return exported.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
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
        from moe_helpers.hf import to_hf
    except ImportError:
        to_hf = None
    print(f"greedy generation, batch {args.batch}, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    failures = []
    for label, model in models(not args.dense_only).items():
        prompt = torch.randint(0, model.cfg.vocab_size, (args.batch, args.prompt_tokens),
                               generator=torch.Generator().manual_seed(1))
        variants = {"cached": ours(model, True), "uncached": ours(model, False)}
        if to_hf is not None:
            variants["transformers"] = theirs(to_hf(model).eval())
        check_same_tokens(variants, prompt, model.cfg.max_seq_len - args.prompt_tokens)
        speed = tokens_per_second(variants, prompt, args.new_tokens, args.repeats)
        print(f"\n{label}: " + ", ".join(f"{name} {value:,.0f} tokens/s" for name, value in speed.items()))
        over_uncached = speed["cached"] / speed["uncached"]
        print(f"  cached / uncached      {over_uncached:5.2f}x   (target >= {TARGET_CACHED_OVER_UNCACHED:g}x)")
        if over_uncached < TARGET_CACHED_OVER_UNCACHED:
            failures.append(f"{label}: cached / uncached {over_uncached:.2f}x")
        if "transformers" in speed:
            over_theirs = speed["cached"] / speed["transformers"]
            print(f"  cached / transformers  {over_theirs:5.2f}x   (target >= {TARGET_CACHED_OVER_TRANSFORMERS:g}x)")
            if over_theirs < TARGET_CACHED_OVER_TRANSFORMERS:
                failures.append(f"{label}: cached / transformers {over_theirs:.2f}x")
    print("\nall targets met" if not failures else "\nmissed: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
