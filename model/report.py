"""Admin bar chart: per-task model confidence next to the annotation budget each task received."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import NamedTuple

from model.allocation import task_confidence
from model.config import METRICS
from model.io import InputError, atomic_open

_MAX_LABEL = 32
"""Longer task names are shortened in the middle on the axis: both ends tend to tell tasks apart."""


def task_values(score_rows: list[dict], metric: str) -> dict[object, list[float]]:
    """``metric`` values grouped by task; a missing or non-numeric value is an ``InputError``."""
    values = defaultdict(list)
    for i, row in enumerate(score_rows, 1):
        for field in ("task", metric):
            if row.get(field) is None:
                raise InputError("scores", i, field, "missing")
        v = row[metric]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError("scores", i, metric, f"not a finite number: {v!r}")
        values[row["task"]].append(float(v))
    if not values:
        raise InputError("scores", None, None, "no rows (empty input)")
    return values


def allocated(queue_rows: list[dict], tasks) -> Counter:
    """Queue entries per task; a queue task that has no scores is an ``InputError`` (wrong file pair)."""
    counts = Counter()
    for i, row in enumerate(queue_rows, 1):
        task = row.get("task")
        if task not in tasks:
            raise InputError("queue", i, "task", f"task {task!r} does not appear in the scores")
        counts[task] += 1
    return counts


class TaskBar(NamedTuple):
    task: object
    confidence: float
    allocated: int
    size: int
    """Scored rows of the task (its pool size)."""


def allocation_table(score_rows: list[dict], queue_rows: list[dict], metric: str = "sequence_prob"
                     ) -> list[TaskBar]:
    """One bar per task, least confident first.

    Confidence is ``allocation.task_confidence``: the very c_t that weights the allocation, on a
    scale where higher = more confident for every metric.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    values = task_values(score_rows, metric)
    conf = task_confidence(values, metric)
    counts = allocated(queue_rows, conf)
    tasks = sorted(conf, key=lambda t: (conf[t], str(t)))
    return [TaskBar(t, conf[t], counts[t], len(values[t])) for t in tasks]


def summary_table(task_confidence: dict, allocation: dict, task_sizes: dict) -> list[TaskBar]:
    """``allocation_table`` from a selection's per-task summary (``Selection`` or the backend's
    ``/metrics`` ``selection``) instead of score and queue rows; least confident first."""
    conf = {t: task_confidence.get(t, math.nan) for t in task_sizes}
    tasks = sorted(task_sizes, key=lambda t: (math.isnan(conf[t]), conf[t], str(t)))
    return [TaskBar(t, conf[t], int(allocation.get(t, 0)), int(task_sizes[t])) for t in tasks]


def _label(task) -> str:
    s = str(task)
    if len(s) <= _MAX_LABEL:
        return s
    head = (_MAX_LABEL - 1) // 2
    return s[:head] + "…" + s[-(_MAX_LABEL - 1 - head):]


def plot_allocation(score_rows: list[dict], queue_rows: list[dict], out_png, metric: str = "sequence_prob",
                    budget: int | None = None, strategy: str | None = None) -> Path:
    """Write a two-panel PNG - task confidence (top), allocated count (bottom) - and return its path.

    Bars follow ``allocation_table``: least confident first, so the tasks that should get the most
    budget are on the left.
    """
    table = allocation_table(score_rows, queue_rows, metric)
    return plot_table(table, out_png, metric, budget if budget is not None else len(queue_rows), strategy,
                      budget_label="budget" if budget is not None else "selected")


def plot_table(table: list[TaskBar], out_png, metric: str = "sequence_prob", budget: int | None = None,
               strategy: str | None = None, budget_label: str = "budget") -> Path:
    """The two-panel PNG of ``plot_allocation`` from ready bars (``allocation_table``, ``summary_table``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # not pyplot: no global state, safe in a worker thread

    labels = [_label(bar.task) for bar in table]
    x = range(len(table))

    fig = Figure(figsize=(max(6.0, 0.45 * len(table) + 2), 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(x, [bar.confidence for bar in table], color="tab:blue")
    top.set_ylabel(f"task confidence\n(from {metric})")
    bars = bottom.bar(x, [bar.allocated for bar in table], color="tab:orange")
    bottom.bar_label(bars, labels=[f"{bar.allocated}/{bar.size}" for bar in table], fontsize=8)
    bottom.set_ylabel("allocated (of pool)")
    bottom.margins(y=0.15)  # room for the bar labels
    long_names = len(table) > 8 or max(len(s) for s in labels) > 8
    bottom.set_xticks(list(x), labels, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    bottom.set_xlabel("task (least confident first)")
    details = [f"strategy={strategy}"] if strategy else []
    if budget is not None:
        details.append(f"{budget_label}={budget}")
    fig.suptitle("Per-task confidence and allocation\n" + ", ".join(details))

    out = Path(out_png)
    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return out
