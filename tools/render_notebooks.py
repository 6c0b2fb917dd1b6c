"""Run the notebooks with their default settings and keep the outputs (`make render`).

    python tools/render_notebooks.py [notebooks/NN_name.ipynb ...]     (default: every notebook)

The notebooks in git carry the outputs of such a run, so a learner who opens one on GitHub or
from its Colab badge sees every plot, banner and table before running anything. Each rendered
notebook records a hash of its cells' sources (``metadata.moe_course.source_sha256``);
tests/test_notebooks.py fails when a notebook's code has changed since its outputs were made.
The README's pictures of a real run (``README_IMAGES``) are written from the same outputs.

Each notebook runs in its own kernel, from `notebooks/`, with one torch thread (as `make test`
runs them) and the environment of the caller. Timing metadata is dropped, so a re-render changes
only what the notebook really printed or drew.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
MAX_BYTES = 2_000_000          # a notebook GitHub shows quickly
TIMEOUT_S = 1500               # per cell
# The README's pictures of a real run: (notebook, a line of the cell that draws it) -> image file.
README_IMAGES = {
    ROOT / "docs" / "images" / "three-phases-loss.png": ("06_three_phases.ipynb", "ax = plot_phases(history, jumps)"),
    ROOT / "docs" / "images" / "expert-utilisation.png": ("06_three_phases.ipynb", "plot_expert_utilisation(record["),
}


def cell_source(cell) -> str:
    """A cell's source as one string (a notebook file stores it as a list of lines)."""
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def source_sha256(notebook) -> str:
    """A hash of what the notebook says: every cell's type and source, in order."""
    cells = [[cell["cell_type"], cell_source(cell)] for cell in notebook["cells"]]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def cell_png(notebook, marker: str) -> bytes:
    """The first PNG that the code cell containing ``marker`` displayed."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code" and marker in cell_source(cell):
            for output in cell.get("outputs", []):
                if "image/png" in output.get("data", {}):
                    return base64.b64decode(output["data"]["image/png"])
            raise ValueError(f"the cell with {marker!r} shows no picture")
    raise ValueError(f"no code cell contains {marker!r}")


def export_readme_images(path: Path, notebook) -> None:
    """Write the README's pictures that come from the notebook at ``path``."""
    for image, (name, marker) in README_IMAGES.items():
        if name == path.name:
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(cell_png(notebook, marker))


def render(path: Path) -> float:
    """Execute ``path`` top to bottom, write it back with its outputs; return the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)           # start/end times: noise in every diff
    notebook.metadata["moe_course"] = {"source_sha256": source_sha256(notebook)}
    nbformat.write(notebook, path)
    export_readme_images(path, notebook)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path.name} is {size / 1e6:.1f} MB with its outputs (at most {MAX_BYTES / 1e6:.0f} MB): "
                         "make its figures smaller or fewer")
    return time.perf_counter() - started


def main(paths: list[str]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for path in [Path(p).resolve() for p in paths] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        seconds = render(path)
        print(f"{path.name}: rendered in {seconds:.0f} s, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
