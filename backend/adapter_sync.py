"""Adapters across hosts: each trained version is copied into Redis; a host without it fetches it.

Workers share only Redis and Label Studio; each has its own ``MODEL_DIR``. After a training saves a
version, ``publish`` copies its files (a tar, a few MB for a small model, ~40-160 MB for a 7B one at
r=16) into Redis. ``ensure_local`` is how every job and request gets an adapter's folder: this host's
copy, or Redis's copy installed atomically into this host's ``MODEL_DIR`` first (then cached there).
A version in neither raises ``AdapterUnavailable``: the work that needs it fails, visibly, rather
than drafting with the base model while other hosts draft with the adapter.

``prune`` keeps the newest ``ADAPTER_KEEP`` versions (plus the ones in use) on disk and in Redis.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from backend import wiring
from backend.settings import get_settings
from backend.store import Store
from model.adapters import prunable, version_number

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
"""Redis commands carry 1 MiB at most, well within the socket timeout (REDIS_TIMEOUT_S)."""


class AdapterUnavailable(RuntimeError):
    """The adapter in force is neither in this host's MODEL_DIR nor in Redis."""

    def __init__(self, project: int, version: str):
        super().__init__(
            f"project {project}: adapter {version} is neither in this host's MODEL_DIR nor in Redis; the "
            f"next training publishes a new one, or roll back: python -m backend settings --project {project} "
            "--adapter VERSION")
        self.project, self.version = project, version


def _is_local(project: int, version: str) -> bool:
    try:
        wiring.adapter_store().path(str(project), version)
        return True
    except FileNotFoundError:
        return False


def available(project: int, version: str) -> bool:
    """``version`` is in this host's MODEL_DIR or has a copy in Redis (False for a malformed name)."""
    try:
        version_number(version)
    except ValueError:
        return False
    return _is_local(project, version) or wiring.store().adapter_files_info(project, version) is not None


def publish(project: int, version: str) -> bool:
    """Copy a freshly saved local ``version`` into Redis (False when copies are off: shared MODEL_DIR).

    A version too big for ``ADAPTER_REDIS_MAX_MB``, or one whose number another host published with
    other files, is deleted here and raises: the training fails before anyone is told to use it.
    """
    s, st, adapters = get_settings(), wiring.store(), wiring.adapter_store()
    if s.adapter_redis_max_mb == 0:
        return False
    data = adapters.archive(str(project), version)
    if len(data) > s.adapter_redis_max_mb << 20:
        adapters.remove(str(project), version)
        raise ValueError(f"project {project}: adapter {version} is {len(data) / 2**20:.1f} MB, over "
                         f"ADAPTER_REDIS_MAX_MB={s.adapter_redis_max_mb}: raise it, or set it to 0 and give "
                         "every worker the same MODEL_DIR")
    sha = hashlib.sha256(data).hexdigest()
    if not st.publish_adapter_files(project, version, version_number(version), data, sha, CHUNK_BYTES):
        info = st.adapter_files_info(project, version)
        if info is None or info["sha256"] != sha:
            adapters.remove(str(project), version)
            raise RuntimeError(f"project {project}: adapter {version} was published by another host with "
                               "other files meanwhile; this training's copy is dropped")
    log.info("project %s: adapter %s copied into Redis (%.1f MB)", project, version, len(data) / 2**20)
    return True


def ensure_local(project: int, version: str) -> Path:
    """The folder of ``version`` in this host's MODEL_DIR, fetched from Redis first if it is missing."""
    adapters = wiring.adapter_store()
    if _is_local(project, version):
        return adapters.path(str(project), version)
    st = wiring.store()
    info = st.adapter_files_info(project, version)
    data = st.adapter_files(project, version) if info else None
    if data is None:
        log.error("%s", AdapterUnavailable(project, version))
        raise AdapterUnavailable(project, version)
    if len(data) != info["size"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise RuntimeError(f"project {project}: Redis's copy of adapter {version} is corrupt (size or sha256)")
    path = adapters.install(str(project), version, data)
    log.info("project %s: adapter %s fetched from Redis into %s", project, version, path)
    adapters.prune(str(project), get_settings().adapter_keep, in_use(st, project) | {version})
    return path


def in_use(st: Store, project: int) -> set[str]:
    """The drafting adapter and every round's selecting adapter: never pruned."""
    return {v for v in (st.adapter(project), *st.round_adapters(project).values()) if v}


def prune(project: int) -> dict[str, list[str]]:
    """Delete versions older than the newest ADAPTER_KEEP, except those in use, here and in Redis.

    O(versions). A worker still scoring with a deleted version fails that chunk; the next pass
    (reconcile) plans with the versions in use, which are never deleted.
    """
    s, st = get_settings(), wiring.store()
    try:
        protect = in_use(st, project)
        disk = wiring.adapter_store().prune(str(project), s.adapter_keep, protect)
        redis_copies = prunable(st.published_adapters(project), s.adapter_keep, protect)
        st.delete_adapter_files(project, redis_copies)
    except Exception:  # housekeeping: never fail the training that called it; the next one retries
        log.exception("project %s: pruning adapters failed", project)
        return {"disk": [], "redis": []}
    if disk or redis_copies:
        log.info("project %s: pruned adapters %s from disk, %s from Redis", project, disk, redis_copies)
    return {"disk": disk, "redis": redis_copies}
