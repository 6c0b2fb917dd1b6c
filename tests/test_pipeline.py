"""The three-phase command: banners, jumps, outputs, checkpoints and resume."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_helpers.pipeline import main

ROOT = Path(__file__).resolve().parent.parent
def command(*args) -> list[str]:
    return [sys.executable, "-u", "-m", "moe_helpers", "train", *args]


def run_command(*args, timeout=300):
    return subprocess.run(command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy())


def final_val_loss(out: Path) -> float:
    return json.loads((out / "summary.json").read_text())["phases"][-1]["final_val_loss"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_run):
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = subprocess.run(command(*tiny_run, "--out", str(out)), cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.mark.slow
def test_three_banners_three_phases_and_small_jumps(finished_run):
    out, stdout = finished_run
    assert stdout.count("Total Parameters:") == 3
    for title in ("Phase 1 \u2014 Dense", "Phase 2 \u2014 MoE", "Phase 3 \u2014 Large MoE (Bilateral Growth)"):
        assert f"  {title}\n" in stdout
    assert "(Dense model)" in stdout and "(top-2 of 4 experts)" in stdout
    assert re.search(r"^  step   10 \| loss \d+\.\d{4} \| \d+\.\ds", stdout, re.M)
    jumps = re.findall(r"Phase (\d)\u2192(\d) jump: (\d+\.\d{6})  \u2713 < 0\.001", stdout)
    assert [(a, b) for a, b, _ in jumps] == [("1", "2"), ("2", "3")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and [p["phase"] for p in summary["phases"]] == [1, 2, 3]
    assert summary["phases"][0]["jump"] is None
    for phase in summary["phases"][1:]:
        assert abs(phase["jump"]) < 1e-4 and phase["max_abs_logit_diff"] < 1e-4
    totals = [p["total_params"] for p in summary["phases"]]
    assert totals[0] < totals[1] < totals[2]


@pytest.mark.slow
def test_output_files_are_valid(finished_run):
    out, _ = finished_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in records} == {1, 2, 3}
    keys = {"phase", "step", "train_loss", "val_loss", "aux_loss", "lr", "tokens", "seconds", "expert_load"}
    assert all(keys <= set(r) for r in records)
    assert all(len(r["expert_load"]) == (0 if r["phase"] == 1 else 2 + (r["phase"] == 3)) for r in records)
    steps = [r["global_step"] for r in records]
    assert steps == sorted(steps)
    for name in ("loss_curve.png", "expert_utilisation.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for phase in (1, 2, 3):
        assert (out / f"story_phase{phase}.txt").read_text().startswith("Once upon a time")
        state = torch.load(out / "checkpoints" / f"phase{phase}.pt", weights_only=True)
        assert state["phase"] == phase and state["completed"]
    latest = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["phase"] == 3 and latest["completed"]
    assert not list((out / "checkpoints").glob(".*tmp*"))   # atomic writes leave no temporaries


@pytest.mark.multiprocess
def test_dry_run_of_seed_prints_the_original_figures_in_seconds():
    result = run_command("--preset", "seed", "--dry-run", timeout=60)
    assert result.returncode == 0, result.stderr
    figures = [float(x) for x in re.findall(r"(\d+\.\d\d) M", result.stdout)]
    dense_total, dense_active, moe_total, moe_active, moe_inactive = figures[:5]
    for measured, note in ((dense_total, 100.04), (dense_active, 100.04), (moe_total, 371.64),
                           (moe_active, 138.88), (moe_inactive, 232.76)):
        assert abs(measured / note - 1) < 1e-3
    assert "(42 experts idle)" in result.stdout and "Efficiency: 37.4% active per forward pass" in result.stdout
    assert "(66 experts idle)" in result.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("stop_signal, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny_run, finished_run, stop_signal, exit_code):
    """Ctrl-C, or a SIGTERM (a job scheduler's, torchrun's), ends the step, writes a checkpoint and exits."""
    reference, _ = finished_run
    out = tmp_path / "interrupted"
    process = subprocess.Popen(command(*tiny_run, "--out", str(out)), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    seen = []
    for line in process.stdout:             # interrupt in the middle of phase 2
        seen.append(line)
        if "Phase 2 \u2014 MoE" in "".join(seen) and line.startswith("  step   10"):
            process.send_signal(stop_signal)
            break
    rest, _ = process.communicate(timeout=300)
    assert process.returncode == exit_code, "".join(seen) + rest
    assert ("Terminated." if stop_signal == signal.SIGTERM else "Interrupted.") in rest
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert state["phase"] == 2 and not state["completed"]

    resumed = run_command(*tiny_run, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stdout
    assert abs(final_val_loss(out) - final_val_loss(reference)) < 1e-6


def test_existing_out_is_refused(tmp_path, tiny_run, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["train", *tiny_run, "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_corrupt_checkpoint_is_named_and_left_alone(tmp_path, tiny_run, capsys):
    checkpoint = tmp_path / "checkpoints" / "latest.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    assert main(["train", *tiny_run, "--out", str(tmp_path), "--resume"]) == 2
    assert str(checkpoint) in capsys.readouterr().err
    assert checkpoint.read_bytes() == b"not a checkpoint"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "latest.pt"]


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_phase_and_keeps_the_last_good_checkpoint(tmp_path, tiny_run, capsys):
    code = main(["train", *tiny_run, "--out", str(tmp_path), "--lr-phase2", "1e12"])
    assert code == 4
    err = capsys.readouterr().err
    assert re.search(r"at step \d+ of phase 2", err)
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert state["phase"] == 1 and state["completed"]
    assert all(torch.isfinite(tensor).all() for tensor in state["model"].values())


@pytest.mark.multiprocess
@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "invalid choice"),
    (["--data", "nowhere"], "choose auto, offline, hub, an existing file path or a hub-shaped folder"),
    (["--experts", "2", "--top-k", "3"], "top_k must be an integer in 1..num_experts"),
    (["--width-factor", "0"], "factor must be an integer >= 1"),
])
def test_bad_options_are_explained(tmp_path, tiny_run, args, message):
    result = run_command(*tiny_run, "--out", str(tmp_path / "out"), *args, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


# ------------------------------------------------------------ transformers export
def _checkpoint_model(out: Path, phase: int):
    from moe_helpers.config import ModelConfig
    from moe_helpers.model import GPT

    state = torch.load(out / "checkpoints" / f"phase{phase}.pt", weights_only=True)
    model = GPT(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval()


def _loads_with_transformers_alone(folder: Path, model, tokenizer_text: str = "Once upon a time, Lily"):
    """The folder loads with AutoModelForCausalLM / AutoTokenizer and computes ``model``'s logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tokenizer(tokenizer_text)["input_ids"]])
    with torch.no_grad():
        gap = (hf_model(ids).logits - model(ids).logits).abs().max().item()
    assert gap <= 1e-5, gap
    return hf_model


@pytest.mark.slow
def test_each_phase_is_saved_for_transformers(finished_run):
    out, stdout = finished_run
    architectures = {}
    for phase in (1, 2, 3):
        hf_model = _loads_with_transformers_alone(out / "hf" / f"phase{phase}", _checkpoint_model(out, phase))
        architectures[phase] = type(hf_model).__name__
    assert architectures == {1: "LlamaForCausalLM", 2: "MixtralForCausalLM", 3: "MixtralForCausalLM"}
    assert stdout.count("Saved for transformers:") == 3


@pytest.mark.slow
def test_export_command_writes_a_loadable_folder(finished_run, tmp_path, capsys):
    out, _ = finished_run
    assert main(["export", str(out), "--phase", "2", "--out", str(tmp_path / "moe")]) == 0
    assert "hf upload" in capsys.readouterr().out
    _loads_with_transformers_alone(tmp_path / "moe", _checkpoint_model(out, 2))
    assert main(["export", str(out), "--out", str(tmp_path / "last")]) == 0          # default: the last phase
    assert json.loads((tmp_path / "last" / "config.json").read_text())["num_hidden_layers"] == \
        _checkpoint_model(out, 3).cfg.n_layers


@pytest.mark.slow
def test_export_explains_what_is_missing(finished_run, tmp_path, capsys):
    out, _ = finished_run
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no completed phase" in capsys.readouterr().err
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "phase1.pt").write_bytes((out / "checkpoints" / "phase1.pt").read_bytes())
    assert main(["export", str(partial), "--phase", "3", "--out", str(tmp_path / "x")]) == 2
    message = capsys.readouterr().err
    assert "phase 3" in message and "completed: 1" in message
    assert main(["export", str(partial), "--out", str(tmp_path / "x")]) == 2
    assert "tokenizer.json is missing" in capsys.readouterr().err
