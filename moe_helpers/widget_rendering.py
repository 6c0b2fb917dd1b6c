"""What the notebook widgets share: a figure drawn to PNG bytes safely from any
thread, and a render loop in which the latest state wins.

Why this exists.  JupyterLab 4 can hand widget messages to kernel *subshells*,
so a widget's callbacks may run on two threads at once.  pyplot (one global
list of figures) and an ``Output`` widget's capture (one global "current
output") are not thread-safe, and two overlapping redraws drew blank or cut-off
plots.  So here:

* a figure is a plain ``matplotlib.figure.Figure`` on its own Agg canvas (no
  pyplot), drawn and encoded to PNG under one lock (``figure_png``);
* the PNG replaces an ``ipywidgets.Image``'s value in one assignment, so the
  browser only ever sees a finished picture;
* each widget redraws on one background thread at a time (``RenderLoop``):
  states that arrive while it draws are not queued one by one, only the newest
  waits, so no redraw is lost, none is repeated, and a burst of changes during
  a slow redraw (training a model) costs one more redraw, not one per change.
"""

from __future__ import annotations

import io
import threading
from typing import Callable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FIGURE_DPI = 100

# Figures are independent objects, but matplotlib's text layout and font caches
# are shared by all of them; one lock keeps two drawings from meeting there.
_DRAWING = threading.Lock()


def figure_png(draw: Callable[[Figure], object], figsize: tuple[float, float]) -> bytes:
    """Draw with ``draw(figure)`` on a new pyplot-free figure and return it as PNG bytes.

    The figure uses constrained layout (legends placed outside the axes get room
    of their own) and a white background; the PNG carries no software or date
    stamp, so the same drawing always gives the same bytes.
    """
    with _DRAWING:
        figure = Figure(figsize=figsize, dpi=FIGURE_DPI, layout="constrained", facecolor="white")
        FigureCanvasAgg(figure)
        draw(figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


_NOTHING = object()     # no state waiting


class RenderLoop:
    """Runs ``render(state)`` for the newest requested state, on one background thread at a time.

    ``request()`` reads the widget's state with ``read_state()`` and returns at
    once.  If no render is running, a thread starts rendering that state; if one
    is, the state waits, replacing any state that was already waiting.  When a
    render ends, the thread renders the waiting state, if any, and otherwise
    stops.  A state equal to the newest one already rendering or waiting is
    ignored (a control that changes two others asks only once).

    So changes that arrive faster than renders are skipped, except the last,
    which is always rendered.  Reading and recording a state happen under one
    lock, so however many threads call ``request()``, the last state recorded
    is read after the last change.

    ``render(state)`` publishes its own result (e.g. sets an Image widget's
    value); if it raises, ``on_error(state, error)`` shows the error and the
    loop carries on.
    """

    def __init__(self, read_state: Callable[[], object], render: Callable[[object], None],
                 on_error: Callable[[object, Exception], None]):
        self._read_state, self._render, self._on_error = read_state, render, on_error
        self._condition = threading.Condition()
        self._waiting = _NOTHING       # the state to render next
        self._newest = _NOTHING        # the state rendering now, or the one waiting
        self._running = False          # whether a render thread is alive

    def request(self) -> None:
        """Read the current state and have it rendered (in the background)."""
        with self._condition:
            state = self._read_state()
            if state == self._newest:
                return
            self._waiting = self._newest = state
            if not self._running:
                self._running = True
                # Not a daemon: Python lets a render finish before it exits (a daemon thread stopped
                # inside matplotlib's or torch's C++ code at exit aborts the whole process).
                threading.Thread(target=self._run, name="widget-render", daemon=False).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every requested state has been rendered; ``False`` if ``timeout`` passed first."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._running, timeout)

    def _next_state(self):
        """Take the waiting state, or mark the loop stopped (and wake ``wait``) when there is none."""
        with self._condition:
            state, self._waiting = self._waiting, _NOTHING
            if state is _NOTHING:
                self._running = False
                self._condition.notify_all()
            return state

    def _run(self) -> None:
        try:
            while (state := self._next_state()) is not _NOTHING:
                self._render_one(state)
        except BaseException:       # only if ``on_error`` itself failed: let the next request start afresh
            with self._condition:
                self._running, self._waiting, self._newest = False, _NOTHING, _NOTHING
                self._condition.notify_all()
            raise

    def _render_one(self, state) -> None:
        try:
            self._render(state)
        except Exception as error:  # noqa: BLE001 -- shown in the widget; the loop must survive it
            self._on_error(state, error)


def name_for_css(widgets_by_name: dict) -> None:
    """Give each widget the CSS class ``moe-<name>``: a stable handle for styling and for
    the browser test (``tests/test_widgets_in_browser.py``) to find it in the page."""
    for name, widget in widgets_by_name.items():
        widget.add_class(f"moe-{name}")
