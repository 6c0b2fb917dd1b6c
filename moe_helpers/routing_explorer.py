"""The routing explorer of notebook 02: choose the number of experts, top-k, the
load-balancing coefficient and the training steps, and see which experts each
token of a sentence goes to.

The numbers come from ``routing_summary`` (tested): it trains a small MoE GPT
once per setting (``functools.lru_cache``), routes the sentence through it and
reads the loads.  ``RoutingExplorer`` only puts controls around it and redraws
through ``widget_rendering`` (a PNG swapped into an Image widget, the latest
state wins), so a burst of slider changes trains one model, not one per tick.
"""

from __future__ import annotations

import functools
import html
import threading
import time
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
from IPython.display import display
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .config import ModelConfig, TrainConfig, preset
from .data import TokenData, prepare_preset_data
from .model import GPT
from .plots import expert_colors
from .train import History, train_phase
from .widget_rendering import RenderLoop, figure_png, name_for_css

SAMPLE_SENTENCE = "Once upon a time, a little girl named Lily found a red ball in the park."
EXPLORER_MAX_EXPERTS = 16
EXPLORER_LOAD_WINDOW = 10          # training steps per log record: the load shown covers the last of them
EXPLORER_MODELS_KEPT = 32          # trained models kept in memory (least recently used dropped first)
EXPLORER_FIGSIZE = (8.0, 3.0)      # inches; 800 x 300 pixels


# ================================================================= the logic
@dataclass(frozen=True)
class ExplorerSettings:
    """What the explorer's model is trained with: equal settings give the same model."""

    num_experts: int
    top_k: int
    aux_loss_coef: float
    steps: int = 40
    seed: int = 0


@dataclass(frozen=True)
class RoutingSummary:
    """Where the tokens of one sentence go in one MoE layer of a small trained model."""

    num_experts: int
    top_k: int
    aux_loss_coef: float
    steps: int                       # training steps the model had
    load_steps: int                  # training steps ``training_load`` covers (0: the untrained model, one batch)
    layer: int                       # which MoE layer is shown
    tokens: list                     # (T,) the sentence's token pieces
    experts: list                    # (T, k) chosen experts of each token, best first
    weights: list                    # (T, k) their gate weights (each row sums to 1: renormalised top-k)
    load: list                       # (E,) share of the sentence's token slots per expert (sums to 1)
    training_load: list              # (E,) share of the token slots per expert over the last ``load_steps`` steps
    final_loss: float                # training loss at the last log step (nats / token)

    @property
    def max_share(self) -> float:
        """The busiest expert's share of the training slots (1/E when perfectly balanced)."""
        return max(self.training_load)

    def load_period(self) -> str:
        """What ``training_load`` covers, in words."""
        if self.load_steps == 0:
            return "one batch before training"
        return f"the last {self.load_steps} training step{'s' if self.load_steps != 1 else ''}"

    def headline(self) -> str:
        """Two lines: the training loss, and how evenly the experts were used."""
        return (f"training loss after {self.steps} steps: {self.final_loss:.3f} nats/token\n"
                f"busiest expert: {100 * self.max_share:.0f}% of the token slots over {self.load_period()} "
                f"(uniform: 1/{self.num_experts} = {100 / self.num_experts:.0f}%)")

    def table(self) -> str:
        """One line per token: the piece, then each chosen expert with its weight."""
        width = max(len(repr(piece)) for piece in self.tokens)
        lines = [f"{'token':<{width}}  experts (gate weight)"]
        for piece, experts, weights in zip(self.tokens, self.experts, self.weights):
            chosen = "  ".join(f"{e:>2} ({w:.2f})" for e, w in zip(experts, weights))
            lines.append(f"{repr(piece):<{width}}  {chosen}")
        return "\n".join(lines)


def check_routing_settings(num_experts: int, top_k: int, aux_loss_coef: float) -> None:
    """Raise ``ValueError`` unless 1 <= top_k <= num_experts and aux_loss_coef >= 0."""
    if not (isinstance(num_experts, int) and num_experts >= 1):
        raise ValueError(f"num_experts must be an integer >= 1, got {num_experts!r}")
    if not (isinstance(top_k, int) and 1 <= top_k <= num_experts):
        raise ValueError(f"top_k must be in 1..num_experts (1..{num_experts}), got {top_k!r}")
    if not aux_loss_coef >= 0:
        raise ValueError(f"aux_loss_coef must be >= 0, got {aux_loss_coef!r}")


def explorer_config(vocab_size: int, num_experts: int, top_k: int, aux_loss_coef: float) -> ModelConfig:
    """The explorer's model: 2 blocks, d_model 64, every FFN an MoE with Mixtral routing
    (Jiang et al. 2024: softmax, top-k, renormalised) and the given Switch load-balancing
    coefficient (Fedus et al. 2021, eq. 4)."""
    return ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=2, d_ff=128,
                       max_seq_len=128, num_experts=num_experts, top_k=top_k,
                       aux_loss_coef=aux_loss_coef)


def load_steps(steps: int) -> int:
    """How many training steps the last log record's load covers (records come every
    ``EXPLORER_LOAD_WINDOW`` steps and at the last step; 0 steps: one untrained batch)."""
    return 0 if steps == 0 else (steps % EXPLORER_LOAD_WINDOW or EXPLORER_LOAD_WINDOW)


@functools.lru_cache(maxsize=1)
def default_explorer_data() -> TokenData:
    """The `laptop` preset's stories and tokens (the notebooks' cache is reused), loaded once."""
    return prepare_preset_data(preset("laptop"))


class SameObject:
    """A cache key for an object that cannot be hashed (``TokenData``): equal only to
    a key for the very same object, so a cache never mixes up two data sets."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, SameObject) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


@functools.lru_cache(maxsize=EXPLORER_MODELS_KEPT)
def _trained_model(data: SameObject, settings: ExplorerSettings) -> tuple[GPT, History]:
    """``train_explorer_model`` remembered by data set and settings."""
    return train_explorer_model(data.obj, settings)


def train_explorer_model(data: TokenData, settings: ExplorerSettings) -> tuple[GPT, History]:
    """Train the explorer's model with ``settings`` (batch 8 x 64 tokens, CPU, seeded)."""
    torch.manual_seed(settings.seed)
    model = GPT(explorer_config(data.tokenizer.vocab_size, settings.num_experts, settings.top_k,
                                settings.aux_loss_coef))
    training = TrainConfig(steps_phase1=settings.steps, lr_phase1=5e-3, batch_size=8, seq_len=64, warmup_steps=5,
                           log_every=EXPLORER_LOAD_WINDOW, eval_every=10 ** 9, eval_batches=1, device="cpu",
                           seed=settings.seed)
    history = train_phase(model, data, training, progress=False, verbose=False)
    return model, history


def trained_explorer_model(data: TokenData, settings: ExplorerSettings) -> tuple[GPT, History]:
    """The explorer's model for ``settings``, trained on the first call and then remembered
    (the ``EXPLORER_MODELS_KEPT`` most recently used), so returning to a setting is instant."""
    return _trained_model(SameObject(data), settings)


# The remembered models are shared by every explorer, and routing attaches a hook to one.
_ROUTING = threading.Lock()


@torch.no_grad()
def _route_sentence(model: GPT, ids: list, layer: int):
    """Top-k experts and gate weights of each token of ``ids`` in MoE layer ``layer``.

    A forward hook catches the layer's input (the normalised hidden states) and
    the layer's own router turns it into weights, so the numbers are exactly
    what the layer used."""
    moe_layer = model.moe_layers[layer]
    caught = {}
    with _ROUTING:
        hook = moe_layer.register_forward_hook(lambda module, inputs, output: caught.update(x=inputs[0]))
        try:
            model.eval()
            routing = model(torch.tensor([ids])).routing[layer]                   # (1, T) -> this layer's stats
        finally:
            hook.remove()
    tokens = caught["x"].reshape(-1, caught["x"].shape[-1])                       # (T, d_model)
    weights, experts = moe_layer.router.route(moe_layer.router.logits(tokens))    # (T, k), (T, k)
    if not torch.equal(experts, routing.top_k_experts):
        raise RuntimeError("the router's choice differs from the one the layer made")
    return weights, experts, routing.load_share                                   # ..., (E,)


def routing_summary(num_experts: int, top_k: int, aux_loss_coef: float, text: str = SAMPLE_SENTENCE, *,
                    steps: int = 40, layer: int = 0, seed: int = 0, data: TokenData | None = None) -> RoutingSummary:
    """Train (or recall) a small MoE GPT with these routing settings for ``steps`` steps,
    route ``text`` through it and say where each token went.

    ``data``: token data to train on (default: the ``laptop`` preset's data,
    ``prepare_preset_data(preset("laptop"))``, loaded once).  ``ValueError`` for ``top_k > num_experts``,
    ``num_experts < 1``, a negative coefficient, an empty text or a layer the model lacks.
    """
    check_routing_settings(num_experts, top_k, aux_loss_coef)
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if layer not in (0, 1):
        raise ValueError(f"layer must be 0 or 1 (the explorer's model has 2 MoE layers), got {layer!r}")
    data = default_explorer_data() if data is None else data
    ids = data.tokenizer.encode(text)[:128]
    if not ids:
        raise ValueError("text is empty: type a sentence to route")
    settings = ExplorerSettings(num_experts, top_k, float(aux_loss_coef), steps, seed)
    model, history = trained_explorer_model(data, settings)
    weights, experts, load = _route_sentence(model, ids, layer)
    last = history.records[-1]
    return RoutingSummary(
        num_experts=num_experts, top_k=top_k, aux_loss_coef=float(aux_loss_coef), steps=steps,
        load_steps=load_steps(steps), layer=layer, tokens=[data.tokenizer.decode([i]) for i in ids],
        experts=experts.tolist(), weights=weights.float().tolist(), load=load.tolist(),
        training_load=list(last["expert_load"][layer]), final_loss=last["train_loss"],
    )


# ================================================================ the figure
def plot_routing_load(summary: RoutingSummary, ax=None):
    """Bars of each expert's share of token slots: during training (coloured by expert)
    and in the sentence (hatched), with the uniform share 1/E dashed; the legend sits
    outside the axes, so it covers no bar."""
    if ax is None:
        ax = Figure(figsize=EXPLORER_FIGSIZE, layout="constrained").subplots()
    experts = np.arange(summary.num_experts)
    ax.bar(experts - 0.2, [100 * s for s in summary.training_load], width=0.4,
           color=expert_colors(summary.num_experts))
    ax.bar(experts + 0.2, [100 * s for s in summary.load], width=0.4, color="none", edgecolor="black", hatch="//")
    ax.axhline(100 / summary.num_experts, color="black", ls="--", lw=1.2)
    ax.set_xticks(experts)
    ax.set_xlabel("expert (index)")
    ax.set_ylabel("share of token slots (%)")
    ax.set_title(f"Expert load, MoE layer {summary.layer}: top-{summary.top_k} of {summary.num_experts}, "
                 f"aux coef {summary.aux_loss_coef:g}, {summary.steps} steps")
    ax.legend(handles=[Patch(facecolor="grey", label=f"{summary.load_period()}\n(bar colour = expert)"),
                       Patch(facecolor="none", edgecolor="black", hatch="//", label="this sentence"),
                       Line2D([], [], color="black", ls="--", label=f"uniform 1/{summary.num_experts}")],
              fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return ax


def explorer_png(summary: RoutingSummary) -> bytes:
    """The explorer's load plot of ``summary`` as PNG bytes (800 x 300 pixels)."""
    return figure_png(lambda figure: plot_routing_load(summary, figure.subplots()), EXPLORER_FIGSIZE)


def routing_table_html(summary: RoutingSummary) -> str:
    """The token -> experts table, each expert in its plot colour."""
    colors = [to_hex(c) for c in expert_colors(summary.num_experts)]
    rows = []
    for piece, experts, weights in zip(summary.tokens, summary.experts, summary.weights):
        chips = " ".join(f'<span class="expert-chip" style="background:{colors[e]};padding:1px 6px;'
                         f'border-radius:4px">{e}: {w:.2f}</span>' for e, w in zip(experts, weights))
        rows.append(f"<tr><td><code>{html.escape(repr(piece))}</code></td><td>{chips}</td></tr>")
    return ("<table><tr><th>token</th><th>experts: gate weight (best first)</th></tr>"
            + "".join(rows) + "</table>")


# ================================================================ the widget
LABEL_STYLE = {"description_width": "160px"}     # wide enough for "aux-loss coefficient"
SLIDER_LAYOUT = {"width": "560px"}               # a track of about 330 pixels


@dataclass(frozen=True)
class ExplorerState:
    """Everything the explorer's controls say."""

    settings: ExplorerSettings
    text: str


class RoutingExplorer:
    """Sliders for experts, top-k, aux-loss coefficient and training steps, a text box,
    and the routing of that text; display it in a notebook cell.

    ``status`` says what is being trained, ``report`` shows the loss, load and the
    token table, ``image`` the load plot.  Sliders act when released; redraws run in
    the background and only the newest setting is trained (``wait()`` blocks until done).
    """

    def __init__(self, num_experts: int = 4, top_k: int = 2, aux_loss_coef: float = 0.01,
                 text: str = SAMPLE_SENTENCE, steps: int = 40, data: TokenData | None = None):
        check_routing_settings(num_experts, top_k, aux_loss_coef)
        if num_experts > EXPLORER_MAX_EXPERTS:
            raise ValueError(f"the explorer offers 1..{EXPLORER_MAX_EXPERTS} experts, got {num_experts}")
        self.data = data
        slider = dict(continuous_update=False, style=LABEL_STYLE, layout=widgets.Layout(**SLIDER_LAYOUT))
        self.experts = widgets.IntSlider(value=num_experts, min=1, max=EXPLORER_MAX_EXPERTS,
                                         description="experts", **slider)
        self.top_k = widgets.IntSlider(value=top_k, min=1, max=num_experts, description="top-k", **slider)
        self.aux_loss_coef = widgets.FloatSlider(value=aux_loss_coef, min=0.0, max=1.0, step=0.01,
                                                 description="aux-loss coefficient", readout_format=".2f", **slider)
        self.steps = widgets.IntSlider(value=steps, min=0, max=200, step=10, description="training steps", **slider)
        self.text = widgets.Text(value=text, description="text", continuous_update=False, style=LABEL_STYLE,
                                 layout=widgets.Layout(width="90%"))
        self.status = widgets.HTML()
        self.report = widgets.HTML()
        self.image = widgets.Image(format="png", layout=widgets.Layout(display="none"))   # shown once drawn
        self._redraws = RenderLoop(self._state, self._render, self._show_error)
        self.experts.observe(self._experts_changed, names="value")
        for control in (self.top_k, self.aux_loss_coef, self.steps, self.text):
            control.observe(self._controls_changed, names="value")
        self.widget = widgets.VBox([self.experts, self.top_k, self.aux_loss_coef, self.steps, self.text,
                                    self.status, self.report, self.image])
        name_for_css({"routing-explorer": self.widget, "control-experts": self.experts, "control-top_k": self.top_k,
                      "control-aux_loss_coef": self.aux_loss_coef, "control-steps": self.steps,
                      "control-text": self.text, "status": self.status, "report": self.report, "plot": self.image})
        self._redraws.request()

    # ------------------------------------------------------------ the numbers
    def _state(self) -> ExplorerState:
        coefficient = round(float(self.aux_loss_coef.value), 6)      # 0.37000000000000005 (slider steps) -> 0.37
        settings = ExplorerSettings(self.experts.value, self.top_k.value, coefficient, self.steps.value)
        return ExplorerState(settings, self.text.value)

    def _summary_of(self, state: ExplorerState) -> RoutingSummary:
        settings = state.settings
        return routing_summary(settings.num_experts, settings.top_k, settings.aux_loss_coef, state.text,
                               steps=settings.steps, seed=settings.seed, data=self.data)

    def summary(self) -> RoutingSummary:
        """The routing of what the controls say now (trains the model if it is new)."""
        return self._summary_of(self._state())

    def wait(self, timeout: float | None = 120.0) -> bool:
        """Block until the picture and numbers show the controls' current state."""
        return self._redraws.wait(timeout)

    # ------------------------------------------------------------- the redraw
    def _experts_changed(self, change) -> None:
        """Keep top-k within 1..experts (lowering ``max`` also lowers a larger value), then redraw."""
        self.top_k.max = change["new"]
        self._redraws.request()

    def _controls_changed(self, _change=None) -> None:
        self._redraws.request()

    def _render(self, state: ExplorerState) -> None:
        """Train if needed and draw ``state`` (runs on the render thread)."""
        settings = state.settings
        self.status.value = (f"<i>working: {settings.num_experts} experts, top-{settings.top_k}, aux coef "
                             f"{settings.aux_loss_coef:g}, {settings.steps} training steps (a new setting trains "
                             f"a model, a second or two)...</i>")
        started = time.perf_counter()
        try:
            summary = self._summary_of(state)
        except ValueError as why:
            self._show(f"cannot route: {html.escape(str(why))}", picture=None)
            self.status.value = ""
            return
        self._show(f"<pre>{html.escape(summary.headline())}</pre>{routing_table_html(summary)}",
                   picture=explorer_png(summary))
        self.status.value = f"ready ({time.perf_counter() - started:.1f} s)"

    def _show_error(self, state: ExplorerState, error: Exception) -> None:
        self._show(f"redraw failed: {html.escape(f'{type(error).__name__}: {error}')}", picture=None)
        self.status.value = "failed"

    def _show(self, report_html: str, picture: bytes | None) -> None:
        """Publish a result: the picture first (or hide it), then the report."""
        if picture is not None:
            self.image.value = picture
        self.image.layout.display = None if picture is not None else "none"
        self.report.value = report_html

    def _ipython_display_(self) -> None:
        display(self.widget)


def routing_explorer(num_experts: int = 4, top_k: int = 2, aux_loss_coef: float = 0.01,
                     text: str = SAMPLE_SENTENCE, steps: int = 40, data: TokenData | None = None) -> RoutingExplorer:
    """Sliders for the number of experts (1-16), top-k (kept within 1..experts) and the
    load-balancing coefficient, a text box, and for that text each token's experts with
    their gate weights and the expert loads.  ``data`` defaults to the ``laptop`` preset's data."""
    return RoutingExplorer(num_experts, top_k, aux_loss_coef, text, steps, data)
