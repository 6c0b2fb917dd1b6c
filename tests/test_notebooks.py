"""Notebooks are committed without outputs and in sync with their jupytext pairs.

(nbmake runs the notebooks themselves: ``make notebooks``.)
"""

import json
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped(path):
    cells = json.loads(path.read_text())["cells"]
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {index} has outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {index} has an execution count"


def cells(notebook) -> list[tuple[str, str]]:
    """What a notebook says, cell by cell: the type and the source, without any metadata."""
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_pair_is_in_sync(path):
    """The .ipynb and its .py hold the same cells. Compared by content, not as text, so a new
    jupytext release (which may write its header differently) cannot fail it."""
    pair = path.with_suffix(".py")
    assert pair.exists(), f"{path.name} has no jupytext pair {pair.name}"
    notebook, script = jupytext.read(path), jupytext.read(pair)
    for index, (in_notebook, in_script) in enumerate(zip(cells(notebook), cells(script))):
        assert in_notebook == in_script, f"run `make sync`: cell {index} of {pair.name} differs from {path.name}"
    assert len(notebook.cells) == len(script.cells), f"run `make sync`: {pair.name} and {path.name} differ in length"


def test_a_version_stamp_in_the_header_changes_no_cell(tmp_path):
    """What a jupytext release changes (its version in the header) leaves the compared cells alone."""
    pair = NOTEBOOKS[0].with_suffix(".py")
    stamped = tmp_path / pair.name
    stamped.write_text(pair.read_text().replace("#     text_representation:\n",
                                                "#     text_representation:\n#       jupytext_version: 9.9.9\n", 1))
    assert "jupytext_version: 9.9.9" in stamped.read_text()
    assert cells(jupytext.read(stamped)) == cells(jupytext.read(pair)) == cells(jupytext.read(NOTEBOOKS[0]))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_pair_carries_no_tool_version(path):
    """jupytext.toml's metadata filter keeps jupytext's version out of the scripts: a release
    of it must not turn every pair into a diff."""
    header = path.with_suffix(".py").read_text().split("# ---", 2)[1]
    assert "jupytext_version:" not in header, "run `make sync` (jupytext.toml filters the version out)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_starts_with_learning_goals_and_ends_with_exercises(path):
    cells = json.loads(path.read_text())["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and "you will" in first.lower(), f"{path.name}: no learning goals"
    text = "".join("".join(c["source"]) for c in cells[-12:]).lower()
    assert "exercise" in text, f"{path.name}: no exercises at the end"
