"""The building blocks of the decoder: RMSNorm, rotary embeddings, attention
and the SwiGLU feed-forward network.

Conventions follow Hugging Face's Llama / Mixtral code (RMSNorm computed in
float32, rotary embeddings in the "rotate-half" layout, no biases), so the
weights of a trained model map one to one onto ``LlamaForCausalLM`` /
``MixtralForCausalLM``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or kept in float64 (half precision is too coarse for norms and softmax)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019, eq. 4).

        y = x / sqrt(mean(x^2) + eps) * g

    Computed in float32 (or float64) and cast back, as in Llama.  No mean subtraction, no bias.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))             # g, (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm is, bit for bit, the formula written out,
        #     x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g,
        # in one call instead of six (which counts when generating token by token).
        if x.dtype == self.weight.dtype and x.dtype in (torch.float32, torch.float64):
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        normalized = F.rms_norm(upcast(x), self.weight.shape, eps=self.eps)   # half precision: in float32,
        return self.weight * normalized.to(x.dtype)                            # cast back, then the gain


def rope_frequencies(head_dim: int, max_seq_len: int, theta: float = 10000.0,
                     dtype: torch.dtype = torch.float32, start: int = 0):
    """cos and sin tables of rotary position embeddings (Su et al. 2021, eq. 15).

    Pair ``(i, i + head_dim/2)`` of a head rotates by angle ``pos * theta^(-2i/head_dim)``.
    Returns two CPU tensors of shape ``(max_seq_len, head_dim)`` in ``dtype``, for
    the positions ``start, start + 1, ...`` (``start`` > 0: tokens that follow a cache).
    The angles are computed in float64 with NumPy on the host, so no float64
    tensor ever exists on the model's device (Apple's MPS has no float64).
    """
    inverse_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)   # (hd/2,)
    positions = np.arange(start, start + max_seq_len, dtype=np.float64)                 # (T,)
    angles = np.outer(positions, inverse_freq)                                          # (T, hd/2)
    angles = np.concatenate([angles, angles], axis=-1)                                  # (T, hd)
    host_dtype = np.float64 if dtype == torch.float64 else np.float32                   # rounded on the host
    return (torch.from_numpy(np.cos(angles).astype(host_dtype)).to(dtype),
            torch.from_numpy(np.sin(angles).astype(host_dtype)).to(dtype))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dimension (the Llama layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` of shape (B, H, T, hd) by their position."""
    return x * cos + rotate_half(x) * sin


class LayerKVCache:
    """The keys and values one attention layer has computed so far (a KV cache).

    Generating token t+1 needs the keys and values of tokens 1..t, which do not
    change once computed (causal attention), so they are kept instead of being
    recomputed for every new token.  Keys are stored *after* rotation (RoPE at
    their absolute position) and before grouped-query sharing, so the cache holds
    ``n_kv_heads`` heads, not ``n_heads``: (B, H_kv, L, hd) for keys and values.

    ``window``: the most positions kept (the model's ``max_seq_len``).  Past it,
    the oldest position is dropped at each step (a sliding window): every query
    still sees the ``window`` latest keys, each computed when its token was new.
    """

    def __init__(self, window: int):
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        self.window = window
        self.keys: torch.Tensor | None = None      # (B, H_kv, L, hd), L <= window
        self.values: torch.Tensor | None = None
        self.seen = 0                               # tokens appended so far (the next token's position)

    def append(self, keys: torch.Tensor, values: torch.Tensor):
        """Add the new tokens' keys and values (B, H_kv, T, hd); return everything the new
        queries may attend to: the kept cache plus the new tokens, (B, H_kv, L + T, hd) each.
        The last of those keys sits at position ``seen - 1``.  Afterwards ``keys`` and
        ``values`` hold the last ``window`` positions: all that a next token may see."""
        self.seen += keys.shape[2]
        if self.keys is not None:
            keys, values = torch.cat([self.keys, keys], dim=2), torch.cat([self.values, values], dim=2)
        self.keys, self.values = keys, values
        if keys.shape[2] > self.window:                          # slide: drop the oldest positions
            self.keys, self.values = keys[:, :, -self.window:], values[:, :, -self.window:]
        return keys, values

    def attention_mask(self, num_queries: int, num_keys: int, device) -> torch.Tensor | None:
        """Which of the ``num_keys`` keys returned by ``append`` each of the last ``num_queries``
        tokens may see, (T, L) booleans: not the future, nothing ``window`` or more positions
        back.  None when plain causal attention already says it (a fresh prompt)."""
        if num_keys == num_queries and num_queries <= self.window:
            return None
        key_positions = torch.arange(self.seen - num_keys, self.seen, device=device)        # (L,)
        query_positions = key_positions[-num_queries:, None]                                 # (T, 1)
        return (key_positions <= query_positions) & (key_positions > query_positions - self.window)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        if self.keys is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


class KVCache:
    """One ``LayerKVCache`` per block of a model; ``position`` is the next token's position."""

    def __init__(self, n_layers: int, window: int):
        self.layers = [LayerKVCache(window) for _ in range(n_layers)]

    @property
    def position(self) -> int:
        return self.layers[0].seen

    @property
    def nbytes(self) -> int:
        """Bytes held by every layer's keys and values."""
        return sum(layer.nbytes for layer in self.layers)


class Attention(nn.Module):
    """Causal multi-head self-attention with grouped-query attention and RoPE.

    ``n_heads`` query heads share ``n_kv_heads`` key/value heads (GQA, Ainslie
    et al. 2023): query head ``h`` reads key/value head ``h // (n_heads / n_kv_heads)``.
    With a ``LayerKVCache`` the input holds only the *new* tokens; their positions
    continue from the cache and they attend to the cached keys as well.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 max_seq_len: int, rope_theta: float = 10000.0, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.dropout, self.rope_theta = dropout, rope_theta
        self.wq = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, d_model, bias=False)
        cos, sin = rope_frequencies(head_dim, max_seq_len, rope_theta)
        device = torch.empty(0).device                   # the device the model is being built on
        self.register_buffer("rope_cos", cos.to(device), persistent=False)       # (T_max, hd)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def rope_tables(self, T: int, x: torch.Tensor, start: int = 0):
        """cos and sin of the ``T`` positions from ``start`` in ``x``'s dtype.

        The buffers are float32 (MPS has no float64); for float64 inputs, and for
        positions past the buffers (a sliding KV cache), the tables are computed
        on the host instead, so float64 checks are exact."""
        if x.dtype == torch.float64 or start + T > self.rope_cos.shape[0]:
            cos, sin = rope_frequencies(self.head_dim, T, self.rope_theta, dtype=x.dtype, start=start)
            return cos.to(x.device), sin.to(x.device)
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        if cos.dtype != x.dtype:                                  # half precision
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return cos, sin

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape                                                        # (B, T, d_model)
        start = 0 if cache is None else cache.seen                               # position of x's first token
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)    # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        cos, sin = self.rope_tables(T, x, start)                                 # (T, hd) each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            k, v = cache.append(k, v)                                            # (B, Hkv, L, hd) each
            if T == 1:                                      # one new token: it sees what the cache keeps
                k, v, causal = cache.keys, cache.values, False
            else:
                mask = cache.attention_mask(T, k.shape[2], x.device)             # (T, L) or None
                causal = mask is None
        group = self.n_heads // self.n_kv_heads
        if group > 1:
            k = k.repeat_interleave(group, dim=1)                                # (B, H, L, hd)
            v = v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )                                                                        # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)    # (B, T, H*hd)
        return self.wo(out)                                                      # (B, T, d_model)


class FeedForward(nn.Module):
    """SwiGLU feed-forward network (Shazeer 2020, eq. 6), as in Llama:

        FFN(x) = W2 (SiLU(W1 x) * W3 x)

    ``w1`` is the gate, ``w3`` the up projection, ``w2`` the down projection.
    Every expert of an MoE layer is one of these.
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)   # gate
        self.w3 = nn.Linear(d_model, d_ff, bias=False)   # up
        self.w2 = nn.Linear(d_ff, d_model, bias=False)   # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.w1(x)) * self.w3(x)          # (..., d_ff)
        return self.w2(hidden)                            # (..., d_model)
