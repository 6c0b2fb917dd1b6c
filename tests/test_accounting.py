"""Parameter accounting: measured and by-formula counts agree field by field, the
original note's banners (numbers and layout), FLOPs against torch's own FLOP
counter, memory against real tensors and optimiser state, published MoE
models against their published figures, and the calculator's logic."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from moe_helpers.accounting import (PARTS, ParameterCounts, count_from_config, count_parameters,
                                    flops_per_token, format_banner, memory_bytes, phase_banner)
from moe_helpers.config import ModelConfig, preset
from moe_helpers.model import GPT
from moe_helpers.real_models import (PUBLISHED_MODELS, comparison_table, computed_counts,
                                     format_comparison, parse_count, published_model,
                                     rounds_to_published)
from moe_helpers.widgets import (ParamCalculator, active_by_part, calculator_config,
                                 calculator_presets, calculator_summary, plot_parameter_breakdown)


def build(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


BASE = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, d_ff=48, max_seq_len=16)

GRID = {
    "dense": ModelConfig(**BASE),
    "dense_tied": ModelConfig(**BASE, tie_embeddings=True),
    "dense_gqa": ModelConfig(**BASE, n_kv_heads=2),
    "dense_mqa_head_dim": ModelConfig(**BASE, n_kv_heads=1, head_dim=12),
    "moe": ModelConfig(**BASE, num_experts=4, top_k=2),
    "moe_one_expert": ModelConfig(**BASE, num_experts=1, top_k=1),
    "moe_all_experts_active": ModelConfig(**BASE, num_experts=3, top_k=3),
    "moe_top1_tied": ModelConfig(**BASE, num_experts=8, top_k=1, tie_embeddings=True),
    "moe_gqa_head_dim": ModelConfig(**BASE, num_experts=4, top_k=2, n_kv_heads=2, head_dim=6),
    "moe_shared": ModelConfig(**BASE, num_experts=4, top_k=2, num_shared_experts=2, shared_d_ff=24),
    "moe_shared_default_size": ModelConfig(**BASE, num_experts=4, top_k=1, num_shared_experts=1),
    "moe_first_dense": ModelConfig(**BASE, num_experts=4, top_k=2, first_k_dense=1, dense_d_ff=80),
    "moe_all_blocks_dense": ModelConfig(**BASE, num_experts=4, top_k=2, first_k_dense=3),
    "moe_everything": ModelConfig(**BASE, num_experts=6, top_k=2, n_kv_heads=1, head_dim=10,
                                  num_shared_experts=1, shared_d_ff=20, first_k_dense=2,
                                  dense_d_ff=64, tie_embeddings=True),
}


# ------------------------------------------------- measured == by formula
@pytest.mark.parametrize("name", GRID)
def test_measured_and_formula_counts_agree_field_by_field(name):
    cfg = GRID[name]
    measured, formula = count_parameters(build(cfg)), count_from_config(cfg)
    for field in dataclasses.fields(ParameterCounts):
        assert getattr(measured, field.name) == getattr(formula, field.name), field.name
    assert measured.efficiency == formula.efficiency
    assert set(formula.by_part) == set(PARTS)


@pytest.mark.parametrize("name", GRID)
def test_total_is_active_plus_inactive_and_parts_add_up(name):
    counts = count_from_config(GRID[name])
    assert counts.total == counts.active + counts.inactive
    assert counts.total == sum(counts.by_part.values())
    assert counts.total == sum(p.numel() for p in build(GRID[name]).parameters())


@pytest.mark.parametrize("name", ["moe", "moe_shared", "moe_first_dense", "moe_everything"])
def test_inactive_is_the_notes_formula_on_the_built_model(name):
    """The original note: inactive = expert_params * (E - k) * blocks, measured on modules."""
    model = build(GRID[name])
    moe_layers = model.moe_layers
    expert_params = sum(p.numel() for p in moe_layers[0].experts[0].parameters())
    num_experts, top_k = moe_layers[0].num_experts, moe_layers[0].top_k
    counts = count_parameters(model)
    assert counts.inactive == expert_params * (num_experts - top_k) * len(moe_layers)
    assert counts.experts_idle == (num_experts - top_k) * len(moe_layers)


def test_laptop_phases_by_hand():
    """vocab 2048, d 128, 4 layers, d_ff 384, untied; phase 2: 4 experts, top-2; phase 3: twice as
    wide (d 256, d_ff 768) and 2 blocks deeper (docs/measurements.md's 1.38 M -> 3.15 M -> 16.79 M)."""
    dense, moe, grown = preset("laptop").phase_configs()
    embedding = 2048 * 128
    attention = 4 * 128 * 128
    ffn = 3 * 128 * 384
    norms = (2 * 4 + 1) * 128
    assert count_from_config(dense).total == 2 * embedding + 4 * (attention + ffn) + norms == 1_377_408
    moe_counts = count_from_config(moe)
    assert moe_counts.total == 2 * embedding + 4 * (attention + 4 * ffn + 128 * 4) + norms
    assert moe_counts.inactive == 4 * 2 * ffn
    assert moe_counts.experts_idle == 8
    wide_embedding, wide_attention, wide_ffn = 2048 * 256, 4 * 256 * 256, 3 * 256 * 768
    grown_counts = count_from_config(grown)
    assert grown_counts.total == (2 * wide_embedding + 6 * (wide_attention + 4 * wide_ffn + 256 * 4)
                                  + (2 * 6 + 1) * 256) == 16_786_688
    assert grown_counts.inactive == 6 * 2 * wide_ffn


def test_count_from_config_allocates_nothing_and_is_right_for_mixtral():
    """By formula: not a single tensor operation for a 47 B-parameter model."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOperations(TorchDispatchMode):
        operations = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountOperations.operations += 1
            return func(*args, **(kwargs or {}))

    cfg = published_model("Mixtral-8x7B").config
    with CountOperations():
        counts = count_from_config(cfg)
    assert CountOperations.operations == 0
    assert abs(counts.total / 46.7e9 - 1) < 0.01
    assert abs(counts.active / 12.9e9 - 1) < 0.01
    assert counts.experts_idle == 6 * 32


# ------------------------------------------------- the original note's banners
NOTE_DENSE = """\
============================================================
  Phase 1 — Dense
  Steps: 100  |  LR: 0.0003  |  Device: mps
  ─────────────────────────────────────────────────────────
  Total Parameters:   100.04 M
  Active Params/tok:  100.04 M  (Dense model)
  ─────────────────────────────────────────────────────────
============================================================"""

NOTE_MOE = """\
============================================================
  Phase 2 — MoE
  Steps: 100  |  LR: 0.0001  |  Device: mps
  ─────────────────────────────────────────────────────────
  Total Parameters:   371.64 M
  Active Params/tok:  138.88 M  (top-2 of 8 experts)
  Inactive Params:    232.76 M  (42 experts idle)
  ─────────────────────────────────────────────────────────
  Efficiency: 37.4% active per forward pass
============================================================"""

NOTE_PHASE3 = """\
============================================================
  Phase 3 — Large MoE (Bilateral Growth)
  Steps: 100  |  LR: 8e-05  |  Device: mps
  ─────────────────────────────────────────────────────────
  Total Parameters:  1467.60 M
  Active Params/tok:  548.70 M  (top-2 of 8 experts)
  Inactive Params:    918.90 M  (66 experts idle)
  ─────────────────────────────────────────────────────────
  Efficiency: 37.4% active per forward pass
============================================================"""


def note_counts(total, active, experts_idle=0, num_experts=0, top_k=0, moe_layers=0):
    return ParameterCounts(total=total, active=active, inactive=total - active, experts_idle=experts_idle,
                           by_part={}, num_experts=num_experts, top_k=top_k, moe_layers=moe_layers)


@pytest.mark.parametrize("expected, counts, title, lr", [
    (NOTE_DENSE, note_counts(100_040_000, 100_040_000), "Phase 1 — Dense", 3e-4),
    (NOTE_MOE, note_counts(371_640_000, 138_880_000, 42, 8, 2, 7), "Phase 2 — MoE", 1e-4),
    (NOTE_PHASE3, note_counts(1_467_600_000, 548_700_000, 66, 8, 2, 11),
     "Phase 3 — Large MoE (Bilateral Growth)", 8e-5),
], ids=["dense", "moe", "phase3"])
def test_banner_text_matches_the_note_line_by_line(expected, counts, title, lr, capsys):
    text = format_banner(title, counts, steps=100, lr=lr, device="mps")
    assert text.splitlines() == expected.splitlines()
    assert phase_banner(title, counts, 100, lr, "mps") == text
    assert capsys.readouterr().out.strip() == expected.strip()


def test_seed_preset_matches_the_notes_figures_within_a_thousandth():
    dense, moe, _ = (count_from_config(cfg) for cfg in preset("seed").phase_configs())
    assert abs(dense.total / 100.04e6 - 1) < 1e-3 and dense.active == dense.total
    assert abs(moe.total / 371.64e6 - 1) < 1e-3
    assert abs(moe.active / 138.88e6 - 1) < 1e-3
    assert abs(moe.inactive / 232.76e6 - 1) < 1e-3
    assert (moe.experts_idle, moe.num_experts, moe.top_k, moe.moe_layers) == (42, 8, 2, 7)
    assert f"{moe.efficiency:.1f}" == "37.4"


@pytest.mark.parametrize("phase, expected, title, lr", [
    (0, NOTE_DENSE, "Phase 1 — Dense", 3e-4), (1, NOTE_MOE, "Phase 2 — MoE", 1e-4)])
def test_seed_banners_have_the_notes_layout(phase, expected, title, lr):
    """The seed preset's own banners differ from the note's only in digits (and
    the dense one not even there)."""
    counts = count_from_config(preset("seed").phase_configs()[phase])
    ours = format_banner(title, counts, steps=100, lr=lr, device="mps").splitlines()
    digits_blanked = [re.sub(r"\d", "#", line) for line in ours]
    assert digits_blanked == [re.sub(r"\d", "#", line) for line in expected.splitlines()]
    if phase == 0:
        assert ours == expected.splitlines()


# ------------------------------------------------- FLOPs and memory
def test_flops_per_token_by_hand():
    """forward = 2 * (active matmul parameters) + 4 * L * T * H * head_dim (PaLM, app. B)."""
    cfg = ModelConfig(vocab_size=100, d_model=16, n_layers=2, n_heads=2, d_ff=24,
                      num_experts=4, top_k=2, max_seq_len=32)
    attention_weights = 4 * 16 * 16
    expert = 3 * 16 * 24
    router = 16 * 4
    lm_head = 100 * 16
    matmul = 2 * (attention_weights + 2 * expert + router) + lm_head
    attention_scores = 4 * 2 * 32 * 2 * 8
    flops = flops_per_token(cfg, seq_len=32)
    assert flops.forward == 2 * matmul + attention_scores
    assert flops.training == 3 * flops.forward
    tied = flops_per_token(cfg.replace(tie_embeddings=True), seq_len=32)
    assert tied.forward == flops.forward                  # the tied table still multiplies


@pytest.mark.parametrize("name", ["dense_tied", "moe", "moe_everything"])
def test_flops_per_token_equals_torchs_flop_counter(name):
    """Counted by torch on a real forward and backward pass (attention through the
    math kernel, so its matmuls are visible; no causal discount, like the formula)."""
    cfg = GRID[name]
    model = build(cfg)
    batch, seq_len = 2, cfg.max_seq_len
    idx = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx, idx).loss.backward()
    expected = flops_per_token(cfg, seq_len)
    assert counter.get_total_flops() / (batch * seq_len) == expected.training
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(idx)
    assert counter.get_total_flops() / (batch * seq_len) == expected.forward


def test_memory_bytes_by_hand():
    cfg = GRID["moe"]
    n = count_from_config(cfg).total
    fp32 = memory_bytes(cfg, torch.float32, "adamw")
    assert (fp32.weights, fp32.gradients, fp32.optimizer, fp32.total) == (4 * n, 4 * n, 8 * n, 16 * n)
    bf16 = memory_bytes(cfg, "bfloat16", "adamw")
    assert (bf16.weights, bf16.gradients, bf16.optimizer) == (2 * n, 2 * n, 8 * n)
    assert memory_bytes(cfg, torch.float16, "sgd").optimizer == 0
    assert memory_bytes(cfg, torch.float32, "sgd_momentum").optimizer == 4 * n
    inference = memory_bytes(cfg, torch.bfloat16, optimizer=None)
    assert (inference.weights, inference.gradients, inference.optimizer) == (2 * n, 0, 0)


def test_memory_bytes_matches_real_tensors_and_adamw_state():
    cfg = GRID["moe_shared"]
    model = build(cfg)
    expected = memory_bytes(cfg, torch.float32, "adamw")
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == expected.weights
    idx = torch.randint(0, cfg.vocab_size, (2, 8))
    output = model(idx, idx)
    (output.loss + output.aux_loss).backward()
    assert sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()) == expected.gradients
    optimizer = torch.optim.AdamW(model.parameters())
    optimizer.step()
    state_bytes = sum(tensor.numel() * tensor.element_size()
                      for state in optimizer.state.values()
                      for key, tensor in state.items() if key != "step")
    assert state_bytes == expected.optimizer


def test_moe_memory_follows_total_and_compute_follows_active():
    dense, moe, _ = preset("seed").phase_configs()
    memory_ratio = memory_bytes(moe).total / memory_bytes(dense).total
    compute_ratio = flops_per_token(moe, 512).forward / flops_per_token(dense, 512).forward
    assert memory_ratio == pytest.approx(count_from_config(moe).total / count_from_config(dense).total)
    assert memory_ratio > 3.5 and compute_ratio < 1.6


# ------------------------------------------------- invalid input
@pytest.mark.parametrize("changes", [
    dict(vocab_size=0), dict(d_model=-8), dict(n_layers=0), dict(d_ff=0), dict(n_heads=True),
    dict(d_model=30),                                  # not divisible by 4 heads
    dict(n_kv_heads=3),                                # 4 heads not a multiple of 3
    dict(head_dim=7),                                  # odd: rotary pairs need an even width
    dict(num_experts=-1), dict(num_experts=4, top_k=5), dict(num_experts=4, top_k=0),
    dict(num_shared_experts=1),                        # shared experts need an MoE
    dict(num_experts=4, first_k_dense=4),              # more dense blocks than blocks
    dict(num_experts=4, shared_d_ff=0, num_shared_experts=1),
], ids=repr)
def test_bad_configs_raise_value_error(changes):
    with pytest.raises(ValueError):
        ModelConfig(**{**BASE, **changes})


@pytest.mark.parametrize("dtype, optimizer", [("float7", "adamw"), (torch.int64, "adamw"),
                                              ("not_a_dtype", None), (torch.float32, "adam"),
                                              (torch.float32, "lion")])
def test_bad_dtype_or_optimizer_raise_value_error(dtype, optimizer):
    with pytest.raises(ValueError):
        memory_bytes(GRID["moe"], dtype, optimizer)


def test_bad_sequence_length_raises_value_error():
    with pytest.raises(ValueError):
        flops_per_token(GRID["dense"], seq_len=0)


# ------------------------------------------------- published models
@pytest.mark.parametrize("row", comparison_table(), ids=lambda row: row.name)
def test_published_totals_within_one_percent_and_active_within_two(row):
    assert abs(row.total_error) < 0.01
    assert row.total_rounds_to_published
    assert abs(row.active_error) < 0.02
    assert row.total_error == pytest.approx((row.computed_total - row.published_total) / row.published_total)


def test_there_are_enough_published_models_and_they_differ():
    assert len(PUBLISHED_MODELS) >= 5
    assert len({model.name for model in PUBLISHED_MODELS}) == len(PUBLISHED_MODELS)
    shapes = {model.config for model in PUBLISHED_MODELS}
    assert len(shapes) == len(PUBLISHED_MODELS)
    assert any(model.config.num_shared_experts for model in PUBLISHED_MODELS)
    assert any(model.config.first_k_dense for model in PUBLISHED_MODELS)
    assert any(model.config.head_dim for model in PUBLISHED_MODELS)


def test_extras_are_small_next_to_the_model():
    for model in PUBLISHED_MODELS:
        extras = sum(extra.total for extra in model.extra_parameters())
        assert extras < 1e-3 * count_from_config(model.config).total, model.name


def test_the_active_convention_matters_for_gpt_oss():
    """OpenAI's 3.6 B leaves out the input embedding; counting it would be 16% off."""
    row = next(row for row in comparison_table() if row.name == "GPT-OSS-20B")
    assert not row.counts_input_embedding
    assert row.active_rounds_to_published
    assert abs(row.active_other_convention / row.published_active - 1) > 0.10
    total, with_embedding = computed_counts(published_model("GPT-OSS-20B"), counts_input_embedding=True)
    assert with_embedding == row.active_other_convention and total == row.computed_total


def test_deepseek_moe_counts_shared_and_dense_blocks():
    """2 shared experts always run; the first block is dense (no idle experts there)."""
    counts = count_from_config(published_model("DeepSeekMoE-16B").config)
    assert counts.moe_layers == 27
    assert counts.experts_idle == (64 - 6) * 27
    assert counts.by_part["shared_experts"] == 27 * 2 * 3 * 2048 * 1408
    assert counts.by_part["dense_ffn"] == 3 * 2048 * 10944


def test_published_figure_parsing_and_rounding():
    assert parse_count("46.7B") == pytest.approx(46.7e9)
    assert parse_count("371.64M") == pytest.approx(371.64e6)
    assert rounds_to_published(12.88e9, "12.9B") and not rounds_to_published(12.96e9, "12.9B")
    assert rounds_to_published(140.6e9, "141B") and not rounds_to_published(140.4e9, "141B")
    for bad in ("", "46.7", "46.7K"):
        with pytest.raises(ValueError):
            parse_count(bad)
    with pytest.raises(ValueError):
        published_model("GPT-5")


def test_comparison_table_formats_every_model():
    table = format_comparison(comparison_table())
    lines = table.splitlines()
    assert len(lines) == 2 + len(PUBLISHED_MODELS)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| Mixtral-8x7B | 46.70 B | 46.7 B |" in table


# ------------------------------------------------- the calculator
def test_calculator_summary_is_consistent_with_the_accounting():
    cfg = preset("laptop").phase_configs()[1]
    summary = calculator_summary(cfg, seq_len=128, dtype="float32")
    counts = count_from_config(cfg)
    assert summary.counts == counts
    assert sum(summary.active_parts.values()) == counts.active
    assert summary.active_parts["experts"] == counts.by_part["experts"] // 2       # top-2 of 4
    assert summary.flops == flops_per_token(cfg, 128)
    assert summary.training_memory == memory_bytes(cfg, "float32", "adamw")
    assert summary.inference_memory.total == 4 * counts.total
    assert "62.5%" in summary.text()


@pytest.mark.parametrize("name", ["dense", "moe", "moe_everything"])
def test_active_parts_add_up_to_active(name):
    counts = count_from_config(GRID[name])
    assert sum(active_by_part(counts).values()) == counts.active


def test_calculator_presets_and_config_changes():
    presets = calculator_presets()
    assert presets["laptop phase 1"] == preset("laptop").model
    assert presets["seed phase 2"] == preset("seed").phase_configs()[1]
    assert all(model.name in presets for model in PUBLISHED_MODELS)
    mixtral = presets["Mixtral-8x7B"]
    top1 = calculator_config(mixtral, top_k=1)
    assert top1.top_k == 1 and top1.n_kv_heads == 8
    dense = calculator_config(presets["DeepSeekMoE-16B"], num_experts=0, num_shared_experts=0)
    assert not dense.is_moe and dense.first_k_dense == 0
    with pytest.raises(ValueError):
        calculator_config(mixtral, n_heads=12)             # not a multiple of 8 KV heads
    with pytest.raises(ValueError):
        calculator_config(mixtral, head_dim=64)            # no control for it


def test_param_calculator_follows_its_controls():
    calculator = ParamCalculator(initial="laptop phase 2", seq_len=128, dtype="float32")
    assert calculator.summary() == calculator_summary(calculator_presets()["laptop phase 2"], 128, "float32")
    calculator.picker.value = "Qwen3-30B-A3B"
    assert calculator.config() == calculator_presets()["Qwen3-30B-A3B"]
    calculator.sliders["top_k"].value = 2
    assert calculator.summary().counts == count_from_config(calculator_presets()["Qwen3-30B-A3B"].replace(top_k=2))
    calculator.sliders["n_heads"].value = 6                # 4 KV heads do not divide 6
    with pytest.raises(ValueError):
        calculator.config()
    with pytest.raises(ValueError):
        ParamCalculator(initial="no such preset")


def test_parameter_breakdown_plot_shows_stored_and_used_parameters():
    import matplotlib

    matplotlib.use("Agg")
    summary = calculator_summary(preset("laptop").phase_configs()[1])
    ax = plot_parameter_breakdown(summary)
    widths = [patch.get_width() for patch in ax.patches]
    assert len(widths) == 2 * len(PARTS)
    assert sum(widths[:len(PARTS)]) == pytest.approx(summary.counts.total / 1e6)
    assert sum(widths[len(PARTS):]) == pytest.approx(summary.counts.active / 1e6)
    assert ax.get_title() and ax.get_xlabel().startswith("parameters")


def test_fsdp_memory_splits_the_state_and_the_micro_batch():
    from moe_helpers.accounting import fsdp_training_memory, training_memory

    cfg = preset("seed").phase_configs()[2]
    whole = training_memory(cfg, 32, 512, "bf16")
    one = fsdp_training_memory(cfg, 32, 512, 1)
    assert one.total == whole.total
    four = fsdp_training_memory(cfg, 32, 512, 4)
    assert four.state.total == whole.state.total // 4
    assert four.activations == training_memory(cfg, 8, 512, "bf16").activations
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        fsdp_training_memory(cfg, 32, 512, 3)


def test_readme_fsdp_memory_table_is_what_the_function_gives():
    """The per-GPU memory table for the seed preset (docs/scaling-out.md), to its printed precision."""
    from pathlib import Path

    from moe_helpers.accounting import fsdp_training_memory

    readme = (Path(__file__).resolve().parent.parent / "docs" / "scaling-out.md").read_text()
    table = readme.split("<!-- fsdp-memory-table")[1].split("\n\n")[0]
    rows = [line for line in table.splitlines() if re.match(r"\| \d \(", line)]
    chosen = preset("seed")
    assert len(rows) == 3
    for row, cfg in zip(rows, chosen.phase_configs()):
        printed = [float(cell) for cell in row.strip("|").split("|")[1:]]
        expected = [fsdp_training_memory(cfg, chosen.train.micro_batch_size, chosen.train.seq_len, ranks).total
                    / 2**30 for ranks in (1, 2, 4, 8)]
        assert printed == [round(value, 1) for value in expected], row


def test_count_operations_counts_each_tensor_operation():
    from moe_helpers.accounting import count_operations

    x = torch.randn(4, 3)
    assert count_operations(lambda: None) == 0
    assert count_operations(lambda: (x + 1) * 2) == 2
    assert count_operations(lambda: x @ x.T) >= 2            # the transpose (a view) and the product
    # a model step is many operations
    layer = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        assert count_operations(lambda: layer(x).relu()) >= 2
