"""Pixel checks that a widget's PNG is a complete plot, not a blank or cut-off one.

Used by the widget unit tests and by the browser test, on the bytes the browser
really shows.  A plot is complete when every axes frame (the four black spines)
is whole, the area inside each frame has ink across its whole width, and
there is text above the frame (the title) and below it (tick labels and the
axis label).  A figure that stopped drawing halfway, or an empty image, fails.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

INK = 230            # a channel value below this is ink on the white background
SPINE = 60           # spines are drawn black: every channel below this
STRIPS = 10          # the inside of each frame is checked in this many vertical strips


def decode_png(png: bytes) -> np.ndarray:
    """(height, width, 3) uint8 pixels of a PNG, composited on white."""
    image = Image.open(io.BytesIO(png))
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(white, image)
    return np.asarray(image.convert("RGB"))


def _longest_runs(mask: np.ndarray) -> np.ndarray:
    """Length of the longest run of True in each row of a 2-D boolean array."""
    longest = np.zeros(mask.shape[0], dtype=int)
    current = np.zeros(mask.shape[0], dtype=int)
    for column in mask.T:
        current = np.where(column, current + 1, 0)
        longest = np.maximum(longest, current)
    return longest


def _line_groups(indices: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive indices grouped into (first, last) pairs: one pair per drawn line."""
    groups = []
    for index in indices:
        if groups and index == groups[-1][1] + 1:
            groups[-1] = (groups[-1][0], index)
        else:
            groups.append((index, index))
    return groups


def _contains(outer: tuple, inner: tuple) -> bool:
    return (outer != inner and outer[0] <= inner[0] and inner[1] <= outer[1]
            and outer[2] <= inner[2] and inner[3] <= outer[3])


def axes_frames(pixels: np.ndarray, min_fraction: float = 0.3) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) pixel rows and columns of each axes frame, top to bottom.

    Spines are black lines: horizontal ones at least ``min_fraction`` of the image
    wide, vertical ones at least half that of its height.  A frame is two horizontal
    lines joined, all the way, by vertical lines at least ``min_fraction`` apart; a
    frame inside another (a black-edged bar, say) is not an axes."""
    black = (pixels < SPINE).all(axis=2)                                   # (H, W)
    height, width = black.shape
    rows = _line_groups(np.flatnonzero(_longest_runs(black) >= min_fraction * width))
    columns = _line_groups(np.flatnonzero(_longest_runs(black.T) >= min_fraction * height * 0.5))
    frames = []
    for index, top in enumerate(rows):
        for bottom in rows[index + 1:]:
            sides = [(first, last) for first, last in columns
                     if black[top[1] + 1:bottom[0], first:last + 1].any(axis=1).mean() > 0.98]
            if len(sides) >= 2 and sides[-1][1] - sides[0][0] >= min_fraction * width:
                frames.append((int(top[0]), int(bottom[1]), int(sides[0][0]), int(sides[-1][1])))
    return [frame for frame in frames if not any(_contains(other, frame) for other in frames)]


def plot_problems(png: bytes, expected_axes: int) -> list[str]:
    """What is wrong with the picture (an empty list when it is a complete plot)."""
    pixels = decode_png(png)
    height, width, _ = pixels.shape
    ink = (pixels < INK).any(axis=2)                                       # (H, W)
    if not ink.any():
        return ["the image is blank"]
    frames = axes_frames(pixels)
    if len(frames) != expected_axes:
        return [f"found {len(frames)} complete axes frames, expected {expected_axes}"]
    problems = []
    black = (pixels < SPINE).all(axis=2)
    for number, (top, bottom, left, right) in enumerate(frames):
        name = f"axes {number} ({left}..{right} x {top}..{bottom})"
        if not (black[top:top + 2, left:right + 1].any(axis=0).all() and black[bottom - 1:bottom + 1, left:right + 1]
                .any(axis=0).all()):
            problems.append(f"{name}: a horizontal spine has a gap")
        inside = ink[top + 2:bottom - 1, left + 2:right - 1]
        empty = [s for s, strip in enumerate(np.array_split(inside, STRIPS, axis=1)) if not strip.any()]
        if empty:
            problems.append(f"{name}: no ink in vertical strips {empty} of {STRIPS}")
        if not ink[max(0, top - 25):top - 2, left:right].any():
            problems.append(f"{name}: nothing above the frame (no title)")
        if not ink[bottom + 2:min(height, bottom + 40), left:right].any():
            problems.append(f"{name}: nothing below the frame (no tick labels)")
    return problems


def same_pixels(png: bytes, other: bytes) -> bool:
    """Whether two PNGs show exactly the same picture."""
    first, second = decode_png(png), decode_png(other)
    return first.shape == second.shape and bool((first == second).all())
