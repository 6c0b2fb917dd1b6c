"""What the ``torchrun`` check scripts beside it share (``torchrun`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable

import torch.distributed as dist

from moe_helpers.distributed import DataParallel, leave_process_group


def check(condition: bool, message: str) -> None:
    """Stop this rank with ``message`` (and a non-zero exit, which fails the whole run) if not ``condition``."""
    if not condition:
        print(f"rank {dist.get_rank()}: {message}", file=sys.stderr, flush=True)
        sys.exit(1)


def with_and_without_expert_parallelism(compare: Callable[[DataParallel], None]) -> None:
    """``compare`` under FSDP2 alone, then with the MoE layers expert-parallel too; then leave."""
    parallel = DataParallel.from_environment()
    compare(parallel)
    compare(dataclasses.replace(parallel, expert_parallel=True))
    leave_process_group()
