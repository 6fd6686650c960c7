"""Which plans a sweep measures: plans near the front, ranked by how close they are to it."""

from __future__ import annotations

import numpy as np
import pytest

from paretopipe.sweep.candidates import closeness, near_front, neighbours


def test_closeness_is_the_improvement_factor_that_escapes_the_front():
    front = np.array([[10.0, 50.0], [20.0, 100.0]])  # (latency ms, throughput items/s)
    pts = np.array(
        [
            [10.0, 50.0],  # on the front
            [11.0, 45.0],  # 10% on latency (or 11% on throughput) from (10, 50)
            [22.0, 90.0],  # dominated by (20, 100): 10% on latency or 11% on throughput
            [5.0, 10.0],  # fastest of all: not dominated
            [40.0, 25.0],
        ]
    )  # dominated by both; latency x2 or throughput x2 (by 10, 50), x4 by the other
    assert closeness(pts, front) == pytest.approx([1.0, 1.1, 1.1, 1.0, 2.0])
    assert closeness(pts, np.empty((0, 2))) == pytest.approx(np.ones(5))


def test_neighbours_move_one_cut_or_swap_devices():
    assert set(neighbours(((2,), (0, 1)), n_cuts=5, n_devices=2)) == {((1,), (0, 1)), ((3,), (0, 1)), ((2,), (1, 0))}
    # cuts stay strictly increasing and in range
    assert ((0, 1), (0, 1, 2)) not in neighbours(((0, 1), (0, 1, 2)), n_cuts=3, n_devices=3)


def test_plans_near_the_front_come_closest_first_within_the_margin():
    scores = {
        ((1,), (0, 1)): 1.5,
        ((3,), (0, 1)): 1.03,
        ((2,), (1, 0)): 1.08,
        ((5,), (0, 1)): 1.01,
        ((4,), (1, 0)): 1.03,
        ((6,), (0, 1)): 1.1,
    }
    assert near_front(scores, 0.10, room=10) == [
        ((5,), (0, 1)),
        ((3,), (0, 1)),
        ((4,), (1, 0)),
        ((2,), (1, 0)),
        ((6,), (0, 1)),
    ]
    assert near_front(scores, 0.05, room=10) == [
        ((5,), (0, 1)),
        ((3,), (0, 1)),
        ((4,), (1, 0)),
    ]  # ties keep their order
    assert near_front(scores, 0.10, room=2) == [((5,), (0, 1)), ((3,), (0, 1))]
    assert near_front(scores, 0.10, room=-3) == [] and near_front({}, 0.1, 5) == []


def test_error_factors_are_the_median_errors_of_the_plans_measured_on_the_same_devices():
    from paretopipe.sweep.candidates import error_factors

    predicted = {
        ((1,), (0, 1)): (10.0, 100.0),
        ((2,), (0, 1)): (20.0, 50.0),
        ((3,), (0, 1)): (30.0, 40.0),
        ((1,), (1, 0)): (10.0, 100.0),
    }
    measured = {  # on devices (0, 1): latency 1.2x, 1.5x, 1.3x; throughput 0.9x, 0.8x, 1.0x
        ((1,), (0, 1)): (12.0, 90.0),
        ((2,), (0, 1)): (30.0, 40.0),
        ((3,), (0, 1)): (39.0, 40.0),
        ((1,), (1, 0)): (5.0, 200.0),  # on (1, 0): 0.5x and 2x
    }
    factors = error_factors(predicted, measured)
    assert factors(((7,), (0, 1))) == pytest.approx((1.3, 0.9))
    assert factors(((7,), (1, 0))) == pytest.approx((0.5, 2.0))
    # devices with no measured plan: the median over every measured plan
    assert factors(((7,), (2, 0))) == pytest.approx((1.25, 0.95))
    assert error_factors({}, {})(((7,), (0, 1))) == (1.0, 1.0)
