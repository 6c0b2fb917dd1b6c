"""Dense or MoE, from scratch (``moe_helpers.compare``): the three matched arms have the
parameter counts they claim, bad input is refused, the statistics are the textbook ones,
and a small comparison trains every arm for every seed.  (No wall-clock figure is asserted
here: notebook 03 and ``benchmarks/why_moe.py`` measure those.)"""

from __future__ import annotations

import math

import pytest
import torch

from moe_helpers.accounting import count_from_config, count_parameters, flops_per_token
from moe_helpers.compare import (ARMS, Spread, arm_sizes, compare_from_scratch, format_arm_table,
                                 is_ffn_weight, matched_configs, seconds_per_step, share_non_ffn_weights,
                                 time_training_steps)
from moe_helpers.config import ModelConfig, TrainConfig
from moe_helpers.model import GPT
from moe_helpers.train import History

BASE = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=16)


# ------------------------------------------------------------ the matched configs
def test_three_arms_and_their_shapes():
    arms = matched_configs(BASE, num_experts=8, top_k=2)
    assert tuple(arms) == ARMS
    assert arms["dense"] == BASE
    moe, wide = arms["moe_equal_active"], arms["dense_equal_total"]
    assert (moe.num_experts, moe.top_k, moe.d_ff) == (8, 2, 24)          # two experts of 24 = one FFN of 48
    assert not wide.is_moe and wide.d_ff == 195                           # round((3*32*24*8 + 32*8) / 96) = round(194.67)
    for cfg in arms.values():                                             # everything but the FFN is the baseline's
        assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads) == (64, 32, 2, 4)


def test_exact_counts_measured_on_built_models():
    arms = matched_configs(BASE, num_experts=8, top_k=2)
    counts = {arm: count_parameters(GPT(cfg)) for arm, cfg in arms.items()}
    for arm, cfg in arms.items():
        assert counts[arm] == count_from_config(cfg)
    # by hand: embedding + head 2*64*32, attention 2*4*32^2, norms 5*32, FFN 2*3*32*48
    assert counts["dense"].total == counts["dense"].active == 4096 + 8192 + 160 + 9216 == 21_664
    # MoE: 8 experts of 3*32*24 and a router 32*8 per block; 2 of the 8 experts active
    assert counts["moe_equal_active"].total == 4096 + 8192 + 160 + 2 * (8 * 2304 + 256) == 49_824
    assert counts["moe_equal_active"].active == 21_664 + 2 * 256 == 22_176
    assert counts["dense_equal_total"].total == 4096 + 8192 + 160 + 2 * 3 * 32 * 195 == 49_888


def test_top1_uses_switch_gates_and_dense_d_ff_is_the_dense_width():
    top1 = matched_configs(BASE, 4, 1)["moe_equal_active"]
    assert top1.d_ff == 48 and not top1.renormalize_top_k                 # a renormalised top-1 gate is always 1
    assert matched_configs(BASE, 4, 2)["moe_equal_active"].renormalize_top_k
    odd = BASE.replace(dense_d_ff=64)                                     # a dense model's FFN width is dense_hidden
    arms = matched_configs(odd, 4, 2)
    assert arms["moe_equal_active"].d_ff == 32 and arms["moe_equal_active"].dense_d_ff is None
    assert count_from_config(arms["moe_equal_active"]).active - count_from_config(odd).active == 2 * 32 * 4
    assert arms["dense_equal_total"].dense_hidden == arms["dense_equal_total"].d_ff == round((3 * 32 * 32 * 4 + 128) / 96)


@pytest.mark.parametrize("num_experts, top_k", [(2, 1), (4, 1), (8, 1), (8, 2), (16, 4), (6, 3)])
def test_equal_active_and_equal_total_within_stated_tolerance(num_experts, top_k):
    dense = BASE.replace(d_ff=96)
    arms = matched_configs(dense, num_experts, top_k)
    base, moe, wide = (count_from_config(arms[arm]) for arm in ARMS)
    router = dense.n_layers * dense.d_model * num_experts
    # equal active: exactly the dense model's, plus the router (stored and used by every token)
    assert moe.active - base.active == router
    assert moe.active / base.active - 1 < 0.05
    # equal total: the MoE's, up to the rounding of one hidden unit (3 d parameters) per block
    assert abs(wide.total - moe.total) <= 1.5 * dense.d_model * dense.n_layers
    assert abs(wide.total / moe.total - 1) < 1e-2
    # FLOPs per token follow the active matmul parameters: the router adds 2 d E per block
    seq_len = 16
    assert (flops_per_token(arms["moe_equal_active"], seq_len).forward
            - flops_per_token(dense, seq_len).forward) == 2 * router


@pytest.mark.parametrize("dense, num_experts, top_k, message", [
    (BASE.replace(num_experts=4, top_k=2), 8, 2, "dense ModelConfig"),
    (BASE, 1, 1, "num_experts must be >= 2"),
    (BASE, 0, 1, "num_experts must be >= 2"),
    (BASE, 8, 0, "top_k must be in 1..num_experts-1"),
    (BASE, 8, 8, "top_k must be in 1..num_experts-1"),
    (BASE, 8, 9, "top_k must be in 1..num_experts-1"),
    (BASE, 8, 5, "divisible by top_k"),                      # 48 % 5 != 0
    (BASE.replace(dense_d_ff=50), 8, 4, "divisible by top_k"),  # the dense width is dense_d_ff here
    (BASE, 8.0, 2, "num_experts must be an integer"),
    (BASE, 8, True, "top_k must be an integer"),
    ("dense", 8, 2, "dense ModelConfig"),
])
def test_impossible_input_is_refused(dense, num_experts, top_k, message):
    with pytest.raises(ValueError, match=message):
        matched_configs(dense, num_experts, top_k)


def test_arm_table_lists_exact_counts():
    sizes = arm_sizes(matched_configs(BASE, 8, 2), seq_len=16)
    table = format_arm_table(sizes)
    assert "21,664" in table and "49,824" in table and "49,888" in table
    assert sizes["dense_equal_total"].flops_training == 3 * sizes["dense_equal_total"].flops_forward


# ------------------------------------------------------------ shared initial weights
def test_share_non_ffn_weights_copies_everything_but_the_ffns():
    arms = matched_configs(BASE, 4, 1)
    torch.manual_seed(0)
    reference = GPT(arms["dense"]).state_dict()
    torch.manual_seed(1)
    moe = GPT(arms["moe_equal_active"])
    copied = share_non_ffn_weights(moe, reference)
    shared = [name for name in reference if not is_ffn_weight(name)]
    assert copied == len(shared) == 1 + 1 + 2 * (4 + 2) + 1    # embedding, head, 2 x (wq wk wv wo, 2 norms), norm
    state = moe.state_dict()
    for name in shared:
        assert torch.equal(state[name], reference[name]), name
    assert not torch.equal(state["layers.0.ffn.experts.0.w1.weight"][:, :8], reference["layers.0.ffn.w1.weight"][:, :8])
    with pytest.raises(ValueError, match="same shape"):
        share_non_ffn_weights(GPT(BASE.replace(d_model=16, n_heads=2)), reference)


# ------------------------------------------------------------ statistics
def test_spread_is_mean_sample_std_min_max():
    spread = Spread.of([1.0, 2.0, 4.0])
    assert spread.mean == pytest.approx(7 / 3)
    assert spread.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert (spread.min, spread.max, spread.n) == (1.0, 4.0, 3)
    assert Spread.of([3.0]).std == 0.0
    with pytest.raises(ValueError):
        Spread.of([])


def _record(step, seconds, val_loss=None):
    return {"phase": 1, "step": step, "seconds": seconds, "val_loss": val_loss}


def test_seconds_per_step_reads_only_intervals_without_evaluation():
    # log every 10, evaluate at 0 and 25 (a slow evaluation): training takes 0.1 s a step, except a
    # slow first interval (warm-up, skipped) and one disturbed by another process (not the fastest)
    history = History([_record(0, 0.5, 7.0), _record(10, 3.0), _record(20, 4.0), _record(25, 9.5, 5.0),
                       _record(30, 10.0), _record(40, 11.0), _record(50, 14.0)])
    assert seconds_per_step(history) == pytest.approx(0.1)
    only_evaluations = History([_record(0, 0.0, 7.0), _record(10, 1.0, 6.0)])
    with pytest.raises(ValueError, match="log_every < eval_every"):
        seconds_per_step(only_evaluations)


# ------------------------------------------------------------ a small comparison
@pytest.fixture(scope="module")
def small_training():
    return TrainConfig(steps_phase1=30, lr_phase1=1e-2, batch_size=8, seq_len=32, warmup_steps=5,
                       log_every=5, eval_every=15, eval_batches=2, device="cpu")


@pytest.mark.slow
def test_compare_from_scratch_trains_every_arm_for_every_seed(tiny, small_training):
    dense = ModelConfig(vocab_size=tiny.tokenizer.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                        max_seq_len=32)
    seeds = (0, 1)
    comparison_configs = matched_configs(dense, 4, 1)
    comparison = compare_from_scratch(comparison_configs, tiny, small_training, seeds, verbose=False)
    assert [(run.arm, run.seed) for run in comparison.runs] == [(arm, seed) for seed in seeds for arm in ARMS]
    summary = comparison.summary()
    for arm in ARMS:
        runs = comparison.runs_of(arm)
        assert [run.seed for run in runs] == list(seeds)
        for run in runs:
            assert run.eval_steps == [0, 15, 30]
            assert run.final_val_loss < run.val_losses[0] - 0.5          # every run learned
            assert run.seconds_per_step > 0
        assert summary[arm].n == len(seeds)
        assert summary[arm].min <= summary[arm].mean <= summary[arm].max
        band = comparison.band(arm)
        assert band.mean.shape == (3,) and (band.min <= band.mean).all() and (band.mean <= band.max).all()
        flops = comparison.training_flops(arm, band.steps)
        assert flops[-1] == 30 * 8 * 32 * comparison.sizes[arm].flops_training
    # paired gaps: the other arm's final loss minus this arm's, seed by seed
    assert comparison.paired_gaps("moe_equal_active", "dense") == pytest.approx(
        [d - m for d, m in zip(comparison.final_losses("dense"), comparison.final_losses("moe_equal_active"))])
    assert "final val loss" in comparison.format_summary()
    # losses at a budget: the whole run's FLOPs give the final losses; more than that is refused
    end = comparison.training_flops("dense_equal_total", [30])[0]
    assert comparison.losses_at_flops("dense_equal_total", end) == pytest.approx(
        comparison.final_losses("dense_equal_total"))
    with pytest.raises(ValueError, match="outside its run"):
        comparison.losses_at_flops("dense", 2 * comparison.training_flops("dense", [30])[0])
    assert comparison.losses_at_seconds("dense", 30 * 0.01, seconds_per_step=0.01) == pytest.approx(
        comparison.final_losses("dense"))
    # timing in turns: one list per model, one entry per timed round (no figure is asserted)
    times = time_training_steps(comparison_configs, tiny, small_training, rounds=2, warmup=1)
    assert {arm: len(seconds) for arm, seconds in times.items()} == dict.fromkeys(ARMS, 2)


def test_compare_refuses_bad_settings(tiny, small_training):
    arms = matched_configs(BASE, 4, 1)
    with pytest.raises(ValueError, match="distinct"):
        compare_from_scratch(arms, tiny, small_training, seeds=(0, 0), verbose=False)
    with pytest.raises(ValueError, match="seeds"):
        compare_from_scratch(arms, tiny, small_training, seeds=(), verbose=False)
    with pytest.raises(ValueError, match="log_every"):
        compare_from_scratch(arms, tiny, small_training.replace(log_every=15), seeds=(0,), verbose=False)
    with pytest.raises(ValueError, match="at least one"):
        compare_from_scratch({}, tiny, small_training, seeds=(0,), verbose=False)
