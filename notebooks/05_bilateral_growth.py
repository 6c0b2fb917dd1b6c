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
# # 05 · Bilateral growth
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/moe-course/moe-course/blob/main/notebooks/05_bilateral_growth.ipynb)
#
# In this notebook you will:
#
# - widen one linear layer so that it computes exactly what it computed before, and look at the
#   weight matrices before and after (Net2Net, Chen et al. 2016; bert2BERT, Chen et al. 2022);
# - grow a trained model in width (`grow_width`), in depth (`grow_depth`) and in both at once
#   (`grow`: the original note's phase 2 → 3) and check on real text that the loss does not move;
# - meet the symmetry problem: cloned units stay clones forever unless something breaks the tie,
#   and see the zero-sum noise that breaks it without changing the function;
# - cut every expert into finer experts (`split_experts`), the idea behind DeepSeekMoE;
# - answer the question growth exists for: does starting from a grown small model save training
#   compute compared with training the large model from scratch? And pull the levers that decide
#   how much: when to grow, the learning-rate schedule after growth (LEMON's faster decay), fresh
#   data and the symmetry-breaking noise.
#
# Expected run time: about two minutes on a laptop CPU.

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
# By default the small model has d_model = 64 and 2 blocks and grows into the `laptop` preset's
# dense shape (d_model = 128, 4 blocks); every run is a few hundred steps on 64-token windows. On a
# GPU, set `SCALE_UP = True`.

# %%
SCALE_UP = False   # True: full 256-token context, batch 32 and about ten times more steps (a GPU job)

# %%
import math

from moe_helpers.config import preset

P = preset("laptop")
BATCH, SEQ_LEN = (32, 256) if SCALE_UP else (16, 64)
SMALL_STEPS = 2000 if SCALE_UP else 200       # the small model, before growth
GROWN_STEPS = 2000 if SCALE_UP else 200       # the grown model, after growth
SCRATCH_STEPS = 3000 if SCALE_UP else 300     # the large model from scratch
TWIN_STEPS = 30                               # the symmetry experiment
EVAL_EVERY, EVAL_BATCHES = (100, 20) if SCALE_UP else (25, 4)
LARGE = P.model                                             # d_model 128, 4 blocks, 4 heads, d_ff 384
SMALL = LARGE.replace(d_model=LARGE.d_model // 2, n_layers=LARGE.n_layers // 2,
                      n_heads=LARGE.n_heads // 2, d_ff=LARGE.d_ff // 2)
print(f"small: d_model={SMALL.d_model}, {SMALL.n_layers} blocks, {SMALL.n_heads} heads, d_ff={SMALL.d_ff}")
print(f"large: d_model={LARGE.d_model}, {LARGE.n_layers} blocks, {LARGE.n_heads} heads, d_ff={LARGE.d_ff}")

# %% [markdown]
# ## 1. Widening one linear layer
#
# Width growth by an integer factor $n$ makes the new hidden state $n$ copies of the old one:
# $h' = [h, h, \dots, h]$. A linear map $W$ (out × in) that reads $h$ becomes $W'$ that reads $h'$:
#
# * its **input columns are tiled and divided by $n$**: $[W/n, \dots, W/n]\,[h; \dots; h] = W h$;
# * its **output rows are tiled** when its output must be copied too (the residual stream, the
#   FFN's hidden units, attention heads).
#
# So $W' = \mathrm{tile}(W, n \times n) / n$ and $W' h' = [Wh, \dots, Wh]$. Let's do it by hand on a
# 3 × 4 matrix.

# %%
from moe_helpers import figures

figures.width_growth(factor=2)   # the recipe below, drawn for n = 2


# %%
from moe_helpers.checks import show_match
from moe_helpers.growth import widen_linear


def widen_by_hand(weight: torch.Tensor, factor: int) -> torch.Tensor:
    """(out, in) -> (out * factor, in * factor): rows and columns tiled, divided by the factor."""
    return weight.repeat(factor, factor) / factor


generator = torch.Generator().manual_seed(0)
W = torch.randn(3, 4, generator=generator)                 # (out, in)
h = torch.randn(4, generator=generator)                    # (in,)
W_wide = widen_by_hand(W, 2)                               # (6, 8)
h_wide = h.repeat(2)                                       # (8,)  = [h, h]
print("W h            =", (W @ h).numpy().round(4))
print("W' [h, h]      =", (W_wide @ h_wide).numpy().round(4))
show_match(widen_linear(W, 2), W_wide, "widen_by_hand == moe_helpers.growth.widen_linear")

# %% [markdown]
# The copies have a problem we will meet in section 4: rows 0 and 3 of $W'$ are identical, so the
# two output units they compute will always be identical, and so will their gradients. The fix is
# to add $+\varepsilon$ to one copy of each input column and $-\varepsilon$ to its twin. The twins
# see the same input, so the $\pm\varepsilon$ cancel and the function is still exactly preserved,
# but now every row is different. `widen_linear(W, 2, noise=...)` does this (ε relative to W's std).

# %%
from moe_helpers.plots import plot_weight_growth

W_noisy = widen_linear(W, 2, noise=0.2, generator=torch.Generator().manual_seed(1))
perturbation = W_noisy - W_wide                                               # (6, 8): +ε in one half, -ε in the other
print("W'_noisy [h, h] =", (W_noisy @ h_wide).numpy().round(4))
plot_weight_growth({"W": W, "W' = tile(W) / 2": W_wide, "W' with ±ε noise": W_noisy},
                   title="Width growth of one linear layer, factor 2")
plt.show()

# %% [markdown]
# *What to notice:* $W'$ is four tiles of $W/2$ (lighter colours: the values are halved); with noise
# the tiles differ slightly, but the two halves of every row still add up to that row of $W$.
#
# The rest of the model follows the same rule:
#
# * **token embedding**: tiled along the hidden dimension, *not* divided (it creates $h$, it does
#   not read it);
# * **RMSNorm**: gains tiled; the RMS of $[h, h]$ equals the RMS of $h$, so the normalised copies
#   are exact copies;
# * **attention**: query, key and value heads are duplicated, head_dim unchanged, so RoPE and the
#   $1/\sqrt{d_{head}}$ scale are untouched; with grouped-query attention the key/value heads are
#   tiled too, so every query head still reads its own group;
# * **router and LM head**: input columns tiled / $n$, outputs *not* duplicated: identical router
#   logits (identical routing) and identical token logits.

# %%
from moe_helpers.layers import RMSNorm

norm_small, norm_wide = RMSNorm(4), RMSNorm(8)
with torch.no_grad():
    norm_small.weight.copy_(torch.randn(4, generator=generator))
    norm_wide.weight.copy_(norm_small.weight.repeat(2))                        # gains tiled
show_match(norm_wide(h_wide), norm_small(h).repeat(2), "RMSNorm([h, h]) == [RMSNorm(h), RMSNorm(h)]")

# %% [markdown]
# ## 2. A small model, grown in width
#
# We train the small model for a while (growth on an untrained model proves little), then widen it
# by 2 and compare the two on a real validation batch.

# %%
from moe_helpers.accounting import count_parameters
from moe_helpers.data import prepare_preset_data
from moe_helpers.growth import grow, grow_depth, grow_width, preservation_report
from moe_helpers.model import GPT
from moe_helpers.train import train_phase

data = prepare_preset_data(P)                          # notebook 01's stories, tokenizer and token file
TRAIN = P.train.replace(batch_size=BATCH, seq_len=SEQ_LEN, log_every=EVAL_EVERY * 2, eval_every=EVAL_EVERY,
                        eval_batches=EVAL_BATCHES, device=str(device))
torch.manual_seed(0)
small = GPT(SMALL)
small_history = train_phase(small, data, TRAIN.replace(steps_phase1=SMALL_STEPS), progress=False)
val_idx, val_targets = data.batch("val", BATCH, SEQ_LEN, device, torch.Generator().manual_seed(1))


def describe(name: str, model) -> None:
    counts = count_parameters(model)
    cfg = model.cfg
    print(f"{name:>14}: d_model={cfg.d_model:4d}, {cfg.n_layers} blocks, {cfg.n_heads} heads, "
          f"d_ff={cfg.d_ff:4d}: {counts.total / 1e6:.3f} M parameters")


wide = grow_width(small, 2)
describe("small", small)
describe("width x2", wide)
wide_report = preservation_report(small, wide, val_idx, val_targets)
print(wide_report)

# %% [markdown]
# ## 3. Depth, and both at once
#
# A pre-norm block computes $h = x + \mathrm{Attn}(\mathrm{norm}(x))$ and
# $y = h + \mathrm{FFN}(\mathrm{norm}(h))$. If the attention output projection `wo` and the FFN's
# down projection `w2` are zero, both additions add zero: **the block is the identity**. `grow_depth`
# inserts such blocks, each a copy of its neighbour apart from those two zero matrices. This is the
# block expansion of LLaMA Pro (Wu et al. 2024): copied, zero-initialised blocks that leave the
# function unchanged, and whose copied weights are a better start than random ones once `wo`/`w2`
# wake up. (G_stack, Du et al. 2024, also stacks copies of blocks but keeps their output
# projections, so it does *not* preserve the function: the loss jumps and then recovers.)

# %%
figures.depth_growth()   # a new block whose wo and w2 are zero adds nothing to the stream


# %%
deep = grow_depth(small, 2)                            # "interleave": each new block after the one it copies
describe("depth +2", deep)
new_block = deep.layers[1]                             # a copy of block 0
print("new block: |wo| =", new_block.attention.wo.weight.abs().max().item(),
      " |w2| =", new_block.ffn.w2.weight.abs().max().item(),
      " wq equal to block 0's:", torch.equal(new_block.attention.wq.weight, small.layers[0].attention.wq.weight))
deep_report = preservation_report(small, deep, val_idx, val_targets)
print(deep_report)

# %% [markdown]
# Bilateral growth does both: width × 2 *and* two more blocks, the original note's phase 2 → 3. The
# note asked for a jump below 0.001; exact recipes give float32 rounding.

# %%
grown = grow(small, 2, 2)
describe("bilateral", grown)
grown_report = preservation_report(small, grown, val_idx, val_targets)
print(grown_report)

# %% [markdown]
# ## 4. The symmetry problem, with a real run
#
# After width growth, hidden unit $u$ and its copy $u + d_{ff}$ have identical incoming weights.
# Without noise their outgoing weights are identical too, so they receive identical gradients,
# AdamW makes identical updates, and they stay identical **forever**: the wide model has the
# capacity of the small one. With the ±ε noise the outgoing weights differ, the gradients differ,
# and the twins separate, while the function at the moment of growth is still preserved.
#
# We widen the small model twice, with `noise=0` and with the default `noise=0.01`, train both for a
# few steps, and measure the largest difference between twin units on a fixed batch: block 0's FFN
# hidden units ($u$ vs $u + d_{ff}$) and the residual stream at the top ($j$ vs $j + d_{model}$),
# relative to the largest activation.

# %%
from moe_helpers.plots import plot_drift
from moe_helpers.train import make_optimizer


def twin_gaps(model, idx) -> tuple[float, float]:
    """Largest relative difference between twin units of a model widened by 2: block 0's FFN hidden
    units and the residual stream entering the final norm, on tokens ``idx``."""
    captured = {}
    hooks = [model.layers[0].ffn.w2.register_forward_pre_hook(lambda m, args: captured.__setitem__("ffn", args[0])),
             model.norm.register_forward_pre_hook(lambda m, args: captured.__setitem__("stream", args[0]))]
    model.eval()
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    gaps = []
    for values in (captured["ffn"], captured["stream"]):           # (B, T, 2 * width)
        first, second = values.chunk(2, dim=-1)                    # the twins: unit u and u + width
        gaps.append(((first - second).abs().max() / values.abs().max()).item())
    return gaps[0], gaps[1]


def train_and_measure_twins(model, steps: int, lr: float = 1e-3) -> list[tuple[float, float]]:
    """A bare AdamW loop; the twin gaps on the validation batch before every step and at the end."""
    optimizer = make_optimizer(model, lr, P.train.weight_decay)
    batches = torch.Generator().manual_seed(0)
    gaps = [twin_gaps(model, val_idx)]
    for _ in range(steps):
        model.train()
        loss = model(*data.batch("train", BATCH, SEQ_LEN, device, batches)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        gaps.append(twin_gaps(model, val_idx))
    return gaps


twin_runs = {noise: train_and_measure_twins(grow_width(small, 2, noise=noise, verbose=False), TWIN_STEPS)
             for noise in (0.0, 0.01)}
steps = list(range(TWIN_STEPS + 1))
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for ax, (part, name) in zip(axes, enumerate(("block 0 FFN hidden units", "residual stream at the top"))):
    plot_drift({f"noise={noise}": (steps, [gap[part] for gap in gaps]) for noise, gaps in twin_runs.items()},
               ax=ax, title=f"Twins after width growth x2: {name}",
               ylabel="max |twin difference| / max |activation|")
plt.tight_layout()
plt.show()

# %% [markdown]
# *What to notice:* without noise the twins stay *exactly* equal (the curve sits on zero); with
# noise they start equal (the function is preserved) and separate at once: AdamW normalises each
# weight's update, so where a gradient is near zero even a tiny difference between twins becomes a
# full-size step.

# %%
for noise, gaps in twin_runs.items():
    print(f"noise={noise}: twin gaps at step 0 = ({gaps[0][0]:.1e}, {gaps[0][1]:.1e}), "
          f"after {TWIN_STEPS} steps = ({gaps[-1][0]:.1e}, {gaps[-1][1]:.1e})")

# %% [markdown]
# ## 5. Splitting experts: fine-grained MoE
#
# A SwiGLU FFN is a sum over its hidden units:
# $\mathrm{FFN}(x) = \sum_u w_{2,u}\,\mathrm{SiLU}(w_{1,u} x)\,(w_{3,u} x)$. Cut the hidden units into
# $m$ slices and each slice is a smaller FFN; the slices add up to the whole.

# %%
from moe_helpers.growth import split_experts
from moe_helpers.layers import FeedForward

ffn = small.layers[0].ffn
x = torch.randn(5, SMALL.d_model, generator=generator)          # (N, d_model)
halves = []
for part in range(2):
    piece = FeedForward(SMALL.d_model, SMALL.d_ff // 2)
    rows = slice(part * SMALL.d_ff // 2, (part + 1) * SMALL.d_ff // 2)
    with torch.no_grad():
        piece.w1.weight.copy_(ffn.w1.weight[rows])              # (d_ff/2, d_model)
        piece.w3.weight.copy_(ffn.w3.weight[rows])
        piece.w2.weight.copy_(ffn.w2.weight[:, rows])           # (d_model, d_ff/2)
    halves.append(piece)
with torch.no_grad():
    show_match(halves[0](x) + halves[1](x), ffn(x), "first half(x) + second half(x) == FFN(x)")

# %% [markdown]
# `split_experts(moe, m)` does this to every expert of an MoE: expert $e$ becomes experts
# $em, \dots, em + m - 1$. Their router rows are copies of $e$'s row, so each slice gets probability
# $p_e / m$ and `top_k` becomes $k\,m$ (all slices of the chosen experts are picked); multiplying the
# down projections by $m$ undoes the $1/m$. The total and active parameter counts stay the same
# (apart from the larger router).
#
# To have experts worth splitting, we upcycle the small model (4 experts, top-2) and train it briefly.

# %%
from moe_helpers.growth import upcycle

moe = upcycle(small, 4, 2)
train_phase(moe, data, TRAIN.replace(steps_phase2=30, log_every=30, eval_every=30), phase=2, progress=False)
fine = split_experts(moe, 2)
for name, model in (("MoE", moe), ("split x2", fine)):
    counts = count_parameters(model)
    print(f"{name:>9}: {model.cfg.num_experts} experts of d_ff={model.cfg.d_ff}, top-{model.cfg.top_k}: "
          f"{counts.total / 1e6:.4f} M total, {counts.active / 1e6:.4f} M active per token")
split_report = preservation_report(moe, fine, val_idx, val_targets)
print(split_report)
router_growth = count_parameters(fine).by_part["router"] - count_parameters(moe).by_part["router"]
active_growth = count_parameters(fine).active - count_parameters(moe).active
print(f"active parameters gained: {active_growth:,}, all of them in the larger router ({router_growth:,})")

# %% [markdown]
# At the moment of the split the finer experts are tied in pairs, but they are separate experts now:
# training can route a token to one half of an old expert without the other. That is the point of
# **fine-grained expert segmentation** in DeepSeekMoE (Dai et al. 2024): split each of $N$ experts
# into $m$ smaller ones and activate $mK$ instead of $K$. Parameters and FLOPs per token stay the
# same, but the number of ways to combine experts explodes, so each expert can specialise more
# narrowly. DeepSeekMoE pairs this with **shared experts** that every token uses (the course's
# `num_shared_experts`), which hold the common knowledge so the routed experts need not repeat it.

# %%
for experts, active in ((4, 2), (8, 4), (16, 2), (64, 8)):
    print(f"top-{active} of {experts:2d} experts: {math.comb(experts, active):>13,} possible expert combinations")

# %% [markdown]
# ## 6. Does growth save compute?
#
# Function preservation is a means, not an end. The point of growing is to reach a good large
# model **with less training compute** than training that large model from scratch. We already paid
# for the small model; now we train the grown model on, and a large model of exactly the same shape
# from scratch, and plot both validation curves against training FLOPs (forward + backward, PaLM's
# convention: `flops_per_token(cfg, seq_len).training` × tokens). The grown curve starts at the
# FLOPs the small model already used. `moe_helpers.growth_compute` turns a run's `History` into
# such a curve (`flops_curve`) and finds where a curve first reaches a loss (`flops_to_reach`,
# linear between evaluations).
#
# First the naive recipe: the grown model is trained exactly like the from-scratch model (warmup
# to the same peak learning rate, cosine decay over its 200 steps) and, with the same seed, it
# even reads the same batches the small model already read.

# %%
from matplotlib.ticker import FuncFormatter

from moe_helpers.accounting import flops_per_token
from moe_helpers.growth_compute import compute_saved, flops_curve, flops_to_reach
from moe_helpers.plots import plot_loss_vs_flops

tokens_per_step = BATCH * SEQ_LEN
small_flops = flops_per_token(SMALL, SEQ_LEN).training                 # per training token
large_flops = flops_per_token(grown.cfg, SEQ_LEN).training
print(f"training FLOPs per token: small {small_flops / 1e6:.2f} M, large {large_flops / 1e6:.2f} M "
      f"(x{large_flops / small_flops:.1f})")

# The naive recipe: the from-scratch model's peak learning rate, warmup, decay and seed; no tuning for growth.
grown_history = train_phase(grown, data, TRAIN.replace(steps_phase1=GROWN_STEPS), progress=False)
torch.manual_seed(1)
scratch = GPT(grown.cfg)
scratch_history = train_phase(scratch, data, TRAIN.replace(steps_phase1=SCRATCH_STEPS), progress=False)
print(f"validation loss: small {small_history.last_val_loss:.3f} after {SMALL_STEPS} steps; grown "
      f"{grown_history.evaluated()[0]['val_loss']:.3f} -> {grown_history.last_val_loss:.3f} after {GROWN_STEPS} "
      f"more; from scratch {scratch_history.last_val_loss:.3f} after {SCRATCH_STEPS}")

small_cost = SMALL_STEPS * tokens_per_step * small_flops
small_curve = flops_curve(small_history, small_flops)
grown_curve = flops_curve(grown_history, large_flops, already_spent=small_cost)
scratch_curve = flops_curve(scratch_history, large_flops)
target = scratch_curve[1][-1]                                   # the from-scratch model's final loss
scratch_cost = scratch_curve[0][-1]
grown_cost = flops_to_reach(*grown_curve, target)
saving = compute_saved(grown_curve, scratch_curve)              # 1 - grown_cost / scratch_cost, or None

# %% [markdown]
# ### Growing later, decaying sooner
#
# Three levers decide how much growth saves (`benchmarks/growth_levers.py` pulls each of them, and
# the symmetry-breaking noise of section 4, on exactly this setup):
#
# * **When to grow.** The small model costs about a fifth of the large one per token and learns
#   fast at first, so each step it takes in place of the large model is cheap progress.
# * **The learning-rate schedule after growth.** LEMON (Wang et al. 2023) keeps the peak learning
#   rate but decays faster than a from-scratch run: the grown model starts from a trained function
#   and needs fewer steps at a high learning rate.
# * **Fresh data.** The grown model should read batches the small model has not read already.
#
# So we train a second small model for 300 steps instead of 200, grow it, and train the grown
# model for 150 steps instead of 200 (its cosine decays over those 150), on fresh batches.

# %%
LATE_SMALL_STEPS = 3000 if SCALE_UP else 300    # the small model trains 1.5x longer before growth ...
LATE_GROWN_STEPS = 1500 if SCALE_UP else 150    # ... and the grown model decays over 3/4 of the steps
torch.manual_seed(0)
late_small = GPT(SMALL)
late_small_history = train_phase(late_small, data, TRAIN.replace(steps_phase1=LATE_SMALL_STEPS), progress=False)
late_grown = grow(late_small, 2, 2, verbose=False)
late_grown_history = train_phase(late_grown, data, TRAIN.replace(steps_phase1=LATE_GROWN_STEPS,
                                                                 seed=TRAIN.seed + 1000),   # fresh batches
                                 progress=False)
late_small_cost = LATE_SMALL_STEPS * tokens_per_step * small_flops
late_small_curve = flops_curve(late_small_history, small_flops)
late_grown_curve = flops_curve(late_grown_history, large_flops, already_spent=late_small_cost)
late_grown_cost = flops_to_reach(*late_grown_curve, target)
late_saving = compute_saved(late_grown_curve, scratch_curve)
for small_run, grown_run in ((small_history, grown_history), (late_small_history, late_grown_history)):
    first, second = (record["val_loss"] for record in grown_run.evaluated()[:2])
    print(f"small model's last validation loss {small_run.last_val_loss:.4f}; the grown model's first "
          f"two {first:.4f}, {second:.4f}")

ax = plot_loss_vs_flops({f"small model, {SMALL_STEPS} steps": small_curve,
                         f"grown after {SMALL_STEPS}: the from-scratch recipe": grown_curve,
                         f"small model, {LATE_SMALL_STEPS} steps": late_small_curve,
                         f"grown after {LATE_SMALL_STEPS}: {LATE_GROWN_STEPS}-step decay, fresh batches":
                             late_grown_curve,
                         "large, from scratch": scratch_curve},
                        target_loss=target, events={"grown here": small_cost, "grown later": late_small_cost},
                        title="Growth versus training the large model from scratch")
for cost, color in ((grown_cost, "C1"), (late_grown_cost, "C3")):
    if cost is not None:
        ax.plot([cost], [target], "*", color=color, mec="k", ms=14,
                label="reaches the target" if color == "C1" or grown_cost is None else None)
ax.xaxis.set_major_formatter(FuncFormatter(lambda flops, _: f"{flops / 1e12:g}"))   # FLOPs -> TFLOPs
ax.set_xlabel("training compute (TFLOPs, forward + backward)")
ax.legend(fontsize=8)
ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
plt.show()

# %% [markdown]
# *What to notice:* both grown curves start where their small model stopped (no jump) and then rise
# for an evaluation or two: the re-warmup takes AdamW, whose moment estimates start from zero,
# back to the full learning rate. The stars mark where each grown model reaches the from-scratch
# model's final loss (dashed line); their distance from the end of the from-scratch curve is the
# compute saved. The small model that trained longer hands over a lower loss for little extra
# compute, and its grown model's short decay takes it to the target well before the naive one.
#
# The same three runs as bars: the compute each recipe spent until it reached the target, the small
# model's share first.

# %%
print(f"target: the from-scratch model's final validation loss {target:.4f} after {scratch_cost / 1e12:.2f} TFLOPs")
recipes = {f"grown after {SMALL_STEPS} small steps\n(the from-scratch recipe)": (small_cost, grown_cost, saving),
           f"grown after {LATE_SMALL_STEPS} small steps\n({LATE_GROWN_STEPS}-step decay, fresh batches)":
               (late_small_cost, late_grown_cost, late_saving)}
bars = {"large model, from scratch": (0.0, scratch_cost, None), **recipes}
fig, ax = plt.subplots(figsize=(10, 3.2))
for row, ((name, (spent, cost, saved)), (small_color, large_color)) in enumerate(
        zip(bars.items(), (("C4", "C4"), ("C0", "C1"), ("C2", "C3")))):
    ax.barh(row, spent / 1e12, color=small_color, edgecolor="k", lw=0.5)              # the small model
    if cost is None:                                                                   # never reached the target
        ax.text(spent / 1e12, row, "  the grown model never reached the target", va="center", fontsize=9)
        continue
    ax.barh(row, (cost - spent) / 1e12, left=spent / 1e12, color=large_color, edgecolor="k", lw=0.5)
    label = f"  {cost / 1e12:.2f} TFLOPs" + ("" if saved is None else f": {saved:.0%} less compute")
    ax.text(cost / 1e12, row, label, va="center", fontsize=9)
ax.set_yticks(range(len(bars)), list(bars), fontsize=9)
ax.invert_yaxis()
ax.set_xlim(0, 1.45 * scratch_cost / 1e12)
ax.set(xlabel="training compute until the target loss is reached (TFLOPs)",
       title="Compute saved by growth: the small model (left part of a bar), then the grown one")
fig.tight_layout()
plt.show()
for name, (spent, cost, saved) in recipes.items():
    name = name.replace("\n", " ")
    if cost is None:
        print(f"{name}: the small model used {spent / 1e12:.2f} TFLOPs; the grown model never reached the target")
    else:
        print(f"{name}: the small model used {spent / 1e12:.2f} TFLOPs ({spent / scratch_cost:.0%}); the target "
              f"after {cost / 1e12:.2f} TFLOPs in all: {saved:.1%} less compute than from scratch")
print(f"the small model alone, after {LATE_SMALL_STEPS} steps: validation loss {late_small_history.last_val_loss:.3f}, "
      f"the target {target:.3f}")

# %% [markdown]
# *What to notice:* growing later costs the small model a little more compute (its part of the
# bar), and saves much more than that on the large one. Neither small model comes near the target on
# its own: the grown model does the rest of the work.
#
# **Where this run lands, and why.** The published numbers come from models of 100 M to 7 B
# parameters trained for tens of thousands of steps or more: bert2BERT (Chen et al. 2022) saves
# about 45% of BERT-base's pre-training compute, LiGO (Wang et al. 2023, "Learning to grow
# pretrained models") about 45% of BERT's FLOPs, LEMON (Wang et al. 2023, "Lossless model
# expansion") 33% for BERT and 57% for a Vision Transformer, and G_stack (Du et al. 2024) reaches a
# 7 B model's loss with 194 B tokens instead of 300 B (a 54.6% speed-up, 35% fewer tokens). This
# run is a 1 M-parameter model trained for a few hundred steps. `benchmarks/growth_levers.py` pulls
# each lever on its own on exactly this setup, and measures the two recipes above over five seeds.
# What its sweep shows:
#
# * *When to grow is the big lever here.* The small model costs about a fifth of the large one per
#   token, and a few hundred steps in it is still learning fast, so every step it takes in place of
#   the large model is cheap progress. Grown after only 75 or 150 steps, the grown model never
#   reaches the target. Pushed the other way, the comparison stops being about growth: after 500
#   steps the small model *alone* beats the large model's 300. At a budget this small the smaller
#   model is the better buy (the compute-optimal trade-off of Hoffmann et al. 2022), which is why
#   the second recipe grows after 300 steps and not later.
# * *Re-warm, then decay fast -- once the small model has done its part.* Skipping the re-warmup is
#   the worst change of all: AdamW's first steps at the full learning rate, with moment estimates
#   starting from zero, knock a trained model back (the rise after growth above, even with 10 warmup
#   steps), and it never recovers in time. LEMON's faster decay pays only once the small model has
#   trained longer: grown early, the model still has too much to learn for a short decay.
# * *Symmetry-breaking noise matters only at zero.* With `noise=0` the twins stay clones (section 4)
#   and the grown model misses the target; any small noise (1e-3 to 3e-2) does about as well.
# * *Fresh data helps a little.* With one seed for both runs the grown model re-reads the small
#   model's batches; fresh batches add a point or two.
#
# What still works against growth here: the from-scratch baseline is short and still falling fast
# (cheap to beat early, hard to beat late), and the small model's LM head (vocabulary x d_model) is
# a large share of its FLOPs, so it is not as cheap relative to the large model as a small LLM would
# be. Set `SCALE_UP = True` on a GPU to see the numbers move as the runs get longer (the bounds of
# the Checks section at the end were chosen at the default scale).

# %% [markdown]
# ## Exercises
#
# Each exercise asks you to implement one piece of this chapter in a stub function. Replace
# `raise NotImplementedError` with your code and run the cell below it: `check` runs your function
# on hidden test cases and compares it with the course's own implementation. It answers *not
# attempted yet*, *correct*, or *wrong* with a hint that points at the mistake (never at the
# answer). Reference solutions, for when you are done or stuck:
# `solutions/05_bilateral_growth.py` at the root of the repository.

# %%
from moe_helpers.exercises import check

# %% [markdown]
# **Exercise 1 — widen an FFN.** Write `widen_ffn(ffn, factor)`: from a SwiGLU `FeedForward` with
# input width `d_model` and hidden size `d_ff`, return a **new** `FeedForward(d_model * factor,
# d_ff * factor)` that maps `[x, ..., x]` (`factor` copies) to `[FFN(x), ..., FFN(x)]`, by section
# 1's rule applied to each of `w1`, `w3` and `w2`. Leave `ffn` as it was. The hidden cases include
# `factor = 1` and 3.

# %%
def widen_ffn(ffn, factor):
    """FeedForward(d, d_ff) -> FeedForward(d * factor, d_ff * factor), the function preserved."""
    raise NotImplementedError  # your code here


# %%
check("widen_ffn", widen_ffn)

# %% [markdown]
# **Exercise 2 — a new block that does nothing (yet).** Write `identity_copy(block)`: from a
# `moe_helpers.model.Block` (dense or MoE), return a copy whose output projections are zero, so
# that it returns its input unchanged (section 3): attention's `wo` and every FFN down projection
# `w2` (in an MoE block: every expert's and every shared expert's). Everything else stays an exact
# copy, and the block you were given stays as it was. The checker calls `your_block(x)[0]`
# (a `Block` returns its output and its routing record).

# %%
def identity_copy(block):
    """A new Block, a copy of ``block`` that computes the identity."""
    raise NotImplementedError  # your code here


# %%
check("identity_copy", identity_copy)

# %% [markdown]
# **Exercise 3 — split an FFN.** Write `split_ffn(ffn, parts)`: cut the hidden units of a
# `FeedForward(d_model, d_ff)` into `parts` equal slices and return them as a list of `parts`
# `FeedForward(d_model, d_ff // parts)` whose outputs add up to `ffn(x)` (section 5, for any number
# of parts).

# %%
def split_ffn(ffn, parts):
    """FeedForward(d, d_ff) -> a list of ``parts`` FeedForward(d, d_ff // parts) that add up to it."""
    raise NotImplementedError  # your code here


# %%
check("split_ffn", split_ffn)


# %% [markdown]
# ## Further reading
#
# - [Net2Net](https://arxiv.org/abs/1511.05641) (Chen, Goodfellow and Shlens 2016): the
#   function-preserving widening and deepening of section 1, and why a grown network needs noise.
# - [bert2BERT](https://arxiv.org/abs/2110.07143) (Chen et al. 2022): width growth of a whole
#   Transformer, and the ~45% saving of BERT-base's pre-training compute quoted in section 6.
# - [LiGO](https://arxiv.org/abs/2303.00980) (Wang et al. 2023): learns the growth operator instead of
#   copying, for a similar saving.
# - [LEMON](https://arxiv.org/abs/2310.07999) (Wang et al. 2023): lossless expansion and the faster
#   learning-rate decay after growth used in section 6.
# - [LLaMA Pro](https://arxiv.org/abs/2401.02415) (Wu et al. 2024): block expansion with
#   zero-initialised output projections, section 3's depth growth, on a 7 B model.
# - [Sparse upcycling](https://arxiv.org/abs/2212.05055) (Komatsuzaki et al. 2023): the dense-to-MoE
#   step (notebook 04) that section 5 starts from.
# - [DeepSeekMoE](https://arxiv.org/abs/2401.06066) (Dai et al. 2024): fine-grained expert
#   segmentation and shared experts, the idea behind `split_experts`.
# - [Chinchilla](https://arxiv.org/abs/2203.15556) (Hoffmann et al. 2022): compute-optimal model
#   size, why a small model is the better buy at a small budget.

# %% [markdown]
# ## Checks — the claims above, verified
#
# These cells check every claim the lesson makes, on the numbers it computed above; `make test`
# runs them with the rest of the notebook.

# %%
# 1. widening one linear layer: exact copies, and the ±ε noise cancels
assert torch.allclose(W_wide @ h_wide, (W @ h).repeat(2), atol=1e-5), "W' [h, h] is not [W h, W h]"
assert torch.allclose(W_noisy @ h_wide, (W @ h).repeat(2), atol=1e-5), "the ±ε noise changed the function"
assert torch.allclose(perturbation[:, :4] + perturbation[:, 4:], torch.zeros(6, 4), atol=1e-5), \
    "+ε and -ε do not cancel"
# 2, 3, 5. every growth step preserves the function; a new block starts as the identity
for name, report in (("width x2", wide_report), ("depth +2", deep_report), ("bilateral", grown_report),
                     ("split x2", split_report)):
    assert abs(report.jump) < 1e-5, f"{name}: growth moved the loss by {report.jump:.1e}"
    assert report.max_abs_logit_diff < 1e-4, f"{name}: growth moved the logits by {report.max_abs_logit_diff:.1e}"
assert new_block.attention.wo.weight.abs().max() == 0 and new_block.ffn.w2.weight.abs().max() == 0, \
    "the new block's wo and w2 are not zero"
assert (grown.cfg.d_model, grown.cfg.n_layers, grown.cfg.d_ff) == (LARGE.d_model, LARGE.n_layers, LARGE.d_ff), \
    "bilateral growth did not reach the large model's shape"
# 4. the symmetry problem
assert all(gap == (0.0, 0.0) for gap in twin_runs[0.0]), "without noise the twins separated"
assert max(twin_runs[0.01][0]) < 1e-5, "with noise the twins should start equal"
assert min(twin_runs[0.01][-1]) > 1e-3, "with noise the twins should separate"
# 5. splitting experts: only the router grows; many more combinations
assert active_growth == router_growth, "splitting changed the active parameters outside the router"
assert math.comb(64, 8) > 10**7 * math.comb(16, 2), "64 experts, top-8, should give far more combinations"

# %%
# 6. compute saved by growth
assert 0.15 < small_flops / large_flops < 0.3, f"the small model costs {small_flops / large_flops:.2f}x the large one"
for small_run, grown_run in ((small_history, grown_history), (late_small_history, late_grown_history)):
    first, second = (record["val_loss"] for record in grown_run.evaluated()[:2])
    assert abs(first - small_run.last_val_loss) < 1e-5, f"growth moved the loss by {first - small_run.last_val_loss:.1e}"
    assert second > first, "the loss should rise after growth, during the re-warmup"
assert late_small_history.last_val_loss < small_history.last_val_loss, "the longer-trained small model should be better"
assert late_small_cost - small_cost < 0.1 * scratch_cost, "growing later should cost the small model little"
assert late_small_history.last_val_loss > target + 0.2, "the small model alone should stay far above the target"
for name, (spent, cost, saved) in recipes.items():
    assert cost is None or (0 < cost and -1 < saved < 1), f"{name}: compute {cost}, saved {saved}"
assert late_saving is not None and late_saving > 0.25, f"growing later and decaying sooner saved {late_saving}"
assert saving is None or late_saving > saving + 0.05, f"the levers saved {late_saving:.1%}, the naive recipe {saving:.1%}"
