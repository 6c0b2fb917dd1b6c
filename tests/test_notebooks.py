"""Notebooks are committed without outputs and in sync with their jupytext pairs.

(nbmake runs the notebooks themselves: ``make notebooks``.)
"""

import json
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped(path):
    cells = json.loads(path.read_text())["cells"]
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {index} has outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_pair_is_in_sync(path):
    pair = path.with_suffix(".py")
    assert pair.exists(), f"{path.name} has no jupytext pair {pair.name}"
    expected = jupytext.writes(jupytext.read(path), fmt="py:percent")
    assert pair.read_text().strip() == expected.strip(), f"run `make sync`: {pair.name} differs from {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_starts_with_learning_goals_and_ends_with_exercises(path):
    cells = json.loads(path.read_text())["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and "you will" in first.lower(), f"{path.name}: no learning goals"
    text = "".join("".join(c["source"]) for c in cells[-12:]).lower()
    assert "exercise" in text, f"{path.name}: no exercises at the end"
