"""Expert parallelism: each process holds some of the experts, tokens travel to them.

With ``W`` processes (ranks) and ``E`` experts, rank ``r`` keeps experts
``r * E/W ... (r + 1) * E/W - 1``; the router is replicated.  Every rank routes
its own tokens, then (GShard, Lepikhin et al. 2020, sec. 3.2; DeepSeek-V3):

    1. exchange counts     all_to_all: how many token slots each rank sends to each expert
    2. dispatch            all_to_all: the token slots travel to their experts' ranks (uneven splits)
    3. compute             each rank runs its experts on the slots it received
    4. combine             all_to_all: the results travel back, in the order they came
    5. weight and add      y_t = sum_i g_ti Expert_i(x_t) on the token's own rank

The two token all-to-alls are differentiable (``all_to_all`` below), so the
backward pass sends the gradients back along the same paths.  Run it under
``torchrun`` with any backend: gloo on CPUs (a laptop), nccl on GPUs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from .layers import upcast
from .moe import MoELayer, RoutingStats, count_per_expert, load_balancing_loss


@dataclass
class ExpertParallelRoutingStats(RoutingStats):
    """``RoutingStats`` of one expert-parallel pass, plus who sent how much to whom.

    ``tokens_per_expert`` and ``mean_prob`` are global (all ranks' tokens);
    ``top_k_experts`` are this rank's tokens' choices.  ``send_matrix[s, d]``
    counts the token slots rank ``s`` dispatched to rank ``d`` (the diagonal
    stays on its rank), the same on every rank.
    """

    send_matrix: torch.Tensor = None    # (W, W) token slots, source rank x destination rank

    def bytes_sent(self, d_model: int, bytes_per_value: int) -> int:
        """Bytes that crossed between ranks in this layer's forward pass, all ranks together:
        the slots that left their rank, once to dispatch and once to combine."""
        off_rank = int(self.send_matrix.sum() - self.send_matrix.diagonal().sum())
        return 2 * off_rank * d_model * bytes_per_value


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with uneven splits, differentiable.

    Forward: rank r sends ``input`` rows in chunks of ``send_splits`` (chunk d to
    rank d) and receives ``receive_splits`` rows from each rank.  Backward: the
    gradients retrace the same path in reverse (the splits swap roles)."""

    @staticmethod
    def forward(ctx, tensor, send_splits, receive_splits, group):
        ctx.send_splits, ctx.receive_splits, ctx.group = send_splits, receive_splits, group
        received = tensor.new_empty(sum(receive_splits), *tensor.shape[1:])
        dist.all_to_all_single(received, tensor.contiguous(), receive_splits, send_splits, group=group)
        return received

    @staticmethod
    def backward(ctx, grad):
        sent_back = grad.new_empty(sum(ctx.send_splits), *grad.shape[1:])
        dist.all_to_all_single(sent_back, grad.contiguous(), ctx.send_splits, ctx.receive_splits, group=ctx.group)
        return sent_back, None, None, None


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: each rank's input gradient is the sum of every
    rank's output gradient (the same all-reduce, run on the gradients)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


def all_to_all(tensor: torch.Tensor, send_splits: list[int], receive_splits: list[int], group=None) -> torch.Tensor:
    """Send ``tensor``'s rows in chunks of ``send_splits`` (chunk d to rank d); receive
    ``receive_splits[s]`` rows from each rank s, concatenated in rank order.  Differentiable."""
    return _AllToAll.apply(tensor, send_splits, receive_splits, group)


def _all_reduce_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    return _AllReduceSum.apply(tensor, group)


class ExpertParallelMoE(nn.Module):
    """This rank's share of an ``MoELayer``: the whole router, ``E / W`` of the experts.

    ``ep(x)`` takes this rank's tokens (..., d_model) and returns the MoE output
    for them, the same numbers the full ``MoELayer`` computes for those tokens
    when it sees every rank's tokens at once.  Build it with ``from_moe``.
    All ranks of ``group`` must call ``forward`` together (collective calls).
    """

    def __init__(self, moe: MoELayer, group=None):
        super().__init__()
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if moe.num_experts % world:
            raise ValueError(f"num_experts ({moe.num_experts}) must be divisible by the number of ranks "
                             f"({world}) to split the experts evenly")
        if moe.capacity_factor is not None:
            raise ValueError(f"capacity_factor={moe.capacity_factor}: expert parallelism here never drops "
                             "tokens; build the MoELayer without a capacity limit")
        self.group, self.world, self.rank = group, world, rank
        self.num_experts, self.top_k = moe.num_experts, moe.top_k
        self.experts_per_rank = moe.num_experts // world
        self.first_expert = rank * self.experts_per_rank
        self.aux_loss_coef, self.z_loss_coef = moe.aux_loss_coef, moe.z_loss_coef
        self.balance_loss_scope, self.bias_update_rate = moe.balance_loss_scope, moe.bias_update_rate
        self.router = copy.deepcopy(moe.router)                              # replicated on every rank
        own = range(self.first_expert, self.first_expert + self.experts_per_rank)
        self.experts = nn.ModuleList(copy.deepcopy(moe.experts[e]) for e in own)   # this rank's experts
        self.shared_experts = copy.deepcopy(moe.shared_experts)             # replicated, run locally
        bias = moe.expert_bias
        self.register_buffer("expert_bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_moe(cls, moe: MoELayer, group=None) -> "ExpertParallelMoE":
        """Keep this rank's ``E / world_size`` experts of the full ``moe`` (copies) and its router."""
        return cls(moe, group)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, return_routing: bool = False):
        """``x``: this rank's tokens (..., d_model) -> same shape."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])                                          # (N, d)
        router_logits = self.router.logits(tokens)                                 # (N, E)
        top_k_weights, top_k_experts = self.router.route(router_logits, self.expert_bias)  # (N, k) each

        # 1. sort this rank's slots by expert; tell every rank how many slots it will receive
        slot_expert = top_k_experts.flatten()                                      # (N*k,) slot = token*k + rank
        order = torch.argsort(slot_expert, stable=True)                            # (N*k,) grouped by expert
        send_per_expert = count_per_expert(slot_expert, self.num_experts)          # (E,)
        receive_per_expert = torch.empty_like(send_per_expert)                     # (E,) = (W, E/W) laid flat
        dist.all_to_all_single(receive_per_expert, send_per_expert, group=self.group)
        # the one host read: the all-to-all needs its split sizes as Python ints
        send_matrix = send_per_expert.view(self.world, self.experts_per_rank)      # (W, E/W) to rank d, expert j
        receive_matrix = receive_per_expert.view(self.world, self.experts_per_rank)   # (W, E/W) from rank s
        send_splits = send_matrix.sum(1).tolist()
        receive_splits = receive_matrix.sum(1).tolist()

        # 2. dispatch: the slots travel to the ranks of their experts
        outgoing = tokens[order // self.top_k]                                     # (S_out, d) by expert
        incoming = all_to_all(outgoing, send_splits, receive_splits, self.group)   # (S_in, d) by source rank

        # 3. compute: regroup what arrived by local expert, run each expert once
        incoming_expert = torch.repeat_interleave(
            torch.arange(self.experts_per_rank, device=x.device).repeat(self.world),
            receive_per_expert)                                                    # (S_in,) local expert of each row
        by_expert = torch.argsort(incoming_expert, stable=True)                    # (S_in,)
        chunks = incoming[by_expert].split(receive_matrix.sum(0).tolist())        # E/W chunks
        computed = [expert(chunk) for expert, chunk in zip(self.experts, chunks)
                    if chunk.shape[0] > 0 or torch.is_grad_enabled()]             # idle experts skipped in inference
        computed = torch.cat(computed) if computed else incoming[:0]              # (S_in, d)
        results = torch.empty_like(computed).index_copy(0, by_expert, computed)   # back in arrival order

        # 4. combine: the results travel back to the tokens' ranks, in the order they were sent
        returned = all_to_all(results, receive_splits, send_splits, self.group)    # (S_out, d)

        # 5. weight each slot by its gate and add it to its token
        weighted = returned * top_k_weights.flatten()[order, None]                 # (S_out, d)
        output = tokens.new_zeros(tokens.shape, dtype=weighted.dtype).index_add_(0, order // self.top_k, weighted)
        for shared in self.shared_experts:
            output = output + shared(tokens)
        output = output.reshape(shape)
        if not return_routing:
            return output
        return output, self._routing_stats(router_logits, top_k_experts, send_per_expert, shape)

    # ------------------------------------------------------- global statistics
    def _routing_stats(self, router_logits, top_k_experts, send_per_expert, shape):
        """Aux losses and loads over *all* ranks' tokens, equal to the single-process values.

        Every rank gets the same loss value.  Its gradient reaches this rank's
        router logits through a differentiable all-reduce, whose backward pass
        sums every rank's upstream gradient: each rank receives ``W`` times its
        share, and averaging the router's gradients over ranks (what data
        parallelism does) gives exactly the single-process gradient."""
        group = self.group
        num_tokens = torch.tensor(float(router_logits.shape[0]), device=router_logits.device)
        global_tokens = _all_reduce_sum(num_tokens, group)                                  # N over all ranks
        probs = upcast(router_logits).softmax(dim=-1)                                        # (N, E)
        global_slots = send_per_expert.clone()
        dist.all_reduce(global_slots, group=group)                                          # (E,) no gradient
        mean_prob = _all_reduce_sum(probs.sum(dim=0), group) / global_tokens                # P, (E,)
        slot_fraction = global_slots.to(probs.dtype) / (global_tokens * self.top_k)         # f, (E,)
        if self.balance_loss_scope == "batch":
            balance = self.num_experts * (slot_fraction * mean_prob).sum()
        else:
            balance = self._sequence_balance(router_logits, top_k_experts, shape)
        z_loss = _all_reduce_sum(torch.logsumexp(upcast(router_logits), -1).pow(2).sum(), group) / global_tokens
        aux_loss = self.aux_loss_coef * balance + self.z_loss_coef * z_loss
        with torch.no_grad():
            everyone = [torch.empty_like(send_per_expert) for _ in range(self.world)]
            dist.all_gather(everyone, send_per_expert, group=group)
            send_matrix = torch.stack(everyone).view(self.world, self.world, self.experts_per_rank).sum(-1)
        return ExpertParallelRoutingStats(
            aux_loss=aux_loss, tokens_per_expert=global_slots, mean_prob=mean_prob.detach().float(),
            top_k_experts=top_k_experts, dropped_slots=torch.zeros((), dtype=torch.long),
            send_matrix=send_matrix)

    def _sequence_balance(self, router_logits, top_k_experts, shape):
        """DeepSeek-V3's sequence-wise loss: the Switch loss of each sequence on this rank (its
        tokens are all here), averaged over every rank's sequences."""
        length = shape[-2] if len(shape) >= 3 else router_logits.shape[0]
        logits = router_logits.reshape(-1, length, self.num_experts)                         # (B, T, E)
        chosen = top_k_experts.reshape(-1, length, self.top_k)                              # (B, T, k)
        per_sequence = torch.stack([load_balancing_loss(l, self.top_k, c) for l, c in zip(logits, chosen)])  # (B,)
        sequences = torch.tensor(float(per_sequence.shape[0]), device=logits.device)
        return _all_reduce_sum(per_sequence.sum(), self.group) / _all_reduce_sum(sequences, self.group)

    # Aux-loss-free balancing, the single-process rule: the counts ``train_phase`` hands over are
    # this layer's *global* ones (``tokens_per_expert`` of its routing record), so every rank's
    # bias moves alike.
    update_expert_bias = MoELayer.update_expert_bias
