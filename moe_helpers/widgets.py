"""ipywidgets front ends for the notebooks.

Each widget is a thin layer: the computation it shows lives in a plain,
unit-tested function (in this module or in the modules it imports), so the
numbers a learner sees are the numbers the tests check.
"""

from __future__ import annotations


def _redraw(output, compute, show, refusal: str) -> None:
    """Clear a widget's ``output`` and ``show(compute())`` in it.

    Both front ends redraw this way; a ``ValueError`` from ``compute`` (settings
    that describe no valid model) is printed as ``refusal: why`` instead."""
    with output:
        output.clear_output(wait=True)
        try:
            result = compute()
        except ValueError as error:
            print(f"{refusal}: {error}")
            return
        show(result)


def _display_figure(figure) -> None:
    """Show a matplotlib figure once, then close it so redraws do not pile figures up."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    display(figure)
    plt.close(figure)


# =========================================================== param_calculator
# Notebook 03: pick a model, move the sliders, read what it stores and what
# each token uses.  The numbers come from ``calculator_summary`` (tested);
# ``param_calculator`` only draws controls around it.
from dataclasses import dataclass as _dataclass

from .accounting import (PARTS, Flops, Memory, ParameterCounts, count_from_config,
                         flops_per_token, memory_bytes)
from .config import ModelConfig, preset
from .real_models import PUBLISHED_MODELS

CALCULATOR_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff",
                     "num_experts", "top_k", "num_shared_experts")


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


@_dataclass(frozen=True)
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

    def text(self) -> str:
        """The summary as a few aligned lines."""
        counts = self.counts
        kind = (f"top-{counts.top_k} of {counts.num_experts} experts, {counts.experts_idle} idle per token"
                if counts.is_moe else "dense")
        return "\n".join([
            f"total parameters      {_human(counts.total, 'B')}  ({kind})",
            f"active per token      {_human(counts.active, 'B')}  (efficiency {counts.efficiency:.1f}%)",
            f"forward FLOPs/token   {_human(self.flops.forward)}FLOP at {self.seq_len} tokens of context"
            f"  (training: {_human(self.flops.training)}FLOP)",
            f"memory, inference     {_human(self.inference_memory.total)}B  ({self.dtype} weights)",
            f"memory, training      {_human(self.training_memory.total)}B  ({self.dtype} weights and"
            f" gradients, float32 {self.optimizer} state)",
        ])


def _human(value: float, giga: str = "G") -> str:
    """1234567 -> '1.23 M' (K, M, G, T; parameter counts say B for billions)."""
    for scale, suffix in ((1e12, "T"), (1e9, giga), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:7.2f} {suffix}"
    return f"{value:7.0f} "


def calculator_summary(cfg: ModelConfig, seq_len: int = 256, dtype: str = "bfloat16",
                       optimizer: str = "adamw") -> CalculatorSummary:
    """Counts, active parts, FLOPs per token and memory of ``cfg`` (no allocation)."""
    counts = count_from_config(cfg)
    return CalculatorSummary(
        config=cfg, counts=counts, active_parts=active_by_part(counts),
        flops=flops_per_token(cfg, seq_len),
        training_memory=memory_bytes(cfg, dtype, optimizer),
        inference_memory=memory_bytes(cfg, dtype, optimizer=None),
        seq_len=seq_len, dtype=dtype, optimizer=optimizer,
    )


def plot_parameter_breakdown(summary: CalculatorSummary, ax=None):
    """Two stacked bars: the parameters the model stores and those one token uses, by part."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2.6))
    unit, unit_name = (1e9, "billions") if summary.counts.total >= 1e9 else (1e6, "millions")
    bars = {"stored": summary.counts.by_part, "used per token": summary.active_parts}
    for row, (label, parts) in enumerate(bars.items()):
        left = 0.0
        for index, part in enumerate(PARTS):
            width = parts[part] / unit
            ax.barh(row, width, left=left, color=f"C{index}", label=part if row == 0 else None)
            left += width
    ax.set_yticks(range(len(bars)), list(bars))
    ax.invert_yaxis()
    ax.set_xlabel(f"parameters ({unit_name})")
    ax.set_title("Where the parameters live")
    ax.legend(ncol=4, fontsize=8, loc="lower right")
    return ax


_SLIDER_RANGES = {  # (min, max) of each control; every preset fits
    "vocab_size": (2, 262144), "d_model": (8, 8192), "n_layers": (1, 128), "n_heads": (1, 128),
    "d_ff": (8, 32768), "num_experts": (0, 256), "top_k": (1, 16), "num_shared_experts": (0, 8),
}


class ParamCalculator:
    """The calculator's controls and output; display it in a notebook cell."""

    def __init__(self, initial: str = "laptop phase 2", seq_len: int = 256, dtype: str = "bfloat16"):
        import ipywidgets as widgets

        self.presets = calculator_presets()
        if initial not in self.presets:
            raise ValueError(f"unknown preset {initial!r}; choose one of {', '.join(self.presets)}")
        self.picker = widgets.Dropdown(options=list(self.presets), value=initial, description="preset")
        self.sliders = {
            name: widgets.IntSlider(min=low, max=high, description=name, continuous_update=False,
                                    style={"description_width": "120px"})
            for name, (low, high) in _SLIDER_RANGES.items()
        }
        self.seq_len = widgets.IntSlider(value=seq_len, min=1, max=32768, description="context (tokens)",
                                         continuous_update=False, style={"description_width": "120px"})
        self.dtype = widgets.Dropdown(options=["float32", "bfloat16", "float16"], value=dtype,
                                      description="dtype")
        self.output = widgets.Output()
        self._loading = False
        self.picker.observe(self._load_preset, names="value")
        for control in [*self.sliders.values(), self.seq_len, self.dtype]:
            control.observe(self._refresh, names="value")
        self.widget = widgets.VBox([self.picker, *self.sliders.values(), self.seq_len, self.dtype, self.output])
        self._load_preset()

    def config(self) -> ModelConfig:
        """The config the controls describe (``ValueError`` if they do not describe a valid one)."""
        values = {name: slider.value for name, slider in self.sliders.items()}
        return calculator_config(self.presets[self.picker.value], **values)

    def summary(self) -> CalculatorSummary:
        return calculator_summary(self.config(), self.seq_len.value, self.dtype.value)

    def _load_preset(self, _change=None) -> None:
        base = self.presets[self.picker.value]
        self._loading = True
        for name, slider in self.sliders.items():
            slider.value = getattr(base, name)
        self._loading = False
        self._refresh()

    def _refresh(self, _change=None) -> None:
        if not self._loading:
            _redraw(self.output, self.summary, self._show, refusal="not a valid model")

    @staticmethod
    def _show(summary: CalculatorSummary) -> None:
        print(summary.text())
        _display_figure(plot_parameter_breakdown(summary).figure)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def param_calculator(initial: str = "laptop phase 2", seq_len: int = 256, dtype: str = "bfloat16") -> ParamCalculator:
    """Sliders for vocabulary, width, depth, heads, FFN size, experts, top-k and
    shared experts, a preset picker, and the live total / active / efficiency /
    FLOPs / memory of the model they describe, with a bar of where the parameters live."""
    return ParamCalculator(initial, seq_len, dtype)


# ============================================================ routing_explorer
# Notebook 02: choose the number of experts, top-k and the load-balancing
# coefficient, and see which experts each token of a sentence goes to.  The
# numbers come from ``routing_summary`` (tested); ``routing_explorer`` only
# draws controls around it.
import functools as _functools
from collections import OrderedDict as _OrderedDict
from dataclasses import dataclass as _routing_dataclass

import torch as _torch

from .config import ModelConfig, TrainConfig, preset
from .data import TokenData, prepare_preset_data
from .model import GPT
from .plots import expert_colors
from .train import train_phase

SAMPLE_SENTENCE = "Once upon a time, a little girl named Lily found a red ball in the park."
EXPLORER_MAX_EXPERTS = 16
EXPLORER_LOAD_WINDOW = 10          # the training load shown is summed over this many last steps


@_routing_dataclass(frozen=True)
class RoutingSummary:
    """Where the tokens of one sentence go in one MoE layer of a small trained model."""

    num_experts: int
    top_k: int
    aux_loss_coef: float
    steps: int                       # training steps the model had
    layer: int                       # which MoE layer is shown
    tokens: list                     # (T,) the sentence's token pieces
    experts: list                    # (T, k) chosen experts of each token, best first
    weights: list                    # (T, k) their gate weights (each row sums to 1: renormalised top-k)
    load: list                       # (E,) share of the sentence's token slots per expert (sums to 1)
    training_load: list              # (E,) share of the token slots per expert over the last training steps
    final_loss: float                # training loss at the last log step (nats / token)

    @property
    def max_share(self) -> float:
        """The busiest expert's share over the last training steps (1/E when perfectly balanced)."""
        return max(self.training_load)

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


@_functools.lru_cache(maxsize=1)
def _default_data() -> TokenData:
    """The `laptop` preset's stories and tokens (the notebooks' cache is reused), loaded once."""
    return prepare_preset_data(preset("laptop"))


class _TrainedModels:
    """The explorer's trained models, kept in memory by their settings so that moving a
    slider back to a setting seen before is instant (least recently used dropped first)."""

    def __init__(self, size: int = 32):
        self.size, self.entries = size, _OrderedDict()

    def get(self, data: TokenData, settings: tuple):
        key = (id(data), settings)
        if key in self.entries and self.entries[key][0] is data:
            self.entries.move_to_end(key)
            return self.entries[key][1]
        model, history = _train_explorer_model(data, *settings)
        self.entries[key] = (data, (model, history))
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return model, history


def _train_explorer_model(data: TokenData, num_experts, top_k, aux_loss_coef, steps, seed):
    """Train the explorer's model for ``steps`` steps (batch 8 x 64 tokens, CPU)."""
    _torch.manual_seed(seed)
    model = GPT(explorer_config(data.tokenizer.vocab_size, num_experts, top_k, aux_loss_coef))
    settings = TrainConfig(steps_phase1=steps, lr_phase1=5e-3, batch_size=8, seq_len=64, warmup_steps=5,
                           log_every=EXPLORER_LOAD_WINDOW, eval_every=10 ** 9, eval_batches=1, device="cpu",
                           seed=seed)
    history = train_phase(model, data, settings, progress=False, verbose=False)
    return model, history


_TRAINED_EXPLORER_MODELS = _TrainedModels()


@_torch.no_grad()
def _route_sentence(model: GPT, ids: list, layer: int):
    """Top-k experts and gate weights of each token of ``ids`` in MoE layer ``layer``.

    A forward hook catches the layer's input (the normalised hidden states) and
    the layer's own router turns it into weights, so the numbers are exactly
    what the layer used."""
    moe_layer = model.moe_layers[layer]
    caught = {}
    hook = moe_layer.register_forward_hook(lambda module, inputs, output: caught.update(x=inputs[0]))
    try:
        model.eval()
        routing = model(_torch.tensor([ids])).routing[layer]                      # (1, T) -> this layer's stats
    finally:
        hook.remove()
    tokens = caught["x"].reshape(-1, caught["x"].shape[-1])                       # (T, d_model)
    weights, experts = moe_layer.router.route(moe_layer.router.logits(tokens))    # (T, k), (T, k)
    assert _torch.equal(experts, routing.top_k_experts)
    return weights, experts, routing.load_share                                   # ..., (E,)


def routing_summary(num_experts: int, top_k: int, aux_loss_coef: float, text: str = SAMPLE_SENTENCE, *,
                    steps: int = 40, layer: int = 0, seed: int = 0, data: TokenData | None = None) -> RoutingSummary:
    """Train (or fetch from the in-process cache) a small MoE GPT with these routing
    settings for ``steps`` steps, route ``text`` through it and say where each token went.

    ``data``: token data to train on (default: the ``laptop`` preset's data,
    ``prepare_preset_data(preset("laptop"))``, loaded once).  ``ValueError`` for ``top_k > num_experts``,
    ``num_experts < 1``, a negative coefficient, an empty text or a layer the model lacks.
    """
    check_routing_settings(num_experts, top_k, aux_loss_coef)
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if layer not in (0, 1):
        raise ValueError(f"layer must be 0 or 1 (the explorer's model has 2 MoE layers), got {layer!r}")
    data = _default_data() if data is None else data
    ids = data.tokenizer.encode(text)[:128]
    if not ids:
        raise ValueError("text is empty: type a sentence to route")
    model, history = _TRAINED_EXPLORER_MODELS.get(data, (num_experts, top_k, float(aux_loss_coef), steps, seed))
    weights, experts, load = _route_sentence(model, ids, layer)
    last = history.records[-1]
    return RoutingSummary(
        num_experts=num_experts, top_k=top_k, aux_loss_coef=float(aux_loss_coef), steps=steps, layer=layer,
        tokens=[data.tokenizer.decode([i]) for i in ids], experts=experts.tolist(),
        weights=weights.float().tolist(), load=load.tolist(),
        training_load=list(last["expert_load"][layer]), final_loss=last["train_loss"],
    )


def plot_routing_load(summary: RoutingSummary, ax=None):
    """Bars of each expert's share of token slots: the sentence and the last training steps,
    with the uniform share 1/E dashed."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 2.8))
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    experts = _torch.arange(summary.num_experts).float()
    ax.bar(experts - 0.2, [100 * s for s in summary.training_load], width=0.4, color=expert_colors(summary.num_experts))
    ax.bar(experts + 0.2, [100 * s for s in summary.load], width=0.4, color="none", edgecolor="black", hatch="//")
    ax.axhline(100 / summary.num_experts, color="black", ls="--", lw=1.2)
    ax.set_xticks(range(summary.num_experts))
    ax.set_xlabel("expert (index)")
    ax.set_ylabel("share of token slots (%)")
    ax.set_title(f"Expert load, MoE layer {summary.layer}: top-{summary.top_k} of {summary.num_experts}, "
                 f"aux coef {summary.aux_loss_coef:g}, {summary.steps} steps")
    ax.legend(handles=[Patch(facecolor="grey", label=f"last {EXPLORER_LOAD_WINDOW} training steps\n(bar colour = expert)"),
                       Patch(facecolor="none", edgecolor="black", hatch="//", label="this sentence"),
                       Line2D([], [], color="black", ls="--", label="uniform 1/E")],
              fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def _routing_table_html(summary: RoutingSummary) -> str:
    """The token -> experts table, each expert in its plot colour."""
    import html
    from matplotlib.colors import to_hex

    colors = [to_hex(c) for c in expert_colors(summary.num_experts)]
    rows = []
    for piece, experts, weights in zip(summary.tokens, summary.experts, summary.weights):
        chips = " ".join(f'<span style="background:{colors[e]};padding:1px 6px;border-radius:4px">'
                         f"{e}: {w:.2f}</span>" for e, w in zip(experts, weights))
        rows.append(f"<tr><td><code>{html.escape(repr(piece))}</code></td><td>{chips}</td></tr>")
    return ("<table><tr><th>token</th><th>experts: gate weight (best first)</th></tr>"
            + "".join(rows) + "</table>")


class RoutingExplorer:
    """Sliders for experts, top-k, aux-loss coefficient and training steps, a text box,
    and the routing of that text; display it in a notebook cell."""

    def __init__(self, num_experts: int = 4, top_k: int = 2, aux_loss_coef: float = 0.01,
                 text: str = SAMPLE_SENTENCE, steps: int = 40, data: TokenData | None = None):
        import ipywidgets as widgets

        check_routing_settings(num_experts, top_k, aux_loss_coef)
        if num_experts > EXPLORER_MAX_EXPERTS:
            raise ValueError(f"the explorer offers 1..{EXPLORER_MAX_EXPERTS} experts, got {num_experts}")
        self.data = data
        style = {"description_width": "140px"}
        self.experts = widgets.IntSlider(value=num_experts, min=1, max=EXPLORER_MAX_EXPERTS, description="experts",
                                         continuous_update=False, style=style)
        self.top_k = widgets.IntSlider(value=top_k, min=1, max=num_experts, description="top-k",
                                       continuous_update=False, style=style)
        self.aux_loss_coef = widgets.FloatSlider(value=aux_loss_coef, min=0.0, max=1.0, step=0.01,
                                                 description="aux-loss coefficient", readout_format=".2f",
                                                 continuous_update=False, style=style)
        self.steps = widgets.IntSlider(value=steps, min=0, max=200, step=10, description="training steps",
                                       continuous_update=False, style=style)
        self.text = widgets.Text(value=text, description="text", continuous_update=False, style=style,
                                 layout=widgets.Layout(width="90%"))
        self.output = widgets.Output()
        self._syncing = False
        self.experts.observe(self._experts_changed, names="value")
        for control in (self.top_k, self.aux_loss_coef, self.steps, self.text):
            control.observe(self._refresh, names="value")
        self.widget = widgets.VBox([self.experts, self.top_k, self.aux_loss_coef, self.steps, self.text, self.output])
        self._refresh()

    def summary(self) -> RoutingSummary:
        return routing_summary(self.experts.value, self.top_k.value, self.aux_loss_coef.value, self.text.value,
                               steps=self.steps.value, data=self.data)

    def _experts_changed(self, change) -> None:
        """Keep top-k within 1..experts (lowering ``max`` also lowers a larger value), then redraw once."""
        self._syncing = True
        self.top_k.max = change["new"]
        self._syncing = False
        self._refresh()

    def _refresh(self, _change=None) -> None:
        if not self._syncing:
            _redraw(self.output, self.summary, self._show, refusal="cannot route")

    @staticmethod
    def _show(summary: RoutingSummary) -> None:
        from IPython.display import HTML, display

        print(f"training loss after {summary.steps} steps: {summary.final_loss:.3f} nats/token; "
              f"busiest expert {100 * summary.max_share:.0f}% of the slots (uniform {100 / summary.num_experts:.0f}%)")
        display(HTML(_routing_table_html(summary)))
        _display_figure(plot_routing_load(summary).figure)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def routing_explorer(num_experts: int = 4, top_k: int = 2, aux_loss_coef: float = 0.01,
                     text: str = SAMPLE_SENTENCE, steps: int = 40, data: TokenData | None = None) -> RoutingExplorer:
    """Sliders for the number of experts (1-16), top-k (kept within 1..experts) and the
    load-balancing coefficient, a text box, and for that text each token's experts with
    their gate weights and the expert loads.  ``data`` defaults to the ``laptop`` preset's data."""
    return RoutingExplorer(num_experts, top_k, aux_loss_coef, text, steps, data)
