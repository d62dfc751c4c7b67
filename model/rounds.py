"""Multi-round selection: the one definition that the backend and the evaluation harness both run.

R rounds share one budget B (docs/selection.md has a worked example):

* **Budgets** (``round_budgets``): B split as evenly as possible, earlier rounds taking the
  remainder; never more rounds than prompts (B = 5, R = 2 -> [3, 2]; B = 1, R = 3 -> [1]). A
  round that found fewer prompts than its share leaves the rest to the later rounds (``round_config``).
* **Pool and scores** (``select_round``): round r selects its B_r among the prompts no earlier round
  selected, scored by the newest adapter (round 1: the base model). Earlier picks leave the pool
  whether or not they were annotated yet, so re-planning a round (new tasks, new scores) never
  moves what earlier rounds chose.
* **Base per task**: min_per_task counts over all rounds. Round r gives task t the base
  max(0, min(min_per_task, n_t) - s_t), s_t = what earlier rounds took from t (``prior_counts``).
  When round 1 covers every base (B_1 >= sum of bases, the usual case) later rounds are weighted
  only; when it cannot, later rounds finish the bases first. Either way the union of the rounds
  gives every task its base whenever B allows, the same guarantee as one round.
* **End of a round** (``next_round``): round r ends when every prompt that rounds 1..r selected is
  done (annotated; the backend also counts a skip, or the round could stall forever), i.e. when
  B_1 + ... + B_r of the selected prompts are annotated. Not ``train_every``: that cadence only
  refreshes drafts. The end of a round forces a training on every annotation, because round r + 1
  needs that adapter's confidences; then round r + 1 is planned.
* **Queue** (``queue_order``): the still-unannotated prompts of the planned rounds in selection
  order, then every other unannotated prompt (by id). So between the end of a round and the next
  round's plan (the training), annotators are served prompts outside the budget.

Everything here is pure (no model, no Redis): callers bring the scored pool.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import replace

from model.allocation import check_count
from model.config import SelectionConfig
from model.strategies import Selection, select


def round_budgets(budget: int, rounds: int) -> list[int]:
    """B split over min(R, B) rounds as evenly as possible, earlier rounds taking the remainder
    ([0] for B = 0: one empty round)."""
    budget, rounds = check_count("budget", budget), check_count("rounds", rounds)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    n = max(1, min(rounds, budget))
    q, extra = divmod(budget, n)
    return [q + (r < extra) for r in range(n)]


def prior_counts(tasks: Iterable[Hashable]) -> dict:
    """Task label -> prompts taken from it, from the task labels of every earlier pick."""
    return dict(Counter(tasks))


def round_config(cfg: SelectionConfig, r: int, rounds: int, prior: dict | None = None) -> SelectionConfig:
    """The selection config of round r (1-based) for a total budget ``cfg.budget``: its share of the
    budget, and min_per_task counting what earlier rounds took (``prior``: task -> count).

    The share is the first of what earlier rounds left (B - their picks) split over the rounds left:
    the even split of ``round_budgets`` when every round got its budget, and a round that found too
    few prompts (or a budget that grew with the project) moves the difference to the later rounds.
    """
    n_rounds = len(round_budgets(cfg.budget, rounds))
    if not 1 <= r <= n_rounds:
        raise ValueError(f"round {r} of {n_rounds} (budget {cfg.budget} over {rounds} rounds)")
    if r == 1 and prior:
        raise ValueError("round 1 has no earlier rounds: prior must be empty")
    spent = sum(check_count(f"prior count of task {t!r}", n) for t, n in (prior or {}).items())
    budget = round_budgets(max(0, cfg.budget - spent), n_rounds - r + 1)[0]
    return replace(cfg, budget=budget, prior_counts=dict(prior) if prior else None)


def select_round(candidates, cfg: SelectionConfig, r: int, rounds: int, prior: dict | None = None,
                 embed_fn: Callable | None = None) -> Selection:
    """Round r's selection among ``candidates`` (a ``Pool`` or rows: the prompts no earlier round
    selected, scored by the newest adapter). ``order`` indexes ``candidates``; ``embed_fn`` as in
    ``select``."""
    return select(candidates, round_config(cfg, r, rounds, prior), **({"embed_fn": embed_fn} if embed_fn else {}))


def next_round(planned: Sequence[Collection], done: Collection, budget: int, rounds: int) -> int | None:
    """The round to plan now, or None: round 1 when nothing is planned; round r + 1 once every
    prompt of the r planned rounds is in ``done``; None while a round is open or after the last."""
    if not planned:
        return 1
    if len(planned) >= len(round_budgets(budget, rounds)):
        return None
    return len(planned) + 1 if all(t in done for picks in planned for t in picks) else None


def queue_order(planned: Sequence[Sequence], unannotated: Collection) -> list:
    """What annotators are served: the planned rounds' unannotated picks in selection order, then
    every other unannotated prompt (sorted)."""
    seen, order = set(), []
    for picks in planned:
        for t in picks:
            if t in unannotated and t not in seen:
                seen.add(t)
                order.append(t)
    return order + sorted(t for t in unannotated if t not in seen)
