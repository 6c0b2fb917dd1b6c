"""Data parallelism for the three-phase run: ``torchrun`` processes and FSDP2.

    torchrun --nproc-per-node 2 -m moe_helpers train --preset tiny --out runs/tiny-2

Every process (rank) holds a shard of every weight (FSDP2, ``fully_shard``: Zhao et
al. 2023, "PyTorch FSDP"), reads its own slice of each global batch, and the
gradients are averaged across ranks, so an optimiser step sees the same mean
gradient as one process on the whole batch.  Rank 0 alone prints and writes.

* ``DataParallel.from_environment()`` reads torchrun's variables (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``) and starts the process group: ``gloo`` on CPUs,
  ``nccl`` on GPUs (one GPU per rank);
* ``shard(model)`` / ``gather(model)``: FSDP2 for training, a plain full ``GPT``
  on every rank for growth, checkpoints, stories and export;
* ``optimizer_state`` / ``load_optimizer_state``: AdamW state keyed by parameter
  name with whole tensors, so one checkpoint format serves any number of ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world`` data-parallel ranks."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, writes files and checkpoints."""
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "DataParallel | None":
        """The process group that ``torchrun`` set up the variables for, or None in a plain run."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            backend = "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    # ---------------------------------------------------------------- batches
    def check_batch(self, micro_batch_size: int) -> None:
        """Each rank takes an equal slice of every micro-batch."""
        if micro_batch_size % self.world:
            raise ValueError(f"the micro-batch of {micro_batch_size} sequences does not split over {self.world} "
                             f"ranks: choose batch_size / grad_accum divisible by {self.world}")

    def my_slice(self, *tensors: torch.Tensor):
        """This rank's rows of a (global) micro-batch: rows ``rank * n / world ...``."""
        rows = tensors[0].shape[0] // self.world
        return tuple(t[self.rank * rows:(self.rank + 1) * rows] for t in tensors)

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        dist.barrier()

    # ----------------------------------------------------------------- models
    def shard(self, model: nn.Module) -> nn.Module:
        """FSDP2: each block is one unit (its weights gathered just before it runs and
        freed after), then the rest (embedding, final norm, LM head)."""
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        return model

    def gather(self, model: nn.Module) -> nn.Module:
        """A plain (unsharded) copy of ``model`` with its full weights, on every rank."""
        from .model import GPT

        state = full_state_dict(model)
        plain = GPT(model.cfg).to(self.device)
        plain.load_state_dict(state)
        return plain.train(model.training)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (``DTensor``; a collective), or the tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_state_dict(model: nn.Module) -> dict:
    """``model.state_dict()`` with whole tensors, whether it is sharded or not (every rank
    must call it when it is)."""
    return {name: _full(tensor).detach() for name, tensor in model.state_dict().items()}


def parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter in the optimiser's order (group by group).  Call it when
    the optimiser is made: FSDP2 swaps a model's parameters for whole ones while it runs."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def optimizer_state(optimizer: torch.optim.Optimizer, names: list[str]) -> dict:
    """The optimiser's state keyed by parameter name (``parameter_names``), whole tensors on
    the CPU: the same for one process and for any number of FSDP ranks (all ranks must call it).
    The tensors are copies, so the optimiser stepping on does not change what was saved."""
    raw = optimizer.state_dict()
    state = {names[index]: {key: _full(value).detach().cpu().clone() if torch.is_tensor(value) else value
                            for key, value in values.items()}
             for index, values in raw["state"].items()}
    groups = [{**group, "params": [names[index] for index in group["params"]]} for group in raw["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str], saved: dict) -> None:
    """Load ``optimizer_state``'s output, re-sharding every tensor like its parameter."""
    index_of = {name: index for index, name in enumerate(names)}
    params = [param for group in optimizer.param_groups for param in group["params"]]
    state = {}
    for name, values in saved["state"].items():
        param = params[index_of[name]]
        state[index_of[name]] = {key: _like(param, value) for key, value in values.items()}
    groups = [{**group, "params": [index_of[name] for name in group["params"]]} for group in saved["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _like(param: torch.Tensor, value):
    """A saved optimiser tensor placed like ``param``: sharded the same way if ``param`` is a
    ``DTensor`` and ``value`` has its shape (AdamW's moments), as is otherwise (the step count)."""
    if not torch.is_tensor(value):
        return value
    if hasattr(param, "device_mesh") and value.shape == param.shape:
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(param.device_mesh.device_type), param.device_mesh, param.placements)
    return value.clone()                    # never share storage with the saved state
