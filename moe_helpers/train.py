"""Training one phase: AdamW, warmup then cosine decay, gradient clipping,
periodic validation, and a ``History`` of what happened.

Log lines follow the original note: ``  step   10 | loss 6.1234 | 15.2s``.
For an MoE the optimised loss is ``loss + aux_loss`` (language-model loss plus
the weighted load-balancing and z-losses), and each log step also records how
many token slots every expert of every MoE layer received from the training
batches since the previous log step.

Every setting comes from one ``TrainConfig``; on CUDA the forward passes run
under bf16 autocast by default (``precision="auto"``), with float32 weights.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .config import PRECISIONS, TrainConfig
from .data import TokenData


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU (or exactly what is asked for)."""
    if preference != "auto":
        return torch.device(preference)     # "cpu", "mps", "cuda" or "cuda:N"
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def lr_at(step: int, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to
    ``lr * min_lr_ratio`` at ``steps`` (Loshchilov & Hutter 2017, eq. 5)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norm gains)."""
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay},
              {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


@dataclass
class History:
    """One record per log step, across one or more phases.

    Each record holds ``phase, step, global_step, train_loss, val_loss``
    (None between evaluations), ``aux_loss, lr, tokens, seconds`` and
    ``expert_load``: per MoE layer, the share of token slots each expert got
    from the training batches since the previous record.
    """

    records: list[dict] = field(default_factory=list)

    def column(self, key: str, phase: int | None = None) -> list:
        return [r[key] for r in self.records if phase is None or r["phase"] == phase]

    def evaluated(self, phase: int | None = None) -> list[dict]:
        """The records that carry a validation loss."""
        return [r for r in self.records if r["val_loss"] is not None and (phase is None or r["phase"] == phase)]

    @property
    def last_val_loss(self) -> float | None:
        evaluated = self.evaluated()
        return evaluated[-1]["val_loss"] if evaluated else None

    @property
    def phases(self) -> list[int]:
        return sorted({r["phase"] for r in self.records})

    @property
    def global_steps(self) -> int:
        return self.records[-1]["global_step"] if self.records else 0

    @property
    def tokens(self) -> int:
        return self.records[-1]["tokens"] if self.records else 0


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` becomes ``"bf16"`` on CUDA and ``"fp32"`` elsewhere; ``fp32``/``bf16`` pass through."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in: bf16 autocast (Micikevicius et al. 2018's mixed
    precision with bfloat16; the weights, their gradients and AdamW's state stay float32)
    or plain float32."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate(model: nn.Module, data: TokenData, batch_size: int, seq_len: int, batches: int = 8,
             device="cpu", seed: int = 1234, precision: str = "fp32", parallel=None) -> float:
    """Mean validation cross-entropy (aux losses excluded) over fixed batches.

    The same ``seed`` gives the same batches, so losses of different models,
    or of one model before and after growth, are directly comparable.  Jump
    checks use the default float32; training logs use the training precision.
    Under data parallelism (``parallel``, every rank calls it) each rank reads its
    slice of every batch and the ranks' means are averaged: the whole batches'
    loss, for a share of the work."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros((), device=device)
    for _ in range(batches):
        inputs, targets = data.batch("val", batch_size, seq_len, device, generator)
        if parallel is not None:
            inputs, targets = parallel.my_slice(inputs, targets)
        with autocast(precision, device):
            total += model(inputs, targets).loss
    if parallel is not None:                    # equal slices: the mean of the ranks' means
        total = parallel.all_reduce_sum_(total) / parallel.world
    model.train(was_training)
    return total.item() / batches


def evaluate_config(model: nn.Module, data: TokenData, config: TrainConfig, precision: str = "fp32",
                    parallel=None) -> float:
    """``evaluate`` with a ``TrainConfig``'s batches, read in micro-batches.

    ``eval_batches * grad_accum`` micro-batches draw the same windows as
    ``eval_batches`` whole batches, so the loss does not depend on how a
    small GPU splits the batch."""
    device = pick_device(config.device) if parallel is None else parallel.device
    return evaluate(model, data, config.micro_batch_size, config.seq_len, config.eval_batches * config.grad_accum,
                    device, precision=precision, parallel=parallel)


def format_log_line(step: int, loss: float, seconds: float, aux_loss: float | None = None,
                    val_loss: float | None = None) -> str:
    """``  step   10 | loss 6.1234 | 15.2s`` (+ aux and validation loss when there are any)."""
    line = f"  step {step:4d} | loss {loss:.4f} | {seconds:.1f}s"
    if aux_loss is not None:
        line += f" | aux {aux_loss:.4f}"
    if val_loss is not None:
        line += f" | val {val_loss:.4f}"
    return line


class LogWindow:
    """What the training batches did since the last log line, summed on the device.

    Losses and per-expert token counts are added as tensors, so a training step
    never waits for the GPU; ``summary()`` reads them once, at a log step
    (nanoGPT's "CPU-GPU sync point").  ``expert_load`` is therefore always the
    training batches' load since the previous log line.
    """

    def __init__(self, device, state: dict | None = None):
        self.device = device
        state = state or {"loss_sum": 0.0, "aux_sum": 0.0, "batches": 0, "expert_counts": []}
        self.loss_sum = torch.tensor(state["loss_sum"], device=device)
        self.aux_sum = torch.tensor(state["aux_sum"], device=device)
        self.batches = state["batches"]
        self.expert_counts = [torch.tensor(counts, device=device) for counts in state["expert_counts"]]

    def add(self, out) -> None:
        """Add one forward pass's ``ModelOutput`` (a micro-batch)."""
        self.loss_sum += out.loss.detach().float()
        self.aux_sum += out.aux_loss.detach().float()
        self.batches += 1
        counts = [stats.tokens_per_expert for stats in out.routing]        # per MoE layer, (E,)
        if not self.expert_counts:
            self.expert_counts = [torch.zeros_like(layer_counts) for layer_counts in counts]
        for total, layer_counts in zip(self.expert_counts, counts):
            total += layer_counts

    def summary(self) -> dict:
        """Mean loss and aux loss per batch and each layer's share of token slots per expert."""
        batches = max(1, self.batches)
        loads = [(counts.float() / counts.sum().clamp(min=1)).tolist() for counts in self.expert_counts]
        return {"train_loss": self.loss_sum.item() / batches, "aux_loss": self.aux_sum.item() / batches,
                "expert_load": loads}

    def over_ranks(self, parallel) -> "LogWindow":
        """Data parallelism: a window holding every rank's forward passes (each rank saw a
        slice of every micro-batch): sums and counts added over the ranks, so that
        ``summary`` averages the loss over all of them.  Every rank must call it."""
        if parallel is None:
            return self
        totals = LogWindow(self.device, self.state())
        batches = torch.tensor(float(self.batches), device=self.device)
        for tensor in (totals.loss_sum, totals.aux_sum, batches, *totals.expert_counts):
            parallel.all_reduce_sum_(tensor)
        totals.batches = int(batches.item())
        return totals

    def state(self) -> dict:
        """Plain numbers, for a checkpoint."""
        return {"loss_sum": self.loss_sum.item(), "aux_sum": self.aux_sum.item(), "batches": self.batches,
                "expert_counts": [counts.tolist() for counts in self.expert_counts]}


def train_phase(model: nn.Module, data: TokenData, config: TrainConfig, phase: int = 1, *,
                history: History | None = None, use_aux_loss: bool = True, progress: bool = True,
                verbose: bool = True, resume: dict | None = None, on_checkpoint=None,
                on_log=None, parallel=None) -> History:
    """Train ``model`` for ``config.steps(phase)`` optimiser steps at peak
    learning rate ``config.lr(phase)`` and return the ``History``.

    Everything else comes from ``config`` as well: batch size (the global
    batch, split into ``grad_accum`` micro-batches), sequence length, warmup
    and cosine decay, weight decay, clipping, logging and evaluation cadence,
    device, precision and seed.  Pass the ``history`` of earlier phases to
    continue it (steps and tokens keep counting).  The validation loss is
    measured at step 0, every ``eval_every`` steps and at the last step.
    Seeded: the same seed, model and data give the same run on the CPU.

    Checkpoints: every ``config.checkpoint_every`` steps (and on Ctrl-C) the
    phase's own state -- step, optimiser, random-number states, the log
    window -- is handed to ``on_checkpoint(state)``; the caller adds the
    weights and writes it.  ``resume=state`` continues exactly where that
    state left off.

    ``on_log(record, model)``, if given, is called after every log record: a
    hook for notebooks that want to look inside the model while it trains.

    After each optimiser step every MoE layer gets the step's slot counts
    (``MoELayer.update_expert_bias``): layers with ``bias_update_rate`` > 0
    move their expert bias (auxiliary-loss-free balancing), the others ignore it.

    Host reads happen at log steps and once per optimiser step (the finite-loss
    check, so that a NaN stops the run before it reaches the weights).

    ``parallel`` (a ``distributed.DataParallel``, under ``torchrun``): ``model`` is
    sharded with FSDP2 and every rank draws the same global micro-batches and
    trains on its own slice of each; losses, expert counts and the finite-loss
    check are reduced over the ranks, so every rank logs the same numbers and an
    optimiser step sees the same mean gradient as a single process would.
    """
    from tqdm.auto import tqdm

    from .distributed import load_optimizer_state, optimizer_state, parameter_names

    steps, lr = config.steps(phase), config.lr(phase)
    device = pick_device(config.device) if parallel is None else parallel.device
    if parallel is not None:
        parallel.check_batch(config.micro_batch_size)
    precision = resolve_precision(config.precision, device)
    history = History() if history is None else history
    model.to(device).train()
    optimizer = make_optimizer(model, lr, config.weight_decay)
    param_names = parameter_names(model, optimizer)      # checkpoints key the optimiser state by name
    batch_generator = torch.Generator().manual_seed(config.seed)
    if resume is None:
        torch.manual_seed(config.seed)
        first_step, seconds_before, window = 0, 0.0, LogWindow(device)
        phase_start_step, phase_start_tokens = history.global_steps, history.tokens
    else:
        load_optimizer_state(optimizer, param_names, resume["optimizer"])
        batch_generator.set_state(resume["batch_rng"])
        torch.set_rng_state(resume["torch_rng"])
        first_step, seconds_before = resume["step"] + 1, resume["seconds"]
        # the saved window holds every rank's passes: one rank carries it on (over_ranks adds them up)
        window = LogWindow(device, resume["window"] if parallel is None or parallel.is_main else None)
        phase_start_step, phase_start_tokens = resume["phase_start_step"], resume["phase_start_tokens"]
    moe_layers = list(getattr(model, "moe_layers", []))   # the layers behind out.routing, in order
    is_moe = bool(moe_layers)
    started = time.perf_counter()
    elapsed = lambda: seconds_before + time.perf_counter() - started  # noqa: E731

    def snapshot(step: int) -> dict:
        return {"step": step, "optimizer": optimizer_state(optimizer, param_names), "batch_rng": batch_generator.get_state(),
                "torch_rng": torch.get_rng_state(), "window": window.over_ranks(parallel).state(), "seconds": elapsed(),
                "phase_start_step": phase_start_step, "phase_start_tokens": phase_start_tokens}

    def forward(inputs, targets):
        if parallel is not None:                          # this rank's rows of the global micro-batch
            inputs, targets = parallel.my_slice(inputs, targets)
        with autocast(precision, device):
            return model(inputs, targets)

    bar = tqdm(range(first_step, steps + 1), desc=f"phase {phase}", disable=not progress, leave=False)
    with _interrupt_flag(enabled=on_checkpoint is not None) as interrupted:
        for step in bar:
            if step > 0:   # step 0 only measures the starting point
                model.train()
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step - 1, lr, steps, config.warmup_steps, config.min_lr_ratio)
                optimizer.zero_grad(set_to_none=True)
                step_objective = torch.zeros((), device=device)
                step_loads = [0] * len(moe_layers)   # slots per expert, per MoE layer, this step
                for _ in range(config.grad_accum):      # micro-batches: their gradients add up
                    out = forward(*data.batch("train", config.micro_batch_size, config.seq_len, device,
                                              batch_generator))
                    objective = (out.loss + out.aux_loss if use_aux_loss else out.loss) / config.grad_accum
                    objective.backward()
                    step_objective += objective.detach()
                    window.add(out)
                    step_loads = [load + stats.tokens_per_expert for load, stats in zip(step_loads, out.routing)]
                if parallel is not None:   # every rank stops together, or none does
                    parallel.all_reduce_sum_(step_objective)
                    # an expert bias moves by the whole step's load, alike on every rank
                    step_loads = [parallel.all_reduce_sum_(load) if layer.expert_bias is not None else load
                                  for layer, load in zip(moe_layers, step_loads)]
                if not torch.isfinite(step_objective):
                    raise FloatingPointError(f"loss is {step_objective.item()} at step {step} of phase {phase}")
                if parallel is not None:
                    parallel.finish_gradients(model)
                if config.grad_clip > 0 and parallel is None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                elif config.grad_clip > 0:
                    parallel.clip_grad_norm_(model, config.grad_clip)
                optimizer.step()
                for layer, load in zip(moe_layers, step_loads):   # aux-loss-free balancing
                    layer.update_expert_bias(load)
            is_eval = step % config.eval_every == 0 or step == steps
            if step % config.log_every == 0 or step == steps or is_eval:
                if window.batches == 0:   # step 0: the untrained model on one (global) training batch
                    measuring = torch.Generator().manual_seed(config.seed)
                    with torch.no_grad():
                        for _ in range(config.grad_accum):
                            window.add(forward(*data.batch("train", config.micro_batch_size, config.seq_len,
                                                           device, measuring)))
                window = window.over_ranks(parallel)
                val_loss = (evaluate_config(model, data, config, precision, parallel) if is_eval else None)
                record = {
                    "phase": phase, "step": step, "global_step": phase_start_step + step,
                    **window.summary(),
                    "val_loss": val_loss,
                    "lr": optimizer.param_groups[0]["lr"] if step > 0 else 0.0,
                    "tokens": phase_start_tokens + step * config.batch_size * config.seq_len,
                    "seconds": elapsed(),
                }
                history.records.append(record)
                window = LogWindow(device)
                if on_log is not None:
                    on_log(record, model)
                if verbose:
                    line = format_log_line(step, record["train_loss"], record["seconds"],
                                           record["aux_loss"] if is_moe else None, val_loss)
                    (tqdm.write if progress else print)(line)
            stop = interrupted() if parallel is None else parallel.any_rank(interrupted())   # ranks stop together
            if on_checkpoint is not None and step < steps and (stop or (
                    config.checkpoint_every and step > 0 and step % config.checkpoint_every == 0)):
                on_checkpoint(snapshot(step))
            if stop:
                raise KeyboardInterrupt(f"interrupted at step {step} of phase {phase}; checkpoint written")
    bar.close()
    model.eval()
    return history


@contextmanager
def _interrupt_flag(enabled: bool):
    """While active, Ctrl-C sets a flag (checked between steps) instead of
    stopping mid-step, so the checkpoint written on the way out is consistent."""
    caught = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield lambda: bool(caught)
    finally:
        signal.signal(signal.SIGINT, previous)
