"""Grade a folder of submitted notebooks: one row per learner, one column per exercise.

    python -m moe_helpers.grading submissions/                      # a table on the terminal
    python -m moe_helpers.grading submissions/ --csv grades.csv     # the same table as CSV too
    python -m moe_helpers.grading submissions/ --notebook 02 --notebook 04   # only these chapters
    python -m moe_helpers.grading submissions/ --details            # and why each ✗ is wrong

Every ``*.ipynb`` in the folder is one learner's work; the learner's name is the
file's stem (``alice.ipynb`` -> ``alice``).  A submission may be one chapter's
notebook or several chapters' cells in one file: for each exercise of the
course (``moe_helpers.exercises``) the grader looks for the code cell that
defines the exercise's function (``def route_top_k(...)`` at the top of the
cell; the last such cell if there are several) and grades that function with
``moe_helpers.exercises.grade``, the checker behind the notebooks' ``check``.

The rest of the learner's notebook is never run.  The defining cell runs in a
fresh namespace that first holds the imports the exercise cells rely on
(``PRELUDE``) and the learner's other exercise functions of the same notebook
(notebook 03's FLOPs may call the learner's parameter counts).  Of each cell only
the imports, function and class definitions and constant assignments run (a
``check(...)`` call or a training loop left in the same cell is skipped).  A
function that needs a helper defined in some other cell therefore fails with a
``NameError`` and is graded wrong: exercises should be self-contained.

Cells: ✓ correct, ✗ wrong, … not attempted (still the stub, or no cell defines
the function).  A cell that raises while it is being defined (a syntax error, a
failing import) is wrong for that exercise and grading goes on; so is a function
that runs longer than ``--timeout`` seconds.  Grading runs the learners' code in
this process, with the permissions of whoever runs it.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import io
import json
import re
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch

from .exercises import CORRECT, EXERCISES, NOT_ATTEMPTED, WRONG, CheckResult, grade

MARKS = {CORRECT: "✓", WRONG: "✗", NOT_ATTEMPTED: "…"}

# What the notebooks have imported by the time a learner reaches the exercises, and what the
# reference solutions in solutions/ import: a learner's exercise cell may use any of these names.
PRELUDE = """\
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from moe_helpers.accounting import count_from_config
from moe_helpers.config import ModelConfig
from moe_helpers.layers import Attention, FeedForward, RMSNorm, apply_rope
from moe_helpers.model import GPT, Block
"""

DEFAULT_TIMEOUT_S = 60.0
# The statements of a learner's cell that define things; everything else in the cell is skipped.
_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


# ------------------------------------------------------------------ the gradebook
@dataclass(frozen=True)
class Gradebook:
    """Every learner's verdict on every exercise: ``results[learner][exercise]`` is a ``CheckResult``."""

    exercises: tuple[str, ...]
    results: dict[str, dict[str, CheckResult]]

    @property
    def learners(self) -> list[str]:
        return sorted(self.results)

    def marks(self, learner: str) -> list[str]:
        """One of ✓ ✗ … per exercise, in column order."""
        return [MARKS[self.results[learner][name].status] for name in self.exercises]

    def total(self, learner: str) -> int:
        """How many exercises the learner has correct."""
        return sum(self.results[learner][name].passed for name in self.exercises)

    def rows(self) -> list[list[str]]:
        """The table's body: learner, one mark per exercise, total correct."""
        return [[learner, *self.marks(learner), str(self.total(learner))] for learner in self.learners]


# ------------------------------------------------------------ reading a submission
def submissions(folder: Path) -> list[Path]:
    """The notebooks in ``folder``, sorted; a ``ValueError`` naming the folder if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder (give the folder that holds the submitted notebooks)")
    notebooks = sorted(path for path in folder.glob("*.ipynb") if path.is_file())
    if not notebooks:
        raise ValueError(f"{folder}: no notebooks (*.ipynb) to grade in this folder")
    return notebooks


def code_cells(path: Path) -> list[str]:
    """The source of every code cell of a notebook file (nbformat 4 JSON), in order."""
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = [cell for cell in notebook.get("cells", []) if cell.get("cell_type") == "code"]
    return ["".join(cell.get("source", "")) for cell in cells]    # a list of lines, or one string


def _without_magics(source: str) -> str:
    """The cell with IPython's ``%magic`` and ``!shell`` lines commented out, so it parses as Python."""
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def defined_functions(source: str) -> set[str]:
    """The functions a cell defines at its top level (read line by line when the cell does not parse)."""
    try:
        tree = ast.parse(_without_magics(source))
    except SyntaxError:
        return set(re.findall(r"^(?:async\s+)?def\s+(\w+)\s*\(", source, flags=re.M))
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def exercise_cells(cells: Sequence[str]) -> dict[str, str]:
    """Exercise name -> the code cell that defines its function (the last one, as a run top to bottom leaves it)."""
    found = {}
    for source in cells:
        found.update({name: source for name in defined_functions(source) if name in EXERCISES})
    return found


def _is_constant(node: ast.stmt) -> bool:
    """An assignment of a literal (``EPS = 1e-5``): safe to run, and a function may read it."""
    if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
        return False
    try:
        ast.literal_eval(node.value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def definitions_of(source: str) -> ast.Module:
    """The cell's imports, function and class definitions and constant assignments (raises ``SyntaxError``)."""
    tree = ast.parse(_without_magics(source))
    tree.body = [node for node in tree.body if isinstance(node, _DEFINITIONS) or _is_constant(node)]
    return tree


# ------------------------------------------------------------------ grading
def _run_definitions(source: str, namespace: dict, filename: str) -> None:
    exec(compile(definitions_of(source), filename, "exec"), namespace)


def define(name: str, source: str, label: str = "<learner>", siblings: Sequence[str] = ()) -> Callable:
    """Run the prelude, then the definitions of ``siblings`` (the cells of the chapter's other
    exercises, which an exercise may call: notebook 03's FLOPs may use the learner's parameter
    counts; a sibling that fails is left out), then the cell's own: return function ``name``."""
    namespace: dict = {"__name__": "__learner__"}
    exec(compile(PRELUDE, "<prelude>", "exec"), namespace)
    for other in siblings:
        try:
            _run_definitions(other, namespace, f"<{label}: another exercise's cell>")
        except (Exception, SystemExit):    # graded as wrong in its own column, not here
            pass
    _run_definitions(source, namespace, f"<{label}: the cell defining {name}>")
    return namespace[name]


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``TimeoutError`` in the block after ``seconds`` (on Unix, in the main thread; else no limit)."""
    usable = (seconds and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"stopped after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Keep what the learner's code prints or warns out of the table, and undo the torch settings it changes."""
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)


def grade_exercise(name: str, cells: Sequence[str], label: str = "<learner>",
                   timeout: float | None = DEFAULT_TIMEOUT_S) -> CheckResult:
    """The verdict on exercise ``name`` for a learner whose notebook has these code cells."""
    return grade_defined(name, exercise_cells(cells), label, timeout)


def grade_defined(name: str, defined: Mapping[str, str], label: str = "<learner>",
                  timeout: float | None = DEFAULT_TIMEOUT_S) -> CheckResult:
    """The verdict on exercise ``name``, given the learner's exercise cells (``exercise_cells``)."""
    if name not in defined:
        return CheckResult(name, NOT_ATTEMPTED, f"no code cell defines `{name}`.")
    chapter = EXERCISES[name].notebook
    siblings = [source for other, source in defined.items() if other != name and EXERCISES[other].notebook == chapter]
    with quietly():
        try:
            with time_limit(timeout):
                fn = define(name, defined[name], label, siblings)
        except (Exception, SystemExit) as error:   # the learner's cell failed before the function existed
            return CheckResult(name, WRONG, f"the cell defining `{name}` raised {type(error).__name__}: {error}")
        try:
            with time_limit(timeout):
                return grade(name, fn)
        except SystemExit as error:                 # grade() reports exceptions, but not an exit
            return CheckResult(name, WRONG, f"your function called exit ({error}).")


def grade_notebook(path: Path, exercises: Sequence[str],
                   timeout: float | None = DEFAULT_TIMEOUT_S) -> dict[str, CheckResult]:
    """Every exercise's verdict for one submitted notebook (an unreadable file: all wrong)."""
    try:
        cells = code_cells(path)
    except (OSError, ValueError, AttributeError, TypeError) as error:
        message = f"{Path(path).name} could not be read as a notebook ({type(error).__name__}: {error})"
        return {name: CheckResult(name, WRONG, message) for name in exercises}
    defined = exercise_cells(cells)
    return {name: grade_defined(name, defined, Path(path).stem, timeout) for name in exercises}


def chosen_exercises(notebooks: Sequence[str] = ()) -> tuple[str, ...]:
    """The exercises of the notebooks named (``"02"`` or ``"02_expert_routing"``), all if none, in course order."""
    chapters = sorted({exercise.notebook for exercise in EXERCISES.values()})
    unknown = [wanted for wanted in notebooks if not any(chapter.startswith(wanted) for chapter in chapters)]
    if unknown:
        raise ValueError(f"no notebook {', '.join(unknown)}; the notebooks with exercises are {', '.join(chapters)}")
    return tuple(sorted((name for name, exercise in EXERCISES.items()
                         if not notebooks or any(exercise.notebook.startswith(wanted) for wanted in notebooks)),
                        key=lambda name: EXERCISES[name].notebook))


def grade_folder(folder: Path, exercises: Sequence[str] | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT_S) -> Gradebook:
    """Grade every notebook in ``folder`` on ``exercises`` (default: all of the course's)."""
    exercises = tuple(exercises) if exercises is not None else chosen_exercises()
    results = {path.stem: grade_notebook(path, exercises, timeout) for path in submissions(folder)}
    return Gradebook(exercises, results)


# ------------------------------------------------------------------ writing it out
def column_codes(exercises: Sequence[str]) -> list[str]:
    """Short column headings: ``02.1`` is the first exercise of notebook 02."""
    codes, counts = [], {}
    for name in exercises:
        chapter = EXERCISES[name].notebook[:2]
        counts[chapter] = counts.get(chapter, 0) + 1
        codes.append(f"{chapter}.{counts[chapter]}")
    return codes


def format_table(book: Gradebook) -> str:
    """The gradebook as aligned text: a header of column codes, one row per learner, then the legend."""
    header = ["learner", *column_codes(book.exercises), "total"]
    table = [header, *book.rows()]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    legend = [f"  {code}  {name} ({EXERCISES[name].notebook})"
              for code, name in zip(column_codes(book.exercises), book.exercises)]
    return "\n".join([*lines, "", f"✓ correct  ✗ wrong  … not attempted; total: correct of {len(book.exercises)}",
                      *legend])


def format_details(book: Gradebook) -> str:
    """Every wrong verdict with its message and hint, learner by learner: feedback to pass on."""
    lines = [f"{learner} · {result}" for learner in book.learners for name in book.exercises
             if (result := book.results[learner][name]).status == WRONG]
    return "\n".join(lines) if lines else "no wrong answers"


def write_csv(book: Gradebook, path: Path) -> None:
    """The same table as CSV (UTF-8 with a byte-order mark, so spreadsheets show ✓ ✗ …), full exercise names."""
    with open(path, "w", newline="", encoding="utf-8-sig") as file:
        writer = csv.writer(file)
        writer.writerow(["learner", *book.exercises, "total"])
        writer.writerows(book.rows())


# ------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moe_helpers.grading",
        description="Grade the course's exercises in a folder of submitted notebooks (one learner per "
                    ".ipynb, named by the file's stem). Only the cells that define the exercise functions run.")
    parser.add_argument("folder", type=Path, help="the folder holding the submitted .ipynb files")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the table to FILE as CSV")
    parser.add_argument("--notebook", action="append", default=[], metavar="NN",
                        help="grade only this notebook's exercises (02 or 02_expert_routing); repeatable")
    parser.add_argument("--details", action="store_true",
                        help="after the table, each wrong answer's message and hint (what the learner's check says)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"time allowed per exercise and learner (default {DEFAULT_TIMEOUT_S:g}; 0: no limit)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Grade, print the table, write the CSV; exit code 2 for a folder without notebooks."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        book = grade_folder(args.folder, chosen_exercises(args.notebook), args.timeout or None)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(format_table(book))
    if args.details:
        print("\n" + format_details(book))
    if args.csv:
        write_csv(book, args.csv)
        print(f"\nwritten to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
