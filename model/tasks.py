"""Task labels for prompts that have none: k-means over their sentence embeddings.

``strategies.select`` never calls this implicitly: rows without a ``task`` are an input error
there, and the caller (CLI ``--infer-tasks``, the backend) decides to cluster first.
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from model.allocation import check_count

SILHOUETTE_SAMPLE = 3000
"""Choosing k fits and scores on at most this many rows (silhouette is O(n^2)); the final fit uses all."""
N_INIT = 4


def infer_tasks(X, k: int | None = None, k_range: tuple[int, int] = (2, 20), seed: int = 0) -> np.ndarray:
    """An int label per row of X: k clusters, or the k in k_range (inclusive) with the best silhouette."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {X.shape}")
    if k is None:
        k = _choose_k(X, k_range, seed)
    elif not 1 <= check_count("k", k) <= max(len(X), 1):
        raise ValueError(f"k must be between 1 and the number of prompts ({len(X)}), got {k}")
    if k <= 1 or len(X) == 0:
        return np.zeros(len(X), dtype=np.int64)
    return _kmeans(X, k, seed).labels_.astype(np.int64)


def _choose_k(X: np.ndarray, k_range: tuple[int, int], seed: int) -> int:
    low, high = (check_count("k_range", v) for v in k_range)
    if low < 2 or high < low:
        raise ValueError(f"k_range must be (low, high) with 2 <= low <= high, got {k_range}")
    rng = np.random.default_rng(seed)
    sample = X[rng.choice(len(X), SILHOUETTE_SAMPLE, replace=False)] if len(X) > SILHOUETTE_SAMPLE else X
    high = min(high, len(np.unique(sample, axis=0)) - 1)  # silhouette needs 2 <= k <= distinct points - 1
    if high < low:
        return 1  # too few distinct prompts to split
    scores = {k: silhouette_score(sample, _kmeans(sample, k, seed).labels_) for k in range(low, high + 1)}
    return max(scores, key=lambda k: (scores[k], -k))  # ties: fewer tasks


def _kmeans(X: np.ndarray, k: int, seed: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(X)
