"""Colab from a link: every notebook's badge and setup cell agree with pyproject.toml, and the
setup cell installs the course in a fresh environment (and does nothing where it is installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from moe_helpers.colab import (NOTEBOOKS, ROOT, badge_line, colab_link, repository_url, setup_cell,
                               update_notebooks, with_colab_links)

NOTEBOOK_NAMES = sorted(path.stem for path in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def test_the_repository_is_declared_once_in_pyproject():
    url = repository_url()
    assert url.startswith("https://github.com/")
    assert colab_link("01_dense_model", url) == (
        "https://colab.research.google.com/github/" + url.removeprefix("https://github.com/")
        + "/blob/main/notebooks/01_dense_model.ipynb")


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_every_notebook_has_the_badge_and_setup_cell_of_pyproject(name):
    text = (NOTEBOOKS / f"{name}.py").read_text()
    url = repository_url()
    assert with_colab_links(text, name, url) == text, "run `make colab` after changing [project.urls]"
    assert badge_line(name, url) in text
    first_code_cell = text.split("\n# %%\n", 1)[1]
    assert first_code_cell.startswith(setup_cell(url).removeprefix("# %%\n"))
    cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
    in_the_notebook = "".join(next(cell for cell in cells if cell["cell_type"] == "code")["source"])
    assert in_the_notebook == setup_cell(url).removeprefix("# %%\n").rstrip("\n")   # as Colab runs it


@pytest.mark.slow
def test_pointing_the_badges_at_a_fork_rewrites_every_notebook(tmp_path):
    folder = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")   # the pairing, as in the repository
    fork = "https://github.com/a-teacher/moe-course-fork"
    changed = update_notebooks(fork, folder)
    assert sorted(path.stem for path in changed) == NOTEBOOK_NAMES
    for name in NOTEBOOK_NAMES:
        text = (folder / f"{name}.py").read_text()
        assert f'COURSE_REPOSITORY = "{fork}"' in text and "a-teacher/moe-course-fork/blob/main" in text
        assert repository_url() not in text
        assert "a-teacher/moe-course-fork/blob/main" in (folder / f"{name}.ipynb").read_text()   # re-paired
    assert update_notebooks(fork, folder) == []                  # a second run changes nothing


def test_a_malformed_repository_address_is_refused(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project.urls]\nRepository = "gitlab.example/x"\n')
    with pytest.raises(ValueError, match="https://github.com/OWNER/NAME"):
        repository_url(pyproject)


def run_setup_cell(python: str, cwd: Path, source: str) -> subprocess.CompletedProcess:
    code = setup_cell(repository_url()).removeprefix("# %%\n") + "print('imported', moe_helpers.__file__)\n"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(MOE_COURSE_SOURCE=source, PIP_NO_DEPS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.install
def test_the_setup_cell_installs_the_course_in_a_fresh_environment(tmp_path):
    """A fresh virtual environment (no moe_helpers, no clone next to the notebook): the cell
    installs the course from $MOE_COURSE_SOURCE and imports it.  PIP_NO_DEPS keeps the test from
    downloading PyTorch; importing the package itself needs none of its dependencies."""
    source = tmp_path / "course"                                  # what a classroom mirror would hold
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "moe_helpers", source / "moe_helpers", ignore=shutil.ignore_patterns("__pycache__"))
    environment = tmp_path / "fresh-venv"
    venv.create(environment, with_pip=True)
    python = str(environment / "bin" / "python")
    workdir = tmp_path / "colab"
    workdir.mkdir()

    result = run_setup_cell(python, workdir, str(source))

    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Installing the course from {source}" in result.stdout
    assert "imported " + str(environment) in result.stdout      # from the fresh environment's site-packages


def test_the_setup_cell_does_nothing_where_the_course_is_installed(tmp_path):
    result = run_setup_cell(sys.executable, tmp_path, str(tmp_path / "no-such-source"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nothing to install" in result.stdout and "Installing" not in result.stdout
