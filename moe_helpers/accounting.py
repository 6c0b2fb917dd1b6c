"""Parameter accounting: how many parameters a model stores, and how many
each token actually uses.

An MoE layer with E experts of P parameters each, routing every token to k of
them, stores E * P expert parameters but runs only k * P per token:

    inactive = P * (E - k) * (number of MoE blocks)
    active   = total - inactive
    efficiency = active / total

``count_parameters`` measures a built model module by module;
``count_from_config`` computes the same record by formula, without
allocating anything, so it works for a 47-billion-parameter config in
microseconds.  Tests check that the two always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from .config import ModelConfig

PARTS = ("embedding", "lm_head", "attention", "norms", "router", "experts", "shared_experts", "dense_ffn")


@dataclass(frozen=True)
class ParameterCounts:
    """Totals of one model.  ``active`` counts what one token's forward pass uses
    (embedding and router included, as in the original note)."""

    total: int
    active: int
    inactive: int
    experts_idle: int               # idle expert copies per token, summed over MoE blocks
    by_part: dict = field(default_factory=dict)
    num_experts: int = 0
    top_k: int = 0
    moe_layers: int = 0

    @property
    def efficiency(self) -> float:
        """Active share of all parameters, in percent."""
        return 100.0 * self.active / self.total

    @property
    def is_moe(self) -> bool:
        return self.num_experts >= 1

    @property
    def active_non_embedding(self) -> int:
        """Active parameters without the input embedding table (a lookup, not a matmul)."""
        return self.active - self.by_part["embedding"]


def _counts(by_part: dict, expert_size: int, num_experts: int, top_k: int, moe_layers: int) -> ParameterCounts:
    idle_per_block = num_experts - top_k if num_experts else 0
    inactive = expert_size * idle_per_block * moe_layers
    total = sum(by_part.values())
    return ParameterCounts(total=total, active=total - inactive, inactive=inactive,
                           experts_idle=idle_per_block * moe_layers, by_part=by_part,
                           num_experts=num_experts, top_k=top_k if num_experts else 0,
                           moe_layers=moe_layers)


def _part_of(name: str) -> str:
    """Which part of the model a parameter (by its qualified name) belongs to."""
    if name.startswith("tok_embeddings"):
        return "embedding"
    if name.startswith("lm_head"):
        return "lm_head"
    if ".attention." in name:
        return "attention"
    if "norm" in name:
        return "norms"
    if ".router." in name:
        return "router"
    if ".shared_experts." in name:
        return "shared_experts"
    if ".experts." in name:
        return "experts"
    return "dense_ffn"


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Count a built ``GPT``'s parameters, measured from its modules.

    Tied weights are counted once (``named_parameters`` skips duplicates)."""
    by_part = dict.fromkeys(PARTS, 0)
    for name, param in model.named_parameters():
        by_part[_part_of(name)] += param.numel()
    moe_layers = [block.ffn for block in model.layers if block.is_moe]
    if not moe_layers:
        return _counts(by_part, 0, 0, 0, 0)
    first = moe_layers[0]
    expert_size = sum(p.numel() for p in first.experts[0].parameters())
    return _counts(by_part, expert_size, first.num_experts, first.top_k, len(moe_layers))


def swiglu_size(d_model: int, d_ff: int) -> int:
    """Parameters of one SwiGLU FFN: w1 and w3 (d_model x d_ff) and w2 (d_ff x d_model)."""
    return 3 * d_model * d_ff


def count_from_config(cfg: ModelConfig) -> ParameterCounts:
    """The same record as ``count_parameters(GPT(cfg))``, by formula."""
    d, hd = cfg.d_model, cfg.head_size
    attention = d * cfg.n_heads * hd + 2 * d * cfg.kv_heads * hd + cfg.n_heads * hd * d  # wq, wk, wv, wo
    moe_layers = cfg.num_moe_layers
    dense_layers = cfg.n_layers - moe_layers
    by_part = {
        "embedding": cfg.vocab_size * d,
        "lm_head": 0 if cfg.tie_embeddings else cfg.vocab_size * d,
        "attention": cfg.n_layers * attention,
        "norms": (2 * cfg.n_layers + 1) * d,
        "router": moe_layers * d * cfg.num_experts,
        "experts": moe_layers * cfg.num_experts * swiglu_size(d, cfg.d_ff),
        "shared_experts": moe_layers * cfg.num_shared_experts * swiglu_size(d, cfg.shared_hidden),
        "dense_ffn": dense_layers * swiglu_size(d, cfg.dense_hidden),
    }
    num_experts = cfg.num_experts if moe_layers else 0   # first_k_dense == n_layers: no MoE block at all
    return _counts(by_part, swiglu_size(d, cfg.d_ff), num_experts, cfg.top_k, moe_layers)


@dataclass(frozen=True)
class Flops:
    forward: float      # FLOPs of one token's forward pass
    training: float     # forward + backward (3x forward)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> Flops:
    """Floating-point operations per token (PaLM convention, Chowdhery et al. 2022, app. B).

        forward  = 2 * N_active_matmul + 4 * n_layers * seq_len * n_heads * head_dim
        training = 3 * forward

    ``N_active_matmul`` is the active parameters without the embedding lookup
    and the norm gains (each remaining weight does one multiply and one add).  The second term is the
    attention scores and their weighted sum, counted over the full context
    (no discount for the causal mask).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    counts = count_from_config(cfg)
    matmul_params = counts.active - counts.by_part["embedding"] - counts.by_part["norms"]
    if cfg.tie_embeddings:
        matmul_params += cfg.vocab_size * cfg.d_model   # the tied table is still the LM head
    attention = 4 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_size
    forward = 2 * matmul_params + attention
    return Flops(forward=float(forward), training=3.0 * forward)


_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8, torch.int8: 1}
_OPTIMIZER_STATES = {"adamw": 2, "sgd": 0, "sgd_momentum": 1}   # fp32 tensors per parameter


@dataclass(frozen=True)
class Memory:
    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def memory_bytes(cfg: ModelConfig, dtype=torch.float32, optimizer: str | None = "adamw") -> Memory:
    """Bytes to hold the weights, their gradients and the optimiser state.

    An MoE pays for *all* its parameters here, active or not.  Optimiser states
    are kept in float32 (AdamW: first and second moments).  ``optimizer=None``
    means inference: weights only.  Not included: activations, and the float32
    master copy of the weights that mixed-precision training usually keeps
    (another 4 bytes per parameter).
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if not isinstance(dtype, torch.dtype) or dtype not in _BYTES:
        raise ValueError(f"dtype must be one of {[str(t) for t in _BYTES]}, got {dtype}")
    if optimizer is not None and (not isinstance(optimizer, str) or optimizer not in _OPTIMIZER_STATES):
        raise ValueError(f"optimizer must be one of {list(_OPTIMIZER_STATES)} or None, got {optimizer!r}")
    total = count_from_config(cfg).total
    if optimizer is None:
        return Memory(weights=total * _BYTES[dtype], gradients=0, optimizer=0)
    return Memory(weights=total * _BYTES[dtype], gradients=total * _BYTES[dtype],
                  optimizer=total * 4 * _OPTIMIZER_STATES[optimizer])


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one training step holds: the model state and one micro-batch's activations."""

    state: Memory           # float32 weights, gradients and AdamW moments (16 bytes per parameter)
    activations: int        # tensors autograd keeps for the backward pass, at the compute precision
    precision: str

    @property
    def total(self) -> int:
        return self.state.total + self.activations

    def describe(self) -> str:
        """One line for the phase banner."""
        compute = "bf16 autocast, fp32 master weights" if self.precision == "bf16" else "fp32"
        return (f"  Memory ({compute}): {self.total / 2**30:.1f} GiB = {self.state.total / 2**30:.1f} state "
                f"+ {self.activations / 2**30:.1f} activations")


class _CountOperations(TorchDispatchMode):
    """Counts the tensor operations run inside its ``with`` block."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_operations(run: Callable[[], object]) -> int:
    """How many tensor operations ``run()`` performs: the ATen calls (a matrix product, an
    addition, a view, ...) that a ``TorchDispatchMode`` sees, after autograd.  Each one costs
    a few microseconds of Python and dispatch before its arithmetic, which is what a step
    on one token mostly pays for in a small model."""
    with _CountOperations() as counter:
        run()
    return counter.count


def kv_cache_bytes(cfg: ModelConfig, batch_size: int, seq_len: int, dtype=torch.float32) -> int:
    """Bytes of the key/value cache after ``seq_len`` tokens of ``batch_size`` sequences:

        2 (keys and values) x n_layers x batch x n_kv_heads x head_dim x min(seq_len, max_seq_len) x bytes

    Grouped-query attention shrinks it by n_heads / n_kv_heads (Ainslie et al. 2023);
    past ``max_seq_len`` the course's cache slides, so it stops growing."""
    positions = min(seq_len, cfg.max_seq_len)
    bytes_per_value = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.n_layers * batch_size * cfg.kv_heads * cfg.head_size * positions * bytes_per_value


def all_to_all_bytes(tokens: int, top_k: int, d_model: int, bytes_per_value: int, ranks: int) -> float:
    """Bytes one expert-parallel MoE layer sends between ranks in a forward pass, expected
    value over uniform routing, all ranks together:

        2 x tokens x top_k x d_model x bytes x (1 - 1/ranks)

    ``tokens`` token slots x ``top_k`` go out (dispatch) and come back (combine), a
    ``d_model`` vector each; with balanced routing a share 1/ranks of them has its
    expert on its own rank and never travels.  The backward pass sends as much again."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    return 2 * tokens * top_k * d_model * bytes_per_value * (1 - 1 / ranks)


def activation_values_per_token(cfg: ModelConfig) -> int:
    """Values autograd keeps per token for the backward pass (no recomputation).

    Per block: the two RMSNorm inputs and outputs (4 d), queries and attention
    output (2 H hd), keys and values (2 H_kv hd) -- scaled-dot-product
    attention keeps no T x T score matrix -- and, for each of the ``top_k``
    experts a token visits, the gate, up, SiLU and product vectors (4 d_ff)
    plus the token's gathered copy and the expert's unweighted output (2 d);
    then the logits and their softmax for the loss (2 V).  This is the
    counting of Korthikanti et al. 2022 (sec. 4.1) for a SwiGLU / MoE block.
    """
    per_block_attention = 4 * cfg.d_model + 2 * cfg.n_heads * cfg.head_size + 2 * cfg.kv_heads * cfg.head_size
    total = 2 * cfg.vocab_size
    for layer in range(cfg.n_layers):
        if cfg.is_moe_block(layer):
            ffn = (4 * (cfg.top_k * cfg.d_ff + cfg.num_shared_experts * cfg.shared_hidden)
                   + 2 * cfg.top_k * cfg.d_model)
        else:
            ffn = 4 * cfg.dense_hidden
        total += per_block_attention + ffn
    return total


def training_memory(cfg: ModelConfig, micro_batch_size: int, seq_len: int, precision: str = "fp32") -> TrainingMemory:
    """Memory of one training step: float32 weights, gradients and AdamW state for
    *every* parameter (an MoE pays for idle experts too), plus the activations of
    one micro-batch in the compute precision (2 bytes under bf16 autocast, 4 in fp32).
    The logits for the loss are counted in float32 either way, and bf16 autocast
    also keeps a bf16 copy of every weight matrix for the backward pass."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    tokens = micro_batch_size * seq_len
    value_bytes = 2 if precision == "bf16" else 4
    logits = 2 * cfg.vocab_size
    activations = tokens * ((activation_values_per_token(cfg) - logits) * value_bytes + logits * 4)
    if precision == "bf16":
        activations += 2 * count_from_config(cfg).total
    return TrainingMemory(state=memory_bytes(cfg, torch.float32, "adamw"), activations=activations,
                          precision=precision)


def fsdp_training_memory(cfg: ModelConfig, micro_batch_size: int, seq_len: int, ranks: int,
                         precision: str = "bf16") -> TrainingMemory:
    """``training_memory`` of one rank when ``ranks`` processes train data-parallel with FSDP2
    (``torchrun ... -m moe_helpers train``): every weight, gradient and AdamW moment is split
    ``ranks`` ways, and each rank runs ``micro_batch_size / ranks`` of the sequences of every
    micro-batch.  The bf16 weight copies autocast keeps are counted whole (the upper bound)."""
    if not (isinstance(ranks, int) and ranks >= 1):
        raise ValueError(f"ranks must be an integer >= 1, got {ranks!r}")
    if micro_batch_size % ranks:
        raise ValueError(f"the micro-batch of {micro_batch_size} sequences does not split over {ranks} ranks")
    one_rank = training_memory(cfg, micro_batch_size // ranks, seq_len, precision)
    state = one_rank.state
    shard = Memory(weights=state.weights // ranks, gradients=state.gradients // ranks,
                   optimizer=state.optimizer // ranks)
    return TrainingMemory(state=shard, activations=one_rank.activations, precision=precision)


RULE = "=" * 60
THIN_RULE = "  " + "\u2500" * 57


def _millions(label: str, value: int) -> str:
    return f"  {label:<18}{value / 1e6:8.2f} M"


def format_banner(title: str, counts: ParameterCounts, steps: int, lr: float, device,
                  memory: TrainingMemory | None = None) -> str:
    """The banner printed at the start of each phase, line for line as in the
    original note (dense and MoE variants), plus, when given, the memory the
    phase needs at its precision."""
    lines = [RULE, f"  {title}", f"  Steps: {steps}  |  LR: {lr}  |  Device: {device}", THIN_RULE,
             _millions("Total Parameters:", counts.total)]
    if not counts.is_moe:
        lines += [_millions("Active Params/tok:", counts.active) + "  (Dense model)", THIN_RULE]
    else:
        lines += [
            _millions("Active Params/tok:", counts.active) + f"  (top-{counts.top_k} of {counts.num_experts} experts)",
            _millions("Inactive Params:", counts.inactive) + f"  ({counts.experts_idle} experts idle)",
            THIN_RULE,
            f"  Efficiency: {counts.efficiency:.1f}% active per forward pass",
        ]
    if memory is not None:
        lines.append(memory.describe())
    return "\n".join(lines + [RULE])


def phase_banner(title: str, counts: ParameterCounts, steps: int, lr: float, device,
                 memory: TrainingMemory | None = None) -> str:
    """Print the phase banner and return its text."""
    text = format_banner(title, counts, steps, lr, device, memory)
    print(text)
    return text
