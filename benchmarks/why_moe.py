"""Is an MoE worth it?  Notebook 03's comparison, longer: dense vs MoE from scratch, several seeds.

Three models share everything but the feed-forward network (``moe_helpers.compare``):

* ``dense``              -- the baseline (by default d_model 32, 2 blocks, 2 heads, d_ff 128);
* ``moe_equal_active``   -- 8 experts of d_ff 64, top-2: the dense model's active parameters
  and FLOPs per token, plus the routers (+0.8% active parameters, +0.9% FLOPs per token);
* ``dense_equal_total``  -- one FFN as wide as all the experts and the router (d_ff 515):
  the MoE's total parameters (+0.05%), at 2.3x the dense model's FLOPs per token.

All three are trained from scratch with one recipe (notebook 03's: AdamW, peak lr 1e-2,
20 warmup steps then cosine decay, batches of 16 x 64 tokens, vocabulary 512 on the first
5 000 stories), the same batches and, within a seed, the same initial weights outside the
FFN.  The script prints the arms' exact sizes, one line per run, the final validation loss
(mean ± sample std, min, max) of each arm, the seed-by-seed gaps, the validation loss of
each arm at the training FLOPs the dense model spent in all (equal compute), the wall-clock
seconds per training step of each arm (the three taking turns, step by step) with their ratios,
and each arm's loss at the dense model's training time.  It exits non-zero unless the MoE ends at
least ``--margin`` nats below the equal-active dense model on average and below it for
every seed.

    OMP_NUM_THREADS=1 python benchmarks/why_moe.py                        # 1000 steps, 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/why_moe.py --steps 250 --seeds 5 --margin 0.03  # notebook 03's length
    OMP_NUM_THREADS=1 python benchmarks/why_moe.py --d-model 64 --d-ff 256 --heads 2

Measured on a 2-core CPU shared with other jobs (one torch thread), 1000 steps, 3 seeds, 4.9 min:
dense 1.687 ± 0.026, MoE 1.438 ± 0.043 (0.25 lower, 0.21 to 0.30 seed by seed), equal-total dense
1.482 ± 0.064 (0.20 below the dense model; the MoE 0.04 below it on average: +0.10, +0.05, -0.01).
At the dense model's training FLOPs the equal-total dense model is at step 436 and 2.14.  Per step the
MoE takes 1.63x the dense model's time (for 1.009x its FLOPs), the equal-total dense model 1.85x (for
2.30x); at the dense model's training time the MoE, read off its curve at step 613, is at 1.76.
With ``--steps 150`` the MoE ends at 3.03 (notebook 03 reads it at step ~155 of its 250-step run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from moe_helpers.compare import Spread, compare_from_scratch, matched_configs, time_training_steps
from moe_helpers.config import ModelConfig, TrainConfig
from moe_helpers.data import prepare_data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--d-ff", type=int, default=128, help="the dense baseline's FFN width")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--stories", type=int, default=5000, help="training stories (validation: a tenth)")
    parser.add_argument("--data", default="offline", help="offline (default), hub, a hub-shaped folder or a file")
    parser.add_argument("--timing-rounds", type=int, default=40, help="timed training steps per model (default 40)")
    parser.add_argument("--margin", type=float, default=0.1,
                        help="nats the MoE must gain over the equal-active dense model on average (default 0.1)")
    args = parser.parse_args()

    dense = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                        d_ff=args.d_ff, max_seq_len=args.seq_len)
    configs = matched_configs(dense, args.experts, args.top_k)
    train = TrainConfig(steps_phase1=args.steps, lr_phase1=args.lr, batch_size=args.batch_size,
                        seq_len=args.seq_len, warmup_steps=20, log_every=10, eval_every=args.eval_every,
                        eval_batches=args.eval_batches, device="cpu", precision="fp32")
    data = prepare_data(args.data, vocab_size=args.vocab, limit=args.stories, val_limit=max(1, args.stories // 10),
                        tokenizer_limit=args.stories)
    tokens = args.steps * train.batch_size * train.seq_len
    print(f"training reads {tokens / 1e6:.2f} M tokens per run = {tokens / len(data.train):.2f} passes\n")

    started = time.perf_counter()
    comparison = compare_from_scratch(configs, data, train, seeds=tuple(range(args.seeds)))
    minutes = (time.perf_counter() - started) / 60

    sizes = comparison.sizes
    print(f"\n{'arm':<40}{'total':>12}{'active':>12}{'FLOPs/token':>14}{'vs dense':>10}")
    for size in sizes.values():
        print(f"{size.label:<40}{size.total:>12,}{size.active:>12,}{size.flops_forward:>14,.0f}"
              f"{size.flops_forward / sizes['dense'].flops_forward:>9.3f}x")

    print(f"\n{args.steps} steps, {args.seeds} seeds, batch {train.batch_size} x {train.seq_len}, "
          f"peak lr {args.lr} ({minutes:.1f} min in all)")
    print(comparison.format_summary())
    steps = comparison.band("dense").steps
    print("\nmean validation loss at steps " + " ".join(f"{s:>6}" for s in steps))
    for arm in comparison.arms:
        print(f"  {arm:<28}" + " ".join(f"{loss:6.3f}" for loss in comparison.band(arm).mean))

    moe_gain = comparison.paired_gaps("moe_equal_active", "dense")
    wide_gain = comparison.paired_gaps("dense_equal_total", "dense")
    wide_vs_moe = comparison.paired_gaps("moe_equal_active", "dense_equal_total")
    print("\nseed by seed (positive: the first model is lower):")
    for name, gaps in (("MoE below equal-active dense", moe_gain), ("equal-total dense below dense", wide_gain),
                       ("MoE below equal-total dense", wide_vs_moe)):
        print(f"  {name:<32} {' '.join(f'{g:+.4f}' for g in gaps)}   mean {Spread.of(gaps)}")

    budget = comparison.training_flops("dense", [args.steps])[0]
    print(f"\nat the dense model's {budget / 1e12:.3f} TFLOPs of training (equal compute):")
    for arm in comparison.arms:
        step = args.steps * sizes["dense"].flops_training / sizes[arm].flops_training
        print(f"  {arm:<28} step {step:6.0f}: {Spread.of(comparison.losses_at_flops(arm, budget))}")

    step_times = time_training_steps(configs, data, train, rounds=args.timing_rounds)
    seconds = {arm: statistics.median(times) for arm, times in step_times.items()}
    print(f"\nwall-clock per training step (median of {args.timing_rounds} steps, the three models taking turns):")
    for arm in comparison.arms:
        flop_ratio = sizes[arm].flops_training / sizes["dense"].flops_training
        print(f"  {arm:<28} {1e3 * seconds[arm]:6.1f} ms  x{seconds[arm] / seconds['dense']:.2f} of dense "
              f"(FLOPs per token x{flop_ratio:.3f}; in the runs: {1e3 * comparison.step_seconds(arm).mean:.1f} ms)")
    dense_seconds = args.steps * seconds["dense"]
    print(f"\nat the dense model's {dense_seconds:.1f} s of training steps (equal wall-clock time):")
    for arm in comparison.arms:
        print(f"  {arm:<28} step {dense_seconds / seconds[arm]:6.0f}: "
              f"{Spread.of(comparison.losses_at_seconds(arm, dense_seconds, seconds[arm]))}")

    mean_gain = statistics.fmean(moe_gain)
    if mean_gain < args.margin or min(moe_gain) <= 0:
        print(f"FAIL: the MoE gains {mean_gain:.4f} nats on average (min {min(moe_gain):+.4f}); "
              f"asked for >= {args.margin} and a gain for every seed")
        return 1
    print(f"OK: the MoE beats the equal-active dense model by {mean_gain:.4f} nats (>= {args.margin}), every seed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
