"""Greedy furthest-first k-center against a brute force on small data."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.kcenter import k_center


def brute_force(X: np.ndarray, k: int, first: int) -> list[int]:
    """The definition, with a full distance matrix: each pick is the point furthest from all picks."""
    dist = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=-1)
    picks = [first]
    while len(picks) < k:
        picks.append(int(np.argmax(dist[:, picks].min(axis=1))))
    return picks


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("chunk", [3, 64, 65536])
def test_matches_brute_force(seed, chunk):
    X = np.random.default_rng(seed).normal(size=(60, 5))
    picks = k_center(X, 15, seed=seed, chunk=chunk)
    assert picks[0] == np.random.default_rng(seed).integers(60)  # documented seeded first centre
    assert picks == brute_force(X, 15, picks[0])


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(1, 6), st.integers(0, 10_000))
def test_each_pick_is_the_furthest_point(n, dim, seed):
    X = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    picks = k_center(X, n // 2 + 1, seed=seed, chunk=5)
    assert len(set(picks)) == len(picks)
    for i in range(1, len(picks)):
        to_centres = np.linalg.norm(X[:, None, :] - X[None, picks[:i], :], axis=-1).min(axis=1)
        assert to_centres[picks[i]] == pytest.approx(to_centres.max(), abs=1e-4)


def test_k_beyond_n_and_duplicates_still_give_distinct_picks():
    X = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert sorted(k_center(X, 10)) == [0, 1, 2, 3]
    assert k_center(X, 0) == []
    assert k_center(np.zeros((0, 3)), 5) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="k"):
        k_center(np.zeros((3, 2)), -1)
    with pytest.raises(ValueError, match="2-D"):
        k_center(np.zeros(3), 1)


def test_seed_changes_only_the_start():
    X = np.random.default_rng(3).normal(size=(200, 8))
    assert k_center(X, 20, seed=5) == k_center(X, 20, seed=5)
    starts = {k_center(X, 1, seed=s)[0] for s in range(5)}
    assert len(starts) > 1
