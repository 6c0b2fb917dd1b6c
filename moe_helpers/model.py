"""The decoder: a ``Block`` (attention + feed-forward) and the ``GPT`` model.

Pre-norm residual blocks as in Llama / Mixtral:

    h = x + Attention(RMSNorm(x))
    y = h + FFN(RMSNorm(h))          FFN: a SwiGLU network, or an MoE layer

``ModelConfig.num_experts == 0`` gives a dense model; ``>= 1`` puts an
``MoELayer`` in every block after the first ``first_k_dense``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .layers import Attention, FeedForward, KVCache, LayerKVCache, RMSNorm, upcast
from .moe import MoELayer, RoutingStats


@dataclass
class ModelOutput:
    logits: torch.Tensor              # (B, T, vocab_size)
    loss: torch.Tensor | None         # mean next-token cross-entropy, or None without targets
    aux_loss: torch.Tensor            # sum of the MoE layers' weighted aux losses (0 for dense)
    routing: list[RoutingStats] = field(default_factory=list)   # one per MoE layer, in order


def build_ffn(cfg: ModelConfig, layer: int) -> nn.Module:
    """The feed-forward part of block ``layer``: dense SwiGLU or an MoE layer.

    This is the one place where dense and MoE models differ."""
    if not cfg.is_moe_block(layer):
        return FeedForward(cfg.d_model, cfg.dense_hidden)
    return MoELayer(
        cfg.d_model, cfg.d_ff, cfg.num_experts, cfg.top_k,
        renormalize=cfg.renormalize_top_k,
        num_shared_experts=cfg.num_shared_experts, shared_d_ff=cfg.shared_hidden,
        aux_loss_coef=cfg.aux_loss_coef, z_loss_coef=cfg.z_loss_coef,
        balance_loss_scope=cfg.balance_loss_scope, bias_update_rate=cfg.bias_update_rate,
    )


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = Attention(cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size,
                                   cfg.max_seq_len, cfg.rope_theta, cfg.dropout)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = build_ffn(cfg, layer)
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def is_moe(self) -> bool:
        """An MoE block: an ``MoELayer``, or its expert-parallel share (``parallel.ExpertParallelMoE``)."""
        return not isinstance(self.ffn, FeedForward)

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None, with_routing: bool = True):
        """(B, T, d_model) -> (B, T, d_model), and the MoE layer's ``RoutingStats`` (None when
        dense or when ``with_routing`` is False).

        With a ``cache``, ``x`` holds only the new tokens (see ``Attention``)."""
        attention_out = self.attention(self.attention_norm(x), cache)
        x = x + (self.dropout(attention_out) if self.training else attention_out)   # dropout: training only
        if self.is_moe and with_routing:
            ffn_out, routing = self.ffn(self.ffn_norm(x), return_routing=True)
        else:
            ffn_out, routing = self.ffn(self.ffn_norm(x)), None
        return x + (self.dropout(ffn_out) if self.training else ffn_out), routing


class GPT(nn.Module):
    """A decoder-only language model (dense or MoE) built from a ``ModelConfig``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [block.ffn for block in self.layers if block.is_moe]

    def new_kv_cache(self) -> KVCache:
        """An empty key/value cache for ``forward(idx, cache=...)``: one per layer, each keeping at
        most ``max_seq_len`` positions (a sliding window past it)."""
        return KVCache(self.cfg.n_layers, self.cfg.max_seq_len)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, with_routing: bool = True,
                only_last_logits: bool = False) -> ModelOutput:
        """``idx``: token ids (B, T); ``targets``: the next tokens (B, T) or None.

        With a ``cache`` (``new_kv_cache()``), ``idx`` holds only the tokens that
        follow what the cache has seen; their keys and values are added to it.
        ``with_routing=False`` skips the MoE layers' statistics and aux losses
        (generation needs neither): ``aux_loss`` is then 0 and ``routing`` empty.
        ``only_last_logits=True`` computes the logits of the last position only,
        (B, 1, vocab_size): all that picking the next token needs (the output layer
        is a vocab_size x d_model product per position, a large share of a pass)."""
        _, T = idx.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        if only_last_logits and targets is not None:
            raise ValueError("only_last_logits computes no loss: the targets need the logits of every position")
        x = self.tok_embeddings(idx)                                  # (B, T, d_model)
        aux_loss, routing = x.new_zeros(()), []
        layer_caches = [None] * len(self.layers) if cache is None else cache.layers
        for block, layer_cache in zip(self.layers, layer_caches):
            x, block_routing = block(x, layer_cache, with_routing)    # (B, T, d_model)
            if block_routing is not None:
                aux_loss = aux_loss + block_routing.aux_loss
                routing.append(block_routing)
        if only_last_logits:
            x = x[:, -1:]                                             # (B, 1, d_model)
        logits = self.lm_head(self.norm(x))                           # (B, T or 1, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(upcast(logits.flatten(0, 1)), targets.flatten())
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux_loss, routing=routing)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T).

        ``temperature=0`` picks the most likely token (greedy); ``top_k`` keeps
        only the k most likely tokens before sampling.  A ``generator`` for
        reproducible sampling must live on the model's device
        (``torch.Generator(device=...)``).

        ``use_cache=True`` keeps every layer's keys and values (``new_kv_cache``),
        so each step runs the model on one new token; ``False`` re-encodes the
        whole context every step.  Either way only the last position's logits are
        computed (``only_last_logits``).  Both give the same tokens while the sequence
        fits in ``max_seq_len``.  Past it they differ on purpose: without the
        cache the context is cropped to the last ``max_seq_len`` tokens and
        re-encoded from scratch, so the oldest kept token suddenly has no left
        context; the cache slides instead -- it drops the oldest position and
        keeps the others' keys and values as they were computed, when their
        tokens could still see further back.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        was_training = self.training
        self.eval()
        cache = self.new_kv_cache() if use_cache else None
        context, pending, new_tokens = idx, idx[:, -self.cfg.max_seq_len:], []
        # inference mode: like no_grad, and torch also skips the bookkeeping that only autograd
        # needs (version counters, view tracking): a visible share of a one-token step
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                if cache is None:                                     # re-read the (cropped) context
                    logits = self(context[:, -self.cfg.max_seq_len:], with_routing=False,
                                  only_last_logits=True).logits
                else:                                                 # read only the unseen tokens
                    logits = self(pending, cache=cache, with_routing=False, only_last_logits=True).logits
                pending = pick_next_token(logits[:, -1, :].float(), temperature, top_k, generator)  # (B, 1)
                new_tokens.append(pending)
                if cache is None:
                    context = torch.cat([context, pending], dim=1)
        self.train(was_training)
        # joined outside inference mode, so the returned ids are ordinary tensors (usable with autograd)
        return torch.cat([idx, *new_tokens], dim=1)


def pick_next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
                    generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row of ``logits`` (B, vocab_size) -> (B, 1): the argmax when
    ``temperature`` is 0, else a sample from softmax(logits / temperature) restricted to the
    ``top_k`` most likely tokens (all of them when ``top_k`` is None)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth_best = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)
