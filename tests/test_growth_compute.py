"""Compute saved by growth: FLOPs curves from a History, where a curve reaches a loss, the share saved."""

from __future__ import annotations

import pytest

from moe_helpers.growth_compute import compute_saved, flops_curve, flops_to_reach
from moe_helpers.train import History


def history_of(evaluations: list[tuple[int, float]]) -> History:
    """A History with a log record between every two evaluations (``(tokens, val_loss)`` pairs)."""
    records = []
    for index, (tokens, val_loss) in enumerate(evaluations):
        records.append({"phase": 1, "step": index, "tokens": tokens, "val_loss": val_loss})
        records.append({"phase": 1, "step": index, "tokens": tokens + 1, "val_loss": None})
    return History(records)


def test_flops_curve_counts_tokens_times_flops_plus_what_was_spent():
    history = history_of([(0, 7.0), (100, 5.0), (200, 4.0)])
    assert flops_curve(history, 10.0) == ([0.0, 1000.0, 2000.0], [7.0, 5.0, 4.0])
    assert flops_curve(history, 10.0, already_spent=500.0) == ([500.0, 1500.0, 2500.0], [7.0, 5.0, 4.0])


@pytest.mark.parametrize("target, expected", [
    (8.0, 0.0),       # already there at the start
    (5.0, 10.0),      # exactly at an evaluation
    (4.5, 15.0),      # half way between two evaluations
    (4.0, 20.0),
    (3.0, None),      # never
])
def test_flops_to_reach_interpolates_linearly(target, expected):
    assert flops_to_reach([0.0, 10.0, 20.0], [7.0, 5.0, 4.0], target) == expected


def test_flops_to_reach_takes_the_first_crossing():
    # the loss bumps up after growth and crosses the target twice: the first crossing counts
    assert flops_to_reach([0.0, 10.0, 20.0, 30.0], [5.0, 3.0, 5.0, 3.0], 4.0) == pytest.approx(5.0)


def test_flops_to_reach_rejects_mismatched_curves_and_handles_empty_ones():
    with pytest.raises(ValueError, match="same length"):
        flops_to_reach([0.0, 1.0], [1.0], 0.5)
    assert flops_to_reach([], [], 1.0) is None


def test_compute_saved_against_the_scratch_runs_final_loss():
    scratch = ([0.0, 50.0, 100.0], [7.0, 5.0, 4.0])                 # target 4.0 after 100 FLOPs
    assert compute_saved(([20.0, 40.0, 60.0], [5.0, 4.5, 4.0]), scratch) == pytest.approx(0.4)
    assert compute_saved(([20.0, 80.0, 140.0], [5.0, 4.5, 4.0]), scratch) == pytest.approx(-0.4)   # cost more
    assert compute_saved(([20.0, 60.0], [5.0, 4.5]), scratch) is None   # never reached
