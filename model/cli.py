"""``python -m model score|select|report|evaluate``: the ML core from the shell.

Bad input (unreadable file, bad row, missing or non-numeric field, bad option value) prints one line
naming the file, row and field, and exits 2; outputs are written atomically, so a failed run leaves
no partial file.
"""
from __future__ import annotations

import argparse
import logging
import sys

from model.config import METRICS, STRATEGIES, WITHIN_ORDERS, ScoringConfig, SelectionConfig
from model.io import InputError, read_jsonl, write_jsonl

EXIT_BAD_INPUT = 2
log = logging.getLogger("model")


class UsageError(ValueError):
    """A bad option value: reported like bad input (one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line and exit 2
        raise UsageError(message)


def _non_negative_int(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--{name}: not an integer: {value!r}")
    if n < 0:
        raise UsageError(f"--{name}: must be >= 0, got {n}")
    return n


def _positive_int(name: str, value: str) -> int:
    n = _non_negative_int(name, value)
    if n == 0:
        raise UsageError(f"--{name}: must be >= 1, got 0")
    return n


def _one_of(name: str, value: str, allowed) -> str:
    if value not in allowed:
        raise UsageError(f"--{name}: unknown value {value!r} (choose from {', '.join(allowed)})")
    return value


def cmd_score(a) -> int:
    from model.loading import load_model
    from model.scoring import score_rows

    rows = read_jsonl(a.input, required=("id", "prompt"))
    for i, row in enumerate(rows, 1):
        if not isinstance(row["prompt"], str):
            raise InputError(a.input, i, "prompt", "not a string")
    cfg = ScoringConfig(model=a.model, adapter=a.adapter, device=a.device,
                        max_new_tokens=_positive_int("max-new-tokens", a.max_new_tokens),
                        batch_size=_positive_int("batch-size", a.batch_size))
    lm = load_model(cfg.model, adapter=cfg.adapter, device=cfg.device)
    write_jsonl(a.output, score_rows(rows, lm, cfg, start=a.start, stop=a.stop))
    return 0


def _selection_rows(a) -> list[dict]:
    needs_prompt = a.strategy == "k_center" or a.within == "diverse" or a.infer_tasks is not None
    required = ("id",) + (("prompt",) if needs_prompt else ()) + (() if a.infer_tasks is not None else ("task",))
    uses_metric = a.strategy in ("weighted_task_diversity", "task_diversity") or a.within == "least_confident"
    rows = read_jsonl(a.input, required=required, numeric=(a.metric,) if uses_metric else ())
    seen = {}
    for i, row in enumerate(rows, 1):
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            raise InputError(a.input, i, "id", f"not a string or integer: {row['id']!r}")
        if row["id"] in seen:
            raise InputError(a.input, i, "id", f"duplicate of row {seen[row['id']]}")
        seen[row["id"]] = i
        if "task" in required and (isinstance(row["task"], bool) or not isinstance(row["task"], (str, int))):
            raise InputError(a.input, i, "task", f"not a string or integer: {row['task']!r}")
        if "prompt" in required and not isinstance(row["prompt"], str):
            raise InputError(a.input, i, "prompt", f"not a string: {row['prompt']!r}")
    if a.infer_tasks is not None:
        from model.embeddings import embed
        from model.tasks import infer_tasks
        k = None if a.infer_tasks == "auto" else _non_negative_int("infer-tasks", a.infer_tasks)
        labels = infer_tasks(embed([r["prompt"] for r in rows]), k=k, seed=a.seed)
        for row, label in zip(rows, labels):
            row["task"] = f"cluster-{int(label)}"
    return rows


def _print_summary(sel, strategy: str, metric: str, budget: int) -> None:
    conf = sel.task_confidence or {}
    width = max([len(str(t)) for t in sel.task_sizes] + [4])
    print(f"strategy={strategy} metric={metric} budget={budget} selected={len(sel.order)}", file=sys.stderr)
    print(f"{'task':<{width}}  {'n':>7}  {'confidence':>10}  {'allocation':>10}", file=sys.stderr)
    for task in sorted(sel.task_sizes, key=lambda t: (conf.get(t, 0.0), str(t))):
        c = f"{conf[task]:.4f}" if task in conf else "-"
        print(f"{str(task):<{width}}  {sel.task_sizes[task]:>7}  {c:>10}  {sel.allocation.get(task, 0):>10}",
              file=sys.stderr)


def cmd_select(a) -> int:
    from model.strategies import select

    cfg = SelectionConfig(budget=_non_negative_int("budget", a.budget),
                          strategy=_one_of("strategy", a.strategy, STRATEGIES),
                          min_per_task=_non_negative_int("min-per-task", a.min_per_task),
                          metric=_one_of("metric", a.metric, METRICS),
                          within=_one_of("within", a.within, WITHIN_ORDERS), seed=a.seed)
    rows = _selection_rows(a)
    try:
        sel = select(rows, cfg)
    except ValueError as e:  # the strategies' own input checks (e.g. a field a strategy needs)
        raise UsageError(f"{a.input}: {e}")
    write_jsonl(a.output, ({"id": rows[i]["id"], "task": rows[i]["task"], "rank": rank}
                           for rank, i in enumerate(sel.order)))
    _print_summary(sel, cfg.strategy, cfg.metric, cfg.budget)
    return 0


def cmd_report(a) -> int:
    from model.report import plot_allocation

    metric = _one_of("metric", a.metric, METRICS)
    scores = read_jsonl(a.input, required=("id", "task"), numeric=(metric,))
    queue = read_jsonl(a.queue, required=("id", "task", "rank"))
    plot_allocation(scores, queue, a.output, metric=metric, budget=len(queue), strategy=a.strategy)
    print(a.output, file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m model", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("score", help="generate a response for every prompt and its confidence metrics")
    s.add_argument("--input", required=True, help='JSONL rows {"id", "prompt", "task"?}')
    s.add_argument("--output", required=True, help="JSONL: input fields + response + metrics")
    s.add_argument("--model", default=None, help="local HF model folder (default: SmolLM2-135M-Instruct)")
    s.add_argument("--adapter", default=None, help="local peft LoRA adapter folder")
    s.add_argument("--max-new-tokens", default=str(ScoringConfig.max_new_tokens))
    s.add_argument("--batch-size", default=str(ScoringConfig.batch_size))
    s.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: CUDA when present)")
    s.add_argument("--start", type=int, default=0, help="score rows[start:stop] only (share a big input)")
    s.add_argument("--stop", type=int, default=None)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("select", help="allocate the budget and write the annotation queue")
    s.add_argument("--input", required=True, help="scored JSONL (from `score`)")
    s.add_argument("--budget", required=True, help="number of prompts to annotate")
    s.add_argument("--output", required=True, help='JSONL {"id", "task", "rank"} in queue order')
    s.add_argument("--strategy", default="weighted_task_diversity", help=" | ".join(STRATEGIES))
    s.add_argument("--min-per-task", default="5", help="base allocation per task (default 5)")
    s.add_argument("--metric", default="sequence_prob", help=" | ".join(METRICS))
    s.add_argument("--within", default="random", help=" | ".join(WITHIN_ORDERS))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--infer-tasks", default=None, metavar="K|auto",
                   help="ignore task labels: cluster prompt embeddings into K tasks (auto: by silhouette)")
    s.set_defaults(func=cmd_select)

    s = sub.add_parser("report", help="bar chart of per-task confidence and allocation")
    s.add_argument("--input", required=True, help="scored JSONL")
    s.add_argument("--queue", required=True, help="queue JSONL (from `select`)")
    s.add_argument("--output", required=True, help="PNG path")
    s.add_argument("--metric", default="sequence_prob", help=" | ".join(METRICS))
    s.add_argument("--strategy", default=None, help="shown in the title")
    s.set_defaults(func=cmd_report)

    from model.evaluation import cli as evaluation_cli
    s = sub.add_parser("evaluate", help="compare strategies: select, train LoRA, evaluate held-out")
    evaluation_cli.add_arguments(s)
    s.set_defaults(func=evaluation_cli.main)
    return p


def main(argv=None) -> int:
    try:
        a = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        return a.func(a)
    except (InputError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
