"""Plots for the notebooks: loss curves, expert utilisation, routing of real text.

Every function draws on a matplotlib ``Axes`` (a new figure when none is
given) and returns it, so notebooks can combine and restyle plots.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import FancyBboxPatch, Patch

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


# ---------------------------------------------------------- expert utilisation
def _host_array(values) -> "np.ndarray":
    """A list, array or tensor (on any device) as a float64 NumPy array on the host.

    The copy to the CPU comes first: float64 exists only on the host (MPS has none)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().float().numpy()
    return np.asarray(values, dtype=np.float64)


def _load_matrix(loads) -> "np.ndarray":
    """Per-layer expert shares (a list of lists or tensors) as a (layers, experts) array."""
    rows = [_host_array(layer_load) for layer_load in loads]
    if not rows:
        raise ValueError("loads is empty: pass one list of expert shares per MoE layer")
    if len({row.shape for row in rows}) != 1 or rows[0].ndim != 1:
        raise ValueError(f"every layer needs the same number of experts, got shapes {[r.shape for r in rows]}")
    return np.stack(rows)                                                    # (L, E)


def _uniform_centred_norm(num_experts: int, largest_share: float) -> TwoSlopeNorm:
    """A colour scale that is white at the uniform share 1/E, blue below and red above."""
    uniform = 1.0 / num_experts
    return TwoSlopeNorm(vmin=0.0, vcenter=uniform, vmax=max(largest_share, 2 * uniform, uniform + 1e-6))


def _readable_text_color(background) -> str:
    """Black on light cells, white on dark ones (relative luminance, ITU-R BT.709)."""
    red, green, blue = background[:3]
    return "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white"


def plot_expert_utilisation(loads, ax=None, title: str = "Expert utilisation: share of token slots"):
    """Heatmap of MoE layers x experts, each cell the share of token slots the expert received.

    ``loads``: one list of per-expert shares per layer, e.g. ``history.records[-1]["expert_load"]``
    or ``[stats.load_share for stats in model(idx).routing]``.  The colour
    scale is centred on the uniform share 1/E (white): red cells are overloaded
    experts, blue cells starved ones.  Each cell is annotated with its percentage.
    """
    shares = _load_matrix(loads)                                             # (L, E)
    num_layers, num_experts = shares.shape
    ax = _axes(ax, figsize=(max(4.0, 0.75 * num_experts + 2.0), max(2.0, 0.6 * num_layers + 1.4)))
    norm = _uniform_centred_norm(num_experts, float(shares.max()))
    image = ax.imshow(shares, cmap="RdBu_r", norm=norm, aspect="auto")
    for layer in range(num_layers):
        for expert in range(num_experts):
            share = shares[layer, expert]
            ax.text(expert, layer, f"{100 * share:.0f}%", ha="center", va="center", fontsize=8,
                    color=_readable_text_color(image.cmap(norm(share))))
    colorbar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    colorbar.ax.axhline(1 / num_experts, color="black", lw=1.5)
    colorbar.set_label(f"share of token slots (uniform 1/E = {100 / num_experts:.1f}%)")
    ax.set_xticks(range(num_experts))
    ax.set_yticks(range(num_layers), [f"layer {layer}" for layer in range(num_layers)])
    ax.set_xlabel("expert (index)")
    ax.set_ylabel("MoE layer")
    ax.set_title(title)
    return ax


def _phase_starts(records: list[dict]) -> list[int]:
    """Global steps at which a new phase begins (after the first)."""
    return [current["global_step"] for previous, current in zip(records, records[1:])
            if current["phase"] != previous["phase"]]


def plot_utilisation_over_training(history: History, layer: int = 0, ax=None, title: str | None = None):
    """Each expert's share of token slots in MoE layer ``layer`` at every log step.

    One line per expert and a dashed line at the uniform share 1/E.  Log steps
    of a dense phase (no MoE layers) are skipped; a dotted vertical line marks
    where each later phase begins, so a history that spans phases reads left
    to right.  The number of experts comes from the records themselves.
    """
    records = [r for r in history.records if len(r.get("expert_load") or []) > layer]
    if not records:
        raise ValueError(f"no log step in this history has routing statistics for MoE layer {layer}")
    ax = _axes(ax)
    steps = np.array([r["global_step"] for r in records])                    # (S,)
    num_experts = max(len(r["expert_load"][layer]) for r in records)
    shares = np.full((len(records), num_experts), np.nan)                    # (S, E)
    for row, record in enumerate(records):
        load = record["expert_load"][layer]
        shares[row, :len(load)] = load
    colors = expert_colors(num_experts)
    for expert in range(num_experts):
        ax.plot(steps, 100 * shares[:, expert], color=colors[expert], lw=1.6, label=f"expert {expert}")
    uniform = np.array([100 / len(r["expert_load"][layer]) for r in records])
    ax.step(steps, uniform, where="post", color="black", ls="--", lw=1.2, label="uniform 1/E")
    for start in _phase_starts(history.records):
        ax.axvline(start, color="grey", ls=":", lw=1.2)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("share of token slots (%)")
    ax.set_ylim(0, max(100 * np.nanmax(shares) * 1.08, 2 * uniform.max()))
    ax.set_title(title or f"Expert utilisation during training, MoE layer {layer}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if num_experts > 6 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def busiest_expert_share(record: dict) -> float:
    """The busiest expert's share of token slots at one log step, averaged over the MoE layers."""
    loads = record.get("expert_load") or []
    if not loads:
        raise ValueError("this log record has no routing statistics (a dense model?)")
    return float(np.mean([max(load) for load in loads]))


def plot_busiest_share(histories: dict, ax=None, title: str = "How busy is the busiest expert?"):
    """One line per run: the busiest expert's share of token slots (mean over MoE layers) at
    every log step, with the uniform share 1/E dashed.  ``histories``: label -> ``History``."""
    ax = _axes(ax, figsize=(9, 4))
    num_experts = None
    for label, history in histories.items():
        records = [r for r in history.records if r.get("expert_load")]
        ax.plot([r["global_step"] for r in records], [100 * busiest_expert_share(r) for r in records],
                lw=1.8, label=label)
        num_experts = len(records[0]["expert_load"][0])
    ax.axhline(100 / num_experts, color="black", ls="--", lw=1.2, label=f"uniform 1/E = 1/{num_experts}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("busiest expert's share (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return ax


# ------------------------------------------------------- routing of real text
def expert_colors(num_experts: int) -> list:
    """One distinct colour per expert (tab10/tab20, a continuous map beyond 20)."""
    if num_experts <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(num_experts)]
    if num_experts <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(num_experts)]
    return [plt.get_cmap("turbo")(i / (num_experts - 1)) for i in range(num_experts)]


def _token_label(piece: str) -> str:
    """A token as it is drawn: the leading space dropped (the gap shows it), newlines as ⏎."""
    return piece.lstrip(" ").replace("\n", "⏎") or "␣"


def _layout_tokens(pieces: list[str], chars_per_line: float) -> list[tuple[float, int, float]]:
    """(x, row, width) of each token box in character units, wrapping at ``chars_per_line``.

    A token that starts a new word (leading space) gets a wider gap than a
    piece that continues a word, so "L" "ily" visibly belong together.
    """
    boxes, x, row = [], 0.0, 0
    for piece in pieces:
        width = len(_token_label(piece)) + 0.6
        gap = 0.9 if piece.startswith(" ") else 0.15
        if x > 0 and x + gap + width > chars_per_line:
            x, row = 0.0, row + 1
        elif x > 0:
            x += gap
        boxes.append((x, row, width))
        x += width
    return boxes


@torch.no_grad()
def route_text(tokenizer, model, text: str, layer: int = 0):
    """Run ``model`` (eval mode) on ``text`` and return its token pieces and the
    top-1 expert of each token in MoE layer ``layer`` (a LongTensor (T,))."""
    moe_layers = model.moe_layers
    if not 0 <= layer < len(moe_layers):
        raise ValueError(f"layer must be in 0..{len(moe_layers) - 1} (the model's MoE layers), got {layer}")
    ids = tokenizer.encode(text)[: model.cfg.max_seq_len]
    if not ids:
        raise ValueError("text is empty: nothing to route")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    routing = model(torch.tensor([ids], device=device)).routing[layer]      # (1, T) -> this layer's stats
    model.train(was_training)
    pieces = [tokenizer.decode([token_id]) for token_id in ids]
    return pieces, routing.top1_expert.cpu()                                 # list[str], (T,)


def show_token_routing(tokenizer, model, text: str, layer: int = 0, ax=None, fontsize: int = 11,
                       title: str | None = None):
    """A real sentence, each token drawn as a box coloured by its top-1 expert in MoE layer ``layer``.

    The model runs in eval mode on ``text``; the experts are read from
    the routing statistics the model's forward pass returns (``route_text``).  The legend, below the
    text, lists every expert with the number of tokens it took.  Returns the Axes
    (one patch per token).
    """
    pieces, top1 = route_text(tokenizer, model, text, layer)
    num_experts = model.moe_layers[layer].num_experts
    char_width_inches = 0.6 * fontsize / 72                                   # monospace: 0.6 em
    row_height_inches = 2.0 * fontsize / 72
    axes_width_inches = 9.6 if ax is None else ax.get_window_extent().width / ax.figure.dpi
    chars_per_line = axes_width_inches / char_width_inches
    boxes = _layout_tokens(pieces, chars_per_line)
    rows = boxes[-1][1] + 1
    if ax is None:   # a figure just tall enough: title, the rows of text, the legend
        text_height = row_height_inches * (rows + 0.1)
        legend_height = 0.35 + 0.2 * -(-num_experts // 8)
        figure_height = text_height + legend_height + 0.45
        ax = plt.figure(figsize=(10.0, figure_height)).add_axes(
            (0.02, legend_height / figure_height, 0.96, text_height / figure_height))
    colors = expert_colors(num_experts)
    for piece, expert, (x, row, width) in zip(pieces, top1.tolist(), boxes):
        ax.add_patch(FancyBboxPatch((x, row - 0.36), width, 0.72, boxstyle="round,pad=0.02,rounding_size=0.15",
                                    facecolor=colors[expert], edgecolor="none", alpha=0.85))
        ax.text(x + width / 2, row, _token_label(piece), ha="center", va="center", family="monospace",
                fontsize=fontsize, color="black")
    counts = torch.bincount(top1, minlength=num_experts).tolist()
    ax.legend(handles=[Patch(facecolor=colors[e], alpha=0.85, label=f"expert {e}: {counts[e]}")
                       for e in range(num_experts)],
              fontsize=8, title="top-1 expert: tokens of this text", title_fontsize=8,
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(num_experts, 8), frameon=False)
    ax.set_xlim(-0.3, chars_per_line)
    ax.set_ylim(rows - 0.45, -0.55)
    ax.set_aspect(row_height_inches / char_width_inches, adjustable="box")    # 1 row : 1 character, in inches
    ax.set_axis_off()
    ax.set_title(title or f"Top-1 expert of each token, MoE layer {layer} ({len(pieces)} tokens)")
    return ax


# ---------------------------------------------------------------------- growth
def plot_weight_growth(matrices: dict, axes=None, title: str = "Weight matrices before and after growth"):
    """Weight matrices side by side as images, on one colour scale centred at zero.

    ``matrices``: ``{panel title: (out, in) tensor or array}``, e.g. ``W`` and its
    widened ``W'``.  Panels are drawn at the same scale per entry, so a matrix
    twice as wide looks twice as wide.
    """
    arrays = {name: _host_array(matrix) for name, matrix in matrices.items()}
    if axes is None:
        widths = [array.shape[1] for array in arrays.values()]
        _, axes = plt.subplots(1, len(arrays), figsize=(3.0 + 0.5 * sum(widths), 3.6), layout="constrained",
                               gridspec_kw={"width_ratios": widths}, squeeze=False)
        axes = axes[0]
    limit = max(np.abs(array).max() for array in arrays.values()) or 1.0
    for index, (ax, (name, array)) in enumerate(zip(axes, arrays.items())):
        image = ax.imshow(array, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"{name}\n{array.shape[0]} x {array.shape[1]}", fontsize=10)
        ax.set_xlabel("input (column)")
        if index == 0:
            ax.set_ylabel("output (row)")
        ax.set_xticks(range(array.shape[1]))
        ax.set_yticks(range(array.shape[0]))
        ax.tick_params(labelsize=7)
    axes[0].figure.colorbar(image, ax=list(axes), label="weight value (unitless)", shrink=0.8)
    axes[0].figure.suptitle(title)
    return axes


def plot_expert_similarity(similarity, ax=None, title: str = "Pairwise similarity of the experts"):
    """Heatmap of an (E, E) matrix of cosine similarities between experts, values written in the cells."""
    ax = _axes(ax, figsize=(4.6, 3.8))
    matrix = _host_array(similarity)
    image = ax.imshow(matrix, cmap="viridis")              # colour scale fitted to the values
    middle = (matrix.min() + matrix.max()) / 2
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            ax.text(column, row, f"{matrix[row, column]:.3f}", ha="center", va="center", fontsize=8,
                    color="black" if matrix[row, column] > middle else "white")
    ticks = range(matrix.shape[0])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("expert")
    ax.set_ylabel("expert")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label="cosine similarity")
    return ax


def plot_drift(curves: dict, ax=None, title: str = "Copies drifting apart", ylabel: str = "difference",
               xlabel: str = "optimiser step", log: bool = False):
    """Quantities that measure how far copies have separated, against training steps.

    ``curves``: ``{label: (steps, values)}``.  ``log=True`` puts the y axis on a
    log scale (zeros cannot be drawn there, so keep it linear when a curve stays at 0).
    """
    ax = _axes(ax)
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, "o-", ms=3, lw=1.6, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_loss_vs_flops(curves: dict, ax=None, title: str = "Validation loss against training compute",
                       target_loss: float | None = None, events: dict | None = None):
    """Validation loss against cumulative training FLOPs.

    ``curves``: ``{label: (flops, losses)}``; ``target_loss`` draws a dashed
    horizontal line (e.g. the loss to reach); ``events``: ``{label: flops}``
    draws dotted vertical lines (e.g. where the small model was grown).
    """
    ax = _axes(ax, figsize=(8, 4.5))
    for index, (label, (flops, losses)) in enumerate(curves.items()):
        ax.plot(np.asarray(flops, dtype=float), losses, "o-", ms=3.5, lw=1.8, color=f"C{index}", label=label)
    if target_loss is not None:
        ax.axhline(target_loss, color="grey", ls="--", lw=1, label=f"target loss {target_loss:.3f}")
    for index, (label, flops) in enumerate((events or {}).items()):
        ax.axvline(flops, color="dimgray", ls=":", lw=1.2)
        ax.annotate(label, xy=(flops, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12 - 12 * index),
                    textcoords="offset points", fontsize=8, color="dimgray")
    ax.set_xlabel("training compute (FLOPs, forward + backward)")
    ax.set_ylabel("validation cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return ax


def plot_loss_bands(bands: dict, ax=None, xlabel: str = "optimiser step", title: str = "Validation loss over seeds",
                    log_x: bool = False):
    """Validation loss of several runs per model: the mean over seeds as a line with dots,
    the min-max range over seeds as a shaded band.

    ``bands``: ``{label: (x, mean, low, high)}``, four sequences of the same length
    (``x``: steps, tokens or training FLOPs).  ``log_x`` puts ``x`` on a log scale.
    """
    ax = _axes(ax, figsize=(8, 4.5))
    for index, (label, (x, mean, low, high)) in enumerate(bands.items()):
        x = np.asarray(x, dtype=float)
        ax.plot(x, mean, "o-", ms=3.5, lw=1.8, color=f"C{index}", label=label)
        ax.fill_between(x, low, high, color=f"C{index}", alpha=0.2, lw=0)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return ax
