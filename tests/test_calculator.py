"""The parameter calculator (notebook 03): its wording, its figure, its controls, and
its widget under changes from two threads.  (Counts, FLOPs and memory themselves are
tested against real models in ``test_accounting.py``.)"""

from __future__ import annotations

import html
import math
import subprocess
import sys
import textwrap

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from moe_helpers.accounting import count_from_config
from moe_helpers.calculator import (CONTEXT_RANGE, LOG_SLIDER_STEP, SIZE_CONTROLS, CountControl, ParamCalculator,
                                    calculator_config, calculator_png, calculator_presets, calculator_summary,
                                    describe_idle_experts, describe_routing, draw_calculator_figure)
from moe_helpers.config import preset
from concurrent_changes import change_at_once
from plot_pixels import plot_problems

PRESETS = calculator_presets()


# ------------------------------------------------------------------ wording
def test_seed_phase_2_reads_like_the_original_note():
    summary = calculator_summary(preset("seed").phase_configs()[1], seq_len=256, dtype="bfloat16")
    lines = summary.text().splitlines()
    assert lines[0] == "total parameters       371.60 M  (8 experts in each of 7 MoE layers, top-2 routing)"
    assert lines[1] == "active per token       138.87 M  (efficiency 37.4%)"
    assert lines[2] == "idle per token        42 expert-layers: 6 of 8 experts in each of 7 MoE layers"
    assert lines[4] == "memory, inference      743.19 MB  (bfloat16 weights)"


def test_idle_experts_are_summed_over_the_moe_layers_only():
    deepseek = PRESETS["DeepSeekMoE-16B"]                    # 64 experts, top-6, first block dense
    counts = count_from_config(deepseek)
    assert counts.moe_layers == deepseek.n_layers - deepseek.first_k_dense == 27
    assert describe_idle_experts(counts) == "1566 expert-layers: 58 of 64 experts in each of 27 MoE layers"
    assert describe_routing(deepseek, counts) == ("64 experts + 2 shared in each of 27 MoE layers, top-6 routing, "
                                                  "first 1 block(s) dense")
    one_layer = calculator_config(PRESETS["laptop phase 2"], n_layers=1)
    assert (describe_idle_experts(count_from_config(one_layer))
            == "2 expert-layers: 2 of 4 experts in each of 1 MoE layer")


def test_a_dense_model_has_no_idle_experts():
    counts = count_from_config(PRESETS["laptop phase 1"])
    assert describe_idle_experts(counts) == "none: a dense model uses every parameter for every token"
    assert describe_routing(PRESETS["laptop phase 1"], counts) == "dense: one FFN per block"


# ------------------------------------------------------------------ figure
def _overlaps(box, other) -> bool:
    return box.x0 < other.x1 and other.x0 < box.x1 and box.y0 < other.y1 and other.y0 < box.y1


@pytest.mark.parametrize("name", ["laptop phase 1", "seed phase 2", "DeepSeekMoE-16B"])
def test_legends_cover_no_axes_and_stay_inside_the_figure(name):
    summary = calculator_summary(PRESETS[name])
    figure = Figure(figsize=(9.0, 4.6), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = draw_calculator_figure(figure, summary)
    canvas.draw()
    renderer = canvas.get_renderer()
    figure_box = figure.bbox
    for ax in axes:
        legend_box = ax.get_legend().get_window_extent(renderer)
        assert not any(_overlaps(legend_box, other.get_window_extent(renderer)) for other in axes)
        assert figure_box.x0 <= legend_box.x0 and legend_box.x1 <= figure_box.x1
        assert figure_box.y0 <= legend_box.y0 and legend_box.y1 <= figure_box.y1
    # the longest bar (stored parameters) ends left of its legend
    parameters = axes[0]
    longest = max(patch.get_window_extent(renderer).x1 for patch in parameters.patches)
    assert longest < parameters.get_legend().get_window_extent(renderer).x0


def test_the_legend_names_only_the_parts_the_model_has():
    dense = draw_calculator_figure(Figure(), calculator_summary(PRESETS["laptop phase 1"]))[0]
    assert [t.get_text() for t in dense.get_legend().get_texts()] == [
        "embedding", "lm_head", "attention", "norms", "dense_ffn"]
    moe = draw_calculator_figure(Figure(), calculator_summary(PRESETS["laptop phase 2"]))[0]
    assert [t.get_text() for t in moe.get_legend().get_texts()] == [
        "embedding", "lm_head", "attention", "norms", "router", "experts"]


def test_memory_bars_follow_the_dtype():
    cfg = PRESETS["laptop phase 2"]
    for dtype, bytes_per_weight in [("float32", 4), ("bfloat16", 2)]:
        memory = draw_calculator_figure(Figure(), calculator_summary(cfg, dtype=dtype))[1]
        widths = [patch.get_width() for patch in memory.patches]          # inference 3 parts, training 3
        total = count_from_config(cfg).total
        assert widths[0] == pytest.approx(bytes_per_weight * total / 1e6)                      # MB
        assert sum(widths[3:]) == pytest.approx((2 * bytes_per_weight + 8) * total / 1e6)     # + AdamW
        assert dtype in memory.get_title()


@pytest.mark.parametrize("name", ["laptop phase 1", "Mixtral-8x7B"])
def test_calculator_png_is_a_complete_two_panel_plot(name):
    assert plot_problems(calculator_png(calculator_summary(PRESETS[name])), expected_axes=2) == []


# ------------------------------------------------------------------ controls
def test_log_sliders_move_a_few_percent_per_step_and_cover_every_preset():
    assert 2 ** LOG_SLIDER_STEP - 1 < 0.05
    for name, (label, low, high, log) in SIZE_CONTROLS.items():
        values = [getattr(cfg, name) for cfg in PRESETS.values()]
        assert low <= min(values) and max(values) <= high, name
        if log:
            assert high / max(low, 1) >= 100, f"{name}: a log scale for a range of only {low}..{high}"
        else:
            assert high - low <= 16, f"{name}: a linear slider over {high - low + 1} values"
    assert CONTEXT_RANGE == (1, 32_768)


def test_count_control_keeps_box_and_log_slider_together():
    control = CountControl("d_model", "d_model", 8, 8192, 512, log=True)
    assert control.slider.value == 512.0
    assert (control.slider.min, control.slider.max) == (3.0, 13.0)           # 2**3 .. 2**13
    control.value = 1000                                                     # typed
    assert control.slider.value == 1000.0
    control.slider.value = 2 ** 10.3                                         # dragged: 1260.9
    assert control.value == 1261
    assert control.slider.value == 1261.0                                    # snapped to the box's value
    control.slider.value = 2 ** 20                                           # past the end: clamped
    assert control.value == 8192


def test_count_control_from_zero_keeps_a_typed_zero():
    control = CountControl("num_experts", "num_experts (0: dense)", 0, 256, 8, log=True)
    control.value = 0
    assert control.value == 0 and control.slider.value == 1.0               # the slider rests at its left end
    control.slider.value = 4.0
    assert control.value == 4


def test_count_control_linear_slider():
    control = CountControl("top_k", "top_k", 1, 16, 2, log=False)
    control.slider.value = 7
    assert control.value == 7
    control.value = 3
    assert control.slider.value == 3


# ------------------------------------------------------------------ the widget
def report_of(summary) -> str:
    return f"<pre>{html.escape(summary.text())}</pre>"


def test_calculator_shows_the_numbers_and_picture_of_its_controls():
    calculator = ParamCalculator("seed phase 2", seq_len=256)
    assert calculator.wait()
    expected = calculator_summary(PRESETS["seed phase 2"], 256, "bfloat16")
    assert calculator.report.value == report_of(expected)
    assert calculator.image.value == calculator_png(expected)
    calculator.picker.value = "laptop phase 2"                              # one redraw for eight controls
    calculator.sliders["num_experts"].value = 8
    assert calculator.wait()
    expected = calculator_summary(PRESETS["laptop phase 2"].replace(num_experts=8), 256, "bfloat16")
    assert calculator.report.value == report_of(expected)
    assert calculator.image.value == calculator_png(expected)
    assert calculator.image.layout.display is None


def test_calculator_explains_an_invalid_model_and_hides_the_picture():
    calculator = ParamCalculator("laptop phase 2")
    calculator.sliders["top_k"].value = 5                                   # 4 experts
    assert calculator.wait()
    assert calculator.report.value.startswith("<pre>not a valid model: top_k must be an integer in 1..num_experts")
    assert calculator.image.layout.display == "none"
    calculator.sliders["num_experts"].value = 0                             # dense: top_k no longer matters
    assert calculator.wait()
    dense = calculator_config(PRESETS["laptop phase 2"], num_experts=0, top_k=5)
    assert not dense.is_moe and count_from_config(dense) == count_from_config(PRESETS["laptop phase 1"])
    assert calculator.report.value == report_of(calculator_summary(dense, 256, "bfloat16"))
    assert calculator.image.layout.display is None


@pytest.mark.slow
def test_calculator_changed_from_two_threads_at_once_shows_the_final_state():
    calculator = ParamCalculator("laptop phase 2")
    assert calculator.wait()
    failures = change_at_once([(calculator.sliders["vocab_size"], [4096, 512, 8192, 1024]),
                               (calculator.dtype, ["float32", "float16", "float32"])])
    assert calculator.wait()
    assert failures == []
    expected = calculator_summary(PRESETS["laptop phase 2"].replace(vocab_size=1024), 256, "float32")
    assert calculator.summary() == expected
    assert calculator.report.value == report_of(expected)
    assert calculator.image.value == calculator_png(expected)


def test_every_calculator_control_acts_on_release():
    calculator = ParamCalculator("laptop phase 2")
    controls = [*calculator.sliders.values(), calculator.seq_len]
    assert all(not control.slider.continuous_update for control in controls)
    assert all(not control.number.continuous_update for control in controls)
    assert math.isclose(calculator.seq_len.slider.value, 256)
    calculator.wait()


@pytest.mark.multiprocess
def test_python_finishes_a_redraw_before_it_exits():
    """A redraw still running when Python exits is finished first (a render thread killed
    inside matplotlib's C++ code at exit can abort the process: pytest's own exit did)."""
    script = textwrap.dedent("""
        import atexit
        from moe_helpers.calculator import ParamCalculator
        calculator = ParamCalculator("Mixtral-8x7B")
        calculator.sliders["top_k"].value = 1
        atexit.register(lambda: print("drawn:", "top-1 routing" in calculator.report.value,
                                      len(calculator.image.value) > 0))
    """)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip() == "drawn: True True"


def test_the_all_to_all_line_uses_the_accounting_formula():
    from moe_helpers.accounting import all_to_all_bytes
    from moe_helpers.calculator import expert_ranks

    mixtral = PRESETS["Mixtral-8x7B"]                                    # 8 experts, top-2, d_model 4096
    summary = calculator_summary(mixtral, dtype="bfloat16")
    assert expert_ranks(mixtral) == 8
    assert summary.all_to_all == all_to_all_bytes(1000, 2, 4096, 2, 8) == 2 * 1000 * 2 * 4096 * 2 * 7 / 8
    assert summary.text().splitlines()[-1] == ("all-to-all              28.67 MB per MoE layer per 1,000 tokens, "
                                               "forward (bfloat16, experts over 8 ranks)")
    assert expert_ranks(PRESETS["DeepSeekMoE-16B"]) == 8 and expert_ranks(PRESETS["Phi-3.5-MoE"]) == 8
    assert expert_ranks(calculator_config(PRESETS["laptop phase 2"], num_experts=6)) == 6
    assert calculator_summary(PRESETS["laptop phase 1"]).text().splitlines()[-1].endswith("no experts to spread over ranks")
