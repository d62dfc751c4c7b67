"""``python -m model evaluate``: options, input checks and run metadata around the harness."""
from __future__ import annotations

import logging
import os
import platform
import shlex
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from model import options
from model.config import METRICS
from model.evaluation.configs import CONFIGS, EvalConfig, get_config
from model.options import UsageError

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--config", default="small", help=f"{' | '.join(CONFIGS)} (default small)")
    p.add_argument("--output", required=True, help="folder for results.json, table.md, curves.png (resumable)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: CUDA when present)")
    p.add_argument("--data", default=None,
                   help='JSONL rows {"id", "task", "prompt", "reference", "split": pool|test} replacing the '
                        "config's data")
    p.add_argument("--model", default=None, help="local HF model folder replacing the config's base model")
    p.add_argument("--budgets", nargs="+", help="fractions of the pool (0.05) and/or example counts (16)")
    p.add_argument("--strategies", nargs="+", help=" ".join(_strategy_names()))
    p.add_argument("--seeds", nargs="+", help="integers")
    p.add_argument("--min-per-task", nargs="+", help="ablation: base allocation per task, e.g. 0 5 10")
    p.add_argument("--metric", nargs="+", help=f"ablation: confidence metric(s): {' '.join(METRICS)}")
    p.add_argument("--rounds", nargs="+", help="ablation: selection rounds R >= 1 (model.rounds; a budget B < R runs B rounds)")
    p.add_argument("--threads", default=None,
                   help="torch CPU threads; 1 is several times faster than 2 on a CPU other jobs share")


def _strategy_names() -> tuple[str, ...]:
    from model.strategies import STRATEGIES
    return STRATEGIES


def build_config(a) -> EvalConfig:
    try:
        cfg = get_config(a.config)
    except ValueError as e:
        raise UsageError(f"--config: {e}")
    overrides = {
        # The config keeps the numbers as given (it is written to results.json); the harness resolves them.
        "budgets": a.budgets and [options.budget("budgets", b).value for b in a.budgets],
        "strategies": a.strategies and options.choices("strategies", a.strategies, _strategy_names()),
        "seeds": a.seeds and options.integers("seeds", a.seeds, 0),
        "min_per_task": a.min_per_task and options.integers("min-per-task", a.min_per_task, 0),
        "metric": a.metric and options.choices("metric", a.metric, METRICS),
        "rounds": a.rounds and options.integers("rounds", a.rounds, 1),
        "model": a.model,
    }
    if a.model and not (Path(a.model).expanduser() / "config.json").exists():
        raise UsageError(f"--model: {a.model} is not a Hugging Face model folder (no config.json)")
    return replace(cfg, **{k: v for k, v in overrides.items() if v})


def load_rows(cfg: EvalConfig, data_path: str | None) -> list[dict]:
    from model.evaluation import data
    if data_path is not None:
        return data.read_rows(data_path)
    d = cfg.data
    if d.source == "synthetic":
        return data.synthetic_rows(d.pool_per_task, d.test_per_task, d.seed)
    return data.natural_instructions_rows(d.subtasks, d.pool_per_task, d.test_per_task, d.max_prompt_chars,
                                          d.max_reference_words, d.seed, d.definition)


def device_description(device: str | None) -> str:
    import torch
    from model.loading import resolve_device
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    cpu = platform.processor() or "CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def main(a) -> int:
    import torch
    from model.evaluation.harness import ResultsMismatch, run_experiment

    cfg = build_config(a)
    if a.threads is not None:
        torch.set_num_threads(options.integer("threads", a.threads, 1))
    rows = load_rows(cfg, a.data)
    try:
        device = device_description(a.device)
    except ValueError as e:
        raise UsageError(f"--device: {e}")
    metadata = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device,
                "command": shlex.join(["python", "-m", "model"] + sys.argv[1:]),
                "data": a.data or cfg.data.source, "versions": _versions()}
    try:
        run_experiment(cfg, rows, Path(a.output), a.device, metadata)
    except ResultsMismatch as e:
        raise UsageError(str(e))
    print(Path(a.output) / "table.md", file=sys.stderr)
    return 0


def _versions() -> dict:
    import peft
    import torch
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}
