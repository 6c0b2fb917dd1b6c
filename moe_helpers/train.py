"""Training one phase: AdamW, warmup then cosine decay, gradient clipping,
periodic validation, and a ``History`` of what happened.

Log lines follow the original note: ``  step   10 | loss 6.1234 | 15.2s``.
For an MoE the optimised loss is ``loss + aux_loss`` (language-model loss plus
the weighted load-balancing and z-losses), and each log step also records how
many token slots every expert of every MoE layer received.
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

from .data import TokenData


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU (or exactly what is asked for)."""
    if preference != "auto":
        return torch.device(preference)
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
    ``expert_load``: per MoE layer, the share of token slots each expert got.
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


@torch.no_grad()
def evaluate(model: nn.Module, data: TokenData, batch_size: int, seq_len: int, batches: int = 8,
             device="cpu", seed: int = 1234) -> float:
    """Mean validation cross-entropy (aux losses excluded) over fixed batches.

    The same ``seed`` gives the same batches, so losses of different models,
    or of one model before and after growth, are directly comparable."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    losses = [model(*data.batch("val", batch_size, seq_len, device, generator)).loss.item()
              for _ in range(batches)]
    model.train(was_training)
    return sum(losses) / len(losses)


def expert_loads(model: nn.Module) -> list[list[float]]:
    """Share of token slots per expert, per MoE layer, from the last forward pass."""
    return [layer.last_stats.load_share.tolist()
            for layer in getattr(model, "moe_layers", []) if layer.last_stats is not None]


def format_log_line(step: int, loss: float, seconds: float, aux_loss: float | None = None,
                    val_loss: float | None = None) -> str:
    """``  step   10 | loss 6.1234 | 15.2s`` (+ aux and validation loss when there are any)."""
    line = f"  step {step:4d} | loss {loss:.4f} | {seconds:.1f}s"
    if aux_loss is not None:
        line += f" | aux {aux_loss:.4f}"
    if val_loss is not None:
        line += f" | val {val_loss:.4f}"
    return line


def train_phase(model: nn.Module, data: TokenData, steps: int, lr: float, *, batch_size: int = 16,
                seq_len: int = 128, warmup_steps: int = 10, min_lr_ratio: float = 0.1,
                weight_decay: float = 0.1, grad_clip: float = 1.0, log_every: int = 10,
                eval_every: int = 50, eval_batches: int = 8, device="auto", seed: int = 0,
                phase: int = 1, history: History | None = None, use_aux_loss: bool = True,
                progress: bool = True, verbose: bool = True, resume: dict | None = None,
                checkpoint_every: int = 0, on_checkpoint=None, on_log=None) -> History:
    """Train ``model`` for ``steps`` optimiser steps and return the ``History``.

    Pass the ``history`` of earlier phases to continue it (steps and tokens
    keep counting).  The validation loss is measured at step 0, every
    ``eval_every`` steps and at the last step.  Seeded: the same seed, model
    and data give the same run on the CPU.

    Checkpoints: every ``checkpoint_every`` steps (and on Ctrl-C) the phase's
    own state — step, optimiser, random-number states, the running loss window
    — is handed to ``on_checkpoint(state)``; the caller adds the weights and
    writes it.  ``resume=state`` continues exactly where that state left off.

    ``on_log(record, model)``, if given, is called after every log record: a
    hook for notebooks that want to look inside the model while it trains.
    """
    from tqdm.auto import tqdm

    if steps < 0 or lr < 0:
        raise ValueError(f"steps and lr must be >= 0, got steps={steps}, lr={lr}")
    device = pick_device(device) if isinstance(device, str) else device
    history = History() if history is None else history
    model.to(device).train()
    optimizer = make_optimizer(model, lr, weight_decay)
    batch_generator = torch.Generator().manual_seed(seed)
    if resume is None:
        torch.manual_seed(seed)
        first_step, window_losses, window_aux, seconds_before = 0, [], [], 0.0
        phase_start_step, phase_start_tokens = history.global_steps, history.tokens
    else:
        optimizer.load_state_dict(resume["optimizer"])
        batch_generator.set_state(resume["batch_rng"])
        torch.set_rng_state(resume["torch_rng"])
        first_step, seconds_before = resume["step"] + 1, resume["seconds"]
        window_losses, window_aux = list(resume["window_losses"]), list(resume["window_aux"])
        phase_start_step, phase_start_tokens = resume["phase_start_step"], resume["phase_start_tokens"]
    is_moe = bool(getattr(model, "moe_layers", []))
    started = time.perf_counter()
    elapsed = lambda: seconds_before + time.perf_counter() - started  # noqa: E731

    def snapshot(step: int) -> dict:
        return {"step": step, "optimizer": optimizer.state_dict(), "batch_rng": batch_generator.get_state(),
                "torch_rng": torch.get_rng_state(), "window_losses": list(window_losses),
                "window_aux": list(window_aux), "seconds": elapsed(),
                "phase_start_step": phase_start_step, "phase_start_tokens": phase_start_tokens}

    bar = tqdm(range(first_step, steps + 1), desc=f"phase {phase}", disable=not progress, leave=False)
    with _interrupt_flag(enabled=on_checkpoint is not None) as interrupted:
        for step in bar:
            if step > 0:   # step 0 only measures the starting point
                model.train()
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step - 1, lr, steps, warmup_steps, min_lr_ratio)
                inputs, targets = data.batch("train", batch_size, seq_len, device, batch_generator)
                out = model(inputs, targets)
                objective = out.loss + out.aux_loss if use_aux_loss else out.loss
                if not torch.isfinite(objective):
                    raise FloatingPointError(f"loss is {objective.item()} at step {step} of phase {phase}")
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                if grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                window_losses.append(out.loss.item())
                window_aux.append(out.aux_loss.item())
            is_eval = step % eval_every == 0 or step == steps
            if step % log_every == 0 or step == steps or is_eval:
                if not window_losses:   # step 0: the loss of the untrained model on one batch
                    with torch.no_grad():
                        out = model(*data.batch("train", batch_size, seq_len, device,
                                                torch.Generator().manual_seed(seed)))
                    window_losses, window_aux = [out.loss.item()], [out.aux_loss.item()]
                val_loss = evaluate(model, data, batch_size, seq_len, eval_batches, device) if is_eval else None
                record = {
                    "phase": phase, "step": step, "global_step": phase_start_step + step,
                    "train_loss": sum(window_losses) / len(window_losses),
                    "val_loss": val_loss,
                    "aux_loss": sum(window_aux) / len(window_aux),
                    "lr": optimizer.param_groups[0]["lr"] if step > 0 else 0.0,
                    "tokens": phase_start_tokens + step * batch_size * seq_len,
                    "seconds": elapsed(),
                    "expert_load": expert_loads(model),
                }
                history.records.append(record)
                window_losses, window_aux = [], []
                if on_log is not None:
                    on_log(record, model)
                if verbose:
                    line = format_log_line(step, record["train_loss"], record["seconds"],
                                           record["aux_loss"] if is_moe else None, val_loss)
                    (tqdm.write if progress else print)(line)
            if on_checkpoint is not None and step < steps and (
                    interrupted() or (checkpoint_every and step > 0 and step % checkpoint_every == 0)):
                on_checkpoint(snapshot(step))
            if interrupted():
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
