"""Expert parallelism under real processes: ``torchrun`` with the gloo backend on the CPU.

Each test launches ``tests/distributed/*.py`` in 2 or 4 processes with a time limit;
torchrun's ``--standalone`` picks a free port, and the processes end with the test
(they exit on their own, or torchrun's timeout kills the whole group).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_helpers.accounting import all_to_all_bytes

pytestmark = pytest.mark.multiprocess   # every test here launches torchrun or spawns processes

ROOT = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "distributed"


def torchrun(script: str, processes: int, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``script`` under ``torchrun --standalone --nproc-per-node processes``; one torch thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               str(WORKERS / script), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("processes", [2, 4])
def test_expert_parallel_equals_the_single_process_layer(processes):
    """Outputs, input and expert gradients (float64, 1e-10), aux losses and loads, top-1 and top-2,
    an expert no token chooses, the sequence-wise loss, the bytes sent, and the refusal of
    experts that do not divide over the ranks: see expert_parallel_check.py."""
    result = torchrun("expert_parallel_check.py", processes)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"expert parallel OK on {processes} ranks" in result.stdout


def test_all_to_all_bytes_formula():
    assert all_to_all_bytes(1000, 2, 64, 2, 1) == 0                       # one rank: nothing travels
    assert all_to_all_bytes(1000, 2, 64, 2, 4) == 2 * 1000 * 2 * 64 * 2 * 0.75
    with pytest.raises(ValueError, match="ranks"):
        all_to_all_bytes(1000, 2, 64, 2, 0)


def test_fsdp2_training_and_its_optimizer_state_equal_one_process():
    """Three AdamW steps sharded over 2 ranks = one process on the whole batch (float64, 1e-8), with
    and without expert parallelism, and the optimiser state saved by either resumes in the other:
    see fsdp_check.py."""
    result = torchrun("fsdp_check.py", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FSDP2 OK on 2 ranks" in result.stdout
    assert "expert parallel + FSDP2 OK on 2 ranks" in result.stdout


# ------------------------------------------------------- the three-phase run
@pytest.fixture(scope="module")
def run_args(tiny_run) -> list[str]:
    """The tiny three-phase run, logging every step (the records compared across process counts)."""
    return [*tiny_run, "--log-every", "1"]


def train_command(run_args: list[str], out: Path, processes: int, *extra: str) -> tuple[list[str], dict]:
    """``python -m moe_helpers train`` in one process, or under torchrun in several, and its
    environment (one torch thread a process; the session's keeps the hub offline)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    return [*launcher, "-m", "moe_helpers", "train", *run_args, "--out", str(out), *extra], env


def train(run_args: list[str], out: Path, processes: int, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``train_command`` to its end."""
    command, env = train_command(run_args, out, processes, *extra)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def layout(out: Path) -> list[str]:
    return sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_token_cache, run_args):
    """The same tiny three-phase run in one process, in two (FSDP2) and in two with expert parallelism."""
    folder = tmp_path_factory.mktemp("parallel")
    finished = {}
    for name, processes, extra in ((1, 1, ()), (2, 2, ()), ("ep", 2, ("--expert-parallel",))):
        result = train(run_args, folder / f"{name}", processes, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        finished[name] = (folder / f"{name}", result.stdout)
    return finished


@pytest.fixture(scope="module")
def shared_token_cache(tmp_path_factory):
    """One token cache for the module's runs, in a temporary folder."""
    previous = os.environ.get("MOE_COURSE_CACHE")
    os.environ["MOE_COURSE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("MOE_COURSE_CACHE")
    else:
        os.environ["MOE_COURSE_CACHE"] = previous


def test_two_processes_track_one_and_write_the_same_outputs(runs):
    (one, _), (two, stdout) = runs[1], runs[2]
    a, b = records(one), records(two)
    assert [r["global_step"] for r in a] == [r["global_step"] for r in b]
    gaps = [abs(x["train_loss"] - y["train_loss"]) for x, y in zip(a, b)]
    assert max(gaps) <= 1e-3, max(gaps)                          # measured 3.4e-4 (aux losses are per rank)
    val_gaps = [abs(x["val_loss"] - y["val_loss"]) for x, y in zip(a, b) if x["val_loss"] is not None]
    assert len(val_gaps) >= 3 and max(val_gaps) <= 1e-3, val_gaps  # measured 2.4e-5; each rank reads half
    summary = json.loads((two / "summary.json").read_text())
    assert [abs(p["jump"]) < 1e-4 for p in summary["phases"][1:]] == [True, True]
    assert layout(one) == layout(two)
    assert stdout.count("Total Parameters:") == 3                 # rank 0 alone prints


def test_expert_parallel_run_tracks_one_process(runs):
    """Its aux losses use global statistics, so it follows the single process even more closely."""
    (one, _), (ep, stdout) = runs[1], runs["ep"]
    gaps = [abs(x["train_loss"] - y["train_loss"]) for x, y in zip(records(one), records(ep))]
    assert len(gaps) == len(records(one)) and max(gaps) <= 1e-4, max(gaps)     # measured 1e-6
    val_gaps = [abs(x["val_loss"] - y["val_loss"]) for x, y in zip(records(one), records(ep))
                if x["val_loss"] is not None]
    assert len(val_gaps) >= 3 and max(val_gaps) <= 1e-4, val_gaps   # measured 5e-7
    summary = json.loads((ep / "summary.json").read_text())
    assert [abs(p["jump"]) < 1e-4 for p in summary["phases"][1:]] == [True, True]
    assert layout(one) == layout(ep)
    assert stdout.count("Total Parameters:") == 3


def _resume_from(source: Path, phase: int, target: Path) -> None:
    """A run folder whose newest checkpoint is ``source``'s end of ``phase``."""
    (target / "checkpoints").mkdir(parents=True)
    (target / "checkpoints" / "latest.pt").write_bytes((source / "checkpoints" / f"phase{phase}.pt").read_bytes())


@pytest.mark.parametrize("started, resumed, phase", [(2, 1, 1), (1, 2, 1), ("ep", 1, 2)])
def test_a_run_resumes_with_another_number_of_processes(runs, run_args, tmp_path, started, resumed, phase):
    source = runs[started][0]
    _resume_from(source, phase, tmp_path / "resumed")
    result = train(run_args, tmp_path / "resumed", resumed, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    continued = [r for r in records(tmp_path / "resumed") if r["phase"] > phase]
    original = [r for r in records(source) if r["phase"] > phase]
    gaps = [abs(x["train_loss"] - y["train_loss"]) for x, y in zip(continued, original)]
    assert len(continued) == len(original) and max(gaps) <= 1e-3, max(gaps)


@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM to torchrun"])
def test_a_stopped_run_writes_a_checkpoint_on_every_rank_and_resumes(runs, run_args, tmp_path, how):
    """Ctrl-C in a terminal signals torchrun and its workers (one process group); a job scheduler, or
    ``kill``, signals torchrun, which sends SIGTERM to its workers.  Either way the ranks finish the
    step together, write one checkpoint and exit; ``--resume`` then ends where the run that was never
    stopped ended."""
    out = tmp_path / "stopped"
    command, env = train_command(run_args, out, 2)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)       # its own group, as in a terminal
    seen = []
    try:
        for line in process.stdout:                                      # stop in the middle of phase 2
            seen.append(line)
            if "Phase 2 \u2014 MoE" in "".join(seen) and line.startswith("  step   10"):
                if how == "Ctrl-C":
                    os.killpg(process.pid, signal.SIGINT)
                else:
                    process.send_signal(signal.SIGTERM)
                break
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = "".join(seen) + rest
    assert process.returncode != 0, output
    assert ("Interrupted." if how == "Ctrl-C" else "Terminated.") in output, output
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert state["phase"] == 2 and not state["completed"] and state["train_state"]["step"] >= 10

    resumed = train(run_args, out, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final, never_stopped = (json.loads((folder / "summary.json").read_text())["phases"][-1]["final_val_loss"]
                            for folder in (out, runs[2][0]))
    assert abs(final - never_stopped) <= 1e-6, (final, never_stopped)


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path, run_args):
    result = train(run_args, tmp_path / "odd", 2, "--grad-accum", "8")        # micro-batches of 1 sequence, 2 ranks
    assert result.returncode != 0
    assert "micro-batch of 1 sequences does not split over 2 ranks" in result.stderr


def test_expert_parallel_needs_processes_and_experts_that_divide(tmp_path, run_args):
    alone = train(run_args, tmp_path / "alone", 1, "--expert-parallel")
    assert alone.returncode == 2 and "--expert-parallel needs several processes" in alone.stderr
    three = train(run_args, tmp_path / "three", 3, "--expert-parallel")                # the tiny preset has 4 experts
    assert three.returncode != 0
    assert "num_experts (4) must be divisible by the number of ranks (3)" in three.stderr


def test_the_expert_bias_moves_alike_on_every_rank_and_as_in_one_process():
    """Auxiliary-loss-free balancing under FSDP2, with and without expert parallelism: each step's
    load is summed over the ranks before the bias moves, so every rank holds one process's bias:
    see bias_check.py."""
    result = torchrun("bias_check.py", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FSDP2: expert bias OK on 2 ranks" in result.stdout
    assert "expert parallel + FSDP2: expert bias OK on 2 ranks" in result.stdout


def test_leaving_the_process_group_frees_the_sharded_models_first(monkeypatch):
    """A ``fully_shard``-ed model lives in a reference cycle, so dropping it does not free it.
    ``leave_process_group`` collects it before it destroys the group; freed later, in the
    interpreter's shutdown, it made gloo abort finished runs ("terminate called without an
    active exception"). One process, a gloo group of one, the automatic collector off."""
    import gc
    import weakref

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from moe_helpers.config import preset
    from moe_helpers.distributed import leave_process_group
    from moe_helpers.model import GPT

    alive_at_destroy = []
    destroy = dist.destroy_process_group
    monkeypatch.setattr(dist, "destroy_process_group", lambda: (alive_at_destroy.append(model() is not None),
                                                                destroy()))
    was_enabled = gc.isenabled()
    gc.disable()
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        cfg = preset("tiny").model.replace(num_experts=4, top_k=2)
        sharded = GPT(cfg)
        for block in sharded.layers:
            fully_shard(block)
        fully_shard(sharded)
        tokens = torch.randint(0, cfg.vocab_size, (2, 8))
        sharded(tokens, tokens).loss.backward()
        model = weakref.ref(sharded)
        del sharded, block
        assert model() is not None                      # the cycle: only the collector frees it
        leave_process_group()
    finally:
        if dist.is_initialized():
            destroy()
        if was_enabled:
            gc.enable()
    assert alive_at_destroy == [False]
    assert not dist.is_initialized()
