"""The course's tested versions: requirements-lock.txt, installed or compared.

    python tools/locked_versions.py install [LOCK]      install the lock into this Python
    python tools/locked_versions.py newer LOCK FREEZE   list what FREEZE (pip freeze) has at
                                                        other versions than LOCK

`make`'s bootstrap runs ``install`` inside `.venv`; `make test-latest` runs ``newer``.

The lock is written by `make lock` (pip-compile) on Linux with Python 3.11 and pins torch's CPU
build, ``torch==X+cpu``. pip finds that build where it already lies (pip's find-links, as on CI
machines) or on PyTorch's CPU index, tried second. On macOS PyPI's torch *is* the CPU/MPS build
and no ``+cpu`` wheel exists, so the same version comes from PyPI. Everything else is installed
exactly as pinned, then the course itself, editable, without resolving anything of its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-lock.txt"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;#]+)", re.MULTILINE)


def normalized(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503): ``Jinja2`` and ``jinja2`` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """``{name: version}`` for every ``name==version`` line of a lock or of ``pip freeze``."""
    return {normalized(match["name"]): match["version"] for match in PIN.finditer(text)}


def torch_candidates(version: str, platform: str = sys.platform) -> list[list[str]]:
    """The pip arguments to try, in order, for the locked torch ``version`` on ``platform``."""
    if platform == "darwin":
        return [[f"torch=={version.split('+')[0]}"]]
    pinned = f"torch=={version}"
    return [[pinned], ["--extra-index-url", TORCH_CPU_INDEX, pinned]]


def pip_install(*args: str) -> bool:
    """``python -m pip install --quiet ARGS``; True when it succeeded."""
    return subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args]).returncode == 0


def install(lock: Path = LOCK) -> None:
    text = lock.read_text()
    torch_version = pins(text).get("torch")
    if torch_version is None:
        raise SystemExit(f"{lock} pins no torch: run `make lock`")
    for attempt, arguments in enumerate(torch_candidates(torch_version)):
        if attempt:
            print(f"(not found there; trying {' '.join(arguments)})")
        if pip_install(*arguments):
            break
    else:
        raise SystemExit(f"could not install torch {torch_version}: see pip's messages above")
    # The rest of the lock, without torch's line: it is installed, in this platform's build.
    rest = re.sub(r"(?m)^torch==.*$", "# torch: installed above", text)
    with tempfile.TemporaryDirectory() as folder:
        requirements = Path(folder) / "requirements.txt"
        requirements.write_text(rest)
        if not pip_install("--requirement", str(requirements)):
            raise SystemExit(
                f"pip could not install {lock.name} with Python {sys.version.split()[0]}. The lock is "
                "made with Python 3.11, as CI runs it: use that (`make clean`, then `make PYTHON=python3.11 "
                "test`), or install pyproject.toml's ranges instead: pip install -e '.[dev]'")
    # The lock pins setuptools, the build requirement: the editable install is built with it.
    if not pip_install("--no-deps", "--no-build-isolation", "--editable", str(ROOT)):
        raise SystemExit("could not install the course itself (pip install -e .): see pip's messages above")


def newer(lock_text: str, freeze_text: str) -> list[str]:
    """``name: locked -> installed`` for each locked package installed at another version."""
    locked, installed = pins(lock_text), pins(freeze_text)
    return [f"{name}: {version} -> {installed[name]}" for name, version in sorted(locked.items())
            if name in installed and installed[name] != version]


def main(argv: list[str]) -> None:
    if argv[:1] == ["install"] and len(argv) <= 2:
        install(Path(argv[1]) if len(argv) == 2 else LOCK)
    elif argv[:1] == ["newer"] and len(argv) == 3:
        print("\n".join(newer(Path(argv[1]).read_text(), Path(argv[2]).read_text())) or "(nothing)")
    else:
        raise SystemExit(__doc__.split("\n\n")[1])


if __name__ == "__main__":
    main(sys.argv[1:])
