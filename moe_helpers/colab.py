"""Opening the notebooks on Colab: the badge at the top of each notebook and its first code cell.

The repository's address is declared once, in ``pyproject.toml``
(``[project.urls] Repository``).  A fresh Colab runtime has no clone and no
``pyproject.toml``, so the badge and the setup cell carry the address as text;
``python -m moe_helpers.colab`` (``make colab``) writes it into every notebook
after the address changes (a teacher pointing the badges at their fork), and a
test fails while any notebook disagrees with ``pyproject.toml``.

The setup cell installs the course only where ``moe_helpers`` cannot be
imported: ``pip install git+<repository>``, or ``pip install $MOE_COURSE_SOURCE``
when that variable names a local copy (a classroom mirror, or a test).  On
Colab it also turns on the widget manager that ipywidgets 8 needs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
_BADGE_LINE = re.compile(r"^# \[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)\n", re.M)

SETUP_CELL = '''# %%
# Setup: make `moe_helpers` importable. Installed (`make`, `pip install -e .`) or opened from a clone:
# nothing to do. A fresh runtime (Colab): install the course from its repository (or from the local
# folder named by $MOE_COURSE_SOURCE) and turn on the widget manager that ipywidgets 8 needs there.
COURSE_REPOSITORY = "{url}"   # set from pyproject.toml by `make colab`
import importlib, importlib.util, os, pathlib, subprocess, sys
if importlib.util.find_spec("moe_helpers") is None and (pathlib.Path.cwd().parent / "moe_helpers").is_dir():
    sys.path.insert(0, str(pathlib.Path.cwd().parent))            # a clone, opened from notebooks/
if importlib.util.find_spec("moe_helpers") is None:
    source = os.environ.get("MOE_COURSE_SOURCE") or f"git+{{COURSE_REPOSITORY}}"
    print(f"Installing the course from {{source}} ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source], check=True)
    importlib.invalidate_caches()
    try:
        from google.colab import output
        output.enable_custom_widget_manager()
    except ImportError:                                            # not on Colab
        pass
else:
    print("moe_helpers is importable: nothing to install")
import moe_helpers
'''


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """``[project.urls] Repository`` of ``pyproject.toml``: a ``https://github.com/OWNER/NAME`` address."""
    try:
        import tomllib
    except ImportError:                  # Python 3.10
        import tomli as tomllib
    url = tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"].rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"[project.urls] Repository must be https://github.com/OWNER/NAME, got {url!r}")
    return url


def colab_link(notebook: str, url: str) -> str:
    """The address that opens ``notebooks/<notebook>.ipynb`` of the repository on Colab."""
    owner_and_name = url.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_and_name}/blob/{BRANCH}/notebooks/{notebook}.ipynb"


def badge_line(notebook: str, url: str) -> str:
    """The badge, as the first line of a notebook's first markdown cell (py:percent text)."""
    return f"# [![Open In Colab]({BADGE_IMAGE})]({colab_link(notebook, url)})\n"


def setup_cell(url: str) -> str:
    """The first code cell of every notebook (py:percent text).

    No comment line may start with a shell command's name (``copy``, ``cd``, ``ls`` ...):
    jupytext would read it as a commented-out magic and uncomment it in the ``.ipynb``."""
    return SETUP_CELL.format(url=url)


def with_colab_links(text: str, notebook: str, url: str) -> str:
    """A notebook's py:percent text with its badge and setup cell for ``url``.

    The badge goes right under the title line of the first markdown cell; the
    setup cell replaces the first code cell.
    """
    text = _BADGE_LINE.sub("", text)
    title = re.search(r"^# # .*\n", text, re.M)
    if title is None:
        raise ValueError(f"{notebook}: no '# # title' line in its first markdown cell")
    text = text[:title.end()] + badge_line(notebook, url) + text[title.end():]
    first_code = re.search(r"^# %%\n", text, re.M)
    if first_code is None:
        raise ValueError(f"{notebook}: no code cell")
    following = re.search(r"^# %%", text[first_code.end():], re.M)
    end = first_code.end() + following.start() if following else len(text)
    return text[:first_code.start()] + setup_cell(url) + "\n" + text[end:]


def update_notebooks(url: str | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """Write the badge and setup cell for ``url`` (default: pyproject's) into every notebook pair.

    Edits each ``.py`` and re-pairs its ``.ipynb`` with jupytext; returns the changed ``.py`` files.
    """
    url = url or repository_url()
    changed = []
    for script in sorted(folder.glob("[0-9][0-9]_*.py")):
        text = script.read_text()
        updated = with_colab_links(text, script.stem, url)
        if updated != text:
            script.write_text(updated)
            subprocess.run([sys.executable, "-m", "jupytext", "--sync", str(script)], check=True,
                           capture_output=True)
            changed.append(script)
    return changed


if __name__ == "__main__":
    for path in update_notebooks():
        print(f"updated {path.relative_to(ROOT)}")
