"""Annotation budget -> per-task counts (Weighted Task Diversity, arXiv 2507.21482).

Rules (also in docs/selection.md):

* Per-example confidence is a monotone transform of the metric so that *lower always means less
  confident*: ``sequence_prob`` and ``min_margin`` as they are, ``exp(mean_logprob)`` (the per-token
  geometric-mean probability) and ``exp(-mean_entropy)`` (entropy is higher when less confident).
  A task's confidence c_t is the mean of its examples' confidences; its weight is
  w_t = 1 / c_t, scaled by the smallest c_t (only ratios matter); c_t = 0 is floored at the
  smallest positive float.
* Every task first gets its base, min(min_per_task, n_t); the rest of min(B, pool size) is shared in
  proportion to w_t among tasks that still have room, capped by n_t, re-sharing whatever a cap
  frees until it is all used (water filling). Real shares become integers by largest remainder.
* When B is smaller than the sum of the bases, B is spread as evenly as possible instead: a common
  level, each task capped by its base, with the units left over going one each to the least
  confident tasks first.
* Ties (equal remainders) go to the higher weight, then, with ``seed=None``, to the earlier task in
  the given order, or with a seed, in a seeded random order of the tasks (deterministic per seed).
  ``select`` passes its seed: with equal weights (``task_diversity``) every remainder ties whenever the
  budget does not split evenly, and a fixed order would give the extra units to the same
  (alphabetically first) tasks for every seed.
"""
from __future__ import annotations

import numbers
from collections.abc import Hashable, Mapping

import numpy as np

from model.config import METRICS

CONFIDENCE_FLOOR = np.finfo(np.float64).tiny
"""A task whose confidence is 0 (``sequence_prob`` underflows on long responses) counts as this.
A fixed epsilon would flatten real confidences: a 64-token response at mean log-prob -0.5 has
sequence_prob ~1e-14, and every task below the epsilon would get the same weight."""


def check_count(name: str, value) -> int:
    """``value`` as an int, or ValueError: counts must be non-negative integers (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def example_confidence(values, metric: str) -> np.ndarray:
    """Per-example confidence from a metric column, on a scale where lower = less confident."""
    values = np.asarray(values, dtype=np.float64)
    if metric in ("sequence_prob", "min_margin"):
        return values
    if metric == "mean_logprob":
        return np.exp(values)
    if metric == "mean_entropy":
        return np.exp(-values)
    raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")


def task_confidence(values_by_task: Mapping[Hashable, object], metric: str) -> dict:
    """c_t: the mean per-example confidence of each task's prompts."""
    return {task: float(example_confidence(values, metric).mean()) for task, values in values_by_task.items()}


def confidence_weights(confidence) -> np.ndarray:
    """w_t proportional to 1 / c_t, as c_min / c_t in (0, 1] so that 1/1e-300 cannot overflow."""
    c = np.maximum(np.asarray(confidence, dtype=np.float64), CONFIDENCE_FLOOR)
    return c.min() / c


def allocate(sizes: Mapping[Hashable, int], budget: int, min_per_task: int = 5,
             weights: Mapping[Hashable, float] | None = None, seed: int | None = None) -> dict:
    """Per-task counts summing to min(budget, total size); ``weights=None`` means equal weights;
    ``seed`` breaks the ties left after the weights (None: the given task order)."""
    tasks = list(sizes)
    if weights is not None:
        missing = [t for t in tasks if t not in weights]
        if missing:
            raise ValueError(f"no weight for task(s) {missing[:5]}")
    counts = allocate_array([check_count(f"size of task {t!r}", sizes[t]) for t in tasks], budget,
                            min_per_task, None if weights is None else [weights[t] for t in tasks], seed)
    return dict(zip(tasks, counts.tolist()))


def allocate_array(sizes, budget: int, min_per_task=5, weights=None, seed: int | None = None) -> np.ndarray:
    """``allocate`` on arrays (task i = position i): the vectorised core that ``select`` uses.

    ``min_per_task`` is one int, or one per task (a later selection round tops up what earlier
    rounds left of each task's base, see ``model.rounds``).
    """
    budget = check_count("budget", budget)
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if (sizes < 0).any():
        raise ValueError("task sizes must be non-negative")
    if np.ndim(min_per_task) == 0:
        min_per_task = check_count("min_per_task", min_per_task)
    else:
        min_per_task = np.asarray(min_per_task).reshape(-1)
        if min_per_task.shape != sizes.shape or min_per_task.dtype.kind not in "iu" or (min_per_task < 0).any():
            raise ValueError("min_per_task must be a non-negative integer or one per task")
    weights = np.ones(len(sizes)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if weights.shape != sizes.shape or not (np.isfinite(weights) & (weights > 0)).all():
        raise ValueError("weights must be finite, positive and one per task")
    total = min(budget, int(sizes.sum()))
    base = np.minimum(sizes, min_per_task)
    # Last tie-break: the given order, or a seeded random order of the tasks.
    position = np.arange(len(sizes)) if seed is None else np.random.default_rng(seed).permutation(len(sizes))
    if total < base.sum():
        # Too little for every base: one common level (equal weights), leftovers least confident first.
        return _largest_remainder(total, base, np.ones(len(sizes)), (weights, position))
    return base + _largest_remainder(total - int(base.sum()), sizes - base, weights, (weights, position))


def _largest_remainder(amount: int, caps: np.ndarray, weights: np.ndarray,
                       tiebreak: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Integers <= caps summing to ``amount``, as close as possible to the water-filling shares;
    equal remainders go to the higher ``tiebreak[0]`` (weight), then the lower ``tiebreak[1]`` (position)."""
    share = _water_fill(amount, caps, weights)
    # Snap float noise (2.9999999999 for an exact 3) so it cannot leak a unit to the wrong task.
    nearest = np.round(share)
    share = np.where(np.abs(share - nearest) <= 1e-9 * np.maximum(1.0, share), nearest, share)
    counts = np.floor(share).astype(np.int64)
    left = amount - int(counts.sum())
    if left:
        fraction = np.where(counts < caps, share - counts, -1.0)  # tasks at their cap take no more
        tie_weight, position = tiebreak
        order = np.lexsort((position, -tie_weight, -fraction))
        counts[order[:left]] += 1
    return counts


def _water_fill(amount: int, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Real shares x_t = min(cap_t, level * w_t) with sum x = amount.

    This is the fixed point of "share in proportion to w among tasks with room, cap, re-share the
    excess": tasks saturate in the order of cap_t / w_t, so the level is found with one sort.
    """
    if amount >= caps.sum():
        return caps.astype(np.float64)
    by_saturation = np.argsort(caps / weights, kind="stable")
    sorted_caps, sorted_w = caps[by_saturation].astype(np.float64), weights[by_saturation]
    caps_before = np.concatenate(([0.0], np.cumsum(sorted_caps)[:-1]))  # first j tasks saturated
    weight_from = np.cumsum(sorted_w[::-1])[::-1]  # weight of tasks j.. still filling
    levels = (amount - caps_before) / weight_from
    # The first j whose own saturation point is not below the level it would need: tasks j.. fill.
    j = int(np.argmax(levels <= sorted_caps / sorted_w))
    return np.minimum(caps, levels[j] * weights)
