"""Hugging Face ``transformers`` interop: export a course model, load one back.

The course's layers follow Llama / Mixtral conventions (RMSNorm in float32,
rotate-half RoPE, grouped-query attention, SwiGLU without biases), so a
trained model maps one to one onto a ``transformers`` model:

* a dense ``GPT``  -> ``LlamaForCausalLM``
* an MoE ``GPT``   -> ``MixtralForCausalLM`` (upcycled, grown or split models alike)

``to_hf`` builds that model in memory, ``save_hf`` writes it (safetensors)
with a ``PreTrainedTokenizerFast`` next to it, so that
``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` load it without any course code, and
``from_hf`` turns a Llama / Mixtral model (or a folder holding one) back into
a ``GPT``.

Weight names, ours -> ``transformers`` (block ``i``):

    tok_embeddings                 model.embed_tokens
    layers.i.attention_norm        model.layers.i.input_layernorm
    layers.i.attention.wq/wk/wv/wo model.layers.i.self_attn.q_proj/k_proj/v_proj/o_proj
    layers.i.ffn_norm              model.layers.i.post_attention_layernorm
    layers.i.ffn.w1/w3/w2          model.layers.i.mlp.gate_proj/up_proj/down_proj   (Llama)
    layers.i.ffn.router            model.layers.i.mlp.gate                          (Mixtral)
    layers.i.ffn.experts.e.w1, w3  model.layers.i.mlp.experts.gate_up_proj[e]  = [w1; w3]
    layers.i.ffn.experts.e.w2      model.layers.i.mlp.experts.down_proj[e]
    norm                           model.norm
    lm_head                        lm_head

``transformers`` 5 stores the experts of a Mixtral layer fused, as two 3-D
parameters (``gate_up_proj``: (E, 2 * d_ff, d_model), gate rows first;
``down_proj``: (E, d_model, d_ff)) instead of one module per expert; this
module needs that layout, hence ``transformers >= 5``.

What Mixtral cannot express is refused with a ``ValueError`` rather than
exported into a model that computes something else: shared experts, leading
dense blocks, noisy gating, routing weights without top-k renormalisation and
a capacity limit.
"""

from __future__ import annotations

from contextlib import contextmanager

import warnings
from pathlib import Path

import torch

from .config import ModelConfig
from .data import EOT, StoryTokenizer
from .model import GPT


# Names inside one block, ours -> transformers (the same for Llama and Mixtral).
BLOCK_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
# A dense block's SwiGLU network: w1 is the gate, w3 the up and w2 the down projection.
DENSE_FFN_NAMES = {
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
# Outside the blocks.
MODEL_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


# ------------------------------------------------------------------ refusals
def check_exportable(model: GPT) -> None:
    """Raise ``ValueError`` if ``model`` has a part Llama / Mixtral cannot express.

    Each message names the field and says why.  ``dropout`` is not refused: it
    only acts while training and an exported model is for inference, so it is
    dropped (with a warning).
    """
    cfg = model.cfg
    if cfg.num_shared_experts:
        raise ValueError(
            f"num_shared_experts={cfg.num_shared_experts}: Mixtral has no always-active shared "
            "experts (DeepSeekMoE); their output would be lost")
    if cfg.first_k_dense:
        raise ValueError(
            f"first_k_dense={cfg.first_k_dense}: Mixtral puts an MoE layer in every block; it "
            "cannot hold leading dense blocks")
    for layer, moe in enumerate(model.moe_layers):
        if not moe.router.renormalize:
            raise ValueError(
                f"renormalize_top_k=False (MoE layer {layer}): Mixtral always rescales the top-k "
                "routing weights to sum to 1, so the outputs would change")
        if moe.router.noise is not None:
            raise ValueError(
                f"noisy_gating=True (MoE layer {layer}): Mixtral's router has no noise weights "
                "(router.noise); the trained noise projection would be lost")
        if moe.expert_bias is not None and bool(moe.expert_bias.ne(0).any()):
            raise ValueError(
                f"expert_bias (MoE layer {layer}, bias_update_rate={moe.bias_update_rate}): Mixtral "
                "chooses experts by the probabilities alone; this layer's learned selection bias "
                "would be lost and tokens would go to other experts")
        if moe.capacity_factor is not None:
            raise ValueError(
                f"capacity_factor={moe.capacity_factor} (MoE layer {layer}): Mixtral never drops "
                "tokens, so a model trained with a capacity limit would compute something else")


# ------------------------------------------------------------------- configs
def hf_config(cfg: ModelConfig):
    """The ``LlamaConfig`` (dense) or ``MixtralConfig`` (MoE) of ``cfg``, field by field.

    RoPE's theta goes into ``rope_parameters`` (transformers 5); the head width
    is always written out (``head_dim``), so grown models whose
    ``d_model / n_heads`` differs from their head width map too.  No token ids
    are set here: ``save_hf`` sets them from the tokenizer.
    """
    import transformers
    shared = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_size,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=0.0,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    if not cfg.is_moe:
        return transformers.LlamaConfig(intermediate_size=cfg.dense_hidden, attention_bias=False,
                                        mlp_bias=False, **shared)
    return transformers.MixtralConfig(
        intermediate_size=cfg.d_ff,
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.top_k,
        router_aux_loss_coef=cfg.aux_loss_coef,   # the same Switch load-balancing loss
        router_jitter_noise=0.0,
        sliding_window=None,
        **shared,
    )


def course_config(hf_cfg) -> ModelConfig:
    """The ``ModelConfig`` of a Llama / Mixtral config (``ValueError`` if it has no equivalent)."""
    kind = hf_cfg.model_type
    if kind not in ("llama", "mixtral"):
        raise ValueError(f"model_type={kind!r}: from_hf reads Llama and Mixtral models only")
    _check_importable(hf_cfg)
    head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    kv_heads = hf_cfg.num_key_value_heads or hf_cfg.num_attention_heads
    fields = dict(
        vocab_size=hf_cfg.vocab_size,
        d_model=hf_cfg.hidden_size,
        n_layers=hf_cfg.num_hidden_layers,
        n_heads=hf_cfg.num_attention_heads,
        d_ff=hf_cfg.intermediate_size,
        # None where the default gives the same value, as a course config would say it
        n_kv_heads=None if kv_heads == hf_cfg.num_attention_heads else kv_heads,
        head_dim=None if head_dim * hf_cfg.num_attention_heads == hf_cfg.hidden_size else head_dim,
        max_seq_len=hf_cfg.max_position_embeddings,
        rope_theta=float(hf_cfg.rope_parameters["rope_theta"]),
        norm_eps=hf_cfg.rms_norm_eps,
        tie_embeddings=bool(hf_cfg.tie_word_embeddings),
    )
    if kind == "mixtral":
        fields.update(num_experts=hf_cfg.num_local_experts, top_k=hf_cfg.num_experts_per_tok,
                      aux_loss_coef=hf_cfg.router_aux_loss_coef)
    return ModelConfig(**fields)


def _check_importable(hf_cfg) -> None:
    """Raise ``ValueError`` for the Llama / Mixtral options the course's layers do not have."""
    rope = hf_cfg.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_parameters rope_type={rope['rope_type']!r}: the course's RoPE is the "
                         "original one (rope_type 'default'), without scaling")
    if hf_cfg.hidden_act != "silu":
        raise ValueError(f"hidden_act={hf_cfg.hidden_act!r}: the course's feed-forward network is SwiGLU (silu)")
    for name in ("attention_bias", "mlp_bias"):
        if getattr(hf_cfg, name, False):
            raise ValueError(f"{name}=True: the course's linear layers have no biases")
    window = getattr(hf_cfg, "sliding_window", None)
    if window is not None and window < hf_cfg.max_position_embeddings:
        raise ValueError(f"sliding_window={window}: the course's attention sees the whole context")
    if getattr(hf_cfg, "router_jitter_noise", 0.0):
        raise ValueError(f"router_jitter_noise={hf_cfg.router_jitter_noise}: the course's router "
                         "has no input jitter")


# ------------------------------------------------------------------- weights
def hf_state_dict(model: GPT) -> dict:
    """``model``'s weights under ``transformers``' names (tensors shared, not copied)."""
    ours = model.state_dict()
    state = {hf: ours[name] for name, hf in MODEL_NAMES.items()}
    for layer, block in enumerate(model.layers):
        prefix, hf_prefix = f"layers.{layer}.", f"model.layers.{layer}."
        for name, hf in BLOCK_NAMES.items():
            state[hf_prefix + hf] = ours[prefix + name]
        if block.is_moe:
            state.update(_mixtral_experts(block.ffn, hf_prefix))
        else:
            for name, hf in DENSE_FFN_NAMES.items():
                state[hf_prefix + hf] = ours[prefix + name]
    return state


def _mixtral_experts(moe, hf_prefix: str) -> dict:
    """The router and the experts of one MoE layer as Mixtral's fused parameters.

    ``gate_up_proj[e]`` is expert e's gate (w1) stacked over its up projection
    (w3), which is how Mixtral splits it (``.chunk(2)``: gate first).
    """
    gate_up = torch.stack([torch.cat([expert.w1.weight, expert.w3.weight]) for expert in moe.experts])
    down = torch.stack([expert.w2.weight for expert in moe.experts])
    return {
        hf_prefix + "mlp.gate.weight": moe.router.weight,
        hf_prefix + "mlp.experts.gate_up_proj": gate_up.detach(),   # (E, 2 * d_ff, d_model)
        hf_prefix + "mlp.experts.down_proj": down.detach(),         # (E, d_model, d_ff)
    }


def course_state_dict(hf_model, cfg: ModelConfig) -> dict:
    """A ``transformers`` Llama / Mixtral model's weights under the course's names."""
    theirs = hf_model.state_dict()
    state = {name: theirs[hf] for name, hf in MODEL_NAMES.items()}
    for layer in range(cfg.n_layers):
        prefix, hf_prefix = f"layers.{layer}.", f"model.layers.{layer}."
        for name, hf in BLOCK_NAMES.items():
            state[prefix + name] = theirs[hf_prefix + hf]
        if cfg.is_moe:
            state[prefix + "ffn.router.weight"] = theirs[hf_prefix + "mlp.gate.weight"]
            gate_up = theirs[hf_prefix + "mlp.experts.gate_up_proj"]
            down = theirs[hf_prefix + "mlp.experts.down_proj"]
            for expert in range(cfg.num_experts):
                w1, w3 = gate_up[expert].chunk(2, dim=0)
                state[f"{prefix}ffn.experts.{expert}.w1.weight"] = w1
                state[f"{prefix}ffn.experts.{expert}.w3.weight"] = w3
                state[f"{prefix}ffn.experts.{expert}.w2.weight"] = down[expert]
        else:
            for name, hf in DENSE_FFN_NAMES.items():
                state[prefix + name] = theirs[hf_prefix + hf]
    return state


# ---------------------------------------------------------------- public API
@torch.no_grad()
def to_hf(model: GPT):
    """``model`` as a ``transformers`` model holding the same weights.

    A dense model becomes a ``LlamaForCausalLM``, an MoE model a
    ``MixtralForCausalLM``, in ``model``'s dtype and on the CPU, in eval mode.
    Refuses (``ValueError``) what those cannot express; see ``check_exportable``.
    ``dropout`` is ignored: it only acts while training.
    """
    import transformers
    check_exportable(model)
    if model.cfg.dropout > 0:
        warnings.warn(f"to_hf: dropout={model.cfg.dropout} is not exported (the exported model is "
                      "for inference; Llama / Mixtral have no residual dropout)", stacklevel=2)
    config = hf_config(model.cfg)
    kind = transformers.MixtralForCausalLM if model.cfg.is_moe else transformers.LlamaForCausalLM
    dtype = next(model.parameters()).dtype
    hf_model = kind(config).to(dtype)
    hf_model.load_state_dict({name: tensor.detach().cpu() for name, tensor in hf_state_dict(model).items()},
                             strict=True)
    return hf_model.eval()


def hf_tokenizer(tokenizer: StoryTokenizer):
    """The course tokenizer as a ``PreTrainedTokenizerFast``, ``<|endoftext|>`` as bos, eos and pad.

    The same byte-level BPE (rebuilt from its JSON), so it gives the same ids;
    no bos/eos token is added when encoding, as ``StoryTokenizer.encode`` adds none.
    """
    from tokenizers import Tokenizer

    import transformers
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.to_json()),
        bos_token=EOT, eos_token=EOT, pad_token=EOT,
        model_max_length=None,
    )


def save_hf(model: GPT, tokenizer: StoryTokenizer, path) -> Path:
    """Write ``model`` and ``tokenizer`` to the folder ``path``, ready for ``from_pretrained``.

    The model goes through ``to_hf`` and ``save_pretrained`` (safetensors); its
    config and generation config name ``<|endoftext|>`` as bos, eos and pad.
    Afterwards ``AutoModelForCausalLM.from_pretrained(path)`` and
    ``AutoTokenizer.from_pretrained(path)`` load it with ``transformers`` alone.
    """
    path = Path(path)
    hf_model = to_hf(model)
    eot = tokenizer.eot_id
    for config in (hf_model.config, hf_model.generation_config):
        config.bos_token_id = config.eos_token_id = config.pad_token_id = eot
    fast = hf_tokenizer(tokenizer)
    fast.model_max_length = model.cfg.max_seq_len
    with _quiet_progress_bars():         # a one-shard model needs no "Writing model shards" bar
        hf_model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


@contextmanager
def _quiet_progress_bars():
    """``transformers``' progress bars off inside the block, as they were after it."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


@torch.no_grad()
def from_hf(model_or_path) -> GPT:
    """A ``GPT`` holding the weights of a ``transformers`` Llama / Mixtral model.

    ``model_or_path``: a ``LlamaForCausalLM`` / ``MixtralForCausalLM``, or a
    local folder one was saved to (loaded with ``AutoModelForCausalLM``).
    Raises ``ValueError`` for other architectures and for options the course's
    ``ModelConfig`` cannot express (see ``course_config``).  The result keeps
    the weights' dtype, sits on the CPU and is in eval mode.
    """
    import transformers
    hf_model = model_or_path
    if isinstance(model_or_path, (str, Path)):
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(model_or_path))
    cfg = course_config(hf_model.config)
    dtype = next(hf_model.parameters()).dtype
    model = GPT(cfg).to(dtype)
    model.load_state_dict({name: tensor.detach().cpu() for name, tensor in
                           course_state_dict(hf_model, cfg).items()}, strict=True)
    return model.eval()
