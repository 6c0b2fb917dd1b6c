"""How fast is the course's ``MoELayer``?  Forward + backward time on the CPU.

At each size, and measured side by side in one run (the variants take turns
inside every repeat, so a busy machine slows them all alike), it times:

* ``moe``     ``moe_helpers.moe.MoELayer``: token slots sorted by expert, each
              expert run once on its contiguous slice, outputs scatter-added back;
* ``dense``   the dense SwiGLU ``FeedForward`` doing the same active work per
              token: hidden size ``top_k * d_ff`` (what the MoE costs at best);
* ``naive``   a per-expert loop with boolean masks: every expert computes on the
              tokens whose top k contains it (the first version most people write);
* ``hf-...``  ``transformers``' (a dependency of the course)
              ``MixtralSparseMoeBlock`` holding the same weights: what a
              practitioner would otherwise use.  Recent versions choose an experts
              implementation (``eager`` loop or ``grouped_mm``); each available one
              is timed.

Every variant is first checked to compute the same outputs and input gradients
as ``MoELayer``.  Targets: moe / dense <= 1.1, and faster than the transformers
block, at the ``laptop`` size and larger; the script exits non-zero when one is
missed.

    python benchmarks/moe_layer.py                          # all sizes, torch's default threads
    python benchmarks/moe_layer.py --quick                  # laptop size and one larger, fewer repeats
    python benchmarks/moe_layer.py --threads 1 --clock cpu  # the arithmetic alone, steady on a busy machine

On a machine shared with other jobs, multi-threaded timings mostly measure
waits for the scheduler, once per operation: the MoE layer runs E times as many
matrix products as the dense FFN (each E times smaller), so it pays those waits
E times as often.  ``--threads 1 --clock cpu`` takes them out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from moe_helpers.config import preset
from moe_helpers.layers import FeedForward
from moe_helpers.moe import MoELayer

TARGET_MOE_OVER_DENSE = 1.1
SEQ_LEN = 128   # tokens per sequence; every size's token count is a multiple of it


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    d_ff: int
    num_experts: int
    top_k: int
    num_tokens: int


def benchmark_sizes(quick: bool) -> list[Size]:
    """The ``laptop`` preset's MoE layer (tokens = one training batch) and larger ones."""
    laptop = preset("laptop")
    sizes = [
        Size("laptop", laptop.model.d_model, laptop.model.d_ff, laptop.num_experts, laptop.top_k,
             laptop.train.batch_size * laptop.train.seq_len),
        Size("512x8", 512, 1024, 8, 2, 2048),
        Size("1024x8", 1024, 2048, 8, 2, 1024),
        Size("512x16k1", 512, 1024, 16, 1, 2048),
    ]
    return sizes[:2] if quick else sizes


# ----------------------------------------------------------------- the variants
def naive_masked_moe(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """The MoE output with one boolean mask per expert (same router and experts as ``layer``).

    For each expert: which tokens chose it, with what weight; run it on those
    tokens and add the weighted result back.  Correct, but every expert scans
    all N tokens and the masked gathers and scatters are paid E times.
    """
    tokens = x.reshape(-1, x.shape[-1])                                        # (N, d)
    top_k_weights, top_k_experts = layer.router.route(layer.router.logits(tokens))  # (N, k), (N, k)
    output = torch.zeros_like(tokens)                                          # (N, d)
    for expert_index, expert in enumerate(layer.experts):
        chosen = top_k_experts == expert_index                                 # (N, k)
        token_mask = chosen.any(dim=-1)                                        # (N,)
        if not token_mask.any():
            continue
        gate = (top_k_weights * chosen).sum(dim=-1)                            # (N,) 0 where not chosen
        expert_output = expert(tokens[token_mask]) * gate[token_mask, None]    # (N_e, d)
        output[token_mask] += expert_output
    return output.reshape(x.shape)


def dense_active_ffn(size: Size) -> FeedForward:
    """A dense SwiGLU FFN with the MoE's active hidden size per token, ``top_k * d_ff``."""
    return FeedForward(size.d_model, size.top_k * size.d_ff)


def transformers_blocks(layer: MoELayer) -> tuple[dict[str, nn.Module], str]:
    """``MixtralSparseMoeBlock``s holding ``layer``'s weights, one per experts implementation.

    Returns ``({label: block}, description of the weight layout)``. transformers 5
    fuses the experts into 3-D tensors ``gate_up_proj`` (E, 2 d_ff, d) = [w1; w3]
    and ``down_proj`` (E, d, d_ff) = w2.
    """
    import transformers
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    d_model, d_ff = layer.router.in_features, layer.experts[0].w1.out_features
    config_args = dict(hidden_size=d_model, intermediate_size=d_ff, num_local_experts=layer.num_experts,
                       num_experts_per_tok=layer.top_k, router_jitter_noise=0.0)
    probe = MixtralConfig(**config_args)
    implementations = ["eager", "grouped_mm"] if hasattr(probe, "_experts_implementation") else [None]
    blocks, layout = {}, ""
    for implementation in implementations:
        config = MixtralConfig(**config_args)
        if implementation is not None:
            config._experts_implementation = implementation
        block = MixtralSparseMoeBlock(config)
        layout = copy_weights_into_mixtral(layer, block)
        blocks["hf" if implementation is None else f"hf-{implementation}"] = block
    return blocks, f"transformers {transformers.__version__}, {layout}"


@torch.no_grad()
def copy_weights_into_mixtral(layer: MoELayer, block: nn.Module) -> str:
    """Copy router and expert weights of ``layer`` into a ``MixtralSparseMoeBlock``; return the layout."""
    block.gate.weight.copy_(layer.router.weight)                               # (E, d)
    experts = block.experts
    for index, expert in enumerate(layer.experts):
        experts.gate_up_proj[index].copy_(torch.cat([expert.w1.weight, expert.w3.weight]))  # (2 d_ff, d)
        experts.down_proj[index].copy_(expert.w2.weight)                                   # (d, d_ff)
    return "fused expert tensors gate_up_proj / down_proj"


def as_tensor(output) -> torch.Tensor:
    """Older ``MixtralSparseMoeBlock``s return ``(hidden_states, router_logits)``."""
    return output[0] if isinstance(output, tuple) else output


# ------------------------------------------------------------------- timing
def forward_backward(function: Callable[[torch.Tensor], torch.Tensor], module: nn.Module,
                     x: torch.Tensor, output_grad: torch.Tensor) -> torch.Tensor:
    """One forward and backward pass; returns the input gradient."""
    module.zero_grad(set_to_none=True)
    x.grad = None
    as_tensor(function(x)).backward(output_grad)
    return x.grad


def check_same_function(reference: Callable, others: dict[str, Callable], modules: dict[str, nn.Module],
                        x: torch.Tensor, output_grad: torch.Tensor, tolerance: float = 1e-4) -> None:
    """Every variant must give the reference's outputs and input gradients."""
    with torch.no_grad():
        expected = reference(x)
    expected_grad = forward_backward(reference, modules["moe"], x, output_grad).clone()
    for name, function in others.items():
        with torch.no_grad():
            got = as_tensor(function(x))
        got_grad = forward_backward(function, modules[name], x, output_grad)
        scale = expected.abs().max().item()
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance * scale,
                                   msg=lambda m: f"{name} output differs from MoELayer: {m}")
        torch.testing.assert_close(got_grad, expected_grad, rtol=tolerance,
                                   atol=tolerance * expected_grad.abs().max().item(),
                                   msg=lambda m: f"{name} input gradient differs from MoELayer: {m}")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(functions: dict[str, Callable], modules: dict[str, nn.Module], x: torch.Tensor,
                     output_grad: torch.Tensor, warmup: int, repeats: int,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median milliseconds of forward + backward for each variant.

    The variants take turns inside every repeat (in a rotating order), so
    that load from other processes falls on all of them alike."""
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            forward_backward(functions[name], modules[name], x, output_grad)
    times = {name: [] for name in names}
    for repeat in range(repeats):
        rotation = repeat % len(names)
        for name in names[rotation:] + names[:rotation]:
            started = clock()
            forward_backward(functions[name], modules[name], x, output_grad)
            times[name].append(1e3 * (clock() - started))
    return {name: statistics.median(values) for name, values in times.items()}


def benchmark(size: Size, warmup: int, repeats: int, clock: Callable[[], float] = time.perf_counter,
              seed: int = 0) -> tuple[dict[str, float], str, float]:
    """Times of every variant at one size, the transformers layout, and the largest expert share."""
    torch.manual_seed(seed)
    layer = MoELayer(size.d_model, size.d_ff, size.num_experts, size.top_k)
    dense = dense_active_ffn(size)
    hf_blocks, layout = transformers_blocks(layer)
    x = torch.randn(size.num_tokens // SEQ_LEN, SEQ_LEN, size.d_model, requires_grad=True)  # (B, T, d)
    output_grad = torch.randn_like(x)

    modules = {"moe": layer, "dense": dense, "naive": layer, **hf_blocks}
    functions = {"moe": layer, "dense": dense, "naive": lambda inputs: naive_masked_moe(layer, inputs),
                 **hf_blocks}
    check_same_function(layer, {name: functions[name] for name in ("naive", *hf_blocks)},
                        modules, x, output_grad)
    with torch.no_grad():
        _, routing = layer(x, return_routing=True)
    largest_share = routing.load_share.max().item()
    return time_interleaved(functions, modules, x, output_grad, warmup, repeats, clock), layout, largest_share


# ------------------------------------------------------------------- report
def print_table(rows: list[tuple[Size, dict[str, float], float]]) -> None:
    names = list(dict.fromkeys(name for _, times, _ in rows for name in times))
    others = [name for name in names if name != "moe"]
    header = (f"{'size':<9} {'tokens':>6} {'d':>5} {'d_ff':>5} {'E':>3} {'k':>2} {'max share':>9} | "
              + " ".join(f"{name + ' ms':>15}" for name in names) + " | "
              + " ".join(f"{'moe/' + name:>15}" for name in others))
    print(header)
    print("-" * len(header))
    for size, times, share in rows:
        cells = " ".join(f"{times[name]:>15.1f}" if name in times else f"{'-':>15}" for name in names)
        ratios = " ".join(f"{times['moe'] / times[name]:>15.2f}" if name in times else f"{'-':>15}"
                          for name in others)
        print(f"{size.name:<9} {size.num_tokens:>6} {size.d_model:>5} {size.d_ff:>5} "
              f"{size.num_experts:>3} {size.top_k:>2} {share:>9.2f} | {cells} | {ratios}")


def print_verdict(rows: list[tuple[Size, dict[str, float], float]]) -> list[str]:
    """Say, per size, whether the targets were met; return the missed ones."""
    missed = []
    for size, times, _ in rows:
        meets = times["moe"] <= TARGET_MOE_OVER_DENSE * times["dense"]
        verdicts = [f"moe/dense {times['moe'] / times['dense']:.2f} "
                    f"({'meets' if meets else 'misses'} <= {TARGET_MOE_OVER_DENSE})"]
        if not meets:
            missed.append(f"{size.name}: moe/dense {times['moe'] / times['dense']:.2f}")
        for name in (name for name in times if name.startswith("hf")):
            faster = times["moe"] < times[name]
            verdicts.append(f"{'faster' if faster else 'slower'} than {name}")
            if not faster:
                missed.append(f"{size.name}: slower than {name}")
        print(f"{size.name}: " + ", ".join(verdicts))
    return missed


def print_machine_load() -> None:
    """Warn when other processes compete for the cores: then every multi-threaded
    op waits for the scheduler, and a layer made of many ops (E experts x 3
    matrix products, forward and backward) pays that wait many more times than
    one dense FFN.  ``--threads 1`` measures the arithmetic without that wait."""
    if not hasattr(os, "getloadavg"):
        return
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"load average {load:.1f} on {cores} cores"
          + (" -- busy machine: multi-threaded timings include waits for the CPU" if load > cores else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, fewer repeats (a minute or two)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 15, quick 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, steady on a busy machine "
                             "with --threads 1 (with more threads it also counts threads spinning while they wait)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 15)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, {args.clock} clock; "
          f"forward + backward, median of {repeats} interleaved repeats after {args.warmup} warm-up runs")
    print_machine_load()
    rows, layout = [], None
    for size in benchmark_sizes(args.quick):
        times, layout, share = benchmark(size, args.warmup, repeats, CLOCKS[args.clock])
        rows.append((size, times, share))
        print(f"  {size.name}: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in times.items()), flush=True)
    print(f"MixtralSparseMoeBlock: {layout}")
    print()
    print_table(rows)
    print()
    missed = print_verdict(rows)
    print("\nall targets met" if not missed else "\nmissed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
