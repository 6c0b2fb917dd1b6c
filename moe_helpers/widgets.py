"""ipywidgets front ends for the notebooks.

Each widget is a thin layer: the computation it shows lives in a plain,
unit-tested function (in this module or in the modules it imports), so the
numbers a learner sees are the numbers the tests check.
"""

from __future__ import annotations


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
        if self._loading:
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        with self.output:
            self.output.clear_output(wait=True)
            try:
                summary = self.summary()
            except ValueError as error:
                print(f"not a valid model: {error}")
                return
            print(summary.text())
            ax = plot_parameter_breakdown(summary)
            display(ax.figure)
            plt.close(ax.figure)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def param_calculator(initial: str = "laptop phase 2", seq_len: int = 256, dtype: str = "bfloat16") -> ParamCalculator:
    """Sliders for vocabulary, width, depth, heads, FFN size, experts, top-k and
    shared experts, a preset picker, and the live total / active / efficiency /
    FLOPs / memory of the model they describe, with a bar of where the parameters live."""
    return ParamCalculator(initial, seq_len, dtype)
