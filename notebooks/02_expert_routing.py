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
# # 02 · Expert routing
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/moe-course/moe-course/blob/main/notebooks/02_expert_routing.ipynb)
#
# In this notebook you will:
#
# - turn one feed-forward network into several **experts** and count what a token uses of them;
# - follow the **router** step by step on a real sentence: logits → softmax → top-k → renormalised
#   weights, and check that `MoELayer` computes exactly the same;
# - see why **renormalising** the top-k weights matters (the output scale with and without);
# - watch the **dispatch**: token slots grouped by expert, each expert run once;
# - train the same small MoE without and with the **load-balancing loss** (per batch, or per sequence as in
#   DeepSeek-V3), and with **auxiliary-loss-free balancing** (a per-expert bias that only steers the choice),
#   and watch the router collapse onto a few experts in one run and stay balanced in the others;
# - limit each expert with a **capacity factor** and measure the tokens it drops;
# - play with the number of experts, top-k and the balancing coefficient in a **widget**.
#
# Expected run time: about 2 minutes on a laptop CPU.

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

# %%
SCALE_UP = False   # True: a wider model (d_model 128), 4 blocks, 16 experts and 4x the training steps
                   # for the collapse experiment (minutes on a GPU; far too slow for a laptop CPU).

COLLAPSE_SIZES = (dict(d_model=128, n_layers=4, num_experts=16, steps=800, batch_size=32)
                  if SCALE_UP else
                  dict(d_model=64, n_layers=2, num_experts=8, steps=200, batch_size=16))
print(COLLAPSE_SIZES)

# %% [markdown]
# ## 0 · Data and one sentence
#
# The same stories, tokenizer and token file as notebook 01: `prepare_preset_data` reads the
# `laptop` preset's story budget and vocabulary, so after notebook 01 it only opens the cache.
# One sentence will follow us through the notebook.

# %%
from moe_helpers.config import ModelConfig, TrainConfig, preset
from moe_helpers.data import prepare_preset_data

data = prepare_preset_data(preset("laptop"))
tokenizer = data.tokenizer
SENTENCE = "Once upon a time, a little girl named Lily found a red ball in the park."
pieces = tokenizer.tokens(SENTENCE)
print(f"{len(pieces)} tokens:", pieces)

# %% [markdown]
# ## 1 · From one feed-forward network to several
#
# A dense block has one SwiGLU feed-forward network (FFN).  A Mixture-of-Experts block has
# `E` of them — the **experts** — plus a **router**, one linear map that scores every expert for
# every token (Shazeer et al. 2017).  Each token runs through only its `k` best-scored experts, so
# the layer stores `E` FFNs but a token pays for `k`.  The experts are the *same class* as the
# dense FFN: the only new pieces are the router and the dispatch.

# %%
from moe_helpers.checks import show_match
from moe_helpers.layers import FeedForward, RMSNorm
from moe_helpers.moe import MoELayer

D_MODEL, D_FF, NUM_EXPERTS, TOP_K = 32, 64, 4, 2
torch.manual_seed(0)
dense_ffn = FeedForward(D_MODEL, D_FF)
moe = MoELayer(D_MODEL, D_FF, NUM_EXPERTS, TOP_K)

ffn_parameters = sum(p.numel() for p in dense_ffn.parameters())
expert_parameters = sum(p.numel() for p in moe.experts.parameters())
router_parameters = moe.router.weight.numel()
used_per_token = TOP_K * ffn_parameters + router_parameters
print(moe.experts[0])
print(f"one FFN:            {ffn_parameters:6,} parameters (3 * d_model * d_ff = {3 * D_MODEL * D_FF:,})")
print(f"{NUM_EXPERTS} experts + router: {expert_parameters + router_parameters:6,} parameters "
      f"(router: E * d_model = {router_parameters})")
print(f"one token uses:     {used_per_token:6,} parameters = top-{TOP_K} experts + router "
      f"({100 * used_per_token / (expert_parameters + router_parameters):.0f}% of the layer)")

# %% [markdown]
# *What to notice:* each expert is printed as a plain `FeedForward`, the dense FFN's class; the
# layer stores `E` times its parameters plus a router of only `E · d_model`, and a token uses `k`
# experts' worth.

# %% [markdown]
# ## 2 · The router, step by step
#
# The router sees each token's normalised hidden state `x` (here: the sentence's tokens through a
# freshly initialised embedding table and an RMSNorm, so the numbers are reproducible) and computes
#
# $$p = \mathrm{softmax}(x W_r), \qquad S = \text{top-}k(p), \qquad
#   g_i = \frac{p_i}{\sum_{j \in S} p_j}\ (i \in S), \qquad y = \sum_{i \in S} g_i\, \mathrm{Expert}_i(x).$$

# %%
from moe_helpers import figures

figures.routing_and_dispatch(num_experts=4, top_k=2)   # what the next cells compute on a real sentence


# %% [markdown]
# Four lines of code, one per symbol:

# %%
torch.manual_seed(0)
token_ids = torch.tensor(tokenizer.encode(SENTENCE))                        # (T,)
embedding = torch.nn.Embedding(tokenizer.vocab_size, D_MODEL)
with torch.no_grad():
    x = RMSNorm(D_MODEL)(embedding(token_ids))                              # (T, d_model)

    router_logits = x @ moe.router.weight.T                                 # (T, E)
    router_probs = router_logits.softmax(dim=-1)                            # (T, E)
    top_probs, top_experts = router_probs.topk(TOP_K, dim=-1)               # (T, k), (T, k)
    top_weights = top_probs / top_probs.sum(dim=-1, keepdim=True)           # (T, k), rows sum to 1

for t in range(3):
    print(f"token {pieces[t]!r}")
    print("  logits  ", [round(v, 3) for v in router_logits[t].tolist()])
    print("  softmax ", [round(v, 3) for v in router_probs[t].tolist()])
    print(f"  top-{TOP_K}    experts {top_experts[t].tolist()} with probabilities "
          f"{[round(v, 3) for v in top_probs[t].tolist()]} (sum {top_probs[t].sum():.3f})")
    print(f"  renormalised weights {[round(v, 3) for v in top_weights[t].tolist()]} (sum {top_weights[t].sum():.3f})")
print(f"every token: probabilities {router_probs.min():.3f} to {router_probs.max():.3f} (1/E = {1 / NUM_EXPERTS}), "
      f"the chosen two hold {top_probs.sum(dim=-1).min():.3f} to {top_probs.sum(dim=-1).max():.3f}")

# %% [markdown]
# *What to notice:* an untrained router has only mild preferences: no expert gets anywhere near all
# of a token's probability (the largest is printed above), and the two chosen experts hold well
# under all of it (the "sum" above); renormalising rescales their weights to sum to 1.
# `MoELayer`'s router computes the same numbers:

# %%
with torch.no_grad():
    library_weights, library_experts = moe.router.route(moe.router.logits(x))   # (T, k), (T, k)
show_match((library_weights, library_experts), (top_weights, top_experts),
           f"moe.router.route == the four lines above, for all {len(pieces)} tokens")

# %% [markdown]
# And the whole layer: the slow, obvious version loops over tokens and their chosen experts.
# `MoELayer` must give the same output without any Python loop over tokens.

# %%
def moe_output_by_hand(x, layer, top_weights, top_experts):
    """y_t = sum over the chosen experts i of g_ti * Expert_i(x_t), one token at a time."""
    output = torch.zeros_like(x)                                            # (T, d_model)
    for t in range(x.shape[0]):
        for weight, expert in zip(top_weights[t], top_experts[t].tolist()):
            output[t] += weight * layer.experts[expert](x[t])
    return output


with torch.no_grad():
    by_hand = moe_output_by_hand(x, moe, top_weights, top_experts)
    by_layer = moe(x)                                                       # (T, d_model)
show_match(by_layer, by_hand, "MoELayer output == the per-token loop")

# %% [markdown]
# ## 3 · Why renormalise the top-k weights?
#
# Make every expert a copy of expert 0 — exactly what *sparse upcycling* does when it turns a dense
# model into an MoE (notebook 04).  Every token now sees the same function whichever experts it
# picks, so the layer *should* output `Expert_0(x)`.  With renormalised weights it does: Mixtral
# divides the k chosen probabilities by their sum, as GShard's top-2 gate did (g1 / (g1 + g2)) and as
# Shazeer et al. (2017) did by taking the softmax over the kept logits only.  Without renormalisation
# -- Switch Transformer's top-1 gate, and the top-k gates of DeepSeekMoE, OLMoE and Qwen1.5-MoE
# (`norm_topk_prob=False` in their `transformers` configs) -- the output is scaled by the probability
# mass of the chosen experts, which is below 1 whenever k < E (and would be k/E for a perfectly
# uniform router).

# %%
torch.manual_seed(0)
clones = MoELayer(D_MODEL, D_FF, num_experts=8, top_k=2)
for expert in clones.experts[1:]:
    expert.load_state_dict(clones.experts[0].state_dict())

with torch.no_grad():
    one_expert = clones.experts[0](x)                                       # (T, d_model)
    renormalised = clones(x)
    clones.router.renormalize = False                                       # Switch-style weights
    raw = clones(x)
    clones.router.renormalize = True
    chosen_mass = clones.router.logits(x).softmax(-1).topk(2, dim=-1).values.sum(-1)   # (T,)

ratio_renormalised = renormalised.norm(dim=-1) / one_expert.norm(dim=-1)    # (T,)
ratio_raw = raw.norm(dim=-1) / one_expert.norm(dim=-1)                      # (T,)
print(f"output norm / one expert's, renormalised:     mean {ratio_renormalised.mean():.4f}")
print(f"output norm / one expert's, not renormalised: mean {ratio_raw.mean():.4f} "
      f"(min {ratio_raw.min():.3f}, max {ratio_raw.max():.3f}); a uniform router would give k/E = {2 / 8:.3f}")
print(f"chosen probability mass:                      mean {chosen_mass.mean():.4f} "
      f"(min {chosen_mass.min():.3f}, max {chosen_mass.max():.3f})")

# %% [markdown]
# *What to notice:* renormalised, the layer gives back exactly one expert's output (ratio 1).  Not
# renormalised, each token's output is scaled by exactly its chosen probability mass (the last two
# lines agree token by token).
#
# Without renormalisation the upcycled model's FFN outputs shrink to less than half their size:
# a jump in the loss at the moment of upcycling.  Renormalising makes upcycling exact for *any* router.
#
# The choice has a second consequence.  With **top-1** and renormalisation the single weight is
# always exactly 1, so the language-model loss gives the router **no gradient at all**; only the
# auxiliary losses train it.  Switch Transformer (Fedus et al. 2021) uses top-1 *without*
# renormalisation: the gate value `p_i` multiplies the expert output, and the router learns
# from the loss.  Checked with one backward pass:

# %%
def router_gradient_norm(renormalize: bool, top_k: int = 1) -> float:
    """Norm of the router's gradient from a loss on the layer's output alone (no aux loss)."""
    torch.manual_seed(0)
    layer = MoELayer(D_MODEL, D_FF, NUM_EXPERTS, top_k, renormalize=renormalize)
    layer(x).pow(2).sum().backward()
    return layer.router.weight.grad.norm().item()


top1_renormalised, top1_switch = router_gradient_norm(True), router_gradient_norm(False)
print(f"router gradient, top-1 renormalised: {top1_renormalised:.2e}  (zero up to float rounding: p / p = 1)")
print(f"router gradient, top-1 Switch-style: {top1_switch:.2e}")

# %% [markdown]
# ## 4 · Dispatch: group the slots by expert
#
# Each token fills `k` **slots**.  `MoELayer` sorts the `T·k` slots by expert (`argsort`), so every
# expert's slots form one contiguous slice; each expert then runs **once** on its slice, and the
# weighted outputs are added back to their tokens (`index_add_`).  No expert computes a token it
# was not chosen for.

# %%
slot_expert = top_experts.flatten()                                         # (T*k,) expert of each slot
order = torch.argsort(slot_expert, stable=True)                             # (T*k,) slots grouped by expert
tokens_per_expert = torch.bincount(slot_expert, minlength=NUM_EXPERTS)      # (E,)
slot_token = order // TOP_K                                                 # (T*k,) the token of each sorted slot
for expert, tokens in enumerate(slot_token.split(tokens_per_expert.tolist())):
    print(f"expert {expert}: {len(tokens):2d} slots  {[pieces[t] for t in tokens.tolist()]}")
print(f"expert rows computed: {int(tokens_per_expert.sum())} = T*k; "
      f"running every expert on every token would be T*E = {len(pieces) * NUM_EXPERTS}")
with torch.no_grad():
    _, routing = moe(x, return_routing=True)                                 # the layer's own counts
print("slots per expert, counted above:", tokens_per_expert.tolist(),
      "  counted by MoELayer:", routing.tokens_per_expert.tolist())

# %% [markdown]
# `moe(x, return_routing=True)` hands these counts back with the output, as Hugging Face's Mixtral
# block returns its router logits: the layer keeps nothing between calls.  The model returns one
# such record per MoE layer (`model(idx).routing`); the training loop adds them up on the device
# and, at each log step, records each expert's share of the token slots since the previous log
# step.  The utilisation plots below draw them.

# %% [markdown]
# ## 5 · Why routers collapse, and the load-balancing loss
#
# **The rich get richer.**  An expert that happens to receive more tokens early gets more gradient,
# improves faster, and so its gate value helps the loss more; the router's gradient then raises its
# score for *all* tokens that look alike — and the hidden states of a young model look very alike.
# More tokens go to it, it improves further, and the other experts starve.  A collapsed layer is a
# dense layer with extra memory.
#
# **The counterweight** (Switch Transformer, Fedus et al. 2021, eqs. 4-6, here for top-k):
#
# $$\mathcal{L}_{\text{balance}} = E \sum_{i=1}^{E} f_i\, P_i, \qquad
#   f_i = \frac{\#\{\text{slots sent to } i\}}{N k}, \qquad P_i = \frac{1}{N}\sum_{t} p_{t,i}.$$
#
# `f` counts (no gradient), `P` averages the router probabilities (the gradient flows through it).
# It equals 1 when both are uniform and `E` when one expert takes everything.  It is **not** a measure
# of balance whose minimum is balance: `f` and `P` can be uneven in opposite directions and give less
# than 1 -- three tokens with top-1 probabilities (.99, .01), (.49, .51), (.49, .51) send 1 slot to
# expert 0 and 2 to expert 1, and give 2 · (1/3 · .657 + 2/3 · .343) = 0.896.  What it does is push:
# `f` is a constant for the gradient, so lowering the loss means lowering `P_i` most where `f_i` is
# largest -- the router learns to move probability away from busy experts.  It is a *differentiable
# proxy* for the non-differentiable counts `f`, and the push stops where the counts are even.
#
# The `aux` column of the training logs is the sum of two terms: this loss times `aux_loss_coef`
# (0.01 by default) and the **router z-loss** of ST-MoE (Zoph et al. 2022, eq. 5),
# `mean_t (logsumexp_i z_{t,i})²` times `z_loss_coef` (0.001), which keeps the router's logits small
# so that its softmax stays numerically stable and does not saturate.
#
# By hand, on three routers for 64 tokens and 8 experts:

# %%
from moe_helpers.moe import load_balancing_loss


def balance_loss_by_hand(router_logits, top_k):
    """E * sum_i f_i * P_i (Switch Transformer, eq. 4) for router logits (N, E)."""
    num_tokens, num_experts = router_logits.shape
    probs = router_logits.softmax(dim=-1)                                   # (N, E)
    chosen = probs.topk(top_k, dim=-1).indices                              # (N, k)
    slot_fraction = torch.bincount(chosen.flatten(), minlength=num_experts) / (num_tokens * top_k)  # f, (E,)
    mean_prob = probs.mean(dim=0)                                           # P, (E,)
    return num_experts * (slot_fraction * mean_prob).sum()


tokens_64 = torch.arange(64)
routers = {
    "balanced (token t -> expert t mod 8)": 10.0 * torch.nn.functional.one_hot(tokens_64 % 8, 8).float(),
    "collapsed (every token -> expert 0)": 10.0 * torch.nn.functional.one_hot(tokens_64 * 0, 8).float(),
    "random (a fresh router)": torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 0.1,
}
balance = {name: balance_loss_by_hand(logits, top_k=1) for name, logits in routers.items()}
for name, loss in balance.items():
    print(f"{name:38s} loss {loss:.4f}")
show_match(list(balance.values()), [load_balancing_loss(logits, top_k=1) for logits in routers.values()],
           "balance_loss_by_hand == moe_helpers.moe.load_balancing_loss, on the three routers")

uneven_in_opposite_ways = torch.tensor([[0.99, 0.01], [0.49, 0.51], [0.49, 0.51]]).log()   # f = (1/3, 2/3)
below_one = load_balancing_loss(uneven_in_opposite_ways, top_k=1)
print(f"{'uneven f and P, in opposite ways':38s} loss {below_one:.4f}  (below the uniform 1.0)")

# %% [markdown]
# **Per batch or per sequence?**  Switch counts `f` and `P` over all the tokens of a batch.
# DeepSeek-V3 (DeepSeek-AI 2024, eqs. 17-20) adds a *sequence-wise* version: the same loss computed
# over the tokens of each sequence on its own, then averaged over the sequences.  They differ when
# every sequence is lopsided in its own way -- four stories that each send all their tokens to their
# own expert balance the batch perfectly, yet each expert then works for one story at a time:

# %%
from moe_helpers.moe import sequence_balance_loss

one_expert_per_story = torch.arange(4).repeat_interleave(16).reshape(4, 16)           # (B, T): story b -> expert b
story_logits = 10.0 * torch.nn.functional.one_hot(one_expert_per_story, 4).float()    # (B, T, E) confident
batch_level = load_balancing_loss(story_logits.reshape(-1, 4), top_k=1)
sequence_level = sequence_balance_loss(story_logits, top_k=1)
print(f"per batch (Switch):       {batch_level:.3f}   -- the batch looks balanced")
print(f"per sequence (DeepSeek-V3): {sequence_level:.3f}   -- every sequence is collapsed (E = 4)")

# %% [markdown]
# `MoELayer(..., balance_loss_scope="sequence")` (or `ModelConfig(balance_loss_scope="sequence")`)
# uses this form; DeepSeek-V3 gives it a tiny weight, as a safety net beside the bias method below.

# %% [markdown]
# ### The experiment: the same MoE, trained without and with the balancing loss
#
# A small GPT with Switch routing (top-1 of 8 experts by default, no renormalisation, so the router
# learns from the language-model loss).  To make the rich-get-richer loop fast enough to see in 200
# CPU steps, the router starts with larger weights (std 0.5 instead of 0.02: confident preferences from
# the first step, as after a few steps at a high learning rate) and the learning rate is high.
# Both runs start from **identical weights** and see **identical batches**; the only difference is
# whether the optimiser adds the balancing loss (coefficient 0.1) to the language-model loss.

# %%
from moe_helpers.model import GPT
from moe_helpers.train import train_phase

ROUTER_INIT_STD = 0.5
AUX_COEF = 0.1
TRAINING = TrainConfig(steps_phase1=COLLAPSE_SIZES["steps"], lr_phase1=1e-2, batch_size=COLLAPSE_SIZES["batch_size"],
                       seq_len=64, warmup_steps=10, log_every=10, eval_every=COLLAPSE_SIZES["steps"],
                       eval_batches=4, device=str(device), seed=0)


def switch_moe(seed: int = 0, bias_update_rate: float = 0.0) -> GPT:
    """The experiment's model: top-1 Switch routing over several experts, a confident router."""
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=COLLAPSE_SIZES["d_model"],
                      n_layers=COLLAPSE_SIZES["n_layers"], n_heads=2, d_ff=2 * COLLAPSE_SIZES["d_model"],
                      max_seq_len=128, num_experts=COLLAPSE_SIZES["num_experts"], top_k=1,
                      renormalize_top_k=False, aux_loss_coef=AUX_COEF, bias_update_rate=bias_update_rate)
    torch.manual_seed(seed)
    model = GPT(cfg)
    for layer in model.moe_layers:
        torch.nn.init.normal_(layer.router.weight, std=ROUTER_INIT_STD)
    return model


print("without the balancing loss:")
collapsed = switch_moe()
history_without = train_phase(collapsed, data, TRAINING, use_aux_loss=False, progress=False)

# %% [markdown]
# The `aux` column above is the balancing term the run *ignored* (it is still computed and
# logged): watch it grow as the router collapses.  Now the same model, same batches, with it:

# %%
print("with the balancing loss:")
balanced = switch_moe()
history_with = train_phase(balanced, data, TRAINING, use_aux_loss=True, progress=False)

# %% [markdown]
# ### A third way: balancing without a loss (DeepSeek-V3)
#
# The balancing loss works by adding a gradient that pulls against the language-model loss, and
# its coefficient is a trade-off: too small and the router collapses, too large and it hurts the
# model.  **Auxiliary-loss-free balancing** (Wang et al. 2024, used by DeepSeek-V3) adds no loss at
# all.  Each expert gets a bias `b_i`, a plain number outside the gradient, that is added to the
# router's scores **only to choose** the experts:
#
# $$S = \text{top-}k_i\,(p_{t,i} + b_i), \qquad g_{t,i} = p_{t,i} \ (\text{renormalised over } S
#   \text{ if the model renormalises}),$$
#
# so the gate weights still come from the unbiased probabilities.  After every optimiser step each
# bias moves by a fixed amount γ towards balance:
#
# $$b_i \leftarrow b_i + \gamma \cdot \operatorname{sign}(\bar c - c_i),$$
#
# where `c_i` counts the slots expert i received in that step and `c̄` is their mean: an overloaded
# expert becomes a little harder to choose, an idle one a little easier.  In the course's code it
# is `ModelConfig(bias_update_rate=γ)`; `train_phase` calls `MoELayer.update_expert_bias` with each
# step's counts.  DeepSeek-V3 used γ = 0.001 over hundreds of thousands of steps; our run is 200
# steps long, so γ is larger.  Same model, same batches, the balancing loss **off**:

# %%
BIAS_UPDATE_RATE = 0.01
print(f"aux-loss-free, gamma = {BIAS_UPDATE_RATE}:")
bias_balanced = switch_moe(bias_update_rate=BIAS_UPDATE_RATE)
history_bias = train_phase(bias_balanced, data, TRAINING, use_aux_loss=False, progress=False)
print("expert bias of MoE layer 0 after training:",
      [round(b, 2) for b in bias_balanced.moe_layers[0].expert_bias.tolist()])

# %% [markdown]
# One number per run: the busiest expert's share of the token slots, averaged over the MoE layers
# and the last three log windows (10 training steps each).  Perfect balance is 1/E.

# %%
from moe_helpers.plots import busiest_expert_share, plot_busiest_share


def final_busiest_share(history, last_logs: int = 3) -> float:
    """The busiest expert's share (mean over MoE layers), averaged over the last log steps."""
    shares = [busiest_expert_share(record) for record in history.records[-last_logs:]]
    return sum(shares) / len(shares)


num_experts = COLLAPSE_SIZES["num_experts"]
runs = {"no balancing": history_without, "Switch balancing loss": history_with,
        f"aux-loss-free bias (γ = {BIAS_UPDATE_RATE})": history_bias}
share_without, share_with, share_bias = (final_busiest_share(history) for history in runs.values())
print(f"uniform share 1/E: {1 / num_experts:.3f}")
for label, history in runs.items():
    print(f"busiest expert, {label:30s} {final_busiest_share(history):.3f}  "
          f"(validation loss {history.last_val_loss:.3f})")

plot_busiest_share(runs, title="The busiest expert's share during training (mean over the MoE layers)")
plt.show()

# %% [markdown]
# *What to notice:* all three runs start from the same weights.  Without balancing, the busiest
# expert climbs far above the uniform line, to several times its fair share of the slots; the
# Switch loss holds it near the uniform line from the start.
# The bias is slower: it moves by only γ per step, so for the first few dozen steps the router's
# preference runs ahead of it; once the biases have grown it brings the busiest expert back close
# to the uniform line -- with no term in the loss at all -- and keeps wobbling a little, because each
# step moves every bias by exactly ±γ, so the load overshoots and comes back.  The printed biases
# are the trace of those steps: each is the sum of its ±γ moves, lowest for the experts that were
# overloaded most often.  DeepSeek-V3 reports that dropping the balancing gradient this way costs
# the language model less than the loss does; one 200-step run on one seed cannot settle that, so
# this notebook does not claim either way.

# %%
from moe_helpers.plots import plot_expert_utilisation, plot_utilisation_over_training, show_token_routing

n_layers = COLLAPSE_SIZES["n_layers"]
layers_shown = [0, n_layers - 1]
fig, axes = plt.subplots(2, 2, figsize=(14, 7))
for row, (label, history) in enumerate([("without", history_without), ("with", history_with)]):
    for column, layer in enumerate(layers_shown):
        plot_utilisation_over_training(history, layer=layer, ax=axes[row, column],
                                       title=f"{label} the balancing loss, MoE layer {layer}")
fig.tight_layout()
plt.show()

# %% [markdown]
# *What to notice:* both runs start from the same routing and both wobble in the first steps;
# without the balancing loss one expert per layer then climbs far above the dashed uniform line
# while the others sink towards zero, and it never lets go; with it every expert is pulled back to
# about 1/E.

# %%
fig, axes = plt.subplots(1, 2, figsize=(15, 0.6 * n_layers + 2.2))
plot_expert_utilisation(history_without.records[-1]["expert_load"], ax=axes[0],
                        title="Last log step, without the balancing loss")
plot_expert_utilisation(history_with.records[-1]["expert_load"], ax=axes[1],
                        title="Last log step, with the balancing loss")
fig.tight_layout()
plt.show()

# %% [markdown]
# *What to notice:* the heatmap of the collapsed run is one dark red cell per layer in a sea of
# blue (starved experts); the balanced run is close to white (the uniform share) everywhere.
#
# Look back at the validation losses printed above: in a run this short the collapsed model is
# *not clearly* worse — its one busy expert saw most of the tokens, so it trained like a dense
# FFN, while each balanced expert saw about 1/E of the data.  What collapse costs is **capacity**: the
# model stores E experts and uses one, so the extra parameters buy nothing, however long it
# trains; and, as the next section shows, a collapsed layer overflows any fixed expert buffer.

# %%
fig, axes = plt.subplots(2, 1, figsize=(12, 3.6))
show_token_routing(tokenizer, collapsed, SENTENCE, layer=0, ax=axes[0],
                   title="Top-1 expert of each token, MoE layer 0, without the balancing loss")
show_token_routing(tokenizer, balanced, SENTENCE, layer=0, ax=axes[1],
                   title="Top-1 expert of each token, MoE layer 0, with the balancing loss")
fig.tight_layout()
plt.show()
sentence_ids = torch.tensor([tokenizer.encode(SENTENCE)], device=device)    # (1, T)
with torch.no_grad():
    sentence_top1 = {name: model(sentence_ids).routing[0].top1_expert.tolist()           # T experts each
                     for name, model in [("collapsed", collapsed), ("balanced", balanced)]}
sentence_experts = {name: len(set(experts)) for name, experts in sentence_top1.items()}
sentence_busiest = {name: max(map(experts.count, experts)) / len(experts) for name, experts in sentence_top1.items()}
print("distinct experts used by the sentence in layer 0:", sentence_experts)
print("share of its tokens on the busiest expert:", {name: round(share, 2) for name, share in sentence_busiest.items()})

# %% [markdown]
# *What to notice:* on a real sentence the collapsed router sends most tokens to the same expert;
# the balanced router spreads the tokens over more experts (look for similar tokens, such as
# punctuation, names or function words, sharing one).

# %% [markdown]
# ## 6 · Capacity factor and dropped tokens
#
# On accelerators every expert gets a fixed-size buffer of
# `capacity = ceil(capacity_factor · N · k / E)` slots (GShard, Lepikhin et al. 2020; Switch uses
# a factor of 1.0 to 1.25).  Slots beyond an expert's capacity are **dropped**: they contribute
# zero, and only the residual connection carries those tokens on.

# %%
figures.capacity_and_dropping(num_experts=4, capacity=3)   # fixed buffers drop what overflows; dropless dispatch keeps every slot


# %% [markdown]
# Which slots go first is a choice: as in GShard, `MoELayer` fills each expert's buffer with every token's *first* choice (in token
# order) before any second choice, so a token loses its less important expert first.  `MoELayer`
# counts the dropped slots in the routing record it returns (`routing.dropped_fraction`).  First the
# count by hand for one batch (top-1 here, so every slot is a first choice):

# %%
import math

eval_inputs, _ = data.batch("val", 16, 64, device, torch.Generator().manual_seed(1))   # (16, 64)


def layer_routing(model, inputs, capacity_factor, layer=0):
    """The routing record of MoE layer ``layer`` when its experts have this capacity factor."""
    moe_layer = model.moe_layers[layer]
    saved, moe_layer.capacity_factor = moe_layer.capacity_factor, capacity_factor
    try:
        with torch.no_grad():
            return model(inputs).routing[layer]
    finally:
        moe_layer.capacity_factor = saved


def dropped_fraction(model, inputs, capacity_factor, layer=0) -> float:
    """Share of layer ``layer``'s token slots dropped when its experts have this capacity factor."""
    return layer_routing(model, inputs, capacity_factor, layer).dropped_fraction


slots = eval_inputs.numel() * 1                                             # N tokens * k=1
no_limit = dropped_fraction(collapsed, eval_inputs, None)                   # no limit: just route
counts = layer_routing(collapsed, eval_inputs, None).tokens_per_expert.cpu() # (E,)
capacity = math.ceil(1.0 * slots / num_experts)
dropped_by_hand = (counts - capacity).clamp(min=0).sum().item() / slots
print(f"collapsed model, layer 0: slots per expert {counts.tolist()}, capacity at factor 1.0 = {capacity}")
print(f"without a capacity limit nothing is dropped ({no_limit:.3f}); at factor 1.0, by hand: {dropped_by_hand:.3f}")
show_match(dropped_by_hand, dropped_fraction(collapsed, eval_inputs, 1.0),
           "dropped share by hand == MoELayer's routing.dropped_fraction", rtol=0, atol=1e-6)

# %%
capacity_factors = [0.25, 0.5, 0.75, 1.0, 1.25, 2.0, 3.0, 4.0, float(num_experts)]
drops = {name: [dropped_fraction(model, eval_inputs, factor) for factor in capacity_factors]
         for name, model in [("without balancing loss", collapsed), ("with balancing loss", balanced)]}

fig, ax = plt.subplots(figsize=(7, 4))
for name, fractions in drops.items():
    ax.plot(capacity_factors, [100 * f for f in fractions], "o-", label=name)
ax.axvline(1.25, color="grey", ls=":", label="factor 1.25 (Switch Transformer)")
ax.set_xscale("log", base=2)
ax.set_xticks(capacity_factors, [f"{f:g}" for f in capacity_factors])
ax.set_xlabel("capacity factor (expert buffer / fair share)")
ax.set_ylabel("token slots dropped, layer 0 (%)")
ax.set_title("Dropped tokens against capacity factor")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
for name, fractions in drops.items():
    print(f"{name:24s}", "  ".join(f"{f:g}: {100 * d:4.1f}%" for f, d in zip(capacity_factors, fractions)))

# %% [markdown]
# *What to notice:* the balanced model drops a few percent of its slots at a capacity factor of
# 1, little or nothing at 1.25 and none from 2 on (its balance is good on average, not in every
# batch, so keep a margin); the collapsed model keeps dropping a large share of its tokens until
# the buffers are several times the fair share — balance is what makes a small, fixed capacity
# affordable.

# %% [markdown]
# ## 7 · Explore: experts, top-k and the balancing coefficient
#
# The widget trains a small MoE (2 blocks, d_model 64, Mixtral routing) for a few dozen steps with
# the settings you choose and shows which experts each token of your sentence goes to, with their
# gate weights, and the expert loads.  A slider acts when you release it; the status line says
# while a model trains (a second or two), and changes made meanwhile are not queued: only the
# newest setting is trained next.  Each setting is trained once, so moving a slider back is instant.
# The top-k slider can never exceed the number of experts.  Try: 1 expert (a dense model); top-k
# equal to the number of experts (every token uses everything); a coefficient of 0 against 0.5.

# %%
from moe_helpers.routing_explorer import routing_explorer

explorer = routing_explorer(num_experts=4, top_k=2, aux_loss_coef=0.01, data=data)
explorer

# %% [markdown]
# ## Exercises
#
# Each exercise asks you to implement one piece of this chapter in a stub function. Replace
# `raise NotImplementedError` with your code and run the cell below it: `check` runs your function
# on hidden test cases and compares it with the course's own implementation. It answers *not
# attempted yet*, *correct*, or *wrong* with a hint that points at the mistake (never at the
# answer). Reference solutions, for when you are done or stuck:
# `solutions/02_expert_routing.py` at the root of the repository.

# %%
from moe_helpers.exercises import check

# %% [markdown]
# **Exercise 1 — the router.** Write `route_top_k(router_logits, k)`: from router logits of shape
# `(N, E)` compute each token's probabilities over the experts, choose its `k` most probable
# experts and renormalise their probabilities to sum to 1 (section 2). Return the pair
# `(weights, experts)`, both of shape `(N, k)`, best expert first, with `experts` the integer
# indices of the chosen experts. The hidden cases include `k = 1`, `k = E`, ties between experts
# and logits as large as 100.

# %%
def route_top_k(router_logits, k):
    """router_logits: (N, E) -> (weights (N, k), experts (N, k)), best expert first."""
    raise NotImplementedError  # your code here


# %%
check("route_top_k", route_top_k)

# %% [markdown]
# **Exercise 2 — dispatch.** Write `moe_forward(x, top_k_weights, top_k_experts, experts)`: given
# the tokens `x` `(N, d)`, a router's choices `top_k_weights` and `top_k_experts` `(N, k)` and a
# list of `E` expert networks, return the layer's output `(N, d)`,
# $y_t = \sum_{i \in S_t} g_{ti}\, \mathrm{Expert}_i(x_t)$. Compute it the way `MoELayer` does
# (section 4): run each expert **once**, on exactly the tokens routed to it, and add its weighted
# outputs back to their tokens — no loop over tokens, and no expert computing a token that did not
# choose it (the checker counts each expert's calls and rows). The hidden cases include top-1 and
# an expert that no token chooses.

# %%
def moe_forward(x, top_k_weights, top_k_experts, experts):
    """x: (N, d); top_k_weights, top_k_experts: (N, k); experts: E modules -> (N, d)."""
    raise NotImplementedError  # your code here


# %%
check("moe_forward", moe_forward)

# %% [markdown]
# **Exercise 3 — the load-balancing loss.** Write `balance_loss(router_logits, k)`: the Switch
# Transformer loss $E \sum_i f_i P_i$ of section 5 for top-`k` routing, without
# `load_balancing_loss`. `f` counts the token slots each expert receives, `P` averages the router
# probabilities; return a tensor, so that the gradient flows through `P` (the checker compares the
# gradient too). The hidden cases include the three tokens of section 5, a collapsed router and an
# expert that is never chosen.

# %%
def balance_loss(router_logits, k):
    """router_logits: (N, E) -> the loss, a tensor with a gradient."""
    raise NotImplementedError  # your code here


# %%
check("balance_loss", balance_loss)


# %% [markdown]
# ## Further reading
#
# - Shazeer et al. 2017, [Outrageously Large Neural Networks](https://arxiv.org/abs/1701.06538): the
#   sparsely-gated MoE layer, top-k gating and the first balancing losses.
# - Lepikhin et al. 2020, [GShard](https://arxiv.org/abs/2006.16668): top-2 routing with renormalised
#   gates, expert capacity and dropped tokens at scale.
# - Fedus et al. 2021, [Switch Transformer](https://arxiv.org/abs/2101.03961): top-1 routing, the
#   load-balancing loss of section 5 (eqs. 4-6) and the capacity factor.
# - Zoph et al. 2022, [ST-MoE](https://arxiv.org/abs/2202.08906): the router z-loss and a practical
#   guide to stable MoE training.
# - Jiang et al. 2024, [Mixtral of Experts](https://arxiv.org/abs/2401.04088): the top-2-of-8 routing
#   with renormalised weights that `MoELayer` uses by default.
# - Dai et al. 2024, [DeepSeekMoE](https://arxiv.org/abs/2401.06066): many small experts plus shared
#   ones, routed without renormalisation.
# - Wang et al. 2024, [Auxiliary-Loss-Free Load Balancing](https://arxiv.org/abs/2408.15664): the
#   per-expert bias of section 5, studied on its own.
# - DeepSeek-AI 2024, [DeepSeek-V3](https://arxiv.org/abs/2412.19437): the bias method and the
#   sequence-wise balancing loss in a 671 B-parameter model.
# - Muennighoff et al. 2024, [OLMoE](https://arxiv.org/abs/2409.02060): a fully open MoE, with
#   experiments on routing, balancing and expert specialisation.
# - Maarten Grootendorst, [A Visual Guide to Mixture of Experts](https://newsletter.maartengrootendorst.com/p/a-visual-guide-to-mixture-of-experts):
#   the router, top-k, load balancing and capacity, drawn step by step.
# - Hugging Face transformers, [`modeling_mixtral.py`](https://github.com/huggingface/transformers/blob/main/src/transformers/models/mixtral/modeling_mixtral.py):
#   a production sparse block that returns its router logits, and its `load_balancing_loss_func`.

# %% [markdown]
# ## Checks — the claims above, verified
#
# These cells verify every claim this lesson makes, on the numbers it computed; `make test` runs
# them. You do not need them to follow the lesson.

# %%
# Sections 1-5: the layer, the router, renormalisation, dispatch and the balancing loss
assert type(moe.experts[0]) is FeedForward, "the experts should be the dense FFN's class"
assert expert_parameters == NUM_EXPERTS * ffn_parameters, "E experts should hold E FFNs' parameters"
assert router_parameters == NUM_EXPERTS * D_MODEL, "the router should be one (E, d_model) matrix"
assert router_probs.max() < 0.75, f"an untrained expert took {router_probs.max():.3f} of a token's probability"
assert top_probs.sum(dim=-1).max() < 0.9, f"the chosen experts held up to {top_probs.sum(dim=-1).max():.3f}"
torch.testing.assert_close(ratio_renormalised, torch.ones_like(ratio_renormalised))
torch.testing.assert_close(ratio_raw, chosen_mass)
assert ratio_raw.mean() < 0.5, f"without renormalisation the output kept {ratio_raw.mean():.3f} of its size"
assert top1_switch > 1e-3, f"the Switch-style router got almost no gradient ({top1_switch:.1e})"
assert top1_renormalised < 1e-5 * top1_switch, f"the renormalised top-1 router got a gradient ({top1_renormalised:.1e})"
assert torch.equal(tokens_per_expert, routing.tokens_per_expert), "MoELayer counted other slots per expert"
assert int(tokens_per_expert.sum()) == len(pieces) * TOP_K, "every token should fill exactly k slots"
balanced_router, collapsed_router = list(routers)[:2]
assert abs(balance[balanced_router] - 1.0) < 1e-3, f"balanced router: loss {balance[balanced_router]:.4f}"
assert abs(balance[collapsed_router] - 8.0) < 1e-2, f"collapsed router: loss {balance[collapsed_router]:.4f}"
assert abs(below_one - 0.8956) < 1e-4, f"the three-token example gave {below_one:.4f}"
assert abs(batch_level - 1.0) < 1e-3 and abs(sequence_level - 4.0) < 1e-2, \
    f"per batch {batch_level:.3f}, per sequence {sequence_level:.3f}"

# %%
# Sections 5-6: the training runs and the capacity factor
first_loads = [history.records[0]["expert_load"] for history in (history_without, history_with, history_bias)]
assert first_loads[0] == first_loads[1] == first_loads[2], "the three runs should start from the same routing"
assert share_without > 3 / num_experts, f"no collapse without the balancing loss (busiest share {share_without:.3f})"
assert share_with < 2 / num_experts, f"unbalanced with the balancing loss (busiest share {share_with:.3f})"
assert share_bias < 2 / num_experts, f"unbalanced with the expert bias (busiest share {share_bias:.3f})"
assert share_without > 2 * max(share_with, share_bias), "collapse should stand out against both balanced runs"
assert history_without.last_val_loss < history_with.last_val_loss + 0.1, \
    f"the collapsed model is clearly worse: {history_without.last_val_loss:.3f} vs {history_with.last_val_loss:.3f}"
assert sentence_experts["collapsed"] < sentence_experts["balanced"], f"distinct experts: {sentence_experts}"
assert sentence_busiest["collapsed"] > 0.5, f"the collapsed router's busiest expert took {sentence_busiest['collapsed']:.0%}"
assert no_limit == 0.0, f"{no_limit:.3f} of the slots dropped without a capacity limit"
for name, fractions in drops.items():
    assert all(a >= b for a, b in zip(fractions, fractions[1:])), f"{name}: more capacity dropped more"
    assert fractions[-1] == 0.0, f"{name}: slots dropped at capacity factor E"
at_switch_factor = capacity_factors.index(1.25)
balanced_drops, collapsed_drops = drops["with balancing loss"], drops["without balancing loss"]
at_factor_1 = capacity_factors.index(1.0)
assert balanced_drops[at_factor_1] < 0.10, f"balanced model dropped {balanced_drops[at_factor_1]:.1%} at 1.0"
assert balanced_drops[at_switch_factor] < 0.10, f"balanced model dropped {balanced_drops[at_switch_factor]:.1%} at 1.25"
assert all(d == 0.0 for d in balanced_drops[capacity_factors.index(2):]), "balanced model dropped slots at factor 2+"
assert collapsed_drops[at_switch_factor] > balanced_drops[at_switch_factor] + 0.3, \
    f"collapsed model dropped only {collapsed_drops[at_switch_factor]:.1%} at 1.25"
assert collapsed_drops[capacity_factors.index(2.0)] > 0.3, "the collapsed model stopped dropping at twice the fair share"
print("all checks passed")
