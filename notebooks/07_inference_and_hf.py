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
# # 07 · Inference: the KV cache, and export to Hugging Face `transformers`
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/moe-course/moe-course/blob/main/notebooks/07_inference_and_hf.ipynb)
#
# In this notebook you will:
#
# - count the work of writing a story token by token without a cache (every step re-reads the whole
#   text) and with a **key/value cache** (every step reads one new token);
# - build the cache by hand for one attention layer of a trained MoE model -- the prompt's keys and
#   values, then one new token rotated to its position, appended and attended to -- and check it
#   against `Attention.forward(x, cache)` and the full forward pass;
# - check that cached generation writes exactly the tokens uncached generation writes, and time both;
# - measure the cache's memory, and compute it for published MoE models at their context lengths,
#   with and without grouped-query attention;
# - see what happens past `max_seq_len`: a sliding cache and a re-encoded window disagree, and why;
# - export the model to `transformers` (a `MixtralForCausalLM`), load it with `AutoModelForCausalLM`
#   alone, compare logits and generated stories, see what cannot be exported, load it back bit for bit,
#   and learn the commands that export a run and share it on the Hugging Face hub.
#
# Expected run time: about a minute on a laptop CPU (most of it trains the model).

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
# By default the model trains for 150 dense and 30 MoE steps (about a minute on a 2-core CPU): enough
# for stories made of real sentences. On a GPU set `SCALE_UP = True` for ten times as many steps and
# better stories. Either way, everything after training runs on the CPU in float32, where the
# comparisons of this notebook hold to the last digits; `benchmarks/generate.py` measures speed.

# %%
SCALE_UP = False   # True: 1500 dense + 300 MoE training steps of the same laptop model; wants a GPU

# %% [markdown]
# ## 0. A model that writes stories
#
# Inference needs a model worth running. We train the `laptop` dense model briefly (as in notebook 01),
# upcycle it into a 4-expert, top-2 Mixture-of-Experts (notebook 04) and train that a little more.

# %%
import math
import time

from moe_helpers.config import preset
from moe_helpers.data import prepare_preset_data
from moe_helpers.growth import upcycle
from moe_helpers.model import GPT
from moe_helpers.train import train_phase

LAPTOP = preset("laptop")
STEPS = dict(steps_phase1=1500, steps_phase2=300) if SCALE_UP else dict(steps_phase1=150, steps_phase2=30)
train_cfg = LAPTOP.train.replace(**STEPS, log_every=50, eval_every=50, eval_batches=4, device=str(device))
data = prepare_preset_data(LAPTOP)                 # notebook 01's stories, tokenizer and token file
tok = data.tokenizer

started = time.perf_counter()
torch.manual_seed(0)
dense = GPT(LAPTOP.model)
history = train_phase(dense, data, train_cfg, progress=False, verbose=False)
model = upcycle(dense, LAPTOP.num_experts, LAPTOP.top_k)
history = train_phase(model, data, train_cfg, phase=2, history=history, progress=False, verbose=False)
model = model.cpu().eval()                          # inference from here on: CPU, float32, eval mode
cfg = model.cfg
first_loss, last_loss = history.evaluated()[0]["val_loss"], history.last_val_loss
print(f"trained {train_cfg.steps_phase1} dense + {train_cfg.steps_phase2} MoE steps in "
      f"{time.perf_counter() - started:.0f} s: validation loss {first_loss:.2f} -> {last_loss:.2f}")
print(f"the model: {cfg.n_layers} blocks, d_model {cfg.d_model}, {cfg.n_heads} heads of {cfg.head_size} "
      f"({cfg.kv_heads} key/value heads), {cfg.num_experts} experts, top-{cfg.top_k}, max_seq_len {cfg.max_seq_len}")

# %%
PROMPT = "Once upon a time, there was a little"
prompt = torch.tensor([tok.encode(PROMPT)])                           # (1, P)
P = prompt.shape[1]
sampled = model.generate(prompt, 100, temperature=0.8, top_k=50, generator=torch.Generator().manual_seed(0))
print(f"{P} prompt tokens; a sampled story:\n")
print(tok.decode(sampled[0].tolist()))

# %% [markdown]
# ## 1. Why a KV cache
#
# `generate` writes one token per step: run the model, take the last position's logits, pick a token,
# append it, repeat. Run naively, step $i$ feeds the model the *whole* text so far -- the prompt's $P$
# tokens and the $i$ tokens written since -- although only the last position's logits are used.
# Causal attention makes almost all of that work redundant: the keys and values of a token depend
# only on that token and the ones before it, so once computed they never change. A **KV cache** keeps every
# layer's keys and values, and each step runs the model on the one new token, which attends to the
# cached keys.
#
# Writing $N$ tokens after a $P$-token prompt (while the text fits in `max_seq_len`), the model reads
#
# $$\text{without a cache: } \sum_{i=0}^{N-1} (P + i) = NP + \frac{N(N-1)}{2} \qquad
#   \text{with a cache: } P + (N - 1)$$
#
# token positions: quadratic against linear. Each position read costs the model's matrix products,
# about $2 N_\text{active}$ FLOPs, plus attention over the context (notebook 03's `flops_per_token`).

# %%
from moe_helpers.accounting import flops_per_token

N_FIT = cfg.max_seq_len - P                          # new tokens that fit in the window with the prompt


def positions_read(prompt_tokens: int, new_tokens: int, cached: bool) -> list[int]:
    """Tokens the model reads at each step of greedy generation (while the text fits)."""
    if cached:
        return [prompt_tokens] + [1] * (new_tokens - 1)
    return [prompt_tokens + i for i in range(new_tokens)]


def generation_flops(prompt_tokens: int, new_tokens: int, cached: bool) -> float:
    """Forward FLOPs of generating ``new_tokens``: each token read attends to its context."""
    total = 0.0
    for step, read in enumerate(positions_read(prompt_tokens, new_tokens, cached)):
        context = prompt_tokens + step                # tokens visible to the last position read
        total += read * flops_per_token(cfg, context).forward
    return total


print(f"{'new tokens':>10} {'read, no cache':>15} {'read, cache':>12} {'GFLOP, no cache':>16} "
      f"{'GFLOP, cache':>13} {'ratio':>6}")
for new_tokens in (16, 64, N_FIT):
    uncached, cached = (positions_read(P, new_tokens, flag) for flag in (False, True))
    flops = [generation_flops(P, new_tokens, flag) for flag in (False, True)]
    print(f"{new_tokens:10d} {sum(uncached):15,d} {sum(cached):12,d} {flops[0] / 1e9:16.2f} "
          f"{flops[1] / 1e9:13.3f} {flops[0] / flops[1]:5.0f}x")
read_to_fill = [sum(positions_read(P, N_FIT, flag)) for flag in (False, True)]

# %% [markdown]
# Filling the window (247 new tokens) without a cache reads over a hundred times as many positions.
# The cache does not make a step free: the new token still runs through every layer and attends to
# all cached keys. It removes the re-computation.
#
# ### 1.1 The cache of one attention layer, by hand
#
# Take block 2 of the trained model (the third of four). Its attention reads the normalised residual stream $x$
# (`attention_norm` of block 2's input). We capture $x$ for the prompt plus one new token with a
# forward hook on a full forward pass, then compute the new token's attention output the cached way:
#
# 1. **prompt**: keys $K = \mathrm{RoPE}(x W_k)$ at positions $0 \ldots P-1$ and values $V = x W_v$,
#    shape `(batch, n_kv_heads, P, head_dim)`. Keys are stored *after* rotation, so they never need
#    rotating again; values are never rotated;
# 2. **new token** at position $P$ (the number of tokens already cached): its query, key and value,
#    the query and key rotated by position $P$'s angles;
# 3. **append** its key and value to the cache, and **attend**: $\mathrm{softmax}(q K^\top / \sqrt{d_\text{head}})\,V$
#    over all $P+1$ positions -- no causal mask needed, the cache holds only the past and the token
#    itself -- then the output projection $W_o$.

# %%
from moe_helpers.checks import show_match
from moe_helpers.layers import LayerKVCache, apply_rope

LAYER = 2
attention = model.layers[LAYER].attention
H, H_KV, HD = cfg.n_heads, cfg.kv_heads, cfg.head_size
new_token = torch.tensor([[tok.encode(" girl")[0]]])                   # (1, 1): the next token
sequence = torch.cat([prompt, new_token], dim=1)                        # (1, P + 1)

captured = {}
hook = attention.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
with torch.no_grad():
    full_logits = model(sequence).logits                               # (1, P + 1, vocab)
    x = captured["x"]                                                   # (1, P + 1, d_model)
    full_attention = attention(x)                                       # (1, P + 1, d_model), causal
hook.remove()


def split_heads(projection: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads * head_dim) -> (B, heads, T, head_dim)."""
    B, T, _ = projection.shape
    return projection.view(B, T, heads, HD).transpose(1, 2)


cos, sin = attention.rope_cos, attention.rope_sin                       # (max_seq_len, head_dim) each
with torch.no_grad():
    # 1. the prompt: rotated keys and plain values, positions 0 .. P-1
    x_prompt, x_new = x[:, :P], x[:, P:]
    keys = apply_rope(split_heads(attention.wk(x_prompt), H_KV), cos[:P], sin[:P])   # (1, H_kv, P, hd)
    values = split_heads(attention.wv(x_prompt), H_KV)                                # (1, H_kv, P, hd)
    # 2. the new token at position P: query, key, value; query and key rotated by position P
    q = apply_rope(split_heads(attention.wq(x_new), H), cos[P:P + 1], sin[P:P + 1])  # (1, H, 1, hd)
    k = apply_rope(split_heads(attention.wk(x_new), H_KV), cos[P:P + 1], sin[P:P + 1])
    v = split_heads(attention.wv(x_new), H_KV)
    # 3. append, then attend to all P + 1 cached positions
    keys, values = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)         # (1, H_kv, P+1, hd)
    group = H // H_KV                                   # query heads per key/value head (GQA)
    scores = q @ keys.repeat_interleave(group, 1).transpose(-1, -2) / math.sqrt(HD)  # (1, H, 1, P+1)
    weights = scores.softmax(dim=-1)
    heads_out = weights @ values.repeat_interleave(group, 1)                          # (1, H, 1, hd)
    by_hand = attention.wo(heads_out.transpose(1, 2).reshape(1, 1, H * HD))           # (1, 1, d_model)

    # the course's cache: the prompt first, then the new token alone
    layer_cache = LayerKVCache(cfg.max_seq_len)
    attention(x_prompt, layer_cache)
    with_cache = attention(x_new, layer_cache)                                        # (1, 1, d_model)

diff_full = (by_hand - full_attention[:, P:]).abs().max().item()
diff_keys = (layer_cache.keys - keys).abs().max().item()
print(f"cached keys {tuple(layer_cache.keys.shape)}, values {tuple(layer_cache.values.shape)}; "
      f"the new token's position: {P}")
print(f"attention weights of the new token, head by head (over the {P + 1} positions):")
print(weights[0, :, 0].numpy().round(2))
print(f"max |by hand - full forward pass, last position| = {diff_full:.1e}")
print(f"max |our keys - the LayerKVCache's keys|         = {diff_keys:.1e}")
show_match(by_hand, with_cache, "one attention step by hand == Attention.forward(x_new, LayerKVCache)",
           rtol=0, atol=1e-5)

# %% [markdown]
# The same for all four layers at once: `model.new_kv_cache()` holds one `LayerKVCache` per block, and
# `model(idx, cache=cache)` reads only the tokens the cache has not seen. Feeding the prompt, then the
# new token alone, gives the full pass's logits for the new token:

# %%
with torch.no_grad():
    cache = model.new_kv_cache()
    model(prompt, cache=cache, with_routing=False)                      # fills every layer with P positions
    step_logits = model(new_token, cache=cache, with_routing=False).logits   # (1, 1, vocab): one token read
diff_logits = (step_logits[0, -1] - full_logits[0, -1]).abs().max().item()
positions_cached = cache.position
print(f"cache.position = {positions_cached}; max |Δlogits| cached vs full pass = {diff_logits:.1e}")

# %% [markdown]
# ## 2. Cached generation = uncached generation
#
# `model.generate(idx, n, temperature=0)` picks the most likely token at every step (greedy), with the
# cache by default (`use_cache=True`) or re-reading the whole context (`use_cache=False`). While the
# text fits in `max_seq_len` both must write exactly the same tokens. Both ask the model for the logits
# of the last position only (`only_last_logits=True`): picking the next token needs no others, and the
# output layer is a `vocab_size` x `d_model` product for every position it is given, so the comparison
# measures the cache and nothing else. A hook on the model records how many tokens each step reads and
# how long it takes. (Greedy decoding makes the comparison
# deterministic; it also tends to loop on the likeliest sentences, as the story below does, which is why
# stories are usually sampled, as in section 0.)

# %%
def timed_generate(model, prompt, new_tokens, use_cache):
    """Greedy ``generate``, with the tokens read and the seconds taken by each forward pass."""
    calls = []
    before = model.register_forward_pre_hook(
        lambda module, args: calls.append([args[0].shape[1], time.perf_counter()]))
    after = model.register_forward_hook(lambda module, args, output: calls[-1].append(time.perf_counter()))
    try:
        started = time.perf_counter()
        out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
        seconds = time.perf_counter() - started
    finally:
        before.remove()
        after.remove()
    return out, seconds, [read for read, _, _ in calls], [end - start for _, start, end in calls]


cached_out, cached_s, cached_read, cached_steps = timed_generate(model, prompt, N_FIT, use_cache=True)
plain_out, plain_s, plain_read, plain_steps = timed_generate(model, prompt, N_FIT, use_cache=False)
show_match(cached_out, plain_out, f"greedy generate, {N_FIT} new tokens: with the KV cache == without it")
print(f"tokens read: {sum(plain_read):,} without the cache, {sum(cached_read):,} with it (as counted in section 1)")
print(f"without the cache {N_FIT / plain_s:6.0f} tokens/s ({plain_s:.2f} s)")
print(f"with the cache    {N_FIT / cached_s:6.0f} tokens/s ({cached_s:.2f} s): {plain_s / cached_s:.1f}x faster")
print()
print(tok.decode(cached_out[0].tolist()))

# %%
context = [P + step for step in range(N_FIT)]            # tokens visible at each step
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
axes[0].plot(context, plain_read, label="without a cache: the whole text")
axes[0].plot(context, cached_read, label="with a cache: one new token (the prompt first)")
axes[0].set(xlabel="length of the text so far (tokens)", ylabel="tokens read by the model",
            title="Work per step")
axes[1].plot(context, [1e3 * s for s in plain_steps], ".", ms=3, label="without a cache")
axes[1].plot(context, [1e3 * s for s in cached_steps], ".", ms=3, label="with a cache")
axes[1].set(xlabel="length of the text so far (tokens)", ylabel="milliseconds per step",
            title="Time per step (measured on this machine)", ylim=(0, None))
for ax in axes:
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# *What to notice:* without a cache the work of a step grows with the text (left), and so does its
# time (right); with the cache both stay flat after the first step, which reads the prompt. At this toy
# size the ratio of the times is far below the ratio of the work: each cached step still pays Python
# and per-layer overheads (the four MoE layers launch many small matrix products), the same for one
# token or two hundred. For a large model the matrix products dominate and the saving approaches the
# ratio of the work. On a shared machine the timings are noisy: read their shape, not their digits.
# `benchmarks/generate.py` measures tokens per second side by side (cached, uncached and
# `transformers`, repeated, medians) and checks its targets.

# %% [markdown]
# ### 2.1 Where a cached step's time goes
#
# PyTorch runs a forward pass as a sequence of **tensor operations** (a matrix product, a softmax, an
# addition, ...), and each one costs a few microseconds of Python and dispatch before any arithmetic
# starts. A `TorchDispatchMode` sees every operation, so we can count them
# (`moe_helpers.accounting.count_operations`): for one cached step and one uncached step at three points
# of the story.

# %%
from moe_helpers.accounting import count_operations


def operations(run) -> int:
    """Tensor operations of ``run()`` in inference mode, as ``generate`` runs the model."""
    with torch.inference_mode():
        return count_operations(run)


def cached_step_operations(text: torch.Tensor) -> int:
    """Operations of reading the last token of ``text`` (1, L) after a cache holding the rest."""
    cache = model.new_kv_cache()
    with torch.inference_mode():
        model(text[:, :-1], cache=cache, with_routing=False)
    return operations(lambda: model(text[:, -1:], cache=cache, with_routing=False, only_last_logits=True))


def uncached_step_mflop(context: int) -> float:
    """Arithmetic of an uncached step: every position through the blocks, the output layer (a
    vocab_size x d_model product) for the last position only, as ``generate`` asks."""
    head_flops = 2 * cfg.vocab_size * cfg.d_model
    return (context * flops_per_token(cfg, context).forward - (context - 1) * head_flops) / 1e6


print(f"{'context':>7} {'operations':>21} {'MFLOP':>17} {'ms (measured above)':>21}")
print(f"{'':7} {'cached':>10} {'uncached':>10} {'cached':>8} {'uncached':>8} {'cached':>10} {'uncached':>10}")
op_counts, work_ratios = {}, []
for context in (P + 10, P + 100, cfg.max_seq_len - 1):
    text = cached_out[:, :context]                                        # (1, context) a real story
    cached_ops = cached_step_operations(text)
    uncached_ops = operations(lambda: model(text, with_routing=False, only_last_logits=True))
    op_counts[context] = cached_ops, uncached_ops
    cached_mflop, uncached_mflop = flops_per_token(cfg, context).forward / 1e6, uncached_step_mflop(context)
    work_ratios.append(uncached_mflop / cached_mflop)
    step = context - P                                                     # index of that step above
    print(f"{context:7d} {cached_ops:10d} {uncached_ops:10d} {cached_mflop:8.1f} {uncached_mflop:8.0f} "
          f"{1e3 * cached_steps[step]:10.2f} {1e3 * plain_steps[step]:10.2f}")
print(f"uncached / cached arithmetic: {', '.join(f'{ratio:.0f}x' for ratio in work_ratios)}; "
      f"operations: {', '.join(f'{u / c:.2f}x' for c, u in op_counts.values())}")

# %% [markdown]
# *What to notice:* a cached step runs the same few hundred operations at every length of the story,
# and an uncached step runs hardly more -- the same layers, on bigger tensors (the uncached MoE layer
# sorts its token slots instead of calling two experts, hence the extra ones). The arithmetic is what
# differs, by a factor that grows with the context (the printed ratios). At this size a cached step's
# arithmetic (a few MFLOP) takes microseconds and its operations a millisecond, so the time per cached
# step is mostly the fixed cost of its operations, and the cache wins far less than the arithmetic
# ratio (section 2 printed this machine's ratio; `benchmarks/generate.py` measures it side by side,
# and also times the same step written as one function of the weights, without modules: faster still).
# The same count holds for a large model, where every operation carries millions of multiply-adds and
# the fixed cost vanishes.

# %% [markdown]
# ## 3. What the cache costs: memory
#
# The cache holds, for every layer, a key and a value vector per key/value head per position:
#
# $$\text{bytes} = 2 \times n_\text{layers} \times \text{batch} \times n_\text{kv heads} \times
#   d_\text{head} \times \text{positions} \times \text{bytes per value}$$
#
# `kv_cache_bytes(cfg, batch_size, seq_len, dtype)` computes it (positions stop at `max_seq_len`; see
# section 4). Note $n_\text{kv heads}$: with grouped-query attention (GQA, Ainslie et al. 2023) several
# query heads share one key/value head, and the cache shrinks by $n_\text{heads} / n_\text{kv heads}$.
# Our laptop model has as many key/value heads as query heads. The cache's real size, `KVCache.nbytes`,
# must match the formula:

# %%
from moe_helpers.accounting import count_parameters, kv_cache_bytes

with torch.no_grad():
    story_cache = model.new_kv_cache()
    model(cached_out, cache=story_cache, with_routing=False)            # the 256-token story
    batch_cache = model.new_kv_cache()
    model(data.batch("val", 3, 100, generator=torch.Generator().manual_seed(0))[0], cache=batch_cache,
          with_routing=False)                                           # 3 stories of 100 tokens

layer = story_cache.layers[0]
print(f"one layer's cache: keys {tuple(layer.keys.shape)} + values {tuple(layer.values.shape)} "
      f"in {layer.keys.dtype}")
cache_sizes = {}                                    # name -> (KVCache.nbytes, the formula's bytes)
for name, kv, batch, positions in (("the story", story_cache, 1, cfg.max_seq_len),
                                   ("3 x 100 tokens", batch_cache, 3, 100)):
    cache_sizes[name] = kv.nbytes, kv_cache_bytes(cfg, batch, positions, torch.float32)
    print(f"{name:15}: KVCache.nbytes = {kv.nbytes:9,d}   kv_cache_bytes = {cache_sizes[name][1]:9,d}")
weights_bytes = count_parameters(model).total * 4
print(f"per token: {kv_cache_bytes(cfg, 1, 1, torch.float32):,} bytes; a full window is "
      f"{story_cache.nbytes / weights_bytes:.0%} of the model's {weights_bytes / 1e6:.1f} MB of weights")

# %% [markdown]
# For a toy model the cache is small. For a published model at its full context it is not. Here is the
# formula for MoE models of notebook 03 (their shapes are in `moe_helpers.real_models`), one sequence
# filling each model's context window, in bfloat16 (2 bytes), next to what the same model would need
# with one key/value head per query head (plain multi-head attention, MHA). GPT-OSS-20B is left out:
# half of its layers attend to a 128-token sliding window, which this formula does not describe.

# %%
from moe_helpers.accounting import count_from_config
from moe_helpers.real_models import published_model

CONTEXT = {   # context window of each model (tokens), from its config.json / model card
    "Mixtral-8x7B": 32_768, "Mixtral-8x22B": 65_536, "OLMoE-1B-7B": 4_096, "Qwen3-30B-A3B": 32_768,
    "DeepSeekMoE-16B": 4_096, "Qwen1.5-MoE-A2.7B": 8_192, "Phi-3.5-MoE": 131_072,
}
GiB = 2 ** 30
rows = []
print(f"{'model':<18}{'context':>9}{'heads':>7}{'kv heads':>9}{'KiB/token':>10}{'cache GiB':>10}"
      f"{'as MHA':>8}{'weights GiB':>12}")
for name, context_len in CONTEXT.items():
    published = published_model(name).config.replace(max_seq_len=context_len)
    as_mha = published.replace(n_kv_heads=None)                          # one kv head per query head
    gqa_bytes = kv_cache_bytes(published, 1, context_len, torch.bfloat16)
    mha_bytes = kv_cache_bytes(as_mha, 1, context_len, torch.bfloat16)
    weights = 2 * count_from_config(published).total
    rows.append((name, gqa_bytes, mha_bytes))
    print(f"{name:<18}{context_len:9,d}{published.n_heads:7d}{published.kv_heads:9d}"
          f"{kv_cache_bytes(published, 1, 1, torch.bfloat16) / 1024:10.0f}{gqa_bytes / GiB:10.2f}"
          f"{mha_bytes / GiB:8.1f}{weights / GiB:12.1f}")

# %%
fig, ax = plt.subplots(figsize=(10, 4.6))
names = [name for name, _, _ in rows]
positions = range(len(rows))
ax.barh([p - 0.2 for p in positions], [gqa / GiB for _, gqa, _ in rows], height=0.4, color="#2166ac",
        label="as published")
ax.barh([p + 0.2 for p in positions], [mha / GiB for _, _, mha in rows], height=0.4, color="#f4a582",
        label="with one key/value head per query head (MHA)")
for p, (name, gqa, mha) in zip(positions, rows):
    ax.text(gqa / GiB * 1.08, p - 0.2, f"{gqa / GiB:.2g} GiB", va="center", fontsize=8)
    if mha != gqa:
        ax.text(mha / GiB * 1.08, p + 0.2, f"{mha / GiB:.3g} GiB (×{mha // gqa})", va="center", fontsize=8)
ax.set_yticks(list(positions), [f"{name}\n{CONTEXT[name] // 1024}k tokens" for name in names], fontsize=8)
ax.set_xscale("log")
ax.set_xlim(0.2, 400)
ax.invert_yaxis()
ax.set(xlabel="KV cache of one sequence at full context, bfloat16 (GiB, log scale)",
       title="Grouped-query attention shrinks the KV cache")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# *What to notice:* the models with GQA (Mixtral, Qwen3, Phi-3.5-MoE: 8 or 4 key/value heads) keep
# their cache 4 to 8 times smaller than full multi-head attention would; without it, one 64k-token
# sequence of Mixtral-8x22B would need 84 GiB of cache, more than an 80 GB GPU. OLMoE, DeepSeekMoE and
# Qwen1.5-MoE use full multi-head attention with short contexts. The cache grows with the batch: 16
# sequences of Mixtral-8x7B at 32k tokens hold 64 GiB of keys and values next to its 87 GiB of weights.
# An MoE adds nothing here: the cache belongs to attention, and every token of every sequence needs
# its keys and values whichever experts it visits.

# %% [markdown]
# ## 4. Past `max_seq_len`: a sliding window vs re-encoding
#
# The model has rotary tables for 256 positions and was trained on shorter windows. What should
# generation do once the text is longer? The two paths of `generate` answer differently (its docstring
# says so):
#
# * **without the cache** the context is cropped to the last `max_seq_len` tokens and re-encoded from
#   scratch at positions 0 … 255: the oldest kept token suddenly has no left context;
# * **the cache slides**: it drops the oldest position and keeps the others' keys and values as they
#   were computed, when their tokens could still see further back (in the layers above the first,
#   those keys carry information from the dropped tokens). The new token attends to the latest 256.
#   This is the rolling buffer of sliding-window attention (Mistral 7B, Jiang et al. 2023), and it
#   costs one token per step instead of 256.
#
# So the two agree exactly while the text fits and part from the first token predicted from more than
# `max_seq_len` tokens. We generate 64 tokens past the window both ways. Then, to see the difference of
# the methods and not of the texts, we compute the next-token logits both ways on the *same* tokens
# (the cached run's) at every position.

# %%
N_LONG = N_FIT + 64
long_cached = model.generate(prompt, N_LONG, temperature=0)                     # (1, P + N_LONG)
long_plain = model.generate(prompt, N_LONG, temperature=0, use_cache=False)
L = cfg.max_seq_len
different = (long_cached != long_plain)[0].nonzero().flatten().tolist()
print(f"{P + N_LONG} tokens: the first {L + 1} are identical (token {L} was predicted from {L}, which fit); "
      + (f"the texts part at token {different[0]}" if different else "greedy picks agree to the end anyway"))

with torch.no_grad():
    sliding = model.new_kv_cache()
    step_logits = [model(long_cached[:, :P], cache=sliding, with_routing=False).logits[0, -1]]
    for position in range(P, P + N_LONG - 1):                           # one token at a time
        step_logits.append(model(long_cached[:, position:position + 1], cache=sliding,
                                 with_routing=False).logits[0, -1])
    cached_logits = torch.stack(step_logits)                            # (N_LONG, vocab): predicts P .. end
    window_logits = model(long_cached[:, :L], with_routing=False).logits[0, P - 1:]   # fits: one pass
    cropped = [model(long_cached[:, position - L:position], with_routing=False,
                     only_last_logits=True).logits[0, -1]
               for position in range(L + 1, P + N_LONG)]               # re-encode the last L tokens
    reencoded_logits = torch.cat([window_logits, torch.stack(cropped)])  # (N_LONG, vocab)
predicted = torch.arange(P, P + N_LONG)                                 # the position each row predicts
gap = (cached_logits - reencoded_logits).abs().max(dim=-1).values       # (N_LONG,)
inside, outside = gap[predicted <= L], gap[predicted > L]
print(f"sliding cache vs re-encoded window, max |Δlogits| per position: while the text fits "
      f"{inside.max():.1e}, past it median {outside.median():.2f} (smallest {outside.min():.3f}, "
      f"largest {outside.max():.2f})")
print(f"the sliding cache after {sliding.position} tokens: {sliding.nbytes:,} bytes = kv_cache_bytes(cfg, 1, {L}): "
      "it stopped growing")

# %%
fig, ax = plt.subplots(figsize=(10, 3.8))
ax.semilogy(predicted, gap.clamp_min(1e-9), ".", ms=4)
ax.axvline(L + 0.5, color="gray", ls="--", lw=1)
ax.text(L + 3, 1e-3, f"max_seq_len = {L}", color="gray")
ax.set(xlabel="position of the predicted token", ylabel="max |Δlogits| (log scale)",
       title="Sliding KV cache vs re-encoding the last max_seq_len tokens, on the same text")
fig.tight_layout()
plt.show()
print("the sliding cache's text past the window:\n", tok.decode(long_cached[0, L:].tolist()))

# %% [markdown]
# *What to notice:* up to position 256 the two methods differ only by float32 rounding (a few 1e-6);
# from the first token predicted from more than 256 tokens on, they differ at every step, by a few
# hundredths to half a logit, and the gap does not close. Greedy picks are robust to small changes, so
# the texts themselves part later or not at all. Neither is "the right answer": this model never saw a
# text longer than its window. The re-encoded window is what training looked like (windows starting
# mid-text); the sliding cache keeps information from beyond the window in its old keys and costs 256
# times less per step. For a model trained with sliding-window attention (Mistral 7B) the sliding cache
# is exact: the course tests that it computes what sliding-window attention over the whole text computes
# (`tests/test_model.py`). `transformers`' default cache does a third thing: it never drops a position,
# so the exported model of section 5 keeps attending to every token, across distances it never
# trained on, and `transformers` warns when a text outgrows `max_position_embeddings`.

# %% [markdown]
# ## 5. Export to Hugging Face `transformers`
#
# Our layers follow Llama / Mixtral's conventions, so the trained MoE maps one to one onto a
# `MixtralForCausalLM` (a dense model onto a `LlamaForCausalLM`). `save_hf(model, tokenizer, path)`
# writes it as `transformers` expects: `config.json`, the weights in safetensors, and the tokenizer as a
# `PreTrainedTokenizerFast` with `<|endoftext|>` as its bos, eos and pad token. We write into a
# temporary folder.

# %%
import tempfile
from pathlib import Path

from transformers.utils import logging as hf_logging

from moe_helpers.hf import check_exportable, from_hf, save_hf

hf_logging.disable_progress_bar()                  # no progress bars for a 13 MB model
EXPORT = Path(tempfile.mkdtemp(prefix="moe-export-")) / "laptop-moe"
save_hf(model, tok, EXPORT)
for path in sorted(EXPORT.iterdir()):
    print(f"{path.name:24} {path.stat().st_size / 1e6:8.3f} MB")

# %% [markdown]
# From here on, no course code: `transformers` alone loads the folder.

# %%
from transformers import AutoModelForCausalLM, AutoTokenizer

hf_model = AutoModelForCausalLM.from_pretrained(EXPORT).eval()
hf_tok = AutoTokenizer.from_pretrained(EXPORT)
hf_config = hf_model.config
print(f"{type(hf_model).__name__}: {hf_config.num_hidden_layers} layers, hidden {hf_config.hidden_size}, "
      f"{hf_config.num_local_experts} experts, {hf_config.num_experts_per_tok} per token, "
      f"{hf_config.num_key_value_heads} key/value heads, {hf_model.dtype}")
story = tok.decode(cached_out[0].tolist())
show_match(torch.tensor(hf_tok(story)["input_ids"]), torch.tensor(tok.encode(story)),
           "AutoTokenizer's ids == the course tokenizer's ids")

# %% [markdown]
# **Logits.** Both models on the same batch of validation text, 4 windows of 256 tokens:

# %%
val_batch, _ = data.batch("val", 4, cfg.max_seq_len, generator=torch.Generator().manual_seed(1))   # (4, 256)
with torch.no_grad():
    ours = model(val_batch).logits
    theirs = hf_model(val_batch).logits
logit_gap = (ours - theirs).abs()
print(f"max |Δlogits| = {logit_gap.max():.1e} (logits up to {ours.abs().max():.0f}); "
      f"at positions 0-63: {logit_gap[:, :64].max():.1e}, at 192-255: {logit_gap[:, 192:].max():.1e}")

# %% [markdown]
# Close, but not bit for bit, and the gap grows along the sequence. It comes from the rotary
# embeddings: we compute their angles $\text{pos} \cdot \theta^{-2i/d}$ in float64 and round once;
# `transformers` multiplies in float32, which is off by up to about 1e-5 radians near position 255.
# Give our model `transformers`' own tables and the gap goes away:

# %%
import copy

hf_cos, hf_sin = hf_model.model.rotary_emb(torch.zeros(1, L, cfg.d_model), torch.arange(L)[None])   # (1, L, hd)
print(f"rotary tables, ours vs transformers': max |Δcos| {(attention.rope_cos - hf_cos[0]).abs().max():.1e}, "
      f"max |Δsin| {(attention.rope_sin - hf_sin[0]).abs().max():.1e}")
same_tables = copy.deepcopy(model)
for block in same_tables.layers:
    block.attention.rope_cos.copy_(hf_cos[0])
    block.attention.rope_sin.copy_(hf_sin[0])
with torch.no_grad():
    same_tables_logits = same_tables(val_batch).logits
show_match(same_tables_logits, theirs, "our model with transformers' rotary tables == MixtralForCausalLM, logits",
           rtol=0, atol=1e-5)

# %% [markdown]
# **Generation.** `transformers`' `generate`, greedy (`do_sample=False`), from the same prompt. It keeps
# its own KV cache (a `DynamicCache`) and stops at the end-of-story token; while the text fits in the
# window it must pick the tokens our cached generation picked in section 2.

# %%
with torch.no_grad():
    hf_out = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=N_FIT,
                               do_sample=False)
written = hf_out.shape[1] - P
show_match(hf_out, cached_out[:, :hf_out.shape[1]], f"transformers' generate == ours ({written} new tokens)")
print()
print(hf_tok.decode(hf_out[0], skip_special_tokens=True))

# %% [markdown]
# Its cache holds what ours holds: the rotated keys and the values of every layer, shaped
# `(batch, n_kv_heads, positions, head_dim)`:

# %%
with torch.no_grad():
    output = hf_model(prompt, use_cache=True)
    hf_cache = output["cache"] if "cache" in output else output["past_key_values"]
    our_cache = model.new_kv_cache()
    model(prompt, cache=our_cache, with_routing=False)
layer_pairs = list(zip(hf_cache.layers, our_cache.layers))
key_gap = max((hf_layer.keys - our_layer.keys).abs().max().item() for hf_layer, our_layer in layer_pairs)
value_gap = max((hf_layer.values - our_layer.values).abs().max().item() for hf_layer, our_layer in layer_pairs)
hf_cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in hf_cache.layers)
print(f"{type(hf_cache).__name__}: {len(hf_cache.layers)} layers, keys {tuple(hf_cache.layers[0].keys.shape)}, "
      f"{hf_cache_bytes:,} bytes (ours: {our_cache.nbytes:,})")
print(f"max |Δ| keys {key_gap:.1e} (the rotary tables again), values {value_gap:.1e}")

# %% [markdown]
# **What cannot be exported.** Some course models have parts Mixtral has no place for. Exporting them
# would silently produce a model that computes something else, so `check_exportable` (called by
# `to_hf` and `save_hf`) refuses them with a `ValueError` that names the field:

# %%
REFUSED = {
    "a shared expert (DeepSeekMoE)": dict(num_shared_experts=1),
    "a dense first block": dict(first_k_dense=1),
    "top-k weights not renormalised": dict(renormalize_top_k=False),
}
refusals = {}                                     # what -> the ValueError that refused it
for what, change in REFUSED.items():
    try:
        check_exportable(GPT(cfg.replace(**change)))
    except ValueError as error:
        refusals[what] = error
        print(f"{what}:\n    ValueError: {error}")
    else:
        print(f"{what}: exported without a complaint")
check_exportable(model)                           # raises if our model had such a part
print("\nour upcycled model: exportable")

# %% [markdown]
# Noisy gating, a capacity limit and a nonzero aux-loss-free expert bias are refused the same way; the
# README lists them all, and `from_hf` likewise refuses Llama / Mixtral options our `ModelConfig` lacks
# (biases, RoPE scaling, sliding-window attention, router jitter).
#
# **And back.** `from_hf` reads a Llama / Mixtral model, or its folder, into a `GPT`. The round trip
# loses nothing: every weight comes back bit for bit, so the logits are identical too.

# %%
again = from_hf(EXPORT)
ours_state, again_state = model.state_dict(), again.state_dict()
bit_exact = ours_state.keys() == again_state.keys() and all(
    torch.equal(ours_state[name], again_state[name]) for name in ours_state)
with torch.no_grad():
    same_logits = torch.equal(again(val_batch).logits, ours)
print(f"from_hf(save_hf(model)): the same config: {again.cfg == cfg}, {len(ours_state)} tensors bit-exact: "
      f"{bit_exact}, identical logits: {same_logits}")

# %% [markdown]
# ### From a run, and onto the hub
#
# The three-phase command of notebook 06 saves each phase's model this way as it finishes:
# `<out>/hf/phase1` (a `LlamaForCausalLM`), `hf/phase2` and `hf/phase3` (`MixtralForCausalLM`), next to
# the run's `tokenizer.json`. A finished run's checkpoint can be exported again at any time with the
# `export` command:

# %%
from moe_helpers.pipeline import build_parser

try:
    build_parser().parse_args(["export", "--help"])            # what `python -m moe_helpers export --help` prints
except SystemExit:
    pass

# %% [markdown]
# Sharing the model is then two commands of the Hugging Face hub's client (`huggingface_hub`, installed
# with `transformers`; they need a network connection and a write token, so they are not run here):
#
# ```bash
# python -m moe_helpers train --preset laptop --out runs/laptop                # writes runs/laptop/hf/phase1..3
# python -m moe_helpers export runs/laptop --phase 2 --out export/laptop-moe   # or any completed phase
# hf auth login                                        # once; huggingface_hub < 1.0: huggingface-cli login
# hf upload <your-name>/laptop-moe export/laptop-moe   # huggingface_hub < 1.0: huggingface-cli upload ...
# ```
#
# (or `AutoModelForCausalLM.from_pretrained("export/laptop-moe").push_to_hub("<your-name>/laptop-moe")`).
# Anyone can then load it with `AutoModelForCausalLM.from_pretrained("<your-name>/laptop-moe")` and
# `AutoTokenizer.from_pretrained(...)`, without this course's code.
#
# The temporary folder is deleted now; set `KEEP_EXPORT = True` to keep it and look at its files.

# %%
import shutil

KEEP_EXPORT = False   # True: keep the exported folder (config.json, model.safetensors, tokenizer)
if KEEP_EXPORT:
    print("kept", EXPORT)
else:
    shutil.rmtree(EXPORT.parent)
    print("deleted", EXPORT.parent)

# %% [markdown]
# ## Exercises
#
# Each exercise asks you to implement one piece of this chapter in a stub function. Replace
# `raise NotImplementedError` with your code and run the cell below it: `check` runs your function
# on hidden test cases and compares it with the course's own implementation. It answers *not
# attempted yet*, *correct*, or *wrong* with a hint that points at the mistake (never at the
# answer). Reference solutions, for when you are done or stuck:
# `solutions/07_inference_and_hf.py` at the root of the repository.

# %%
from moe_helpers.exercises import check

# %% [markdown]
# **Exercise 1 — the cache's size by formula.** Write `kv_cache_bytes_by_hand(cfg, batch_size, seq_len,
# bytes_per_value)`: the bytes of the KV cache of a `ModelConfig` after `seq_len` tokens of `batch_size`
# sequences (section 3), from `cfg.n_layers`, `cfg.kv_heads`, `cfg.head_size` and `cfg.max_seq_len`
# (the course's cache slides, so it never holds more than `max_seq_len` positions), without
# `kv_cache_bytes`. The hidden cases include grouped-query attention, a `head_dim` that is not
# `d_model / n_heads`, and sequences longer than the window. Then: how many GiB does Mixtral-8x7B's
# cache take for 16 sequences of 32k tokens in bfloat16
# (`published_model("Mixtral-8x7B").config.replace(max_seq_len=32_768)`)?

# %%
def kv_cache_bytes_by_hand(cfg, batch_size, seq_len, bytes_per_value):
    """Bytes of keys and values cached after ``seq_len`` tokens of ``batch_size`` sequences (an int)."""
    raise NotImplementedError  # your code here


# %%
check("kv_cache_bytes_by_hand", kv_cache_bytes_by_hand)

# %% [markdown]
# **Exercise 2 — one decoding step of one attention layer.** Write `attend_with_cache(attention, x_new,
# past_keys, past_values)`: the output of the `Attention` module `attention` for one new token
# `x_new` (shape `(B, 1, d_model)`) whose earlier tokens' rotated keys and values are `past_keys`,
# `past_values` (shape `(B, n_kv_heads, T, head_dim)`, with no window limit), as in section 1.1.
# The new token sits at position `T`. Return `(output, keys, values)`: the output `(B, 1, d_model)`
# and the keys and values with the new token's appended, `(B, n_kv_heads, T + 1, head_dim)`. Use the
# module's weights (`attention.wq`, `wk`, `wv`, `wo`), its rotary tables (`attention.rope_cos`,
# `rope_sin`) and its sizes (`n_heads`, `n_kv_heads`, `head_dim`). The hidden cases include
# grouped-query attention (two query heads per key/value head), a single key/value head, a `head_dim`
# that is not `d_model / n_heads`, and an empty cache (`T = 0`, the first token).

# %%
def attend_with_cache(attention, x_new, past_keys, past_values):
    """(output (B, 1, d_model), keys (B, H_kv, T+1, hd), values (B, H_kv, T+1, hd))."""
    raise NotImplementedError  # your code here


# %%
check("attend_with_cache", attend_with_cache)

# %% [markdown]
# **Exercise 3 — the decoding loop.** Write `greedy_generate(model, prompt, new_tokens)`: greedy
# generation with the model's KV cache, as `model.generate(prompt, new_tokens, temperature=0)` does,
# in a loop of your own: make a cache with `model.new_kv_cache()`, feed the prompt once, then one token
# per step with `model(idx, cache=cache)`, appending the most likely token each time. Return the prompt
# followed by the new tokens, `(B, P + new_tokens)`. The hidden cases run a small MoE model on a
# batch of two prompts, on a text that runs past `max_seq_len` (the cache slides by itself) and with
# `new_tokens = 0`; the check also counts the tokens the model reads.

# %%
def greedy_generate(model, prompt, new_tokens):
    """prompt (B, P) -> (B, P + new_tokens), greedy, one token read per step after the prompt."""
    raise NotImplementedError  # your code here


# %%
check("greedy_generate", greedy_generate)


# %% [markdown]
# ## Further reading
#
# - [the transformers Mixtral code](https://github.com/huggingface/transformers/blob/main/src/transformers/models/mixtral/modeling_mixtral.py):
#   the model our export maps onto, layer by layer; read its sparse MoE block next to `moe_helpers.moe`.
# - [Mixtral of Experts](https://arxiv.org/abs/2401.04088) (Jiang et al. 2024): the published model
#   whose layout our MoE exports to, with an analysis of which tokens its router sends where.
# - [Mistral 7B](https://arxiv.org/abs/2310.06825) (Jiang et al. 2023): sliding-window attention and
#   the rolling-buffer KV cache that section 4's sliding cache imitates.
# - [PagedAttention](https://arxiv.org/abs/2309.06180) (Kwon et al. 2023, "Efficient memory management
#   for large language model serving"): how a serving system (vLLM) stores the KV caches of many
#   sequences in pages instead of one block each, the memory problem of section 3 at scale.
# - [DeepSeek-V2](https://arxiv.org/abs/2405.04434) (DeepSeek-AI 2024): multi-head latent attention,
#   which shrinks the KV cache further than grouped-query attention by caching a low-rank latent.

# %% [markdown]
# ## Checks — the claims above, verified
#
# These cells check every claim the lesson makes, on the numbers it computed above; `make test`
# runs them with the rest of the notebook.

# %%
# 0. training
assert last_loss < first_loss - 4.0, f"the validation loss fell from {first_loss:.2f} to {last_loss:.2f} only"
# 1. why a KV cache: the counts, the by-hand step, the model's cache
for new_tokens in (16, 64, N_FIT):
    uncached, cached = (sum(positions_read(P, new_tokens, flag)) for flag in (False, True))
    assert uncached == new_tokens * P + new_tokens * (new_tokens - 1) // 2, "the uncached count is not NP + N(N-1)/2"
    assert cached == P + new_tokens - 1, "the cached count is not P + N - 1"
assert N_FIT == 247, f"{N_FIT} new tokens fill the window"
assert read_to_fill[0] > 100 * read_to_fill[1], f"filling the window reads {read_to_fill} positions"
assert diff_full <= 1e-5 and diff_keys <= 1e-5, f"by hand vs full pass {diff_full:.1e}, keys {diff_keys:.1e}"
assert positions_cached == P + 1, f"the cache holds {positions_cached} positions"
assert diff_logits <= 1e-4, f"the cached step's logits differ by {diff_logits:.1e}"
# 2. cached generation reads one token a step; 2.1 its operations
assert cached_read == positions_read(P, N_FIT, True), "the cached run read other tokens than counted"
assert plain_read == positions_read(P, N_FIT, False), "the uncached run read other tokens than counted"
cached_counts = [cached for cached, _ in op_counts.values()]
assert len(set(cached_counts)) == 1, f"a cached step ran {cached_counts} operations at different contexts"
assert all(uncached < 2 * cached for cached, uncached in op_counts.values()), "an uncached step ran many more operations"
assert work_ratios[0] > 10 and work_ratios == sorted(work_ratios), f"arithmetic ratios {work_ratios}"

# %%
# 3. the cache's memory
for name, (measured, formula) in cache_sizes.items():
    assert measured == formula, f"{name}: KVCache.nbytes {measured:,} != kv_cache_bytes {formula:,}"
for name, gqa_bytes, mha_bytes in rows:
    published = published_model(name).config
    assert mha_bytes == gqa_bytes * published.n_heads // published.kv_heads, f"{name}: GQA should divide the cache"
mixtral_cache = kv_cache_bytes(published_model("Mixtral-8x7B").config.replace(max_seq_len=32_768), 1, 32_768,
                               torch.bfloat16)
assert mixtral_cache == 4 * GiB, f"Mixtral-8x7B's 32k cache is {mixtral_cache / GiB} GiB"
# 4. past max_seq_len
assert torch.equal(long_cached[:, :L + 1], long_plain[:, :L + 1]), "the two paths must agree while the text fits"
assert inside.max() <= 1e-4, f"while the text fits the methods differ by {inside.max():.1e}"
assert outside.median() > 1e-2 and outside.min() > 1e-3, "past the window the methods should differ at every step"
assert sliding.nbytes == kv_cache_bytes(cfg, 1, sliding.position, torch.float32) == kv_cache_bytes(cfg, 1, L, torch.float32), \
    "the sliding cache should stop growing at max_seq_len"
# 5. the export to transformers, and back
assert logit_gap.max() <= 1e-4, f"transformers' logits differ by {logit_gap.max():.1e}"
assert written == N_FIT or hf_out[0, -1] == tok.eot_id, f"transformers stopped after {written} tokens"
assert hf_cache_bytes == our_cache.nbytes == kv_cache_bytes(cfg, 1, P, torch.float32), "the caches differ in size"
assert key_gap <= 1e-5 and value_gap <= 1e-5, f"the caches differ: keys {key_gap:.1e}, values {value_gap:.1e}"
assert list(refusals) == list(REFUSED), f"refused only {list(refusals)}"
assert again.cfg == cfg and bit_exact and same_logits, "the round trip through transformers lost something"
