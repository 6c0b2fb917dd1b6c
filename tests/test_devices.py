"""Every device: nothing float64 where Apple's MPS would refuse it, bf16 autocast with
float32 master weights, gradient accumulation, ``cuda:N`` and the memory a phase needs.

MPS cannot be run here, so its rule is enforced by a ``TorchDispatchMode`` that
fails every tensor operation touching float64, as MPS does; the whole tiny
three-phase pipeline runs under it.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from moe_helpers.accounting import count_from_config, training_memory
from moe_helpers.config import preset
from moe_helpers.model import GPT
from moe_helpers.pipeline import configure, main

# Shorter still than the tiny run: each test runs it in-process, some under a dispatch mode.
SHORTER = ["--steps-phase1", "12", "--steps-phase2", "6", "--steps-phase3", "6", "--log-every", "6"]


class RejectFloat64(TorchDispatchMode):
    """Fail any tensor operation that reads, makes or is asked for float64, as MPS does."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._check(func, tree_leaves((args, kwargs)))
        out = func(*args, **kwargs)
        self._check(func, tree_leaves(out))
        return out

    @staticmethod
    def _check(func, values) -> None:
        for value in values:
            if value is torch.float64 or (isinstance(value, torch.Tensor) and value.dtype == torch.float64):
                raise TypeError(f"{func}: float64 is not supported (as on Apple's MPS)")


def test_the_mode_rejects_float64_like_mps():
    with RejectFloat64():
        torch.ones(3) + torch.ones(3)                           # float32 is fine
        with pytest.raises(TypeError, match="float64"):
            torch.ones(3).double()
        with pytest.raises(TypeError, match="float64"):
            torch.arange(4, dtype=torch.float64)
        with pytest.raises(TypeError, match="float64"):
            torch.randn(2, 2, dtype=torch.float64)


@pytest.mark.slow
def test_the_tiny_three_phase_run_never_touches_float64(tmp_path, tiny_run, capsys):
    """Build, train, upcycle, grow, check the jumps, plot and checkpoint with float64 forbidden."""
    with RejectFloat64():
        code = main(["train", *tiny_run, *SHORTER, "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [abs(phase["jump"]) < 1e-4 for phase in summary["phases"][1:]] == [True, True]


@pytest.mark.slow
def test_bf16_autocast_with_grad_accumulation_runs_the_three_phases(tmp_path, tiny_run, capsys):
    """bf16 on the CPU: training under autocast, master weights float32, jump checks in float32."""
    out = tmp_path / "bf16"
    code = main(["train", *tiny_run, *SHORTER, "--precision", "bf16", "--grad-accum", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Memory (bf16 autocast, fp32 master weights)" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16"
    jumps = [phase["jump"] for phase in summary["phases"][1:]]
    assert all(abs(jump) < 1e-3 for jump in jumps), jumps
    state = torch.load(out / "checkpoints" / "phase3.pt", weights_only=True)
    assert {tensor.dtype for tensor in state["model"].values()} == {torch.float32}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    untrained, final = records[0]["val_loss"], summary["phases"][-1]["final_val_loss"]
    assert final < untrained - 0.3, (untrained, final)   # it learnt in bf16 (measured: 6.24 -> 5.72 in 24 steps)


def test_device_names_and_precisions_are_validated():
    assert configure("tiny", device="cuda:1").train.device == "cuda:1"
    assert configure("tiny", precision="bf16", grad_accum=4).train.micro_batch_size == 2
    with pytest.raises(ValueError, match="device"):
        configure("tiny", device="gpu")
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        configure("tiny", grad_accum=3)


def test_bad_device_on_the_command_line_exits_2(tmp_path, tiny_run, capsys):
    assert main(["train", *tiny_run, *SHORTER, "--device", "tpu", "--out", str(tmp_path / "x")]) == 2
    assert "device must be one of auto, cpu, cuda, cuda:N, mps" in capsys.readouterr().err


# ------------------------------------------------------------------- memory
def saved_activation_bytes(cfg, batch_size: int, seq_len: int, precision: str) -> int:
    """Bytes of the tensors autograd saves for the backward pass of one forward pass
    (each storage counted once; the parameters themselves excluded)."""
    torch.manual_seed(0)
    model = GPT(cfg)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    idx = torch.randint(0, cfg.vocab_size, (batch_size, seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(idx, idx)
    return sum(size for pointer, size in saved.items() if pointer not in parameters)


@pytest.mark.slow
@pytest.mark.parametrize("phase", [1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_estimate_is_close_to_what_autograd_saves(phase, precision):
    """Measured on the laptop phases: the saved tensors are 0.96-1.20x the estimate."""
    cfg = preset("laptop").phase_configs()[phase - 1]
    estimate = training_memory(cfg, 8, 128, precision).activations
    measured = saved_activation_bytes(cfg, 8, 128, precision)
    assert 0.8 < measured / estimate < 1.3, f"measured {measured / 1e6:.1f} MB, estimated {estimate / 1e6:.1f} MB"


def test_state_memory_is_16_bytes_per_parameter_at_either_precision():
    for cfg in preset("seed").phase_configs():
        fp32, bf16 = training_memory(cfg, 32, 512, "fp32"), training_memory(cfg, 32, 512, "bf16")
        assert fp32.state.total == bf16.state.total == 16 * count_from_config(cfg).total
        assert bf16.activations < fp32.activations


@pytest.mark.parametrize("grad_accum, gib", [(1, [11.1, 18.3, 62.3]), (4, [4.0, 9.2, 43.7])])
def test_seed_banner_states_the_memory_of_each_phase(capsys, grad_accum, gib):
    """The figures docs/three-phase-command.md quotes for the seed preset in bf16 (batch 32 x 512), to 0.1 GiB."""
    assert main(["train", "--preset", "seed", "--dry-run", "--precision", "bf16",
                 "--grad-accum", str(grad_accum)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "Memory (" in line]
    assert [float(line.split(": ")[1].split(" GiB")[0]) for line in lines] == gib
    phase3 = preset("seed").phase_configs()[2]
    assert training_memory(phase3, 32 // grad_accum, 512, "bf16").state.total / 2**30 > 30   # 2.24 B x 16 bytes
