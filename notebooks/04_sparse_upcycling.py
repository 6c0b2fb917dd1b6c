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
# # 04 · Sparse upcycling
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/moe-course/moe-course/blob/main/notebooks/04_sparse_upcycling.ipynb)
#
# In this notebook you will:
#
# - train a small dense language model, then turn it into a Mixture-of-Experts model by copying its
#   feed-forward network (FFN) into every expert: **sparse upcycling** (Komatsuzaki et al. 2023);
# - check on real validation text that the upcycled model computes *the same function* (the loss
#   moves by float rounding only), and see why renormalised top-k weights are what make this exact;
# - measure the jump you get *without* renormalisation;
# - find out why the router learns nothing from the language-model loss while the experts are
#   identical, and watch the experts drift apart as different tokens reach them;
# - compare training the MoE on with training the dense model on for the same compute.
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
# The defaults train the `laptop` preset's dense model on short 64-token windows for a few hundred
# steps, which a 2-core CPU does in about two minutes. On a GPU, set `SCALE_UP = True`.

# %%
SCALE_UP = False   # True: full 256-token context, batch 32 and ten times more steps (a GPU job)

# %%
import copy
import math

import torch.nn.functional as F

from moe_helpers.config import preset

P = preset("laptop")
BATCH, SEQ_LEN = (32, 256) if SCALE_UP else (16, 64)
DENSE_STEPS = 2000 if SCALE_UP else 150       # phase 1: the dense model
MOE_STEPS = 1000 if SCALE_UP else 100         # phase 2: the upcycled MoE
EVAL_EVERY, EVAL_BATCHES = (100, 20) if SCALE_UP else (25, 4)
NUM_EXPERTS, TOP_K = P.num_experts, P.top_k   # the preset's phase 2: 4 experts, top-2
print(f"dense model: d_model={P.model.d_model}, {P.model.n_layers} layers, d_ff={P.model.d_ff}; "
      f"upcycled into {NUM_EXPERTS} experts, top-{TOP_K}; batches of {BATCH} x {SEQ_LEN} tokens")

# %% [markdown]
# ## 1. A dense model to start from
#
# Upcycling only makes sense for a model that has learned something: its FFNs are what every
# expert inherits. We train the `laptop` dense model for a short while.

# %%
from moe_helpers.data import prepare_preset_data
from moe_helpers.model import GPT
from moe_helpers.train import train_phase

data = prepare_preset_data(P)                          # notebook 01's stories, tokenizer and token file
TRAIN = P.train.replace(batch_size=BATCH, seq_len=SEQ_LEN, log_every=EVAL_EVERY, eval_every=EVAL_EVERY,
                        eval_batches=EVAL_BATCHES, device=str(device))
torch.manual_seed(0)
dense = GPT(P.model)
dense_history = train_phase(dense, data, TRAIN.replace(steps_phase1=DENSE_STEPS), progress=False)
dense_start_loss = dense_history.evaluated()[0]["val_loss"]
print(f"dense validation loss: {dense_start_loss:.3f} at step 0 -> {dense_history.last_val_loss:.3f} "
      f"after {DENSE_STEPS} steps")

# %% [markdown]
# ## 2. Upcycling one layer by hand
#
# An MoE layer with router probabilities $p = \mathrm{softmax}(x W_r)$ sends token $x$ to the set
# $S$ of its top-$k$ experts and mixes their outputs with the renormalised weights
#
# $$g_i = \frac{p_i}{\sum_{j \in S} p_j}, \qquad y = \sum_{i \in S} g_i\, E_i(x).$$
#
# Make every expert a copy of the dense FFN, $E_i = \mathrm{FFN}$. Then
# $y = \mathrm{FFN}(x) \sum_{i \in S} g_i = \mathrm{FFN}(x)$, **whatever the router says**: the
# renormalised weights sum to one. So the router can start random, and the model is unchanged.
#
# Here is that recipe for one layer, checked on the real hidden states that enter block 0's FFN.

# %%
from moe_helpers import figures

figures.upcycling(num_experts=4)   # one trained FFN copied into every expert, a new router in front


# %%
from moe_helpers.checks import show_match
from moe_helpers.moe import MoELayer


def upcycle_ffn(ffn, num_experts: int, top_k: int) -> MoELayer:
    """An MoE layer whose experts are all copies of ``ffn``, with a new (random) router.

    Renormalised top-k (Mixtral), so sum_i g_i = 1 and the layer computes ffn(x) exactly."""
    d_ff, d_model = ffn.w1.weight.shape                              # w1: (d_ff, d_model)
    layer = MoELayer(d_model, d_ff, num_experts, top_k)
    for expert in layer.experts:
        expert.load_state_dict(ffn.state_dict())                     # E_i = FFN for every i
    return layer.to(ffn.w1.weight.device)


def ffn_inputs(model, idx) -> list:
    """The normalised hidden states entering each block's FFN on tokens ``idx``: one (B, T, d_model) per block."""
    captured = []
    hooks = [block.ffn.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
             for block in model.layers]
    model.eval()
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    return captured


val_idx, val_targets = data.batch("val", BATCH, SEQ_LEN, device, torch.Generator().manual_seed(1))
x = ffn_inputs(dense, val_idx)[0]                                     # (B, T, d_model), block 0
torch.manual_seed(0)
by_hand = upcycle_ffn(dense.layers[0].ffn, NUM_EXPERTS, TOP_K)
with torch.no_grad():
    dense_out, by_hand_out = dense.layers[0].ffn(x), by_hand(x)       # (B, T, d_model) each
print(f"block 0 on {x.shape[0] * x.shape[1]} real tokens: max |MoE(x) - FFN(x)| = "
      f"{(by_hand_out - dense_out).abs().max().item():.2e}")

# %% [markdown]
# `moe_helpers.growth.upcycle` does this for every block (each with its own random router) and
# returns a new model; the dense model is left untouched. `preservation_report` runs both models on
# the same real validation batch and compares logits, cross-entropy and (when comparable) routing.

# %%
from moe_helpers.accounting import count_parameters
from moe_helpers.growth import preservation_report, upcycle
from moe_helpers.train import evaluate

moe = upcycle(dense, NUM_EXPERTS, TOP_K)
with torch.no_grad():
    show_match(moe.layers[0].ffn(x), by_hand_out, "upcycle_ffn == moe_helpers.growth.upcycle, block 0")
report = preservation_report(dense, moe, val_idx, val_targets)
print(report)
dense_val, moe_val = (evaluate(m, data, BATCH, SEQ_LEN, EVAL_BATCHES, device) for m in (dense, moe))
print(f"validation loss over {EVAL_BATCHES} batches: dense {dense_val:.6f}, upcycled {moe_val:.6f}, "
      f"difference {moe_val - dense_val:+.1e}")
for name, model in (("dense", dense), ("upcycled MoE", moe)):
    counts = count_parameters(model)
    print(f"{name:>13}: {counts.total / 1e6:.2f} M parameters, {counts.active / 1e6:.2f} M active per token")

# %% [markdown]
# *What to notice:* the logits differ by float rounding only and the loss does not move (the jump is
# below 1e-5), although the upcycled model has many more parameters and a random router.

# %% [markdown]
# ## 3. Without renormalisation: a jump
#
# Switch Transformer (top-1) and DeepSeekMoE, OLMoE and Qwen1.5-MoE (top-k) weight the chosen experts
# by the raw probabilities $p_i$ (GShard and Mixtral renormalise, like the course's default). Then
# $y = \mathrm{FFN}(x) \sum_{i \in S} p_i$: every FFN output is **scaled by the sum of the chosen
# probabilities**. The $k$ largest of $E$ probabilities sum to at least $k/E$ (exactly $k/E$ for a
# perfectly uniform router), so top-2 of 4 keeps a bit more than half of every FFN output: a fresh
# router is close to uniform, but not exactly.

# %%
switch = upcycle(dense, NUM_EXPERTS, TOP_K, renormalize=False)
switch_report = preservation_report(dense, switch, val_idx, val_targets)
print(switch_report)

tokens = x.reshape(-1, x.shape[-1])                                               # (N, d_model)
with torch.no_grad():
    probs = switch.layers[0].ffn.router(tokens).softmax(dim=-1)                   # (N, E)
    chosen_sum = probs.topk(TOP_K, dim=-1).values.sum(dim=-1)                      # (N,)
    switch_out = switch.layers[0].ffn(x)                                           # (B, T, d_model)
    scaled_ffn_out = dense_out * chosen_sum.reshape(*x.shape[:-1], 1)              # FFN(x) * sum_S p_i
print(f"block 0: max |MoE(x) - FFN(x) * chosen sum| = {(switch_out - scaled_ffn_out).abs().max().item():.2e}")
print(f"sum of the chosen probabilities in block 0: mean {chosen_sum.mean():.3f}, "
      f"range {chosen_sum.min():.3f}..{chosen_sum.max():.3f} (top-{TOP_K} of {NUM_EXPERTS}: at least "
      f"{TOP_K / NUM_EXPERTS:.2f})")
print(f"jump without renormalisation: {switch_report.jump:+.4f} nats/token, "
      f"{abs(switch_report.jump) / max(abs(report.jump), 1e-12):.0e} times the renormalised one")

# %% [markdown]
# Every FFN now contributes about half as much as the model was trained with, and the loss jumps;
# the router's random start decides, token by token, how much of the FFN survives. Renormalised
# top-k removes the dependence on the router altogether, which is why the course uses it.
#
# ## 4. The router gets no gradient from the language-model loss (yet)
#
# With identical experts, the loss depends on the weights only through
# $y = \mathrm{FFN}(x)\sum_{i\in S} g_i$, and $\sum_{i\in S} g_i = 1$ for *every* router output.
# So the derivative of the loss with respect to every router logit is
#
# $$\frac{\partial L}{\partial \ell_j} = \Big\langle \frac{\partial L}{\partial y}, \mathrm{FFN}(x)\Big\rangle
# \cdot \frac{\partial}{\partial \ell_j}\sum_{i\in S} g_i = 0 .$$
#
# Only the auxiliary losses (load balancing, z-loss) teach the router at first. Once the experts
# differ, the language-model loss starts to care which expert a token goes to. Let's measure it:
# one backward pass of the language-model loss alone, then with the aux losses added.

# %%
def router_and_expert_grads(model, idx, targets, with_aux: bool) -> list:
    """Per MoE layer: the largest |gradient| of its router and of its first expert's w1, from one batch."""
    model.train()
    model.zero_grad()
    out = model(idx, targets)
    (out.loss + out.aux_loss if with_aux else out.loss).backward()
    grads = [(layer.router.weight.grad.abs().max().item(), layer.experts[0].w1.weight.grad.abs().max().item())
             for layer in model.moe_layers]
    model.zero_grad()
    model.eval()
    return grads


lm_only = router_and_expert_grads(moe, val_idx, val_targets, with_aux=False)
with_aux = router_and_expert_grads(moe, val_idx, val_targets, with_aux=True)
print("block | router grad, LM loss only | router grad, LM + aux | expert w1 grad")
for block, ((router_lm, expert_lm), (router_aux, _)) in enumerate(zip(lm_only, with_aux)):
    print(f"{block:5d} | {router_lm:25.1e} | {router_aux:21.1e} | {expert_lm:14.1e}")

# %% [markdown]
# *What to notice:* the router's gradient from the language-model loss alone is zero up to float32
# rounding, many orders of magnitude below the experts'; the auxiliary losses give it a real one.

# %% [markdown]
# ## 5. Training on: the experts drift apart
#
# All experts start equal, but each one only gets gradient from the tokens routed to it, and the
# random router sends different tokens to different experts. So the experts' updates differ, the
# experts separate, and the language-model loss starts to give the router a gradient.
#
# To watch this we train with `train_phase` (AdamW, warmup and cosine decay, clipping, LM + aux
# loss) and its `on_log` hook, which hands us the model at every log step.
# We measure how similar the experts are by the **cosine similarity of their outputs** on the same
# real tokens (1 = they compute the same function).

# %%


def expert_similarity(layer: MoELayer, tokens) -> torch.Tensor:
    """(E, E) cosine similarity between the experts' outputs on the same tokens (N, d_model)."""
    with torch.no_grad():
        outputs = torch.stack([expert(tokens).flatten() for expert in layer.experts])   # (E, N * d_model)
    unit = F.normalize(outputs.cpu().double(), dim=-1)                    # float64 on the host (MPS has none)
    return unit @ unit.T                                                                 # (E, E)


def mean_pairwise(similarity: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of an (E, E) similarity matrix."""
    off_diagonal = ~torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    return similarity[off_diagonal].mean().item()


probe_idx, probe_targets = data.batch("val", 8, SEQ_LEN, device, torch.Generator().manual_seed(2))


def watch_experts(model) -> dict:
    """Expert similarity per MoE layer and the router's LM-loss gradient, on a fixed probe batch."""
    moe_inputs = [h for h, block in zip(ffn_inputs(model, probe_idx), model.layers) if block.is_moe]
    return {
        "similarity": [expert_similarity(layer, h.reshape(-1, h.shape[-1]))
                       for layer, h in zip(model.moe_layers, moe_inputs)],
        "router_lm_grad": [router for router, _ in
                           router_and_expert_grads(model, probe_idx, probe_targets, with_aux=False)],
    }


def train_watching(model, steps: int, lr: float, watch=None, watch_every: int = 10):
    """Train with ``train_phase``, calling ``watch(model)`` at every log step through its ``on_log`` hook.

    Returns (evaluation steps, validation losses, [(step, watch(model)), ...])."""
    watched = []
    on_log = None if watch is None else (lambda record, model: watched.append((record["step"], watch(model))))
    settings = TRAIN.replace(steps_phase1=steps, lr_phase1=lr, log_every=watch_every)
    history = train_phase(model, data, settings, progress=False, verbose=False, on_log=on_log)
    evaluated = history.evaluated()
    return [r["step"] for r in evaluated], [r["val_loss"] for r in evaluated], watched


moe_eval_steps, moe_val_losses, moe_watched = train_watching(moe, MOE_STEPS, P.train.lr_phase2,
                                                             watch=watch_experts, watch_every=10)
print(f"upcycled MoE validation loss: {moe_val_losses[0]:.3f} -> {moe_val_losses[-1]:.3f} after {MOE_STEPS} steps")

# %%
from moe_helpers.plots import plot_drift, plot_expert_similarity

watch_steps = [step for step, _ in moe_watched]
dissimilarity = {f"block {block}": (watch_steps, [1 - mean_pairwise(w["similarity"][block]) for _, w in moe_watched])
                 for block in range(len(moe.moe_layers))}
router_grads = {f"block {block}": (watch_steps, [w["router_lm_grad"][block] for _, w in moe_watched])
                for block in range(len(moe.moe_layers))}
fig, axes = plt.subplots(1, 3, figsize=(16, 4))
plot_drift(dissimilarity, ax=axes[0], title="Experts drift apart",
           ylabel="1 - mean pairwise cosine similarity\nof expert outputs (unitless)")
plot_drift(router_grads, ax=axes[1], title="The LM loss starts to reach the router",
           ylabel="max |router gradient| from the LM loss")
plot_expert_similarity(moe_watched[-1][1]["similarity"][0], ax=axes[2],
                       title=f"Block 0 after {MOE_STEPS} steps")
plt.tight_layout()
plt.show()

# %% [markdown]
# *What to notice:* both curves start at zero — identical experts, no LM gradient for the router — and
# rise together: as soon as the experts differ, choosing between them matters to the loss.

# %%
first, last = moe_watched[0][1], moe_watched[-1][1]
for block in range(len(moe.moe_layers)):
    start, end = mean_pairwise(first["similarity"][block]), mean_pairwise(last["similarity"][block])
    print(f"block {block}: expert similarity {start:.6f} -> {end:.4f}; router LM gradient "
          f"{first['router_lm_grad'][block]:.1e} -> {last['router_lm_grad'][block]:.1e}")

# %% [markdown]
# *What to notice:* every block starts with identical experts (similarity 1) and ends with experts
# that have moved apart but are still highly similar; meanwhile the router's gradient from the
# language-model loss grows by orders of magnitude.

# %% [markdown]
# ## 6. MoE or more dense training, for the same compute?
#
# Upcycling is worth it only if the MoE beats simply training the dense model on. A fair race gives
# both **the same training compute**. Top-2 routing runs two expert FFNs per token, so the MoE's
# active FLOPs per token are higher than the dense model's (attention and the LM head are
# shared); `flops_per_token` counts them (PaLM's convention: forward = 2 x active matmul parameters
# + attention, training = 3 x forward). The dense run gets proportionally more steps.

# %%
from moe_helpers.accounting import flops_per_token
from moe_helpers.plots import plot_loss_vs_flops

dense_flops = flops_per_token(dense.cfg, SEQ_LEN).training           # FLOPs per training token
moe_flops = flops_per_token(moe.cfg, SEQ_LEN).training
tokens_per_step = BATCH * SEQ_LEN
dense_on_steps = round(MOE_STEPS * moe_flops / dense_flops)
print(f"training FLOPs per token: dense {dense_flops / 1e6:.2f} M, MoE top-{TOP_K} {moe_flops / 1e6:.2f} M "
      f"(x{moe_flops / dense_flops:.2f}) -> the dense model trains on for {dense_on_steps} steps")

dense_on = copy.deepcopy(dense)
dense_eval_steps, dense_val_losses, _ = train_watching(dense_on, dense_on_steps, P.train.lr_phase2)

phase1_flops = DENSE_STEPS * tokens_per_step * dense_flops
phase1 = dense_history.evaluated()
curves = {
    "dense, phase 1": ([r["tokens"] * dense_flops for r in phase1], [r["val_loss"] for r in phase1]),
    "dense, trained on": ([phase1_flops + s * tokens_per_step * dense_flops for s in dense_eval_steps], dense_val_losses),
    f"upcycled MoE (top-{TOP_K} of {NUM_EXPERTS})": ([phase1_flops + s * tokens_per_step * moe_flops for s in moe_eval_steps],
                                                  moe_val_losses),
}
fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
plot_loss_vs_flops(curves, ax=axes[0], events={"upcycled": phase1_flops}, title="The whole run")
plot_loss_vs_flops(curves, ax=axes[1], events={"upcycled": phase1_flops}, title="After upcycling (zoomed in)")
after = moe_val_losses + dense_val_losses
axes[1].set_xlim(0.95 * phase1_flops, 1.02 * curves["dense, trained on"][0][-1])
axes[1].set_ylim(min(after) - 0.05, max(after) + 0.05)
plt.tight_layout()
plt.show()

# %% [markdown]
# *What to notice:* both continuations start from exactly the same loss (the upcycling jump is
# invisible) and spend the same FLOPs; compare where they end.

# %%
moe_final, dense_final = moe_val_losses[-1], dense_val_losses[-1]
better = "the upcycled MoE" if moe_final < dense_final else "the dense model"
print(f"after {phase1_flops / 1e12:.2f} TFLOPs of dense training and "
      f"{MOE_STEPS * tokens_per_step * moe_flops / 1e12:.2f} TFLOPs more:")
print(f"  upcycled MoE   {moe_final:.4f}  ({MOE_STEPS} steps)\n  dense, trained {dense_final:.4f}  ({dense_on_steps} steps)")
print(f"  -> {better} is ahead by {abs(moe_final - dense_final):.4f} nats/token")
if MOE_STEPS in dense_eval_steps:
    dense_same_steps = dense_val_losses[dense_eval_steps.index(MOE_STEPS)]
    print(f"  at the same number of steps ({MOE_STEPS}) the dense model was at {dense_same_steps:.4f}")

# %% [markdown]
# How to read this. With the CPU defaults the **dense model comes out ahead**, and that is a real
# result of this short run, not a bug. Three reasons, all visible above:
#
# 1. *Equal compute is not equal steps.* Top-2 routing costs more per token, so the dense model gets
#    more optimiser steps, and this early in training every step still lowers the loss a lot.
# 2. *The experts have barely separated.* After this short run their outputs are still highly
#    similar (the cosines printed in section 5): the MoE has not yet put its extra parameters to use.
# 3. *Each expert learns from part of the data.* An expert's gradient comes only from the tokens
#    routed to it, and a token's output mixes two experts that were updated on different tokens,
#    so per step the MoE's feed-forward function moves less than the dense one.
#
# Upcycling is a bet on a long continuation. Komatsuzaki et al. (2023) report that upcycled T5
# and ViT models clearly beat their dense counterparts when the extra training budget is a sizeable
# fraction of the original pre-training (they quote about 50% of the dense model's sunk cost). Set
# `SCALE_UP = True` on a GPU and see whether the gap closes when the experts have time to specialise.

# %% [markdown]
# ## Exercises
#
# Each exercise asks you to implement one piece of this chapter in a stub function. Replace
# `raise NotImplementedError` with your code and run the cell below it: `check` runs your function
# on hidden test cases and compares it with the course's own implementation. It answers *not
# attempted yet*, *correct*, or *wrong* with a hint that points at the mistake (never at the
# answer). Reference solutions, for when you are done or stuck:
# `solutions/04_sparse_upcycling.py` at the root of the repository.

# %%
from moe_helpers.exercises import check

# %% [markdown]
# **Exercise 1 — upcycle a whole model's weights.** Section 2's `upcycle_ffn` upcycles one layer;
# `upcycle` does every block. Write the weights part of it, `upcycle_state_dict(dense_state,
# num_experts, router_std, generator)`: from a dense `GPT`'s `state_dict()` return a **new** dict
# that the MoE `GPT(cfg.upcycled(num_experts, top_k))` loads with `load_state_dict`:
#
# * every `layers.<i>.ffn.<w>.weight` (`w1`, `w2`, `w3`) is copied into
#   `layers.<i>.ffn.experts.<e>.<w>.weight` for each expert `e`;
# * every block gets a router `layers.<i>.ffn.router.weight` of shape `(num_experts, d_model)`,
#   drawn from a normal distribution with standard deviation `router_std`, using `generator`;
# * every other tensor is the dense model's; `dense_state` itself is left as it was.
#
# The checker loads your dict into an MoE and compares its logits with the dense model's.

# %%
def upcycle_state_dict(dense_state, num_experts, router_std=0.02, generator=None):
    """A dense GPT's state dict -> an upcycled MoE GPT's state dict (a new dict)."""
    raise NotImplementedError  # your code here


# %%
check("upcycle_state_dict", upcycle_state_dict)

# %% [markdown]
# **Exercise 2 — the scale without renormalisation.** Write `chosen_mass(router_logits, k)`: for
# router logits `(N, E)`, the factor `(N,)` by which an upcycled layer **without** renormalisation
# scales each token's FFN output (section 3). Then apply it to the router of block 0 of
# `switch` on the tokens `tokens` and compare the mean with the printed one.

# %%
def chosen_mass(router_logits, k):
    """router_logits: (N, E) -> (N,)."""
    raise NotImplementedError  # your code here


# %%
check("chosen_mass", chosen_mass)


# %% [markdown]
# ## Further reading
#
# - Komatsuzaki et al. 2023, [Sparse Upcycling](https://arxiv.org/abs/2212.05055): the method of this
#   chapter, on T5 and ViT, and how large a continuation budget it needs to pay off.
# - Jiang et al. 2024, [Mixtral of Experts](https://arxiv.org/abs/2401.04088): top-2-of-8 routing with
#   renormalised weights, the choice that makes upcycling exact.
# - Fedus et al. 2021, [Switch Transformer](https://arxiv.org/abs/2101.03961): top-1 routing without
#   renormalisation, the gate that section 3 shows jumping.
# - Lepikhin et al. 2020, [GShard](https://arxiv.org/abs/2006.16668): top-2 gates renormalised over
#   the chosen experts.
# - Dai et al. 2024, [DeepSeekMoE](https://arxiv.org/abs/2401.06066) and Muennighoff et al. 2024,
#   [OLMoE](https://arxiv.org/abs/2409.02060): MoEs that do not renormalise; OLMoE also compares
#   upcycling with training an MoE from scratch.
# - Zoph et al. 2022, [ST-MoE](https://arxiv.org/abs/2202.08906): the router z-loss, one of the
#   auxiliary losses that teach the router while the experts are still identical.
# - Maarten Grootendorst, [A Visual Guide to Mixture of Experts](https://newsletter.maartengrootendorst.com/p/a-visual-guide-to-mixture-of-experts):
#   the router and top-k routing, drawn.

# %% [markdown]
# ## Checks — the claims above, verified
#
# These cells verify every claim this lesson makes, on the numbers it computed; `make test` runs
# them. You do not need them to follow the lesson.

# %%
assert dense_history.last_val_loss < dense_start_loss - 2.0, \
    f"the dense model only went from {dense_start_loss:.3f} to {dense_history.last_val_loss:.3f}"
torch.testing.assert_close(by_hand_out, dense_out)
assert report.max_abs_logit_diff < 1e-4, f"upcycling moved the logits by {report.max_abs_logit_diff:.1e}"
assert abs(report.jump) < 1e-5, f"upcycling moved the loss by {report.jump:.1e}"
assert abs(moe_val - dense_val) < 1e-5, f"validation losses differ by {moe_val - dense_val:.1e}"
torch.testing.assert_close(switch_out, scaled_ffn_out)
assert TOP_K / NUM_EXPERTS - 1e-6 <= chosen_sum.min() and chosen_sum.max() < 1, \
    f"chosen probability mass outside [k/E, 1): {chosen_sum.min():.3f}..{chosen_sum.max():.3f}"
assert chosen_sum.mean() < 0.65, f"{chosen_sum.mean():.3f} of the FFN survives, not about half"
assert abs(switch_report.jump) > 0.02, f"without renormalisation the loss moved by only {switch_report.jump:.4f}"
assert switch_report.max_abs_logit_diff > 100 * report.max_abs_logit_diff, "the logits barely moved without renormalisation"
for block, ((router_lm, expert_lm), (router_aux, _)) in enumerate(zip(lm_only, with_aux)):
    assert router_lm < 1e-5 * expert_lm, f"block {block}: the LM loss reached the router ({router_lm:.1e})"
    assert router_aux > 1e3 * router_lm, f"block {block}: the aux losses did not reach the router"
for block in range(len(moe.moe_layers)):
    start = mean_pairwise(moe_watched[0][1]["similarity"][block])
    end = mean_pairwise(moe_watched[-1][1]["similarity"][block])
    assert start > 1 - 1e-6, f"block {block}: the experts did not start identical ({start:.6f})"
    assert 0.7 < end < 1 - 1e-3, f"block {block}: expert similarity ended at {end:.4f}"
    grad_start, grad_end = (moe_watched[i][1]["router_lm_grad"][block] for i in (0, -1))
    assert grad_end > 1e3 * grad_start, f"block {block}: router LM gradient {grad_start:.1e} -> {grad_end:.1e}"
assert math.isclose(moe_val_losses[0], dense_val_losses[0], abs_tol=1e-5), "the continuations start apart"
assert moe_final < moe_val_losses[0] and dense_final < dense_val_losses[0], "a continuation stopped learning"
if not SCALE_UP:
    assert dense_final < moe_final - 0.05, f"with the CPU defaults the dense model is not clearly ahead ({dense_final:.4f} vs {moe_final:.4f})"
print("all checks passed")
