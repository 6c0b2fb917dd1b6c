"""Reference solutions to the exercises of notebook 07 (inference and export).

Try the exercises first: ``check("attend_with_cache", attend_with_cache)`` in the notebook
tells you whether your version is right and, if not, what to look at.
"""

import math

import torch

from moe_helpers.layers import apply_rope


def kv_cache_bytes_by_hand(cfg, batch_size, seq_len, bytes_per_value):
    """2 (keys and values) x layers x batch x kv heads x head_dim x kept positions x bytes."""
    positions = min(seq_len, cfg.max_seq_len)                 # the cache slides past max_seq_len
    return 2 * cfg.n_layers * batch_size * cfg.kv_heads * cfg.head_size * positions * bytes_per_value


def attend_with_cache(attention, x_new, past_keys, past_values):
    """One new token (B, 1, d_model) at position T = past_keys.shape[2], attending to the cache.

    Returns (output (B, 1, d_model), keys (B, H_kv, T+1, hd), values (B, H_kv, T+1, hd))."""
    B = x_new.shape[0]
    H, H_kv, hd = attention.n_heads, attention.n_kv_heads, attention.head_dim
    T = past_keys.shape[2]
    cos, sin = attention.rope_cos[T:T + 1], attention.rope_sin[T:T + 1]          # position T
    q = apply_rope(attention.wq(x_new).view(B, 1, H, hd).transpose(1, 2), cos, sin)      # (B, H, 1, hd)
    k = apply_rope(attention.wk(x_new).view(B, 1, H_kv, hd).transpose(1, 2), cos, sin)   # (B, H_kv, 1, hd)
    v = attention.wv(x_new).view(B, 1, H_kv, hd).transpose(1, 2)                        # values: no rotation
    keys, values = torch.cat([past_keys, k], dim=2), torch.cat([past_values, v], dim=2)  # (B, H_kv, T+1, hd)
    group = H // H_kv                                          # query heads per key/value head
    scores = q @ keys.repeat_interleave(group, dim=1).transpose(-1, -2) / math.sqrt(hd)  # (B, H, 1, T+1)
    out = scores.softmax(dim=-1) @ values.repeat_interleave(group, dim=1)               # (B, H, 1, hd)
    return attention.wo(out.transpose(1, 2).reshape(B, 1, H * hd)), keys, values


@torch.no_grad()
def greedy_generate(model, prompt, new_tokens):
    """Greedy generation with the model's KV cache: the prompt once, then one token per step."""
    cache = model.new_kv_cache()
    idx, pending = prompt, prompt[:, -model.cfg.max_seq_len:]
    for _ in range(new_tokens):
        logits = model(pending, cache=cache, with_routing=False).logits[:, -1]          # (B, vocab)
        pending = logits.argmax(dim=-1, keepdim=True)                                   # (B, 1)
        idx = torch.cat([idx, pending], dim=1)
    return idx
