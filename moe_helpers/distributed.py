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
  name with whole tensors, so one checkpoint format serves any number of ranks;
* ``leave_process_group()`` at the end: frees the sharded models, then the group.

With ``expert_parallel=True`` the MoE layers become ``parallel.ExpertParallelMoE``:
each rank keeps ``E / W`` whole experts (not a shard of every expert) and the
token slots travel to them; FSDP2 manages everything else.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


def leave_process_group() -> None:
    """End this process's part in the process group, for a clean exit.

    A ``fully_shard``-ed model refers to itself in a cycle (each block's FSDP state
    lists the root's modules), so dropping the last name for it does not free it:
    only the garbage collector does.  If the collector has not run by then, the model,
    with its sharded weights and the communication work they hold, is freed during
    the interpreter's shutdown, after the group is gone, and gloo can abort the process
    ("terminate called without an active exception") although the run finished well.
    So collect first, then destroy the group.
    """
    gc.collect()
    dist.destroy_process_group()


@dataclass(frozen=True)
class DataParallel:
    """This process's place among ``world`` data-parallel ranks."""

    rank: int
    world: int
    device: torch.device
    expert_parallel: bool = False     # MoE layers hold E / world experts each (ExpertParallelMoE)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, writes files and checkpoints."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, expert_parallel: bool = False) -> "DataParallel | None":
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
        return cls(dist.get_rank(), dist.get_world_size(), device, expert_parallel)

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

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any (e.g. Ctrl-C reached one rank first)."""
        total = torch.tensor(float(flag), device=self.device)
        return bool(self.all_reduce_sum_(total).item() > 0)

    # ----------------------------------------------------------------- models
    def check_experts(self, num_experts: int) -> None:
        if self.expert_parallel and num_experts % self.world:
            raise ValueError(f"--expert-parallel: num_experts ({num_experts}) must be divisible by the number of "
                             f"ranks ({self.world})")

    def shard(self, model: nn.Module) -> nn.Module:
        """FSDP2: each block is one unit (its weights gathered just before it runs and
        freed after), then the rest (embedding, final norm, LM head).  With expert
        parallelism each MoE layer first keeps this rank's experts, which FSDP2 leaves
        alone (``ignored_params``): they are whole on their rank and nowhere else."""
        from torch.distributed.fsdp import fully_shard

        from .parallel import ExpertParallelMoE

        own_experts = set()
        for block in model.layers:
            if self.expert_parallel and block.is_moe:
                block.ffn = ExpertParallelMoE.from_moe(block.ffn).to(self.device)
                own_experts |= set(block.ffn.experts.parameters())
            fully_shard(block, ignored_params=own_experts & set(block.parameters()) or None)
        fully_shard(model, ignored_params=own_experts or None)
        return model

    def own_experts(self, model: nn.Module) -> list[torch.Tensor]:
        """The parameters of this rank's experts (expert parallelism; empty otherwise)."""
        from .parallel import ExpertParallelMoE

        return [p for module in model.modules() if isinstance(module, ExpertParallelMoE)
                for p in module.experts.parameters()]

    def finish_gradients(self, model: nn.Module) -> None:
        """After backward: FSDP2 has averaged the shared weights' gradients over the ranks;
        an expert's gradient arrived through the all-to-all as the *sum* of every rank's
        contribution, so it is divided by the number of ranks to be an average too."""
        for param in self.own_experts(model):
            if param.grad is not None:
                param.grad.div_(self.world)

    def clip_grad_norm_(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Global gradient-norm clipping over sharded weights and this rank's experts: each
        rank adds the squares it holds (a shard, or whole experts), one all-reduce sums them."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        squares = torch.zeros((), device=self.device, dtype=torch.float32)
        for g in local:
            squares += g.detach().float().pow(2).sum()
        total = self.all_reduce_sum_(squares).sqrt()
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in local:
            g.mul_(scale.to(g.dtype))
        return total

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


def _expert_layers(model: nn.Module) -> dict:
    """Expert-parallel layers by name prefix (``layers.3.ffn.``)."""
    from .parallel import ExpertParallelMoE

    return {f"{name}.": module for name, module in model.named_modules() if isinstance(module, ExpertParallelMoE)}


def _global_name(name: str, expert_layers: dict) -> tuple[str, bool]:
    """``layers.3.ffn.experts.1.w1.weight`` of rank r's local expert 1 -> the full model's name
    (expert ``r * E/W + 1``) and True (a whole expert only this rank holds); other names are
    unchanged, with False."""
    for prefix, layer in expert_layers.items():
        if name.startswith(prefix + "experts."):
            local, rest = name[len(prefix + "experts."):].split(".", 1)
            return f"{prefix}experts.{layer.first_expert + int(local)}.{rest}", True
    return name, False


def _gather_from_ranks(local: dict) -> dict:
    """Every rank's ``{name: tensor}`` (CPU) merged, on every rank."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return {name: value for part in everyone for name, value in part.items()}


def full_state_dict(model: nn.Module) -> dict:
    """``model.state_dict()`` with whole tensors, whether it is sharded or not, under the full
    model's names (every rank must call it when it is sharded)."""
    expert_layers = _expert_layers(model)
    state, own = {}, {}
    for name, tensor in model.state_dict().items():
        global_name, only_here = _global_name(name, expert_layers)
        if only_here:                                   # a whole expert that only this rank holds
            own[global_name] = tensor.detach().cpu()
        else:
            state[name] = _full(tensor).detach()
    if expert_layers:
        device = next(iter(state.values())).device
        state.update({name: t.to(device) for name, t in _gather_from_ranks(own).items()})
    return state


def parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The full model's name of each parameter in the optimiser's order (group by group).
    Call it when the optimiser is made: FSDP2 swaps a model's parameters for whole ones while
    it runs."""
    expert_layers = _expert_layers(model)
    names = {id(param): _global_name(name, expert_layers)[0] for name, param in model.named_parameters()}
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
    if dist.is_initialized() and _has_rank_own_names(names):    # expert parallelism: every rank's experts
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (state, groups))
        state = {name: values for part, _ in everyone for name, values in part.items()}
        groups = [{**group, "params": list(dict.fromkeys(name for _, part_groups in everyone
                                                        for name in part_groups[g]["params"]))}
                  for g, group in enumerate(groups)]
    return {"state": state, "param_groups": groups}


def _has_rank_own_names(names: list[str]) -> bool:
    """Whether the ranks hold different parameters (expert parallelism), which is the same
    answer on every rank."""
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, sorted(names))
    return any(part != counts[0] for part in counts)


def load_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str], saved: dict) -> None:
    """Load ``optimizer_state``'s output, re-sharding every tensor like its parameter."""
    index_of = {name: index for index, name in enumerate(names)}
    params = [param for group in optimizer.param_groups for param in group["params"]]
    state = {}
    for name, values in saved["state"].items():
        if name not in index_of:                       # another rank's expert (expert parallelism)
            continue
        param = params[index_of[name]]
        state[index_of[name]] = {key: _like(param, value) for key, value in values.items()}
    # torch pairs saved and current parameters by position, so the groups list the current
    # optimiser's own parameters in its own order (index i = parameter i); hyperparameters are the saved ones
    groups, start = [], 0
    for saved_group, group in zip(saved["param_groups"], optimizer.param_groups):
        groups.append({**saved_group, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
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
