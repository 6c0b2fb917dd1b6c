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
