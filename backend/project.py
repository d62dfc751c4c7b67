"""A project as the jobs see it: settings, label config, tasks, and the adapters and score keys in force.

``load_project`` is the one place that reads a project from Label Studio (the source of truth) and
looks up its adapters; ``current_adapters`` is the one lookup of which stored adapter drafts and which
selects. The versions recorded in Redis are in force on every host: a host without a version's files
fetches them from Redis (``adapter_sync.ensure_local``); a version in neither place is reported
(``missing_adapters``, /metrics) and the work that needs it fails; it is never replaced by the base model.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from backend import adapter_sync
from backend.annotations import Interface, is_annotated, parse_label_config
from backend.project_config import ProjectConfig, parse_extra_params
from backend.settings import Settings, get_settings
from backend.store import Store
from backend.task_index import indexed_tasks, sync_index

log = logging.getLogger(__name__)


def score_key(model: str | None, adapter: str | None, max_new_tokens: int) -> str:
    """Scores are valid for one (model, adapter, draft length); a change of any of them re-scores."""
    name = model or "default"
    tag = f"{Path(name).name}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"{tag}|{adapter or 'base'}|t{max_new_tokens}"


def missing_adapters(project: int, versions) -> list[str]:
    """Of ``versions`` (None = base model), those neither in this host's MODEL_DIR nor in Redis."""
    return sorted({v for v in versions if v is not None and not adapter_sync.available(project, v)})


def current_adapters(st: Store, project: int, rounds: int) -> tuple[str | None, list[str | None]]:
    """(draft adapter, the adapter that selects each started round) as recorded in Redis, None = the
    base model. Round 1 always selects with the base model; round r >= 2 with the adapter trained
    when round r - 1 ended (``model.rounds``); rounds past ``rounds`` are ignored.
    """
    draft = st.adapter(project)
    started = st.round_adapters(project)
    selection: list[str | None] = [None]
    while len(selection) < rounds and len(selection) + 1 in started:
        selection.append(started[len(selection) + 1])
    return draft, selection


@dataclass
class Project:
    """What a job needs to know about a project, read from Label Studio, with its adapters checked."""
    id: int
    config: ProjectConfig
    iface: Interface
    tasks: list[dict]
    model: str | None
    """The base model (``MODEL_NAME_OR_PATH``) that the score keys name."""
    draft_adapter: str | None
    round_adapters: list[str | None]
    """The adapter selecting each started round (index 0 = round 1 = the base model)."""
    missing_adapters: tuple[str, ...] = ()
    """Adapters in force that no host can load (see ``require_adapters``)."""
    active_version: str | None = None
    """The model_version Label Studio's queue follows now (``project.model_version``)."""

    @property
    def prompt_field(self) -> str:
        return self.config.prompt_field or self.iface.prompt_field

    def prompt(self, task: dict) -> str | None:
        p = (task.get("data") or {}).get(self.prompt_field)
        return p if isinstance(p, str) and p.strip() else None

    @cached_property
    def usable(self) -> list[dict]:
        """Tasks with a prompt (others cannot be scored or selected)."""
        return [t for t in self.tasks if self.prompt(t) is not None]

    @cached_property
    def unlabeled(self) -> list[dict]:
        return [t for t in self.usable if not is_annotated(t)]

    def score_key(self, adapter: str | None) -> str:
        return score_key(self.model, adapter, self.config.max_new_tokens)

    @property
    def draft_key(self) -> str:
        return self.score_key(self.draft_adapter)

    @property
    def selection_adapter(self) -> str | None:
        """The adapter selecting the latest started round."""
        return self.round_adapters[-1]

    @property
    def selection_key(self) -> str:
        return self.score_key(self.selection_adapter)

    def require_adapters(self) -> None:
        """Raise ``AdapterUnavailable`` if an adapter in force is missing: planning or writing a queue
        then fails (and the last written queue stays) instead of drafting with the base model."""
        if self.missing_adapters:
            raise adapter_sync.AdapterUnavailable(self.id, ", ".join(self.missing_adapters))

    @cached_property
    def done(self) -> set[int]:
        """Usable tasks with any annotation, a skip (cancelled) included: what ends a round."""
        return {t["id"] for t in self.usable if t.get("annotations")}


def our_backend(backends: list[dict], settings: Settings) -> dict | None:
    """This backend's connection among the project's ML backends (by ``PUBLIC_URL``, else the first)."""
    if settings.public_url:
        url = settings.public_url.rstrip("/")
        return next((b for b in backends if str(b.get("url", "")).rstrip("/") == url), None)
    return backends[0] if backends else None


def load_project(client, st: Store, project: int, sync: bool = True) -> Project:
    """The project's settings (Label Studio's copy, else the last /setup's), label config and tasks.

    Tasks come from the Redis index, synced with Label Studio first unless ``sync`` is False (a job
    that runs right after one that synced)."""
    s = get_settings()
    raw = client.project(project)
    backend = our_backend(client.ml_backends(project), s)
    if backend is not None:
        extra = backend.get("extra_params")
    else:
        saved = st.setup(project)
        extra = saved[1] if saved else None
    config = parse_extra_params(extra)
    draft, selection = current_adapters(st, project, config.rounds)
    missing = missing_adapters(project, (draft, *selection))
    if missing:
        log.error("%s", adapter_sync.AdapterUnavailable(project, ", ".join(missing)))
    if sync:
        sync_index(client, st, project, raw.get("task_number"))
    return Project(project, config, parse_label_config(raw.get("label_config", "")), indexed_tasks(st, project),
                   s.model_name_or_path, draft, selection, tuple(missing), raw.get("model_version") or None)
