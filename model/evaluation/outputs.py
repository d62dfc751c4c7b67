"""results.json (every run + metadata), table.md (mean +- std per strategy x budget) and curves.png
(metric vs budget per strategy), all written atomically so an interrupted run never leaves half a file.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from model.io import atomic_open
from model.evaluation.metrics import LOWER_IS_BETTER, METRIC_NAMES

RESULTS, TABLE, CURVES = "results.json", "table.md", "curves.png"
BASE, FULL = "base_model", "full_pool"
ABLATIONS = ("min_per_task", "metric", "rounds")
TITLES = {"nll": "NLL per reference token", "exact_match": "exact match", "rouge_l": "ROUGE-L F1"}


def load_results(out_dir) -> dict | None:
    path = Path(out_dir) / RESULTS
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_all(out_dir, doc: dict) -> None:
    out = Path(out_dir)
    with atomic_open(out / RESULTS) as f:
        json.dump(doc, f, indent=1, ensure_ascii=False, default=str)
    with atomic_open(out / TABLE) as f:
        f.write(render_table(doc))
    if doc["runs"]:
        plot_curves(doc, out / CURVES)


# ----------------------------------------------------------------------------------------- aggregate

def _varying(runs: list[dict]) -> list[str]:
    """Ablation fields with more than one value among the runs: only those go into row labels."""
    return [a for a in ABLATIONS if len({r.get(a) for r in runs if r.get(a) is not None}) > 1]


def row_label(run: dict, varying: list[str]) -> str:
    extras = [f"{a}={run[a]}" for a in varying if run.get(a) is not None]
    return run["strategy"] + (f" ({', '.join(extras)})" if extras else "")


def aggregate(runs: list[dict], metric: str) -> dict:
    """(row label, budget_n) -> list of macro values over seeds; base and full pool under their names."""
    varying = _varying(runs)
    cells: dict = defaultdict(list)
    for run in runs:
        cells[(row_label(run, varying), run["budget_n"])].append(run["macro"][metric])
    return dict(cells)


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


# --------------------------------------------------------------------------------------------- table

def render_table(doc: dict) -> str:
    meta, runs = doc["metadata"], doc["runs"]
    cfg = meta.get("config", {})
    status = "complete" if meta.get("complete") else (
        f"PARTIAL: {len(runs)} of {meta.get('planned_runs', '?')} planned runs done")
    lines = [f"# Evaluation: config `{cfg.get('name', '?')}` ({status})", "",
             f"Model `{meta.get('model')}`; {len(meta.get('tasks', []))} tasks, pool {meta.get('n_pool')} / "
             f"test {meta.get('n_test')} prompts; device {meta.get('device')}; last update {meta.get('updated')}.",
             "Cells: mean ± std over seeds of the macro average over tasks (n = seeds, shown when fewer than "
             "the most in the table). Best mean per budget in bold.", ""]
    for metric in METRIC_NAMES:
        lines += _metric_table(runs, metric, meta.get("n_pool"))
    return "\n".join(lines)


def _metric_table(runs: list[dict], metric: str, n_pool: int | None) -> list[str]:
    cells = aggregate(runs, metric)
    lower = LOWER_IS_BETTER[metric]
    labels = sorted({label for label, _ in cells if label not in (BASE, FULL)})
    budgets = sorted({n for label, n in cells if label not in (BASE, FULL)})
    most = max((len(v) for v in cells.values()), default=0)
    header = [f"{n} ({100 * n / n_pool:.0f}%)" if n_pool else str(n) for n in budgets]
    lines = [f"## {TITLES[metric]} ({'lower' if lower else 'higher'} is better)", "",
             "| strategy | " + " | ".join(header) + " |", "|---" * (len(budgets) + 1) + "|"]
    best = {}
    for n in budgets:
        means = [np.mean(cells[(label, n)]) for label in labels if (label, n) in cells]
        best[n] = min(means) if lower else max(means)
    for label in labels:
        row = []
        for n in budgets:
            if (label, n) not in cells:
                row.append("-")
                continue
            values = cells[(label, n)]
            mean, std = mean_std(values)
            text = f"{mean:.3f} ± {std:.3f}" + (f" (n={len(values)})" if len(values) < most else "")
            row.append(f"**{text}**" if np.isclose(mean, best[n]) and len(labels) > 1 else text)
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines.append("")
    for label, text in ((BASE, "Base model (no training)"), (FULL, "Full pool (same for every strategy)")):
        for (name, n), values in sorted(cells.items()):
            if name == label:
                mean, std = mean_std(values)
                lines.append(f"{text}, n={n}: {mean:.3f} ± {std:.3f} ({len(values)} run{'s' * (len(values) > 1)}).  ")
    return lines + [""]


# -------------------------------------------------------------------------------------------- curves

def plot_curves(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    fig, axes = plt.subplots(1, len(METRIC_NAMES), figsize=(5 * len(METRIC_NAMES), 4), squeeze=False)
    for ax, metric in zip(axes[0], METRIC_NAMES):
        cells = aggregate(runs, metric)
        full = [(n, mean_std(v)) for (label, n), v in cells.items() if label == FULL]
        for label in sorted({label for label, _ in cells if label not in (BASE, FULL)}):
            points = sorted((n, mean_std(v)) for (name, n), v in cells.items() if name == label) + full
            xs = [n for n, _ in points]
            ax.errorbar(xs, [m for _, (m, _) in points], yerr=[s for _, (_, s) in points], marker="o",
                        capsize=3, label=label)
        for (label, _), values in cells.items():
            if label == BASE:
                ax.axhline(np.mean(values), color="gray", linestyle="--", label="base model")
        ax.set_xscale("log")
        ticks = sorted({n for label, n in cells if label != BASE})
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.minorticks_off()
        ax.set_xlabel("budget (annotated pool examples; rightmost = full pool)")
        ax.set_title(f"{TITLES[metric]} ({'lower' if LOWER_IS_BETTER[metric] else 'higher'} is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"config {doc['metadata'].get('config', {}).get('name', '?')}: mean ± std over seeds")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
