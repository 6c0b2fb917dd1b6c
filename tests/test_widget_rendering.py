"""What both widgets redraw with: ``figure_png`` (pyplot-free, safe from any thread)
and ``RenderLoop`` (the latest state wins: nothing lost, nothing drawn twice)."""

from __future__ import annotations

import threading

import matplotlib.pyplot as plt
import pytest

from moe_helpers.widget_rendering import FIGURE_DPI, RenderLoop, figure_png
from plot_pixels import decode_png, plot_problems


def draw_bars(heights):
    """A ``draw(figure)`` for ``figure_png``: one bar chart with a title and labels."""
    def draw(figure):
        ax = figure.subplots()
        ax.bar(range(len(heights)), heights)
        ax.set_title(f"{len(heights)} bars")
        ax.set_xlabel("bar")
    return draw


# ------------------------------------------------------------------ figure_png
def test_figure_png_has_the_requested_size_and_leaves_pyplot_alone():
    figures_before = plt.get_fignums()
    png = figure_png(draw_bars([3, 1, 2]), figsize=(4.0, 2.5))
    assert decode_png(png).shape == (round(2.5 * FIGURE_DPI), round(4.0 * FIGURE_DPI), 3)
    assert plt.get_fignums() == figures_before
    assert plot_problems(png, expected_axes=1) == []


@pytest.mark.slow
def test_figure_png_from_four_threads_at_once_draws_what_one_thread_draws():
    charts = [[1, 2, 3], [3, 2, 1, 4], [5, 1], [2, 2, 2, 2, 2]]
    expected = [figure_png(draw_bars(heights), (4.0, 2.5)) for heights in charts]
    results = [[] for _ in charts]
    start = threading.Barrier(len(charts))

    def draw_many(index):
        start.wait()
        for _ in range(5):
            results[index].append(figure_png(draw_bars(charts[index]), (4.0, 2.5)))

    threads = [threading.Thread(target=draw_many, args=(index,)) for index in range(len(charts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, pngs in enumerate(results):
        assert pngs == [expected[index]] * 5


# ------------------------------------------------------------------ RenderLoop
class Recorder:
    """A render that records the states it draws; it can be held at its first state."""

    def __init__(self, hold_first: bool = False):
        self.rendered, self.errors = [], []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def render(self, state):
        self.started.set()
        self.release.wait(10)
        if state == "boom":
            raise RuntimeError("cannot draw boom")
        self.rendered.append(state)

    def on_error(self, state, error):
        self.errors.append((state, str(error)))


def test_states_arriving_during_a_render_are_skipped_except_the_last():
    control = {"value": 1}
    recorder = Recorder(hold_first=True)
    loop = RenderLoop(lambda: control["value"], recorder.render, recorder.on_error)
    loop.request()
    assert recorder.started.wait(10)
    for value in range(2, 10):                 # eight changes while state 1 is being drawn
        control["value"] = value
        loop.request()
    assert not loop.wait(timeout=0.05)         # still held at state 1
    recorder.release.set()
    assert loop.wait(timeout=10)
    assert recorder.rendered == [1, 9]


def test_a_state_equal_to_the_newest_one_is_not_drawn_again():
    control = {"value": "a"}
    recorder = Recorder(hold_first=True)
    loop = RenderLoop(lambda: control["value"], recorder.render, recorder.on_error)
    loop.request()
    assert recorder.started.wait(10)
    loop.request()                             # "a" is being drawn: nothing new
    control["value"] = "b"
    loop.request()
    loop.request()                             # "b" is already waiting
    recorder.release.set()
    assert loop.wait(timeout=10)
    loop.request()                             # still "b": already drawn
    assert loop.wait(timeout=10)
    control["value"] = "a"                     # back to an older state: drawn again
    loop.request()
    assert loop.wait(timeout=10)
    assert recorder.rendered == ["a", "b", "a"]


def test_a_failing_render_is_reported_and_the_loop_carries_on():
    control = {"value": "boom"}
    recorder = Recorder()
    loop = RenderLoop(lambda: control["value"], recorder.render, recorder.on_error)
    loop.request()
    assert loop.wait(timeout=10)
    control["value"] = "fine"
    loop.request()
    assert loop.wait(timeout=10)
    assert recorder.errors == [("boom", "cannot draw boom")]
    assert recorder.rendered == ["fine"]


def test_two_threads_changing_two_controls_end_with_the_final_state_drawn_once_each():
    controls = {"left": 0, "right": 0}
    recorder = Recorder()
    loop = RenderLoop(lambda: (controls["left"], controls["right"]), recorder.render, recorder.on_error)
    start = threading.Barrier(2)

    def turn(name):
        start.wait()
        for value in range(1, 301):
            controls[name] = value
            loop.request()

    threads = [threading.Thread(target=turn, args=(name,)) for name in controls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loop.wait(timeout=10)
    assert recorder.errors == []
    assert recorder.rendered[-1] == (300, 300)                      # nothing lost
    assert len(set(recorder.rendered)) == len(recorder.rendered)    # nothing drawn twice
    # every drawn state was a real moment: both counters only ever grew
    assert all(a <= c and b <= d for (a, b), (c, d) in zip(recorder.rendered, recorder.rendered[1:]))


def test_wait_returns_false_when_the_render_outlasts_the_timeout():
    recorder = Recorder(hold_first=True)
    loop = RenderLoop(lambda: "slow", recorder.render, recorder.on_error)
    loop.request()
    assert loop.wait(timeout=0.05) is False
    recorder.release.set()
    assert loop.wait(timeout=10) is True
    assert recorder.rendered == ["slow"]


@pytest.mark.parametrize("figsize", [(9.0, 4.6), (8.0, 3.0)])
def test_figure_png_is_the_same_bytes_every_time(figsize):
    assert figure_png(draw_bars([1, 3]), figsize) == figure_png(draw_bars([1, 3]), figsize)
