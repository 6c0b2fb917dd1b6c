"""ModelConfig / TrainConfig validation, the named presets and the derived (grown) configs."""

from __future__ import annotations

import dataclasses

import pytest

from moe_helpers.config import ModelConfig, Preset, TrainConfig, insertion_plan, preset, preset_names

BASE = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64)
MOE = dict(BASE, num_experts=4, top_k=2)


def model_config(**changes) -> ModelConfig:
    return ModelConfig(**{**BASE, **changes})


# ------------------------------------------------------------ ModelConfig rules
# (id, field the message must name, extra text the message must contain, config fields)
MODEL_RULES = [
    ("vocab_size zero", "vocab_size", ">= 1", dict(BASE, vocab_size=0)),
    ("vocab_size negative", "vocab_size", ">= 1", dict(BASE, vocab_size=-5)),
    ("vocab_size float", "vocab_size", ">= 1", dict(BASE, vocab_size=64.0)),
    ("vocab_size bool", "vocab_size", ">= 1", dict(BASE, vocab_size=True)),
    ("d_model zero", "d_model", ">= 1", dict(BASE, d_model=0)),
    ("n_layers zero", "n_layers", ">= 1", dict(BASE, n_layers=0)),
    ("n_heads zero", "n_heads", ">= 1", dict(BASE, n_heads=0)),
    ("d_ff negative", "d_ff", ">= 1", dict(BASE, d_ff=-1)),
    ("max_seq_len zero", "max_seq_len", ">= 1", dict(BASE, max_seq_len=0)),
    ("d_model not divisible by n_heads", "d_model", "divisible by n_heads", dict(BASE, d_model=30, n_heads=4)),
    ("n_kv_heads zero", "n_kv_heads", ">= 1", dict(BASE, n_kv_heads=0)),
    ("n_heads not a multiple of n_kv_heads", "n_kv_heads", "multiple", dict(BASE, n_kv_heads=3)),
    ("more kv heads than heads", "n_kv_heads", "multiple", dict(BASE, n_kv_heads=8)),
    ("head_dim zero", "head_dim", ">= 1", dict(BASE, head_dim=0)),
    ("odd explicit head_dim", "head_dim", "even", dict(BASE, head_dim=7)),
    ("odd derived head_dim", "head_dim", "even", dict(BASE, d_model=36, n_heads=4)),
    ("num_experts negative", "num_experts", ">= 0", dict(BASE, num_experts=-1)),
    ("top_k zero", "top_k", "1..4", dict(MOE, top_k=0)),
    ("top_k above num_experts", "top_k", "1..4", dict(MOE, top_k=5)),
    ("top_k negative", "top_k", "1..4", dict(MOE, top_k=-1)),
    ("num_shared_experts negative", "num_shared_experts", ">= 0", dict(MOE, num_shared_experts=-1)),
    ("first_k_dense negative", "first_k_dense", ">= 0", dict(MOE, first_k_dense=-1)),
    ("first_k_dense above n_layers", "first_k_dense", "0..2", dict(MOE, first_k_dense=3)),
    ("shared experts on a dense model", "num_shared_experts", "num_experts >= 1",
     dict(BASE, num_shared_experts=1)),
    ("leading dense blocks on a dense model", "first_k_dense", "num_experts >= 1",
     dict(BASE, first_k_dense=1)),
    ("shared_d_ff zero", "shared_d_ff", ">= 1", dict(MOE, num_shared_experts=1, shared_d_ff=0)),
    ("dense_d_ff zero", "dense_d_ff", ">= 1", dict(MOE, first_k_dense=1, dense_d_ff=0)),
    ("rope_theta zero", "rope_theta", "> 0", dict(BASE, rope_theta=0.0)),
    ("norm_eps zero", "norm_eps", "> 0", dict(BASE, norm_eps=0.0)),
    ("aux_loss_coef negative", "aux_loss_coef", ">= 0", dict(MOE, aux_loss_coef=-0.01)),
    ("z_loss_coef negative", "z_loss_coef", ">= 0", dict(MOE, z_loss_coef=-0.001)),
    ("dropout negative", "dropout", "[0, 1)", dict(BASE, dropout=-0.1)),
    ("dropout one", "dropout", "[0, 1)", dict(BASE, dropout=1.0)),
]


@pytest.mark.parametrize("field, allowed, fields", [rule[1:] for rule in MODEL_RULES],
                         ids=[rule[0] for rule in MODEL_RULES])
def test_model_config_rejects_invalid_values(field, allowed, fields):
    with pytest.raises(ValueError) as error:
        ModelConfig(**fields)
    message = str(error.value)
    assert field in message
    assert allowed in message


@pytest.mark.parametrize("fields", [
    BASE,
    dict(BASE, d_model=30, n_heads=4, head_dim=8),             # explicit head_dim lifts d_model % n_heads
    dict(BASE, n_kv_heads=1),                                  # multi-query attention
    dict(BASE, top_k=7),                                       # top_k is unused by a dense model
    dict(MOE, top_k=4),
    dict(MOE, top_k=1, num_shared_experts=2, shared_d_ff=16, first_k_dense=2, dense_d_ff=96),
], ids=["dense", "explicit head_dim", "multi-query", "dense ignores top_k", "top_k == E", "deepseek-style"])
def test_model_config_accepts_valid_values(fields):
    ModelConfig(**fields)


def test_model_config_derived_sizes():
    cfg = model_config(n_kv_heads=2, num_experts=8, top_k=2, first_k_dense=1, n_layers=3)
    assert (cfg.kv_heads, cfg.head_size, cfg.is_moe, cfg.num_moe_layers) == (2, 8, True, 2)
    assert [cfg.is_moe_block(layer) for layer in range(3)] == [False, True, True]
    assert (cfg.shared_hidden, cfg.dense_hidden) == (64, 64)
    dense = model_config()
    assert (dense.kv_heads, dense.is_moe, dense.num_moe_layers) == (4, False, 0)
    assert not any(dense.is_moe_block(layer) for layer in range(2))


def test_model_config_is_frozen_and_replace_validates():
    cfg = model_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 64
    assert cfg.replace(d_model=64).d_model == 64
    with pytest.raises(ValueError, match="d_model"):
        cfg.replace(d_model=-1)


# ------------------------------------------------------------ TrainConfig rules
TRAIN_RULES = [
    ("steps_phase1", dict(steps_phase1=-1)),
    ("steps_phase2", dict(steps_phase2=-10)),
    ("steps_phase3", dict(steps_phase3=2.5)),
    ("lr_phase1", dict(lr_phase1=-3e-4)),
    ("lr_phase2", dict(lr_phase2=-1e-4)),
    ("lr_phase3", dict(lr_phase3=float("nan"))),
    ("warmup_steps", dict(warmup_steps=-1)),
    ("seed", dict(seed=-1)),
    ("log_every", dict(log_every=0)),
    ("eval_every", dict(eval_every=0)),
    ("eval_batches", dict(eval_batches=0)),
    ("batch_size", dict(batch_size=0)),
    ("seq_len", dict(seq_len=-128)),
    ("weight_decay", dict(weight_decay=-0.1)),
    ("grad_clip", dict(grad_clip=-1.0)),
    ("min_lr_ratio", dict(min_lr_ratio=1.5)),
    ("min_lr_ratio", dict(min_lr_ratio=-0.1)),
    ("device", dict(device="gpu")),
    ("device", dict(device="CPU")),
    ("device", dict(device="cuda:one")),
    ("device", dict(device=0)),
]


@pytest.mark.parametrize("field, changes", TRAIN_RULES,
                         ids=[f"{field}={list(changes.values())[0]!r}" for field, changes in TRAIN_RULES])
def test_train_config_rejects_invalid_values(field, changes):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**changes)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps"])
def test_train_config_accepts_device_names(device):
    assert TrainConfig(device=device).device == device


def test_train_config_defaults_are_the_original_note():
    train = TrainConfig()
    assert [train.lr(phase) for phase in (1, 2, 3)] == [3e-4, 1e-4, 8e-5]
    assert [train.steps(phase) for phase in (1, 2, 3)] == [100, 100, 100]
    assert (train.log_every, train.device) == (10, "auto")
    assert train.replace(steps_phase2=7).steps(2) == 7
    with pytest.raises(ValueError, match="batch_size"):
        train.replace(batch_size=0)


# --------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", ["tiny", "laptop", "seed"])
def test_presets_exist_and_their_phases_are_valid(name):
    chosen = preset(name)
    assert isinstance(chosen, Preset) and chosen.name == name
    dense, moe, large = chosen.phase_configs()
    assert not dense.is_moe
    assert (moe.num_experts, moe.top_k) == (chosen.num_experts, chosen.top_k)
    assert large.d_model == dense.d_model * chosen.width_factor
    assert large.n_layers == dense.n_layers + chosen.new_layers
    assert large.head_size == dense.head_size
    assert chosen.train.seq_len <= dense.max_seq_len


def test_preset_names_and_unknown_preset():
    assert preset_names() == ["tiny", "laptop", "seed"]
    with pytest.raises(ValueError) as error:
        preset("nope")
    message = str(error.value)
    assert "'nope'" in message
    assert all(name in message for name in ("tiny", "laptop", "seed"))


def test_tiny_is_smaller_than_laptop():
    tiny, laptop = preset("tiny"), preset("laptop")
    assert tiny.model.d_model < laptop.model.d_model
    assert tiny.model.vocab_size < laptop.model.vocab_size
    assert tiny.train.steps_phase1 <= 60


# -------------------------------------------------------------- derived configs
def test_upcycled_turns_dense_into_moe_and_keeps_the_rest():
    dense = model_config()
    moe = dense.upcycled(num_experts=8, top_k=2)
    assert (moe.num_experts, moe.top_k) == (8, 2)
    assert moe.replace(num_experts=0) == dense
    with pytest.raises(ValueError, match="dense"):
        moe.upcycled(num_experts=16, top_k=2)
    with pytest.raises(ValueError, match="top_k"):
        dense.upcycled(num_experts=2, top_k=3)


def test_widened_multiplies_widths_and_keeps_head_dim():
    cfg = model_config(n_kv_heads=2, num_experts=4, top_k=2, num_shared_experts=1, shared_d_ff=16,
                       first_k_dense=1, dense_d_ff=96, tie_embeddings=True)
    wide = cfg.widened(3)
    assert (wide.d_model, wide.n_heads, wide.n_kv_heads, wide.head_dim) == (96, 12, 6, 8)
    assert (wide.d_ff, wide.shared_d_ff, wide.dense_d_ff) == (192, 48, 288)
    assert wide.tie_embeddings is False
    assert (wide.n_layers, wide.num_experts, wide.top_k, wide.vocab_size) == (2, 4, 2, 64)
    assert model_config().widened(2).n_kv_heads is None
    assert model_config().widened(1).head_dim == 8
    with pytest.raises(ValueError, match="factor"):
        cfg.widened(0)


def test_deepened_inserts_layers_and_keeps_leading_dense_blocks():
    cfg = model_config(n_layers=3, num_experts=4, top_k=2, first_k_dense=1)
    deep = cfg.deepened(2)                      # plan [0, 1, 1, 2, 2]: block 0 is the only dense source
    assert (deep.n_layers, deep.first_k_dense) == (5, 1)
    first_two_dense = cfg.replace(first_k_dense=2).deepened(2)   # [0, 1, 1, ...]: three dense copies
    assert (first_two_dense.n_layers, first_two_dense.first_k_dense) == (5, 3)
    on_top = cfg.deepened(2, where="top")
    assert (on_top.n_layers, on_top.first_k_dense) == (5, 1)
    assert model_config().deepened(0) == model_config()
    with pytest.raises(ValueError, match="where"):
        cfg.deepened(1, where="middle")


def test_split_cuts_experts_and_keeps_shared_and_dense_widths():
    cfg = model_config(num_experts=4, top_k=2, num_shared_experts=1, first_k_dense=1)
    fine = cfg.split(2)
    assert (fine.num_experts, fine.top_k, fine.d_ff) == (8, 4, 32)
    assert (fine.shared_hidden, fine.dense_hidden) == (64, 64)
    plain = model_config(num_experts=4, top_k=1).split(4)
    assert (plain.num_experts, plain.top_k, plain.d_ff, plain.shared_d_ff, plain.dense_d_ff) == (16, 4, 16, None, None)
    with pytest.raises(ValueError, match="MoE"):
        model_config().split(2)
    with pytest.raises(ValueError, match="d_ff"):
        cfg.split(3)


@pytest.mark.parametrize("n_layers, new_layers, where, expected", [
    (3, 2, "interleave", [0, 1, 1, 2, 2]),
    (2, 1, "interleave", [0, 1, 1]),
    (4, 2, "interleave", [0, 1, 1, 2, 3, 3]),
    (2, 4, "interleave", [0, 0, 0, 1, 1, 1]),
    (3, 0, "interleave", [0, 1, 2]),
    (3, 2, "top", [0, 1, 2, 2, 2]),
    (1, 3, "top", [0, 0, 0, 0]),
])
def test_insertion_plan_examples(n_layers, new_layers, where, expected):
    assert insertion_plan(n_layers, new_layers, where) == expected


@pytest.mark.parametrize("n_layers", range(1, 7))
@pytest.mark.parametrize("new_layers", range(0, 9))
def test_insertion_plan_interleave_spreads_copies_evenly(n_layers, new_layers):
    plan = insertion_plan(n_layers, new_layers)
    assert len(plan) == n_layers + new_layers
    assert plan == sorted(plan)                        # every copy sits right after its source
    copies = [plan.count(layer) - 1 for layer in range(n_layers)]
    assert min(copies) >= 0 and sum(copies) == new_layers
    assert max(copies) - min(copies) <= 1


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_insertion_plan_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="new_layers"):
        insertion_plan(3, bad)
