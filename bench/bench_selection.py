"""Selection speed on CPU: WTD over 1M scored rows in 1,000 tasks, k-center over 20k embeddings.

Prints the figures and PASS/FAIL per check; exits 1 when any check fails.
`python bench/bench_selection.py [--rows N] [--tasks T] [--budget B]`
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import SelectionConfig  # noqa: E402
from model.kcenter import k_center  # noqa: E402
from model.strategies import Pool, select  # noqa: E402

WTD_LIMIT_S = 3.0
KCENTER_LIMIT_S = 10.0


def synthetic_pool(n_rows: int, n_tasks: int, seed: int = 0) -> Pool:
    """String task labels with uneven sizes and per-task confidence levels, like real scores."""
    rng = np.random.default_rng(seed)
    task_of_row = rng.zipf(1.3, n_rows) % n_tasks
    labels = np.array([f"task-{t:04d}" for t in range(n_tasks)])
    level = rng.uniform(0.05, 0.95, n_tasks)
    probs = np.clip(level[task_of_row] + rng.normal(0, 0.05, n_rows), 0.0, 1.0)
    return Pool(ids=np.arange(n_rows), tasks=labels[task_of_row], scores={"sequence_prob": probs})


def bench_wtd(n_rows: int, n_tasks: int, budget: int) -> bool:
    pool = synthetic_pool(n_rows, n_tasks)
    start = time.perf_counter()
    sel = select(pool, SelectionConfig(budget=budget))
    took = time.perf_counter() - start
    ok = took < WTD_LIMIT_S and len(sel.order) == budget == len(set(sel.order))
    print(f"weighted_task_diversity: {n_rows:,} rows, {len(sel.task_sizes):,} tasks, budget {budget:,}: "
          f"{took:.2f} s (limit {WTD_LIMIT_S:.0f} s) {'PASS' if ok else 'FAIL'}")
    return ok


def bench_kcenter(n: int, dim: int, k: int) -> bool:
    X = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    start = time.perf_counter()
    picks = k_center(X, k)
    took = time.perf_counter() - start
    ok = took < KCENTER_LIMIT_S and len(set(picks)) == k
    print(f"k_center: {n:,} x {dim} float32, {k:,} centres: {took:.2f} s (limit {KCENTER_LIMIT_S:.0f} s) "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--tasks", type=int, default=1_000)
    p.add_argument("--budget", type=int, default=20_000)
    a = p.parse_args()
    results = [bench_wtd(a.rows, a.tasks, a.budget), bench_kcenter(20_000, 384, 1_000)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
