"""The course's diagrams (``moe_helpers.figures``): every one renders to a PNG
that fills its canvas, has a title, keeps its text readable, inside the canvas,
apart and inside its boxes, and the numbers the routing diagram prints add up.

Each diagram is rendered once, at a low resolution, for the whole module."""

import io
import itertools
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

from moe_helpers import figures
from moe_helpers.figures import (ALL_FIGURES, SMALL_SIZE, capacity_and_dropping, depth_growth, example_capacity,
                                 example_expert_parallel, example_routing, expert_parallel_all_to_all,
                                 grouped_query_attention, routing_and_dispatch, save_all, shared_and_routed_experts,
                                 upcycling, width_growth)
from plot_pixels import INK, decode_png

DPI = 60                 # enough to see where the ink is, cheap to render
GRID = (2, 3)            # rows, columns: the canvas is cut into these cells, and every cell needs ink
MIN_CELL_INK = 0.01      # share of a cell's pixels that must be ink (the diagrams: 2 % or more; blank: 0)
MIN_INK = 0.06           # share of the whole picture that must be ink
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def render(figure: Figure, dpi: int = DPI) -> np.ndarray:
    """The figure saved as a PNG and read back: (height, width, 3) pixels."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return decode_png(buffer.getvalue())


def ink_of(pixels: np.ndarray) -> np.ndarray:
    """Where the picture is not (near) white background: (height, width) booleans."""
    return (pixels < INK).any(axis=2)


def empty_cells(pixels: np.ndarray, grid=GRID, min_ink: float = MIN_CELL_INK) -> list[tuple[int, int]]:
    """(row, column) of every grid cell with (almost) no ink: a large blank area of the canvas."""
    ink = ink_of(pixels)
    empty = []
    for row, band in enumerate(np.array_split(ink, grid[0], axis=0)):
        for column, cell in enumerate(np.array_split(band, grid[1], axis=1)):
            if cell.mean() < min_ink:
                empty.append((row, column))
    return empty


class Drawn(NamedTuple):
    pictures: dict              # {name: (figure, pixels)}
    pyplot_before: list         # the figure numbers pyplot knew before they were drawn
    pyplot_after: list          # and after


@pytest.fixture(scope="module")
def drawn() -> Drawn:
    """Every diagram of ALL_FIGURES, drawn and rendered once."""
    before = plt.get_fignums()
    pictures = {}
    for name, draw in ALL_FIGURES.items():
        figure = draw()
        pictures[name] = (figure, render(figure))
    return Drawn(pictures, before, plt.get_fignums())


# ------------------------------------------------------------ text geometry
def texts_of(figure: Figure) -> list:
    """Every visible, non-empty text of the figure (title included)."""
    texts = list(figure.texts) + [text for ax in figure.axes for text in ax.texts]
    return [text for text in texts if text.get_visible() and text.get_text().strip()]


def overlap(a, b, tolerance: float = 1.0) -> bool:
    """Whether two pixel extents share more than ``tolerance`` pixels each way."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance and min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance


def inside(inner, outer, margin: float = 0.0) -> bool:
    return (outer.x0 + margin <= inner.x0 and inner.x1 <= outer.x1 - margin
            and outer.y0 + margin <= inner.y0 and inner.y1 <= outer.y1 - margin)


def layout_problems(figure: Figure) -> list[str]:
    """Text that is too small or leaves the canvas; text that overlaps other text, spills out of
    its own box or runs across the edge of another; boxes that overlap without one holding the other.

    Measured in pixels at the test resolution ``DPI`` (the figure is set to it), where text
    laid out for the rendered PNG, mathtext above all, is already cached."""
    figure.set_dpi(DPI)
    renderer = FigureCanvasAgg(figure).get_renderer()
    texts = texts_of(figure)
    extents = [text.get_window_extent(renderer) for text in texts]
    boxes = [(patch.get_gid(), patch.get_window_extent(renderer)) for ax in figure.axes for patch in ax.patches
             if isinstance(patch, FancyBboxPatch) and patch.get_gid()]
    own_box = dict(boxes)
    problems = []
    for text, extent in zip(texts, extents):
        name = repr(text.get_text())
        if text.get_fontsize() < SMALL_SIZE:
            problems.append(f"{name} is {text.get_fontsize()} pt")
        if not inside(extent, figure.bbox):
            problems.append(f"{name} leaves the canvas")
        if text.get_gid() in own_box and not inside(extent, own_box[text.get_gid()], margin=1):
            problems.append(f"{name} does not fit inside its box")
        for gid, box in boxes:
            if gid != text.get_gid() and overlap(extent, box) and not inside(extent, box):
                problems.append(f"{name} runs across the edge of box {gid}")
    for (first, a), (second, b) in itertools.combinations(zip(texts, extents), 2):
        if overlap(a, b):
            problems.append(f"{first.get_text()!r} overlaps {second.get_text()!r}")
    for (first, a), (second, b) in itertools.combinations(boxes, 2):
        if overlap(a, b) and not inside(a, b) and not inside(b, a):
            problems.append(f"boxes {first} and {second} overlap")
    return problems


# ------------------------------------------------------- every diagram
@pytest.mark.parametrize("name", ALL_FIGURES)
def test_each_diagram_is_a_figure_of_notebook_size_with_a_title(drawn, name):
    figure, _ = drawn.pictures[name]
    assert isinstance(figure, Figure)
    assert figure.get_suptitle().strip()
    width, height = figure.get_size_inches()
    assert 8 <= width <= 11 and 3 <= height <= 6, (width, height)


@pytest.mark.parametrize("name", ALL_FIGURES)
def test_each_diagram_is_not_blank(drawn, name):
    _, pixels = drawn.pictures[name]
    assert ink_of(pixels).mean() > MIN_INK


@pytest.mark.parametrize("name", ALL_FIGURES)
def test_each_diagram_fills_its_canvas(drawn, name):
    _, pixels = drawn.pictures[name]
    assert empty_cells(pixels) == []


@pytest.mark.parametrize("name", ALL_FIGURES)
def test_each_diagram_has_readable_text_that_does_not_collide(drawn, name):
    figure, _ = drawn.pictures[name]
    assert layout_problems(figure) == []


def test_the_empty_area_check_fails_a_half_empty_figure():
    figure = Figure(figsize=(10, 5))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.add_patch(Rectangle((0.05, 0.1), 0.4, 0.7, facecolor="#9ecae1", edgecolor="black"))
    ax.text(0.25, 0.45, "a box on the left", ha="center")
    figure.suptitle("Everything on the left", x=0.02, ha="left")
    pixels = render(figure)
    assert ink_of(pixels).mean() > MIN_INK / 2                            # something is drawn ...
    assert {(0, 2), (1, 2)} <= set(empty_cells(pixels))                   # ... but the right third is blank


def test_the_layout_check_finds_colliding_text_and_boxes():
    figure, ax = figures._canvas(9, 4, "A title")
    figures._box(ax, 2, 2, 0.5, 0.3, "a label far too long for its box")
    figures._text(ax, 6, 2, "one text")
    figures._text(ax, 6.2, 2, "another text")
    figures._box(ax, 4, 1, 1.0, 0.4, "a box")
    figures._box(ax, 4.6, 1.1, 1.0, 0.4, "")
    problems = " | ".join(layout_problems(figure))
    for expected in ("does not fit inside its box", "overlaps 'another text'", "runs across the edge of box",
                     "boxes box1 and box2 overlap"):
        assert expected in problems


@pytest.mark.slow
@pytest.mark.parametrize("draw, arguments", [
    (routing_and_dispatch, {"num_experts": 6, "top_k": 3}),
    (routing_and_dispatch, {"num_experts": 2, "top_k": 1}),
    (grouped_query_attention, {"n_heads": 16, "n_kv_heads": 4}),
    (capacity_and_dropping, {"num_experts": 6, "capacity": 4}),
    (capacity_and_dropping, {"num_experts": 2, "capacity": 1}),
    (shared_and_routed_experts, {"num_shared": 2, "num_routed": 16, "top_k": 4}),
    (upcycling, {"num_experts": 8, "top_k": 2}),
    (width_growth, {"factor": 4}),
    (depth_growth, {"num_layers": 6}),
    (expert_parallel_all_to_all, {"ranks": 4, "experts_per_rank": 2}),
])
def test_other_arguments_draw_cleanly_too(draw, arguments):
    figure = draw(**arguments)
    assert figure.get_suptitle().strip()
    assert layout_problems(figure) == []


def test_the_diagrams_leave_pyplot_alone(drawn):
    assert drawn.pyplot_after == drawn.pyplot_before


def test_a_diagram_shows_itself_as_png_in_a_notebook():
    assert depth_growth()._repr_png_().startswith(PNG_MAGIC)


def test_save_all_writes_one_png_per_diagram(tmp_path, monkeypatch):
    chosen = {name: ALL_FIGURES[name] for name in ("width_growth", "depth_growth")}   # two prove it, quickly
    monkeypatch.setattr(figures, "ALL_FIGURES", chosen)
    paths = save_all(tmp_path / "diagrams", dpi=30)
    assert [path.name for path in paths] == [f"{name}.png" for name in chosen]
    assert all(path.read_bytes().startswith(PNG_MAGIC) for path in paths)


# ------------------------------------------------- the numbers that are drawn
@pytest.mark.parametrize("num_experts, top_k", [(4, 2), (4, 1), (8, 2), (6, 3), (3, 3)])
def test_example_routing_is_a_softmax_then_renormalised_top_k(num_experts, top_k):
    routing = example_routing(num_experts, top_k)
    tokens = len(routing.tokens)
    assert routing.probabilities.shape == (tokens, num_experts)
    np.testing.assert_allclose(routing.probabilities.sum(axis=1), 1.0)
    for row, chosen in zip(routing.probabilities, routing.chosen):
        assert len(set(chosen)) == top_k
        assert row[chosen].min() >= np.delete(row, chosen).max(initial=0.0)      # the k largest
    np.testing.assert_allclose(routing.weights.sum(axis=1), 1.0)
    picked = np.take_along_axis(routing.probabilities, routing.chosen, axis=1)
    np.testing.assert_allclose(routing.weights, picked / picked.sum(axis=1, keepdims=True))
    for shown in routing.shown_probabilities + routing.shown_weights:           # printed, they still add up
        assert round(sum(float(value) for value in shown), 6) == 1.0
    for probabilities, chosen, weights, shown in zip(routing.shown_probabilities, routing.chosen, routing.weights,
                                                     routing.shown_weights):
        printed = np.array([float(value) for value in shown])
        np.testing.assert_allclose(printed, weights, atol=0.011)              # close to the exact weights
        picked = np.array([float(probabilities[expert]) for expert in chosen])
        if picked.sum() > 0:                                                   # and what a reader would compute
            np.testing.assert_allclose(printed, picked / picked.sum(), atol=0.0051)


def test_the_routing_diagram_prints_the_computed_numbers(drawn):
    routing = example_routing()                                  # the defaults, as routing_and_dispatch()
    drawn_text = {text.get_text() for text in texts_of(drawn.pictures["routing_and_dispatch"][0])}
    for chosen, weights, probabilities in zip(routing.chosen, routing.shown_weights, routing.shown_probabilities):
        for expert, weight in zip(chosen, weights):
            assert f"E{expert}: {weight}" in drawn_text
        assert set(probabilities) <= drawn_text


def test_example_capacity_keeps_tokens_first_come_first_served():
    example = example_capacity(4, 3)
    assert len(example.experts) == 12 and max(example.loads(4)) > 3          # some expert overflows
    seen = {}
    for expert, kept in zip(example.experts, example.kept):
        seen[expert] = seen.get(expert, 0) + 1
        assert kept == (seen[expert] <= 3)


def test_example_expert_parallel_sends_tokens_across_ranks():
    example = example_expert_parallel(2, 2)
    for rank, row in enumerate(example.choices):
        assert {example.rank_of(expert) for expert in row} == {0, 1}         # some stay, some travel
    everything = [expert for row in example.choices for expert in row]
    assert sorted(everything) == sorted(list(range(4)) * 2)                  # balanced: two tokens per expert


# ---------------------------------------------------------- bad arguments
@pytest.mark.parametrize("draw, arguments, name", [
    (routing_and_dispatch, {"num_experts": 4, "top_k": 5}, "top_k"),
    (routing_and_dispatch, {"num_experts": 0}, "num_experts"),
    (routing_and_dispatch, {"top_k": 1.5}, "top_k"),
    (example_routing, {"num_experts": 2, "top_k": 3}, "top_k"),
    (grouped_query_attention, {"n_heads": 8, "n_kv_heads": 3}, "n_kv_heads"),
    (grouped_query_attention, {"n_heads": 4, "n_kv_heads": 8}, "n_kv_heads"),
    (grouped_query_attention, {"n_heads": 0}, "n_heads"),
    (capacity_and_dropping, {"capacity": 0}, "capacity"),
    (capacity_and_dropping, {"num_experts": 1}, "num_experts"),
    (shared_and_routed_experts, {"num_routed": 4, "top_k": 6}, "top_k"),
    (shared_and_routed_experts, {"num_shared": 0}, "num_shared"),
    (upcycling, {"num_experts": 4, "top_k": 5}, "top_k"),
    (width_growth, {"factor": 0}, "factor"),
    (width_growth, {"factor": 1.5}, "factor"),
    (depth_growth, {"num_layers": 0}, "num_layers"),
    (expert_parallel_all_to_all, {"ranks": 0}, "ranks"),
    (expert_parallel_all_to_all, {"experts_per_rank": 0}, "experts_per_rank"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(draw, arguments, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        draw(**arguments)
