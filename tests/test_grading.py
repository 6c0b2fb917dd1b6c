"""Grading a folder of submitted notebooks (``python -m moe_helpers.grading DIR``).

The submissions are made from the course's own notebooks 02 and 04: one learner
with the reference solutions of ``solutions/`` pasted into the exercise cells,
one with the notebooks as they ship (stubs) and one exercise deliberately wrong,
one whose exercise cells fail while they are being defined.  Only the cells that
define the exercise functions may run: the rest of each notebook is booby-trapped.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import nbformat
import pytest

from moe_helpers import grading
from moe_helpers.exercises import CORRECT, EXERCISES, NOT_ATTEMPTED, WRONG, exercises_of

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ("02_expert_routing", "04_sparse_upcycling")
GRADED = tuple(name for chapter in CHAPTERS for name in exercises_of(chapter))

WRONG_ROUTE_TOP_K = '''\
def route_top_k(router_logits, k):
    """Forgets to renormalise the k weights."""
    probs = router_logits.softmax(dim=-1)
    return probs.topk(k, dim=-1)
'''
FAILS_TO_PARSE = "def route_top_k(router_logits, k):\n    return router_logits.topk(k, dim=-1\n"
FAILS_TO_IMPORT = "import no_such_module_for_grading\n\n\ndef chosen_mass(router_logits, k):\n    return None\n"


def solution_source(name: str) -> str:
    """The reference solution of exercise ``name`` as text, decorators included (no module imports)."""
    text = (ROOT / "solutions" / f"{EXERCISES[name].notebook}.py").read_text()
    node = next(node for node in ast.parse(text).body if isinstance(node, ast.FunctionDef) and node.name == name)
    first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
    return "\n".join(text.splitlines()[first - 1:node.end_lineno]) + "\n"


def exercise_in(source: str) -> str | None:
    """The exercise whose function this course cell defines, if any."""
    return next((name for name in grading.defined_functions(source) if name in EXERCISES), None)


def submission(folder: Path, learner: str, replacements: dict[str, str], marker: Path) -> Path:
    """Notebooks 02 and 04 in one file, with the exercise cells named in ``replacements`` replaced.

    Every other code cell, and every defining cell's non-definition statements, would leave
    ``marker`` behind if they ran."""
    cells = []
    for chapter in CHAPTERS:
        cells += nbformat.read(ROOT / "notebooks" / f"{chapter}.ipynb", as_version=4).cells
    trap = f"open({str(marker)!r}, 'w').write('ran')\n"
    for cell in cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        name = exercise_in(cell.source)
        if name is None:
            cell.source = trap + cell.source
        else:
            cell.source = replacements.get(name, cell.source) + "\n" + trap
    path = folder / f"{learner}.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """A folder with three learners' notebooks, and the marker no cell may create."""
    folder = tmp_path_factory.mktemp("submissions")
    marker = folder.parent / "a-notebook-cell-ran"
    submission(folder, "ada", {name: solution_source(name) for name in GRADED}, marker)
    submission(folder, "bob", {"route_top_k": WRONG_ROUTE_TOP_K}, marker)
    submission(folder, "cy", {"route_top_k": FAILS_TO_PARSE, "chosen_mass": FAILS_TO_IMPORT}, marker)
    return folder, marker


@pytest.fixture(scope="module")
def book(submitted):
    folder, _ = submitted
    return grading.grade_folder(folder)


def test_each_learner_gets_a_row_and_each_exercise_a_column(book):
    assert book.learners == ["ada", "bob", "cy"]
    assert book.exercises == tuple(EXERCISES)                       # every exercise, in course order
    for learner in book.learners:
        others = {name: status.status for name, status in book.results[learner].items() if name not in GRADED}
        assert set(others.values()) == {NOT_ATTEMPTED}              # no cell defines them


def test_the_table_cells(book):
    column = {name: index for index, name in enumerate(book.exercises)}
    graded = lambda learner: [book.marks(learner)[column[name]] for name in GRADED]   # noqa: E731
    assert GRADED == ("route_top_k", "moe_forward", "balance_loss", "upcycle_state_dict", "chosen_mass")
    assert graded("ada") == ["✓", "✓", "✓", "✓", "✓"]
    assert graded("bob") == ["✗", "…", "…", "…", "…"]
    assert graded("cy") == ["✗", "…", "…", "…", "✗"]
    assert [book.total(learner) for learner in book.learners] == [5, 0, 0]


def test_a_cell_that_fails_while_being_defined_is_wrong_and_says_why(book):
    assert book.results["cy"]["route_top_k"].status == WRONG
    assert "SyntaxError" in book.results["cy"]["route_top_k"].message
    assert book.results["cy"]["chosen_mass"].status == WRONG
    assert "no_such_module_for_grading" in book.results["cy"]["chosen_mass"].message
    assert book.results["bob"]["route_top_k"].status == WRONG and book.results["bob"]["route_top_k"].hint


def test_nothing_but_the_definitions_runs(submitted, book):
    _, marker = submitted
    assert not marker.exists()


def test_the_command_prints_the_table_and_writes_the_same_csv(submitted, tmp_path, capsys):
    folder, _ = submitted
    out = tmp_path / "grades.csv"
    assert grading.main([str(folder), "--notebook", "02", "--notebook", "04_sparse_upcycling",
                         "--csv", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["learner", "02.1", "02.2", "02.3", "04.1", "04.2", "total"]
    body = [line.split() for line in printed[2:5]]
    assert body == [["ada", "✓", "✓", "✓", "✓", "✓", "5"],
                    ["bob", "✗", "…", "…", "…", "…", "0"],
                    ["cy", "✗", "…", "…", "…", "✗", "0"]]
    assert "  02.1  route_top_k (02_expert_routing)" in printed
    with open(out, newline="", encoding="utf-8-sig") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["learner", *GRADED, "total"]
    assert rows[1:] == body


def test_details_pass_on_each_wrong_answers_hint(book):
    details = grading.format_details(grading.Gradebook(GRADED, book.results)).splitlines()
    assert details[0].startswith("bob · ✗ route_top_k: wrong.") and "hint:" in details[1]
    assert sum(line.startswith("cy · ✗") for line in details) == 2
    assert not any(line.startswith("ada") for line in details)


@pytest.mark.parametrize("make", [lambda path: None, lambda path: path.mkdir()], ids=["missing", "empty"])
def test_a_folder_without_notebooks_is_a_clear_error(tmp_path, capsys, make):
    folder = tmp_path / "submissions"
    make(folder)
    with pytest.raises(ValueError, match="submissions"):
        grading.grade_folder(folder)
    with pytest.raises(SystemExit) as stopped:
        grading.main([str(folder)])
    assert stopped.value.code == 2
    assert str(folder) in capsys.readouterr().err


def test_an_unknown_notebook_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        grading.main([str(tmp_path), "--notebook", "99"])
    assert stopped.value.code == 2 and "no notebook 99" in capsys.readouterr().err


def test_every_reference_solution_needs_only_the_prelude_and_its_chapter():
    """Each solution in solutions/, pasted into a cell of its own (no imports), is graded correct;
    notebook 03's FLOPs call its parameter counts, defined in the exercise cell before."""
    for name in EXERCISES:
        chapter = [solution_source(other) for other in exercises_of(EXERCISES[name].notebook)]
        result = grading.grade_exercise(name, chapter)
        assert result.status == CORRECT, result
    alone = grading.grade_exercise("forward_flops_per_token", [solution_source("forward_flops_per_token")])
    assert alone.status == WRONG and "moe_parameter_counts" in alone.message


def test_an_unreadable_notebook_is_wrong_everywhere_and_the_others_are_graded(tmp_path):
    (tmp_path / "broken.ipynb").write_text("{ not json")
    submission(tmp_path, "ada", {"route_top_k": solution_source("route_top_k")}, tmp_path / "ran")
    book = grading.grade_folder(tmp_path, ["route_top_k", "chosen_mass"])
    assert book.marks("broken") == ["✗", "✗"] and "could not be read" in book.results["broken"]["route_top_k"].message
    assert book.marks("ada") == ["✓", "…"]


def test_a_function_that_never_returns_is_stopped_and_wrong():
    cell = "def rank_of_expert(expert, num_experts, ranks):\n    while True:\n        pass\n"
    result = grading.grade_exercise("rank_of_expert", [cell], timeout=0.3)
    assert result.status == WRONG and "TimeoutError" in result.message


def test_the_last_cell_defining_a_function_wins_and_prints_stay_out_of_the_table(capsys):
    first = "def chosen_mass(router_logits, k):\n    raise NotImplementedError\n"
    again = "print('hello')\n\ndef chosen_mass(router_logits, k):\n    print('working')\n" \
            "    return router_logits.softmax(-1).topk(k, dim=-1).values.sum(-1)\n"
    assert grading.grade_exercise("chosen_mass", [first, again]).status == CORRECT
    assert grading.grade_exercise("chosen_mass", [again, first]).status == NOT_ATTEMPTED
    assert capsys.readouterr().out == ""
