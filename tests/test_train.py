"""The training loop: it learns, its History and log lines, seeding, the learning-rate
schedule, NaN detection, expert loads of an MoE, and the device choice."""

from __future__ import annotations

import math
import re

import pytest
import torch

from moe_helpers.config import TrainConfig
from moe_helpers.model import GPT
from moe_helpers.train import History, format_log_line, lr_at, pick_device, resolve_precision, train_phase

RECORD_KEYS = {"phase", "step", "global_step", "train_loss", "val_loss", "aux_loss", "lr", "tokens",
               "seconds", "expert_load"}
# the original note's log line, optionally followed by the aux and validation losses
LOG_LINE = re.compile(r"^  step +\d+ \| loss \d+\.\d{4} \| \d+\.\ds( \| aux \d+\.\d{4})?( \| val \d+\.\d{4})?$")


def settings(preset, steps: int | None = None, lr: float | None = None, phase: int = 1, **changes) -> TrainConfig:
    """The preset's ``TrainConfig`` on the CPU, with ``steps`` and ``lr`` for ``phase`` and other changes."""
    if steps is not None:
        changes[f"steps_phase{phase}"] = steps
    if lr is not None:
        changes[f"lr_phase{phase}"] = lr
    return preset.train.replace(device="cpu", **changes)


def fresh_model(cfg, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


@pytest.fixture(scope="module")
def tiny_run(tiny, tiny_preset):
    """60 steps of the `tiny` preset on the offline corpus, with its printed log."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        history = train_phase(fresh_model(tiny_preset.model), tiny, settings(tiny_preset), progress=False)
    return history, printed.getvalue()


# ------------------------------------------------------------------- learning
def unigram_cross_entropy(data, vocab_size: int) -> float:
    """Validation cross-entropy of the best context-free guess: train-set token frequencies
    (add-one smoothed).  A model below it has learnt to use the context."""
    train, val = torch.from_numpy(data.train.astype("int64")), torch.from_numpy(data.val.astype("int64"))
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0          # (V,)
    log_probs = (counts / counts.sum()).log()
    return -log_probs[val].mean().item()


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
    def run(seed):
        config = settings(tiny_preset, 8, 3e-3, log_every=4, eval_every=8, eval_batches=2, seed=seed)
        history = train_phase(fresh_model(tiny_preset.model), tiny, config, progress=False, verbose=False)
        return history.column("train_loss") + [r["val_loss"] for r in history.evaluated()]

    first = run(0)
    assert run(0) == first
    assert run(1) != first


def test_history_continues_across_phases(tiny, tiny_preset):
    config = settings(tiny_preset, log_every=2, eval_every=4, eval_batches=1, steps_phase1=4, steps_phase2=4)
    model = fresh_model(tiny_preset.model)
    history = train_phase(model, tiny, config, progress=False, verbose=False)
    history = train_phase(model, tiny, config, phase=2, history=history, progress=False, verbose=False)
    assert history.phases == [1, 2]
    assert history.column("global_step") == [0, 2, 4, 4, 6, 8]
    assert history.column("step", phase=2) == [0, 2, 4]
    tokens_per_step = config.batch_size * config.seq_len
    assert history.column("tokens", phase=2) == [4 * tokens_per_step, 6 * tokens_per_step, 8 * tokens_per_step]
    assert len(history.evaluated(phase=2)) == 2
    assert not model.training                                 # a phase ends in eval mode


class StopAfterCheckpoint(Exception):
    """Raised from ``on_checkpoint`` to stand in for a run that dies right after saving."""


def test_resume_from_a_checkpoint_continues_exactly(tiny, tiny_preset):
    import copy

    config = settings(tiny_preset, 8, 3e-3, log_every=2, eval_every=4, eval_batches=1, checkpoint_every=3)
    straight = train_phase(fresh_model(tiny_preset.model), tiny, config, progress=False, verbose=False)

    saved = {}

    def save_and_stop(state):
        saved.update(state=state, weights=copy.deepcopy(model.state_dict()))
        raise StopAfterCheckpoint

    model = fresh_model(tiny_preset.model)
    history = History()
    with pytest.raises(StopAfterCheckpoint):
        train_phase(model, tiny, config, history=history, progress=False, verbose=False,
                    on_checkpoint=save_and_stop)
    assert saved["state"]["step"] == 3
    assert history.column("step") == [0, 2]

    restarted = fresh_model(tiny_preset.model, seed=99)       # other weights: the checkpoint must win
    restarted.load_state_dict(saved["weights"])
    train_phase(restarted, tiny, config, history=history, resume=saved["state"], progress=False, verbose=False)
    for key in ("step", "global_step", "tokens", "train_loss", "val_loss", "lr", "expert_load"):
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
        train_phase(model, tiny, settings(tiny_preset, 5, 3e-3, phase=phase), phase=phase, progress=False,
                    verbose=False)


@pytest.mark.parametrize("changes, field", [
    (dict(steps_phase1=-1), "steps_phase1"), (dict(lr_phase1=-1e-3), "lr_phase1"),
    (dict(grad_accum=0), "grad_accum"), (dict(batch_size=8, grad_accum=3), "multiple of grad_accum"),
    (dict(precision="fp16"), "precision"), (dict(device="gpu"), "device"),
])
def test_bad_training_settings_are_rejected_naming_the_field(tiny_preset, changes, field):
    with pytest.raises(ValueError, match=field):
        tiny_preset.train.replace(**changes)


# ------------------------------------------------------------------------ MoE
def test_moe_training_records_expert_loads(tiny, tiny_preset, capsys):
    cfg = tiny_preset.model.upcycled(num_experts=tiny_preset.num_experts, top_k=tiny_preset.top_k)
    config = settings(tiny_preset, 6, 3e-3, log_every=3, eval_every=3, eval_batches=1)
    history = train_phase(fresh_model(cfg), tiny, config, progress=False)
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


def test_history_of_nothing():
    empty = History()
    assert (empty.last_val_loss, empty.global_steps, empty.tokens, empty.phases) == (None, 0, 0, [])


# ----------------------------------------------- what the records hold, and precision
def test_expert_load_records_are_the_training_batches_since_the_last_log(tiny, tiny_preset):
    """A forward hook sums the token slots of every forward pass made in training mode
    (the training batches; evaluation runs in eval mode); each record must equal the
    shares of those sums since the previous record."""
    cfg = tiny_preset.model.upcycled(num_experts=4, top_k=2)
    model = fresh_model(cfg)
    seen: list = []
    model.register_forward_hook(lambda module, inputs, out: seen.append(
        [stats.tokens_per_expert.clone() for stats in out.routing]) if module.training else None)
    records_checked = []

    def check(record, _model):
        summed = [sum(counts[layer] for counts in seen) for layer in range(cfg.num_moe_layers)]
        expected = [(counts.float() / counts.sum()).tolist() for counts in summed]
        for got, want in zip(record["expert_load"], expected):
            assert got == pytest.approx(want, abs=1e-6)
        records_checked.append(len(seen))
        seen.clear()

    config = settings(tiny_preset, 6, 3e-3, log_every=3, eval_every=2, eval_batches=2, grad_accum=2)
    train_phase(model, tiny, config, progress=False, verbose=False, on_log=check)
    # step 0: its measuring batch (2 micro-batches); then 2 or 1 optimiser steps x 2 micro-batches
    assert records_checked == [2, 4, 2, 2, 4]


def test_grad_accumulation_keeps_the_global_batch(tiny, tiny_preset):
    """Two micro-batches of 4 draw the same windows as one batch of 8, so the run is the same
    up to float32 summation order."""
    def run(grad_accum):
        config = settings(tiny_preset, 6, 3e-3, log_every=2, eval_every=6, eval_batches=1, grad_accum=grad_accum)
        return train_phase(fresh_model(tiny_preset.model), tiny, config, progress=False, verbose=False)

    whole, split = run(1), run(2)
    assert whole.column("tokens") == split.column("tokens")
    assert whole.column("train_loss") == pytest.approx(split.column("train_loss"), abs=1e-4)
    whole_val, split_val = [r["val_loss"] for r in whole.evaluated()], [r["val_loss"] for r in split.evaluated()]
    assert whole_val == pytest.approx(split_val, abs=1e-4)          # evaluated on the same windows


def test_bf16_autocast_on_the_cpu_trains(tiny, tiny_preset):
    config = settings(tiny_preset, 20, 3e-3, log_every=10, eval_every=20, eval_batches=2, precision="bf16")
    model = fresh_model(tiny_preset.model)
    history = train_phase(model, tiny, config, progress=False, verbose=False)
    first, last = history.evaluated()[0]["val_loss"], history.evaluated()[-1]["val_loss"]
    assert last < first - 0.5, (first, last)
    assert {p.dtype for p in model.parameters()} == {torch.float32}    # the master weights stay float32


def test_precision_auto_is_bf16_on_cuda_only():
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda:1")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", torch.device("cpu"))


class _OneRankOfTwo:
    """Rank ``rank`` of a two-rank ``DataParallel`` without processes: its all-reduce adds
    what the other rank would contribute, handed in by the test."""

    world = 2

    def __init__(self, rank: int, other_ranks_sum: torch.Tensor | None = None):
        from moe_helpers.distributed import DataParallel

        self.rank, self.other = rank, other_ranks_sum
        self.my_slice = DataParallel(rank, 2, torch.device("cpu")).my_slice
        self.reduced = []

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        self.reduced.append(tensor.clone())
        if self.other is not None:
            tensor += self.other
        return tensor


def test_under_data_parallelism_each_rank_evaluates_its_slice(tiny, tiny_preset):
    """Each rank reads half of every validation batch; with the other rank's sum added by the
    all-reduce, the result is the whole batches' loss."""
    from moe_helpers.train import evaluate

    torch.manual_seed(0)
    model = GPT(tiny_preset.model).eval()
    rows = []
    model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    whole = evaluate(model, tiny, 8, 32, batches=3)
    assert rows == [8, 8, 8]
    partial_sums = []
    for rank in (0, 1):
        lonely = _OneRankOfTwo(rank)
        evaluate(model, tiny, 8, 32, batches=3, parallel=lonely)
        partial_sums.append(lonely.reduced[0])                      # this rank's sum of its 3 slice losses
    assert rows[3:] == [4] * 6                                       # half a batch per forward pass
    rank0 = _OneRankOfTwo(0, other_ranks_sum=partial_sums[1])
    assert evaluate(model, tiny, 8, 32, batches=3, parallel=rank0) == pytest.approx(whole, abs=1e-6)
