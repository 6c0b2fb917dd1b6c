"""The training loop: it learns, its History and log lines, seeding, the learning-rate
schedule, NaN detection, expert loads of an MoE, and the device choice."""

from __future__ import annotations

import math
import re

import pytest
import torch

from moe_helpers.model import GPT
from moe_helpers.train import History, format_log_line, lr_at, pick_device, train_phase

RECORD_KEYS = {"phase", "step", "global_step", "train_loss", "val_loss", "aux_loss", "lr", "tokens",
               "seconds", "expert_load"}
# the original note's log line, optionally followed by the aux and validation losses
LOG_LINE = re.compile(r"^  step +\d+ \| loss \d+\.\d{4} \| \d+\.\ds( \| aux \d+\.\d{4})?( \| val \d+\.\d{4})?$")


def preset_settings(preset) -> dict:
    """``train_phase`` keyword arguments from a preset's ``TrainConfig`` (phase 1)."""
    train = preset.train
    return dict(batch_size=train.batch_size, seq_len=train.seq_len, warmup_steps=train.warmup_steps,
                min_lr_ratio=train.min_lr_ratio, weight_decay=train.weight_decay, grad_clip=train.grad_clip,
                log_every=train.log_every, eval_every=train.eval_every, eval_batches=train.eval_batches,
                device="cpu", seed=train.seed)


def fresh_model(cfg, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


@pytest.fixture(scope="module")
def tiny_run(tiny, tiny_preset):
    """60 steps of the `tiny` preset on the offline corpus, with its printed log."""
    import contextlib
    import io

    settings = preset_settings(tiny_preset)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        history = train_phase(fresh_model(tiny_preset.model), tiny, tiny_preset.train.steps_phase1,
                              tiny_preset.train.lr_phase1, progress=False, **settings)
    return history, printed.getvalue()


# ------------------------------------------------------------------- learning
def unigram_cross_entropy(data, vocab_size: int) -> float:
    """Validation cross-entropy of the best context-free guess: train-set token frequencies
    (add-one smoothed).  A model below it has learnt to use the context."""
    counts = torch.bincount(data.train, minlength=vocab_size).double() + 1.0     # (V,)
    log_probs = (counts / counts.sum()).log()
    return -log_probs[data.val].mean().item()


def test_sixty_tiny_steps_lower_the_validation_loss(tiny_run, tiny, tiny_preset):
    """Measured on 6 seeds: the validation loss falls from ln(512) = 6.24 by 1.13 to 1.25 nats,
    ending 0.12 to 0.24 nats below the unigram cross-entropy."""
    history, _ = tiny_run
    evaluated = history.evaluated()
    first, last = evaluated[0]["val_loss"], evaluated[-1]["val_loss"]
    assert [r["step"] for r in evaluated] == [0, 20, 40, 60]
    assert abs(first - math.log(tiny_preset.model.vocab_size)) < 0.1     # starts near uniform
    assert last < first - 1.0
    assert last < unigram_cross_entropy(tiny, tiny_preset.model.vocab_size)
    assert evaluated[1]["val_loss"] < first and evaluated[2]["val_loss"] < evaluated[1]["val_loss"]
    assert history.last_val_loss == last


def test_history_records(tiny_run, tiny_preset):
    history, _ = tiny_run
    train = tiny_preset.train
    assert all(set(record) == RECORD_KEYS for record in history.records)
    assert history.column("step") == [0, 10, 20, 30, 40, 50, 60]
    assert history.column("global_step") == history.column("step")
    assert history.column("tokens") == [step * train.batch_size * train.seq_len for step in history.column("step")]
    assert [r["val_loss"] is not None for r in history.records] == [True, False, True, False, True, False, True]
    seconds = history.column("seconds")
    assert seconds == sorted(seconds) and seconds[0] >= 0
    assert history.records[0]["lr"] == 0.0
    assert history.records[1]["lr"] == pytest.approx(lr_at(9, train.lr_phase1, 60, train.warmup_steps,
                                                           train.min_lr_ratio))
    assert all(r["aux_loss"] == 0.0 and r["expert_load"] == [] for r in history.records)   # dense
    assert (history.phases, history.global_steps, history.tokens) == ([1], 60, 60 * train.batch_size * train.seq_len)


def test_log_lines_follow_the_original_note(tiny_run):
    history, printed = tiny_run
    lines = printed.splitlines()
    assert len(lines) == len(history.records)
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert lines[1].startswith("  step   10 | loss ")
    assert f"loss {history.records[1]['train_loss']:.4f}" in lines[1]
    assert lines[-1].endswith(f"| val {history.last_val_loss:.4f}")


def test_format_log_line():
    assert format_log_line(10, 6.1234, 15.2) == "  step   10 | loss 6.1234 | 15.2s"
    assert format_log_line(1000, 2.0, 3.0) == "  step 1000 | loss 2.0000 | 3.0s"
    assert (format_log_line(5, 3.14159, 0.04, aux_loss=0.0201, val_loss=3.2)
            == "  step    5 | loss 3.1416 | 0.0s | aux 0.0201 | val 3.2000")


def test_same_seed_gives_identical_runs(tiny, tiny_preset):
    settings = dict(preset_settings(tiny_preset), log_every=4, eval_every=8, eval_batches=2)

    def run(seed):
        history = train_phase(fresh_model(tiny_preset.model), tiny, 8, 3e-3, progress=False,
                              verbose=False, **dict(settings, seed=seed))
        return history.column("train_loss") + [r["val_loss"] for r in history.evaluated()]

    first = run(0)
    assert run(0) == first
    assert run(1) != first


def test_history_continues_across_phases(tiny, tiny_preset):
    settings = dict(preset_settings(tiny_preset), log_every=2, eval_every=4, eval_batches=1)
    model = fresh_model(tiny_preset.model)
    history = train_phase(model, tiny, 4, 3e-3, progress=False, verbose=False, **settings)
    history = train_phase(model, tiny, 4, 1e-3, phase=2, history=history, progress=False, verbose=False,
                          **settings)
    assert history.phases == [1, 2]
    assert history.column("global_step") == [0, 2, 4, 4, 6, 8]
    assert history.column("step", phase=2) == [0, 2, 4]
    tokens_per_step = settings["batch_size"] * settings["seq_len"]
    assert history.column("tokens", phase=2) == [4 * tokens_per_step, 6 * tokens_per_step, 8 * tokens_per_step]
    assert len(history.evaluated(phase=2)) == 2
    assert not model.training                                 # a phase ends in eval mode


class StopAfterCheckpoint(Exception):
    """Raised from ``on_checkpoint`` to stand in for a run that dies right after saving."""


def test_resume_from_a_checkpoint_continues_exactly(tiny, tiny_preset):
    import copy

    settings = dict(preset_settings(tiny_preset), log_every=2, eval_every=4, eval_batches=1)
    straight = train_phase(fresh_model(tiny_preset.model), tiny, 8, 3e-3, progress=False, verbose=False,
                           **settings)

    saved = {}

    def save_and_stop(state):
        saved.update(state=state, weights=copy.deepcopy(model.state_dict()))
        raise StopAfterCheckpoint

    model = fresh_model(tiny_preset.model)
    history = History()
    with pytest.raises(StopAfterCheckpoint):
        train_phase(model, tiny, 8, 3e-3, history=history, progress=False, verbose=False,
                    checkpoint_every=3, on_checkpoint=save_and_stop, **settings)
    assert saved["state"]["step"] == 3
    assert history.column("step") == [0, 2]

    restarted = fresh_model(tiny_preset.model, seed=99)       # other weights: the checkpoint must win
    restarted.load_state_dict(saved["weights"])
    train_phase(restarted, tiny, 8, 3e-3, history=history, resume=saved["state"], progress=False,
                verbose=False, **settings)
    for key in ("step", "global_step", "tokens", "train_loss", "val_loss", "lr"):
        assert history.column(key) == straight.column(key), key


# ------------------------------------------------------------- lr schedule
@pytest.mark.parametrize("step, expected", [
    (0, 0.1),        # warmup: lr * (step + 1) / warmup_steps
    (4, 0.5),
    (9, 1.0),
    (10, 1.0),       # cosine starts at the peak
    (55, 0.55),      # half way: min + (1 - min) / 2
    (100, 0.1),      # the end: lr * min_lr_ratio
    (150, 0.1),      # and it stays there
])
def test_lr_warmup_then_cosine(step, expected):
    assert lr_at(step, lr=1.0, steps=100, warmup_steps=10, min_lr_ratio=0.1) == pytest.approx(expected)


def test_lr_schedule_shape():
    schedule = [lr_at(step, 3e-4, 200, 20, 0.1) for step in range(200)]
    assert schedule[:20] == sorted(schedule[:20])             # rises during warmup
    assert schedule[19:] == sorted(schedule[19:], reverse=True)   # then only falls
    assert max(schedule) == pytest.approx(3e-4)
    assert schedule[0] == pytest.approx(3e-4 / 20) and min(schedule[20:]) > 3e-5   # never below the floor
    assert lr_at(0, 3e-4, 100, 0, 0.1) == pytest.approx(3e-4)    # no warmup: starts at the peak
    assert lr_at(30, 3e-4, 60, 0, 0.0) == pytest.approx(1.5e-4)  # cosine half way to zero


# -------------------------------------------------------------------- failures
@pytest.mark.parametrize("phase", [1, 3])
def test_nan_loss_raises_naming_step_and_phase(tiny, tiny_preset, phase):
    model = fresh_model(tiny_preset.model)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=rf"step 1 of phase {phase}"):
        train_phase(model, tiny, 5, 3e-3, phase=phase, progress=False, verbose=False,
                    **preset_settings(tiny_preset))


@pytest.mark.parametrize("steps, lr", [(-1, 1e-3), (5, -1e-3)])
def test_negative_steps_or_lr_are_rejected(tiny, tiny_preset, steps, lr):
    with pytest.raises(ValueError, match="steps and lr"):
        train_phase(fresh_model(tiny_preset.model), tiny, steps, lr, progress=False, verbose=False)


# ------------------------------------------------------------------------ MoE
def test_moe_training_records_expert_loads(tiny, tiny_preset, capsys):
    cfg = tiny_preset.model.upcycled(num_experts=tiny_preset.num_experts, top_k=tiny_preset.top_k)
    settings = dict(preset_settings(tiny_preset), log_every=3, eval_every=3, eval_batches=1)
    history = train_phase(fresh_model(cfg), tiny, 6, 3e-3, progress=False, **settings)
    assert len(history.records) == 3
    for record in history.records:
        loads = record["expert_load"]
        assert len(loads) == cfg.num_moe_layers
        for layer_loads in loads:
            assert len(layer_loads) == cfg.num_experts
            assert sum(layer_loads) == pytest.approx(1.0, abs=1e-6)
            assert min(layer_loads) >= 0.0
        assert record["aux_loss"] > 0.0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(LOG_LINE.match(line) and "| aux " in line for line in lines)


# --------------------------------------------------------------------- device
def test_pick_device(monkeypatch):
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device("auto").type == expected
    assert pick_device().type == expected
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_pick_device_here_is_the_cpu():
    assert pick_device("auto") == torch.device("cpu")


def test_history_of_nothing():
    empty = History()
    assert (empty.last_val_loss, empty.global_steps, empty.tokens, empty.phases) == (None, 0, 0, [])
