"""Reference solutions to the exercises of notebook 01 (the dense model).

Try the exercises first: ``check("rms_norm", rms_norm)`` in the notebook tells you
whether your version is right and, if not, what to look at.
"""

import math

import torch


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * gain, over the last dimension (Zhang & Sennrich 2019, eq. 4)."""
    mean_square = x.pow(2).mean(dim=-1, keepdim=True)           # (..., 1)
    return x / torch.sqrt(mean_square + eps) * gain             # (..., d)


def causal_gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention with grouped-query heads.

    q: (B, H, T, hd); k, v: (B, H_kv, T, hd) -> (B, H, T, hd).  Query head h reads
    key/value head h // (H / H_kv)."""
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    T, head_dim = q.shape[-2], q.shape[-1]
    group = n_heads // n_kv_heads
    k = k.repeat_interleave(group, dim=1)                       # (B, H, T, hd): heads 0,0,1,1,...
    v = v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)      # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)   # s > t
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return weights @ v                                          # (B, H, T, hd)


def block_parameter_count(cfg) -> int:
    """Parameters of one dense block: four attention matrices, three SwiGLU matrices, two norm gains."""
    d, hd = cfg.d_model, cfg.head_size
    wq = d * cfg.n_heads * hd
    wk = wv = d * cfg.kv_heads * hd                             # grouped-query attention: fewer k/v heads
    wo = cfg.n_heads * hd * d
    swiglu = 3 * d * cfg.d_ff                                   # w1, w3: d x d_ff; w2: d_ff x d
    norms = 2 * d                                               # attention_norm and ffn_norm
    return wq + wk + wv + wo + swiglu + norms
