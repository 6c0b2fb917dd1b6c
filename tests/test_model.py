"""The decoder: shapes, loss, causality, generation, aux loss, tied embeddings, and a
float64 comparison with an independent reference implementation written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moe_helpers.config import ModelConfig
from moe_helpers.model import GPT


def build(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


@pytest.fixture(params=["dense", "moe", "gqa", "moe_shared_first_dense"])
def any_config(request, tiny_dense_config, tiny_moe_config, tiny_gqa_config):
    return {
        "dense": tiny_dense_config,
        "moe": tiny_moe_config,
        "gqa": tiny_gqa_config,
        "moe_shared_first_dense": tiny_moe_config.replace(n_kv_heads=1, num_shared_experts=1,
                                                          shared_d_ff=16, first_k_dense=1, dense_d_ff=40),
    }[request.param]


# ------------------------------------------------------------------ forward
def test_logits_shape_and_no_loss_without_targets(any_config, token_ids):
    out = build(any_config)(token_ids)
    assert out.logits.shape == (2, 12, any_config.vocab_size)
    assert out.logits.dtype == torch.float32
    assert out.loss is None
    assert out.aux_loss.shape == ()


def test_loss_is_the_mean_next_token_cross_entropy(any_config, token_ids):
    model = build(any_config)
    targets = token_ids.roll(-1, dims=1)
    out = model(token_ids, targets)
    by_hand = F.cross_entropy(out.logits.reshape(-1, any_config.vocab_size), targets.reshape(-1))
    torch.testing.assert_close(out.loss, by_hand, rtol=0, atol=1e-6)
    # an untrained model is close to uniform: loss near ln(vocab_size)
    assert abs(out.loss.item() - math.log(any_config.vocab_size)) < 0.1


def test_model_is_causal(any_config, token_ids):
    """Changing the token at position p leaves the logits of positions < p unchanged."""
    model = build(any_config)
    logits = model(token_ids).logits
    for position in (1, 5, 11):
        changed = token_ids.clone()
        changed[:, position] = (changed[:, position] + 7) % any_config.vocab_size
        changed_logits = model(changed).logits
        torch.testing.assert_close(changed_logits[:, :position], logits[:, :position], rtol=0, atol=1e-6)
        assert (changed_logits[:, position:] - logits[:, position:]).abs().max() > 1e-4   # the test can see changes


def test_sequence_longer_than_max_seq_len_is_rejected(tiny_dense_config):
    model = build(tiny_dense_config)
    too_long = torch.zeros(1, tiny_dense_config.max_seq_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(too_long)
    assert model(too_long[:, :-1]).logits.shape == (1, tiny_dense_config.max_seq_len, 64)


def test_only_last_logits_are_the_last_row_of_the_full_logits(any_config, token_ids):
    model = build(any_config)
    full = model(token_ids).logits                                        # (2, 12, vocab)
    last = model(token_ids, only_last_logits=True)
    assert last.logits.shape == (2, 1, any_config.vocab_size)
    torch.testing.assert_close(last.logits, full[:, -1:], rtol=0, atol=1e-6)
    assert torch.equal(last.aux_loss, model(token_ids).aux_loss)         # the blocks ran on every token
    cache = model.new_kv_cache()                                          # and with a cache: the same rows
    model(token_ids[:, :5], cache=cache)
    torch.testing.assert_close(model(token_ids[:, 5:], cache=cache, only_last_logits=True).logits,
                               full[:, -1:], rtol=0, atol=1e-5)


def test_only_last_logits_refuses_targets(tiny_dense_config, token_ids):
    with pytest.raises(ValueError, match="only_last_logits"):
        build(tiny_dense_config)(token_ids, targets=token_ids, only_last_logits=True)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_computes_the_logits_of_the_last_position_only(tiny_moe_config, use_cache):
    model = build(tiny_moe_config)
    rows = []
    model.lm_head.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[1]))
    model.generate(torch.arange(6)[None], max_new_tokens=4, temperature=0, use_cache=use_cache)
    assert rows == [1, 1, 1, 1]                                           # never the whole context's


def test_aux_loss_is_zero_for_dense_and_positive_for_moe(tiny_dense_config, tiny_moe_config, token_ids):
    assert build(tiny_dense_config)(token_ids).aux_loss.item() == 0.0
    moe = build(tiny_moe_config)
    aux = moe(token_ids).aux_loss
    assert aux.item() > 0
    assert aux.requires_grad                                  # it trains the routers
    # with near-uniform routers the balance loss is about 1 per layer, weighted by aux_loss_coef
    per_layer = tiny_moe_config.aux_loss_coef * 1.0 + tiny_moe_config.z_loss_coef * math.log(4) ** 2
    assert aux.item() == pytest.approx(tiny_moe_config.n_layers * per_layer, rel=0.3)


def test_blocks_hold_the_feed_forward_the_config_asks_for(tiny_moe_config):
    cfg = tiny_moe_config.replace(n_layers=3, first_k_dense=1)
    model = build(cfg)
    assert [block.is_moe for block in model.layers] == [False, True, True]
    assert len(model.moe_layers) == cfg.num_moe_layers == 2
    assert all(len(layer.experts) == 4 for layer in model.moe_layers)
    assert build(cfg.replace(num_experts=0, first_k_dense=0)).moe_layers == []


def test_tied_embeddings_share_one_tensor(tiny_dense_config, token_ids):
    tied = build(tiny_dense_config.replace(tie_embeddings=True))
    assert tied.lm_head.weight is tied.tok_embeddings.weight
    untied = build(tiny_dense_config)
    assert untied.lm_head.weight.data_ptr() != untied.tok_embeddings.weight.data_ptr()
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(untied) - count(tied) == 64 * 32             # one vocab x d_model matrix fewer
    tied(token_ids, token_ids).loss.backward()                # both uses add to the one gradient
    assert tied.tok_embeddings.weight.grad is tied.lm_head.weight.grad


def test_no_biases_and_llama_weight_names(tiny_moe_config):
    names = dict(build(tiny_moe_config).named_parameters())
    assert not [name for name in names if name.endswith("bias")]
    for suffix in ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
                   "ffn.router.weight", "ffn.experts.3.w1.weight", "ffn.experts.3.w2.weight",
                   "ffn.experts.3.w3.weight", "attention_norm.weight", "ffn_norm.weight"):
        assert f"layers.1.{suffix}" in names


# ----------------------------------------------------------------- blocks
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rms_norm_is_the_formula_bit_for_bit(dtype):
    """RMSNorm (one fused call) = x * rsqrt(mean(x^2) + eps) * g, computed in float32 (or float64)
    and cast back before the gain for half precision, as in Llama -- exactly."""
    from moe_helpers.layers import RMSNorm

    norm = RMSNorm(24, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (3 * torch.randn(2, 5, 24)).to(dtype)
    wide = x.to(torch.promote_types(dtype, torch.float32))
    expected = norm.weight * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    assert norm(x).dtype == dtype
    assert torch.equal(norm(x), expected)


def test_dropout_acts_while_training_only():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=16)
    with_dropout, without = build(cfg.replace(dropout=0.5)), build(cfg)
    idx = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        train_a, train_b = with_dropout.train()(idx).logits, with_dropout(idx).logits
        assert (train_a - train_b).abs().max() > 1e-3                      # a new mask every pass
        assert torch.equal(with_dropout.eval()(idx).logits, without.eval()(idx).logits)


# ----------------------------------------------------------------- generate
def test_generate_returns_valid_ids_of_the_right_length(any_config):
    model = build(any_config).train()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    generator = torch.Generator().manual_seed(0)
    out = model.generate(prompt, max_new_tokens=9, generator=generator)
    assert out.shape == (2, 12) and out.dtype == torch.long
    assert torch.equal(out[:, :3], prompt)
    assert out.min() >= 0 and out.max() < any_config.vocab_size
    assert model.training                                     # generate restores the mode it found


def test_generated_ids_are_ordinary_tensors(tiny_moe_config):
    """generate runs the model in inference mode, but what it returns works like any tensor:
    in place, and in a computation with gradients."""
    model = build(tiny_moe_config)
    prompt = torch.tensor([[1, 2, 3]])
    for use_cache in (True, False):
        out = model.generate(prompt, 5, temperature=0, use_cache=use_cache)
        assert not out.is_inference()
        model(out).logits.sum().backward()                   # gradients through the embedding of the ids
        out += 0
    assert model.tok_embeddings.weight.grad is not None
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_greedy_generation_is_deterministic_and_takes_the_argmax(tiny_dense_config):
    model = build(tiny_dense_config)
    prompt = torch.tensor([[1, 2, 3]])
    first = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert torch.equal(first, model.generate(prompt, max_new_tokens=6, temperature=0))
    by_hand = prompt
    for _ in range(6):
        next_token = model(by_hand).logits[:, -1].argmax(dim=-1, keepdim=True)
        by_hand = torch.cat([by_hand, next_token], dim=1)
    assert torch.equal(first, by_hand)
    top_1 = model.generate(prompt, max_new_tokens=6, temperature=1.0, top_k=1,
                           generator=torch.Generator().manual_seed(5))
    assert torch.equal(top_1, first)                          # top_k=1 sampling is greedy


def test_top_k_sampling_only_picks_among_the_k_best(tiny_dense_config):
    model = build(tiny_dense_config)
    prompt = torch.tensor([[7, 8]]).repeat(16, 1)
    out = model.generate(prompt, max_new_tokens=5, temperature=2.0, top_k=3,
                         generator=torch.Generator().manual_seed(1))
    logits = model(out[:, :-1]).logits                          # (16, 6, V): position t predicts t + 1
    for position in range(1, out.shape[1] - 1):
        best_three = logits[:, position].topk(3, dim=-1).indices   # (16, 3)
        assert (best_three == out[:, position + 1, None]).any(dim=-1).all()
    assert len(set(out[:, 2].tolist())) > 1                   # at temperature 2 the rows differ


def test_sampling_is_reproducible_with_a_seeded_generator(tiny_dense_config):
    model = build(tiny_dense_config)
    prompt = torch.tensor([[1, 2, 3]]).repeat(4, 1)
    sample = lambda seed: model.generate(prompt, 8, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))


def test_generate_without_cache_crops_the_context_to_max_seq_len(tiny_dense_config):
    model = build(tiny_dense_config)
    prompt = torch.arange(tiny_dense_config.max_seq_len).remainder(64)[None]   # (1, 16): full context
    out = model.generate(prompt, max_new_tokens=4, temperature=0, use_cache=False)
    assert out.shape == (1, tiny_dense_config.max_seq_len + 4)
    last_window = out[:, -1 - tiny_dense_config.max_seq_len:-1]
    assert out[0, -1] == model(last_window).logits[0, -1].argmax()


@pytest.mark.parametrize("kwargs, field", [(dict(max_new_tokens=-1), "max_new_tokens"),
                                           (dict(max_new_tokens=2, temperature=-0.5), "temperature")])
def test_generate_rejects_bad_arguments(tiny_dense_config, kwargs, field):
    with pytest.raises(ValueError, match=field):
        build(tiny_dense_config).generate(torch.tensor([[1]]), **kwargs)


# ---------------------------------------------- reference implementation
# Written independently of moe_helpers.layers, from the papers, in float64.

def reference_rms_norm(x, gain, eps):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * g."""
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * gain


def reference_rope(x, theta):
    """Rotate-half RoPE (Su et al. 2021, as laid out in Llama): for i < hd/2 the pair
    (x_i, x_{i + hd/2}) at position m turns by the angle m * theta^(-2i / hd)."""
    _, _, T, head_dim = x.shape
    half = head_dim // 2
    out = torch.empty_like(x)
    for m in range(T):
        for i in range(half):
            angle = m * theta ** (-2.0 * i / head_dim)
            c, s = math.cos(angle), math.sin(angle)
            first, second = x[:, :, m, i], x[:, :, m, i + half]
            out[:, :, m, i] = first * c - second * s
            out[:, :, m, i + half] = first * s + second * c
    return out


def reference_attention(x, layer, cfg, window: int | None = None):
    """Causal grouped-query attention with an explicit mask and softmax; with ``window``,
    each query sees only the ``window`` latest positions (itself included)."""
    B, T, _ = x.shape
    hd, H, Hkv = cfg.head_size, cfg.n_heads, cfg.kv_heads
    q = (x @ layer.wq.weight.T).view(B, T, H, hd).transpose(1, 2)
    k = (x @ layer.wk.weight.T).view(B, T, Hkv, hd).transpose(1, 2)
    v = (x @ layer.wv.weight.T).view(B, T, Hkv, hd).transpose(1, 2)
    q, k = reference_rope(q, cfg.rope_theta), reference_rope(k, cfg.rope_theta)
    heads = []
    for h in range(H):
        kv = h // (H // Hkv)                                  # the key/value head of query head h
        scores = q[:, h] @ k[:, kv].transpose(-1, -2) / math.sqrt(hd)
        hidden = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)          # the future
        if window is not None:
            hidden |= torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-window)  # too far back
        weights = scores.masked_fill(hidden, float("-inf")).softmax(dim=-1)
        heads.append(weights @ v[:, kv])
    return torch.cat(heads, dim=-1) @ layer.wo.weight.T


def reference_swiglu(x, ffn):
    """SwiGLU (Shazeer 2020): W2 (SiLU(W1 x) * W3 x), SiLU(a) = a * sigmoid(a)."""
    gate = x @ ffn.w1.weight.T
    return (gate * torch.sigmoid(gate) * (x @ ffn.w3.weight.T)) @ ffn.w2.weight.T


def reference_moe(x, moe, top_k):
    """Softmax over all experts, top-k, weights renormalised to sum to 1 (Mixtral)."""
    tokens = x.reshape(-1, x.shape[-1])
    probs = (tokens @ moe.router.weight.T).softmax(dim=-1)
    out = torch.zeros_like(tokens)
    for n in range(tokens.shape[0]):
        chosen = probs[n].argsort(descending=True)[:top_k]
        weights = probs[n, chosen] / probs[n, chosen].sum()
        for weight, expert in zip(weights, chosen.tolist()):
            out[n] += weight * reference_swiglu(tokens[n], moe.experts[expert])
    return out.view_as(x)


def reference_forward(model, idx, window: int | None = None):
    cfg = model.cfg
    x = model.tok_embeddings.weight[idx]
    for block in model.layers:
        x = x + reference_attention(reference_rms_norm(x, block.attention_norm.weight, cfg.norm_eps),
                                    block.attention, cfg, window)
        normed = reference_rms_norm(x, block.ffn_norm.weight, cfg.norm_eps)
        x = x + (reference_moe(normed, block.ffn, cfg.top_k) if block.is_moe else reference_swiglu(normed, block.ffn))
    return reference_rms_norm(x, model.norm.weight, cfg.norm_eps) @ model.lm_head.weight.T


@pytest.mark.parametrize("kind", ["dense", "gqa", "moe"])
def test_gpt_matches_an_independent_reference_in_float64(kind, tiny_dense_config, tiny_gqa_config,
                                                         tiny_moe_config, token_ids):
    cfg = {"dense": tiny_dense_config, "gqa": tiny_gqa_config, "moe": tiny_moe_config}[kind]
    model = build(cfg).double()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):                  # gains that are not all 1, so they count
                param.uniform_(0.5, 1.5)
            else:                                             # weights of a trained model's size: attention is
                param.normal_(0.0, 0.3)                       # far from uniform, so position (RoPE) matters
        logits = model(token_ids).logits
        expected = reference_forward(model, token_ids)
    assert logits.dtype == torch.float64
    assert expected.abs().max() > 1.0                         # the comparison is not between near-zeros
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ KV cache
def _random_weights(model: GPT, scale: float = 0.3) -> GPT:
    """Weights of a trained model's size, so that attention is far from uniform."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, scale)
    return model


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_cached_logits_equal_the_full_forward_pass(any_config, dtype, tolerance):
    """Prefill 5 tokens, then 3, then one at a time: every position's logits as in one full pass."""
    model = build(any_config).to(dtype)
    idx = torch.randint(0, any_config.vocab_size, (2, any_config.max_seq_len),
                        generator=torch.Generator().manual_seed(0))
    cache = model.new_kv_cache()
    with torch.no_grad():
        full = model(idx).logits                                             # (2, T, V)
        pieces = [model(idx[:, :5], cache=cache).logits, model(idx[:, 5:8], cache=cache).logits]
        pieces += [model(idx[:, t:t + 1], cache=cache).logits for t in range(8, idx.shape[1])]
    assert cache.position == idx.shape[1]
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= tolerance


def test_greedy_tokens_are_identical_with_and_without_the_cache(any_config):
    model = _random_weights(build(any_config))
    prompt = torch.randint(0, any_config.vocab_size, (3, 4), generator=torch.Generator().manual_seed(1))
    new_tokens = any_config.max_seq_len - prompt.shape[1]                   # up to a full window
    cached = model.generate(prompt, new_tokens, temperature=0)
    uncached = model.generate(prompt, new_tokens, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, 4:].tolist())) > 2                              # not one token repeated


def test_past_max_seq_len_the_cache_is_a_sliding_window(tiny_gqa_config):
    """Beyond max_seq_len every query sees the max_seq_len latest positions, each key computed
    when its token was new: the same as sliding-window attention over the whole sequence."""
    cfg = tiny_gqa_config
    model = _random_weights(build(cfg).double())
    total = 3 * cfg.max_seq_len + 5
    idx = torch.randint(0, cfg.vocab_size, (2, total), generator=torch.Generator().manual_seed(2))
    cache = model.new_kv_cache()
    with torch.no_grad():
        pieces = [model(idx[:, :cfg.max_seq_len], cache=cache).logits]
        pieces += [model(idx[:, t:t + 1], cache=cache).logits for t in range(cfg.max_seq_len, total)]
        expected = reference_forward(model, idx, window=cfg.max_seq_len)
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, rtol=0, atol=1e-9)
    assert cache.layers[0].keys.shape == (2, cfg.kv_heads, cfg.max_seq_len, cfg.head_size)
    # and it is not what re-encoding the cropped window gives
    cropped = model(idx[:, total - cfg.max_seq_len:]).logits[:, -1]
    assert (cropped - expected[:, -1]).abs().max() > 1e-3


def test_the_cache_holds_n_kv_heads_and_its_bytes_match_the_formula(tiny_gqa_config):
    from moe_helpers.accounting import kv_cache_bytes

    cfg = tiny_gqa_config
    model = build(cfg)
    cache = model.new_kv_cache()
    with torch.no_grad():
        model(torch.zeros(3, 10, dtype=torch.long), cache=cache)
    assert cache.layers[1].keys.shape == (3, cfg.kv_heads, 10, cfg.head_size)
    assert cache.nbytes == kv_cache_bytes(cfg, batch_size=3, seq_len=10, dtype=torch.float32)
    assert cache.nbytes == 2 * cfg.n_layers * 3 * cfg.kv_heads * cfg.head_size * 10 * 4
    # past the window the cache stops growing
    assert kv_cache_bytes(cfg, 1, 10 * cfg.max_seq_len) == kv_cache_bytes(cfg, 1, cfg.max_seq_len)


def test_generation_past_max_seq_len_runs_with_and_without_the_cache(tiny_moe_config):
    model = _random_weights(build(tiny_moe_config))
    prompt = torch.tensor([[1, 2, 3]])
    steps = 2 * tiny_moe_config.max_seq_len
    cached = model.generate(prompt, steps, temperature=0)
    uncached = model.generate(prompt, steps, temperature=0, use_cache=False)
    assert cached.shape == uncached.shape == (1, 3 + steps)
    window = tiny_moe_config.max_seq_len
    assert torch.equal(cached[:, :window + 1], uncached[:, :window + 1])    # identical while it fits


def test_a_bad_cache_window_is_refused():
    from moe_helpers.layers import LayerKVCache

    with pytest.raises(ValueError, match="window"):
        LayerKVCache(0)


def test_without_routing_the_logits_are_the_same_and_no_statistics_are_built(tiny_moe_config, token_ids):
    model = build(tiny_moe_config)
    full, light = model(token_ids), model(token_ids, with_routing=False)
    torch.testing.assert_close(light.logits, full.logits, rtol=0, atol=0)
    assert light.routing == [] and light.aux_loss.item() == 0.0 and len(full.routing) == tiny_moe_config.n_layers
