"""Expert parallelism under real processes: ``torchrun`` with the gloo backend on the CPU.

Each test launches ``tests/distributed/*.py`` in 2 or 4 processes with a time limit;
torchrun's ``--standalone`` picks a free port, and the processes end with the test
(they exit on their own, or torchrun's timeout kills the whole group).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_helpers.accounting import all_to_all_bytes

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
