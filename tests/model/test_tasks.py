"""k-means task inference recovers well-separated clusters, with k given or chosen by silhouette."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from model import tasks
from model.tasks import infer_tasks


def blobs(n_clusters: int, per_cluster: int, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(n_clusters, dim))
    truth = np.repeat(np.arange(n_clusters), per_cluster)
    return centres[truth] + rng.normal(scale=0.5, size=(len(truth), dim)), truth


def test_given_k_recovers_clusters():
    X, truth = blobs(3, 40)
    labels = infer_tasks(X, k=3)
    assert labels.dtype.kind == "i" and labels.shape == truth.shape
    assert adjusted_rand_score(truth, labels) == 1.0


def test_k_chosen_by_silhouette():
    X, truth = blobs(5, 30, seed=1)
    labels = infer_tasks(X, k_range=(2, 9))
    assert len(np.unique(labels)) == 5
    assert adjusted_rand_score(truth, labels) == 1.0


def test_k_chosen_on_a_subsample_for_large_inputs(monkeypatch):
    monkeypatch.setattr(tasks, "SILHOUETTE_SAMPLE", 60)
    X, truth = blobs(4, 100, seed=2)
    labels = infer_tasks(X, k_range=(2, 8))
    assert adjusted_rand_score(truth, labels) == 1.0  # the final fit labels every row


def test_deterministic_for_a_seed():
    X, _ = blobs(4, 25, seed=3)
    assert (infer_tasks(X, k_range=(2, 6), seed=4) == infer_tasks(X, k_range=(2, 6), seed=4)).all()


def test_degenerate_inputs():
    assert infer_tasks(np.ones((6, 3)), k=1).tolist() == [0] * 6
    assert infer_tasks(np.ones((6, 3))).tolist() == [0] * 6  # one distinct point: nothing to split
    assert infer_tasks(np.zeros((1, 3))).tolist() == [0]
    assert infer_tasks(np.zeros((0, 3))).tolist() == []


@pytest.mark.parametrize("k", [0, 7, -1])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        infer_tasks(np.random.default_rng(0).normal(size=(6, 2)), k=k)


def test_bad_k_range():
    with pytest.raises(ValueError, match="k_range"):
        infer_tasks(np.random.default_rng(0).normal(size=(6, 2)), k_range=(1, 4))
