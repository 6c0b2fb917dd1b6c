"""One training step of the whole model: the course's MoE ``GPT`` against ``transformers``.

Forward + backward of the next-token loss on the same batch, with the same
weights: our ``GPT`` and the ``MixtralForCausalLM`` that ``moe_helpers.hf.to_hf``
exports from it, once per experts implementation of ``transformers`` asked for
(``eager`` and ``grouped_mm`` by default; ``batched_mm`` gathers one weight matrix
per token slot and took 55 s per step on a CPU at this size, so it is opt-in;
those that cannot run here are skipped with the reason).  Every variant is first checked to compute
the same loss (1e-5) and the same router gradient (1e-4 relative); the
variants take turns inside every repeat, so a busy machine slows them alike.
Target: ours / transformers <= 1.0 at the ``laptop`` MoE size.

    python benchmarks/train_step.py                    # laptop MoE (4 experts, top-2), batch 16 x 128
    python benchmarks/train_step.py --threads 1 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from moe_helpers.config import preset
from moe_helpers.hf import to_hf
from moe_helpers.model import GPT

TARGET_OURS_OVER_THEIRS = 1.0
IMPLEMENTATIONS = ("eager", "grouped_mm")


def our_step(model: GPT, idx, targets):
    def step():
        model.zero_grad(set_to_none=True)
        loss = model(idx, targets).loss                    # the LM loss alone, as transformers computes it
        loss.backward()
        return loss.detach(), model.layers[0].ffn.router.weight.grad
    return step


def their_step(hf_model, idx, targets):
    def step():
        hf_model.zero_grad(set_to_none=True)
        logits = hf_model(idx).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        return loss.detach(), hf_model.model.layers[0].mlp.gate.weight.grad
    return step


def exported(model: GPT, implementation: str):
    """``to_hf(model)`` set to one experts implementation, or the reason it cannot run here."""
    hf_model = to_hf(model).train()
    try:
        hf_model.set_experts_implementation(implementation)
    except (ValueError, ImportError, RuntimeError) as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return hf_model, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS),
                        help="transformers experts implementations to time (eager, grouped_mm, batched_mm)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset("laptop").model.replace(num_experts=args.experts, top_k=args.top_k, aux_loss_coef=0.0,
                                         z_loss_coef=0.0)
    model = GPT(cfg).train()
    generator = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), generator=generator)
    targets = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), generator=generator)

    variants = {"ours": our_step(model, idx, targets)}
    for implementation in args.implementations:
        hf_model, reason = exported(model, implementation)
        if hf_model is None:
            print(f"transformers {implementation}: skipped ({reason})")
            continue
        variants[f"transformers {implementation}"] = their_step(hf_model, idx, targets)

    reference_loss, reference_grad = variants["ours"]()
    for name, step in variants.items():
        loss, grad = step()
        if abs(loss.item() - reference_loss.item()) > 1e-5:
            raise AssertionError(f"{name}: loss {loss.item():.6f} != ours {reference_loss.item():.6f}")
        relative = ((grad - reference_grad).norm() / reference_grad.norm()).item()
        if relative > 1e-4:
            raise AssertionError(f"{name}: router gradient differs from ours by {relative:.1e} (relative)")

    seconds = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, step in variants.items():
            started = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    print(f"\nlaptop MoE ({cfg.num_experts} experts, top-{cfg.top_k}), batch {args.batch} x {args.seq_len}, "
          f"{torch.get_num_threads()} thread(s), forward + backward, median of {args.repeats}:")
    for name, value in median.items():
        print(f"  {name:24s} {1000 * value:8.1f} ms")
    missed = []
    for name, value in median.items():
        if name != "ours":
            ratio = median["ours"] / value
            print(f"  ours / {name:24s} {ratio:5.2f}x   (target <= {TARGET_OURS_OVER_THEIRS:g})")
            if ratio > TARGET_OURS_OVER_THEIRS:
                missed.append(f"ours / {name} {ratio:.2f}")
    print("\nall targets met" if not missed else "\nmissed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
