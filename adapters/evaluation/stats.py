"""Accuracy with 95 % intervals, baselines, and paired-bootstrap differences of task averages.

Accuracies are in percent of the *answered* items; missing answers are counted apart. Averages over
tasks are unweighted (each task counts once, as in the tables). A difference between two sets is
resampled by item, the same items for both sets (paired), independently within each task.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Cell:
    accuracy: float  # percent of answered items
    low: float
    high: float
    n: int  # answered items
    missing: int


def wilson(correct: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion, in percent."""
    if n == 0:
        return (0.0, 100.0)
    p = correct / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return (100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half))


def cell(answers: Sequence[bool | None]) -> Cell:
    """`answers`: True/False per answered item, None per missing one."""
    answered = [a for a in answers if a is not None]
    correct = sum(answered)
    low, high = wilson(correct, len(answered))
    accuracy = 100.0 * correct / len(answered) if answered else float("nan")
    return Cell(accuracy, low, high, len(answered), len(answers) - len(answered))


def majority_baseline(golds: Sequence[int]) -> float:
    """Accuracy (percent) of always answering the most frequent gold label."""
    return 100.0 * Counter(golds).most_common(1)[0][1] / len(golds) if golds else float("nan")


def chance(choice_counts: Sequence[int]) -> float:
    """Expected accuracy (percent) of a uniform random pick among each item's choices."""
    return 100.0 * sum(1 / k for k in choice_counts) / len(choice_counts) if choice_counts else float("nan")


def top_prediction_share(predictions: Sequence[int | None]) -> float:
    """Share (percent) of answered items given the most frequent prediction: 100 means a constant answer."""
    answered = [p for p in predictions if p is not None]
    return 100.0 * Counter(answered).most_common(1)[0][1] / len(answered) if answered else float("nan")


def task_average(correct: Mapping[str, Sequence[bool]]) -> float:
    return 100.0 * sum(sum(v) / len(v) for v in correct.values()) / len(correct)


@dataclass(frozen=True)
class Difference:
    value: float  # percentage points, a − b
    low: float
    high: float


def paired_bootstrap(
    a: Mapping[str, Sequence[bool]], b: Mapping[str, Sequence[bool]], resamples: int = 2000, seed: int = 0
) -> Difference:
    """Difference of task-averaged accuracy a − b with its 95 % percentile interval.

    `a[task][i]` and `b[task][i]` are the same item; a missing answer counts as wrong here (so give
    both sets the same items; the tables report missing counts next to this)."""
    if set(a) != set(b) or any(len(a[t]) != len(b[t]) for t in a):
        raise ValueError("paired bootstrap needs the same tasks and items for both sets")
    rng = np.random.default_rng(seed)
    deltas = [np.array([int(x) - int(y) for x, y in zip(a[task], b[task])], dtype=np.float64) for task in a]
    observed = 100.0 * float(np.mean([d.mean() for d in deltas]))
    samples = np.zeros(resamples)
    for d in deltas:
        samples += d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    samples *= 100.0 / len(deltas)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Difference(observed, float(low), float(high))
