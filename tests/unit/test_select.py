"""Tests for eas.core.select: the one rule that picks a steering cell on val."""

from __future__ import annotations

import math

import pytest

from eas.core.select import best_cell, selection_key


def _as_the_steer_job_did(val: dict[tuple[int, float], float]) -> tuple[int, float] | None:
    """The rule as the steer job wrote it before it called best_cell."""
    return max(val, key=lambda c: (val[c], -abs(c[1]), -c[0])) if val else None


@pytest.mark.parametrize(
    ("val", "expected"),
    [
        ({(8, 4.0): 0.7, (4, 1.0): 0.7, (2, -2.0): 0.7}, (4, 1.0)),  # smaller |strength|
        ({(8, 1.0): 0.7, (4, -1.0): 0.7, (12, 1.0): 0.7}, (4, -1.0)),  # then lower layer
        ({(8, 4.0): 0.8, (4, 1.0): 0.7}, (8, 4.0)),  # accuracy first
        ({(4, 1.0): 0.5, (4, -1.0): 0.5}, (4, 1.0)),  # a full tie: the first cell
        ({(2, 1.0): 0.4}, (2, 1.0)),
    ],
)
def test_best_cell_tie_breaks(val, expected) -> None:
    assert best_cell(val) == expected == _as_the_steer_job_did(val)


def test_best_cell_of_accuracies_k_over_n_is_the_steer_jobs_pick() -> None:
    n = 37
    cells = [(layer, s) for layer in (2, 5, 9) for s in (-4.0, -1.0, 0.5, 1.0, 4.0)]
    for shift in range(40):
        val = {c: ((i * 7 + shift) % 11) / n for i, c in enumerate(cells)}
        assert best_cell(val) == _as_the_steer_job_did(val)


def test_float_noise_is_a_tie_and_nan_ranks_last() -> None:
    assert best_cell({(8, 1.0): 0.1 + 0.2, (4, 1.0): 0.3}) == (4, 1.0)
    assert best_cell({(2, 1.0): math.nan, (8, 4.0): 0.1}) == (8, 4.0)
    assert best_cell({}) is None
    assert selection_key(0.75, 3, -2.0) == (-0.75, 2.0, 3)
