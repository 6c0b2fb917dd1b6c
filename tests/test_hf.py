"""Hugging Face interop (``moe_helpers.hf``).

* the exported ``LlamaForCausalLM`` / ``MixtralForCausalLM`` computes our
  logits (max |delta| <= 1e-5, float32) for dense, GQA + tied, upcycled,
  width-grown, depth-grown and expert-split models;
* greedy ``transformers`` generation picks the tokens ``GPT.generate(temperature=0)`` picks;
* ``from_hf(to_hf(model))`` gives back bit-identical weights;
* every configuration Mixtral cannot express is refused with a ``ValueError`` naming it;
* ``save_hf`` writes a folder that ``transformers`` alone loads (model and
  tokenizer, checked in a subprocess that imports no course code).

The models are tiny with random weights; every weight gets extra noise so the
experts of an upcycled model differ and a swapped expert or projection shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from moe_helpers.config import ModelConfig  # noqa: E402
from moe_helpers.data import EOT, train_tokenizer  # noqa: E402
from moe_helpers.growth import grow_depth, grow_width, split_experts, upcycle  # noqa: E402
from moe_helpers.hf import from_hf, save_hf, to_hf  # noqa: E402
from moe_helpers.model import GPT  # noqa: E402
from moe_helpers.moe import MoELayer  # noqa: E402

LOGIT_TOLERANCE = 1e-5
TINY = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=32)
SENTENCES = [
    "Once upon a time there was a little cat.",
    "The cat liked to play with a red ball.",
    "One day the ball rolled into the garden.",
    "Tom and Lily went to the park to see the big tree.",
    "She was happy and smiled at her mom.",
    "The dog barked, and the bird flew away.",
]


@torch.no_grad()
def _jittered(model: GPT, seed: int = 0, std: float = 0.05) -> GPT:
    """``model`` with noise added to every weight (distinct experts, real routing), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def _dense(cfg: ModelConfig = TINY, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return _jittered(GPT(cfg), seed)


def _upcycled() -> GPT:
    return _jittered(upcycle(_dense(), num_experts=4, top_k=2), seed=1)


MODELS = {
    "dense": lambda: _dense(),
    "dense_gqa_tied": lambda: _dense(TINY.replace(n_kv_heads=2, tie_embeddings=True)),
    "upcycled": _upcycled,
    "width_grown": lambda: grow_width(_upcycled(), 2, verbose=False).eval(),
    "depth_grown": lambda: grow_depth(_upcycled(), 1).eval(),
    "expert_split": lambda: split_experts(_upcycled(), 2).eval(),
}
EXPECTED_CLASS = {"dense": "LlamaForCausalLM", "dense_gqa_tied": "LlamaForCausalLM"}


def _tokens(vocab_size: int = TINY.vocab_size, batch: int = 3, length: int = TINY.max_seq_len) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_model_computes_our_logits(name):
    model = MODELS[name]()
    exported = to_hf(model)
    assert type(exported).__name__ == EXPECTED_CLASS.get(name, "MixtralForCausalLM")
    idx = _tokens()
    with torch.no_grad():
        ours, theirs = model(idx).logits, exported(idx).logits
    assert ours.dtype == theirs.dtype == torch.float32
    assert (ours - theirs).abs().max().item() <= LOGIT_TOLERANCE


@pytest.mark.parametrize("name", ["dense_gqa_tied", "width_grown"])
def test_config_fields_are_mapped(name):
    model = MODELS[name]()
    cfg, config = model.cfg, to_hf(model).config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (cfg.vocab_size, cfg.d_model,
                                                                                cfg.n_layers)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (cfg.n_heads, cfg.kv_heads,
                                                                                        cfg.head_size)
    assert config.rope_parameters["rope_theta"] == cfg.rope_theta
    assert (config.rms_norm_eps, config.max_position_embeddings) == (cfg.norm_eps, cfg.max_seq_len)
    assert config.tie_word_embeddings == cfg.tie_embeddings
    if cfg.is_moe:
        assert (config.num_local_experts, config.num_experts_per_tok) == (cfg.num_experts, cfg.top_k)
        assert config.intermediate_size == cfg.d_ff
        assert config.router_aux_loss_coef == cfg.aux_loss_coef


@pytest.mark.parametrize("name", ["dense", "upcycled", "expert_split"])
def test_greedy_generation_matches(name):
    model = MODELS[name]()
    exported = to_hf(model)
    prompt = _tokens(batch=1, length=5)
    ours = model.generate(prompt, max_new_tokens=12, temperature=0)
    theirs = exported.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                               min_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert theirs.tolist() == ours.tolist()


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_bit_exact(name):
    model = MODELS[name]()
    back = from_hf(to_hf(model))
    assert back.cfg.replace(head_dim=model.cfg.head_size) == model.cfg.replace(head_dim=model.cfg.head_size)
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    if model.cfg.tie_embeddings:
        assert back.lm_head.weight is back.tok_embeddings.weight


def _with_moe_option(model: GPT, **options) -> GPT:
    """``model`` with every MoE layer rebuilt with ``options`` (noisy gating, capacity ...)."""
    for block in model.layers:
        old = block.ffn
        block.ffn = MoELayer(model.cfg.d_model, model.cfg.d_ff, model.cfg.num_experts, model.cfg.top_k, **options)
        block.ffn.load_state_dict(old.state_dict(), strict=False)
    return model


REFUSED = {
    "num_shared_experts": lambda: GPT(TINY.replace(num_experts=4, num_shared_experts=1)),
    "first_k_dense": lambda: GPT(TINY.replace(num_experts=4, first_k_dense=1)),
    "renormalize_top_k": lambda: GPT(TINY.replace(num_experts=4, renormalize_top_k=False)),
    "noisy_gating": lambda: _with_moe_option(GPT(TINY.replace(num_experts=4)), noisy_gating=True),
    "capacity_factor": lambda: _with_moe_option(GPT(TINY.replace(num_experts=4)), capacity_factor=1.25),
    "expert_bias": lambda: _with_learned_bias(GPT(TINY.replace(num_experts=4, bias_update_rate=0.01))),
}


def _with_learned_bias(model: GPT) -> GPT:
    """An aux-loss-free model after one bias update (expert 0 was overloaded)."""
    for layer in model.moe_layers:
        layer.update_expert_bias(torch.tensor([10, 0, 0, 0]))
    return model


def test_an_aux_free_model_whose_bias_is_still_zero_exports_exactly():
    model = GPT(TINY.replace(num_experts=4, bias_update_rate=0.01)).eval()
    with torch.no_grad():
        assert (model(_tokens()).logits - to_hf(model)(_tokens()).logits).abs().max().item() <= LOGIT_TOLERANCE


@pytest.mark.parametrize("field", list(REFUSED))
def test_inexpressible_configs_are_refused(field):
    with pytest.raises(ValueError, match=field):
        to_hf(REFUSED[field]())


def test_dropout_is_dropped_with_a_warning():
    model = GPT(TINY.replace(dropout=0.1)).eval()
    with pytest.warns(UserWarning, match="dropout"):
        exported = to_hf(model)
    with torch.no_grad():
        assert (model(_tokens()).logits - exported(_tokens()).logits).abs().max().item() <= LOGIT_TOLERANCE


def test_from_hf_refuses_what_the_course_cannot_express():
    exported = to_hf(_dense())
    exported.config.mlp_bias = True
    with pytest.raises(ValueError, match="mlp_bias"):
        from_hf(exported)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64))
    with pytest.raises(ValueError, match="model_type"):
        from_hf(gpt2)


@pytest.fixture(scope="module")
def story_tokenizer():
    stories = [f"{sentence} {other}" for sentence in SENTENCES for other in SENTENCES]
    return train_tokenizer(stories, 300, cache=False)


LOAD_WITH_TRANSFORMERS_ONLY = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, sentences = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(path).eval()
tokenizer = AutoTokenizer.from_pretrained(path)
idx = torch.load(path + "/idx.pt")
with torch.no_grad():
    logits = model(idx).logits
print(json.dumps({
    "class": type(model).__name__,
    "logits": logits.tolist(),
    "ids": [tokenizer(sentence)["input_ids"] for sentence in sentences],
    "eos": tokenizer.eos_token_id, "bos": tokenizer.bos_token_id, "pad": tokenizer.pad_token_id,
    "config_eos": model.config.eos_token_id,
    "decoded": tokenizer.decode(tokenizer(sentences[0])["input_ids"]),
    "modules": sorted(name for name in sys.modules if name.startswith("moe_helpers")),
}))
"""


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", ["dense_gqa_tied", "upcycled"])
def test_saved_folder_loads_with_transformers_alone(name, story_tokenizer, tmp_path):
    cfg = TINY.replace(vocab_size=story_tokenizer.vocab_size)
    model = _dense(cfg.replace(n_kv_heads=2, tie_embeddings=True)) if name == "dense_gqa_tied" else \
        _jittered(upcycle(_dense(cfg), num_experts=4, top_k=2), seed=1)
    save_hf(model, story_tokenizer, tmp_path)
    idx = _tokens(vocab_size=cfg.vocab_size)
    torch.save(idx, tmp_path / "idx.pt")
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", LOAD_WITH_TRANSFORMERS_ONLY, str(tmp_path), json.dumps(SENTENCES)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["modules"] == []
    assert loaded["class"] == ("LlamaForCausalLM" if name == "dense_gqa_tied" else "MixtralForCausalLM")
    with torch.no_grad():
        ours = model(idx).logits
    assert (ours - torch.tensor(loaded["logits"])).abs().max().item() <= LOGIT_TOLERANCE
    assert loaded["ids"] == [story_tokenizer.encode(sentence) for sentence in SENTENCES]
    eot = story_tokenizer.eot_id
    assert eot is not None and loaded["eos"] == loaded["bos"] == loaded["pad"] == loaded["config_eos"] == eot
    assert loaded["decoded"] == SENTENCES[0]
    assert (tmp_path / "model.safetensors").exists()
    back = from_hf(tmp_path)
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


def test_eot_is_a_single_token(story_tokenizer):
    assert story_tokenizer.encode(EOT) == [story_tokenizer.eot_id]
