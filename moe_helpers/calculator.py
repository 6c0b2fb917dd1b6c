"""The parameter calculator of notebook 03: pick a model, change its sizes, read
what it stores, what each token uses, its FLOPs and its memory.

The numbers come from plain, tested functions (``calculator_config``,
``calculator_summary``, ``CalculatorSummary.text``) over ``accounting``;
``ParamCalculator`` only puts controls around them and redraws through
``widget_rendering`` (a PNG swapped into an Image widget, the latest state
wins), so it is safe however the kernel threads widget messages.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import ipywidgets as widgets
from IPython.display import display
from matplotlib.figure import Figure

from .accounting import (PARTS, Flops, Memory, ParameterCounts, all_to_all_bytes, count_from_config,
                         flops_per_token, memory_bytes)
from .config import ModelConfig, preset
from .real_models import PUBLISHED_MODELS
from .widget_rendering import RenderLoop, figure_png, name_for_css

CALCULATOR_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff",
                     "num_experts", "top_k", "num_shared_experts")

DTYPES = ("float32", "bfloat16", "float16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ALL_TO_ALL_TOKENS = 1000                 # the all-to-all line counts bytes per thousand tokens
MAX_EXPERT_RANKS = 8                     # ... with the experts spread over at most 8 ranks (one node)
CALCULATOR_FIGSIZE = (9.0, 4.6)          # inches; 900 x 460 pixels
MEMORY_COLORS = {"weights": "#4d4d4d", "gradients": "#969696", "optimizer state": "#cccccc"}


# ================================================================= the logic
def calculator_presets() -> dict[str, ModelConfig]:
    """The configs the calculator offers: the course's ``laptop`` and ``seed``
    models in their three phases, then the published MoEs of ``real_models``."""
    presets = {}
    for name in ("laptop", "seed"):
        for phase, cfg in enumerate(preset(name).phase_configs(), start=1):
            presets[f"{name} phase {phase}"] = cfg
    for model in PUBLISHED_MODELS:
        presets[model.name] = model.config
    return presets


def calculator_config(base: ModelConfig, **changes) -> ModelConfig:
    """``base`` with some of the calculator's fields (``CALCULATOR_FIELDS``) changed.

    Fields without a control (GQA heads, head_dim, shared-expert and dense
    sizes, tied embeddings) keep ``base``'s values.  Setting ``num_experts=0``
    also sets ``first_k_dense=0`` (every block is dense then).  An invalid
    combination raises the config's ``ValueError``.
    """
    unknown = sorted(set(changes) - set(CALCULATOR_FIELDS))
    if unknown:
        raise ValueError(f"the calculator changes only {', '.join(CALCULATOR_FIELDS)}; got {', '.join(unknown)}")
    if changes.get("num_experts", base.num_experts) == 0:
        changes["first_k_dense"] = 0
    return base.replace(**changes)


def active_by_part(counts: ParameterCounts) -> dict:
    """Parameters one token uses, by part: the routed experts count k of E,
    everything else (embedding included, as in the original note) fully."""
    active = dict(counts.by_part)
    if counts.is_moe:
        active["experts"] = counts.by_part["experts"] * counts.top_k // counts.num_experts
    return active


def _human(value: float, giga: str = "G") -> str:
    """1234567 -> '   1.23 M' (K, M, G, T; parameter counts say B for billions)."""
    for scale, suffix in ((1e12, "T"), (1e9, giga), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:7.2f} {suffix}"
    return f"{value:7.0f} "


def _layers(count: int) -> str:
    """'1 MoE layer', '7 MoE layers'."""
    return f"{count} MoE layer{'s' if count != 1 else ''}"


def describe_routing(cfg: ModelConfig, counts: ParameterCounts) -> str:
    """What the FFNs are, in words: experts per MoE layer, shared experts, leading dense blocks."""
    if not counts.is_moe:
        return "dense: one FFN per block"
    shared = f" + {cfg.num_shared_experts} shared" if cfg.num_shared_experts else ""
    dense_blocks = f", first {cfg.first_k_dense} block(s) dense" if cfg.first_k_dense else ""
    return (f"{counts.num_experts} experts{shared} in each of {_layers(counts.moe_layers)}, "
            f"top-{counts.top_k} routing{dense_blocks}")


def describe_idle_experts(counts: ParameterCounts) -> str:
    """The idle experts of one token, summed over the MoE layers, and how the sum is made.

    ``"42 expert-layers: 6 of 8 experts in each of 7 MoE layers"``: the count is of
    (expert, layer) pairs, since every MoE layer routes each token on its own."""
    if not counts.is_moe:
        return "none: a dense model uses every parameter for every token"
    idle_per_layer = counts.num_experts - counts.top_k
    return (f"{counts.experts_idle} expert-layers: {idle_per_layer} of {counts.num_experts} experts "
            f"in each of {_layers(counts.moe_layers)}")


@dataclass(frozen=True)
class CalculatorSummary:
    """What the calculator shows for one config."""

    config: ModelConfig
    counts: ParameterCounts
    active_parts: dict              # parameters one token uses, by part
    flops: Flops                    # per token, at ``seq_len``
    training_memory: Memory         # weights + gradients + optimiser state
    inference_memory: Memory        # weights only
    seq_len: int
    dtype: str
    optimizer: str
    expert_ranks: int = 1           # ranks the experts are spread over (expert parallelism)
    all_to_all: float = 0.0         # bytes per MoE layer per ALL_TO_ALL_TOKENS tokens, forward pass

    def text(self) -> str:
        """The summary as a few aligned lines."""
        counts = self.counts
        return "\n".join([
            f"total parameters      {_human(counts.total, 'B')}  ({describe_routing(self.config, counts)})",
            f"active per token      {_human(counts.active, 'B')}  (efficiency {counts.efficiency:.1f}%)",
            f"idle per token        {describe_idle_experts(counts)}",
            f"forward FLOPs/token   {_human(self.flops.forward)}FLOP at {self.seq_len} tokens of context"
            f"  (training: {_human(self.flops.training)}FLOP)",
            f"memory, inference     {_human(self.inference_memory.total)}B  ({self.dtype} weights)",
            f"memory, training      {_human(self.training_memory.total)}B  ({self.dtype} weights and"
            f" gradients, float32 {self.optimizer} state)",
            self._all_to_all_line(),
        ])

    def _all_to_all_line(self) -> str:
        if self.expert_ranks <= 1:
            return "all-to-all            none: no experts to spread over ranks"
        return (f"all-to-all            {_human(self.all_to_all)}B per MoE layer per {ALL_TO_ALL_TOKENS:,} tokens,"
                f" forward ({self.dtype}, experts over {self.expert_ranks} ranks)")


def calculator_summary(cfg: ModelConfig, seq_len: int = 256, dtype: str = "bfloat16",
                       optimizer: str = "adamw") -> CalculatorSummary:
    """Counts, active parts, FLOPs per token and memory of ``cfg`` (no allocation)."""
    counts = count_from_config(cfg)
    ranks = expert_ranks(cfg)
    return CalculatorSummary(
        config=cfg, counts=counts, active_parts=active_by_part(counts),
        flops=flops_per_token(cfg, seq_len),
        training_memory=memory_bytes(cfg, dtype, optimizer),
        inference_memory=memory_bytes(cfg, dtype, optimizer=None),
        seq_len=seq_len, dtype=dtype, optimizer=optimizer, expert_ranks=ranks,
        all_to_all=all_to_all_bytes(ALL_TO_ALL_TOKENS, cfg.top_k, cfg.d_model, DTYPE_BYTES[dtype], ranks)
        if ranks > 1 else 0.0,
    )


def expert_ranks(cfg: ModelConfig) -> int:
    """Ranks the calculator spreads the experts over: the largest divisor of ``num_experts``
    up to ``MAX_EXPERT_RANKS`` (1 for a dense model)."""
    return max((r for r in range(1, MAX_EXPERT_RANKS + 1) if cfg.num_experts % r == 0), default=1) \
        if cfg.num_experts else 1


# ================================================================ the figure
def _legend_outside(ax, **options) -> None:
    """A legend to the right of ``ax``, outside it, so that it covers no bar (constrained layout makes room)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, **options)


def plot_parameter_breakdown(summary: CalculatorSummary, ax=None):
    """Two stacked bars: the parameters the model stores and those one token uses, by part.

    Every part gets a bar segment in its own colour (``C0``... in ``PARTS`` order, so a
    part keeps its colour from one model to the next); the legend names only the
    parts the model has, and sits outside the axes."""
    if ax is None:
        ax = Figure(figsize=(8, 2.6), layout="constrained").subplots()
    unit, unit_name = (1e9, "billions") if summary.counts.total >= 1e9 else (1e6, "millions")
    bars = {"stored": summary.counts.by_part, "used per token": summary.active_parts}
    for row, (label, parts) in enumerate(bars.items()):
        left = 0.0
        for index, part in enumerate(PARTS):
            width = parts[part] / unit
            named = row == 0 and parts[part] > 0
            ax.barh(row, width, left=left, color=f"C{index}", label=part if named else None)
            left += width
    ax.set_yticks(range(len(bars)), list(bars))
    ax.invert_yaxis()
    ax.set_xlabel(f"parameters ({unit_name})")
    ax.set_title("Where the parameters live")
    _legend_outside(ax)
    return ax


def plot_memory(summary: CalculatorSummary, ax=None):
    """Two stacked bars: the bytes inference needs (weights) and training needs
    (weights, gradients and optimiser state), for every parameter, active or not."""
    if ax is None:
        ax = Figure(figsize=(8, 2.0), layout="constrained").subplots()
    unit, unit_name = (1e9, "GB") if summary.training_memory.total >= 1e9 else (1e6, "MB")
    rows = {"inference": summary.inference_memory, "training": summary.training_memory}
    for row, memory in enumerate(rows.values()):
        sizes = {"weights": memory.weights, "gradients": memory.gradients, "optimizer state": memory.optimizer}
        left = 0.0
        for name, size in sizes.items():
            ax.barh(row, size / unit, left=left, color=MEMORY_COLORS[name], label=name if row == 1 else None)
            left += size / unit
    ax.set_yticks(range(len(rows)), list(rows))
    ax.invert_yaxis()
    ax.set_xlabel(f"memory ({unit_name}; activations not included)")
    ax.set_title(f"Memory: {summary.dtype} weights and gradients, float32 {summary.optimizer} state")
    _legend_outside(ax)
    return ax


def draw_calculator_figure(figure: Figure, summary: CalculatorSummary) -> tuple:
    """The calculator's picture on ``figure``: parameters by part above, memory below."""
    ax_parameters, ax_memory = figure.subplots(2, 1, height_ratios=[1.2, 1.0])
    plot_parameter_breakdown(summary, ax_parameters)
    plot_memory(summary, ax_memory)
    return ax_parameters, ax_memory


def calculator_png(summary: CalculatorSummary) -> bytes:
    """The calculator's picture of ``summary`` as PNG bytes (900 x 460 pixels)."""
    return figure_png(lambda figure: draw_calculator_figure(figure, summary), CALCULATOR_FIGSIZE)


# ================================================================ the widget
LABEL_STYLE = {"description_width": "180px"}     # wide enough for every label ("num_shared_experts")
NUMBER_WIDTH = "300px"                           # label and number box
SLIDER_WIDTH = "420px"                           # a track of about 400 pixels
LOG_SLIDER_STEP = 1 / 16                         # a sixteenth of a doubling: about 4.4% a step

# (label, lowest, highest, log scale) of each size control; every preset fits
SIZE_CONTROLS = {
    "vocab_size": ("vocab_size", 2, 262_144, True),
    "d_model": ("d_model", 8, 8192, True),
    "n_layers": ("n_layers", 1, 128, True),
    "n_heads": ("n_heads", 1, 128, True),
    "d_ff": ("d_ff", 8, 32_768, True),
    "num_experts": ("num_experts (0: dense)", 0, 256, True),
    "top_k": ("top_k", 1, 16, False),
    "num_shared_experts": ("num_shared_experts", 0, 8, False),
}
CONTEXT_RANGE = (1, 32_768)


class CountControl:
    """One whole-number setting: a number box (type the exact value) beside a slider (drag it).

    With ``log=True`` the slider moves in equal ratios (a base-2 log scale), so
    8 -> 16 is as long a drag as 1024 -> 2048 and a range of thousands still
    moves a few percent per step.  The number box holds the value that counts;
    the slider follows it.  A log scale cannot show 0: for a range that starts
    at 0, the slider rests at its left end (1) while the box says 0.
    """

    def __init__(self, name: str, description: str, low: int, high: int, value: int, log: bool):
        self.log = log
        self.number = widgets.BoundedIntText(value=value, min=low, max=high, description=description,
                                             style=LABEL_STYLE, layout=widgets.Layout(width=NUMBER_WIDTH))
        slider_options = dict(readout=False, continuous_update=False, layout=widgets.Layout(width=SLIDER_WIDTH))
        if log:
            self.slider = widgets.FloatLogSlider(value=self._position(value), base=2, min=math.log2(max(low, 1)),
                                                 max=math.log2(high), step=LOG_SLIDER_STEP, **slider_options)
        else:
            self.slider = widgets.IntSlider(value=value, min=low, max=high, **slider_options)
        self.number.observe(self._number_changed, names="value")
        self.slider.observe(self._slider_changed, names="value")
        self.widget = widgets.HBox([self.number, self.slider])
        name_for_css({f"control-{name}": self.widget})

    @property
    def value(self) -> int:
        return self.number.value

    @value.setter
    def value(self, value: int) -> None:
        self.number.value = value

    def observe(self, handler) -> None:
        """Call ``handler(change)`` whenever the value changes (typed or dragged)."""
        self.number.observe(handler, names="value")

    def _position(self, value: int):
        """Where the slider stands for ``value``."""
        return float(max(value, 1)) if self.log else value

    def _number_changed(self, change) -> None:
        if self.slider.value != self._position(change["new"]):
            self.slider.value = self._position(change["new"])

    def _slider_changed(self, change) -> None:
        if change["new"] != self._position(self.number.value):
            self.number.value = round(change["new"])


@dataclass(frozen=True)
class CalculatorState:
    """Everything the calculator's controls say, as plain values."""

    preset: str
    sizes: tuple          # (field, value) for each of CALCULATOR_FIELDS
    seq_len: int
    dtype: str


class ParamCalculator:
    """The calculator's controls, its numbers and its picture; display it in a notebook cell.

    ``sliders`` holds one ``CountControl`` per field of ``CALCULATOR_FIELDS``;
    ``report`` shows ``CalculatorSummary.text()`` and ``image`` the figure.
    Redraws run in the background (``wait()`` blocks until they are done).
    """

    def __init__(self, initial: str = "laptop phase 2", seq_len: int = 256, dtype: str = "bfloat16"):
        self.presets = calculator_presets()
        if initial not in self.presets:
            raise ValueError(f"unknown preset {initial!r}; choose one of {', '.join(self.presets)}")
        base = self.presets[initial]
        wide = widgets.Layout(width=f"calc({NUMBER_WIDTH} + {SLIDER_WIDTH})")
        self.picker = widgets.Dropdown(options=list(self.presets), value=initial, description="preset",
                                       style=LABEL_STYLE, layout=wide)
        self.sliders = {name: CountControl(name, label, low, high, getattr(base, name), log)
                        for name, (label, low, high, log) in SIZE_CONTROLS.items()}
        self.seq_len = CountControl("seq_len", "context (tokens)", *CONTEXT_RANGE, seq_len, log=True)
        self.dtype = widgets.Dropdown(options=DTYPES, value=dtype, description="dtype", style=LABEL_STYLE,
                                      layout=widgets.Layout(width=NUMBER_WIDTH))
        self.report = widgets.HTML("<pre>drawing...</pre>")
        self.image = widgets.Image(format="png", layout=widgets.Layout(display="none"))   # shown once drawn
        self._loading_preset = False
        self._redraws = RenderLoop(self._state, self._render, self._show_error)
        self.picker.observe(self._load_preset, names="value")
        for control in [*self.sliders.values(), self.seq_len]:
            control.observe(self._controls_changed)
        self.dtype.observe(self._controls_changed, names="value")
        self.widget = widgets.VBox([self.picker, *(c.widget for c in self.sliders.values()), self.seq_len.widget,
                                    self.dtype, self.report, self.image])
        name_for_css({"calculator": self.widget, "control-preset": self.picker, "control-dtype": self.dtype,
                      "report": self.report, "plot": self.image})
        self._redraws.request()

    # ------------------------------------------------------------ the numbers
    def _state(self) -> CalculatorState:
        return CalculatorState(preset=self.picker.value,
                               sizes=tuple((name, control.value) for name, control in self.sliders.items()),
                               seq_len=self.seq_len.value, dtype=self.dtype.value)

    def _summary_of(self, state: CalculatorState) -> CalculatorSummary:
        cfg = calculator_config(self.presets[state.preset], **dict(state.sizes))
        return calculator_summary(cfg, state.seq_len, state.dtype)

    def config(self) -> ModelConfig:
        """The config the controls describe (``ValueError`` if they do not describe a valid one)."""
        return self.summary().config

    def summary(self) -> CalculatorSummary:
        """The summary of what the controls say now (``ValueError`` for an invalid model)."""
        return self._summary_of(self._state())

    def wait(self, timeout: float | None = 30.0) -> bool:
        """Block until the picture and numbers show the controls' current state."""
        return self._redraws.wait(timeout)

    # ------------------------------------------------------------- the redraw
    def _load_preset(self, _change=None) -> None:
        """Set every size control to the chosen preset's value, then redraw once.

        While the controls are being set, their own redraw requests are skipped
        (half a preset is no model to draw); the flag is cleared before the one
        request at the end, so a change made meanwhile on another thread is still
        read by that request."""
        base = self.presets[self.picker.value]
        self._loading_preset = True
        try:
            for name, control in self.sliders.items():
                control.value = getattr(base, name)
        finally:
            self._loading_preset = False
        self._redraws.request()

    def _controls_changed(self, _change=None) -> None:
        if not self._loading_preset:
            self._redraws.request()

    def _render(self, state: CalculatorState) -> None:
        """Draw ``state`` (runs on the render thread): picture first, then the numbers."""
        try:
            summary = self._summary_of(state)
        except ValueError as why:
            self._show_text(f"not a valid model: {why}", picture=False)
            return
        self.image.value = calculator_png(summary)
        self._show_text(summary.text(), picture=True)

    def _show_error(self, state: CalculatorState, error: Exception) -> None:
        self._show_text(f"redraw failed: {type(error).__name__}: {error}", picture=False)

    def _show_text(self, text: str, picture: bool) -> None:
        self.image.layout.display = None if picture else "none"
        self.report.value = f"<pre>{html.escape(text)}</pre>"

    def _ipython_display_(self) -> None:
        display(self.widget)


def param_calculator(initial: str = "laptop phase 2", seq_len: int = 256, dtype: str = "bfloat16") -> ParamCalculator:
    """Sliders for vocabulary, width, depth, heads, FFN size, experts, top-k and
    shared experts, a preset picker, and the live total / active / efficiency /
    FLOPs / memory of the model they describe, with where the parameters live."""
    return ParamCalculator(initial, seq_len, dtype)
