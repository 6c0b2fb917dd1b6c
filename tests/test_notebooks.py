"""Notebooks are committed with the outputs of a default run, fresh against their code, and in
sync with their jupytext pairs.

(nbmake runs the notebooks themselves: ``make notebooks``; ``make render`` writes the outputs.)
"""

import json
from pathlib import Path

import jupytext
import pytest
from render_notebooks import MAX_BYTES, README_IMAGES, cell_png, source_sha256

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_those_of_the_current_code(path):
    """A learner on GitHub or Colab sees the results of this very code: every code cell ran, in
    order, and the notebook's cells are the ones its outputs were made from."""
    notebook = json.loads(path.read_text())
    rendered = notebook["metadata"].get("moe_course", {}).get("source_sha256")
    assert rendered is not None, f"{path.name} has no rendered outputs: run `make render`"
    assert rendered == source_sha256(notebook), f"{path.name}: the code changed since its outputs were made; run `make render`"
    counts = [cell["execution_count"] for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: not run top to bottom once; run `make render`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_rendered_notebook_stays_small(path):
    assert path.stat().st_size <= MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"


@pytest.mark.parametrize("image", sorted(README_IMAGES), ids=lambda path: path.name)
def test_the_readmes_pictures_are_those_of_the_committed_run(image):
    name, marker = README_IMAGES[image]
    notebook = json.loads((ROOT / "notebooks" / name).read_text())
    assert image.read_bytes() == cell_png(notebook, marker), f"{image.name} is not {name}'s picture: run `make render`"


def test_an_edited_cell_makes_the_outputs_stale():
    notebook = json.loads(NOTEBOOKS[0].read_text())
    before = source_sha256(notebook)
    notebook["cells"][-1]["source"] = "".join(notebook["cells"][-1]["source"]) + "\n# an edit"
    assert source_sha256(notebook) != before


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
