# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The dense model
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/moe-course/moe-course/blob/main/notebooks/01_dense_model.ipynb)
#
# In this notebook you will:
#
# - load TinyStories (or its offline stand-in) and look at a few stories;
# - train a byte-level BPE tokenizer and see how it cuts a sentence into tokens;
# - build a Llama-style decoder piece by piece — RMSNorm, rotary position embeddings,
#   causal grouped-query attention, the SwiGLU feed-forward network, a pre-norm block,
#   the whole model — checking each piece on small numbers;
# - confirm that `moe_helpers.model.GPT` computes exactly what you built, and that it is causal;
# - train the `laptop` dense model on the CPU, plot its loss curve and let it write a story.
#
# This dense model is phase 1 of the course: notebook 04 turns it into a Mixture-of-Experts.
#
# **Run time:** about two minutes on a laptop CPU (most of it is the training cell).

# %%
# Setup: make `moe_helpers` importable. Installed (`make`, `pip install -e .`) or opened from a clone:
# nothing to do. A fresh runtime (Colab): install the course from its repository (or from the local
# folder named by $MOE_COURSE_SOURCE) and turn on the widget manager that ipywidgets 8 needs there.
COURSE_REPOSITORY = "https://github.com/moe-course/moe-course"   # set from pyproject.toml by `make colab`
import importlib, importlib.util, os, pathlib, subprocess, sys
if importlib.util.find_spec("moe_helpers") is None and (pathlib.Path.cwd().parent / "moe_helpers").is_dir():
    sys.path.insert(0, str(pathlib.Path.cwd().parent))            # a clone, opened from notebooks/
if importlib.util.find_spec("moe_helpers") is None:
    source = os.environ.get("MOE_COURSE_SOURCE") or f"git+{COURSE_REPOSITORY}"
    print(f"Installing the course from {source} ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source], check=True)
    importlib.invalidate_caches()
    try:
        from google.colab import output
        output.enable_custom_widget_manager()
    except ImportError:                                            # not on Colab
        pass
else:
    print("moe_helpers is importable: nothing to install")
import moe_helpers

# %%
import torch
import matplotlib.pyplot as plt
from moe_helpers.train import pick_device
device = pick_device()
print("device:", device)

# %% [markdown]
# ### Scale up on a GPU
#
# The default sizes run on a laptop CPU in about two minutes. On a GPU, set `SCALE_UP = True`:
# the model gets wider and deeper (d_model 384, 6 layers, grouped-query attention), reads ten
# times more stories and trains for 2000 steps on longer, larger batches.

# %%
SCALE_UP = False  # True: bigger model (384 wide, 6 layers), 10x the stories, 2000 steps; wants a GPU

# %%
import math
import time

import torch.nn as nn
import torch.nn.functional as F

from moe_helpers.config import DataBudget, preset

laptop = preset("laptop")
if SCALE_UP:
    model_cfg = laptop.model.replace(vocab_size=4096, d_model=384, n_layers=6, n_heads=6,
                                     n_kv_heads=2, d_ff=1024)
    train_cfg = laptop.train.replace(steps_phase1=2000, batch_size=32, seq_len=256,
                                     eval_every=200, log_every=100, lr_phase1=1e-3)
    budget = DataBudget(train_stories=200_000, val_stories=5_000)
else:
    model_cfg = laptop.model
    train_cfg = laptop.train.replace(steps_phase1=250)  # fits the two-minute budget on a CPU
    budget = laptop.data   # 20 k of the hub's 2.1 M stories; every notebook reads the same slice
story_limit = budget.train_stories
print(model_cfg)
print(f"training: {train_cfg.steps_phase1} steps, batch {train_cfg.batch_size} x {train_cfg.seq_len} tokens, "
      f"peak learning rate {train_cfg.lr_phase1}")

# %% [markdown]
# ## 1. The stories
#
# TinyStories (Eldan & Li 2023) is a set of short stories written with words a three-year-old
# knows. Small models learn to write fluent English on it, which makes it ideal for a course that
# trains on a laptop. `load_stories("auto")` reads it from the Hugging Face hub when the hub
# answers, and otherwise falls back within a few seconds to an offline corpus that the package
# generates. The line it prints tells you which one you got.
#
# **If it says "offline":** the offline corpus is a *generated stand-in* for TinyStories
# (`moe_helpers.data.OFFLINE_NOTICE`): stories drawn from a grammar of children's stories
# (`moe_helpers.story_grammar`) -- characters with a trait, a toy and a friend that later sentences
# refer back to, one of ten plot shapes with a problem, attempts and a result, dialogue that
# answers what was asked, over forty places. Any number of distinct stories can be drawn, the same
# on every machine. It is rich enough that a bigger model learns more from it than a small one
# (`benchmarks/offline_headroom.py` measures that), but its losses are not comparable to published
# TinyStories numbers. The cell after the next one puts its statistics next to the real data set's.

# %%
from moe_helpers.data import load_stories

stories = load_stories("auto", limit=story_limit)
corpus_chars = sum(len(story) for story in stories)
corpus_words = sum(len(story.split()) for story in stories)
print(f"{len(stories):,} stories, {corpus_chars / 1e6:.2f} M characters, {corpus_words:,} words, "
      f"{corpus_words / len(stories):.0f} words per story on average")

# %%
for story in stories[:3]:
    print(story, end="\n\n" + "-" * 80 + "\n\n")

# %% [markdown]
# How close are these stories to the real ones? The real figures come from the dataset card of
# `roneneldan/TinyStories` and from a 500-story sample of it; the paper adds that the stories were
# generated from prompts drawing on "about 1,500 basic words" a three-year-old knows (Eldan & Li
# 2023, sec. 2). On the real data the left column simply shows a second measurement of the same thing.

# %%
from moe_helpers.story_grammar import comparison_with_tinystories, corpus_statistics

comparison = comparison_with_tinystories(stories)
print(f"{'':30s} {'these stories':>20s} {'real TinyStories':>20s}   source")
for figure, ours, real, source in comparison:
    print(f"{figure:30s} {ours:>20s} {real:>20s}   {source}")

# %% [markdown]
# *What to notice:* whichever corpus you got, its stories are about as long as TinyStories' (in
# words and in bytes) and use a vocabulary of the same order.

# %% [markdown]
# ## 2. The tokenizer
#
# A language model reads integers, not letters. A **byte-level BPE** tokenizer (Sennrich et al.
# 2016, as in GPT-2) starts from the 256 byte values and repeatedly merges the most frequent
# adjacent pair into a new token until the vocabulary is full. Frequent words become one token;
# rare words are spelled with several. We train it on our own stories with the `laptop`
# preset's vocabulary size, on at most `budget.tokenizer_stories` (50 k) of them whatever the
# corpus size: the merges stop changing long before that. It is cached on disk, so the second
# run is instant.

# %%
from moe_helpers.data import train_tokenizer

started = time.perf_counter()
tok = train_tokenizer(stories[: budget.tokenizer_stories], vocab_size=model_cfg.vocab_size)   # a bounded sample
print(f"vocabulary: {tok.vocab_size} tokens ({time.perf_counter() - started:.1f} s), "
      f"<|endoftext|> has id {tok.eot_id}")

# %%
sentence = "Once upon a time, a little girl named Lily found a shiny red ball in the park."
ids = tok.encode(sentence)
print(len(sentence), "characters ->", len(ids), "tokens")
print(tok.tokens(sentence))
print(ids)

# %% [markdown]
# Common words are single tokens, and the space before a word belongs to the word (`' upon'`).
# Rarer words are cut into pieces. Decoding the ids gives back exactly the text we started from:

# %%
round_trip = tok.decode(ids)
print(round_trip)
print("identical to the input:", round_trip == sentence)

rare = "The xylophone-playing hippopotamus said: 'Zzz... 42!'"
rare_round_trip = tok.decode(tok.encode(rare))     # byte level: any text survives the round trip
print(tok.tokens(rare))
print("identical to the input:", rare_round_trip == rare)

sample = stories[:200]
chars_per_token = sum(map(len, sample)) / sum(len(tok.encode(story)) for story in sample)
print(f"on the stories, one token covers {chars_per_token:.2f} characters on average")

# %% [markdown]
# *What to notice:* even a made-up word survives the round trip, spelled in small pieces (in the
# worst case single bytes). On ordinary story text one token covers well over two characters: a
# tokenizer with one token per byte would give exactly 1.0.

# %% [markdown]
# ## 3. The decoder, piece by piece
#
# The model is a Llama-style decoder-only transformer. Its blocks are **pre-norm** residual blocks:
#
# $$h = x + \mathrm{Attention}(\mathrm{RMSNorm}(x)), \qquad y = h + \mathrm{FFN}(\mathrm{RMSNorm}(h))$$
#
# We build each piece small enough to read in one cell, check it on numbers we can follow by
# hand, and then check it against the module the rest of the course imports
# (`moe_helpers.layers`, `moe_helpers.model`). The attribute names match those modules, so the
# weights of one can be loaded into the other.

# %%
from moe_helpers import figures

figures.decoder_block()   # the block this section builds, piece by piece


# %% [markdown]
# ### 3.1 RMSNorm
#
# Root-mean-square normalisation (Zhang & Sennrich 2019, eq. 4) rescales each vector to unit RMS
# and multiplies by a learned gain $g$ — no mean subtraction, no bias:
#
# $$y = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}} \odot g$$

# %%
torch.manual_seed(0)   # the random test inputs below are reproducible


class MyRMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g   (Zhang & Sennrich 2019, eq. 4), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))                       # g, (dim,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        rms = torch.sqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return self.weight * (x32 / rms).to(x.dtype)                     # (..., dim)


x = torch.tensor([[3.0, 4.0]])            # mean of squares = (9 + 16) / 2 = 12.5, rms = 3.5355
normed_3_4 = MyRMSNorm(2)(x).detach()
normed_3_4_by_hand = torch.tensor([[3.0, 4.0]]) / math.sqrt(12.5 + 1e-5)
print("RMSNorm([3, 4]) =", normed_3_4, "  by hand: [3, 4] / 3.5355 =", normed_3_4_by_hand)
print("RMS of the output:", normed_3_4.pow(2).mean().sqrt().item())

# %%
from moe_helpers import layers
from moe_helpers.checks import show_match

x = torch.randn(2, 5, 16)                                                # (B, T, d_model)
mine, theirs = MyRMSNorm(16), layers.RMSNorm(16)
with torch.no_grad():
    mine.weight.uniform_(0.5, 1.5)
theirs.load_state_dict(mine.state_dict())
show_match(mine(x), theirs(x), "MyRMSNorm == moe_helpers.layers.RMSNorm")

# %% [markdown]
# ### 3.2 Rotary position embeddings (RoPE)
#
# Attention by itself does not know the order of the tokens. RoPE (Su et al. 2021, eq. 15)
# rotates each query and key vector by an angle proportional to its position, so the dot
# product $q_m \cdot k_n$ depends only on the distance $m - n$. A head's $d$ dimensions form
# $d/2$ pairs; pair $i$ rotates by angle $\text{pos} \cdot \theta^{-2i/d}$ (fast for the first
# pairs, slow for the last). In the **rotate-half** layout used by Llama, pair $i$ is
# dimensions $(i,\ i + d/2)$, and the rotation is
#
# $$\mathrm{RoPE}(x) = x \odot \cos + \mathrm{rotate\_half}(x) \odot \sin, \qquad
#   \mathrm{rotate\_half}([x_1, x_2]) = [-x_2, x_1]$$

# %%
def my_rope_tables(head_dim: int, seq_len: int, theta: float = 10000.0):
    """cos and sin of the RoPE angles pos * theta^(-2i/head_dim) (Su et al. 2021, eq. 15).

    Computed in float64 so that large positions keep their precision; returns (T, head_dim) x 2.
    """
    inverse_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    positions = torch.arange(seq_len, dtype=torch.float64)                                 # (T,)
    angles = torch.outer(positions, inverse_freq)                                          # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)                                           # (T, hd)
    return angles.cos().float(), angles.sin().float()


def my_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def my_apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, head_dim) by its position: x * cos + rotate_half(x) * sin."""
    return x * cos + my_rotate_half(x) * sin


# One pair (head_dim = 2): the vector (1, 0) at position p turns by p radians.
cos, sin = my_rope_tables(head_dim=2, seq_len=4)
rotated = my_apply_rope(torch.tensor([1.0, 0.0]).expand(4, 2), cos, sin)  # (T=4, 2)
rotated_by_hand = torch.stack([torch.cos(torch.arange(4.0)), torch.sin(torch.arange(4.0))], dim=-1)
print("(1, 0) at positions 0..3 ->\n", rotated)
print("(cos p, sin p) for p = 0..3:\n", rotated_by_hand)

# %% [markdown]
# Two properties make RoPE work: a rotation keeps the length of a vector, and the score between
# a query at position $m$ and a key at position $n$ depends only on $m - n$.

# %%
def rope_score(q: torch.Tensor, k: torch.Tensor, query_pos: int, key_pos: int) -> float:
    """q . k after rotating q (head_dim,) to query_pos and k (head_dim,) to key_pos."""
    cos, sin = my_rope_tables(q.shape[-1], max(query_pos, key_pos) + 1)     # (T, hd) x 2
    q_rotated = my_apply_rope(q, cos[query_pos], sin[query_pos])
    k_rotated = my_apply_rope(k, cos[key_pos], sin[key_pos])
    return (q_rotated @ k_rotated).item()


head_dim = 16
cos, sin = my_rope_tables(head_dim, seq_len=64)
q, k = torch.randn(head_dim), torch.randn(head_dim)
q_at_40 = my_apply_rope(q, cos[40], sin[40])
q_norms = (q.norm().item(), q_at_40.norm().item())                      # before and after the rotation
scores_at_distance_2 = (rope_score(q, k, 5, 3), rope_score(q, k, 45, 43))
print(f"|q| = {q_norms[0]:.4f}, |RoPE(q) at position 40| = {q_norms[1]:.4f}")
print(f"score(5, 3) = {scores_at_distance_2[0]:.4f}   score(45, 43) = {scores_at_distance_2[1]:.4f}"
      "   (same distance 2)")
print(f"score(5, 0) = {rope_score(q, k, 5, 0):.4f}   (distance 5)")

# %%
their_cos, their_sin = layers.rope_frequencies(head_dim, 64)
x = torch.randn(2, 4, 64, head_dim)                                      # (B, H, T, hd)
show_match((cos, sin, my_apply_rope(x, cos, sin)), (their_cos, their_sin, layers.apply_rope(x, their_cos, their_sin)),
           "my RoPE tables and rotation == moe_helpers.layers.rope_frequencies and apply_rope")

# %% [markdown]
# ### 3.3 Causal attention with grouped-query heads
#
# Each head scores every pair of positions, hides the future, and mixes the values
# (Vaswani et al. 2017, eq. 1):
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_{head}}} + M\right) V,
#   \qquad M_{ts} = -\infty \text{ for } s > t$$
#
# The mask $M$ makes the model **causal**: position $t$ only sees positions $\le t$, so it
# can be trained to predict token $t+1$ at every position at once. **Grouped-query attention**
# (Ainslie et al. 2023) lets several query heads share one key/value head: with `n_heads = 4`
# and `n_kv_heads = 2`, query heads 0 and 1 read key/value head 0, heads 2 and 3 read head 1.
# It shrinks the key/value cache at generation time; with `n_kv_heads = n_heads` it is ordinary
# multi-head attention.

# %%
figures.grouped_query_attention(n_heads=4, n_kv_heads=2)   # the example below: 4 query heads share 2 key/value heads


# %%
def causal_attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head) + causal mask), q and k: (B, H, T, hd) -> (B, H, T, T)."""
    T, head_dim = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)                    # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)  # s > t
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)          # (B, H, T, T)


causal_weights = causal_attention_weights(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8))[0, 0]  # (T, T)
print("attention weights of one head (row t = query position):\n", causal_weights.numpy().round(3))
print("row sums:", causal_weights.sum(-1).numpy().round(6))

# %% [markdown]
# *What to notice:* everything above the diagonal is 0 (no query looks at a later position), each
# row sums to 1, and the first token, which has nothing before it, puts all its weight on itself.


# %%
class MyAttention(nn.Module):
    """Causal self-attention with RoPE and grouped-query heads (Vaswani et al. 2017, eq. 1;
    Su et al. 2021; Ainslie et al. 2023). Query head h reads key/value head h // (H / H_kv)."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 max_seq_len: int, rope_theta: float = 10000.0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.wq = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, d_model, bias=False)
        cos, sin = my_rope_tables(head_dim, max_seq_len, rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)                # (T_max, hd)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape                                                      # (B, T, d_model)
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, hd)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]                        # (T, hd)
        q, k = my_apply_rope(q, cos, sin), my_apply_rope(k, cos, sin)
        group = self.n_heads // self.n_kv_heads                                # query heads per kv head
        k = k.repeat_interleave(group, dim=1)                                  # (B, H, T, hd)
        v = v.repeat_interleave(group, dim=1)                                  # (B, H, T, hd)
        out = causal_attention_weights(q, k) @ v                               # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*hd)
        return self.wo(out)                                                    # (B, T, d_model)


attention = MyAttention(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)
print({name: tuple(p.shape) for name, p in attention.named_parameters()})
x = torch.randn(2, 10, 32)                                               # (B, T, d_model)
print("output shape:", tuple(attention(x).shape))   # wk and wv: 2 kv heads, half the size of wq

# %%
theirs = layers.Attention(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=16)
theirs.load_state_dict(attention.state_dict())
show_match(attention(x), theirs(x), "MyAttention == moe_helpers.layers.Attention")   # theirs: F.scaled_dot_product_attention

# %% [markdown]
# ### 3.4 The SwiGLU feed-forward network
#
# After attention has mixed information *between* positions, the feed-forward network
# transforms each position on its own. Llama uses SwiGLU (Shazeer 2020, eq. 6): a gate and an
# up projection, multiplied element-wise, then a down projection:
#
# $$\mathrm{FFN}(x) = W_2\big(\mathrm{SiLU}(W_1 x) \odot W_3 x\big), \qquad \mathrm{SiLU}(z) = z\,\sigma(z)$$
#
# This network is what the Mixture-of-Experts replaces: in notebook 02 each *expert* is one of these.

# %%
def my_silu(z: torch.Tensor) -> torch.Tensor:
    """SiLU(z) = z * sigmoid(z) (Hendrycks & Gimpel 2016; Elfwing et al. 2018)."""
    return z * torch.sigmoid(z)


z = torch.tensor([-6.0, -1.0, 0.0, 1.0, 6.0])
print("SiLU", z.tolist(), "->", [round(v, 4) for v in my_silu(z).tolist()])
silu_at_0, silu_at_minus_20 = my_silu(torch.tensor(0.0)).item(), my_silu(torch.tensor(-20.0)).item()
print(f"SiLU(0) = {silu_at_0}, SiLU(-20) = {silu_at_minus_20:.1e}: large negative inputs are switched off")
show_match(my_silu(z), F.silu(z), "my_silu == torch.nn.functional.silu")


class MySwiGLU(nn.Module):
    """FFN(x) = W2 (SiLU(W1 x) * W3 x)   (Shazeer 2020, eq. 6). w1: gate, w3: up, w2: down."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)    # gate
        self.w3 = nn.Linear(d_model, d_ff, bias=False)    # up
        self.w2 = nn.Linear(d_ff, d_model, bias=False)    # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = my_silu(self.w1(x)) * self.w3(x)          # (..., d_ff)
        return self.w2(hidden)                             # (..., d_model)


# A hand-sized check: d_model = 1, d_ff = 1, all weights 1 -> FFN(x) = SiLU(x) * x.
unit = MySwiGLU(1, 1)
for weight in (unit.w1.weight, unit.w3.weight, unit.w2.weight):
    nn.init.ones_(weight)
unit_out = unit(torch.tensor([[2.0]])).item()
unit_out_by_hand = (my_silu(torch.tensor(2.0)) * 2.0).item()
print(f"all-ones SwiGLU at x = 2: {unit_out:.4f}; SiLU(2) * 2 = {unit_out_by_hand:.4f}")

ffn, their_ffn = MySwiGLU(32, 96), layers.FeedForward(32, 96)
their_ffn.load_state_dict(ffn.state_dict())
show_match(ffn(x), their_ffn(x), "MySwiGLU == moe_helpers.layers.FeedForward")

# %% [markdown]
# ### 3.5 A pre-norm block and the whole model
#
# A block normalises *before* each sub-layer and adds the result back to the residual stream.
# The model embeds the token ids, runs the blocks, normalises once more and projects to one
# logit per vocabulary entry (the LM head). The logit vector at position $t$ is the model's
# prediction of token $t+1$.

# %%
from moe_helpers.config import ModelConfig


class MyBlock(nn.Module):
    """h = x + Attention(RMSNorm(x));  y = h + FFN(RMSNorm(h))   (pre-norm, as in Llama)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = MyRMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = MyAttention(cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size,
                                     cfg.max_seq_len, cfg.rope_theta)
        self.ffn_norm = MyRMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = MySwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))                   # (B, T, d_model)
        return x + self.ffn(self.ffn_norm(x))                            # (B, T, d_model)


class MyGPT(nn.Module):
    """Token embedding -> n_layers blocks -> RMSNorm -> LM head: logits (B, T, vocab_size)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MyBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = MyRMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(idx)                                     # (B, T, d_model)
        for block in self.layers:
            x = block(x)                                                 # (B, T, d_model)
        return self.lm_head(self.norm(x))                                # (B, T, vocab_size)


# %% [markdown]
# Now the real test: build `moe_helpers.model.GPT` with the `laptop` config, copy its weights
# into our model, and feed both the same tokens of a real story. The logits must agree.

# %%
from moe_helpers.model import GPT

torch.manual_seed(0)
reference = GPT(model_cfg).eval()
mine = MyGPT(model_cfg).eval()
mine.load_state_dict(reference.state_dict())        # strict: every name and shape must match

idx = torch.tensor([tok.encode(stories[0])[:64]])                        # (B=1, T=64)
with torch.no_grad():
    my_logits = mine(idx)                                                # (1, 64, vocab_size)
    their_logits = reference(idx).logits
print(f"logits {tuple(my_logits.shape)}")
show_match(my_logits, their_logits, "MyGPT == moe_helpers.model.GPT")

# %% [markdown]
# **Causality, checked.** Change one token in the middle of the story. The logits at every
# earlier position must stay exactly as they were; the logits from that position on may change.

# %%
changed_at = 40
edited = idx.clone()
edited[0, changed_at] = (edited[0, changed_at] + 1) % model_cfg.vocab_size
with torch.no_grad():
    edited_logits = reference(edited).logits
change_before = (edited_logits[:, :changed_at] - their_logits[:, :changed_at]).abs().max().item()
change_after = (edited_logits[:, changed_at:] - their_logits[:, changed_at:]).abs().max().item()
print(f"token {changed_at} changed: max |Δlogits| before it = {change_before:.1e}, from it on = {change_after:.1e}")

# %% [markdown]
# *What to notice:* the positions before the edit do not move at all (the difference is zero, or
# float rounding), while the edited position and everything after it change.

# %% [markdown]
# ## 4. Training the dense model
#
# Training data are random windows of `seq_len + 1` tokens from the token stream of all stories
# (with `<|endoftext|>` between them): the first `seq_len` tokens are the input, the same window
# shifted by one is the target. `prepare_data` is how nanoGPT prepares OpenWebText: it encodes
# each split **once** (`datasets.map` over batches of stories) into a file of `uint16` token ids in
# the cache folder, and training reads random windows straight from that file (a NumPy memmap),
# so memory stays small however many stories there are. The second call with the same budget,
# in this notebook or the next ones, just opens the file.

# %%
from moe_helpers.data import prepare_data

started = time.perf_counter()
data = prepare_data("auto", vocab_size=model_cfg.vocab_size, limit=budget.train_stories,
                    val_limit=budget.val_stories, tokenizer_limit=budget.tokenizer_stories)
print(f"{len(data.train):,} training tokens, {len(data.val):,} validation tokens, "
      f"{data.train.dtype} on disk ({time.perf_counter() - started:.1f} s)")
same_tokenizer = data.tokenizer.encode(sentence) == tok.encode(sentence)
print("the same tokenizer as above:", same_tokenizer)

inputs, targets = data.batch("train", batch_size=2, seq_len=12, generator=torch.Generator().manual_seed(0))
print("inputs :", inputs[0].tolist())
print("targets:", targets[0].tolist())      # the inputs shifted left by one token
print(repr(tok.decode(inputs[0])), "->", repr(tok.decode(targets[0][-1:])))

# %% [markdown]
# `train_phase` runs AdamW with a short linear warm-up and a cosine decay of the learning rate,
# clips the gradient norm, and measures the validation loss every `eval_every` steps. The loss
# is the mean cross-entropy of the next token, in nats per token.

# %%
from moe_helpers.accounting import count_parameters
from moe_helpers.train import train_phase

torch.manual_seed(train_cfg.seed)
model = GPT(model_cfg)
print(f"{count_parameters(model).total / 1e6:.2f} M parameters")
history = train_phase(model, data, train_cfg.replace(device=str(device)))   # every setting from one TrainConfig

# %%
evaluated = history.evaluated()
first_val, last_val = evaluated[0]["val_loss"], evaluated[-1]["val_loss"]
seconds = history.records[-1]["seconds"]
print(f"validation loss {first_val:.3f} -> {last_val:.3f} in {train_cfg.steps_phase1} steps "
      f"({seconds:.0f} s, {seconds / train_cfg.steps_phase1:.2f} s/step, {history.tokens:,} tokens)")

# %%
from moe_helpers.plots import plot_losses

ax = plot_losses(history, title=f"Dense {model_cfg.d_model}-wide, {model_cfg.n_layers}-layer model on {data.source} data")
ax.axhline(math.log(model_cfg.vocab_size), color="gray", ls="--", lw=1, label="ln(vocab_size): uniform guess")
ax.legend()
plt.show()
uniform_guess, last_train = math.log(model_cfg.vocab_size), history.records[-1]["train_loss"]
print(f"first validation loss {first_val:.3f}, ln(vocab_size) {uniform_guess:.3f}; "
      f"at the end: training {last_train:.3f}, validation {last_val:.3f}")

# %% [markdown]
# *What to notice:* the loss starts at the dashed line (a uniform guess over the vocabulary),
# falls by several nats, steeply in the first hundred steps as the model learns frequent words and
# phrases, and the validation curve tracks the training curve closely (no overfitting at this size).

# %% [markdown]
# ## 5. Writing a story
#
# `model.generate` appends one token at a time: it runs the model on the text so far, divides the
# last position's logits by a *temperature*, keeps the `top_k` most likely tokens and samples one.
#
# To see what training bought, we compare with the untrained model and measure the share of
# the generated *word pairs* ("little boy", "boy named") that also occur somewhere in the
# training stories: a model that only learned which words are frequent strings them together in
# pairs nobody writes, while a model that learned some grammar reuses real ones.

# %%
import re


def word_pairs(text: str) -> list[tuple[str, str]]:
    """Consecutive pairs of lower-case words: "The cat sat" -> [("the", "cat"), ("cat", "sat")]."""
    words = re.findall(r"[a-z]+", text.lower())
    return list(zip(words, words[1:]))


def known_pair_share(text: str, known_pairs: set[tuple[str, str]]) -> float:
    """Fraction of the word pairs of ``text`` that occur in ``known_pairs``."""
    pairs = word_pairs(text)
    return sum(pair in known_pairs for pair in pairs) / max(1, len(pairs))


def write_story(model: nn.Module, tokenizer, prompt: str, new_tokens: int = 120,
                temperature: float = 0.8, seed: int = 0) -> str:
    """Continue ``prompt`` with up to ``new_tokens`` sampled tokens; stop at the end-of-story token."""
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], device=device)           # (1, T_prompt)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, new_tokens, temperature=temperature, top_k=50, generator=generator)
    ids = out[0].tolist()                                                  # prompt + new tokens
    if tokenizer.eot_id in ids:
        ids = ids[:ids.index(tokenizer.eot_id)]                            # the story has ended
    return tokenizer.decode(ids)


corpus_pairs = {pair for story in stories for pair in word_pairs(story)}
prompt = "Once upon a time, there was a little"
story = write_story(model, tok, prompt)
print(story)

# %%
torch.manual_seed(1)
untrained_story = write_story(GPT(model_cfg).to(device), tok, prompt, new_tokens=60)
trained_share = known_pair_share(story[len(prompt):], corpus_pairs)
untrained_share = known_pair_share(untrained_story[len(prompt):], corpus_pairs)
print("untrained model:", untrained_story.replace("\n", " "))
print(f"\nword pairs also found in the training stories: trained {trained_share:.0%}, "
      f"untrained {untrained_share:.0%}")

# %% [markdown]
# *What to notice:* most of the trained model's word pairs are pairs that real stories use; the
# untrained model's text is a jumble of tokens, and few of its pairs occur anywhere.

# %% [markdown]
# What does the model think comes right after the prompt? Its last logit vector, turned into
# probabilities, is the distribution that `generate` samples from.

# %%
with torch.no_grad():
    prompt_ids = torch.tensor([tok.encode(prompt)], device=device)             # (1, T_prompt)
    next_logits = model(prompt_ids).logits[0, -1].float().cpu()               # (vocab_size,)
top = next_logits.softmax(dim=-1).topk(5)
print(f"after {prompt!r}:")
for probability, token_id in zip(top.values.tolist(), top.indices.tolist()):
    print(f"  {tok.decode([token_id])!r:>12} {probability:6.1%}")
print(f"the five together: {top.values.sum():.0%}; a uniform guess would give them {5 / model_cfg.vocab_size:.2%}")

# %% [markdown]
# *What to notice:* the trained model is far from a uniform guess: a handful of tokens (words
# that fit a character's description, or the start of one) take a large share of the probability.

# %% [markdown]
# ## 6. Exercises
#
# Each exercise asks you to implement one piece of this chapter in a stub function. Replace
# `raise NotImplementedError` with your code and run the cell below it: `check` runs your function
# on hidden test cases and compares it with the course's own implementation. It answers *not
# attempted yet*, *correct*, or *wrong* with a hint that points at the mistake (never at the
# answer). Reference solutions, for when you are done or stuck:
# `solutions/01_dense_model.py` at the root of the repository.

# %%
from moe_helpers.exercises import check

# %% [markdown]
# **Exercise 1 — RMSNorm as a function.** Write `rms_norm(x, gain, eps)`: normalise every vector of
# `x` (shape `(..., d)`) by its root mean square over the last dimension and multiply by the gain
# `gain` (shape `(d,)`), as in section 3.1:
# $y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \odot g$. Return a tensor of the shape of `x`.
# The hidden cases include an all-zero vector and inputs small enough for `eps` to matter.

# %%
def rms_norm(x, gain, eps=1e-5):
    """x: (..., d), gain: (d,) -> (..., d)."""
    raise NotImplementedError  # your code here


# %%
check("rms_norm", rms_norm)

# %% [markdown]
# **Exercise 2 — causal attention with grouped-query heads.** Write `causal_gqa_attention(q, k, v)`
# for queries `q` of shape `(B, H, T, hd)` and keys and values `k`, `v` of shape `(B, H_kv, T, hd)`,
# where `H` is a multiple of `H_kv` and query head `h` reads key/value head `h // (H / H_kv)`
# (section 3.3). Compute $\mathrm{softmax}(q k^\top / \sqrt{hd} + M)\, v$ with the causal mask $M$
# yourself (not with `F.scaled_dot_product_attention`) and return the output, `(B, H, T, hd)`.
# The hidden cases include ordinary multi-head attention (`H_kv = H`), a single key/value head
# and a single token.

# %%
def causal_gqa_attention(q, k, v):
    """q: (B, H, T, hd); k, v: (B, H_kv, T, hd) -> (B, H, T, hd)."""
    raise NotImplementedError  # your code here


# %%
check("causal_gqa_attention", causal_gqa_attention)

# %% [markdown]
# **Exercise 3 — count the parameters of one block by hand.** Write `block_parameter_count(cfg)`:
# the number of parameters of one dense block of a `ModelConfig` — the four attention matrices,
# the three SwiGLU matrices and the two RMSNorm gains (there are no biases) — by formula, from
# `cfg.d_model`, `cfg.n_heads`, `cfg.kv_heads`, `cfg.head_size` and `cfg.d_ff` (the derived
# `kv_heads` and `head_size` are always set; the fields `n_kv_heads` and `head_dim` may be `None`).
# The hidden configs include grouped-query attention and a `head_dim` that is not
# `d_model / n_heads`. Afterwards, compare `block_parameter_count(model_cfg)` with
# `sum(p.numel() for p in model.layers[0].parameters())`.

# %%
def block_parameter_count(cfg):
    """Parameters of one dense block of the config ``cfg`` (an int)."""
    raise NotImplementedError  # your code here


# %%
check("block_parameter_count", block_parameter_count)


# %% [markdown]
# ## Further reading
#
# - Vaswani et al. 2017, [Attention Is All You Need](https://arxiv.org/abs/1706.03762): the
#   transformer and the scaled dot-product attention of section 3.3.
# - Touvron et al. 2023, [LLaMA](https://arxiv.org/abs/2302.13971): the recipe this model follows
#   (pre-norm RMSNorm, RoPE, SwiGLU, no biases).
# - Zhang & Sennrich 2019, [Root Mean Square Layer Normalization](https://arxiv.org/abs/1910.07467):
#   RMSNorm and why dropping the mean subtraction costs nothing.
# - Su et al. 2021, [RoFormer](https://arxiv.org/abs/2104.09864): rotary position embeddings and
#   the proof that the score depends only on the distance.
# - Ainslie et al. 2023, [GQA](https://arxiv.org/abs/2305.13245): grouped-query attention and what
#   it saves at generation time.
# - Shazeer 2020, [GLU Variants Improve Transformer](https://arxiv.org/abs/2002.05202): SwiGLU and
#   its cousins, compared on the same budget.
# - Sennrich et al. 2016, [Neural Machine Translation of Rare Words with Subword Units](https://arxiv.org/abs/1508.07909):
#   byte-pair encoding, the tokenizer of section 2.
# - Eldan & Li 2023, [TinyStories](https://arxiv.org/abs/2305.07759): the data set, and how small a
#   model can be and still write fluent English.
# - Karpathy, [nanoGPT](https://github.com/karpathy/nanoGPT): a small, readable GPT and training
#   loop; our `prepare_data` follows its data preparation.
# - Raschka, [LLMs-from-scratch](https://github.com/rasbt/LLMs-from-scratch): the same pieces built
#   step by step, and tests of hand-written RoPE and RMSNorm against library ones.

# %% [markdown]
# ## Checks — the claims above, verified
#
# These cells verify every claim this lesson makes, on the numbers it computed; `make test` runs
# them. You do not need them to follow the lesson.

# %%
# The stories and the tokenizer (sections 1 and 2)
words_per_story = corpus_words / len(stories)
bytes_per_story = sum(len(one_story.encode()) for one_story in stories) / len(stories)
distinct_in_500 = corpus_statistics(stories[:500])["distinct_words"]
assert len(stories) > 1000 and corpus_chars > 1_000_000, f"only {corpus_chars:,} characters of stories"
assert 120 <= words_per_story <= 220, f"{words_per_story:.0f} words per story; TinyStories has about 160"
assert 700 <= bytes_per_story <= 1_300, f"{bytes_per_story:.0f} bytes per story; TinyStories has about 906"
assert distinct_in_500 >= 2_000, f"{distinct_in_500} distinct words in 500 stories; TinyStories has 3,193"
assert tok.vocab_size == model_cfg.vocab_size, f"the tokenizer has {tok.vocab_size} tokens"
assert round_trip == sentence and rare_round_trip == rare, "decoding did not give back the text"
assert chars_per_token > 2.5, f"one token covers only {chars_per_token:.2f} characters"

# The pieces of the decoder (section 3)
torch.testing.assert_close(normed_3_4, normed_3_4_by_hand)
torch.testing.assert_close(rotated, rotated_by_hand)
assert math.isclose(*q_norms, rel_tol=1e-5), f"RoPE changed the length of q: {q_norms}"
assert math.isclose(*scores_at_distance_2, rel_tol=1e-4, abs_tol=1e-4), f"scores differ: {scores_at_distance_2}"
assert torch.all(causal_weights.triu(diagonal=1) == 0), "a query put weight on a later position"
torch.testing.assert_close(causal_weights.sum(-1), torch.ones(4))
assert causal_weights[0, 0] == 1.0, "the first token should attend only to itself"
assert attention.wk.weight.shape == (2 * 8, 32), f"wk has shape {tuple(attention.wk.weight.shape)}"
assert silu_at_0 == 0 and abs(silu_at_minus_20) < 1e-6, f"SiLU(0) = {silu_at_0}, SiLU(-20) = {silu_at_minus_20}"
assert math.isclose(unit_out, unit_out_by_hand, rel_tol=1e-6), f"{unit_out} != {unit_out_by_hand}"
assert (my_logits - their_logits).abs().max() < 1e-4, "MyGPT's logits differ from GPT's"
assert change_before < 1e-5, f"an earlier position saw a future token (change {change_before:.1e})"
assert change_after > 1e-3, f"the changed token barely changed the logits ({change_after:.1e})"

# %%
# Training and writing (sections 4 and 5)
assert same_tokenizer, "prepare_data's tokenizer differs from the one trained in section 2"
assert torch.equal(inputs[:, 1:], targets[:, :-1]), "the targets are not the inputs shifted by one"
assert last_val < first_val - 3.0, f"validation loss fell only from {first_val:.3f} to {last_val:.3f}"
assert abs(first_val - uniform_guess) < 0.2, f"the untrained loss {first_val:.3f} is not ln(vocab_size)"
assert abs(last_train - last_val) < 0.15, f"training {last_train:.3f} and validation {last_val:.3f} drift apart"
generated = model.generate(prompt_ids, 20, temperature=0.8, top_k=50,
                           generator=torch.Generator(device=device).manual_seed(0))       # (1, T_prompt + 20)
assert generated.shape == (1, prompt_ids.shape[1] + 20), f"generate returned shape {tuple(generated.shape)}"
assert 0 <= generated.min() and generated.max() < tok.vocab_size, "generate returned an id outside the vocabulary"
assert trained_share > 0.6 and trained_share > untrained_share + 0.3, \
    f"known word pairs: trained {trained_share:.0%}, untrained {untrained_share:.0%}"
assert top.values.sum() > 40 * 5 / model_cfg.vocab_size, "the trained model's next token is close to uniform"
print("all checks passed")
