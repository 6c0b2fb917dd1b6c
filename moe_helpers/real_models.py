"""Published Mixture-of-Experts language models, as ``ModelConfig``s, next to
the parameter counts their authors published.

Each entry holds the model's shape (copied from its Hugging Face
``config.json``), the published total and active parameter counts (from the
model card or paper named in ``figures_source``) and the convention the
publisher used for "active".  ``comparison_table()`` counts every model by
formula (``count_from_config``, no allocation) and puts the two side by side.

Two things keep the comparison honest:

* **Pieces our ``ModelConfig`` does not build.**  Some models carry small
  extra tensors: biases on the q/k/v projections (Qwen1.5-MoE, Phi-3.5-MoE,
  GPT-OSS), RMSNorms on queries and keys (OLMoE, Qwen3), LayerNorm biases
  (Phi-3.5-MoE), a sigmoid gate on the shared expert (Qwen1.5-MoE), attention
  sinks and expert biases (GPT-OSS).  ``Extra`` records each one with its
  own formula, so the computed figure is the whole model, and the table says
  how much of it came from extras (always well under 1%).
* **What "active" means.**  Most publishers count every parameter a token
  touches, the input embedding included (Mixtral, OLMoE, DeepSeekMoE, Qwen,
  Phi).  OpenAI's GPT-OSS card leaves the input embedding out (a table
  lookup, not a matrix multiply) but keeps the unembedding.
  ``counts_input_embedding`` says which, and the computed active figure
  follows the publisher.

Published figures are rounded (``"46.7B"``); ``rounds_to_published`` checks
that our count rounds to the same digits.  Models with multi-head latent
attention (DeepSeek-V2/V3) are left out: their attention has low-rank
projections our attention formula does not describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

from .accounting import count_from_config
from .config import ModelConfig


# ------------------------------------------------------------ extra tensors
@dataclass(frozen=True)
class Extra:
    """Parameters a published model has and ``ModelConfig`` does not build.

    ``total`` are all of them; ``active`` the ones one token uses (biases of
    routed experts are active only for the k chosen experts)."""

    name: str
    total: int
    active: int


def qkv_bias(cfg: ModelConfig) -> Extra:
    """Biases on the query, key and value projections: (H + 2 H_kv) * head_dim per block."""
    size = cfg.n_layers * (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_size
    return Extra("q/k/v biases", size, size)


def output_bias(cfg: ModelConfig) -> Extra:
    """Bias on the attention output projection: d_model per block."""
    size = cfg.n_layers * cfg.d_model
    return Extra("attention output bias", size, size)


def qk_norm_per_head(cfg: ModelConfig) -> Extra:
    """RMSNorm gains on queries and keys shared by all heads (Qwen3): 2 * head_dim per block."""
    size = cfg.n_layers * 2 * cfg.head_size
    return Extra("q/k RMSNorm (per head)", size, size)


def qk_norm_full_width(cfg: ModelConfig) -> Extra:
    """RMSNorm gains over the whole query and key projections (OLMoE):
    (H + H_kv) * head_dim per block."""
    size = cfg.n_layers * (cfg.n_heads + cfg.kv_heads) * cfg.head_size
    return Extra("q/k RMSNorm (full width)", size, size)


def layernorm_bias(cfg: ModelConfig) -> Extra:
    """LayerNorm instead of RMSNorm adds a bias next to every gain: (2 L + 1) * d_model."""
    size = (2 * cfg.n_layers + 1) * cfg.d_model
    return Extra("LayerNorm biases", size, size)


def lm_head_bias(cfg: ModelConfig) -> Extra:
    """A bias on the output layer: one per vocabulary entry."""
    return Extra("LM-head bias", cfg.vocab_size, cfg.vocab_size)


def shared_expert_gate(cfg: ModelConfig) -> Extra:
    """Qwen-MoE scales the shared expert by sigmoid(x w_g): ``Linear(d_model, 1)`` per MoE block."""
    size = cfg.num_moe_layers * cfg.d_model
    return Extra("shared-expert gate", size, size)


def attention_sinks(cfg: ModelConfig) -> Extra:
    """GPT-OSS adds one learned logit per head to each softmax denominator."""
    size = cfg.n_layers * cfg.n_heads
    return Extra("attention sinks", size, size)


def expert_and_router_biases(cfg: ModelConfig) -> Extra:
    """GPT-OSS experts have biases (gate and up: d_ff each, down: d_model), and the
    router has one per expert.  Only the k chosen experts' biases are active."""
    per_expert = 2 * cfg.d_ff + cfg.d_model
    total = cfg.num_moe_layers * (cfg.num_experts * per_expert + cfg.num_experts)
    active = cfg.num_moe_layers * (cfg.top_k * per_expert + cfg.num_experts)
    return Extra("expert and router biases", total, active)


# ------------------------------------------------------------ the models
@dataclass(frozen=True)
class PublishedModel:
    """One published MoE: its shape and the figures its authors give."""

    name: str
    config: ModelConfig
    published_total: str                  # e.g. "46.7B", as published
    published_active: str
    figures_source: str                   # where the two figures are published
    config_source: str                    # where the shape comes from
    counts_input_embedding: bool = True   # does the published "active" include the input embedding?
    extras: tuple[Callable[[ModelConfig], Extra], ...] = field(default=())
    remark: str = ""                      # anything else a reader should know about the figures

    def extra_parameters(self) -> list[Extra]:
        return [extra(self.config) for extra in self.extras]

    @property
    def convention(self) -> str:
        """The publisher's "active" convention, in words."""
        if self.counts_input_embedding:
            return "active counts every parameter a token touches, embeddings included"
        return "active leaves out the input embedding (a lookup) but counts the unembedding"


def _config(**fields) -> ModelConfig:
    # Context length and rope_theta stay at their defaults: rotary embeddings have
    # no parameters, so neither changes a count.
    return ModelConfig(**fields)


PUBLISHED_MODELS: tuple[PublishedModel, ...] = (
    PublishedModel(
        name="Mixtral-8x7B",
        config=_config(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       d_ff=14336, num_experts=8, top_k=2),
        published_total="46.7B", published_active="12.9B",
        figures_source="Mistral AI, 'Mixtral of experts' (blog, Dec 2023) and the model card",
        config_source="mistralai/Mixtral-8x7B-v0.1 config.json",
    ),
    PublishedModel(
        name="Mixtral-8x22B",
        config=_config(vocab_size=32000, d_model=6144, n_layers=56, n_heads=48, n_kv_heads=8,
                       d_ff=16384, num_experts=8, top_k=2),
        published_total="141B", published_active="39B",
        figures_source="Mistral AI, 'Cheaper, Better, Faster, Stronger' (blog, Apr 2024)",
        config_source="mistralai/Mixtral-8x22B-v0.1 config.json",
        remark="v0.1 vocabulary (32000); the v0.3 tokenizer has 32768 entries (+9.4 M parameters)",
    ),
    PublishedModel(
        name="OLMoE-1B-7B",
        config=_config(vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, d_ff=1024,
                       num_experts=64, top_k=8),
        published_total="6.9B", published_active="1.3B",
        figures_source="Muennighoff et al. 2024, 'OLMoE' (arXiv:2409.02060), Table 1",
        config_source="allenai/OLMoE-1B-7B-0924 config.json; q/k norms from transformers' OlmoeAttention",
        extras=(qk_norm_full_width,),
        remark="the name rounds further: '1B active, 7B total'",
    ),
    PublishedModel(
        name="Qwen3-30B-A3B",
        config=_config(vocab_size=151936, d_model=2048, n_layers=48, n_heads=32, n_kv_heads=4,
                       head_dim=128, d_ff=768, num_experts=128, top_k=8),
        published_total="30.5B", published_active="3.3B",
        figures_source="Qwen/Qwen3-30B-A3B model card (30.5B total, 3.3B activated)",
        config_source="Qwen/Qwen3-30B-A3B config.json",
        extras=(qk_norm_per_head,),
        remark="our 3.35B active is the card's 3.3B truncated rather than rounded",
    ),
    PublishedModel(
        name="DeepSeekMoE-16B",
        config=_config(vocab_size=102400, d_model=2048, n_layers=28, n_heads=16, d_ff=1408,
                       num_experts=64, top_k=6, num_shared_experts=2, shared_d_ff=1408,
                       first_k_dense=1, dense_d_ff=10944),
        published_total="16.4B", published_active="2.8B",
        figures_source="Dai et al. 2024, 'DeepSeekMoE' (arXiv:2401.06066), Sec. 5",
        config_source="deepseek-ai/deepseek-moe-16b-base config.json",
    ),
    PublishedModel(
        name="Qwen1.5-MoE-A2.7B",
        config=_config(vocab_size=151936, d_model=2048, n_layers=24, n_heads=16, d_ff=1408,
                       num_experts=60, top_k=4, num_shared_experts=1, shared_d_ff=5632),
        published_total="14.3B", published_active="2.7B",
        figures_source="Qwen/Qwen1.5-MoE-A2.7B model card (14.3B total, 2.7B activated)",
        config_source="Qwen/Qwen1.5-MoE-A2.7B config.json; biases and gate from transformers' Qwen2Moe code",
        extras=(qkv_bias, shared_expert_gate),
    ),
    PublishedModel(
        name="Phi-3.5-MoE",
        config=_config(vocab_size=32064, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       d_ff=6400, num_experts=16, top_k=2),
        published_total="41.9B", published_active="6.6B",
        figures_source="microsoft/Phi-3.5-MoE-instruct model card (6.6B active) and its Hub page (41.9B)",
        config_source="microsoft/Phi-3.5-MoE-instruct config.json (attention_bias, lm_head_bias true; LayerNorm)",
        extras=(qkv_bias, output_bias, layernorm_bias, lm_head_bias),
    ),
    PublishedModel(
        name="GPT-OSS-20B",
        config=_config(vocab_size=201088, d_model=2880, n_layers=24, n_heads=64, n_kv_heads=8,
                       head_dim=64, d_ff=2880, num_experts=32, top_k=4),
        published_total="20.9B", published_active="3.6B",
        figures_source="OpenAI, 'gpt-oss-120b & gpt-oss-20b model card' (arXiv:2508.10925), Table 1",
        config_source="openai/gpt-oss-20b config.json",
        counts_input_embedding=False,
        extras=(qkv_bias, output_bias, attention_sinks, expert_and_router_biases),
        remark="MoE weights ship in MXFP4; the counts are parameters, not bytes",
    ),
)


def published_model(name: str) -> PublishedModel:
    """The published model called ``name`` (see ``PUBLISHED_MODELS``)."""
    for model in PUBLISHED_MODELS:
        if model.name == name:
            return model
    names = ", ".join(model.name for model in PUBLISHED_MODELS)
    raise ValueError(f"unknown model {name!r}; choose one of {names}")


# ------------------------------------------------------------ the comparison
def parse_count(text: str) -> float:
    """``"46.7B"`` -> 46.7e9, ``"371.64M"`` -> 371.64e6."""
    scale = {"B": 1e9, "M": 1e6}
    if not text or text[-1] not in scale:
        raise ValueError(f"a published count ends in B or M, got {text!r}")
    return float(text[:-1]) * scale[text[-1]]


def rounds_to_published(computed: float, published: str) -> bool:
    """Whether ``computed`` rounds to ``published`` at the digits it was published with
    (``"12.9B"`` accepts 12.85e9 <= computed < 12.95e9)."""
    digits = Decimal(published[:-1])
    half_step = Decimal(1).scaleb(digits.as_tuple().exponent) / 2
    unit = Decimal(str(parse_count("1" + published[-1])))
    value = Decimal(str(computed)) / unit
    return digits - half_step <= value < digits + half_step


@dataclass(frozen=True)
class ComparisonRow:
    """Computed against published counts for one model."""

    name: str
    computed_total: int
    published_total: float
    total_error: float            # (computed - published) / published
    computed_active: int
    published_active: float
    active_error: float
    total_rounds_to_published: bool
    active_rounds_to_published: bool
    counts_input_embedding: bool  # the publisher's convention for "active"
    active_other_convention: int  # what "active" would be under the other convention
    extras_total: int             # parameters of pieces ModelConfig lacks (already in computed_total)
    note: str


def computed_counts(model: PublishedModel, counts_input_embedding: bool | None = None) -> tuple[int, int]:
    """Total and active parameters of ``model``, extras included.

    "Active" follows the publisher's convention unless ``counts_input_embedding``
    says otherwise."""
    if counts_input_embedding is None:
        counts_input_embedding = model.counts_input_embedding
    counts = count_from_config(model.config)
    extras = model.extra_parameters()
    total = counts.total + sum(extra.total for extra in extras)
    active = counts.active + sum(extra.active for extra in extras)
    if not counts_input_embedding:
        active -= counts.by_part["embedding"]
    return total, active


def compare(model: PublishedModel) -> ComparisonRow:
    """One row of the comparison table."""
    total, active = computed_counts(model)
    _, active_other_convention = computed_counts(model, not model.counts_input_embedding)
    published_total = parse_count(model.published_total)
    published_active = parse_count(model.published_active)
    extras = model.extra_parameters()
    notes = [model.convention]
    if extras:
        notes.append("not in ModelConfig, added by formula: " + ", ".join(extra.name for extra in extras))
    if model.remark:
        notes.append(model.remark)
    return ComparisonRow(
        name=model.name,
        computed_total=total, published_total=published_total,
        total_error=(total - published_total) / published_total,
        computed_active=active, published_active=published_active,
        active_error=(active - published_active) / published_active,
        total_rounds_to_published=rounds_to_published(total, model.published_total),
        active_rounds_to_published=rounds_to_published(active, model.published_active),
        counts_input_embedding=model.counts_input_embedding,
        active_other_convention=active_other_convention,
        extras_total=sum(extra.total for extra in extras),
        note="; ".join(notes),
    )


def comparison_table(models=PUBLISHED_MODELS) -> list[ComparisonRow]:
    """Computed and published counts of every published model, side by side."""
    return [compare(model) for model in models]


def format_comparison(rows: list[ComparisonRow]) -> str:
    """The comparison as a Markdown table (billions of parameters, errors in %)."""
    lines = [
        "| model | total (ours) | total (published) | error | active (ours) | active (published) | error "
        "| extras | active convention |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        convention = "embeddings counted" if row.counts_input_embedding else "input embedding left out"
        lines.append(
            f"| {row.name} | {row.computed_total / 1e9:.2f} B | {row.published_total / 1e9:g} B "
            f"| {100 * row.total_error:+.2f}% | {row.computed_active / 1e9:.2f} B "
            f"| {row.published_active / 1e9:g} B | {100 * row.active_error:+.2f}% "
            f"| {row.extras_total / 1e6:.2f} M | {convention} |"
        )
    return "\n".join(lines)
