"""Plots for the notebooks: loss curves, expert utilisation, routing of real text.

Every function draws on a matplotlib ``Axes`` (a new figure when none is
given) and returns it, so notebooks can combine and restyle plots.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from .train import History


def _axes(ax=None, figsize=(7, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


# ---------------------------------------------------------------- loss curves
def plot_losses(histories, ax=None, title: str = "Training and validation loss", x: str = "global_step"):
    """Train (thin line) and validation (dots) loss against steps.

    ``histories``: one ``History`` or a dict ``{label: History}`` to compare runs.
    ``x`` is ``"global_step"`` (default) or ``"tokens"``.
    """
    ax = _axes(ax)
    if isinstance(histories, History):
        histories = {"": histories}
    for index, (label, history) in enumerate(histories.items()):
        color = f"C{index}"
        prefix = f"{label} " if label else ""
        ax.plot(history.column(x), history.column("train_loss"), color=color, alpha=0.6, lw=1.2,
                label=f"{prefix}train")
        evaluated = history.evaluated()
        ax.plot([r[x] for r in evaluated], [r["val_loss"] for r in evaluated], "o-", color=color,
                ms=4, lw=1.8, label=f"{prefix}validation")
    ax.set_xlabel("optimiser step" if x == "global_step" else "tokens seen")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_phases(history: History, jumps: dict | None = None, ax=None,
                title: str = "Loss across the three phases"):
    """Train and validation loss of a multi-phase run on one axis.

    Phase boundaries are dashed lines; ``jumps`` (``{phase: loss jump into
    that phase}``) are written at each boundary, so a learner sees that
    growing the model did not move the loss.
    """
    ax = _axes(ax, figsize=(9, 4.5))
    for phase in history.phases:
        records = [r for r in history.records if r["phase"] == phase]
        evaluated = [r for r in records if r["val_loss"] is not None]
        color = f"C{phase - 1}"
        ax.plot([r["global_step"] for r in records], [r["train_loss"] for r in records],
                color=color, alpha=0.5, lw=1.2, label=f"phase {phase} train")
        ax.plot([r["global_step"] for r in evaluated], [r["val_loss"] for r in evaluated],
                "o-", color=color, ms=4, lw=1.8, label=f"phase {phase} validation")
        if phase > 1:
            boundary = records[0]["global_step"]
            ax.axvline(boundary, color="grey", ls="--", lw=1)
            if jumps and jumps.get(phase) is not None:
                ax.annotate(f"{phase - 1}\u2192{phase} jump\n{jumps[phase]:+.1e}", xy=(boundary, 1.0),
                            xycoords=("data", "axes fraction"), xytext=(4, -28),
                            textcoords="offset points", fontsize=8, color="dimgray")
    ax.set_xlabel("optimiser step (all phases)")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=len(history.phases))
    return ax
