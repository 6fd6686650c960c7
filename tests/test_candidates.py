"""Which plans a sweep measures: neighbours of the front, ranked by how close they are to it."""

from __future__ import annotations

import numpy as np
import pytest

from paretopipe.sweep.candidates import closeness, front_and_neighbours, neighbours


def test_closeness_is_the_improvement_factor_that_escapes_the_front():
    front = np.array([[10.0, 50.0], [20.0, 100.0]])  # (latency ms, throughput items/s)
    pts = np.array([[10.0, 50.0],    # on the front
                    [11.0, 45.0],    # 10% on latency (or 11% on throughput) from (10, 50)
                    [22.0, 90.0],    # dominated by (20, 100): 10% on latency or 11% on throughput
                    [5.0, 10.0],     # fastest of all: not dominated
                    [40.0, 25.0]])   # dominated by both; latency x2 or throughput x2 (by 10, 50), x4 by the other
    assert closeness(pts, front) == pytest.approx([1.0, 1.1, 1.1, 1.0, 2.0])
    assert closeness(pts, np.empty((0, 2))) == pytest.approx(np.ones(5))


def test_neighbours_move_one_cut_or_swap_devices():
    assert set(neighbours(((2,), (0, 1)), n_cuts=5, n_devices=2)) == {((1,), (0, 1)), ((3,), (0, 1)), ((2,), (1, 0))}
    # cuts stay strictly increasing and in range
    assert ((0, 1), (0, 1, 2)) not in neighbours(((0, 1), (0, 1, 2)), n_cuts=3, n_devices=3)


def test_ranked_neighbours_fill_the_room_closest_first():
    front = [((2,), (0, 1)), ((4,), (0, 1))]
    unranked = front_and_neighbours(front, 8, 2, limit=4)
    assert unranked == [*front, ((1,), (0, 1)), ((3,), (0, 1))]  # front order: neighbours of the first front plan
    far = {((1,), (0, 1)): 1.5, ((3,), (0, 1)): 1.3, ((2,), (1, 0)): 1.2, ((5,), (0, 1)): 1.01, ((4,), (1, 0)): 1.4}
    ranked = front_and_neighbours(front, 8, 2, limit=4, rank=lambda keys: [far[k] for k in keys])
    assert ranked == [*front, ((5,), (0, 1)), ((2,), (1, 0))]
    # never fewer than the front, never more than the front and its neighbours
    assert front_and_neighbours(front, 8, 2, limit=1) == front
    assert len(front_and_neighbours(front, 8, 2, limit=100)) == 2 + 5
