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
# # 03 · Parameter accounting
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/moe-course/moe-course/blob/main/notebooks/03_parameter_accounting.ipynb)
#
# An MoE stores many experts but runs only a few of them for each token. This notebook
# counts exactly what that means.
#
# In this notebook you will:
#
# - count the parameters of the course's `laptop` model by hand, then check your count against the model's modules;
# - derive the original note's formulas (`inactive = expert_params × (E − k) × blocks`, active, efficiency)
#   and check them on a real MoE, including shared experts and leading dense blocks;
# - reproduce the note's phase banners with the `seed` preset, and test whether any model
#   gives the note's phase-3 banner;
# - count FLOPs per token and memory, and see why an MoE needs the memory of its *total*
#   parameters but only the compute of its *active* ones;
# - measure what an MoE buys: train it from scratch against a dense model with the same active
#   parameters and one with the same total, three seeds each, per step, per FLOP and per second;
# - put eight published MoE LLMs (Mixtral, OLMoE, Qwen, DeepSeekMoE, Phi, GPT-OSS) next to their
#   published parameter counts;
# - explore any configuration with a parameter calculator.
#
# Expected run time on a laptop CPU: about a minute, most of it the nine short training runs of section 6.

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
SCALE_UP = False  # True: also build the seed preset's 372 M-parameter MoE (about 1.5 GB in float32)
                  # and count it module by module, count FLOPs for a 2048-token context, and run
                  # section 6's dense-vs-MoE comparison 4x longer with 5 seeds.

SEQ_LEN = 2048 if SCALE_UP else 256      # context length for the FLOP counts

# %%
from moe_helpers.accounting import (count_from_config, count_parameters, flops_per_token,
                                    memory_bytes, phase_banner)
from moe_helpers.checks import show_match
from moe_helpers.config import ModelConfig, preset
from moe_helpers.model import GPT

# %% [markdown]
# **The original note.** This course grew from a short note describing a three-phase training script
# for TinyStories: train a dense model (phase 1), upcycle it into a Mixture-of-Experts (phase 2), grow
# that MoE in width and depth (phase 3), 100 steps a phase. The note's script printed a *banner* at the
# start of each phase -- total parameters, active parameters per token, inactive parameters, idle
# experts and an "efficiency" (the active share) -- and checked the Phase 2→3 loss jump: "if it's
# < 0.001, bilateral growth is working perfectly". The note itself is not part of the course; what we
# reproduce from it are its formulas and banners (here, with the `seed` preset) and its jump check
# (notebooks 05 and 06, and `python -m moe_helpers train`). "The note" below always means this one.

# %% [markdown]
# ## 1. Counting the `laptop` model by hand
#
# The `laptop` preset is a dense decoder: vocabulary $V = 2048$, width $d = 128$, $L = 4$ blocks,
# 4 heads of width 32 (so all heads together are $d$ wide), SwiGLU hidden size $d_{ff} = 384$,
# untied embeddings, no biases. Every weight matrix is a `Linear(in, out)` with `in × out`
# parameters:
#
# | part | formula | laptop |
# | --- | --- | ---: |
# | token embedding | $V \cdot d$ | 2048 · 128 = 262,144 |
# | LM head (untied) | $V \cdot d$ | 262,144 |
# | attention: `wq`, `wk`, `wv`, `wo`, each $d \times d$ | $L \cdot 4 d^2$ | 4 · 4 · 128² = 262,144 |
# | SwiGLU FFN: `w1`, `w3` ($d \times d_{ff}$), `w2` ($d_{ff} \times d$) | $L \cdot 3\, d\, d_{ff}$ | 4 · 3 · 128 · 384 = 589,824 |
# | RMSNorm gains: two per block and a final one | $(2L + 1)\, d$ | 9 · 128 = 1,152 |
# | **total** | | **1,377,408** |
#
# Rotary position embeddings have no parameters, so the context length changes nothing here.
# Now the same count as code, and then measured on the modules of a real model.

# %%
def count_by_hand(cfg: ModelConfig) -> dict:
    """Parameters of a dense, untied model with d_model = n_heads * head_dim, part by part."""
    d, layers, vocab = cfg.d_model, cfg.n_layers, cfg.vocab_size
    return {
        "embedding": vocab * d,
        "lm_head": vocab * d,
        "attention": layers * 4 * d * d,
        "dense_ffn": layers * 3 * d * cfg.d_ff,
        "norms": (2 * layers + 1) * d,
    }


laptop = preset("laptop").model
by_hand = count_by_hand(laptop)
laptop_model = GPT(laptop)
measured = count_parameters(laptop_model)

for part, count in by_hand.items():
    print(f"{part:<10} by hand {count:>9,}   measured {measured.by_part[part]:>9,}")
print(f"{'total':<10} by hand {sum(by_hand.values()):>9,}   measured {measured.total:>9,}")
show_match([*by_hand.values(), sum(by_hand.values())], [*(measured.by_part[part] for part in by_hand), measured.total],
           "count_by_hand == moe_helpers.accounting.count_parameters, part by part")

# %% [markdown]
# Where did the measured numbers come from? `count_parameters` walks `model.named_parameters()`
# and sorts each tensor into a part by its name. Here are the tensors of the first block:

# %%
for name, param in laptop_model.named_parameters():
    if name.startswith("layers.0."):
        print(f"{name:<32} {str(tuple(param.shape)):<12} {param.numel():>7,}")

# %% [markdown]
# ## 2. The MoE: total, active, inactive
#
# Sparse upcycling (notebook 04) turns every block's FFN into $E$ copies ("experts") plus a
# router `Linear(d, E)`. With $P = 3\, d\, d_{ff}$ parameters per expert and $B$ MoE blocks:
#
# - **total**: each MoE block stores $E \cdot P + d \cdot E$ instead of $P$;
# - each token runs through only $k$ experts of each block, so $E - k$ experts, $P$ parameters
#   each, sit **idle** for it:
#   $$\text{inactive} = P \cdot (E - k) \cdot B, \qquad \text{experts idle} = (E - k) \cdot B$$
# - everything else (embedding, attention, norms, the router, the $k$ chosen experts, the LM head)
#   is used by every token: $\text{active} = \text{total} - \text{inactive}$;
# - $\text{efficiency} = \text{active} / \text{total}$.
#
# The note writes the same thing per block: `total_ffn = P·E + router`, `active_ffn = P·k + router`,
# so `total_ffn − active_ffn = P·(E − k)`; the router cancels because every token uses it.
# (The note counts the input embedding as active, as most publishers do; section 7 shows one
# that does not.) Here is the note's code, run on the `laptop` model upcycled to 4 experts, top-2:

# %%
_, laptop_moe, _ = preset("laptop").phase_configs()
moe_model = GPT(laptop_moe)

first_ffn = moe_model.layers[0].ffn
expert_params = sum(p.numel() for p in first_ffn.experts[0].parameters())   # w1, w2, w3
router_params = sum(p.numel() for p in first_ffn.router.parameters())      # Linear(d_model -> E)
num_experts, top_k = first_ffn.num_experts, first_ffn.top_k
num_blocks = len(moe_model.moe_layers)

total_params = sum(p.numel() for p in moe_model.parameters())
inactive_params = expert_params * (num_experts - top_k) * num_blocks
active_params = total_params - inactive_params
efficiency = 100 * active_params / total_params

total_ffn = expert_params * num_experts + router_params                      # per block
active_ffn = expert_params * top_k + router_params

print(f"expert {expert_params:,} params, router {router_params:,}, "
      f"top-{top_k} of {num_experts} experts in {num_blocks} blocks")
print(f"total {total_params:,}  active {active_params:,}  inactive {inactive_params:,}  "
      f"efficiency {efficiency:.1f}%  ({(num_experts - top_k) * num_blocks} experts idle)")
print(f"per block, the note's way: total_ffn - active_ffn = {total_ffn - active_ffn:,}; "
      f"x {num_blocks} blocks = {(total_ffn - active_ffn) * num_blocks:,} inactive")

counts = count_parameters(moe_model)
show_match((counts.total, counts.active, counts.inactive, counts.experts_idle, counts.efficiency),
           (total_params, active_params, inactive_params, (num_experts - top_k) * num_blocks, efficiency),
           "the note's formulas == moe_helpers.accounting.count_parameters")

# %% [markdown]
# **Shared experts and dense blocks.** DeepSeekMoE-style models add *shared experts* that every
# token runs (always active, so they are not in $E - k$), and keep the first blocks dense
# (`first_k_dense`: no experts there, so $B$ counts only the MoE blocks). The formula holds
# unchanged once $B$ and the always-active parts are counted right:

# %%
from moe_helpers import figures

figures.shared_and_routed_experts(num_shared=1, num_routed=8, top_k=2)   # every token passes the shared expert, and 2 of the 8 routed ones


# %%
deepseek_style = laptop_moe.replace(num_shared_experts=1, shared_d_ff=192, first_k_dense=1, dense_d_ff=768)
deepseek_counts = count_parameters(GPT(deepseek_style))
moe_blocks = deepseek_style.n_layers - deepseek_style.first_k_dense
expert_size = 3 * deepseek_style.d_model * deepseek_style.d_ff
print(deepseek_counts.by_part)
print(f"MoE blocks {moe_blocks}, experts idle {deepseek_counts.experts_idle}, "
      f"efficiency {deepseek_counts.efficiency:.1f}%")
deepseek_inactive_by_formula = expert_size * (deepseek_style.num_experts - deepseek_style.top_k) * moe_blocks
print(f"inactive: P x (E - k) x B = {deepseek_inactive_by_formula:,}; counted on the modules: {deepseek_counts.inactive:,}")

# %% [markdown]
# Which parts does one token use? The routed experts count $k$ of $E$; every other part fully:

# %%
from moe_helpers.widgets import active_by_part

used = active_by_part(counts)
print(f"{'part':<15}{'stored':>12}{'used per token':>16}")
for part, stored in counts.by_part.items():
    print(f"{part:<15}{stored:>12,}{used[part]:>16,}")
print(f"{'total':<15}{counts.total:>12,}{sum(used.values()):>16,}   (active: {counts.active:,})")

# %% [markdown]
# ## 3. The original note's banners
#
# The note prints a banner at the start of each phase: a 100.04 M dense model, then an MoE of
# 371.64 M parameters with 138.88 M active (top-2 of 8 experts, 7 blocks, so 6 × 7 = 42 experts
# idle). The `seed` preset rebuilds those sizes with this course's conventions (SwiGLU,
# RMSNorm, tied embeddings, GPT-2's vocabulary padded to 50304).
#
# How were its dimensions found? The inactive count fixes one expert's size,
# $P = 232.76\text{ M} / 42$, so $d \cdot d_{ff} = P / 3$; the dense total then fixes $d$.
# A search over widths that are a multiple of the 64-wide heads:

# %%
NOTE = {"dense total": 100.04e6, "moe total": 371.64e6, "moe active": 138.88e6, "moe inactive": 232.76e6}


def seed_candidate(d_model: int) -> ModelConfig:
    """7 tied blocks with the expert size the note's inactive count asks for."""
    d_ff = round(NOTE["moe inactive"] / (42 * 3 * d_model))
    return ModelConfig(vocab_size=50304, d_model=d_model, n_layers=7, n_heads=d_model // 64,
                       d_ff=d_ff, tie_embeddings=True)


def worst_error(dense_cfg: ModelConfig) -> float:
    dense, moe = count_from_config(dense_cfg), count_from_config(dense_cfg.upcycled(8, 2))
    ours = {"dense total": dense.total, "moe total": moe.total, "moe active": moe.active,
            "moe inactive": moe.inactive}
    return max(abs(ours[key] / NOTE[key] - 1) for key in NOTE)


candidates = sorted((worst_error(seed_candidate(d)), d) for d in range(64, 2049, 64))
for error, d in candidates[:3]:
    print(f"d_model {d:>4}  d_ff {seed_candidate(d).d_ff:>5}  worst error {100 * error:.3f}%")
best_d = candidates[0][1]
print(f"the seed preset: d_model {preset('seed').model.d_model}, d_ff {preset('seed').model.d_ff}")

# %% [markdown]
# The best width is the preset's. Now the banners, counted from the configs (no 372 M model is
# built; set `SCALE_UP` to build it and count it module by module):

# %%
seed = preset("seed")
seed_dense, seed_moe, seed_large = seed.phase_configs()
dense_counts, moe_counts = count_from_config(seed_dense), count_from_config(seed_moe)

phase_banner("Phase 1 — Dense", dense_counts, seed.train.steps(1), seed.train.lr(1), device)
print()
phase_banner("Phase 2 — MoE", moe_counts, seed.train.steps(2), seed.train.lr(2), device)

ours = {"dense total": dense_counts.total, "moe total": moe_counts.total,
        "moe active": moe_counts.active, "moe inactive": moe_counts.inactive}
print()
banner_errors = {key: ours[key] / NOTE[key] - 1 for key in NOTE}
for key, error in banner_errors.items():
    print(f"{key:<13} note {NOTE[key] / 1e6:8.2f} M   seed preset {ours[key] / 1e6:8.2f} M   {100 * error:+.3f}%")

if SCALE_UP:
    seed_moe_measured = count_parameters(GPT(seed_moe))
    print("measured on the modules of the 372 M-parameter model:",
          "identical" if seed_moe_measured == moe_counts else "DIFFERENT")

# %% [markdown]
# ## 4. The note's phase-3 banner: does any model produce it?
#
# The note ends with an "expected output" for phase 3:
#
# ```
#   Total Parameters:  1467.60 M
#   Active Params/tok:  548.70 M  (top-2 of 8 experts)
#   Inactive Params:    918.90 M  (66 experts idle)
#   Efficiency: 37.4% active per forward pass
# ```
#
# 66 idle experts = 6 × 11, so phase 3 has 11 MoE blocks: the 7 of phase 2 plus 4 new ones.
# Phase 3 is bilateral growth: width × an integer factor $n$ (so every weight can be tiled
# exactly, notebook 05) and 4 more blocks. Let's test that against the numbers.
#
# **(a) Integer width factors.** The course's own phase 3 is $n = 2$; here are $n = 1 \dots 4$:

# %%
NOTE_PHASE3 = {"total": 1467.60e6, "active": 548.70e6, "inactive": 918.90e6}

integer_growth = {factor: count_from_config(seed_moe.widened(factor).deepened(4)) for factor in range(1, 5)}
print(f"{'width x':>7}{'total':>12}{'active':>12}{'inactive':>12}{'idle':>6}{'efficiency':>12}")
for factor, grown in integer_growth.items():
    print(f"{factor:>7}{grown.total / 1e6:>10.2f} M{grown.active / 1e6:>10.2f} M"
          f"{grown.inactive / 1e6:>10.2f} M{grown.experts_idle:>6}{grown.efficiency:>11.1f}%")

# %% [markdown]
# No integer factor comes within 5%. **(b) What factor would it take?** Widening by $n$ multiplies
# each expert by $n^2$ ($d$ and $d_{ff}$ both grow), and 42 idle experts become 66:
# $918.90 / 232.76 = n^2 \cdot 66 / 42$.

# %%
needed_n = (NOTE_PHASE3["inactive"] / NOTE["moe inactive"] * 42 / 66) ** 0.5
print(f"width factor the inactive count asks for: n = {needed_n:.3f}")


def grown_counts(n: float, tied: bool) -> dict:
    """Counts of the phase-2 model widened by a real factor n, with 11 blocks (by formula)."""
    d, d_ff, vocab, experts = seed_moe.d_model * n, seed_moe.d_ff * n, seed_moe.vocab_size, seed_moe.num_experts
    expert = 3 * d * d_ff
    total = (1 if tied else 2) * vocab * d + 11 * (4 * d * d + experts * expert + experts * d + 2 * d) + d
    inactive = expert * (experts - seed_moe.top_k) * 11
    return {"total": total, "active": total - inactive, "inactive": inactive}


at_needed_n = {tied: grown_counts(needed_n, tied) for tied in (True, False)}
for tied, at_n in at_needed_n.items():
    print(f"n = {needed_n:.3f}, {'tied' if tied else 'untied'}: total {at_n['total'] / 1e6:.2f} M, "
          f"active {at_n['active'] / 1e6:.2f} M, efficiency {100 * at_n['active'] / at_n['total']:.1f}%")

# %% [markdown]
# Even a width factor that is not an integer (so no exact growth) misses the total and the
# active count by several percent. **(c) Any model at all?** Forget growth: search every width
# $d$ (a multiple of 8 up to 8192), every integer $d_{ff}$, GPT-2's vocabulary (50257, or 50304
# padded), tied or untied, 11 blocks, 8 experts, top-2, for a model whose banner prints exactly
# the note's three numbers:

# %%
def rounds_like_note(count: float, note: float) -> bool:
    """Whether the banner (two decimals in millions) would print ``note``."""
    return round(count / 1e6, 2) == round(note / 1e6, 2)


matches, near = [], []
for vocab in (50257, 50304):
    for tied in (True, False):
        for d in range(8, 8193, 8):
            d_ff = round(NOTE_PHASE3["inactive"] / (66 * 3 * d))
            cfg = ModelConfig(vocab_size=vocab, d_model=d, n_layers=11, n_heads=d // 8, d_ff=d_ff,
                              num_experts=8, top_k=2, tie_embeddings=tied)
            c = count_from_config(cfg)
            error = max(abs(getattr(c, key) / NOTE_PHASE3[key] - 1) for key in NOTE_PHASE3)
            near.append((error, vocab, tied, d, d_ff))
            if all(rounds_like_note(getattr(c, key), NOTE_PHASE3[key]) for key in NOTE_PHASE3):
                matches.append(cfg)
near.sort()
print(f"configs whose banner prints exactly 1467.60 / 548.70 / 918.90: {len(matches)}")
for error, vocab, tied, d, d_ff in near[:3]:
    print(f"  nearest: vocab {vocab}, {'tied' if tied else 'untied'}, d_model {d}, d_ff {d_ff}: "
          f"worst error {100 * error:.3f}%  (width x{d / seed_moe.d_model:.2f}, d_ff x{d_ff / seed_moe.d_ff:.2f})")

# %% [markdown]
# (With the vocabulary free as well, exact fits always exist, since one more free integer absorbs
# the rounding, so they would prove nothing.) **(d) A telling pattern.** Divide the phase-3
# numbers by the phase-2 ones, and do the same for each model grown from phase 2:

# %%
def growth_ratios(after: dict, before: dict) -> dict:
    return {key: after[key] / before[key] for key in ("total", "active", "inactive")}


note_ratios = growth_ratios(NOTE_PHASE3, {key: NOTE[f"moe {key}"] for key in NOTE_PHASE3})
print("note, phase 3 / phase 2:", {key: round(ratio, 3) for key, ratio in note_ratios.items()})
print(f"efficiency: phase 2 {100 * NOTE['moe active'] / NOTE['moe total']:.2f}%, "
      f"phase 3 {100 * NOTE_PHASE3['active'] / NOTE_PHASE3['total']:.2f}%")

phase2 = {"total": moe_counts.total, "active": moe_counts.active, "inactive": moe_counts.inactive}
growth_ratios_by_factor = {factor: growth_ratios({"total": grown.total, "active": grown.active,
                                                  "inactive": grown.inactive}, phase2)
                           for factor, grown in integer_growth.items()}
for factor, ratios in growth_ratios_by_factor.items():
    print(f"width x{factor}, 11 blocks / phase 2:", {key: round(ratio, 3) for key, ratio in ratios.items()})

# %% [markdown]
# In the note, total, active and inactive all grow by the same factor (about 3.95) and the
# efficiency stays at 37.4%. Growth cannot do that: widening multiplies the embedding by $n$
# but the experts and attention by $n^2$, and new blocks add experts but no embedding, so the
# three numbers grow by different factors.
#
# **What we find.** No model reachable from the phase-2 model by exact growth (integer width
# factor, 4 new blocks) prints the note's phase-3 banner; the width the inactive count asks
# for is $n \approx 1.585$, not an integer, and even that width misses the total. No model with
# GPT-2's vocabulary prints the banner exactly either; the nearest ones miss by a little over
# a tenth of a percent and are not growths of phase 2 (width ×1.76, FFN ×1.43). The banner
# looks like phase 2's numbers scaled up by one constant: an illustration, not a count. This
# course's phase 3 is the `seed` preset grown ×2 in width and by 4 blocks; its banner reads:

# %%
large_counts = count_from_config(seed_large)
phase_banner("Phase 3 — Large MoE (Bilateral Growth)", large_counts, seed.train.steps(3), seed.train.lr(3), device)

# %% [markdown]
# ## 5. FLOPs and memory
#
# **Compute.** A weight matrix with $N$ entries costs one multiply and one add per entry for each
# token: $2N$ FLOPs. Attention adds the score matrix $QK^\top$ and the weighted sum of values,
# $2 \cdot T \cdot d_{head}$ each per head for a context of $T$ tokens. Per token, forward
# (PaLM, Chowdhery et al. 2022, appendix B):
#
# $$C_\text{forward} = 2 N_\text{active matmul} + 4\, L\, T\, H\, d_{head}, \qquad C_\text{training} \approx 3\, C_\text{forward}$$
#
# (the backward pass costs twice the forward). $N_\text{active matmul}$ counts the *active*
# parameters that multiply: not the embedding (a table lookup) nor the norm gains, but the LM
# head, the router and only the $k$ chosen experts. Let's count it by hand for the `laptop`
# MoE and then let PyTorch count the FLOPs of a real forward pass.

# %%
flop_cfg = laptop_moe.replace(max_seq_len=SEQ_LEN)      # the context length changes no parameter
flop_counts = count_from_config(flop_cfg)
matmul_params = flop_counts.active - flop_counts.by_part["embedding"] - flop_counts.by_part["norms"]
attention_scores = 4 * flop_cfg.n_layers * SEQ_LEN * flop_cfg.n_heads * flop_cfg.head_size
forward_by_hand = 2 * matmul_params + attention_scores
print(f"forward FLOPs per token at {SEQ_LEN} tokens: 2 x {matmul_params:,} + {attention_scores:,} = {forward_by_hand:,}")
show_match(float(forward_by_hand), flops_per_token(flop_cfg, SEQ_LEN).forward,
           "FLOPs by hand == moe_helpers.accounting.flops_per_token", rtol=0, atol=0)

# %%
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

flop_model = GPT(flop_cfg)
batch = torch.randint(0, flop_cfg.vocab_size, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0))
# The "math" attention kernel spells attention out as matrix products torch can count.
with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
    flop_model(batch)
measured_per_token = counter.get_total_flops() / batch.numel()
print(f"torch's FLOP counter: {measured_per_token:,.0f} FLOPs per token (formula: {forward_by_hand:,})")

# %% [markdown]
# Exactly equal: every routed token went through exactly $k$ experts' matrices, nothing more.
#
# **Memory.** Any token may pick any expert, so all experts live in memory, whether or not a
# given token uses them: memory follows the **total**. Training also keeps a gradient per
# parameter and AdamW's two moment estimates (float32) per parameter. In float32 that is
# 4 + 4 + 8 = 16 bytes per parameter. `memory_bytes(cfg, torch.bfloat16)` counts bf16 weights and
# gradients (2 + 2 + 8 = 12 bytes) and does **not** count the float32 master copy of the weights that
# mixed-precision training usually keeps (4 bytes more, 16 in all; this course's `--precision bf16`
# keeps float32 weights and autocasts, so its state is the float32 16 bytes). For the `laptop` MoE
# the weights are real tensors we can measure:

# %%
laptop_memory = memory_bytes(laptop_moe, torch.float32, "adamw")
weight_bytes = sum(p.numel() * p.element_size() for p in moe_model.parameters())
print(f"weights {weight_bytes:,} B measured, {laptop_memory.weights:,} B by formula; "
      f"training total {laptop_memory.total / 2**20:.1f} MiB (weights + gradients + AdamW)")
print(f"that is {laptop_memory.total / counts.total:g} bytes per parameter: 4 + 4 + 2 x 4")

# %% [markdown]
# Now the note's models: the 100 M dense phase 1, the 372 M MoE phase 2, and, for comparison, a
# dense model as big as the MoE (the phase-1 model with an 8 times wider FFN). Memory below is
# pure-bf16 training at 12 bytes per parameter (no float32 master weights).

# %%
wide_dense = seed_dense.replace(d_ff=8 * seed_dense.d_ff)
models = {"dense (phase 1)": seed_dense, "MoE top-2 of 8 (phase 2)": seed_moe, "dense, 8x wider FFN": wide_dense}
memory_gb = {name: memory_bytes(cfg, torch.bfloat16, "adamw").total / 1e9 for name, cfg in models.items()}
gflops = {name: flops_per_token(cfg, SEQ_LEN).forward / 1e9 for name, cfg in models.items()}
for name, cfg in models.items():
    print(f"{name:<26} total {count_from_config(cfg).total / 1e6:7.2f} M  active {count_from_config(cfg).active / 1e6:7.2f} M"
          f"  training memory {memory_gb[name]:5.2f} GB  forward {gflops[name]:5.3f} GFLOP/token")

dense_name, moe_name, wide_name = list(models)

fig, (ax_memory, ax_compute) = plt.subplots(1, 2, figsize=(11, 3.6))
colors = ["C0", "C1", "C2"]
ax_memory.barh(list(models), list(memory_gb.values()), color=colors)
ax_memory.set_xlabel("GB to train (bf16 weights and gradients, fp32 AdamW)")
ax_memory.set_title("Memory follows the total")
ax_memory.invert_yaxis()
ax_compute.barh(list(models), list(gflops.values()), color=colors)
ax_compute.set_xlabel(f"GFLOPs per token, forward ({SEQ_LEN}-token context)")
ax_compute.set_title("Compute follows the active parameters")
ax_compute.invert_yaxis()
ax_compute.set_yticklabels([])
fig.tight_layout()
plt.show()

# %% [markdown]
# *What to notice:* the MoE (orange) needs the memory of the big dense model (green) but costs
# barely more compute per token than the small one (blue).

# %% [markdown]
# ## 6. Is an MoE worth it? Measured
#
# Section 5 showed the bill: an MoE pays the memory of its *total* parameters and the compute of
# its *active* ones. What do the extra, mostly idle, parameters buy? Counting cannot say; training
# can. Three models, each trained from scratch, all built from one small dense model by
# `moe_helpers.compare.matched_configs`:
#
# - **dense** (equal active): the baseline, a SwiGLU FFN of width $d_{ff}$ in each block;
# - **MoE, equal active**: $E = 8$ experts of width $d_{ff}/2$, top-2, so the two experts a token
#   visits hold exactly the baseline FFN's $3\,d\,d_{ff}$ parameters. Only the router ($d \cdot E$
#   per block) is extra: the same FLOPs per token up to that router, and about twice the parameters;
# - **dense, equal total**: one FFN as wide as the eight experts and the router together,
#   $d_{ff}' = \text{round}\big((3\,d \cdot E \cdot d_{ff}/2 + d\,E) / 3d\big)$: it stores what the MoE
#   stores, and runs all of it for every token.
#
# This is the Switch Transformer's comparison (Fedus et al. 2021, sec. 3): an MoE against a dense
# model with the same FLOPs per token, and against a bigger dense model. One recipe for all three:
# the same data, batches, steps and learning-rate schedule. Within a seed the three also start from
# the same embedding, attention and LM-head weights (only the FFNs differ; `share_non_ffn_weights`),
# so the seed-to-seed spread of everything else cancels when we compare them seed by seed. Three
# seeds each. The models are tiny (width 32, 2 blocks, a 512-token vocabulary) so that the nine runs
# take about half a minute on a CPU; `benchmarks/why_moe.py` runs the same comparison four times longer.

# %%
from IPython.display import Markdown, display
from moe_helpers.compare import arm_sizes, compare_from_scratch, format_arm_table, matched_configs
from moe_helpers.config import TrainConfig

WHY = (dict(steps=1000, seeds=(0, 1, 2, 3, 4)) if SCALE_UP else dict(steps=250, seeds=(0, 1, 2)))
WHY_SEQ_LEN, NUM_EXPERTS_WHY, TOP_K_WHY = 64, 8, 2
small_dense = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=2, d_ff=128, max_seq_len=WHY_SEQ_LEN)
arms = matched_configs(small_dense, num_experts=NUM_EXPERTS_WHY, top_k=TOP_K_WHY)
sizes = arm_sizes(arms, WHY_SEQ_LEN)
display(Markdown(format_arm_table(sizes)))

dense_size, moe_size, wide_size = sizes["dense"], sizes["moe_equal_active"], sizes["dense_equal_total"]
router = small_dense.n_layers * small_dense.d_model * NUM_EXPERTS_WHY
print(f"MoE active - dense active = {moe_size.active - dense_size.active:,} = the routers "
      f"({100 * (moe_size.active / dense_size.active - 1):.2f}% more active parameters, "
      f"{100 * (moe_size.flops_forward / dense_size.flops_forward - 1):.2f}% more FLOPs per token)")
moe_cfg = arms["moe_equal_active"]
exact_width = (3 * moe_cfg.d_model * moe_cfg.d_ff * NUM_EXPERTS_WHY + moe_cfg.d_model * NUM_EXPERTS_WHY) / (3 * moe_cfg.d_model)
print(f"equal-total dense - MoE total = {wide_size.total - moe_size.total:+,} "
      f"({100 * (wide_size.total / moe_size.total - 1):+.3f}%: its d_ff {arms['dense_equal_total'].d_ff} "
      f"rounds {exact_width:.2f})")

# %% [markdown]
# The data: the first 5,000 stories with a 512-token tokenizer (a few seconds to prepare the first
# time, then cached like notebook 01's). The recipe: AdamW at a peak learning rate of 0.01, 20 warmup
# steps, cosine decay, batches of 16 windows of 64 tokens, validation on the same fixed batches for
# every run. The MoE is trained on its language-model loss plus the balancing and z-losses of
# notebook 02; the validation loss is the language-model loss alone. The runs go seed by seed,
# the three models within a seed one after the other, so that a busy machine slows them alike.

# %%
from moe_helpers.data import prepare_data

why_data = prepare_data(vocab_size=512, limit=5000, val_limit=500, tokenizer_limit=5000)
WHY_TRAIN = TrainConfig(steps_phase1=WHY["steps"], lr_phase1=1e-2, warmup_steps=20, batch_size=16,
                        seq_len=WHY_SEQ_LEN, log_every=10, eval_every=25, eval_batches=4, device=str(device))
comparison = compare_from_scratch(arms, why_data, WHY_TRAIN, seeds=WHY["seeds"])

# %% [markdown]
# The validation loss of each model over training: the line is the mean over the seeds, the band
# their minimum to maximum. Left against optimiser steps (the same tokens for all three), right
# against the training FLOPs each model has spent (steps × tokens per step × 3 × forward FLOPs per token).

# %%
from moe_helpers.plots import plot_loss_bands

fig, (ax_steps, ax_flops) = plt.subplots(1, 2, figsize=(13, 4.5))
for ax, against in ((ax_steps, "steps"), (ax_flops, "flops")):
    bands = {}
    for arm in comparison.arms:
        band = comparison.band(arm)
        x = band.steps if against == "steps" else comparison.training_flops(arm, band.steps)
        bands[sizes[arm].label] = (x[1:], band.mean[1:], band.min[1:], band.max[1:])   # skip the untrained step 0
    plot_loss_bands(bands, ax=ax, xlabel="optimiser step" if against == "steps" else
                    "training compute (FLOPs, forward + backward)",
                    title=f"Per step ({len(comparison.seeds)} seeds)" if against == "steps" else "Per FLOP")
plt.tight_layout()
plt.show()

# %%
final_losses = comparison.summary()                                     # per arm: mean, std, min, max
for arm, spread in final_losses.items():
    print(f"{sizes[arm].label:<40} final validation loss {spread.mean:.4f} ± {spread.std:.4f} "
          f"(min {spread.min:.4f}, max {spread.max:.4f})")
moe_gain = comparison.paired_gaps("moe_equal_active", "dense")            # dense - MoE, seed by seed
wide_gain = comparison.paired_gaps("dense_equal_total", "dense")          # dense - wide dense
moe_vs_wide = comparison.paired_gaps("moe_equal_active", "dense_equal_total")   # wide dense - MoE
for name, gaps in (("MoE below equal-active dense", moe_gain), ("equal-total dense below dense", wide_gain),
                   ("MoE below equal-total dense", moe_vs_wide)):
    print(f"{name:<31} by {' '.join(f'{gap:+.4f}' for gap in gaps)}  (mean {sum(gaps) / len(gaps):+.4f})")

budget = comparison.training_flops("dense", [WHY["steps"]])[0]           # the dense model's whole run
at_budget = {arm: comparison.losses_at_flops(arm, budget) for arm in comparison.arms}
print(f"after the dense model's {budget / 1e12:.3f} TFLOPs of training (equal compute):")
for arm, losses in at_budget.items():
    step = WHY["steps"] * dense_size.flops_training / sizes[arm].flops_training
    print(f"  {sizes[arm].label:<40} step {step:5.0f}  validation loss {sum(losses) / len(losses):.4f}")

# %% [markdown]
# **What the numbers say.**
#
# - *At equal compute the MoE wins.* It spends the dense model's FLOPs per token (0.9% more: the
#   routers) and ends lower for every seed. Its idle experts are not dead weight: each router sends
#   different tokens to different experts, so eight FFNs each learn their share of the data, while
#   every token still pays for only two half-size ones.
# - *The equal-total dense model gains nothing yet.* Its 4× wider FFN, run on every token, ends
#   where the small dense model does, at 2.3 times the FLOPs per token: after 250 steps the small
#   model is held back by how little it has trained, not by the width of its FFN. Does the width
#   pay with more training? `benchmarks/why_moe.py` runs the same race four times longer (1000
#   steps): try it. With enough training the dense model of equal *total* size should be the better model
#   per step, since every one of its parameters works on every token: Clark et al. (2022, *Unified
#   scaling laws for routed language models*) credit a routed model with an *effective* parameter
#   count below its total. It is never the cheaper one: per FLOP (right plot) it is far behind,
#   and that is the case for MoEs.
# - *Spread.* With its own starting weights and batches each seed lands somewhere else (the ±
#   above, the bands): compare the spread with the gaps between the models. The gaps are measured
#   seed by seed, on the same batches from the same starting weights outside the FFNs, and the
#   MoE's gain over the dense model holds for every seed.
#
# **FLOPs are not seconds.** The per-FLOP plot counts arithmetic. A processor spends time on more
# than arithmetic, and the MoE layer adds work that FLOP counts leave out: sorting the token slots
# by expert, gathering each expert's tokens, eight small matrix products instead of one large one,
# a scatter-add back to the tokens, the routing statistics, and one read to the host per layer for
# the split sizes (`MoELayer._dispatch`). The same three models, timed on the same machine:

# %%
import statistics
from moe_helpers.compare import time_training_steps

# The three models take turns, one training step each, 40 rounds, and we keep the median: on a busy
# machine all three are slowed alike. (The seconds printed with each training run above were taken
# minutes apart, evaluations included: no fair comparison.)
step_times = time_training_steps(arms, why_data, WHY_TRAIN, rounds=40)
step_seconds = {arm: statistics.median(times) for arm, times in step_times.items()}
flop_ratio = {arm: sizes[arm].flops_training / dense_size.flops_training for arm in comparison.arms}
for arm in comparison.arms:
    print(f"{sizes[arm].label:<40} {1e3 * step_seconds[arm]:6.1f} ms per training step: "
          f"x{step_seconds[arm] / step_seconds['dense']:.2f} the dense model's time for x{flop_ratio[arm]:.3f} its FLOPs")
moe_time_ratio = step_seconds["moe_equal_active"] / step_seconds["dense"]

dense_seconds = WHY["steps"] * step_seconds["dense"]                 # the dense model's training time
at_seconds = {arm: comparison.losses_at_seconds(arm, dense_seconds, step_seconds[arm]) for arm in comparison.arms}
print(f"\nafter the dense model's {dense_seconds:.1f} s of training steps (equal wall-clock time):")
for arm, losses in at_seconds.items():
    print(f"  {sizes[arm].label:<40} step {dense_seconds / step_seconds[arm]:5.0f}  "
          f"validation loss {sum(losses) / len(losses):.4f}")

# %% [markdown]
# *What to notice:* the MoE does 0.9% more arithmetic per token than the dense model but takes far
# longer per step on this CPU: its expert matrices are so small that routing tokens to them costs
# more than the arithmetic itself. So in a race of equal *wall-clock time* the dense model takes
# more steps, and here it wins. (The other models are read off their 250-step curves at an earlier
# step; a run planned that short would decay its learning rate in time and end a little lower:
# `benchmarks/why_moe.py --steps 150` runs that race.) The equal-total dense model costs 2.3 times
# the FLOPs per token but less than 2.3 times the time (the ratios printed above): large matrix
# products use the processor better than small ones.
#
# The overhead shrinks as models grow (the expert matrices become large enough for the arithmetic
# to dominate) and with kernels built for the job (grouped matrix products, as in MegaBlocks, Gale
# et al. 2023); with the experts spread over many devices, the all-to-all exchange that carries
# tokens to their experts becomes the cost to watch instead. That is why the Switch Transformer
# paper reports its gains both per step and in wall-clock time (Fedus et al. 2021, sec. 3.2), and
# why "an MoE is cheaper" always needs the question: cheaper in what -- FLOPs, seconds or memory?

# %% [markdown]
# ## 7. Published MoEs, side by side
#
# `moe_helpers.real_models` holds eight published MoE LLMs as `ModelConfig`s, copied from their
# `config.json` files, with the totals and active counts their authors published. Two things to
# watch for:
#
# - **Pieces our `ModelConfig` lacks.** Biases on q/k/v (Qwen1.5-MoE, Phi-3.5-MoE, GPT-OSS),
#   RMSNorms on queries and keys (OLMoE, Qwen3), LayerNorm biases (Phi), a gate on the shared
#   expert (Qwen1.5), attention sinks and expert biases (GPT-OSS). Each is added by its own
#   formula ("extras"); together they never reach 0.1% of a model.
# - **What "active" means.** Most publishers count everything a token touches, the input
#   embedding included. OpenAI's GPT-OSS card leaves the input embedding out (a lookup, not a
#   multiply) and keeps the unembedding.

# %%
from IPython.display import Markdown, display
from moe_helpers.real_models import PUBLISHED_MODELS, comparison_table, format_comparison

rows = comparison_table()
display(Markdown(format_comparison(rows)))
for model, row in zip(PUBLISHED_MODELS, rows):
    print(f"{row.name:<18} {row.note}")
    print(f"{'':<18} figures: {model.figures_source}; shape: {model.config_source}")

# %%
gpt_oss = next(row for row in rows if row.name == "GPT-OSS-20B")
print(f"GPT-OSS-20B active: {gpt_oss.computed_active / 1e9:.2f} B without the input embedding (published 3.6 B), "
      f"{gpt_oss.active_other_convention / 1e9:.2f} B with it")

efficiencies = {model.name: count_from_config(model.config).efficiency for model in PUBLISHED_MODELS}
fig, ax = plt.subplots(figsize=(9, 4))
ax.barh(list(efficiencies), list(efficiencies.values()), color="C1")
for row in rows:
    ax.text(efficiencies[row.name] + 0.4, row.name, f"{row.computed_total / 1e9:.1f} B stored", va="center", fontsize=8)
ax.set_xlim(0, 35)
ax.set_xlabel("active share of all parameters (%, embeddings counted)")
ax.set_title("Published MoEs: the share of parameters each token uses")
ax.invert_yaxis()
plt.show()

# %% [markdown]
# *What to notice:* Mixtral's 8 large experts, top-2, use over a quarter of the parameters per
# token; the models with more, smaller experts (16 to 128 per block, top-2 to top-8) use a fifth or
# less, Qwen3-30B-A3B about a ninth.

# %% [markdown]
# ## 8. A parameter calculator
#
# Pick a preset (the `laptop` and `seed` phases, or a published model), then change its sizes:
# type a number in a box, or drag the slider beside it.  Sizes that span orders of magnitude
# (vocabulary, width, depth, heads, FFN, experts, context) have log-scale sliders: every step is
# the same few percent, whether the number is 8 or 8192.  Fields without a control (key/value
# heads, head width, shared-expert and dense sizes, tied embeddings) keep the preset's values; an
# impossible combination says why instead of counting.  "Idle per token" counts expert-layers:
# the idle experts of each MoE layer, added over all of them.
# Try: Mixtral-8x7B with `top_k` 1; `num_experts` 0 (dense); DeepSeekMoE-16B without shared experts.

# %%
from moe_helpers.calculator import calculator_summary, param_calculator

calculator = param_calculator("seed phase 2", seq_len=SEQ_LEN)
display(calculator)

# %%
calculator_result = calculator.summary()
print(calculator_result.text())

# %% [markdown]
# ## Exercises
#
# Each exercise asks you to implement one piece of this chapter in a stub function. Replace
# `raise NotImplementedError` with your code and run the cell below it: `check` runs your function
# on hidden test cases and compares it with the course's own implementation. It answers *not
# attempted yet*, *correct*, or *wrong* with a hint that points at the mistake (never at the
# answer). Reference solutions, for when you are done or stuck:
# `solutions/03_parameter_accounting.py` at the root of the repository.

# %%
from moe_helpers.exercises import check

# %% [markdown]
# **Exercise 1 — total and active parameters.** Write `moe_parameter_counts(cfg)`: the pair
# `(total, active)` for any `ModelConfig`, by formula (sections 1 and 2), without
# `count_from_config` or `count_parameters`. Active counts everything one token uses, the input
# embedding, the routers and the shared experts included. You will need `vocab_size`, `d_model`,
# `n_layers`, `n_heads`, `head_size`, `kv_heads`, `d_ff`, `num_experts`, `top_k`,
# `tie_embeddings`, `num_shared_experts`, `shared_hidden`, `num_moe_layers` and `dense_hidden`.
# The hidden configs include a dense model, tied embeddings, grouped-query attention, a shared
# expert with a dense first block, and `top_k = num_experts`.

# %%
def moe_parameter_counts(cfg):
    """(total, active) parameters of the config ``cfg``, two ints."""
    raise NotImplementedError  # your code here


# %%
check("moe_parameter_counts", moe_parameter_counts)

# %% [markdown]
# **Exercise 2 — FLOPs per token.** Write `forward_flops_per_token(cfg, seq_len)`: the forward
# FLOPs of one token with a context of `seq_len` tokens, by section 5's formula
# $2 N_\text{active matmul} + 4 L T H d_{head}$. For the parameter counts you may call
# `count_from_config` (its `.active` and `.by_part`) or your `moe_parameter_counts`; which
# parameters are matrix products is up to you.

# %%
def forward_flops_per_token(cfg, seq_len):
    """Forward FLOPs per token (a number)."""
    raise NotImplementedError  # your code here


# %%
check("forward_flops_per_token", forward_flops_per_token)

# %% [markdown]
# **Exercise 3 — training memory.** Write `training_memory_bytes(cfg, bytes_per_value)`: the bytes
# that training with AdamW holds for the weights, their gradients (both `bytes_per_value` bytes
# each: 4 for float32, 2 for bfloat16) and the optimiser state (float32), as `memory_bytes`
# counts them in section 5: no activations, no float32 master copy.

# %%
def training_memory_bytes(cfg, bytes_per_value):
    """Bytes of weights, gradients and AdamW state (an int)."""
    raise NotImplementedError  # your code here


# %%
check("training_memory_bytes", training_memory_bytes)


# %% [markdown]
# ## Further reading
#
# - Kaplan et al. 2020, [Scaling Laws for Neural Language Models](https://arxiv.org/abs/2001.08361):
#   counting non-embedding parameters and the $6N$ FLOPs per training token that section 5 refines.
# - Hoffmann et al. 2022, [Chinchilla](https://arxiv.org/abs/2203.15556): how to split a compute
#   budget between parameters and tokens.
# - Chowdhery et al. 2022, [PaLM](https://arxiv.org/abs/2204.02311), appendix B: the FLOP count with
#   the attention term that `flops_per_token` uses.
# - Clark et al. 2022, [Unified Scaling Laws for Routed Language Models](https://arxiv.org/abs/2202.01169):
#   why a routed model's parameters are worth less than a dense model's, and how much less.
# - Fedus et al. 2021, [Switch Transformer](https://arxiv.org/abs/2101.03961): the MoE-against-dense
#   comparisons of section 6, per step and in wall-clock time.
# - Jiang et al. 2024, [Mixtral of Experts](https://arxiv.org/abs/2401.04088) and Dai et al. 2024,
#   [DeepSeekMoE](https://arxiv.org/abs/2401.06066): two of section 7's models, few large experts
#   against many small ones plus shared experts.
# - Muennighoff et al. 2024, [OLMoE](https://arxiv.org/abs/2409.02060): a small-active, many-expert
#   MoE with everything published, including its parameter counts.
# - Gale et al. 2023, [MegaBlocks](https://arxiv.org/abs/2211.15841): grouped matrix products that
#   shrink the dispatch overhead timed in section 6.
# - Maarten Grootendorst, [A Visual Guide to Mixture of Experts](https://newsletter.maartengrootendorst.com/p/a-visual-guide-to-mixture-of-experts):
#   sparse against dense parameters, and what memory and compute each one costs, in pictures.

# %% [markdown]
# ## Checks — the claims above, verified
#
# These cells verify every claim this lesson makes, on the numbers it computed; `make test` runs
# them. You do not need them to follow the lesson.

# %%
# Sections 1-5: counts, banners, FLOPs and memory
assert all(by_hand[part] == measured.by_part[part] for part in by_hand), "count_by_hand disagrees with the modules"
assert sum(by_hand.values()) == measured.total == 1_377_408, f"the laptop model has {measured.total:,} parameters"
assert count_from_config(laptop) == measured, "count_from_config disagrees with the laptop model's modules"
assert (total_ffn - active_ffn) * num_blocks == inactive_params, "the note's per-block form gives another inactive count"
assert (counts.total, counts.active, counts.inactive) == (total_params, active_params, inactive_params)
assert counts.experts_idle == (num_experts - top_k) * num_blocks, f"{counts.experts_idle} experts idle"
assert abs(counts.efficiency - efficiency) < 1e-12, f"efficiency {counts.efficiency} != {efficiency}"
assert count_from_config(laptop_moe) == counts, "count_from_config disagrees with the laptop MoE's modules"
assert deepseek_counts.inactive == deepseek_inactive_by_formula, "P (E - k) B misses with shared experts and dense blocks"
assert deepseek_counts == count_from_config(deepseek_style), "count_from_config disagrees on the DeepSeek-style model"
assert sum(used.values()) == counts.active, "the parts used per token do not add up to the active count"
assert (best_d, seed_candidate(best_d).d_ff) == (preset("seed").model.d_model, preset("seed").model.d_ff), \
    f"the search found d_model {best_d}, not the seed preset's"
assert all(abs(error) < 1e-3 for error in banner_errors.values()), f"the seed preset misses the note: {banner_errors}"
assert moe_counts.experts_idle == 42 and f"{moe_counts.efficiency:.1f}" == "37.4", "phase 2's banner differs from the note's"
if SCALE_UP:
    assert seed_moe_measured == moe_counts, "the 372 M-parameter model's modules disagree with the formula"
assert all(grown.experts_idle == 66 for grown in integer_growth.values()), "a grown model has not 66 idle experts"
assert all(abs(grown.total / NOTE_PHASE3["total"] - 1) > 0.05 for grown in integer_growth.values()), \
    "an integer width factor comes within 5% of the note's phase-3 total"
assert count_from_config(seed_large) == integer_growth[2], "the course's phase 3 is not the x2 growth"
assert abs(needed_n - round(needed_n)) > 0.4, f"n = {needed_n:.3f} is close to an integer"
assert all(abs(at_n["total"] / NOTE_PHASE3["total"] - 1) > 0.02 for at_n in at_needed_n.values()), \
    "the real width factor comes within 2% of the note's total"
assert not matches, f"{len(matches)} configs print the note's phase-3 banner"
assert 0 < near[0][0] < 0.002, f"the nearest config misses by {near[0][0]:.2%}"
assert max(note_ratios.values()) - min(note_ratios.values()) < 0.01, f"the note's ratios differ: {note_ratios}"
assert all(max(ratios.values()) - min(ratios.values()) > 0.1 for ratios in growth_ratios_by_factor.values()), \
    "a grown model's three counts grow by one factor"
assert large_counts.experts_idle == 66, f"phase 3 has {large_counts.experts_idle} idle experts"
assert measured_per_token == forward_by_hand, f"torch counted {measured_per_token:,.0f} FLOPs per token"
assert weight_bytes == laptop_memory.weights, "memory_bytes disagrees with the weights' bytes"
assert laptop_memory.total == 16 * counts.total, "float32 AdamW training should hold 16 bytes per parameter"
assert abs(memory_gb[moe_name] / memory_gb[wide_name] - 1) < 0.01, "the MoE should need the big dense model's memory"
assert gflops[moe_name] / gflops[dense_name] < 1.5 < gflops[wide_name] / gflops[dense_name], \
    f"forward GFLOPs per token: {gflops}"

# %%
# Sections 6-8: the race, published models and the calculator
assert moe_size.active - dense_size.active == router, "the MoE's extra active parameters should be the routers"
assert abs(wide_size.total - moe_size.total) <= 1.5 * small_dense.d_model * small_dense.n_layers, \
    "the equal-total dense model is not the MoE's size"
assert moe_size.flops_forward / dense_size.flops_forward < 1.01 < 2 < wide_size.flops_forward / dense_size.flops_forward
assert all(gap > 0.02 for gap in moe_gain), f"the MoE did not beat the equal-active dense model for every seed: {moe_gain}"
assert final_losses["moe_equal_active"].mean < final_losses["dense"].mean - 0.03, "the MoE's mean gain is too small"
if not SCALE_UP:
    assert final_losses["moe_equal_active"].mean < final_losses["dense_equal_total"].mean - 0.02, \
        "per step the MoE should end below the equal-total dense model"
    assert abs(sum(wide_gain) / len(wide_gain)) < 0.03, f"the 4x wider FFN already gains {wide_gain}"
assert max(at_budget["moe_equal_active"]) < min(at_budget["dense_equal_total"]) - 0.2, \
    "per FLOP the MoE should be far ahead of the equal-total dense model"
if device.type == "cpu" and not SCALE_UP:
    assert moe_time_ratio > 1.2, f"the MoE took only x{moe_time_ratio:.2f} the dense model's time per step"
    assert min(at_seconds["moe_equal_active"]) > max(at_seconds["dense"]) + 0.05, \
        "at equal wall-clock time the dense model should win"
    assert step_seconds["dense_equal_total"] / step_seconds["dense"] < flop_ratio["dense_equal_total"], \
        "the wide dense model should take less than its FLOP ratio in time"
assert all(abs(row.total_error) < 0.01 and abs(row.active_error) < 0.02 for row in rows), \
    "a published model's count is off"
assert gpt_oss.active_rounds_to_published and not gpt_oss.counts_input_embedding, "GPT-OSS's active count differs"
assert min(efficiencies["Mixtral-8x7B"], efficiencies["Mixtral-8x22B"]) > 25, "Mixtral uses under a quarter"
assert max(share for name, share in efficiencies.items() if not name.startswith("Mixtral")) < 21, \
    "a many-expert model uses over a fifth"
assert efficiencies["Qwen3-30B-A3B"] < 12, f"Qwen3-30B-A3B uses {efficiencies['Qwen3-30B-A3B']:.1f}%"
assert calculator_result.counts == count_from_config(seed_moe), "the calculator's counts differ from count_from_config"
assert calculator_result == calculator_summary(seed_moe, SEQ_LEN, "bfloat16"), "the calculator's summary differs"
print("all checks passed")
