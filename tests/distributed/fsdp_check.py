"""Run by ``torchrun`` from ``tests/test_parallel.py``: FSDP2 training equals one process.

Every rank builds the same model and the same global batches.  A plain copy trains on the
whole batch (the single-process reference, computed on each rank); an FSDP2 copy trains on
this rank's slice.  After three AdamW steps the losses, the weights and the optimiser state
saved by ``optimizer_state`` must agree; the saved state must load into a plain optimiser and
into a fresh FSDP2 one, and one more step from each must agree again.
"""

import copy

import torch
import torch.distributed as dist

from moe_helpers.config import preset
from moe_helpers.distributed import (DataParallel, full_state_dict, load_optimizer_state, optimizer_state,
                                     parameter_names)
from moe_helpers.model import GPT
from moe_helpers.train import make_optimizer

from common import check, with_and_without_expert_parallelism

TOLERANCE = 1e-10         # losses
WEIGHT_TOLERANCE = 1e-8   # weights and AdamW moments: Adam's 1/sqrt(v) amplifies rounding where a gradient is ~0


def step(model, optimizer, inputs, targets, parallel=None) -> float:
    """One AdamW step as ``train_phase`` takes it (one process, or one rank's slice)."""
    optimizer.zero_grad(set_to_none=True)
    out = model(inputs, targets)
    (out.loss + out.aux_loss).backward()
    if parallel is None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    else:
        parallel.finish_gradients(model)
        parallel.clip_grad_norm_(model, 1.0)
    optimizer.step()
    return out.loss.detach()


def biggest_gap(a: dict, b: dict) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


def optimizer_gap(a: dict, b: dict) -> float:
    return max((a["state"][name][key] - b["state"][name][key]).abs().max().item()
               for name in a["state"] for key in ("exp_avg", "exp_avg_sq"))


def compare(parallel: DataParallel) -> None:
    torch.manual_seed(0)
    cfg = preset("tiny").model.replace(num_experts=4, top_k=2, bias_update_rate=0.0)
    if not parallel.expert_parallel:
        # aux losses off: under data parallelism each rank balances its own slice of the batch, a
        # (slightly) different objective from one process balancing the whole batch (expert
        # parallelism computes them on global statistics, so there they stay on)
        cfg = cfg.replace(aux_loss_coef=0.0, z_loss_coef=0.0)
    reference = GPT(cfg).double()          # float64: any difference above rounding is a bug
    sharded = parallel.shard(copy.deepcopy(reference))
    reference_optimizer = make_optimizer(reference, 1e-2, 0.1)
    sharded_optimizer = make_optimizer(sharded, 1e-2, 0.1)
    reference_names = parameter_names(reference, reference_optimizer)
    sharded_names = parameter_names(sharded, sharded_optimizer)
    if parallel.expert_parallel:   # this rank's experts only, under the full model's names
        check(set(sharded_names) < set(reference_names), "expert-parallel names are not the full model's")
    else:
        check(reference_names == sharded_names, "parameter names differ between the plain and the sharded model")
    batches = [torch.randint(0, cfg.vocab_size, (8, 17), generator=torch.Generator().manual_seed(seed))
               for seed in range(4)]
    for batch in batches[:3]:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        expected = step(reference, reference_optimizer, inputs, targets)
        mine = step(sharded, sharded_optimizer, *parallel.my_slice(inputs, targets), parallel=parallel)
        dist.all_reduce(mine)
        gap = abs(mine.item() / parallel.world - expected.item())
        check(gap < TOLERANCE, f"losses differ by {gap:.2e}")
    gap = biggest_gap(full_state_dict(sharded), reference.state_dict())
    check(gap < WEIGHT_TOLERANCE, f"weights differ by {gap:.2e}")
    saved_sharded = optimizer_state(sharded_optimizer, sharded_names)
    saved_reference = optimizer_state(reference_optimizer, reference_names)
    gap = optimizer_gap(saved_sharded, saved_reference)
    check(gap < WEIGHT_TOLERANCE, f"optimiser states differ by {gap:.2e}")

    # the sharded run's state resumes in one process, the single process's in a sharded one
    plain = GPT(cfg).double()
    plain.load_state_dict(full_state_dict(sharded))
    plain_optimizer = make_optimizer(plain, 1e-2, 0.1)
    load_optimizer_state(plain_optimizer, parameter_names(plain, plain_optimizer), saved_sharded)
    resharded = parallel.shard(copy.deepcopy(reference))
    resharded_optimizer = make_optimizer(resharded, 1e-2, 0.1)
    load_optimizer_state(resharded_optimizer, parameter_names(resharded, resharded_optimizer), saved_reference)
    inputs, targets = batches[3][:, :-1], batches[3][:, 1:]
    step(reference, reference_optimizer, inputs, targets)
    step(plain, plain_optimizer, inputs, targets)
    step(resharded, resharded_optimizer, *parallel.my_slice(inputs, targets), parallel=parallel)
    gaps = (biggest_gap(plain.state_dict(), reference.state_dict()),
            biggest_gap(full_state_dict(resharded), reference.state_dict()))
    check(max(gaps) < WEIGHT_TOLERANCE, f"after resuming, one process / sharded differ by {gaps}")
    if parallel.is_main:
        kind = "expert parallel + FSDP2" if parallel.expert_parallel else "FSDP2"
        print(f"{kind} OK on {parallel.world} ranks", flush=True)


if __name__ == "__main__":
    with_and_without_expert_parallelism(compare)
