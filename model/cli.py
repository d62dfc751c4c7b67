"""``python -m model score|select|report|evaluate``: the ML core from the shell.

Bad input (unreadable file, bad row, missing or non-numeric field, bad option value) prints one line
naming the file, row and field, and exits 2; outputs are written atomically, so a failed run leaves
no partial file.
"""
from __future__ import annotations

import argparse
import logging
import sys

from model import options
from model.budget import RULE as BUDGET_RULE
from model.config import METRICS, WITHIN_ORDERS, ScoringConfig, SelectionConfig
from model.io import InputError, read_jsonl, write_jsonl
from model.options import UsageError

EXIT_BAD_INPUT = 2
log = logging.getLogger("model")


def cmd_score(a) -> int:
    from model.loading import load_model
    from model.scoring import score_rows

    rows = read_jsonl(a.input, required=("id", "prompt"))
    for i, row in enumerate(rows, 1):
        if not isinstance(row["prompt"], str):
            raise InputError(a.input, i, "prompt", "not a string")
    cfg = ScoringConfig(model=a.model, adapter=a.adapter, device=a.device,
                        max_new_tokens=options.integer("max-new-tokens", a.max_new_tokens, 1),
                        batch_size=options.integer("batch-size", a.batch_size, 1))
    lm = load_model(cfg.model, adapter=cfg.adapter, device=cfg.device)
    write_jsonl(a.output, score_rows(rows, lm, cfg, start=a.start, stop=a.stop))
    return 0


def _selection_rows(a, cfg: SelectionConfig) -> list[dict]:
    """The input rows with the fields ``cfg.strategy`` needs (the registry says which), checked."""
    from model.strategies import needs

    need = needs(cfg)
    needs_prompt = need.prompts or a.infer_tasks is not None
    required = ("id",) + (("prompt",) if needs_prompt else ()) + (() if a.infer_tasks is not None else ("task",))
    rows = read_jsonl(a.input, required=required, numeric=(cfg.metric,) if need.metric else ())
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
        k = None if a.infer_tasks == "auto" else options.integer("infer-tasks", a.infer_tasks, 1)
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
    from dataclasses import replace

    from model.strategies import STRATEGIES, select

    budget = options.budget("budget", a.budget)
    cfg = SelectionConfig(budget=1, strategy=options.one_of("strategy", a.strategy, STRATEGIES),
                          min_per_task=options.integer("min-per-task", a.min_per_task, 0),
                          metric=options.one_of("metric", a.metric, METRICS),
                          within=options.one_of("within", a.within, WITHIN_ORDERS), seed=a.seed)
    rows = _selection_rows(a, cfg)
    cfg = replace(cfg, budget=budget.resolve(len(rows)))
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

    metric = options.one_of("metric", a.metric, METRICS)
    scores = read_jsonl(a.input, required=("id", "task"), numeric=(metric,))
    queue = read_jsonl(a.queue, required=("id", "task", "rank"))
    plot_allocation(scores, queue, a.output, metric=metric, budget=len(queue), strategy=a.strategy)
    print(a.output, file=sys.stderr)
    return 0


def _strategy_names() -> tuple[str, ...]:
    from model.strategies import STRATEGIES
    return STRATEGIES


def build_parser() -> argparse.ArgumentParser:
    p = options.Parser(prog="wtd", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=options.Parser)

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
    s.add_argument("--budget", required=True,
                   help=f"prompts to annotate: an int >= 1, or a fraction 0 < f <= 1 of the rows ({BUDGET_RULE})")
    s.add_argument("--output", required=True, help='JSONL {"id", "task", "rank"} in queue order')
    s.add_argument("--strategy", default=SelectionConfig.strategy, help=" | ".join(_strategy_names()))
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
