"""ipywidgets front ends for the notebooks.

Each widget is a thin layer: the computation it shows lives in a plain,
unit-tested function (in this module or in the modules it imports), so the
numbers a learner sees are the numbers the tests check.
"""

from __future__ import annotations
