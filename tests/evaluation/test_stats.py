"""Intervals, baselines and the paired bootstrap on hand-made answers."""

from __future__ import annotations

import math

import pytest

from adapters.evaluation.stats import (
    cell,
    chance,
    majority_baseline,
    paired_bootstrap,
    task_average,
    top_prediction_share,
    wilson,
)


def test_wilson_matches_the_closed_form_and_stays_inside_0_100() -> None:
    low, high = wilson(50, 100)
    assert low == pytest.approx(40.38, abs=0.01) and high == pytest.approx(59.62, abs=0.01)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(100.0)
    assert wilson(0, 10)[1] == pytest.approx(27.75, abs=0.01)
    assert wilson(0, 0) == (0.0, 100.0)


def test_cell_counts_missing_answers_apart_from_wrong_ones() -> None:
    result = cell([True, False, None, True, None])
    assert (result.n, result.missing) == (3, 2)
    assert result.accuracy == pytest.approx(200 / 3)
    assert result.low < result.accuracy < result.high


def test_baselines() -> None:
    assert majority_baseline([0, 1, 1, 1]) == 75.0
    assert chance([2, 4]) == pytest.approx(37.5)
    assert top_prediction_share([1, 1, 1, 0, None]) == 75.0
    assert math.isnan(top_prediction_share([None]))


def test_paired_bootstrap_of_identical_sets_is_exactly_zero() -> None:
    answers = {"a": [True, False] * 50, "b": [False, True, True] * 20}
    difference = paired_bootstrap(answers, answers)
    assert (difference.value, difference.low, difference.high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_is_the_task_average_difference_with_an_interval_around_it() -> None:
    better = {"a": [True] * 80 + [False] * 20, "b": [True] * 30 + [False] * 30}
    worse = {"a": [True] * 60 + [False] * 40, "b": [True] * 30 + [False] * 30}
    difference = paired_bootstrap(better, worse, resamples=4000, seed=1)
    assert difference.value == pytest.approx(task_average(better) - task_average(worse)) == pytest.approx(10.0)
    # Task a: 20 of 100 items differ, all in favour: the per-task difference is 20 ± ~8 points, halved by the average.
    assert 5.0 < difference.low < 10.0 < difference.high < 15.0


def test_paired_bootstrap_refuses_unpaired_items() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap({"a": [True]}, {"a": [True, False]})
