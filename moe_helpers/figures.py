"""Diagrams of the course's mechanisms, drawn by code: boxes, arrows and text.

Each public function returns a new ``matplotlib.figure.Figure`` (built without
pyplot, so nothing global changes).  A notebook shows one by making it the last
expression of a cell, or with ``IPython.display.display(figure)``; it renders
the same offline, in JupyterLab, in Colab and on GitHub, because it is an
ordinary PNG cell output.

    decoder_block()                  the pre-norm block: attention and SwiGLU FFN on a residual stream
    grouped_query_attention()        query heads sharing key/value heads (MHA, GQA, MQA)
    routing_and_dispatch()           router -> softmax -> top-k -> experts -> weighted sum
    capacity_and_dropping()          fixed-capacity expert buffers, dropped tokens, dropless MoE
    shared_and_routed_experts()      DeepSeekMoE: a shared expert plus top-k routed experts
    upcycling()                      one dense FFN copied into E experts and a new router
    width_growth(), depth_growth()   growing a model without changing what it computes
    expert_parallel_all_to_all()     experts spread over ranks: dispatch, compute, combine

One colour scheme runs through all of them: one colour per expert (the
``tab10`` colours that ``plots.expert_colors`` uses, with grey and olive left
out so that no expert looks like a norm or like attention), amber for
attention, blue-grey for a dense FFN, dark slate for the router, light grey
for norms and the residual stream.  ``ALL_FIGURES`` names every diagram and
``save_all`` writes them all as PNG files.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as DrawnPath

# ------------------------------------------------------------------ the look
TITLE_SIZE = 13
FONT_SIZE = 10
SMALL_SIZE = 9            # the smallest text any diagram draws
INK = "#222222"
MUTED = "#555555"         # notes, citations, arrows that carry no expert
RESIDUAL = "#8a8a8a"      # the residual stream


@dataclass(frozen=True)
class _Style:
    """Fill, edge and text colour of a box."""
    fill: object
    edge: object
    text: object = INK


NORM = _Style("#ececec", "#8c8c8c")
ATTENTION = _Style("#fdf0c4", "#b8860b")
KEY_VALUE = _Style("#f4cf86", "#946300")
DENSE_FFN = _Style("#dce5ef", "#4f6d8a")
ROUTER = _Style("#34495e", "#1c2833", text="white")
TOKEN = _Style("white", "#555555")
ZERO = _Style("#f7f7f7", "#777777")
PANEL = _Style("#f6f6f6", "#d3d3d3")
HIGHLIGHT_PANEL = _Style("#fffaf0", "#c9a227")

# tab10 without its grey (7) and olive (8): expert i has the colour plots.expert_colors gives it, for i < 7
_EXPERT_PALETTE = tuple(colormaps["tab10"](index)[:3] for index in (0, 1, 2, 3, 4, 5, 6, 9))


def expert_colour(expert: int, num_experts: int) -> tuple:
    """The colour of ``expert`` out of ``num_experts``, the same in every diagram."""
    if num_experts <= len(_EXPERT_PALETTE):
        return _EXPERT_PALETTE[expert]
    return colormaps["turbo"](0.05 + 0.9 * expert / (num_experts - 1))[:3]


def _tint(colour, whiteness: float) -> tuple:
    """``colour`` mixed with white: 0 keeps it, 1 is white."""
    return tuple((1 - whiteness) * channel + whiteness for channel in to_rgb(colour))


def _expert_style(expert: int, num_experts: int, active: bool = True) -> _Style:
    """A box of expert ``expert``: its colour, washed out when the expert is not chosen."""
    colour = expert_colour(expert, num_experts)
    if active:
        return _Style(_tint(colour, 0.55), colour)
    return _Style(_tint(colour, 0.88), _tint(colour, 0.55), text=MUTED)


# ------------------------------------------------------------ argument checks
def _check_int(name: str, value, low: int, high: int, hint: str = "") -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an integer in ``low..high``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not low <= value <= high:
        where = f" ({hint})" if hint else ""
        raise ValueError(f"{name} must be an integer in {low}..{high}{where}, got {value!r}")


# ----------------------------------------------------------- drawing helpers
class Diagram(Figure):
    """A ``Figure`` that also shows itself as a PNG in IPython, even when no
    matplotlib backend has registered a display hook (pyplot never imported)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100, facecolor="white")
        return buffer.getvalue()


@dataclass(frozen=True)
class _Box:
    """Where a drawn box is: its centre and size, in inches from the canvas's lower-left corner."""
    x: float
    y: float
    width: float
    height: float

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.width / 2, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.width / 2, self.y)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.height / 2)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.height / 2)


def _canvas(width: float, height: float, title: str, source: str = ""):
    """A blank ``width`` x ``height`` inch diagram with its title (top left) and
    the papers it draws from (top right).  Returns the figure and its one Axes,
    whose data coordinates are inches from the lower-left corner."""
    figure = Diagram(figsize=(width, height), facecolor="white")
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    figure.suptitle(title, x=0.2 / width, y=1 - 0.12 / height, ha="left", va="top",
                    fontsize=TITLE_SIZE, fontweight="bold", color=INK)
    if source:
        figure.text(1 - 0.2 / width, 1 - 0.16 / height, source, ha="right", va="top",
                    fontsize=SMALL_SIZE, style="italic", color=MUTED)
    return figure, ax


def _add(ax, patch) -> None:
    """Put ``patch`` on the canvas.  ``add_artist``, not ``add_patch``: the limits are
    fixed, and working out each patch's extent for autoscaling was half the drawing time."""
    ax.add_artist(patch)


def _text(ax, x: float, y: float, text: str, size: float = FONT_SIZE, colour=INK, ha: str = "center",
          va: str = "center", **kwargs):
    return ax.text(x, y, text, fontsize=size, color=colour, ha=ha, va=va, zorder=4, **kwargs)


def _box(ax, x: float, y: float, width: float, height: float, label: str = "", style: _Style = NORM,
         size: float = FONT_SIZE, bold: bool = False, dashed: bool = False, hatch: str | None = None,
         line_width: float = 1.3, zorder: float = 2, label_offset: float = 0.0) -> _Box:
    """A rounded box centred on (x, y) with ``label`` in its middle (moved right by ``label_offset``).

    The box and its label share a gid, so a test can check that every label
    fits inside its box."""
    rounding = min(0.06, width / 4, height / 4)
    patch = FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                           boxstyle=f"round,pad=0,rounding_size={rounding}", facecolor=style.fill,
                           edgecolor=style.edge, linewidth=line_width, linestyle="--" if dashed else "-",
                           hatch=hatch, zorder=zorder)
    gid = f"box{len(ax.patches)}"
    patch.set_gid(gid)
    _add(ax, patch)
    if label:
        _text(ax, x + label_offset, y, label, size=size, colour=style.text, fontweight="bold" if bold else "normal",
              gid=gid, linespacing=1.15)
    return _Box(x, y, width, height)


def _panel(ax, left: float, bottom: float, width: float, height: float, heading: str = "",
           style: _Style = PANEL, size: float = FONT_SIZE) -> None:
    """A light background grouping several boxes, with ``heading`` at its top left."""
    _add(ax, FancyBboxPatch((left, bottom), width, height, boxstyle="round,pad=0,rounding_size=0.1",
                                facecolor=style.fill, edgecolor=style.edge, linewidth=1.0, zorder=0))
    if heading:
        _text(ax, left + 0.12, bottom + height - 0.1, heading, size=size, ha="left", va="top",
              fontweight="bold", colour=INK)


def _arrow(ax, *points, colour=MUTED, width: float = 1.4, head: bool = True, dashed: bool = False,
           zorder: float = 1) -> None:
    """An arrow along the straight segments joining ``points``, its head at the last one."""
    path = DrawnPath(points)
    _add(ax, FancyArrowPatch(path=path, arrowstyle="-|>" if head else "-", mutation_scale=11,
                                 color=colour, linewidth=width, linestyle="--" if dashed else "-",
                                 shrinkA=0, shrinkB=0, joinstyle="round", capstyle="round", zorder=zorder))


def _line(ax, *points, colour=MUTED, width: float = 1.4, dashed: bool = False, zorder: float = 1) -> None:
    _arrow(ax, *points, colour=colour, width=width, head=False, dashed=dashed, zorder=zorder)


def _node(ax, x: float, y: float, symbol: str = "+", radius: float = 0.13) -> _Box:
    """A small circle holding ``+`` (a sum), ``x`` (a matrix product) or ``.`` (an element-wise
    product, the ⊙ of the formulas), drawn with lines rather than text."""
    _add(ax, Circle((x, y), radius, facecolor="white", edgecolor=INK, linewidth=1.3, zorder=3))
    arm = radius * 0.55
    if symbol == ".":
        _add(ax, Circle((x, y), radius * 0.28, facecolor=INK, edgecolor="none", zorder=4))
        strokes = []
    elif symbol == "+":
        strokes = [((x - arm, y), (x + arm, y)), ((x, y - arm), (x, y + arm))]
    else:
        arm *= 0.8
        strokes = [((x - arm, y - arm), (x + arm, y + arm)), ((x - arm, y + arm), (x + arm, y - arm))]
    for start, end in strokes:
        ax.plot(*zip(start, end), color=INK, linewidth=1.3, solid_capstyle="round", zorder=4)
    return _Box(x, y, 2 * radius, 2 * radius)


def _legend_swatch(ax, x: float, y: float, style: _Style, text: str, dashed: bool = False,
                   hatch: str | None = None) -> None:
    """A small box and, to its right, what it means."""
    _box(ax, x + 0.15, y, 0.3, 0.22, style=style, dashed=dashed, hatch=hatch, line_width=1.1)
    _text(ax, x + 0.38, y, text, size=SMALL_SIZE, ha="left", colour=MUTED)


# ========================================================== 1. decoder block
def decoder_block() -> Figure:
    """The pre-norm decoder block of Llama and Mixtral (Jiang et al. 2024):

        h = x + Attention(RMSNorm(x))        attention: RoPE on q and k, causal mask
        y = h + FFN(RMSNorm(h))              FFN: SwiGLU, w2(SiLU(w1 x) * w3 x)

    The residual stream is the vertical line: each branch reads a normalised
    copy of it and adds its result back.  Panels on the right open the two
    branches; in an MoE block the FFN is replaced by the router and experts."""
    figure, ax = _canvas(10.5, 5.6, "A pre-norm decoder block",
                         "Llama / Mixtral layout (Jiang et al. 2024)")
    stream_x, branch_x = 0.95, 2.55
    source = _box(ax, stream_x, 0.5, 1.1, 0.42, "input x", TOKEN)
    output = _box(ax, stream_x, 4.72, 1.1, 0.42, "output", TOKEN)
    attention_sum, ffn_sum = _node(ax, stream_x, 2.3), _node(ax, stream_x, 4.05)
    _line(ax, source.top, (stream_x, attention_sum.y - 0.13), colour=RESIDUAL, width=3)
    _line(ax, (stream_x, attention_sum.y + 0.13), (stream_x, ffn_sum.y - 0.13), colour=RESIDUAL, width=3)
    _arrow(ax, (stream_x, ffn_sum.y + 0.13), output.bottom, colour=RESIDUAL, width=3)
    _text(ax, 0.22, 2.6, "residual stream", colour=MUTED, rotation=90)
    branches = ((1.0, "Attention", "RoPE on q, k · causal", ATTENTION),
                (2.75, "FFN: SwiGLU", "(an MoE layer in MoE blocks)", DENSE_FFN))
    for tap, name, detail, style in branches:
        norm = _box(ax, branch_x, tap + 0.3, 1.35, 0.34, "RMSNorm", NORM)
        block = _box(ax, branch_x, tap + 0.86, 2.0, 0.56, f"{name}\n{detail}", style, size=SMALL_SIZE)
        _arrow(ax, (stream_x, tap), (branch_x, tap), norm.bottom)
        _arrow(ax, norm.top, block.bottom)
        _arrow(ax, block.top, (branch_x, tap + 1.3), (stream_x + 0.13, tap + 1.3))
    _text(ax, stream_x + 0.25, attention_sum.y + 0.2, "h = x + Attention(RMSNorm(x))", size=SMALL_SIZE,
          colour=MUTED, ha="left")
    _text(ax, stream_x + 0.25, ffn_sum.y + 0.2, "y = h + FFN(RMSNorm(h))", size=SMALL_SIZE, colour=MUTED, ha="left")
    _attention_detail(ax, left=4.3, bottom=0.25, width=6.0, height=1.95)
    _swiglu_detail(ax, left=4.3, bottom=2.6, width=6.0, height=1.75)
    _line(ax, (branch_x + 1.0, 1.86), (4.3, 1.4), colour=ATTENTION.edge, dashed=True, width=1.0)
    _line(ax, (branch_x + 1.0, 3.61), (4.3, 3.4), colour=DENSE_FFN.edge, dashed=True, width=1.0)
    return figure


def _attention_detail(ax, left: float, bottom: float, width: float, height: float) -> None:
    """Inside attention: q, k, v projections, RoPE on q and k, causal softmax, the output projection wo."""
    _panel(ax, left, bottom, width, height, "Attention: q and k rotated by RoPE, causal softmax")
    rows = {"q": bottom + 1.3, "k": bottom + 0.85, "v": bottom + 0.4}
    entry = _box(ax, left + 0.45, rows["k"], 0.55, 0.36, "in", TOKEN)
    for name, y in rows.items():
        projection = _box(ax, left + 1.4, y, 0.65, 0.34, f"w{name}", ATTENTION)
        _arrow(ax, entry.right, (left + 0.85, entry.y), (left + 0.85, y), projection.left)
        if name != "v":
            rope = _box(ax, left + 2.45, y, 0.8, 0.34, "RoPE", ATTENTION)
            _arrow(ax, projection.right, rope.left)
    scores = _box(ax, left + 3.95, bottom + 1.08, 1.55, 0.62, "softmax(q kᵀ/√d)\n+ causal mask", ATTENTION,
                  size=SMALL_SIZE)
    _arrow(ax, (left + 2.85, rows["q"]), (scores.left[0], rows["q"]))
    _arrow(ax, (left + 2.85, rows["k"]), (scores.left[0], rows["k"]))
    mix = _node(ax, left + 4.95, bottom + 0.62, "x")
    _arrow(ax, scores.right, (mix.x, scores.y), (mix.x, mix.y + 0.13))
    _arrow(ax, (left + 1.725, rows["v"]), (mix.x, rows["v"]), (mix.x, mix.y - 0.13))
    _text(ax, left + 3.95, rows["v"] + 0.14, "v (no RoPE)", size=SMALL_SIZE, colour=MUTED)
    out = _box(ax, left + 5.4, bottom + 1.3, 0.6, 0.34, "wo", ATTENTION)
    _arrow(ax, (mix.x + 0.13, mix.y), (out.x, mix.y), out.bottom)
    _arrow(ax, out.right, (left + width - 0.08, out.y))


def _swiglu_detail(ax, left: float, bottom: float, width: float, height: float) -> None:
    """Inside the SwiGLU FFN: gate w1 through SiLU, times up-projection w3, then down-projection w2."""
    _panel(ax, left, bottom, width, height, "FFN (SwiGLU): w2( SiLU(w1 x) ⊙ w3 x )")
    gate_y, up_y = bottom + 1.05, bottom + 0.4
    entry = _box(ax, left + 0.45, (gate_y + up_y) / 2, 0.55, 0.36, "in", TOKEN)
    gate = _box(ax, left + 1.65, gate_y, 1.1, 0.44, "w1 (gate)\nd → d_ff", DENSE_FFN, size=SMALL_SIZE)
    up = _box(ax, left + 1.65, up_y, 1.1, 0.44, "w3 (up)\nd → d_ff", DENSE_FFN, size=SMALL_SIZE)
    silu = _box(ax, left + 3.0, gate_y, 0.75, 0.36, "SiLU", NORM)
    for projection in (gate, up):
        _arrow(ax, entry.right, (left + 0.9, entry.y), (left + 0.9, projection.y), projection.left)
    _arrow(ax, gate.right, silu.left)
    product = _node(ax, left + 3.95, entry.y, ".")
    _arrow(ax, silu.right, (product.x, gate_y), (product.x, product.y + 0.13))
    _arrow(ax, up.right, (product.x, up_y), (product.x, product.y - 0.13))
    down = _box(ax, left + 4.95, entry.y, 1.2, 0.44, "w2 (down)\nd_ff → d", DENSE_FFN, size=SMALL_SIZE)
    _arrow(ax, (product.x + 0.13, product.y), down.left)
    _arrow(ax, down.right, (left + width - 0.08, down.y))


# ================================================ 2. grouped-query attention
def grouped_query_attention(n_heads: int = 8, n_kv_heads: int = 2) -> Figure:
    """Grouped-query attention (Ainslie et al. 2023): ``n_heads`` query heads in
    ``n_kv_heads`` groups, each group reading one shared key/value head.

    Drawn between its two extremes, multi-head attention (one K/V head per
    query head) and multi-query attention (Shazeer 2019: one K/V head for
    all).  The KV cache a model keeps while generating shrinks with the number
    of K/V heads; the number of query heads, and so the attention patterns,
    stay the same."""
    _check_int("n_heads", n_heads, 1, 16)
    _check_int("n_kv_heads", n_kv_heads, 1, n_heads, "at most n_heads")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads must divide n_heads ({n_heads}), got {n_kv_heads!r}")
    figure, ax = _canvas(10.5, 4.3, "Grouped-query attention: query heads share key/value heads",
                         "Ainslie et al. 2023 (GQA); Shazeer 2019 (MQA)")
    variants = (("Multi-head (MHA)", n_heads, False),
                ("Grouped-query (GQA)", n_kv_heads, True),
                ("Multi-query (MQA)", 1, False))
    for index, (name, kv_heads, highlighted) in enumerate(variants):
        _attention_heads(ax, left=0.2 + index * 3.4, bottom=0.55, width=3.3, height=3.2, name=name,
                         n_heads=n_heads, n_kv_heads=kv_heads, highlighted=highlighted)
    _text(ax, 5.25, 0.27, "Each query head attends with its group's keys and values: fewer K/V heads, "
          "a smaller KV cache, the same number of attention patterns.", colour=MUTED)
    return figure


def _attention_heads(ax, left: float, bottom: float, width: float, height: float, name: str,
                     n_heads: int, n_kv_heads: int, highlighted: bool) -> None:
    """One panel: a row of query heads above a row of key/value heads, each query joined to its K/V head."""
    _panel(ax, left, bottom, width, height, name, HIGHLIGHT_PANEL if highlighted else PANEL)
    group = n_heads // n_kv_heads
    _text(ax, left + 0.12, bottom + height - 0.5, f"{n_heads} query heads, {n_kv_heads} K/V "
          f"head{'s' if n_kv_heads > 1 else ''} ({group} q per K/V)", size=SMALL_SIZE, ha="left", colour=MUTED)
    gap = 0.12 if 1 < n_kv_heads < n_heads else 0.0                 # a visible gap between groups
    pitch = (width - 0.4 - gap * (n_kv_heads - 1)) / n_heads
    labelled = pitch >= 0.3
    query_y, kv_y = bottom + 1.95, bottom + 0.85

    def query_x(head: int) -> float:
        return left + 0.2 + pitch * (head + 0.5) + gap * (head // group)

    for kv in range(n_kv_heads):
        members = range(kv * group, (kv + 1) * group)
        kv_x = sum(query_x(head) for head in members) / group
        kv_width = min(max(pitch * group - 0.06, pitch - 0.06), 1.1)
        label = (f"K/V {kv}" if kv_width >= 0.55 else f"kv{kv}") if labelled else ""
        kv_box = _box(ax, kv_x, kv_y, kv_width, 0.42, label, KEY_VALUE, size=SMALL_SIZE)
        for head in members:
            query = _box(ax, query_x(head), query_y, pitch - 0.06, 0.42, f"q{head}" if labelled else "",
                         ATTENTION, size=SMALL_SIZE)
            _line(ax, query.bottom, kv_box.top, colour=KEY_VALUE.edge, width=1.1)
    share = f"{100 * n_kv_heads / n_heads:.3g}%"
    _text(ax, left + width / 2, bottom + 0.3, f"KV cache: {share} of MHA's", size=SMALL_SIZE, colour=MUTED)


# =================================================== 3. routing and dispatch
EXAMPLE_TOKENS = ("Lily", "found", "ball")


@dataclass(frozen=True)
class ExampleRouting:
    """The routing that ``routing_and_dispatch`` draws, computed, never typed in.

    ``probabilities`` (T, E) is the softmax of the router's ``logits``;
    ``chosen`` (T, k) the top-k experts of each token, most probable first;
    ``weights`` (T, k) their probabilities renormalised to sum to 1 (Mixtral).
    The ``shown_*`` strings are the numbers as the picture prints them, two
    decimals that still add up to 1.00 for each token; the printed weights are
    the printed probabilities renormalised, so a reader can check them."""
    tokens: tuple[str, ...]
    logits: np.ndarray
    probabilities: np.ndarray
    chosen: np.ndarray
    weights: np.ndarray

    @property
    def shown_probabilities(self) -> list[list[str]]:
        return [[f"{value:.2f}" for value in _round_to_sum(row)] for row in self.probabilities]

    @property
    def shown_weights(self) -> list[list[str]]:
        rows = []
        for probabilities, chosen, weights in zip(self.probabilities, self.chosen, self.weights):
            picked = _round_to_sum(probabilities)[chosen]
            renormalised = picked / picked.sum() if picked.sum() > 0 else weights
            rows.append([f"{value:.2f}" for value in _round_to_sum(renormalised)])
        return rows


def _round_to_sum(values: np.ndarray, decimals: int = 2) -> np.ndarray:
    """``values`` (summing to 1) rounded so that the rounded values sum to exactly 1
    (largest-remainder rounding: the hundredths left over go to the largest remainders)."""
    scale = 10 ** decimals
    scaled = np.asarray(values, dtype=float) * scale
    rounded = np.floor(scaled)
    missing = int(round(scale - rounded.sum()))
    rounded[np.argsort(rounded - scaled)[:missing]] += 1          # largest remainders first
    return rounded / scale


def example_routing(num_experts: int = 4, top_k: int = 2, tokens: tuple[str, ...] = EXAMPLE_TOKENS,
                    seed: int = 17) -> ExampleRouting:
    """Example router logits for ``tokens`` (drawn from a fixed seed) and what the
    router makes of them: softmax, top-k, renormalised weights (Shazeer et al. 2017)."""
    _check_int("num_experts", num_experts, 1, 16)
    _check_int("top_k", top_k, 1, num_experts, "at most num_experts")
    logits = np.random.default_rng(seed).normal(0.0, 1.0, size=(len(tokens), num_experts)).round(2)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exponentials / exponentials.sum(axis=1, keepdims=True)
    chosen = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    picked = np.take_along_axis(probabilities, chosen, axis=1)
    weights = picked / picked.sum(axis=1, keepdims=True)
    return ExampleRouting(tuple(tokens), logits, probabilities, chosen, weights)


def routing_and_dispatch(num_experts: int = 4, top_k: int = 2) -> Figure:
    """How an MoE layer routes (Shazeer et al. 2017; Mixtral, Jiang et al. 2024):

    each token's hidden state goes through the router, a ``Linear(d_model, E)``;
    a softmax turns its E logits into probabilities; the top-k are kept and
    renormalised to sum to 1; the token is sent (dispatched) to those k experts
    and their outputs are added back, weighted, into the token's output.  The
    numbers are ``example_routing(num_experts, top_k)``."""
    _check_int("num_experts", num_experts, 1, 8)
    _check_int("top_k", top_k, 1, num_experts, "at most num_experts")
    routing = example_routing(num_experts, top_k)
    row_pitch = max(1.15, 0.36 * top_k + 0.45)
    cell = 0.5
    height = 2.1 + row_pitch * len(routing.tokens)
    width = 8.5 + cell * num_experts
    figure, ax = _canvas(width, height, f"Routing: each token goes to its top-{top_k} of {num_experts} experts",
                         "Shazeer et al. 2017; Mixtral (Jiang et al. 2024)")
    header_y = height - 0.8
    rows = [header_y - 0.85 - index * row_pitch for index in range(len(routing.tokens))]
    # the columns, left to right
    token_x, router_x = 0.65, 1.95
    cells_left = 2.85
    tags_x = cells_left + cell * num_experts + 0.9
    experts_x = tags_x + 1.85
    sum_x = experts_x + 1.2
    output_x = sum_x + 0.85
    for x, heading in ((token_x, "token x"), (router_x, "router"),
                       (cells_left + cell * num_experts / 2, "softmax p"), (tags_x, f"top-{top_k}, g"),
                       (experts_x, "experts"), ((sum_x + output_x) / 2, "y = Σ g · expert(x)")):
        _text(ax, x, header_y, heading, fontweight="bold")
    router = _box(ax, router_x, (rows[0] + rows[-1]) / 2, 1.05, rows[0] - rows[-1] + 0.7,
                  "Linear\nd_model\n→ E", ROUTER, size=SMALL_SIZE)
    span_top, span_bottom = rows[0] + 0.45, rows[-1] - 0.45
    expert_pitch = (span_top - span_bottom) / num_experts
    expert_boxes = [_box(ax, experts_x, span_top - expert_pitch * (expert + 0.5), 1.1,
                         min(0.5, expert_pitch - 0.12), f"expert {expert}", _expert_style(expert, num_experts),
                         size=SMALL_SIZE) for expert in range(num_experts)]
    for expert in range(num_experts):
        _text(ax, cells_left + cell * (expert + 0.5), rows[0] + 0.4, f"E{expert}", size=SMALL_SIZE,
              colour=expert_colour(expert, num_experts), fontweight="bold")
    for index, (token, y) in enumerate(zip(routing.tokens, rows)):
        source = _box(ax, token_x, y, 0.9, 0.4, token, TOKEN)
        _arrow(ax, source.right, (router_x - 0.525, y))
        _arrow(ax, (router_x + 0.525, y), (cells_left, y))
        chosen = list(routing.chosen[index])
        for expert, shown in enumerate(routing.shown_probabilities[index]):
            _box(ax, cells_left + cell * (expert + 0.5), y, cell - 0.04, 0.42, shown,
                 _expert_style(expert, num_experts, active=expert in chosen), size=SMALL_SIZE,
                 bold=expert in chosen)
        _arrow(ax, (cells_left + cell * num_experts, y), (tags_x - 0.62, y))
        tag_pitch = 0.36
        _line(ax, (tags_x - 0.6, y - tag_pitch * top_k / 2 + 0.03), (tags_x - 0.6, y + tag_pitch * top_k / 2 - 0.03),
              colour=MUTED, width=1.2)
        total = _node(ax, sum_x, y)
        for rank, (expert, shown) in enumerate(zip(chosen, routing.shown_weights[index])):
            tag_y = y + tag_pitch * ((top_k - 1) / 2 - rank)
            tag = _box(ax, tags_x, tag_y, 1.0, 0.3, f"E{expert}: {shown}",
                       _expert_style(expert, num_experts), size=SMALL_SIZE)
            colour = expert_colour(expert, num_experts)
            target = expert_boxes[expert]
            offset = 0.09 * (index - (len(rows) - 1) / 2)
            _arrow(ax, tag.right, (target.left[0], target.y + offset), colour=colour, width=1.5)
            _arrow(ax, (target.right[0], target.y + offset), (sum_x - 0.13, y), colour=colour, width=1.5)
        result = _box(ax, output_x, y, 0.95, 0.4, f"y({token})", TOKEN, size=SMALL_SIZE)
        _arrow(ax, (sum_x + 0.13, y), result.left)
    _text(ax, width / 2, 0.62, r"$p = \mathrm{softmax}(x\,W_r)$      "
          r"$g_i = p_i \,/ \sum_{j \in \mathrm{top}k}\, p_j$      "
          r"$y = \sum_{i \in \mathrm{top}k}\, g_i\, \mathrm{expert}_i(x)$", size=11)
    _text(ax, width / 2, 0.25, f"Each token runs {top_k} of the {num_experts} experts: the compute of "
          f"{top_k} FFN{'s' if top_k > 1 else ''}, the parameters of {num_experts}.", colour=MUTED)
    return figure


# ================================================= 4. capacity and dropping
@dataclass(frozen=True)
class ExampleCapacity:
    """Tokens in arrival order, the expert each chose (top-1), and whether it
    found a free slot in that expert's buffer of ``capacity`` slots."""
    experts: tuple[int, ...]
    kept: tuple[bool, ...]
    capacity: int

    def loads(self, num_experts: int) -> list[int]:
        return [self.experts.count(expert) for expert in range(num_experts)]


def example_capacity(num_experts: int = 4, capacity: int = 3, seed: int = 0) -> ExampleCapacity:
    """``num_experts * capacity`` tokens (capacity factor 1.0) routed unevenly,
    the busiest experts getting the most, in a shuffled order; first come,
    first served: a token that finds its expert's buffer full is dropped."""
    num_tokens = num_experts * capacity
    shares = np.arange(num_experts, 0, -1, dtype=float)
    loads = np.round(num_tokens * shares / shares.sum()).astype(int)
    loads[0] += num_tokens - loads.sum()
    if loads.max() <= capacity:                     # make sure the picture shows an overflow
        loads[0] += 1
        loads[np.flatnonzero(loads)[-1]] -= 1
    arrival = np.random.default_rng(seed).permutation(np.repeat(np.arange(num_experts), loads))
    filled = [0] * num_experts
    kept = []
    for expert in arrival:
        kept.append(filled[expert] < capacity)
        filled[expert] += 1
    return ExampleCapacity(tuple(int(e) for e in arrival), tuple(kept), capacity)


def capacity_and_dropping(num_experts: int = 4, capacity: int = 3) -> Figure:
    """Expert capacity (GShard, Lepikhin et al. 2020; Switch Transformer, Fedus et al. 2021).

    Each expert processes a buffer of a fixed number of token slots,
    ``capacity = capacity factor * tokens * k / E``.  Tokens fill the buffers in
    arrival order; a token whose expert is full is dropped: it skips the
    expert and only the residual connection carries it on.  Experts that get
    fewer tokens compute on empty (padding) slots.  Dropless MoE (MegaBlocks,
    Gale et al. 2022; grouped GEMMs) sizes each expert's work to its real load
    instead, and keeps every token."""
    _check_int("num_experts", num_experts, 2, 6)
    _check_int("capacity", capacity, 1, 4)
    example = example_capacity(num_experts, capacity)
    loads = example.loads(num_experts)
    num_tokens = len(example.experts)
    figure, ax = _canvas(10.5, 5.3, "Expert capacity: full buffers drop tokens",
                         "Lepikhin et al. 2020; Fedus et al. 2021; Gale et al. 2022")
    _text(ax, 0.2, 4.6, f"{num_tokens} tokens in arrival order, coloured by the expert the router chose (top-1):",
          ha="left")
    pitch = min(0.8, 10.1 / num_tokens)
    for index, expert in enumerate(example.experts):
        _box(ax, 0.2 + pitch * (index + 0.5), 4.15, pitch - 0.05, 0.38, f"t{index}",
             _expert_style(expert, num_experts), size=SMALL_SIZE)
    row_pitch = min(0.55, 1.95 / num_experts)               # the rows fit between the formula and the legend
    rows = [2.98 - row_pitch * (expert + 0.5) for expert in range(num_experts)]
    cell = min(0.36, row_pitch - 0.08)                       # height of a slot
    slot = min(0.5, 3.4 / (max(loads) + 0.6))
    slots_by_expert = [[index for index, e in enumerate(example.experts) if e == expert]
                       for expert in range(num_experts)]
    _panel(ax, 0.2, 0.2, 5.35, 3.45, f"Capacity: {capacity} slots per expert")
    _text(ax, 0.32, 3.2, "capacity = factor × tokens × k / E = "
          f"1.0 × {num_tokens} × 1 / {num_experts} = {capacity}", size=SMALL_SIZE, ha="left", colour=MUTED)
    _panel(ax, 5.7, 0.2, 4.6, 3.45, "Dropless (MegaBlocks, grouped GEMM)")
    for expert, y in enumerate(rows):
        style = _expert_style(expert, num_experts)
        for panel_left in (0.2, 5.7):
            _box(ax, panel_left + 0.6, y, 0.95, cell, f"expert {expert}", style, size=SMALL_SIZE)
        buffer_left = 1.35
        for position in range(capacity):
            x = buffer_left + slot * (position + 0.5)
            if position < len(slots_by_expert[expert]):
                _box(ax, x, y, slot - 0.05, cell, f"t{slots_by_expert[expert][position]}", style, size=SMALL_SIZE)
            else:
                _box(ax, x, y, slot - 0.05, cell, style=ZERO, hatch="////", line_width=1.0)
        _box(ax, buffer_left + slot * capacity / 2, y, slot * capacity + 0.04, cell + 0.07, style=_Style("none", INK),
             line_width=1.6, zorder=3)
        overflow_left = buffer_left + slot * capacity + 0.25
        for position, token in enumerate(slots_by_expert[expert][capacity:]):
            _box(ax, overflow_left + slot * (position + 0.5), y, slot - 0.05, cell, f"t{token}",
                 _Style("white", MUTED, MUTED), size=SMALL_SIZE, dashed=True, line_width=1.1)
        for position, token in enumerate(slots_by_expert[expert]):
            _box(ax, 6.9 + slot * (position + 0.5), y, slot - 0.05, cell, f"t{token}", style, size=SMALL_SIZE)
        _box(ax, 6.9 + slot * loads[expert] / 2, y, slot * loads[expert] + 0.04, cell + 0.07, style=_Style("none", INK),
             line_width=1.6, zorder=3)
    _line(ax, (1.35 + slot * capacity + 0.12, rows[0] + cell / 2 + 0.05),
          (1.35 + slot * capacity + 0.12, rows[-1] - cell / 2 - 0.05),
          colour=INK, dashed=True, width=1.0)
    _legend_swatch(ax, 0.35, 0.72, _Style("white", MUTED), "dropped: skips its expert", dashed=True)
    _legend_swatch(ax, 0.35, 0.38, ZERO, "empty slot: padding, wasted compute", hatch="////")
    dropped = example.kept.count(False)
    _text(ax, 5.85, 0.72, f"All {num_tokens} tokens computed ({dropped} dropped on the left):", size=SMALL_SIZE,
          ha="left", colour=MUTED)
    _text(ax, 5.85, 0.4, "each expert's work is sized to its real load.", size=SMALL_SIZE, ha="left",
          colour=MUTED)
    return figure


# ====================================== 5. shared and routed experts (DeepSeekMoE)
def shared_and_routed_experts(num_shared: int = 1, num_routed: int = 8, top_k: int = 2) -> Figure:
    """DeepSeekMoE (Dai et al. 2024): ``num_shared`` shared experts that every
    token passes through, plus ``num_routed`` small routed experts of which the
    router picks ``top_k``.  The outputs are summed:

        y = sum_i shared_i(x) + sum_{i in top-k} g_i expert_i(x)

    DeepSeekMoE weights the routed experts by their softmax probabilities
    without renormalising them (Mixtral renormalises); the shared experts hold
    common knowledge, so the routed ones can specialise."""
    _check_int("num_shared", num_shared, 1, 3)
    _check_int("num_routed", num_routed, 2, 16)
    _check_int("top_k", top_k, 1, num_routed, "at most num_routed")
    routing = example_routing(num_routed, top_k, tokens=("x",), seed=5)
    chosen = list(routing.chosen[0])
    shown = [f"{value:.2f}" for value in _round_to_sum(routing.probabilities[0])]
    figure, ax = _canvas(10.5, 4.9, "Shared and routed experts (DeepSeekMoE)", "Dai et al. 2024")
    source = _box(ax, 0.6, 2.35, 0.75, 0.42, "x", TOKEN)
    total = _node(ax, 8.95, 2.35)
    result = _box(ax, 9.85, 2.35, 0.75, 0.42, "y", TOKEN)
    _arrow(ax, (total.x + 0.13, total.y), result.left)
    # the shared lane: every token
    shared_y = 3.75
    _panel(ax, 2.9, shared_y - 0.55, 5.0, 1.05, "shared: every token, always")
    shared_width = min(1.9, 4.4 / num_shared)
    shared_boxes = [_box(ax, 5.4 + shared_width * (index - (num_shared - 1) / 2), shared_y - 0.12,
                         shared_width - 0.12, 0.5, f"shared expert {index}" if num_shared > 1 else "shared expert",
                         DENSE_FFN, size=SMALL_SIZE) for index in range(num_shared)]
    _text(ax, 8.05, shared_y + 0.12, "shared(x)", size=SMALL_SIZE, colour=MUTED, ha="left")
    _arrow(ax, source.right, (1.3, source.y), (1.3, shared_boxes[0].y), shared_boxes[0].left)
    for left_box, right_box in zip(shared_boxes, shared_boxes[1:]):
        _arrow(ax, left_box.right, right_box.left)
    _arrow(ax, shared_boxes[-1].right, (total.x, shared_boxes[-1].y), (total.x, total.y + 0.13))
    # the routed lane: top-k of many small experts
    router = _box(ax, 2.2, 1.15, 1.0, 0.55, f"router\ntop-{top_k}", ROUTER, size=SMALL_SIZE)
    _arrow(ax, source.right, (1.3, source.y), (1.3, router.y), router.left)
    _panel(ax, 2.9, 0.55, 5.0, 2.2, f"routed experts: top-{top_k} of {num_routed}, small (fine-grained)")
    columns = num_routed if num_routed <= 8 else math.ceil(num_routed / 2)
    grid_rows = math.ceil(num_routed / columns)
    pitch_x = 4.8 / columns
    boxes = []
    for expert in range(num_routed):
        row, column = divmod(expert, columns)
        active = expert in chosen
        label = f"E{expert}\n{shown[expert]}" if active else f"E{expert}"
        y, box_height = (1.95, 0.6) if grid_rows == 1 else (2.12 - 0.6 * row, 0.52)
        boxes.append(_box(ax, 3.0 + pitch_x * (column + 0.5), y, pitch_x - 0.08, box_height, label,
                          _expert_style(expert, num_routed, active), size=SMALL_SIZE, bold=active))
    if grid_rows == 1:                      # an arrow from the router to each chosen expert
        for rank, expert in enumerate(sorted(chosen)):
            lane_y = router.y + 0.12 * ((top_k - 1) / 2 - rank)
            _arrow(ax, (router.right[0], lane_y), (boxes[expert].x, lane_y), boxes[expert].bottom,
                   colour=expert_colour(expert, num_routed), width=1.5)
    else:
        _arrow(ax, router.right, (2.9, router.y))
    _arrow(ax, (7.9, 1.95), (total.x, 1.95), (total.x, total.y - 0.13))
    _text(ax, 8.05, 2.12, "Σ g·E(x)", size=SMALL_SIZE, colour=MUTED, ha="left")
    picked = " + ".join(shown[e] for e in chosen)
    below_one = round(sum(float(shown[e]) for e in chosen), 2) < 1
    _text(ax, 5.4, 0.75, f"g = softmax probabilities, not renormalised ({picked} {'<' if below_one else '='} 1)",
          size=SMALL_SIZE, colour=MUTED)
    _text(ax, 5.4, 0.25, r"$y = \sum_{i}\, \mathrm{shared}_i(x) \;+ \sum_{i \in \mathrm{top}k}\, "
          r"g_i\, \mathrm{expert}_i(x)$", size=11)
    return figure


# ============================================================= 6. upcycling
def upcycling(num_experts: int = 4, top_k: int = 2) -> Figure:
    """Sparse upcycling (Komatsuzaki et al. 2022): a trained dense FFN is copied
    into ``num_experts`` identical experts and a new router is added.

    With renormalised top-k weights (they sum to 1) every chosen expert
    computes the same FFN(x), so the MoE layer outputs exactly FFN(x): the
    upcycled model starts where the dense one stopped, and training then
    lets the copies drift apart.  Attention, norms and embeddings are copied
    unchanged.  The weights drawn are ``example_routing(num_experts, top_k)``."""
    _check_int("num_experts", num_experts, 2, 8)
    _check_int("top_k", top_k, 1, num_experts, "at most num_experts")
    routing = example_routing(num_experts, top_k, tokens=("x",))
    chosen, shown = list(routing.chosen[0]), routing.shown_weights[0]
    figure, ax = _canvas(10.5, 4.8, "Sparse upcycling: a dense FFN becomes the experts",
                         "Komatsuzaki et al. 2022")
    _panel(ax, 0.2, 0.95, 2.9, 3.05, "dense model (trained)")
    _box(ax, 1.65, 3.0, 2.3, 0.5, "embeddings, attention, norms\n(copied unchanged)", NORM, size=SMALL_SIZE)
    dense = _box(ax, 1.65, 1.85, 2.3, 0.95, "FFN (SwiGLU)\nw1, w3, w2", DENSE_FFN, bold=True)
    _arrow(ax, (1.65, 2.75), dense.top, colour=RESIDUAL)
    _arrow(ax, (3.25, 2.0), (4.35, 2.0), colour=INK, width=3)
    _text(ax, 3.8, 2.3, f"copy ×{num_experts}", size=SMALL_SIZE, colour=INK)
    _text(ax, 3.8, 1.7, "+ a router", size=SMALL_SIZE, colour=INK)
    _panel(ax, 4.5, 0.95, 5.8, 3.05, "MoE layer (upcycled)")
    router = _box(ax, 5.25, 2.3, 1.15, 0.7, "router\n(new, small\nrandom init)", ROUTER, size=SMALL_SIZE)
    entry = _box(ax, 5.25, 1.35, 0.6, 0.36, "x", TOKEN)
    _arrow(ax, entry.top, router.bottom)
    pitch = 2.45 / num_experts
    total = _node(ax, 9.15, 2.3)
    result = _box(ax, 9.85, 2.3, 0.6, 0.4, "y", TOKEN)
    _arrow(ax, (total.x + 0.13, total.y), result.left)
    for expert in range(num_experts):
        y = 3.45 - pitch * (expert + 0.5)
        active = expert in chosen
        label = f"expert {expert} = FFN" + (f",  g = {shown[chosen.index(expert)]}" if active else "")
        style = _Style(DENSE_FFN.fill, expert_colour(expert, num_experts))
        box = _box(ax, 7.55, y, 2.1, min(0.44, pitch - 0.1), label, style, size=SMALL_SIZE, bold=active,
                   line_width=2.2 if active else 1.0)
        if active:
            colour = expert_colour(expert, num_experts)
            _arrow(ax, router.right, box.left, colour=colour, width=1.5)
            _arrow(ax, box.right, (total.x - 0.13, total.y), colour=colour, width=1.5)
    _text(ax, 5.25, 0.58, r"$y = \sum_{i \in \mathrm{top}k}\, g_i\,\mathrm{FFN}(x) = \mathrm{FFN}(x)"
          r"\sum_{i \in \mathrm{top}k}\, g_i = \mathrm{FFN}(x)$", size=11)
    _text(ax, 5.25, 0.22, f"The renormalised weights sum to 1 ({' + '.join(shown)} = 1.00): at step 0 the MoE "
          "computes exactly the dense FFN.", size=SMALL_SIZE, colour=MUTED)
    return figure


# ========================================================= 7. model growth
def width_growth(factor: int = 2) -> Figure:
    """Width growth by ``factor`` n (Net2Net, Chen et al. 2016; bert2BERT):

    the residual stream becomes n copies of itself, ``h' = [h, ..., h]``; a
    weight matrix ``W`` becomes n x n tiles of ``W / n``.  Each output block is
    then ``n * (W/n) h = W h``: the grown layer outputs n copies of the old
    output, and RMSNorm is unchanged because ``RMS([h, h]) = RMS(h)``."""
    _check_int("factor", factor, 1, 4)
    figure, ax = _canvas(10.5, 4.8, f"Width growth ×{factor}: tiles of W/{factor}, the stream copied",
                         "Net2Net (Chen et al. 2016)")
    middle = 2.45
    _text(ax, 1.95, 4.05, "before", fontweight="bold")
    matrix = _box(ax, 1.0, middle, 1.3, 1.3, "W", DENSE_FFN, size=12, bold=True)
    _text(ax, 1.88, middle, "×", size=14)
    vector = _box(ax, 2.2, middle, 0.42, 1.3, "h", NORM, bold=True)
    _text(ax, 2.65, middle, "=", size=14)
    _box(ax, 3.1, middle, 0.52, 1.3, "Wh", NORM, bold=True)
    _text(ax, matrix.x, middle - 0.9, "d_out × d_in", size=SMALL_SIZE, colour=MUTED)
    _text(ax, vector.x, middle - 0.9, "d_in", size=SMALL_SIZE, colour=MUTED)
    _text(ax, 3.1, middle - 0.9, "d_out", size=SMALL_SIZE, colour=MUTED)
    _arrow(ax, (3.55, middle), (4.35, middle), colour=INK, width=3)
    _text(ax, 3.95, middle + 0.3, f"×{factor}", size=SMALL_SIZE)
    side = 2.6
    block = side / factor
    _text(ax, 6.85, 4.05, f"after: every dimension ×{factor}", fontweight="bold")
    for row in range(factor):
        for column in range(factor):
            _box(ax, 4.6 + block * (column + 0.5), middle + side / 2 - block * (row + 0.5), block - 0.06,
                 block - 0.06, f"W/{factor}" if factor > 1 else "W", DENSE_FFN,
                 size=SMALL_SIZE if factor > 2 else FONT_SIZE)
    _text(ax, 7.5, middle, "×", size=14)
    for index in range(factor):
        y = middle + side / 2 - block * (index + 0.5)
        _box(ax, 7.9, y, 0.42, block - 0.06, "h", NORM, bold=True)
        _box(ax, 8.9, y, 0.52, block - 0.06, "Wh", NORM, bold=True)
    _text(ax, 8.4, middle, "=", size=14)
    below = middle - side / 2 - 0.22
    _text(ax, 4.6 + side / 2, below, f"{factor}·d_out × {factor}·d_in", size=SMALL_SIZE, colour=MUTED)
    _text(ax, 7.9, below, "[h, h]" if factor == 2 else f"{factor} × h", size=SMALL_SIZE, colour=MUTED)
    _text(ax, 8.9, below, "[Wh, Wh]" if factor == 2 else f"{factor} × Wh", size=SMALL_SIZE, colour=MUTED)
    _text(ax, 5.25, 0.6, f"Each output block: {factor} · (W/{factor}) h = W h, the old output, copied. "
          "Inputs tiled and divided, outputs tiled.", size=FONT_SIZE)
    _text(ax, 5.25, 0.25, "RMS([h, h]) = RMS(h), so RMSNorm (gains tiled) keeps the copies. Router and LM head: "
          "inputs divided, outputs not copied.", size=SMALL_SIZE, colour=MUTED)
    return figure


def depth_growth(num_layers: int = 3) -> Figure:
    """Depth growth (LLaMA Pro block expansion, Wu et al. 2024; the identity
    blocks of Net2Net, Chen et al. 2016): a new block, a copy of its neighbour
    with its output projections (attention ``wo`` and every expert's ``w2``)
    set to zero, is inserted into a stack of ``num_layers`` blocks.  Both of
    its branches add zero to the residual stream, so it is the identity and
    the grown model computes what the old one did; training then moves
    ``wo`` and ``w2`` away from zero."""
    _check_int("num_layers", num_layers, 1, 6)
    after = math.ceil(num_layers / 2)
    figure, ax = _canvas(10.5, 4.9, "Depth growth: a new block that starts as the identity",
                         "LLaMA Pro (Wu et al. 2024); Net2Net (Chen et al. 2016)")
    pitch = min(0.55, 3.3 / (num_layers + 3))
    new_y = 0.6 + pitch * (after + 1.5)
    for column_x, heading, grown in ((1.0, "before", False), (3.05, "after", True)):
        names = ["embedding"] + [f"block {index + 1}" for index in range(num_layers)] + ["LM head"]
        if grown:
            names.insert(after + 1, "new block")
        ys = [0.6 + pitch * (index + 0.5) for index in range(len(names))]
        _text(ax, column_x, ys[-1] + 0.5, heading, fontweight="bold")
        for index, (name, y) in enumerate(zip(names, ys)):
            if name == "new block":
                _box(ax, column_x, y, 1.45, pitch - 0.12, name, ZERO, size=SMALL_SIZE, dashed=True, bold=True,
                     line_width=1.8)
            else:
                _box(ax, column_x, y, 1.45, pitch - 0.12, name, DENSE_FFN if name.startswith("block") else NORM,
                     size=SMALL_SIZE)
            if index + 1 < len(names):
                _arrow(ax, (column_x, y + (pitch - 0.12) / 2), (column_x, y + pitch - (pitch - 0.12) / 2),
                       colour=RESIDUAL)
    _arrow(ax, (1.85, new_y), (2.2, new_y), colour=INK, width=2.5)
    _line(ax, (3.8, new_y), (4.6, 3.8), colour=MUTED, dashed=True, width=1.0)
    _line(ax, (3.8, new_y), (4.6, 0.55), colour=MUTED, dashed=True, width=1.0)
    _identity_block(ax, left=4.6, bottom=0.55, width=5.7, height=3.25)
    _text(ax, 5.25, 0.25, "The new block copies its neighbour's weights except wo and w2: the grown model computes "
          "the same function, and training moves them off zero.", size=SMALL_SIZE, colour=MUTED)
    return figure


def _identity_block(ax, left: float, bottom: float, width: float, height: float) -> None:
    """The new block opened up: both branches end in a zero matrix, so both sums add zero."""
    _panel(ax, left, bottom, width, height, "inside the new block: x + 0 + 0 = x")
    stream_x = left + 0.55
    top = bottom + height - 0.45
    _line(ax, (stream_x, bottom + 0.15), (stream_x, top), colour=RESIDUAL, width=3)
    _text(ax, stream_x - 0.3, bottom + 1.4, "residual stream", colour=MUTED, rotation=90, size=SMALL_SIZE)
    for tap, name, style, zero in ((bottom + 0.35, "attention (copied)", ATTENTION, "wo = 0"),
                                   (bottom + 1.65, "experts (copied)", DENSE_FFN, "w2 = 0")):
        y = tap + 0.45
        norm = _box(ax, left + 1.55, y, 1.05, 0.38, "RMSNorm", NORM, size=SMALL_SIZE)
        body = _box(ax, left + 3.05, y, 1.55, 0.44, name, style, size=SMALL_SIZE)
        output = _box(ax, left + 4.55, y, 0.95, 0.44, zero, ZERO, size=SMALL_SIZE, bold=True, dashed=True)
        total = _node(ax, stream_x, tap + 1.0)
        _arrow(ax, (stream_x, tap), (norm.x, tap), norm.bottom)
        _arrow(ax, norm.right, body.left)
        _arrow(ax, body.right, output.left)
        _arrow(ax, output.top, (output.x, total.y), (stream_x + 0.13, total.y))
        _text(ax, left + 3.05, total.y + 0.13, "adds 0", size=SMALL_SIZE, colour=MUTED)


# ========================================= 8. expert parallelism: all-to-all
@dataclass(frozen=True)
class ExampleExpertParallel:
    """Tokens on each rank and the expert each chose (top-1)."""
    ranks: int
    experts_per_rank: int
    choices: tuple[tuple[int, ...], ...]       # choices[rank][token] = expert

    def rank_of(self, expert: int) -> int:
        return expert // self.experts_per_rank


def example_expert_parallel(ranks: int = 2, experts_per_rank: int = 2, tokens_per_rank: int = 4,
                            seed: int = 1) -> ExampleExpertParallel:
    """A balanced example: every expert gets about as many tokens, in a shuffled
    order, and every rank sends tokens to every rank (itself included) when it
    has enough tokens to: the first shuffle from ``seed`` on that does so."""
    num_experts = ranks * experts_per_rank
    total = ranks * tokens_per_rank
    reaches_all = min(ranks, tokens_per_rank)
    for attempt in range(seed, seed + 1000):
        experts = np.random.default_rng(attempt).permutation(np.arange(total) % num_experts)
        choices = tuple(tuple(int(e) for e in experts[rank * tokens_per_rank:(rank + 1) * tokens_per_rank])
                        for rank in range(ranks))
        example = ExampleExpertParallel(ranks, experts_per_rank, choices)
        if all(len({example.rank_of(e) for e in row}) >= reaches_all for row in choices):
            return example
    return example


def expert_parallel_all_to_all(ranks: int = 2, experts_per_rank: int = 2) -> Figure:
    """Expert parallelism (GShard, Lepikhin et al. 2020; Switch, Fedus et al. 2021):
    the experts are spread over ``ranks`` GPUs, ``experts_per_rank`` each.

    Every rank routes its own tokens; an all-to-all sends each token to the
    rank that holds its expert (dispatch); the experts compute; a second
    all-to-all sends the results back (combine), where they are put back in
    the original order.  Activations travel, weights stay where they are."""
    _check_int("ranks", ranks, 2, 4)
    _check_int("experts_per_rank", experts_per_rank, 1, 4)
    if ranks * experts_per_rank > 8:
        raise ValueError(f"ranks * experts_per_rank must be at most 8 experts to draw, got {ranks} * "
                         f"{experts_per_rank}")
    example = example_expert_parallel(ranks, experts_per_rank)
    num_experts = ranks * experts_per_rank
    tokens_per_rank = len(example.choices[0])
    lane_height, lane_gap = 1.95, 0.2
    height = 1.85 + ranks * lane_height + (ranks - 1) * lane_gap
    figure, ax = _canvas(10.5, height, "Expert parallelism: two all-to-alls per MoE layer",
                         "Lepikhin et al. 2020 (GShard); Fedus et al. 2021")
    header_y = height - 0.75
    token_x, expert_x, back_x = 1.35, 5.2, 9.15
    for x, heading in ((token_x, "1. route"), (3.25, "2. all-to-all dispatch"), (expert_x, "3. experts compute"),
                       (7.2, "4. all-to-all combine"), (back_x, "5. back in order")):
        _text(ax, x, header_y, heading, fontweight="bold")
    names = "abcd"
    token_boxes, expert_boxes = {}, {}
    for rank in range(ranks):
        lane_top = header_y - 0.3 - rank * (lane_height + lane_gap)
        _panel(ax, 0.2, lane_top - lane_height, 10.1, lane_height, "")
        _text(ax, 0.38, lane_top - lane_height / 2, f"rank {rank} (GPU {rank})", rotation=90, size=SMALL_SIZE,
              colour=MUTED, fontweight="bold")
        token_pitch = (lane_height - 0.3) / tokens_per_rank
        for token, expert in enumerate(example.choices[rank]):
            y = lane_top - 0.15 - token_pitch * (token + 0.5)
            style = _expert_style(expert, num_experts)
            label = f"{names[rank]}{token} → E{expert}"
            token_boxes[rank, token] = _box(ax, token_x, y, 1.1, min(0.34, token_pitch - 0.08), label, style,
                                            size=SMALL_SIZE)
            _box(ax, back_x, y, 0.9, min(0.34, token_pitch - 0.08), f"{names[rank]}{token}′", style, size=SMALL_SIZE)
        expert_pitch = (lane_height - 0.3) / experts_per_rank
        for local in range(experts_per_rank):
            expert = rank * experts_per_rank + local
            y = lane_top - 0.15 - expert_pitch * (local + 0.5)
            box = _box(ax, expert_x, y, 1.6, min(0.6, expert_pitch - 0.12), f"E{expert}",
                       _expert_style(expert, num_experts), size=SMALL_SIZE, bold=True, label_offset=-0.45)
            expert_boxes[expert] = box
    received = {expert: [] for expert in range(num_experts)}
    for rank in range(ranks):
        for token, expert in enumerate(example.choices[rank]):
            received[expert].append((rank, token))
    for expert, arrivals in received.items():
        box = expert_boxes[expert]
        chip_pitch = min(0.42, 1.0 / max(len(arrivals), 1))
        for position, (rank, token) in enumerate(arrivals):
            chip_x = box.x - 0.1 + chip_pitch * (position + 0.5)
            _box(ax, chip_x, box.y, chip_pitch - 0.04, min(0.3, box.height - 0.1), f"{names[rank]}{token}",
                 TOKEN, size=SMALL_SIZE, zorder=3)
            source = token_boxes[rank, token]
            colour = expert_colour(expert, num_experts)
            offset = 0.08 * (position - (len(arrivals) - 1) / 2)
            _arrow(ax, source.right, (box.left[0], box.y + offset), colour=colour, width=1.3)
            _arrow(ax, (box.right[0], box.y + offset), (back_x - 0.45, source.y), colour=colour, width=1.3)
    _text(ax, 5.25, 0.6, f"Each rank holds {experts_per_rank} of the {num_experts} experts' weights; only token "
          "activations travel (a token whose expert is local stays on its GPU).", size=SMALL_SIZE, colour=MUTED)
    _text(ax, 5.25, 0.22, "The token counts are exchanged first, so every rank knows how much it will receive.",
          size=SMALL_SIZE, colour=MUTED)
    return figure


# ================================================================ all of them
ALL_FIGURES = {
    "decoder_block": decoder_block,
    "grouped_query_attention": grouped_query_attention,
    "routing_and_dispatch": routing_and_dispatch,
    "capacity_and_dropping": capacity_and_dropping,
    "shared_and_routed_experts": shared_and_routed_experts,
    "upcycling": upcycling,
    "width_growth": width_growth,
    "depth_growth": depth_growth,
    "expert_parallel_all_to_all": expert_parallel_all_to_all,
}


def save_all(folder, dpi: int = 150) -> list[Path]:
    """Write every diagram of ``ALL_FIGURES`` to ``folder/<name>.png``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in ALL_FIGURES.items():
        path = folder / f"{name}.png"
        draw().savefig(path, dpi=dpi, facecolor="white")
        paths.append(path)
    return paths
