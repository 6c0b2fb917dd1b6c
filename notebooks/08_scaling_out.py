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
# # 08 · Scaling out: data parallelism and expert parallelism
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/moe-course/moe-course/blob/main/notebooks/08_scaling_out.ipynb)
#
# In this notebook you will:
#
# - see why one device stops being enough: the memory each GPU holds for the `seed` preset's phase-3
#   model (2.24 B parameters) with **data parallelism** (every GPU a copy), **FSDP** (every GPU a shard)
#   and **expert parallelism** (every GPU some of the experts), on 1, 2, 4 and 8 GPUs;
# - run the course's own MoE layer **expert-parallel in four real processes** (`torchrun`, the gloo
#   backend on the CPU), check that it computes exactly what the single-process layer computes, outputs
#   and gradients, and draw the **all-to-all**: who sends how many token slots to whom;
# - train the three phases with **FSDP2 in two processes**, with and without expert parallelism, and in
#   one process, put the loss curves on top of each other, and see why plain FSDP2 drifts a few 1e-4
#   from the single process in the MoE phases while the expert-parallel run stays at about 1e-6;
# - compute the **communication volume** of one MoE layer for the course's models, Mixtral-8x7B and
#   DeepSeek-V3, set it against the layer's compute, and see why fine-grained experts make the link the
#   bottleneck;
# - find the same ideas, under their names, in **torchtitan** and **Megatron-Core**.
#
# Expected run time: about a minute and a half on a laptop CPU (mostly three short training runs;
# starting a group of processes costs a few seconds each time).
#
# There is no *Scale up on a GPU* cell: scaling out is a command, given at the end of section 3.

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
import json
import signal
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

# %% [markdown]
# ## 1 · Why scale out
#
# Notebook 06 ended with the `seed` preset: the original note's sizes, 100 M → 372 M → 2 240 M
# parameters. Training holds, for every parameter, the weight, its gradient and the optimiser's state,
# and for every token of the batch the activations the backward pass needs. We count what the course's
# own command holds on a GPU (bf16 autocast, FSDP2's usual mixed precision): **float32 weights, gradients
# and AdamW moments, 16 bytes a parameter** (`memory_bytes(cfg, torch.float32)`), and bf16 activations
# plus the bf16 copies of the weights that the compute reads. Not counted: the buffers of the
# communication itself. (Keeping the gradients in bf16 as well, as some frameworks do, would save 2 of
# the 16 bytes.)
#
# Three ways to spread one training step over N GPUs (ranks):
#
# ```text
#  data parallel (DDP)          FSDP (ZeRO-3)                   expert parallel (EP)
#  ┌─────────┐┌─────────┐       ┌─────────┐┌─────────┐          ┌──────────────┐┌──────────────┐
#  │ model   ││ model   │       │ ½ of    ││ ½ of    │          │ attention,   ││ attention,   │
#  │ (whole) ││ (whole) │       │ every   ││ every   │          │ router (all) ││ router (all) │
#  │         ││         │       │ weight  ││ weight  │          │ experts 0-3  ││ experts 4-7  │
#  └─────────┘└─────────┘       └─────────┘└─────────┘          └──────────────┘└──────────────┘
#   batch ½     batch ½          batch ½    batch ½              batch ½         batch ½
#   gradients averaged           weights gathered per block,     tokens travel to their experts'
#   (all-reduce)                 gradients reduce-scattered      rank and back (all-to-all)
# ```
#
# * **Data parallelism** (DDP): every rank holds the whole model, reads its own slice of each batch,
#   and the gradients are averaged over the ranks before every optimiser step, so all copies stay
#   equal. It divides the *work* by N, not the memory.
# * **Fully sharded data parallelism** (FSDP; ZeRO stage 3): the same, but every rank stores only 1/N of
#   every weight, gradient and optimiser state. Just before a block runs its weights are gathered
#   whole, and freed after. The memory divides by N; the weights travel every step.
# * **Expert parallelism**: every rank keeps E/N whole experts (and a copy of everything else), and the
#   *tokens* travel: each token slot goes to the rank that holds its expert and its result comes back.
#   Only the experts are divided, but in an MoE they are most of the parameters.
#
# Per rank, for the `seed` preset's phase-3 model:

# %%
from moe_helpers.accounting import count_from_config, fsdp_training_memory, memory_bytes
from moe_helpers.config import preset
from moe_helpers.real_models import published_model

SEED = preset("seed")
PHASE3 = SEED.phase_configs()[2]
counts = count_from_config(PHASE3)
BYTES_PER_PARAMETER = memory_bytes(PHASE3, torch.float32, "adamw").total / counts.total   # 4 + 4 + 8 AdamW
expert_parameters = counts.by_part["experts"]
other_parameters = counts.total - expert_parameters                # attention, embeddings, norms, routers
DEVICE_GIB = 24                                                    # a 24 GB GPU (an L4, an RTX 4090)
GiB = 2 ** 30

print(f"seed phase 3: {counts.total / 1e6:,.1f} M parameters, {100 * expert_parameters / counts.total:.1f} % "
      f"of them in the {PHASE3.num_experts} experts of each of its {counts.moe_layers} MoE blocks; "
      f"{other_parameters / 1e6:.1f} M outside the experts")
print(f"{'':4}{'weights, gradients, AdamW per GPU':^36}{'':3}{'FSDP run, per GPU':^40}")
print(f"{'GPUs':>4}{'DDP copy':>12}{'FSDP shard':>12}{'EP':>10}{'activations':>16}{'total':>12}  fits {DEVICE_GIB} GB?")
per_rank = {}
for n in (1, 2, 4, 8):
    ddp = BYTES_PER_PARAMETER * counts.total                       # every rank the whole model
    fsdp = BYTES_PER_PARAMETER * counts.total / n                  # every rank 1/n of everything
    ep = BYTES_PER_PARAMETER * (other_parameters + expert_parameters / n)   # n <= E: E/n whole experts a rank
    run = fsdp_training_memory(PHASE3, SEED.train.micro_batch_size, SEED.train.seq_len, n)   # + its activations
    per_rank[n] = dict(ddp=ddp, fsdp=fsdp, ep=ep, activations=run.activations, total=run.total, state=run.state.total)
    print(f"{n:4d}{ddp / GiB:8.1f} GiB{fsdp / GiB:8.1f} GiB{ep / GiB:6.1f} GiB{run.activations / GiB:12.1f} GiB"
          f"{run.total / GiB:8.1f} GiB  {'yes' if run.total < DEVICE_GIB * GiB else 'no'}")
print(f"(activations: each GPU's share of the {SEED.train.micro_batch_size} x {SEED.train.seq_len}-token "
      "batch in bf16, plus the bf16 weight copies counted whole)")
print(f"8 GPUs: expert parallelism holds {per_rank[8]['ep'] / per_rank[8]['fsdp']:.1f}x FSDP's share")

mixtral = published_model("Mixtral-8x7B")
mixtral_state = memory_bytes(mixtral.config, torch.float32, "adamw").total
print(f"\nMixtral-8x7B ({count_from_config(mixtral.config).total / 1e9:.1f} B parameters): "
      f"{mixtral_state / GiB:,.0f} GiB of weights, gradients and AdamW moments; "
      f"{mixtral_state / 8 / GiB:.0f} GiB a GPU sharded over 8")

# %% [markdown]
# *What to notice:* a copy per rank (DDP) never gets smaller, however many GPUs you add, and 33 GiB of
# state alone does not fit a 24 GB GPU. Sharding (FSDP) divides the state by N. Expert parallelism
# divides only the experts, so with 8 ranks it stops at about twice FSDP's share: the 289 M parameters
# outside the experts (the embedding, the LM head and the attention) are still whole on every rank. Real
# runs combine the two: the experts split by expert parallelism, the rest sharded by FSDP (the course's
# command does exactly that with `--expert-parallel`, section 3). The activations shrink with N too,
# because every rank works on its own slice of the batch: with FSDP the whole training step fits a
# 24 GB GPU from 4 GPUs on. A published model makes the point harder: Mixtral-8x7B's state does not fit
# even eight 80 GB GPUs. And memory is only half the reason: N ranks do a step's arithmetic N times
# faster, if the communication keeps up (section 4).
#
# Sections 2 and 3 run both kinds of parallelism for real, in several processes on this machine.

# %% [markdown]
# ## 2 · Expert parallelism with the course's own layer, in real processes
#
# `moe_helpers.parallel.ExpertParallelMoE.from_moe(moe)` turns a full `MoELayer` into one rank's share:
# the whole router and experts `r·E/W … (r+1)·E/W − 1` of rank `r` among `W`. Its forward pass, on the
# rank's own tokens (GShard, Lepikhin et al. 2020; torchtitan and Megatron-Core do the same):
#
# 1. **route** locally and sort the token slots by expert;
# 2. **exchange counts**: a small all-to-all tells every rank how many slots it will receive for each
#    of its experts;
# 3. **dispatch**: an all-to-all with uneven splits sends every slot (a `d_model` vector) to its expert's
#    rank;
# 4. **compute**: each rank runs each of its experts once, on everything that arrived for it;
# 5. **combine**: a second all-to-all sends the results back in the order they came; each token adds its
#    `k` results, weighted by its gates.
#
# Both all-to-alls are differentiable: in the backward pass the gradients travel the same way back.
#
# Processes, not threads: `torchrun` starts `W` copies of a script and gives each its `RANK`, the
# `WORLD_SIZE` and an address to meet at (`--standalone`: this machine, a free port). Here is the
# script: every rank builds the same `MoELayer` (same seed) in float64 and the same global batch, runs
# the full layer on all tokens (the single-process reference) and `ExpertParallelMoE` on its own
# slice, and rank 0 writes what it found to a JSON file.

# %%
from moe_helpers import figures

figures.expert_parallel_all_to_all(ranks=2, experts_per_rank=2)   # the steps above, on 2 ranks with 2 experts each


# %%
WORKER = r'''
"""One rank of notebook 08's expert-parallel check (run by torchrun)."""
import json, sys
import torch
import torch.distributed as dist
from moe_helpers.accounting import all_to_all_bytes
from moe_helpers.moe import MoELayer
from moe_helpers.parallel import ExpertParallelMoE

D_MODEL, D_FF, NUM_EXPERTS, TOP_K, TOKENS_PER_RANK = 16, 32, 8, 2, 512
dist.init_process_group("gloo")                      # torchrun set RANK, WORLD_SIZE and the meeting address
world, rank = dist.get_world_size(), dist.get_rank()

torch.manual_seed(0)                                  # every rank builds the same layer and the same batch
moe = MoELayer(D_MODEL, D_FF, NUM_EXPERTS, TOP_K).to("cpu", torch.float64)   # gloo runs on the CPU
x_all = torch.randn(world, TOKENS_PER_RANK, D_MODEL, dtype=torch.float64)   # (W, N, d): rank r owns x_all[r]
upstream = torch.randn_like(x_all)                    # a gradient arriving from the layers above

# the reference: one layer, every token, every expert
x_ref = x_all.clone().requires_grad_(True)
y_ref = moe(x_ref)
(y_ref * upstream).sum().backward()

# expert parallel: this rank's tokens, this rank's experts; the all-to-alls move the rest
ep = ExpertParallelMoE.from_moe(moe)
x_mine = x_all[rank].clone().requires_grad_(True)
y_mine, stats = ep(x_mine, return_routing=True)
(y_mine * upstream[rank]).sum().backward()

gaps = torch.tensor([(y_mine - y_ref[rank]).abs().max().item(),
                     (x_mine.grad - x_ref.grad[rank]).abs().max().item()], dtype=torch.float64)
dist.all_reduce(gaps, op=dist.ReduceOp.MAX)           # the largest difference on any rank
held = [None] * world
dist.all_gather_object(held, dict(experts=list(range(ep.first_expert, ep.first_expert + ep.experts_per_rank)),
                                  parameters=sum(p.numel() for p in ep.parameters())))
if rank == 0:
    result = dict(world=world, d_model=D_MODEL, top_k=TOP_K, num_experts=NUM_EXPERTS,
                  tokens=world * TOKENS_PER_RANK, max_output_diff=gaps[0].item(), max_grad_diff=gaps[1].item(),
                  send_matrix=stats.send_matrix.tolist(), tokens_per_expert=stats.tokens_per_expert.tolist(),
                  bytes_measured=stats.bytes_sent(D_MODEL, 8),           # float64: 8 bytes a value
                  bytes_formula=all_to_all_bytes(world * TOKENS_PER_RANK, TOP_K, D_MODEL, 8, world),
                  ranks=held, full_layer_parameters=sum(p.numel() for p in moe.parameters()))
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
dist.destroy_process_group()
'''

# %% [markdown]
# We write it into a temporary folder and launch it in 4 processes. `python -m torch.distributed.run`
# is what the `torchrun` command runs (this way it is the notebook's own Python, wherever that is). The
# processes get one torch thread each, find `moe_helpers` where this notebook found it, and see no GPU
# (`CUDA_VISIBLE_DEVICES=""`), so they talk over gloo on the CPU whatever the machine. `launch` stops
# the whole group (`torchrun` and its workers) if it runs past its time limit.

# %%
COURSE_ROOT = Path(moe_helpers.__file__).resolve().parent.parent     # the folder that holds moe_helpers
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="",
           PYTHONPATH=os.pathsep.join(filter(None, [str(COURSE_ROOT), os.environ.get("PYTHONPATH")])))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def launch(command: list[str], timeout: float) -> float:
    """Run ``command`` (torchrun and its workers, or one process), stop the whole group after
    ``timeout`` seconds, raise with the end of its error output if it fails; return its seconds."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)           # its own process group, workers included
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed with exit code {process.returncode}:\n"
                           f"{stdout[-1500:]}\n{stderr[-3000:]}")
    return time.perf_counter() - started


WORK = Path(tempfile.mkdtemp(prefix="moe-scaling-out-"))          # everything this notebook writes
(WORK / "expert_parallel_worker.py").write_text(WORKER)
PROCESSES = 4
seconds = launch([*TORCHRUN, f"--nproc-per-node={PROCESSES}", str(WORK / "expert_parallel_worker.py"),
                  str(WORK / "expert_parallel.json")], timeout=180)
ep_run = json.loads((WORK / "expert_parallel.json").read_text())
print(f"{PROCESSES} processes, {seconds:.1f} s including the start; results in {WORK / 'expert_parallel.json'}")

# %% [markdown]
# First, did it compute the right thing? Every rank compared its tokens' outputs, and the gradients that
# flowed back through both all-to-alls into its tokens, with the full layer's:

# %%
from moe_helpers.checks import show_match

for rank, held in enumerate(ep_run["ranks"]):
    print(f"rank {rank}: experts {held['experts']}, {held['parameters']:,} parameters "
          f"(the full layer: {ep_run['full_layer_parameters']:,})")
print(f"max |Δ output|    over all ranks: {ep_run['max_output_diff']:.1e}")
print(f"max |Δ gradient|  over all ranks: {ep_run['max_grad_diff']:.1e}")
share = ep_run["ranks"][0]["parameters"] / ep_run["full_layer_parameters"]
print(f"each rank holds {100 * share:.1f} % of the layer's parameters")
show_match(torch.tensor([ep_run["max_output_diff"], ep_run["max_grad_diff"]], dtype=torch.float64),
           torch.zeros(2, dtype=torch.float64),
           "ExpertParallelMoE == the single-process MoELayer, outputs and gradients (float64)", rtol=0, atol=1e-10)

# %% [markdown]
# In float64 the two agree to the last bit or nearly: each expert sees exactly the rows it saw in the
# single process, and each token adds the same `k` weighted results. (In float32 or bf16, a different
# grouping of the rows could change the rounding of a matrix product slightly; that is why the check
# runs in float64.) Each rank holds the router and 2 of the 8 experts, a bit over a quarter of the layer.
#
# Now the traffic. `send_matrix[s, d]` counts the token slots rank `s` dispatched to rank `d`; the
# diagonal stays on its own rank and never crosses a wire.

# %%
send = torch.tensor(ep_run["send_matrix"])                                  # (W, W) source x destination
loads = torch.tensor(ep_run["tokens_per_expert"])                           # (E,) global slots per expert
W = ep_run["world"]
fig, (ax_send, ax_load) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw=dict(width_ratios=[1, 1.3]))
image = ax_send.imshow(send, cmap="Blues")
for s in range(W):
    for d in range(W):
        ax_send.text(d, s, f"{send[s, d]}", ha="center", va="center",
                     color="white" if send[s, d] > send.float().mean() else "black",
                     fontweight="bold" if s == d else "normal")
ax_send.set(xticks=range(W), yticks=range(W), xlabel="destination rank (holds the expert)",
            ylabel="source rank (holds the token)",
            title="All-to-all dispatch: token slots sent\n(diagonal in bold: stays local)")
fig.colorbar(image, ax=ax_send, shrink=0.8, label="token slots")
colors = plt.cm.tab10(torch.arange(ep_run["num_experts"]) // (ep_run["num_experts"] // W))
ax_load.bar(range(ep_run["num_experts"]), loads, color=colors)
ax_load.axhline(loads.float().mean(), color="gray", ls="--", label="uniform")
ax_load.set(xlabel="expert (colour: the rank that holds it)", ylabel="token slots, all ranks",
            title="Load per expert: each column of the matrix\nis the sum of its rank's two experts")
ax_load.legend()
fig.tight_layout()
plt.show()

received = send.sum(0)                                                      # (W,) slots each rank computes
slots = ep_run["tokens"] * ep_run["top_k"]
off_rank = send.sum() - send.diagonal().sum()
print(f"{send.sum()} token slots ({ep_run['tokens']} tokens x top-{ep_run['top_k']}), "
      f"{off_rank} of them ({100 * off_rank / send.sum():.1f} %) leave their rank (uniform: {100 * (1 - 1 / W):.0f} %)")
print("slots each rank sends:           ", send.sum(1).tolist())
print("slots each rank's experts compute:", received.tolist(),
      f"(busiest {received.max() / received.float().mean():.2f}x the mean)")

# %% [markdown]
# *What to notice:* every row adds up to the same 1 024 (each rank sends all of its tokens' slots,
# `512 × 2`), but the columns do not: a column is what its rank's experts must compute, and with an
# untrained router some experts are more popular than others. The busiest rank sets the pace of the
# whole layer, and the others wait for it: load balancing (notebook 02) is a speed matter here, not only
# a quality one.
#
# The bytes: each off-diagonal slot crosses once to be dispatched and once more to come back, a
# `d_model`-vector of 8-byte floats each time. `accounting.all_to_all_bytes` predicts it for uniform
# routing: 2 × tokens × top_k × d_model × bytes × (1 − 1/ranks).

# %%
from moe_helpers.accounting import all_to_all_bytes

measured, formula = ep_run["bytes_measured"], ep_run["bytes_formula"]
print(f"bytes sent, measured from the split sizes: {measured:,}  (= 2 x {int(off_rank)} off-rank slots x "
      f"{ep_run['d_model']} values x 8 bytes: {2 * int(off_rank) * ep_run['d_model'] * 8:,})")
print(f"bytes sent, formula for uniform routing:  {formula:,.0f}   ({measured / formula - 1:+.2%})")

# %% [markdown]
# The formula holds even though the experts are not balanced. The share of a rank's slots that stays
# local is the share of the load its own experts carry; averaged over ranks that hold equal shares of
# similar tokens, that is 1/W whatever the imbalance. Imbalance changes *who* receives the bytes (the
# columns), hardly how many there are in all.

# %% [markdown]
# ## 3 · Data parallelism for real: the three phases with FSDP2 in two processes
#
# The three-phase command of notebook 06 runs under `torchrun` as it is. `moe_helpers.distributed`
# makes each process a data-parallel rank: FSDP2 (`fully_shard` on every block, then on the whole model)
# shards the weights, each rank takes its own rows of every global micro-batch (`my_slice`), and the
# gradients are averaged over the ranks, so each optimiser step sees the mean gradient of the whole
# batch, as one process would. Growth and checkpoints work on the gathered full model (`gather`), and
# the optimiser state is saved by parameter name with whole tensors, so a run stopped with two processes
# resumes with one, or with any other number. Rank 0 alone prints and writes. At the end each rank calls
# `leave_process_group()`, which runs Python's garbage collector before `destroy_process_group`: a
# `fully_shard`-ed model lives in a reference cycle, and freed only as the interpreter shuts down, after
# the group has gone, it sometimes made gloo abort a rank that had finished well. Do the same in your
# own FSDP2 scripts (section 2's script shards nothing, so a plain `destroy_process_group` does).
#
# We run the `tiny` preset with short phases (30 + 20 + 20 steps, a log line every step) three times:
# in one process, in two, and in two with `--expert-parallel` (each MoE layer becomes section 2's
# `ExpertParallelMoE`, 2 of the 4 experts a rank, everything else sharded by FSDP2). All three read the
# offline corpus, so that they see the same stories without asking the network, and run on the CPU, so
# that the comparison is the same on any machine.

# %%
TRAIN = ["-m", "moe_helpers", "train", "--preset", "tiny", "--data", "offline", "--device", "cpu",
         "--no-progress", "--steps-phase1", "30", "--steps-phase2", "20", "--steps-phase3", "20", "--log-every", "1"]
RUNS = {"1 process": [sys.executable, *TRAIN],                                     # python -m moe_helpers train
        "2 processes (FSDP2)": [*TORCHRUN, "--nproc-per-node=2", *TRAIN],
        "2 processes (FSDP2 + expert parallel)": [*TORCHRUN, "--nproc-per-node=2", *TRAIN, "--expert-parallel"]}
folders = {}
for number, (name, command) in enumerate(RUNS.items()):        # the first run also prepares the token cache
    folders[name] = WORK / f"run-{number}"
    seconds = launch([*command, "--out", str(folders[name])], timeout=300)
    print(f"{name:38}: {seconds:3.0f} s (start-up, data, three banners, growth, stories and export included)")
print("each wrote:", ", ".join(sorted(path.name for path in folders["1 process"].iterdir())))


# %%
def read_run(folder: Path) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return records, json.loads((folder / "summary.json").read_text())


runs = {name: read_run(folder) for name, folder in folders.items()}
reference, _ = runs["1 process"]
steps = [r["global_step"] for r in reference]
boundaries = [r["global_step"] for previous, r in zip(reference, reference[1:]) if r["phase"] != previous["phase"]]
gaps, same_steps = {}, {}
for name, (records, _) in runs.items():
    same_steps[name] = [r["global_step"] for r in records] == steps       # logged at the same steps
    gaps[name] = [abs(a["train_loss"] - b["train_loss"]) for a, b in zip(reference, records)]

fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(14, 4.6))
for (name, (records, _)), style in zip(runs.items(), [dict(lw=5, alpha=0.35), dict(lw=2, color="tab:red"),
                                                      dict(lw=1, color="black", ls=":")]):
    ax_loss.plot(steps, [r["train_loss"] for r in records], label=name, **style)
for name, color in (("2 processes (FSDP2)", "tab:red"), ("2 processes (FSDP2 + expert parallel)", "black")):
    ax_gap.semilogy(steps, [max(g, 1e-9) for g in gaps[name]], marker=".", color=color, label=name)
ax_loss.set(xlabel="step (all phases)", ylabel="training loss (nats/token)", title="The same run, three ways")
ax_gap.set(xlabel="step (all phases)", ylabel="|Δ training loss| vs 1 process  (0 drawn at 1e-9)",
           title="How far each two-process run is from the one-process run")
for ax in (ax_loss, ax_gap):
    for boundary in boundaries:
        ax.axvline(boundary, color="gray", ls="--", lw=1)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

by_phase = {name: {phase: max(g for g, r in zip(gaps[name], reference) if r["phase"] == phase) for phase in (1, 2, 3)}
            for name in list(RUNS)[1:]}
for name, phases in by_phase.items():
    print(f"{name:38}: max |Δ training loss| " + ", ".join(f"phase {p} {g:.1e}" for p, g in phases.items()))
print(f"one float32 step at a loss between 4 and 8: {torch.finfo(torch.float32).eps * 4:.1e}")

# %% [markdown]
# *What to notice:* the three curves lie on top of each other; the right panel shows how far apart they
# are. With plain FSDP2 (red) the difference is tiny everywhere, but tens to hundreds of times larger in
# the MoE phases (after the dashed lines, the phase boundaries) than in the dense one. With expert
# parallelism (black) it stays at the level of phase 1 throughout.
#
# Why is the FSDP2 run not equal to the single process, to the last bit? Two reasons, one small and one
# larger:
#
# * **The order of float sums.** Two processes add the gradients of their halves and then average them
#   over the ranks; one process adds the same terms in another order. Float32 addition is not
#   associative, so the last bits differ, and training carries the difference on. That is all that
#   happens in the dense phase 1: about 1e-6, one or two steps of float32 at a loss between 4 and 8
#   (`torch.finfo(torch.float32).eps * 4` = 4.8e-7).
# * **The load-balancing loss is computed per rank.** `MoELayer`'s aux loss `E · Σ_i f_i · P_i`
#   multiplies two averages over the tokens it sees. Each rank sees half the batch, and the mean of two
#   half-batch products is not the product over the whole batch. So in phases 2 and 3 the two runs
#   optimise slightly different objectives, and drift a few 1e-4 apart in 40 steps. Most frameworks do
#   the same: the loss stays local to a rank unless someone all-reduces its statistics.
#
# The expert-parallel run is the test of that explanation: `ExpertParallelMoE` all-reduces `f` and `P`
# over the ranks before multiplying them (section 2), so its aux loss is exactly the single process's,
# and only the float sums remain: about 1e-6 in every phase.
#
# The function-preservation checks hold in every run: upcycling and growth ran on gathered full models.

# %%
for name, (_, summary) in runs.items():
    for entry in summary["phases"][1:]:
        print(f"{name:38}: phase {entry['phase'] - 1}→{entry['phase']} jump {entry['jump']:+.1e}, "
              f"max |Δlogits| {entry['max_abs_logit_diff']:.1e}")
print()
for name, (_, summary) in runs.items():
    print(f"{name:38}: tokens/s per phase", [round(p["tokens_per_second"]) for p in summary["phases"]])

# %% [markdown]
# The last lines compare speed: do not expect a speed-up here. Two processes share two CPU cores with
# whatever else runs on them, and a model of a few hundred thousand parameters gives each step too little
# arithmetic to pay for gathering the weights, averaging the gradients and sending the tokens. On GPUs
# with a fast link and a model that keeps them busy, N ranks process close to N times the tokens per
# second.
#
# **On a machine with several GPUs** the same command uses one GPU per process (nccl), for example eight:
#
# ```bash
# torchrun --standalone --nproc-per-node 8 -m moe_helpers train --preset seed --out runs/seed-8
# torchrun --standalone --nproc-per-node 8 -m moe_helpers train --preset seed --expert-parallel --out runs/seed-8-ep
# ```
#
# The global batch stays the preset's (32 sequences: 4 per rank), so the run computes what one GPU
# would, with an eighth of the state on each GPU; with `--expert-parallel` each GPU keeps one of the 8
# experts of every MoE layer.

# %% [markdown]
# ## 4 · How much the all-to-all moves, against how much the layer computes
#
# Per MoE layer and forward pass, the formula of section 2 (all ranks together; the backward pass sends
# as much again). We take a stated batch: **32 768 tokens** in the layer (8 GPUs with one
# 4 096-token sequence each), bf16 activations (2 bytes), and the experts spread over 8 ranks (the
# `laptop` model has only 4 experts: 4 ranks). DeepSeek-V3 is not among `real_models` (its attention
# has a low-rank form our config does not describe), so its MoE numbers are written out here, from the
# DeepSeek-V3 technical report (DeepSeek-AI 2024, arXiv:2412.19437): d_model 7 168, 61 layers (the first
# 3 dense), 256 routed experts and 1 shared expert, each with a hidden size of 2 048, top-8 routing.
#
# The layer's compute: the router (2 · d_model · E FLOPs a token), `k` routed experts and the shared
# ones (each SwiGLU expert 2 · 3 · d_model · d_ff FLOPs a token).

# %%
TOKENS, BYTES, MAX_RANKS = 32_768, 2, 8
LAPTOP_MOE = preset("laptop").phase_configs()[1]


def layer(name, d_model, d_ff, num_experts, top_k, shared=0, shared_d_ff=0):
    return dict(name=name, d_model=d_model, d_ff=d_ff, num_experts=num_experts, top_k=top_k,
                shared=shared, shared_d_ff=shared_d_ff)


def from_config(name, cfg):
    return layer(name, cfg.d_model, cfg.d_ff, cfg.num_experts, cfg.top_k, cfg.num_shared_experts,
                 cfg.shared_hidden if cfg.num_shared_experts else 0)


LAYERS = [from_config("laptop (upcycled)", LAPTOP_MOE),
          from_config("seed phase 3", PHASE3),
          from_config("Mixtral-8x7B", published_model("Mixtral-8x7B").config),
          layer("DeepSeek-V3", d_model=7168, d_ff=2048, num_experts=256, top_k=8, shared=1, shared_d_ff=2048)]


def forward_flops(m) -> float:
    """FLOPs of one MoE layer's forward pass for one token: router, k routed experts, shared experts."""
    return (2 * m["d_model"] * m["num_experts"] + m["top_k"] * 6 * m["d_model"] * m["d_ff"]
            + m["shared"] * 6 * m["d_model"] * m["shared_d_ff"])


rows = {}
for m in LAYERS:
    ranks = min(m["num_experts"], MAX_RANKS)
    sent = all_to_all_bytes(TOKENS, m["top_k"], m["d_model"], BYTES, ranks)
    flops = TOKENS * forward_flops(m)
    expert_weights = m["num_experts"] * 3 * m["d_model"] * m["d_ff"] * BYTES   # what FSDP would gather instead
    rows[m["name"]] = dict(ranks=ranks, sent=sent, flops=flops, flops_per_byte=flops / sent,
                           fsdp_gather=expert_weights * (ranks - 1))         # each of the other ranks receives it
print(f"{TOKENS:,} tokens, bf16, per MoE layer and forward pass (all ranks together)")
print(f"{'model':<19}{'ranks':>6}{'all-to-all':>13}{'compute':>14}{'FLOPs/byte':>12}{'FSDP would gather':>20}")
for name, row in rows.items():
    print(f"{name:<19}{row['ranks']:6d}{row['sent'] / 1e6:10,.1f} MB{row['flops'] / 1e12:8.2f} TFLOP"
          f"{row['flops_per_byte']:12,.0f}{row['fsdp_gather'] / 1e6:17,.1f} MB")

# the formula, by hand, for Mixtral: 2 x tokens x top-2 x 4096 values x 2 bytes x 7/8 of them off-rank
print(f"Mixtral-8x7B by hand: {2 * TOKENS * 2 * 4096 * 2 * (1 - 1 / 8) / 1e6:,.1f} MB")
deepseek_ep64 = all_to_all_bytes(TOKENS, 8, 7168, BYTES, 64)
print(f"DeepSeek-V3 over 64 ranks (the report's 64-way expert parallelism): {deepseek_ep64 / 1e6:,.1f} MB "
      f"(1 - 1/64 = {1 - 1 / 64:.3f} of the slots leave their rank, against {1 - 1 / 8:.3f} over 8)")

# %% [markdown]
# Two things stand out. Mixtral's layer moves about 0.9 GB per forward pass for this batch, DeepSeek-V3's
# about 6.6 GB: the bytes grow with `top_k × d_model`, and DeepSeek-V3 sends every token to 8 experts
# of a 7 168-wide model. More ranks hardly change that: with 64 instead of 8, 1 − 1/W only grows from
# 0.875 to 0.984. And for the real models moving the tokens is far cheaper than moving the experts: FSDP
# would gather every expert's weights onto every other rank, about 20 GB for Mixtral's layer and 158 GB
# for DeepSeek-V3's. That is why MoE runs split the experts by expert parallelism. (For the `laptop`
# model, whose experts are tiny, it is the other way round.)
#
# Is the all-to-all the bottleneck? Per token, the layer sends `2 · k · d_model · bytes · (1 − 1/W)`
# and computes about `6 · k · d_model · d_ff`, so the **FLOPs per byte** sent is about
# `3 · d_ff / (bytes · (1 − 1/W))`: it depends on the experts' hidden size, not on the width or the
# batch. Whether the link keeps up depends on the hardware. We assume a GPU that sustains **400 TFLOP/s**
# in bf16 (about 40 % of an H100's dense peak) and three links per GPU: NVLink inside one server
# (**450 GB/s** each way on an H100), InfiniBand between servers (**400 Gb/s = 50 GB/s**), and
# **100 Gb/s Ethernet (12.5 GB/s)**. Each rank computes 1/W of the FLOPs and sends 1/W of the bytes:

# %%
SUSTAINED_FLOPS = 400e12
LINKS = {"NVLink 450 GB/s": 450e9, "InfiniBand 50 GB/s": 50e9, "Ethernet 12.5 GB/s": 12.5e9}

print(f"{'model':<19}{'compute':>10}" + "".join(f"{link:>25}" for link in LINKS))
ratios = {}
for name, row in rows.items():
    compute_ms = row["flops"] / row["ranks"] / SUSTAINED_FLOPS * 1e3
    comm_ms = {link: row["sent"] / row["ranks"] / bandwidth * 1e3 for link, bandwidth in LINKS.items()}
    ratios[name] = {link: comm_ms[link] / compute_ms for link in LINKS}
    cells = [f"{comm_ms[link]:.2f} ms ({ratios[name][link]:.2f}x)" for link in LINKS]
    print(f"{name:<19}{compute_ms:7.2f} ms" + "".join(f"{cell:>25}" for cell in cells))
print("(the all-to-all's time on each link, and in brackets that time / the compute time;")
print(" per layer and forward pass, nothing overlapped)")

# %% [markdown]
# *What to read in it:* inside one server (NVLink) the all-to-all takes a fraction of the experts'
# compute for the larger models. Across servers it is another story: on InfiniBand Mixtral's large
# experts (d_ff 14 336) still compute longer than their tokens travel, the `seed` model's are about even,
# and DeepSeek-V3's fine-grained experts (d_ff 2 048, top-8) would wait on the network about twice as
# long as they compute; on plain Ethernet every model here waits on the wire. The course's `laptop`
# model, with its 384-wide experts, would wait on communication even on NVLink: its experts do too little
# work per byte.
#
# This is why large MoE training is shaped around the all-to-all: DeepSeek-V3 limits each token to
# experts on at most 4 servers (node-limited routing) and overlaps the all-to-all of one micro-batch
# with the compute of another (its DualPipe schedule); dedicated communication libraries such as
# DeepEP exist for exactly these two all-to-alls; and the backward pass sends as much again as the
# forward pass, in every MoE layer.

# %% [markdown]
# ## 5 · Where to go next: torchtitan and Megatron-Core
#
# Two open-source frameworks train MoE models at scale in PyTorch, and you now know what their main
# MoE options do. (Names as of 2025; both projects move fast, so check their documentation.)
#
# **torchtitan** (PyTorch's own training platform) is the closest to this course: FSDP2's
# `fully_shard`, as in `moe_helpers.distributed`, and an MoE whose expert parallelism is the same
# algorithm as `ExpertParallelMoE`: its `ExpertParallel` style (`torchtitan/distributed/expert_parallel.py`)
# exchanges the per-expert counts with an all-to-all, dispatches the tokens with an uneven, differentiable
# `all_to_all_single_autograd` in `_token_dispatch`, regroups them by local expert, and sends them back
# in `_token_combine`.
#
# **Megatron-Core** (NVIDIA's Megatron-LM library) is configured by command-line flags.
#
# | what you ran here | torchtitan | Megatron-Core |
# | --- | --- | --- |
# | `torchrun --nproc-per-node N` | launched with `torchrun` | launched with `torchrun` |
# | FSDP2 data parallelism (`DataParallel.shard`) | `parallelism.data_parallel_shard_degree` (FSDP2) | `--use-distributed-optimizer` (shards the optimiser state) |
# | `ExpertParallelMoE` (`--expert-parallel`): E/W experts a rank, tokens all-to-all | `parallelism.expert_parallel_degree` (its ranks come from the data-parallel ones, as here) | `--expert-model-parallel-size`, `--moe-token-dispatcher-type alltoall` |
# | `MoELayer(num_experts, top_k)` | the model's MoE arguments (`num_experts`, `top_k`) | `--num-experts`, `--moe-router-topk` |
# | load-balancing loss, per batch / per sequence (`aux_loss_coef`, `balance_loss_scope`) | | `--moe-router-load-balancing-type aux_loss` / `seq_aux_loss`, `--moe-aux-loss-coeff` |
# | router z-loss (`z_loss_coef`) | | `--moe-z-loss-coeff` |
# | aux-loss-free balancing (`bias_update_rate`) | `load_balance_coeff` of its MoE (on by default) | `--moe-router-enable-expert-bias`, `--moe-router-bias-update-rate` |
# | capacity factor (`capacity_factor`) | | `--moe-expert-capacity-factor` (unset: no token dropped) |
#
# torchtitan's settings are fields of its job configuration (`parallelism.…`, settable from the command
# line too); an empty cell means no setting we have checked, not that the feature is missing.
#
# A Megatron-Core run of this notebook's expert-parallel layer over 8 GPUs would pass
# `--num-experts 8 --moe-router-topk 2 --expert-model-parallel-size 8 --moe-token-dispatcher-type alltoall
# --moe-router-load-balancing-type aux_loss --moe-aux-loss-coeff 1e-2`; Megatron-Core's other
# dispatchers are `allgather` and `flex` (the latter for fused backends such as DeepEP). Both frameworks
# add what a course leaves out: tensor and pipeline parallelism, grouped GEMMs for the experts, FP8,
# communication overlapped with compute, and checkpoints that reshard.
#
# The temporary folder holds the three runs (checkpoints included); we delete it now. Set `KEEP_RUNS = True`
# to keep it and browse its files.

# %%
import shutil

KEEP_RUNS = False   # True: keep the worker script, its JSON and both training runs to look at later
size = sum(path.stat().st_size for path in WORK.rglob("*") if path.is_file())
if KEEP_RUNS:
    print(f"kept {WORK} ({size / 1e6:.0f} MB)")
else:
    shutil.rmtree(WORK)
    print(f"deleted {WORK} ({size / 1e6:.0f} MB)")

# %% [markdown]
# ## Exercises
#
# Each exercise asks you to implement one piece of this chapter in a stub function. Replace
# `raise NotImplementedError` with your code and run the cell below it: `check` runs your function
# on hidden test cases and compares it with the course's own implementation. It answers *not
# attempted yet*, *correct*, or *wrong* with a hint that points at the mistake (never at the
# answer). Reference solutions, for when you are done or stuck:
# `solutions/08_scaling_out.py` at the root of the repository.

# %%
from moe_helpers.exercises import check

# %% [markdown]
# **Exercise 1 — bytes from a send matrix.** Write `bytes_sent(send_matrix, d_model, bytes_per_value)`:
# the bytes one expert-parallel MoE layer sends between ranks in a forward pass, all ranks together,
# given its send matrix (a `(W, W)` tensor of token slots, source rank × destination rank, like the one in
# section 2), for `d_model`-vectors of `bytes_per_value` bytes. Remember what stays on its rank, and
# that every slot that leaves must come back. Return an `int`. The hidden cases include uneven traffic,
# a matrix whose slots all stay on their rank, and a single rank.

# %%
def bytes_sent(send_matrix, d_model, bytes_per_value):
    """Bytes that crossed between ranks, dispatch and combine, all ranks together (an int)."""
    raise NotImplementedError  # your code here


# %%
check("bytes_sent", bytes_sent)

# %% [markdown]
# **Exercise 2 — which rank holds expert e?** Write `rank_of_expert(expert, num_experts, ranks)`: the rank
# that holds expert `expert` when `ExpertParallelMoE` spreads `num_experts` experts over `ranks` ranks
# (section 2: rank `r` holds experts `r·E/W … (r+1)·E/W − 1`). The hidden cases include section 2's
# layout, a single rank, one expert per rank, and DeepSeek-V3's 256 experts over its 64 expert-parallel
# ranks.

# %%
def rank_of_expert(expert, num_experts, ranks):
    """The rank (0 ... ranks - 1) that holds ``expert`` (0 ... num_experts - 1)."""
    raise NotImplementedError  # your code here


# %%
check("rank_of_expert", rank_of_expert)

# %% [markdown]
# **Exercise 3 — as many ranks as you like.** Spread the experts over more and more ranks (imagine
# each expert cut into ever smaller groups of rows, so that `ranks` can grow past the number of
# experts). Write `all_to_all_limit_mb(tokens, top_k, d_model, bytes_per_value)`: how many **MB**
# (10^6 bytes) one MoE layer's forward pass sends, all ranks together, in the limit `ranks → ∞`. Work
# it out from the formula of section 2. Then: what is it for Mixtral-8x7B with section 4's batch
# (32 768 tokens, bf16), and what share of it do 8 ranks already send?

# %%
def all_to_all_limit_mb(tokens, top_k, d_model, bytes_per_value):
    """MB sent by one MoE layer's forward pass, all ranks together, as ranks → ∞ (a number)."""
    raise NotImplementedError  # your code here


# %%
check("all_to_all_limit_mb", all_to_all_limit_mb)


# %% [markdown]
# ## Further reading
#
# - [ZeRO](https://arxiv.org/abs/1910.02054) (Rajbhandari et al. 2020): sharding the optimiser state,
#   the gradients and the weights over data-parallel ranks, the idea behind FSDP (stage 3).
# - [PyTorch FSDP](https://arxiv.org/abs/2304.11277) (Zhao et al. 2023): the design of PyTorch's fully
#   sharded data parallelism (the paper describes its first version; section 3's `fully_shard` is
#   FSDP2, the same idea sharding each parameter on its own).
# - [GShard](https://arxiv.org/abs/2006.16668) (Lepikhin et al. 2020): a 600 B-parameter MoE trained
#   with expert parallelism and all-to-all dispatch, section 2's algorithm.
# - [Switch Transformer](https://arxiv.org/abs/2101.03961) (Fedus et al. 2021): expert, data and model
#   parallelism combined, and the capacity factor that bounds what an all-to-all sends.
# - [MegaBlocks](https://arxiv.org/abs/2211.15841) (Gale et al. 2022): experts computed as block-sparse
#   matrix products, with no token dropped and no padding.
# - [DeepSeek-V3](https://arxiv.org/abs/2412.19437) (DeepSeek-AI 2024): node-limited routing, DualPipe
#   and the communication kernels behind the numbers of section 4.
# - [torchtitan](https://github.com/pytorch/torchtitan): PyTorch's training platform, the closest to
#   this course; read its `ExpertParallel` next to `moe_helpers.parallel`.
# - [Megatron-LM](https://github.com/NVIDIA/Megatron-LM): NVIDIA's framework and its Megatron-Core
#   library, whose MoE flags section 5's table maps.

# %% [markdown]
# ## Checks — the claims above, verified
#
# These cells check every claim the lesson makes, on the numbers it computed above; `make test`
# runs them with the rest of the notebook.

# %%
# 1. memory per rank, seed phase 3
GB24 = DEVICE_GIB * GiB
assert BYTES_PER_PARAMETER == 16, f"float32 + AdamW takes {BYTES_PER_PARAMETER} bytes a parameter"
assert all(abs(per_rank[n]["state"] - per_rank[n]["fsdp"]) < n for n in per_rank), "the FSDP shard is not 1/N"
assert all(per_rank[n]["ddp"] == per_rank[1]["ddp"] > GB24 for n in per_rank), "DDP's copy should not shrink or fit"
assert round(per_rank[1]["ddp"] / GiB) == 33, f"the state is {per_rank[1]['ddp'] / GiB:.1f} GiB"
assert round(other_parameters / 1e6) == 289, f"{other_parameters / 1e6:.1f} M parameters outside the experts"
assert per_rank[8]["fsdp"] < per_rank[8]["ep"] < per_rank[1]["ep"], "expert parallelism should sit between"
assert 1.5 < per_rank[8]["ep"] / per_rank[8]["fsdp"] < 2.5, "over 8 ranks EP should hold about twice FSDP's share"
assert per_rank[4]["total"] < GB24 < per_rank[2]["total"], "an FSDP run should fit a 24 GB GPU from 4 GPUs on"
assert mixtral_state / 8 / GiB > 80, "Mixtral-8x7B's state should not fit eight 80 GB GPUs"
# 2. expert parallelism in four processes
assert 0.25 < share < 0.3, f"each rank holds {share:.1%} of the layer"
assert [held["experts"] for held in ep_run["ranks"]] == [[2 * r, 2 * r + 1] for r in range(PROCESSES)], \
    "rank r should hold experts 2r and 2r + 1"
assert send.sum() == slots and torch.equal(received, loads.view(W, -1).sum(1)), "the send matrix lost slots"
assert torch.equal(send.sum(1), torch.full((W,), slots // W)), "every rank should send all its slots"
assert measured == 2 * int(off_rank) * ep_run["d_model"] * 8, "the bytes do not match the off-rank slots"
assert formula == all_to_all_bytes(ep_run["tokens"], ep_run["top_k"], ep_run["d_model"], 8, W), "formula mismatch"
assert abs(measured / formula - 1) < 0.05, f"the uniform formula is {measured / formula - 1:+.1%} off"
# 3. the three-phase runs: one process, FSDP2, FSDP2 + expert parallel
assert all(same_steps.values()), f"the runs logged different steps: {same_steps}"
fsdp_by_phase = by_phase["2 processes (FSDP2)"]
assert max(gaps["2 processes (FSDP2)"]) <= 1e-3, "FSDP2 drifted from one process"
assert fsdp_by_phase[1] <= 1e-5, f"in the dense phase FSDP2 drifted by {fsdp_by_phase[1]:.1e}"
assert min(fsdp_by_phase[2], fsdp_by_phase[3]) > 10 * fsdp_by_phase[1], "the MoE phases should drift further"
assert max(gaps["2 processes (FSDP2 + expert parallel)"]) <= 1e-5, "expert parallel should not drift"
for name, (_, run_summary) in runs.items():
    for entry in run_summary["phases"][1:]:
        assert abs(entry["jump"]) < 1e-4, f"{name}: phase {entry['phase']} moved the loss by {entry['jump']:.1e}"

# %%
# 4. all-to-all bytes against compute
assert rows["Mixtral-8x7B"]["sent"] == 2 * TOKENS * 2 * 4096 * 2 * (1 - 1 / 8), "Mixtral's bytes by hand"
assert round(rows["Mixtral-8x7B"]["sent"] / 1e9, 1) == 0.9 and round(rows["DeepSeek-V3"]["sent"] / 1e9, 1) == 6.6, \
    "the text's 0.9 GB and 6.6 GB"
assert round(rows["Mixtral-8x7B"]["fsdp_gather"] / 1e9) == 20 and round(rows["DeepSeek-V3"]["fsdp_gather"] / 1e9) == 158, \
    "the text's 20 GB and 158 GB"
assert rows["DeepSeek-V3"]["flops_per_byte"] < rows["seed phase 3"]["flops_per_byte"] < rows["Mixtral-8x7B"]["flops_per_byte"]
assert all(rows[name]["sent"] < rows[name]["fsdp_gather"] for name in ("Mixtral-8x7B", "DeepSeek-V3")), \
    "for the real models moving tokens should be cheaper than moving experts"
assert rows["DeepSeek-V3"]["sent"] < deepseek_ep64 < 1.15 * rows["DeepSeek-V3"]["sent"], "64 ranks should send a bit more"
assert rows["laptop (upcycled)"]["fsdp_gather"] < rows["laptop (upcycled)"]["sent"], "tiny experts: the exception"
assert all(r["NVLink 450 GB/s"] < 1 for name, r in ratios.items() if name != "laptop (upcycled)"), "NVLink keeps up"
assert ratios["Mixtral-8x7B"]["InfiniBand 50 GB/s"] < 1 < ratios["DeepSeek-V3"]["InfiniBand 50 GB/s"]
assert 1.5 < ratios["DeepSeek-V3"]["InfiniBand 50 GB/s"] < 2.5, "DeepSeek-V3 should wait about twice its compute"
assert 0.8 < ratios["seed phase 3"]["InfiniBand 50 GB/s"] < 1.25, "the seed model should be about even"
assert all(r["Ethernet 12.5 GB/s"] > 1 for r in ratios.values()), "on Ethernet every model should wait"
assert ratios["laptop (upcycled)"]["NVLink 450 GB/s"] > 1, "the laptop model should wait even on NVLink"
