"""The verdicts of the benchmarks that check the figures in docs/: each turns a run's measurements
into the list of missed targets that makes the script exit non-zero (their timings and training
runs belong to the benchmarks' own runs, not to the tests)."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_benchmark


def _growth_run(saved, small_loss=2.2, target=1.75) -> dict:
    return {"saved": saved, "small_loss": small_loss, "target": target}


def test_growth_check_passes_when_the_second_recipe_saves_enough_at_every_seed():
    levers = load_benchmark("growth_levers")
    first = [_growth_run(0.205), _growth_run(None), _growth_run(0.287), _growth_run(0.237), _growth_run(None)]
    late = [_growth_run(saved) for saved in (0.324, 0.352, 0.367, 0.365, 0.352)]
    assert levers.missed_checks(first, late) == []


@pytest.mark.parametrize("late, first, reason", [
    (_growth_run(0.24), _growth_run(None), "saves 24.0%"),                     # not more than 25%
    (_growth_run(0.30), _growth_run(0.26), "above"),                           # only 4 points above
    (_growth_run(None), _growth_run(None), "saves 0.0%"),                      # never reached the target
    (_growth_run(0.50, small_loss=1.70), _growth_run(0.20), "alone"),          # growth did not do the work
])
def test_growth_check_names_the_seed_that_misses(late, first, reason):
    levers = load_benchmark("growth_levers")
    good = _growth_run(0.33)
    missed = levers.missed_checks([_growth_run(0.2)] * 2 + [first], [good, good, late])
    assert missed and all(line.startswith("seed 2:") for line in missed)
    assert any(reason in line for line in missed)


def _data_rows(stories=20_000, cold_s=4.8, cached_s=0.02, cold_mb=128.0, old_mb=1025.0, same=True):
    row = {"stories": stories, "baseline_mb": 100.0}
    return [{**row, "variant": "cold", "seconds": cold_s, "peak_mb": 100.0 + cold_mb},
            {**row, "variant": "cached", "seconds": cached_s, "peak_mb": 106.0},
            {**row, "variant": "old", "seconds": 5.0, "peak_mb": 100.0 + old_mb, "same_tokens": same}]


@pytest.mark.parametrize("change, reason", [
    ({}, None),
    ({"same": False}, "tokens differ"),
    ({"cached_s": 0.5}, "9.6x faster"),                 # 4.8 s / 0.5 s < 20x
    ({"cold_mb": 700.0, "old_mb": 5000.0}, "+700 MB"),
    ({"old_mb": 400.0}, "3.1x"),                        # 400 / 128 < 4x
])
def test_data_prep_targets(change, reason):
    missed = load_benchmark("data_prep").missed_targets(_data_rows(**change) + _data_rows(stories=100_000))
    if reason is None:
        assert missed == []
    else:
        assert len(missed) == 1 and missed[0].startswith("20,000:") and reason in missed[0]


def test_moe_layer_verdict_lists_each_missed_target():
    bench = load_benchmark("moe_layer")
    laptop = bench.benchmark_sizes(True)[0]
    assert bench.print_verdict([(laptop, {"moe": 1.05, "dense": 1.0, "hf-eager": 2.0}, 0.3)]) == []
    missed = bench.print_verdict([(laptop, {"moe": 1.2, "dense": 1.0, "hf-eager": 2.0, "hf-grouped_mm": 1.1}, 0.3)])
    assert missed == [f"{laptop.name}: moe/dense 1.20", f"{laptop.name}: slower than hf-grouped_mm"]
