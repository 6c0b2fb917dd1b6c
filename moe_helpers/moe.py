"""Mixture-of-Experts: the router, the experts and the layer that joins them.

An MoE layer replaces one feed-forward network by ``num_experts`` of them and a
router that sends each token to ``top_k`` of them (Shazeer et al. 2017):

    p      = softmax(x W_r)                      router probabilities, (N, E)
    S      = top-k indices of p                  chosen experts, (N, k)
    g_i    = p_i / sum_{j in S} p_j  (i in S)    renormalised weights (Mixtral)
    y      = sum_{i in S} g_i * Expert_i(x)

Every expert is the same SwiGLU ``FeedForward`` class the dense model uses, so
the only new pieces are the router and the dispatch.  Two auxiliary losses
keep the router healthy: the Switch load-balancing loss (per batch, or per
sequence as in DeepSeek-V3) and the ST-MoE router z-loss.  A third way needs
no loss at all: a per-expert bias that only steers the choice of experts and
is nudged after every training step (auxiliary-loss-free balancing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import FeedForward, upcast


def count_per_expert(expert_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many entries of ``expert_ids`` (any shape) name each expert: (E,) int64.

    A scatter-add rather than ``torch.bincount``, whose output size depends on
    the data, so that it never waits for the GPU (no host sync)."""
    flat = expert_ids.flatten()
    counts = torch.zeros(num_experts, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))


def load_balancing_loss(router_logits: torch.Tensor, top_k: int,
                        top_k_experts: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer load-balancing loss (Fedus et al. 2021, eqs. 4-6), top-k form:

        loss = E * sum_i f_i * P_i

    ``f_i``: fraction of the N*k token slots routed to expert i (no gradient);
    ``P_i``: mean router probability of expert i over the N tokens.
    It is 1.0 when both are uniform (1/E each) and E when every slot and all
    probability go to one expert.  It is *not* minimised only by balance: f and P
    can be uneven in opposite directions and give less than 1 (tokens whose
    probabilities are (.99, .01), (.49, .51), (.49, .51) give 0.896).  Since f has
    no gradient, training lowers P_i where f_i is large, which moves tokens away
    from busy experts: a differentiable proxy for balance.  ``router_logits``: (N, E).
    ``top_k_experts`` (N, k): the experts really chosen, when something other than
    the top-k probabilities chose them (a selection bias); by default the top-k.
    """
    num_tokens, num_experts = router_logits.shape
    probs = upcast(router_logits).softmax(dim=-1)                               # (N, E)
    chosen = probs.topk(top_k, dim=-1).indices if top_k_experts is None else top_k_experts   # (N, k)
    slots_per_expert = count_per_expert(chosen, num_experts)                    # (E,)
    slot_fraction = slots_per_expert.to(probs.dtype) / (num_tokens * top_k)     # f, (E,)
    mean_prob = probs.mean(dim=0)                                               # P, (E,)
    return num_experts * (slot_fraction * mean_prob).sum()


def sequence_balance_loss(router_logits: torch.Tensor, top_k: int,
                          top_k_experts: torch.Tensor | None = None) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (DeepSeek-AI 2024, eqs. 17-20).

    The Switch loss of *each sequence on its own*, averaged over the sequences:

        loss = mean_b  E * sum_i f_{b,i} * P_{b,i}

    with ``f_{b,i}`` and ``P_{b,i}`` counted over the T tokens of sequence b only.
    A batch can be balanced while every sequence sends all its tokens to one
    expert (batch loss 1, sequence loss E for top-1); this loss sees that, the
    batch loss does not.  ``router_logits``: (B, T, E); ``top_k_experts``: (B, T, k)
    or None for the top-k of the probabilities.
    """
    if router_logits.dim() != 3:
        raise ValueError(f"sequence_balance_loss needs router logits (B, T, E), got shape {tuple(router_logits.shape)}")
    chosen = [None] * router_logits.shape[0] if top_k_experts is None else list(top_k_experts)
    per_sequence = [load_balancing_loss(logits, top_k, experts)                  # one () per sequence
                    for logits, experts in zip(router_logits, chosen)]
    return torch.stack(per_sequence).mean()


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5): mean over tokens of
    ``logsumexp(logits)^2``.  It keeps the router logits small, which keeps
    the softmax numerically stable."""
    return torch.logsumexp(upcast(router_logits), dim=-1).pow(2).mean()


@dataclass
class RoutingStats:
    """What one MoE layer routed in one forward pass, handed back to its caller
    (as Hugging Face's Mixtral block returns its router logits) instead of being
    kept on the layer for the next forward pass to overwrite.

    ``aux_loss`` carries gradient; everything else is detached and stays on the
    layer's device, so building the statistics never waits for a GPU.  Reading
    a number (``dropped_fraction``, ``.tolist()``) is what copies it to the host.
    """

    aux_loss: torch.Tensor            # () weighted load-balancing + z-loss of this layer
    tokens_per_expert: torch.Tensor   # (E,) token slots sent to each expert (before dropping)
    mean_prob: torch.Tensor           # (E,) mean router probability of each expert (float32)
    top_k_experts: torch.Tensor       # (N, k) the chosen experts of each token, best first
    dropped_slots: torch.Tensor       # () token slots dropped by the capacity limit

    @property
    def top1_expert(self) -> torch.Tensor:
        """(N,) the highest-weighted expert of each token."""
        return self.top_k_experts[:, 0]

    @property
    def load_share(self) -> torch.Tensor:
        """Share of token slots each expert received (sums to 1)."""
        return self.tokens_per_expert.float() / self.tokens_per_expert.sum().clamp(min=1)

    @property
    def dropped_fraction(self) -> float:
        """Share of the N*k token slots that the capacity limit dropped (a host read)."""
        return self.dropped_slots.item() / max(1, self.top_k_experts.numel())


class Router(nn.Linear):
    """Top-k router: ``Linear(d_model, num_experts, bias=False)`` plus the routing rule.

    It *is* the linear map (so ``moe.router.weight`` is the (E, d_model) matrix),
    with a ``route`` method on top.  ``renormalize=True`` rescales the k chosen
    probabilities to sum to 1 (Mixtral); ``False`` keeps the raw probabilities
    (Switch Transformer for top-1; DeepSeekMoE, OLMoE and Qwen1.5-MoE for top-k, whose
    configs in ``transformers`` say ``norm_topk_prob=False``).  ``noisy=True`` adds trainable Gaussian noise to the
    logits while training (noisy top-k gating, Shazeer et al. 2017, eqs. 3-5):
    ``H(x) = x W_g + N(0, 1) * softplus(x W_noise)``.
    """

    def __init__(self, d_model: int, num_experts: int, top_k: int,
                 renormalize: bool = True, noisy: bool = False):
        super().__init__(d_model, num_experts, bias=False)
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.noise = nn.Linear(d_model, num_experts, bias=False) if noisy else None
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits of the tokens ``x`` (N, d_model) -> (N, E)."""
        logits = self(x)   # (N, E): Linear.forward, called through __call__ so hooks see it
        if self.noise is not None and self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        return logits

    def route(self, logits: torch.Tensor, selection_bias: torch.Tensor | None = None):
        """Top-k experts and their weights from router logits (N, E).

        Returns ``(top_k_weights, top_k_experts)``, both (N, k), best expert
        first.  The softmax runs in float32 as in Mixtral; the weights come
        back in the logits' dtype.  ``selection_bias`` (E,), if given, is added
        to the probabilities to *choose* the experts only; the weights are still
        the unbiased probabilities of the chosen experts (auxiliary-loss-free
        balancing, Wang et al. 2024; DeepSeek-V3 eq. 16).
        """
        probs = upcast(logits).softmax(dim=-1)                                  # (N, E)
        if selection_bias is None:
            top_k_weights, top_k_experts = probs.topk(self.top_k, dim=-1)       # (N, k), (N, k)
        else:
            top_k_experts = (probs + selection_bias).topk(self.top_k, dim=-1).indices   # (N, k)
            top_k_weights = probs.gather(-1, top_k_experts)                     # (N, k) unbiased
        if self.renormalize:
            top_k_weights = top_k_weights / top_k_weights.sum(dim=-1, keepdim=True)
        return top_k_weights.to(logits.dtype), top_k_experts


class MoELayer(nn.Module):
    """A sparse Mixture-of-Experts feed-forward layer.

    ``router`` is ``nn.Linear(d_model, num_experts, bias=False)``, ``experts`` an
    ``nn.ModuleList`` of ``FeedForward``.  Optional pieces: ``num_shared_experts``
    always-active experts added to every token's output (DeepSeekMoE), a
    ``capacity_factor`` that limits each expert to
    ``ceil(capacity_factor * N * k / E)`` token slots (slots over the limit are
    dropped and contribute zero; the residual connection carries the token on;
    first choices fill each expert's buffer before second choices, as in GShard),
    noisy top-k gating and weights without renormalisation (Switch, DeepSeekMoE).

    Balancing: ``balance_loss_scope="batch"`` (Switch: f and P over all tokens of
    the batch) or ``"sequence"`` (DeepSeek-V3: per sequence, averaged), weighted
    by ``aux_loss_coef``; and, without any loss, ``bias_update_rate`` > 0 turns on
    auxiliary-loss-free balancing (Wang et al. 2024; DeepSeek-V3 sec. 2.1.2): an
    ``expert_bias`` buffer (E,) is added to the probabilities for choosing experts
    only, and ``update_expert_bias`` moves it by ``bias_update_rate`` towards
    balance after each training step.  With the rate 0 there is no buffer at all.
    """

    BALANCE_LOSS_SCOPES = ("batch", "sequence")

    def __init__(self, d_model: int, d_ff: int, num_experts: int, top_k: int = 2, *,
                 renormalize: bool = True, noisy_gating: bool = False,
                 capacity_factor: float | None = None,
                 num_shared_experts: int = 0, shared_d_ff: int | None = None,
                 aux_loss_coef: float = 0.01, z_loss_coef: float = 0.001,
                 balance_loss_scope: str = "batch", bias_update_rate: float = 0.0):
        super().__init__()
        if not (isinstance(num_experts, int) and num_experts >= 1):
            raise ValueError(f"num_experts must be an integer >= 1, got {num_experts!r}")
        if not (isinstance(top_k, int) and 1 <= top_k <= num_experts):
            raise ValueError(f"top_k must be in 1..num_experts (1..{num_experts}), got {top_k!r}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 (or None for no limit), got {capacity_factor!r}")
        if balance_loss_scope not in self.BALANCE_LOSS_SCOPES:
            raise ValueError(f"balance_loss_scope must be one of {self.BALANCE_LOSS_SCOPES}, "
                             f"got {balance_loss_scope!r}")
        if not bias_update_rate >= 0:
            raise ValueError(f"bias_update_rate must be a number >= 0 (0 = off), got {bias_update_rate!r}")
        self.num_experts, self.top_k = num_experts, top_k
        self.capacity_factor = capacity_factor
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.balance_loss_scope, self.bias_update_rate = balance_loss_scope, bias_update_rate
        self.router = Router(d_model, num_experts, top_k, renormalize, noisy_gating)
        self.experts = nn.ModuleList(FeedForward(d_model, d_ff) for _ in range(num_experts))
        self.shared_experts = nn.ModuleList(
            FeedForward(d_model, shared_d_ff or d_ff) for _ in range(num_shared_experts)
        )
        # a buffer, not a parameter: no gradient and no optimiser, it moves only in update_expert_bias
        self.register_buffer("expert_bias", torch.zeros(num_experts) if bias_update_rate > 0 else None)

    @property
    def renormalize(self) -> bool:
        return self.router.renormalize

    @torch.no_grad()
    def update_expert_bias(self, tokens_per_expert: torch.Tensor) -> None:
        """One step of auxiliary-loss-free balancing (Wang et al. 2024, Algorithm 1):

            b_i <- b_i + rate * sign(mean_j c_j - c_i)

        where ``tokens_per_expert`` (E,) holds the slot counts c_i of the last
        training step: overloaded experts become a little less likely to be
        chosen, underloaded ones a little more.  Does nothing when the rate is 0.
        """
        if self.expert_bias is None:
            return
        load = tokens_per_expert.to(self.expert_bias.device, torch.float32)     # (E,)
        self.expert_bias += (self.bias_update_rate * torch.sign(load.mean() - load)).to(self.expert_bias.dtype)

    def balance_loss(self, router_logits: torch.Tensor, top_k_experts: torch.Tensor,
                     shape: torch.Size) -> torch.Tensor:
        """The unweighted balance loss of one pass, in this layer's scope.

        ``router_logits`` (N, E) and ``top_k_experts`` (N, k) for the N tokens of an
        input of ``shape`` (..., d_model); ``"sequence"`` treats the last dimension
        before d_model as the sequence (one sequence for a 2-D input)."""
        if self.balance_loss_scope == "batch":
            return load_balancing_loss(router_logits, self.top_k, top_k_experts)
        sequence_length = shape[-2] if len(shape) >= 3 else router_logits.shape[0]
        return sequence_balance_loss(router_logits.reshape(-1, sequence_length, self.num_experts), self.top_k,
                                     top_k_experts.reshape(-1, sequence_length, self.top_k))

    def capacity(self, num_tokens: int) -> int | None:
        """Token slots each expert may take, or None when there is no limit."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)

    def forward(self, x: torch.Tensor, return_routing: bool = False):
        """``x``: (..., d_model) -> same shape.

        With ``return_routing`` also a ``RoutingStats``: this pass's weighted
        auxiliary loss ``aux_loss_coef * balance + z_loss_coef * z`` and what
        was routed where.  The forward pass changes nothing on the layer (the
        expert bias moves only in ``update_expert_bias``)."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])                                       # (N, d)
        router_logits = self.router.logits(tokens)                              # (N, E)
        top_k_weights, top_k_experts = self.router.route(router_logits, self.expert_bias)   # (N, k), (N, k)
        if tokens.shape[0] == 1 and self.capacity_factor is None and not torch.is_grad_enabled():
            output, dropped = self._one_token(tokens, top_k_weights, top_k_experts), None   # generation
        else:
            output, dropped = self._dispatch(tokens, top_k_weights, top_k_experts)  # (N, d), ()
        for shared in self.shared_experts:
            output = output + shared(tokens)
        output = output.reshape(shape)
        if not return_routing:
            return output
        aux_loss = (self.aux_loss_coef * self.balance_loss(router_logits, top_k_experts, shape)
                    + self.z_loss_coef * router_z_loss(router_logits))
        return output, _routing_stats(aux_loss, router_logits, top_k_experts, dropped)

    def _one_token(self, token, top_k_weights, top_k_experts):
        """The k chosen experts of a single token (1, d), called one by one: generating a story
        token by token asks for this at every step, and sorting one token's k slots would cost
        more than the experts themselves at the course's sizes.  The same sum as ``_dispatch``,
        bit for bit (its terms added in the same order, by expert)."""
        output = None
        for rank, expert in sorted(enumerate(top_k_experts[0].tolist()), key=lambda pair: pair[1]):
            term = self.experts[expert](token) * top_k_weights[:, rank, None]     # (1, d)
            output = term if output is None else output + term
        return output

    def _dispatch(self, tokens, top_k_weights, top_k_experts):
        """Run each expert once on the token slots routed to it.

        The N*k slots are sorted by expert so that each expert's slots form one
        contiguous slice; the outputs are weighted by the gate and scatter-added
        back to their tokens.  Returns the output (N, d) and the number of slots
        the capacity limit dropped (a () tensor; None without a limit).
        """
        num_tokens = tokens.shape[0]
        # Slots listed rank by rank: every token's first choice (in token order), then every
        # second choice, ...  A stable sort by expert keeps that order inside each expert's
        # queue, so a capacity limit drops later choices first (GShard, Lepikhin et al. 2020).
        slot_expert = top_k_experts.t().flatten()                               # (k*N,) slot = rank*N + token
        slot_weight = top_k_weights.t().flatten()                               # (k*N,)
        order = torch.argsort(slot_expert, stable=True)                         # (k*N,) by expert, then queue place
        slots_per_expert = count_per_expert(slot_expert, self.num_experts)      # (E,)
        dropped = None
        capacity = self.capacity(num_tokens)
        if capacity is not None:   # a slot's place in its expert's queue
            queue_start = torch.cumsum(slots_per_expert, 0) - slots_per_expert  # (E,)
            place_in_queue = torch.arange(order.numel(), device=order.device) - queue_start[slot_expert[order]]
            kept = place_in_queue < capacity                                    # (k*N,)
            order, dropped = order[kept], (~kept).sum()
            slots_per_expert = slots_per_expert.clamp(max=capacity)             # (E,) what each expert takes
        # The one host read of the layer: torch.split needs each expert's slot count as a Python int.
        slots_per_expert = slots_per_expert.tolist()

        slot_token = order % num_tokens                                         # (S,) token of each slot
        expert_inputs = tokens[slot_token].split(slots_per_expert)              # E chunks of (S_e, d)
        # An expert with no slots is still called while training, so that every expert has a
        # gradient (zeros) and the optimiser treats all of them alike; in inference it is skipped.
        expert_outputs = torch.cat([
            expert(chunk) for expert, chunk in zip(self.experts, expert_inputs)
            if chunk.shape[0] > 0 or torch.is_grad_enabled()
        ])                                                                      # (S, d)
        expert_outputs = expert_outputs * slot_weight[order, None]
        # in the experts' dtype: under bf16 autocast they compute in bf16 while the tokens are float32
        output = tokens.new_zeros(tokens.shape, dtype=expert_outputs.dtype)
        output = output.index_add_(0, slot_token, expert_outputs)               # (N, d)
        return output, dropped


def _routing_stats(aux_loss, router_logits, top_k_experts, dropped) -> RoutingStats:
    """Detached routing statistics of one forward pass, left on the device (``dropped``:
    the slots the capacity limit dropped, or None without a limit)."""
    with torch.no_grad():
        num_experts = router_logits.shape[-1]
        return RoutingStats(
            aux_loss=aux_loss,
            tokens_per_expert=count_per_expert(top_k_experts, num_experts),
            mean_prob=upcast(router_logits).softmax(-1).mean(0),
            top_k_experts=top_k_experts,
            dropped_slots=top_k_experts.new_zeros(()) if dropped is None else dropped,
        )
