"""Is an MoE worth it?  Dense and MoE models trained from scratch, side by side.

Three models ("arms"), all built from one dense config, as in the comparisons
of the Switch Transformer paper (Fedus et al. 2021, sec. 3): an MoE against a
dense model with the same FLOPs per token, and against a dense model as big
as the MoE:

* ``dense``              the baseline, a SwiGLU FFN of width ``d_ff`` in every block;
* ``moe_equal_active``   ``E`` experts per block, top-``k``, each expert ``d_ff / k``
                         wide, so the ``k`` experts a token visits hold exactly the
                         dense FFN's ``3 d d_ff`` parameters: only the router
                         (``d E`` per block) is extra, stored and active;
* ``dense_equal_total``  one dense FFN as wide as all the experts and the router
                         together, ``d_ff' = round((3 d E d_ff/k + d E) / 3d)``:
                         the MoE's total parameters, up to that rounding.

``compare_from_scratch`` trains every arm for every seed with one
``TrainConfig`` (same data, steps, learning-rate schedule and batch size; the
seed fixes the initialisation and the batches, so within a seed every arm sees
the same batches and starts from the same weights outside its FFN) and returns
a ``Comparison``: each run's validation curve, final validation loss and
wall-clock seconds per training step, the FLOPs per token of each arm, mean /
std / min / max per arm, and each arm's loss at a given budget of FLOPs or
seconds.  ``time_training_steps`` times the arms' training steps in turns, for
a fair seconds-per-step ratio on a busy machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .accounting import ParameterCounts, count_from_config, flops_per_token
from .config import ModelConfig, TrainConfig
from .data import TokenData
from .model import GPT
from .train import History, make_optimizer, pick_device, train_phase

ARMS = ("dense", "moe_equal_active", "dense_equal_total")


def arm_label(arm: str, cfg: ModelConfig) -> str:
    """A short human name for an arm: ``dense, equal active (d_ff 256)``, ``MoE top-2 of 8 (d_ff 128 each)``."""
    if cfg.is_moe:
        return f"MoE top-{cfg.top_k} of {cfg.num_experts} (d_ff {cfg.d_ff} each)"
    size = "equal total" if arm == "dense_equal_total" else "equal active"
    return f"dense, {size} (d_ff {cfg.d_ff})"


# ------------------------------------------------------------------ the three arms
def _check_matchable(dense_cfg: ModelConfig, num_experts, top_k) -> None:
    """Raise ``ValueError`` unless an MoE with exactly the dense FFN active can be built."""
    if not isinstance(dense_cfg, ModelConfig) or dense_cfg.is_moe:
        raise ValueError("matched_configs needs a dense ModelConfig (num_experts=0) as the baseline")
    for name, value in (("num_experts", num_experts), ("top_k", top_k)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if num_experts < 2:
        raise ValueError(f"num_experts must be >= 2 (one expert is a dense FFN with a router), got {num_experts}")
    if not 1 <= top_k < num_experts:
        raise ValueError(f"top_k must be in 1..num_experts-1 (1..{num_experts - 1}): with every expert "
                         f"active the MoE would have no idle parameters; got {top_k}")
    if dense_cfg.dense_hidden % top_k:
        raise ValueError(f"the dense FFN width ({dense_cfg.dense_hidden}) must be divisible by top_k ({top_k}): "
                         f"the {top_k} active experts share it exactly")


def matched_configs(dense_cfg: ModelConfig, num_experts: int, top_k: int) -> dict[str, ModelConfig]:
    """The three arms: the dense baseline, the MoE with its active parameters, the
    dense model with the MoE's total parameters.

    * ``moe_equal_active``: ``num_experts`` experts per block, ``top_k`` active,
      each ``d_ff / top_k`` wide (``top_k = 1``: the dense FFN's own width, as in
      Switch; ``top_k > 1``: finer experts, as in DeepSeekMoE's fine-grained
      segmentation, Dai et al. 2024).  Active parameters and FLOPs per token
      exceed the dense model's only by the router, ``d_model * num_experts`` per block.
      With ``top_k = 1`` the gate is Switch's unnormalised probability
      (``renormalize_top_k=False``): a renormalised top-1 weight is always 1, and
      the router would learn nothing from the language-model loss (notebook 04).
    * ``dense_equal_total``: the baseline with a dense FFN of width
      ``round((3 d E d_ff/k + d E) / (3 d))``, the experts' and router's
      parameters in one FFN; the total differs from the MoE's by under
      ``1.5 d`` per block (the rounding of one hidden unit of ``3 d`` parameters).

    Everything but the FFN (embedding, attention, norms, LM head) is the
    baseline's in all three.  Raises ``ValueError`` for a baseline that is
    already an MoE, ``num_experts < 2``, ``top_k`` outside ``1..num_experts-1``
    or an FFN width that ``top_k`` does not divide.
    """
    _check_matchable(dense_cfg, num_experts, top_k)
    d_model, expert_d_ff = dense_cfg.d_model, dense_cfg.dense_hidden // top_k
    renormalize = dense_cfg.renormalize_top_k and top_k > 1
    moe = dense_cfg.replace(num_experts=num_experts, top_k=top_k, d_ff=expert_d_ff, dense_d_ff=None,
                            renormalize_top_k=renormalize)
    moe_ffn_params = 3 * d_model * expert_d_ff * num_experts + d_model * num_experts   # experts + router, per block
    wide_d_ff = round(moe_ffn_params / (3 * d_model))
    return {"dense": dense_cfg, "moe_equal_active": moe,
            "dense_equal_total": dense_cfg.replace(d_ff=wide_d_ff, dense_d_ff=None)}


@dataclass(frozen=True)
class ArmSize:
    """Exact size and cost of one arm (``flops_*`` per token at the given context)."""

    arm: str
    label: str
    config: ModelConfig
    counts: ParameterCounts
    flops_forward: float        # PaLM convention: 2 x active matmul parameters + attention
    flops_training: float       # 3 x forward

    @property
    def total(self) -> int:
        return self.counts.total

    @property
    def active(self) -> int:
        return self.counts.active


def arm_sizes(configs: dict[str, ModelConfig], seq_len: int) -> dict[str, ArmSize]:
    """Total and active parameters (``count_from_config``) and FLOPs per token
    (``flops_per_token`` at ``seq_len``) of every arm."""
    sizes = {}
    for arm, cfg in configs.items():
        flops = flops_per_token(cfg, seq_len)
        sizes[arm] = ArmSize(arm, arm_label(arm, cfg), cfg, count_from_config(cfg), flops.forward, flops.training)
    return sizes


def format_arm_table(sizes: dict[str, ArmSize], baseline: str = "dense") -> str:
    """A Markdown table: total, active, forward FLOPs per token, each also as a ratio to ``baseline``."""
    base = sizes[baseline]
    lines = ["| arm | total parameters | active parameters | forward FLOPs / token |",
             "| --- | ---: | ---: | ---: |"]
    for size in sizes.values():
        lines.append(f"| {size.label} | {size.total:,} (×{size.total / base.total:.3f}) "
                     f"| {size.active:,} (×{size.active / base.active:.4f}) "
                     f"| {size.flops_forward:,.0f} (×{size.flops_forward / base.flops_forward:.4f}) |")
    return "\n".join(lines)


# ------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (n - 1 in the denominator; 0 for one value), min and max."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values) -> "Spread":
        values = [float(v) for v in values]
        if not values:
            raise ValueError("Spread.of needs at least one value")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, min(values), max(values), len(values))

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (min {self.min:.4f}, max {self.max:.4f}, n={self.n})"


def seconds_per_step(history: History, skip_first: bool = True) -> float:
    """Wall-clock seconds of one training step: the fastest of the log intervals that
    hold nothing but training steps.

    ``train_phase`` stamps each log record with the elapsed seconds after that
    step's evaluation, if any, so the interval that ends at a record *without*
    a validation loss covers training steps only.  The first interval is
    skipped when others remain (memory allocation and thread-pool warm-up).
    Of the rest the fastest is kept, as ``timeit`` reports the best of its
    repeats: other processes on a shared machine only ever add time.
    Needs ``log_every`` below ``eval_every`` (else every interval holds an evaluation).
    """
    records = history.records
    rates = [(b["seconds"] - a["seconds"]) / (b["step"] - a["step"])
             for a, b in zip(records, records[1:])
             if b["val_loss"] is None and b["phase"] == a["phase"] and b["step"] > a["step"]]
    if not rates:
        raise ValueError("no log interval without an evaluation: train with log_every < eval_every")
    if skip_first and len(rates) > 1:
        rates = rates[1:]
    return min(rates)


# ------------------------------------------------------------------ training
@dataclass
class Run:
    """One arm trained from scratch with one seed."""

    arm: str
    seed: int
    history: History
    seconds_per_step: float     # wall-clock seconds of a training step, fastest interval (``seconds_per_step``)
    wall_seconds: float         # the whole ``train_phase`` call, evaluations included

    @property
    def eval_steps(self) -> list[int]:
        return [r["step"] for r in self.history.evaluated()]

    @property
    def val_losses(self) -> list[float]:
        return [r["val_loss"] for r in self.history.evaluated()]

    @property
    def final_val_loss(self) -> float:
        return self.history.last_val_loss


@dataclass(frozen=True)
class Band:
    """Validation losses of one arm over its seeds at shared evaluation steps (arrays of the same length)."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray


@dataclass
class Comparison:
    """What ``compare_from_scratch`` measured: every run, and per-arm views of them."""

    sizes: dict[str, ArmSize]
    train: TrainConfig
    seeds: tuple[int, ...]
    runs: list[Run] = field(default_factory=list)

    @property
    def arms(self) -> list[str]:
        return list(self.sizes)

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.seq_len

    def runs_of(self, arm: str) -> list[Run]:
        return [run for run in self.runs if run.arm == arm]

    def final_losses(self, arm: str) -> list[float]:
        """The final validation loss of each seed, in seed order."""
        return [run.final_val_loss for run in self.runs_of(arm)]

    def summary(self) -> dict[str, Spread]:
        """Per arm: mean, std, min and max of the final validation loss over the seeds."""
        return {arm: Spread.of(self.final_losses(arm)) for arm in self.arms}

    def step_seconds(self, arm: str) -> Spread:
        """Per arm: the spread over the seeds of the runs' seconds per training step."""
        return Spread.of([run.seconds_per_step for run in self.runs_of(arm)])

    def band(self, arm: str) -> Band:
        """Mean, std, min and max of the validation curve over the seeds, step by step."""
        runs = self.runs_of(arm)
        steps = runs[0].eval_steps
        if any(run.eval_steps != steps for run in runs):
            raise ValueError(f"the runs of {arm} were evaluated at different steps")
        losses = np.array([run.val_losses for run in runs])                # (seeds, evaluations)
        std = losses.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(steps))
        return Band(np.array(steps), losses.mean(axis=0), std, losses.min(axis=0), losses.max(axis=0))

    def training_flops(self, arm: str, steps) -> np.ndarray:
        """Cumulative training FLOPs after ``steps`` optimiser steps:
        steps x tokens per step x training FLOPs per token (``flops_per_token``)."""
        return np.asarray(steps, dtype=float) * self.tokens_per_step * self.sizes[arm].flops_training

    def training_seconds(self, arm: str, steps, seconds_per_step: float | None = None) -> np.ndarray:
        """Wall-clock seconds of ``steps`` training steps at ``seconds_per_step`` (default:
        the arm's pace in these runs, ``step_seconds``, mean over the seeds; evaluations excluded)."""
        pace = self.step_seconds(arm).mean if seconds_per_step is None else seconds_per_step
        return np.asarray(steps, dtype=float) * pace

    def _losses_at(self, arm: str, budget: float, spent: np.ndarray, unit: str) -> list[float]:
        """Each seed's validation loss when ``spent`` (per evaluation) reaches ``budget``,
        by linear interpolation between evaluations."""
        if not spent[0] <= budget <= spent[-1]:
            raise ValueError(f"{arm} spent {spent[-1]:.3g} {unit} in all; {budget:.3g} lies outside its run")
        return [float(np.interp(budget, spent, run.val_losses)) for run in self.runs_of(arm)]

    def losses_at_flops(self, arm: str, flops: float) -> list[float]:
        """Each seed's validation loss of ``arm`` after ``flops`` training FLOPs, read off its
        validation curve by linear interpolation between evaluations (``flops`` must lie
        within the run)."""
        steps = np.array(self.runs_of(arm)[0].eval_steps)
        return self._losses_at(arm, flops, self.training_flops(arm, steps), "FLOPs")

    def losses_at_seconds(self, arm: str, seconds: float, seconds_per_step: float | None = None) -> list[float]:
        """Each seed's validation loss of ``arm`` after ``seconds`` of training steps
        (``training_seconds``), read off its validation curve like ``losses_at_flops``."""
        steps = np.array(self.runs_of(arm)[0].eval_steps)
        return self._losses_at(arm, seconds, self.training_seconds(arm, steps, seconds_per_step), "seconds")

    def paired_gaps(self, arm: str, other: str) -> list[float]:
        """``other``'s final loss minus ``arm``'s, seed by seed (positive: ``arm`` is lower)."""
        return [b - a for a, b in zip(self.final_losses(arm), self.final_losses(other))]

    def format_summary(self, baseline: str = "dense") -> str:
        """One line per arm: final validation loss mean ± std [min, max], seconds per step and its ratio."""
        summary, base_seconds = self.summary(), self.step_seconds(baseline).mean
        lines = [f"{'arm':<40}{'final val loss':>22}{'min':>8}{'max':>8}{'ms/step':>9}{'vs ' + baseline:>11}"]
        for arm, spread in summary.items():
            seconds = self.step_seconds(arm).mean
            lines.append(f"{self.sizes[arm].label:<40}{spread.mean:>13.4f} ± {spread.std:.4f}"
                         f"{spread.min:>8.4f}{spread.max:>8.4f}{1e3 * seconds:>9.1f}{seconds / base_seconds:>10.2f}x")
        return "\n".join(lines)


def _check_comparison(configs: dict, train_cfg: TrainConfig, seeds) -> tuple[int, ...]:
    if not configs:
        raise ValueError("configs must name at least one model")
    seeds = tuple(seeds)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be one or more integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    if train_cfg.steps_phase1 < 1:
        raise ValueError("train_cfg.steps_phase1 must be >= 1: the comparison trains phase 1")
    if train_cfg.log_every >= train_cfg.eval_every:
        raise ValueError(f"log_every ({train_cfg.log_every}) must be below eval_every ({train_cfg.eval_every}): "
                         "seconds per step are read from the log intervals without an evaluation")
    return seeds


def is_ffn_weight(name: str) -> bool:
    """Whether a ``GPT`` parameter (by qualified name) belongs to a block's feed-forward
    part: the dense FFN, or an MoE layer's router and experts."""
    return ".ffn." in name


def share_non_ffn_weights(model: GPT, reference: dict[str, torch.Tensor]) -> int:
    """Copy every parameter outside the FFNs (embedding, attention, norms, LM head) from
    ``reference`` (a ``state_dict`` of a model with the same non-FFN shapes) into ``model``.

    Common random numbers (e.g. Glasserman 2003, sec. 4.2): arms of one seed then
    differ only in their FFNs, at initialisation as in their batches, so the
    seed-to-seed spread of everything else cancels in their differences.
    Returns how many tensors were copied."""
    state = model.state_dict()
    shared = {name: tensor for name, tensor in reference.items()
              if not is_ffn_weight(name) and name in state and state[name].shape == tensor.shape}
    missing = [name for name in state if not is_ffn_weight(name) and name not in shared
               and not name.endswith(("rope_cos", "rope_sin"))]
    if missing:
        raise ValueError(f"the reference has no tensor of the same shape for {missing[:3]}")
    model.load_state_dict(shared, strict=False)
    return len(shared)


def train_one(cfg: ModelConfig, data: TokenData, train_cfg: TrainConfig, seed: int,
              shared_init: dict[str, torch.Tensor] | None = None) -> tuple[History, float]:
    """Build ``GPT(cfg)`` under ``torch.manual_seed(seed)`` (its non-FFN weights
    then replaced by ``shared_init``'s, when given) and train it for
    ``train_cfg.steps_phase1`` steps with batches drawn from ``seed``.
    Returns the ``History`` and the wall-clock seconds of the whole run."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    if shared_init is not None:
        share_non_ffn_weights(model, shared_init)
    started = time.perf_counter()
    history = train_phase(model, data, train_cfg.replace(seed=seed), phase=1, progress=False, verbose=False)
    return history, time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    """Wait for the accelerator, so a timer reads finished work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_training_steps(configs: dict[str, ModelConfig], data: TokenData, train_cfg: TrainConfig,
                        rounds: int = 30, warmup: int = 3, seed: int = 0) -> dict[str, list[float]]:
    """Wall-clock seconds of single training steps of every config, taken in turns.

    One step is what ``train_phase`` does per optimiser step: a training batch,
    the forward pass with LM + auxiliary loss, backward, gradient clipping, an
    AdamW step.  The configs take turns step by step (round-robin, ``warmup``
    untimed rounds first), so whatever else the machine is doing slows them
    alike; take the ``min`` of each list (``timeit``'s best-of) or its median.
    Returns ``{name: [seconds of each timed step]}``.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")
    device = pick_device(train_cfg.device)
    generator = torch.Generator().manual_seed(seed)
    models, optimizers = {}, {}
    for name, cfg in configs.items():
        torch.manual_seed(seed)
        models[name] = GPT(cfg).to(device).train()
        optimizers[name] = make_optimizer(models[name], train_cfg.lr_phase1, train_cfg.weight_decay)
    seconds = {name: [] for name in configs}
    for round_index in range(warmup + rounds):
        for name, model in models.items():
            inputs, targets = data.batch("train", train_cfg.batch_size, train_cfg.seq_len, device, generator)
            _synchronize(device)
            started = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            out = model(inputs, targets)
            (out.loss + out.aux_loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            optimizers[name].step()
            _synchronize(device)
            if round_index >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def compare_from_scratch(configs: dict[str, ModelConfig], data: TokenData, train_cfg: TrainConfig,
                         seeds=(0, 1, 2), shared_init: bool = True, verbose: bool = True) -> Comparison:
    """Train every config once per seed, with the same recipe, and collect the results.

    Phase-1 settings of ``train_cfg`` apply to every run (``steps_phase1``,
    ``lr_phase1``, warmup and cosine decay, batch, context, evaluation); the
    MoE is optimised on LM loss + its auxiliary losses, and every validation
    loss is the LM loss alone on the same fixed batches (``train.evaluate``).
    Within a seed every arm draws the same batches and, with ``shared_init``,
    starts from the first arm's initial weights outside the FFNs
    (``share_non_ffn_weights``; the configs must then agree outside the FFN).
    Runs go seed by seed, all arms within a seed, so a change in the machine's
    load during the comparison touches every arm alike.  ``verbose`` prints one
    line per run: first and last validation loss, and the run's wall-clock seconds.
    """
    seeds = _check_comparison(configs, train_cfg, seeds)
    comparison = Comparison(arm_sizes(configs, train_cfg.seq_len), train_cfg, seeds)
    first = next(iter(configs.values()))
    for seed in seeds:
        reference = None
        if shared_init:
            torch.manual_seed(seed)
            reference = GPT(first).state_dict()
        for arm, cfg in configs.items():
            history, wall = train_one(cfg, data, train_cfg, seed, reference)
            run = Run(arm, seed, history, seconds_per_step(history), wall)
            comparison.runs.append(run)
            if verbose:
                print(f"  seed {seed}  {comparison.sizes[arm].label:<40} val loss {run.val_losses[0]:.3f} -> "
                      f"{run.final_val_loss:.4f}  ({wall:.1f} s)", flush=True)
    return comparison
