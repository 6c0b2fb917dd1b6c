"""Every import declared, the lock in step with pyproject.toml, the bootstrap's choices.

The lock (requirements-lock.txt, written by `make lock`) records the versions `make test` and
CI run with; pyproject.toml keeps ranges. deptry, a tool made for the job, checks that every
third-party module the course imports is declared.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from locked_versions import newer, normalized, pins, torch_candidates

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = (ROOT / "requirements-lock.txt").read_text()
DEPTRY = [sys.executable, "-m", "deptry"]
# What a learner runs: nothing here may import from the test, lab or dev extras (tools/ is the
# maintainers').
LEARNER_CODE = ["moe_helpers", "notebooks", "benchmarks", "solutions"]


def declared() -> list[Requirement]:
    """Every requirement of pyproject.toml that applies here: the course's and its extras'."""
    project = PYPROJECT["project"]
    lines = project["dependencies"] + [line for extra in project["optional-dependencies"].values()
                                       for line in extra]
    requirements = [Requirement(line) for line in lines]
    environment = {**default_environment(), "extra": ""}
    return [requirement for requirement in requirements if normalized(requirement.name) != "moe-course"
            and (requirement.marker is None or requirement.marker.evaluate(environment))]


def disagreements(requirements: list[Requirement], locked: dict[str, str]) -> list[str]:
    """One line per requirement the lock does not pin inside its range, naming the package."""
    problems = []
    for requirement in requirements:
        version = locked.get(normalized(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: in pyproject.toml, not in the lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}: the lock pins {version}, pyproject.toml asks {requirement.specifier}")
    return problems


def deptry(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*DEPTRY, *args, "--no-ansi"], cwd=cwd, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------- the lock
def test_the_lock_pins_every_declared_requirement_inside_its_range():
    problems = disagreements(declared(), pins(LOCK))
    assert not problems, "pyproject.toml and requirements-lock.txt disagree (run `make lock`):\n" + "\n".join(problems)


def test_a_disagreement_names_the_package():
    locked = {"torch": "2.13.0+cpu", "datasets": "3.6.0"}
    requirements = [Requirement("torch>=2.7"), Requirement("datasets>=4.2"), Requirement("tqdm>=4.60")]
    assert disagreements(requirements, locked) == [
        "datasets: the lock pins 3.6.0, pyproject.toml asks >=4.2",
        "tqdm: in pyproject.toml, not in the lock",
    ]


def test_the_lock_is_tested_with_the_cpu_build_of_torch():
    assert pins(LOCK)["torch"].endswith("+cpu")


def test_make_installs_the_locked_versions():
    """In `make`'s `.venv` every locked package is installed at its pinned version (torch on a
    Mac: PyPI's build of the same version)."""
    import importlib.metadata as metadata

    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not make's .venv (make test-latest, or an environment of your own)")
    installed = {normalized(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    differ = [line for line in newer(LOCK, "\n".join(f"{n}=={v}" for n, v in installed.items()))
              if not line.startswith("torch:") or sys.platform != "darwin"]
    assert not differ, "installed versions differ from requirements-lock.txt (`make clean test`):\n" + "\n".join(differ)


def test_newer_lists_what_moved():
    lock = "torch==2.13.0+cpu\n    # via moe-course\nJinja2==3.1.0\ntqdm==4.67.1\n"
    freeze = "torch==2.13.0+cpu\njinja2==3.1.6\ntqdm==4.67.1\nextra-package==1.0\n"
    assert newer(lock, freeze) == ["jinja2: 3.1.0 -> 3.1.6"]


def test_torch_comes_as_the_cpu_build_on_linux_and_from_pypi_on_a_mac():
    assert torch_candidates("2.13.0+cpu", "linux") == [
        ["torch==2.13.0+cpu"], ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu"]]
    assert torch_candidates("2.13.0+cpu", "darwin") == [["torch==2.13.0"]]


# ------------------------------------------------------------- declared imports
def test_every_import_is_declared():
    result = deptry(".")
    assert result.returncode == 0, result.stderr + result.stdout


def test_learner_code_needs_nothing_from_the_test_or_lab_extras():
    result = deptry(*LEARNER_CODE, "--optional-dependencies-dev-groups", "test,lab,dev")
    assert result.returncode == 0, result.stderr + result.stdout


def test_an_undeclared_import_fails_the_check(tmp_path):
    """The same check on a copy of the project's declarations with one more module, which imports
    a package the course does not declare (yaml: installed, as a dependency of a dependency)."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "moe_helpers").mkdir()
    (tmp_path / "moe_helpers" / "__init__.py").write_text("import torch\n")
    (tmp_path / "moe_helpers" / "undeclared.py").write_text("import yaml\nimport not_a_real_package\n")
    result = deptry(".", cwd=tmp_path)
    report = result.stderr + result.stdout
    assert result.returncode == 1
    found = {line.split(": ", 1)[1] for line in report.splitlines() if line.startswith("moe_helpers/undeclared.py:")}
    assert found == {"DEP003 'yaml' imported but it is a transitive dependency",
                     "DEP001 'not_a_real_package' imported but missing from the dependency definitions"}
