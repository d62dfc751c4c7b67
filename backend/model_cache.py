"""The models loaded in this process (base, base + adapter) and scoring tasks with them into Redis."""
from __future__ import annotations

import threading
from collections import OrderedDict

from backend import adapter_sync, wiring
from backend.project import score_key
from backend.settings import get_settings

SCORE_FIELDS = ("response", "sequence_prob", "mean_logprob", "mean_entropy", "min_margin", "n_tokens")
"""What is kept per scored task (token log-probs are not needed after scoring)."""


class ModelCache:
    """Loaded models of this process keyed by adapter path (None = base), least recently used dropped."""

    def __init__(self, size: int = 2):
        self.size, self._models, self.lock = size, OrderedDict(), threading.RLock()

    def get(self, adapter_path: str | None):
        with self.lock:
            if adapter_path not in self._models:
                from model.loading import load_model
                s = get_settings()
                self.put(adapter_path, load_model(s.model_name_or_path, adapter=adapter_path, device=s.device))
            self._models.move_to_end(adapter_path)
            return self._models[adapter_path]

    def put(self, adapter_path: str | None, lm) -> None:
        with self.lock:
            self._models[adapter_path] = lm
            while len(self._models) > self.size:
                self._models.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self._models.clear()


models = ModelCache()


def score_tasks(project: int, adapter: str | None, rows: list[dict], max_new_tokens: int,
                progress=None) -> dict[int, dict]:
    """Score ``rows`` ({"id", "prompt"}) not yet scored under the key, store them, return all of them.

    O(len(rows)) model calls at most; rows already stored cost one Redis read.
    """
    from model.config import ScoringConfig
    from model.scoring import score_rows

    s, st = get_settings(), wiring.store()
    key = score_key(s.model_name_or_path, adapter, max_new_tokens)
    done = st.scores(project, key, [r["id"] for r in rows])
    todo = [r for r in rows if r["id"] not in done]
    if todo:
        path = str(adapter_sync.ensure_local(project, adapter)) if adapter else None
        cfg = ScoringConfig(max_new_tokens=max_new_tokens, batch_size=s.score_batch_size, device=s.device,
                            progress=False)
        with models.lock:  # one generation at a time per process (the server scores from threads)
            lm = models.get(path)
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start:start + cfg.batch_size]
                scored = {r["id"]: {k: r[k] for k in SCORE_FIELDS if k in r}
                          for r in score_rows(batch, lm, cfg)}
                st.put_scores(project, key, scored)
                done.update(scored)
                if progress:
                    progress(start + len(batch), len(todo))
    return done


def stored_scores(project: int, adapter: str | None, rows: list[dict], max_new_tokens: int) -> dict[int, dict]:
    """The scores of ``rows`` already stored under the key (one Redis read, no model)."""
    key = score_key(get_settings().model_name_or_path, adapter, max_new_tokens)
    return wiring.store().scores(project, key, [r["id"] for r in rows])
