"""The comparison: for every (strategy, budget, seed, ablation values) select pool prompts, train a
LoRA adapter on them with their references as the annotators' responses, and evaluate held out.

Runs are planned seed-major (every strategy and budget of seed 0, then seed 1, ...), so a run cut
short still compares all strategies. After every run, results.json, table.md and curves.png are
rewritten atomically; a restart reads results.json back and skips the runs it holds.

Ablation values only enter the key of the strategies they can change, as the strategy registry
says: ``metric`` and ``rounds`` only matter to a strategy that reads model scores (weighted_task_diversity),
``min_per_task`` to those that use it (both task-diversity strategies). The full pool is strategy-independent (one run per seed), and the
base model (budget 0) is evaluated once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from model.budget import Budget
from model.config import ScoringConfig, SelectionConfig
from model.evaluation import outputs
from model.evaluation.configs import EvalConfig
from model.evaluation.metrics import evaluate_outputs
from model.evaluation.outputs import BASE, FULL

log = logging.getLogger(__name__)



def reads_scores(strategy: str) -> bool:
    """Whether the strategy reads the model's scores (within-task order ``random``, as the harness runs it)."""
    from model.strategies import needs
    return needs(SelectionConfig(budget=1, strategy=strategy)).metric


def uses_min_per_task(strategy: str) -> bool:
    from model.strategies import get_strategy
    return get_strategy(strategy).uses_min_per_task


class ResultsMismatch(ValueError):
    """The output folder holds results of a different configuration."""


@dataclass(frozen=True)
class RunSpec:
    strategy: str
    budget_n: int
    seed: int | None = None
    min_per_task: int | None = None
    metric: str | None = None
    rounds: int | None = None

    @property
    def key(self) -> str:
        return json.dumps([self.strategy, self.budget_n, self.seed, self.min_per_task, self.metric, self.rounds])


def plan_runs(cfg: EvalConfig, pool_size: int) -> list[RunSpec]:
    """Every run the config asks for, deduplicated, seed-major, budgets ascending."""
    budgets = sorted({Budget.parse(b).resolve(pool_size) for b in cfg.budgets})
    specs = [RunSpec(BASE, 0)]
    for seed in cfg.seeds:
        for n in budgets:
            if n >= pool_size:
                specs.append(RunSpec(FULL, pool_size, seed))
                continue
            for strategy in cfg.strategies:
                for mpt in cfg.min_per_task if uses_min_per_task(strategy) else [None]:
                    for metric in cfg.metric if reads_scores(strategy) else [None]:
                        for rounds in cfg.rounds if reads_scores(strategy) else [None]:
                            specs.append(RunSpec(strategy, n, seed, mpt, metric, rounds))
    return list(dict.fromkeys(specs))


def fingerprint(cfg: EvalConfig, rows: list[dict], model_path: str) -> str:
    """What makes two runs comparable: data, base model, training and generation settings (not the
    lists of strategies, budgets, seeds and ablation values, which only add runs)."""
    blob = json.dumps({"rows": rows, "model": model_path, "train": asdict(cfg.train),
                       "score_max_new_tokens": cfg.score_max_new_tokens,
                       "eval_max_new_tokens": cfg.eval_max_new_tokens}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- steps

class Experiment:
    """Holds the base model, the pool (scored once) and the test rows for all runs."""

    def __init__(self, cfg: EvalConfig, lm, pool_rows: list[dict], test_rows: list[dict], pool_scores: list[dict]):
        from model.strategies import Pool

        self.cfg, self.lm, self.test = cfg, lm, test_rows
        self.pool_rows = pool_rows
        self.pool = Pool(ids=[r["id"] for r in pool_rows], tasks=_task_array(pool_rows),
                         prompts=[r["prompt"] for r in pool_rows], scores=_score_columns(pool_scores))
        self._embeddings = None

    def embeddings(self) -> np.ndarray:
        if self._embeddings is None:  # computed once for every run that needs them; MiniLM loads on first use
            from model.embeddings import embed
            self._embeddings = embed(self.pool.prompts)
        return self._embeddings

    def subpool(self, indices: np.ndarray, scores: dict | None = None):
        from model.strategies import Pool
        p = self.pool
        return Pool(ids=[p.ids[i] for i in indices], tasks=p.tasks[indices], prompts=[p.prompts[i] for i in indices],
                    scores=scores if scores is not None else {m: v[indices] for m, v in p.scores.items()},
                    embeddings=None if self._embeddings is None else self._embeddings[indices])

    def select(self, spec: RunSpec, indices: np.ndarray, budget: int) -> np.ndarray:
        """Pool indices (into the full pool) that ``spec.strategy`` picks among ``indices`` (one round)."""
        from model.strategies import needs, select
        cfg = SelectionConfig(budget=budget, strategy=spec.strategy, seed=spec.seed,
                              min_per_task=spec.min_per_task or 0,  # None: a strategy that ignores it
                              **({"metric": spec.metric} if spec.metric else {}))
        if needs(cfg).embeddings:
            self.embeddings()
        picked = select(self.subpool(indices), cfg)
        return indices[np.asarray(picked.order, dtype=np.int64)]

    def train(self, indices, seed: int):
        from model.training import train_lora
        pairs = [(self.pool_rows[i]["prompt"], self.pool_rows[i]["reference"]) for i in indices]
        return train_lora(self.lm, pairs, replace(self.cfg.train, seed=seed))

    def adapted(self, train_result):
        from model.loading import LoadedModel
        lm = self.lm
        return LoadedModel(model=train_result.peft_model, tokenizer=lm.tokenizer, device=lm.device,
                           name_or_path=lm.name_or_path, adapter="(in memory)")

    def rescore(self, lm, indices: np.ndarray) -> dict:
        """Confidence metrics of ``indices`` under ``lm`` (an earlier round's adapter), as Pool score columns."""
        from model.scoring import score_rows
        rows = score_rows([self.pool_rows[i] for i in indices], lm, _scoring_config(self.cfg))
        return _score_columns(rows)

    def evaluate(self, lm) -> dict:
        from model.scoring import generate, response_logprobs
        prompts = [r["prompt"] for r in self.test]
        logprobs = response_logprobs(lm, prompts, [r["reference"] for r in self.test], self.cfg.batch_size)
        predictions = generate(lm, prompts, self.cfg.eval_max_new_tokens, self.cfg.batch_size)
        result = evaluate_outputs([r["task"] for r in self.test], predictions,
                                  [r.get("alternatives") or [r["reference"]] for r in self.test], logprobs)
        result["predictions"] = {str(r["id"]): p for r, p in zip(self.test, predictions)}
        return result

    def run(self, spec: RunSpec) -> dict:
        """One run: select (in one or more rounds), train, evaluate. Returns its results record."""
        started = time.monotonic()
        record = {"key": spec.key, **asdict(spec)}
        if spec.strategy == BASE:
            train_s, lm, chosen = 0.0, self.lm, np.zeros(0, dtype=np.int64)
            record.update(train_loss=None, train_steps=0, n_train=0)
        else:
            everything = np.arange(len(self.pool))
            if spec.strategy == FULL:
                chosen = everything
            elif (spec.rounds or 1) == 1:
                chosen = self.select(spec, everything, spec.budget_n)
            else:
                chosen, record["round_allocations"] = self.multi_round(spec, everything)
            result = self.train(chosen, spec.seed)
            train_s, lm = result.duration_s, self.adapted(result)
            record.update(train_loss=result.loss, train_steps=result.steps, n_train=len(chosen))
        eval_started = time.monotonic()
        record.update(self.evaluate(lm))
        record["allocation"] = _allocation(self.pool, chosen)
        record["selected_ids"] = [self.pool.ids[i] for i in chosen]
        record["durations_s"] = {"train": round(train_s, 2), "eval": round(time.monotonic() - eval_started, 2),
                                 "total": round(time.monotonic() - started, 2)}
        return record

    def multi_round(self, spec: RunSpec, everything: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """``spec.rounds`` rounds as ``model.rounds`` defines them (what the backend runs): round r
        selects its share of the budget among the prompts not yet selected, scored by an adapter
        trained (from the base model) on every earlier pick; the caller retrains on all of them."""
        from model.rounds import prior_counts, round_budgets, select_round
        from model.strategies import needs
        cfg = SelectionConfig(budget=spec.budget_n, strategy=spec.strategy, seed=spec.seed,
                              min_per_task=spec.min_per_task or 0, **({"metric": spec.metric} if spec.metric else {}))
        if needs(cfg).embeddings:
            self.embeddings()
        picks, scores = [], None
        for r in range(1, len(round_budgets(spec.budget_n, spec.rounds)) + 1):
            taken = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
            rest = np.setdiff1d(everything, taken)
            if r > 1:  # the end of a round trains on everything annotated; the next round reads its scores
                scores = self.rescore(self.adapted(self.train(taken, spec.seed)), rest)
            sel = select_round(self.subpool(rest, scores), cfg, r, spec.rounds,
                               prior_counts(self.pool.tasks[taken]))
            picks.append(rest[np.asarray(sel.order, dtype=np.int64)])
        return np.concatenate(picks), [_allocation(self.pool, p) for p in picks]


def _task_array(rows: list[dict]) -> np.ndarray:
    tasks = np.empty(len(rows), dtype=object)  # labels as given: 1 stays 1
    tasks[:] = [r["task"] for r in rows]
    return tasks


def _score_columns(scored_rows: list[dict]) -> dict:
    from model.config import METRICS
    return {m: np.array([r[m] for r in scored_rows], dtype=np.float64) for m in METRICS}


def _allocation(pool, indices: np.ndarray) -> dict:
    counts = {str(t): 0 for t in pool.groups.labels}
    for i in indices:
        counts[str(pool.tasks[i])] += 1
    return counts


# ------------------------------------------------------------------------------------------- driver

class Eta:
    """Remaining time from this process's runs: eval seconds per run + train seconds per example."""

    def __init__(self):
        self.eval_s, self.train_s, self.train_units = [], 0.0, 0.0

    def add(self, record: dict) -> None:
        self.eval_s.append(record["durations_s"]["eval"])
        self.train_s += record["durations_s"]["total"] - record["durations_s"]["eval"]
        self.train_units += _train_units(record["budget_n"] if record["n_train"] else 0, record.get("rounds"))

    def remaining(self, specs: list[RunSpec]) -> float | None:
        if not self.eval_s:
            return None
        rate = self.train_s / self.train_units if self.train_units else 0.0
        return sum(np.mean(self.eval_s) + rate * _train_units(s.budget_n if s.strategy != BASE else 0, s.rounds)
                   for s in specs)


def _train_units(n: int, rounds: int | None) -> float:
    """Examples trained on: every round boundary also trains, on the rounds before it."""
    from model.rounds import round_budgets
    return float(n + sum(np.cumsum(round_budgets(n, rounds or 1))[:-1]))


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m" if seconds >= 3600 else f"{seconds / 60:.1f}m"


def resolve_model(name_or_path: str | None) -> str | None:
    """``tiny`` -> the tiny test model (built once in the cache); anything else goes to load_model."""
    if name_or_path == "tiny":
        from model.config import cache_dir
        from model.tiny import make_tiny_model
        return str(make_tiny_model(cache_dir() / "models" / "tiny"))
    return name_or_path


def score_pool(lm, pool_rows: list[dict], cfg: EvalConfig) -> list[dict]:
    """The base model's greedy response and confidence metrics for every pool prompt."""
    from model.config import METRICS
    from model.scoring import score_rows
    return [{"id": r["id"], "task": r["task"], "response": r["response"], **{m: r[m] for m in METRICS}}
            for r in score_rows(pool_rows, lm, _scoring_config(cfg))]


def _scoring_config(cfg: EvalConfig) -> ScoringConfig:
    return ScoringConfig(max_new_tokens=cfg.score_max_new_tokens, batch_size=cfg.batch_size, progress=False)


def run_experiment(cfg: EvalConfig, rows: list[dict], out_dir: Path, device: str | None, metadata: dict) -> dict:
    """Plan, resume, run and write everything; returns the final results document."""
    from model.evaluation.data import split_rows
    from model.loading import load_model

    pool_rows, test_rows = split_rows(rows)
    lm = load_model(resolve_model(cfg.model), device=device)
    doc = outputs.load_results(out_dir)
    fp = fingerprint(cfg, rows, lm.name_or_path)
    if doc is None:
        doc = {"fingerprint": fp, "metadata": {"started": metadata["date"]}, "pool_scores": None, "runs": []}
    elif doc["fingerprint"] != fp:
        raise ResultsMismatch(f"{out_dir}/results.json holds results of a different data set, model or training "
                              f"setup ({doc['fingerprint']} != {fp}); choose another --output")
    specs = plan_runs(cfg, len(pool_rows))
    # Each invocation may add strategies, budgets or ablation values: keep every command line.
    doc["metadata"].setdefault("invocations", []).append({k: metadata[k] for k in ("date", "command")})
    doc["metadata"].update(metadata, model=lm.name_or_path, config=cfg.to_dict(), n_pool=len(pool_rows),
                           n_test=len(test_rows), tasks=sorted({str(r["task"]) for r in rows}))
    if not doc["pool_scores"]:
        started = time.monotonic()
        doc["pool_scores"] = score_pool(lm, pool_rows, cfg)
        log.info("scored %d pool prompts with the base model in %.0f s", len(pool_rows), time.monotonic() - started)
    done = {run["key"] for run in doc["runs"]}
    todo = [s for s in specs if s.key not in done]
    log.info("%d runs planned, %d already in %s, %d to do", len(specs), len(specs) - len(todo), out_dir, len(todo))
    exp = Experiment(cfg, lm, pool_rows, test_rows, doc["pool_scores"])
    eta = Eta()
    for k, spec in enumerate(todo, 1):
        _write(out_dir, doc, specs, done)
        record = exp.run(spec)
        doc["runs"].append(record)
        done.add(spec.key)
        eta.add(record)
        log.info("[%d/%d] %s | %s | ETA %s", k, len(todo), _describe(spec), _summary(record),
                 _fmt_duration(eta.remaining(todo[k:])))
    _write(out_dir, doc, specs, done)
    return doc


def _write(out_dir: Path, doc: dict, specs: list[RunSpec], done: set) -> None:
    from datetime import datetime, timezone
    doc["metadata"]["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc["metadata"]["complete"] = all(s.key in done for s in specs)
    doc["metadata"]["planned_runs"] = len(specs)
    outputs.write_all(out_dir, doc)


def _describe(spec: RunSpec) -> str:
    extras = [f"{k}={v}" for k, v in (("min_per_task", spec.min_per_task), ("metric", spec.metric),
                                      ("rounds", spec.rounds)) if v is not None]
    return " ".join([spec.strategy, f"n={spec.budget_n}"] + ([f"seed={spec.seed}"] if spec.seed is not None else [])
                    + extras)


def _summary(record: dict) -> str:
    m, d = record["macro"], record["durations_s"]
    loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.3f}"
    return (f"nll {m['nll']:.3f} em {m['exact_match']:.3f} rougeL {m['rouge_l']:.3f} | loss {loss} | "
            f"train {d['train']:.0f}s eval {d['eval']:.0f}s")
