"""Run by ``torchrun`` from ``tests/test_parallel.py``: ``ExpertParallelMoE`` against ``MoELayer``.

Every rank builds the same full ``MoELayer`` and the same global batch (seeded), computes the
single-process reference on all tokens, then the expert-parallel layer on its own slice of the
tokens, and compares (float64): outputs and input gradients of its tokens, the gradients of its
own experts, the router gradient (summed over ranks), the aux loss and the global loads.
Exits non-zero, naming the case, at the first difference over the tolerance.
"""


import torch
import torch.distributed as dist

from moe_helpers.distributed import leave_process_group
from moe_helpers.moe import MoELayer
from moe_helpers.parallel import ExpertParallelMoE

from common import check

TOLERANCE = 1e-10
D_MODEL, D_FF, TOKENS_PER_RANK = 16, 24, 24


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def run_case(num_experts: int, top_k: int, idle_expert: bool, scope: str) -> None:
    world, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(0)
    moe = MoELayer(D_MODEL, D_FF, num_experts, top_k, aux_loss_coef=0.5, z_loss_coef=0.1,
                   balance_loss_scope=scope).double()
    if idle_expert:                                   # no token anywhere chooses the last expert
        with torch.no_grad():
            moe.router.weight[-1] = -50.0          # x > 0, so its logit is far below the others
    x = torch.randn(world, 3, TOKENS_PER_RANK // 3, D_MODEL, dtype=torch.float64).abs()   # (W, B, T, d)
    upstream = torch.randn(world, 3, TOKENS_PER_RANK // 3, D_MODEL, dtype=torch.float64)

    # the reference: one process, every token (sequences of all ranks side by side)
    x_all = x.reshape(-1, TOKENS_PER_RANK // 3, D_MODEL).clone().requires_grad_(True)   # (W*B, T, d)
    out_all, stats_all = moe(x_all, return_routing=True)
    (out_all * upstream.reshape_as(out_all)).sum().backward()
    reference_expert_grads = [[p.grad.clone() for p in expert.parameters()] for expert in moe.experts]
    reference_router_grad = moe.router.weight.grad.clone()
    moe.zero_grad()
    aux_all = moe(x_all.detach(), return_routing=True)[1].aux_loss
    aux_all.backward()
    reference_aux_router_grad = moe.router.weight.grad.clone()
    moe.zero_grad()

    # expert parallel: this rank's tokens, this rank's experts
    ep = ExpertParallelMoE.from_moe(moe)
    x_mine = x[rank].clone().requires_grad_(True)                                         # (B, T, d)
    out_mine, stats = ep(x_mine, return_routing=True)
    (out_mine * upstream[rank]).sum().backward()
    case = f"E={num_experts} top-{top_k} idle={idle_expert} scope={scope}"
    per_rank = out_all.reshape(world, *x.shape[1:])
    check(close(out_mine, per_rank[rank]) <= TOLERANCE, f"{case}: outputs differ by {close(out_mine, per_rank[rank])}")
    grad_all = x_all.grad.reshape(world, *x.shape[1:])
    check(close(x_mine.grad, grad_all[rank]) <= TOLERANCE, f"{case}: input gradients differ")
    for local, expert in enumerate(ep.experts):
        for mine, reference in zip(expert.parameters(), reference_expert_grads[ep.first_expert + local]):
            check(close(mine.grad, reference) <= TOLERANCE, f"{case}: expert {ep.first_expert + local} gradient differs")
    router_grad = ep.router.weight.grad.clone()
    dist.all_reduce(router_grad)
    check(close(router_grad, reference_router_grad) <= TOLERANCE, f"{case}: router gradient (summed) differs")
    check(torch.equal(stats.tokens_per_expert, stats_all.tokens_per_expert), f"{case}: global loads differ")
    check(abs(stats.aux_loss.item() - stats_all.aux_loss.item()) <= TOLERANCE,
          f"{case}: aux loss {stats.aux_loss.item()} != {stats_all.aux_loss.item()}")
    if idle_expert:
        check(stats_all.tokens_per_expert[-1].item() == 0, f"{case}: the idle expert received tokens")
    check(stats.send_matrix.sum().item() == world * TOKENS_PER_RANK * top_k, f"{case}: send matrix does not add up")

    # the aux loss's router gradient: averaged over ranks (data parallelism) = the single-process one
    ep.zero_grad()
    ep(x[rank], return_routing=True)[1].aux_loss.backward()
    aux_grad = ep.router.weight.grad.clone()
    dist.all_reduce(aux_grad)
    check(close(aux_grad / world, reference_aux_router_grad) <= TOLERANCE, f"{case}: aux-loss router gradient differs")

    # inference (no gradient) computes the same
    with torch.no_grad():
        check(close(ep(x[rank]), per_rank[rank]) <= TOLERANCE, f"{case}: no-grad outputs differ")


def check_communication_volume() -> None:
    """Bytes measured from the all-to-all split sizes against the formula, near-uniform routing."""
    from moe_helpers.accounting import all_to_all_bytes

    world, rank = dist.get_world_size(), dist.get_rank()
    torch.manual_seed(1)
    moe = MoELayer(D_MODEL, D_FF, 2 * world, 2)
    torch.nn.init.normal_(moe.router.weight, std=0.01)                   # nearly uniform choices
    ep = ExpertParallelMoE.from_moe(moe)
    tokens = 2048
    with torch.no_grad():
        x = torch.randn(world, tokens, D_MODEL, generator=torch.Generator().manual_seed(2))[rank]
        stats = ep(x, return_routing=True)[1]
    measured = stats.bytes_sent(D_MODEL, 4)
    expected = all_to_all_bytes(world * tokens, 2, D_MODEL, 4, world)
    check(abs(measured / expected - 1) < 0.05, f"bytes sent {measured} vs formula {expected:.0f}")
    if rank == 0:
        print(f"bytes sent {measured:,} vs formula {expected:,.0f} ({measured / expected - 1:+.2%})", flush=True)


def check_refusals() -> None:
    world = dist.get_world_size()
    try:
        ExpertParallelMoE.from_moe(MoELayer(D_MODEL, D_FF, world + 1, 1))
    except ValueError as error:
        check(f"num_experts ({world + 1})" in str(error) and f"ranks ({world})" in str(error),
              f"the message does not name the numbers: {error}")
    else:
        check(False, "experts not divisible by the ranks were accepted")


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    world = dist.get_world_size()
    for num_experts in (world, 2 * world):
        for top_k in (1, 2):
            for idle in (False, True) if top_k < num_experts else (False,):   # top-E uses every expert
                run_case(num_experts, top_k, idle, "batch")
    run_case(2 * world, 2, False, "sequence")
    check_communication_volume()
    check_refusals()
    if dist.get_rank() == 0:
        print(f"expert parallel OK on {world} ranks", flush=True)
    leave_process_group()


if __name__ == "__main__":
    main()
