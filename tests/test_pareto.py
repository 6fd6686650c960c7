"""Pareto utilities: non-dominated mask (vs pymoo), hypervolume, knee point."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from paretopipe.errors import UsageError
from paretopipe.plan.pareto import hypervolume, knee_point, non_dominated_mask


def test_known_front_with_ties_and_max_sense():
    # columns: latency (min), throughput (max)
    F = np.array([[10, 5], [12, 8], [10, 5], [11, 4], [15, 8], [20, 9]], dtype=float)
    mask = non_dominated_mask(F, ["min", "max"])
    # rows 0 and 2 tie and are both kept; 3 is dominated by 0; 4 by 1
    assert mask.tolist() == [True, True, True, False, False, True]


def test_one_objective_keeps_all_minima():
    assert non_dominated_mask(np.array([[3.0], [1.0], [1.0], [2.0]]), ["min"]).tolist() == [False, True, True, False]


def test_empty_input():
    assert non_dominated_mask(np.zeros((0, 2)), ["min", "min"]).shape == (0,)


def _pymoo_first_front(G: np.ndarray) -> np.ndarray:
    mask = np.zeros(len(G), dtype=bool)
    mask[NonDominatedSorting().do(G, only_non_dominated_front=True)] = True
    return mask


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda m: arrays(np.int64, st.tuples(st.integers(1, 60), st.just(m)), elements=st.integers(0, 6))
    ),
    st.lists(st.sampled_from(["min", "max"]), min_size=4, max_size=4),
)
def test_matches_pymoo_first_front(F, senses):
    senses = senses[: F.shape[1]]
    sign = np.array([1 if s == "min" else -1 for s in senses])
    expected = _pymoo_first_front((F * sign).astype(float))
    assert non_dominated_mask(F, senses).tolist() == expected.tolist()


def test_large_three_objective_input_matches_pymoo():
    F = np.random.default_rng(3).integers(0, 30, (3000, 3)).astype(float)
    assert non_dominated_mask(F, ["min"] * 3).tolist() == _pymoo_first_front(F).tolist()


def test_hypervolume_by_hand():
    # minimisation staircase (1,3), (2,2), (3,1) up to (4,4): 1*1 + 1*2 + 1*3
    F = np.array([[1, 3], [2, 2], [3, 1]], dtype=float)
    assert hypervolume(F, [4, 4], ["min", "min"]) == pytest.approx(6.0)
    # the same front with the second objective maximised (negated values, negated reference)
    assert hypervolume(F * [1, -1], [4, -4], ["min", "max"]) == pytest.approx(6.0)
    # dominated points and points beyond the reference add nothing
    more = np.vstack([F, [[3.5, 3.5], [5, 0], [0, 5]]])
    assert hypervolume(more, [4, 4], ["min", "min"]) == pytest.approx(6.0)
    assert hypervolume(np.zeros((0, 2)), [4, 4], ["min", "min"]) == 0.0


def test_knee_point_by_hand():
    F = np.array([[0.0, 1.0], [0.2, 0.3], [0.5, 0.2], [1.0, 0.0], [0.9, 0.9]])
    assert knee_point(F, ["min", "min"]) == 1  # normalised sum 0.5: farthest below the line
    # senses respected: maximising the second column of the mirrored data gives the same knee
    assert knee_point(F * [1, -1], ["min", "max"]) == 1


def test_knee_point_ties_go_to_the_smallest_index_and_dominated_rows_are_skipped():
    F = np.array([[2.0, 2.0], [0.0, 1.0], [0.4, 0.4], [1.0, 0.0], [0.4, 0.4]])
    assert knee_point(F, ["min", "min"]) == 2
    on_line = np.array([[2.0, 2.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    assert knee_point(on_line, ["min", "min"]) == 1  # all three front points tie
    assert knee_point(np.array([[1.0, 1.0]]), ["min", "min"]) == 0


def test_errors_name_the_problem():
    with pytest.raises(UsageError, match="senses"):
        non_dominated_mask(np.zeros((3, 2)), ["min"])
    with pytest.raises(UsageError, match="'up'"):
        non_dominated_mask(np.zeros((3, 2)), ["min", "up"])
    with pytest.raises(UsageError, match="NaN"):
        non_dominated_mask(np.array([[np.nan, 1.0]]), ["min", "min"])
    with pytest.raises(UsageError, match="no points"):
        knee_point(np.zeros((0, 2)), ["min", "min"])
