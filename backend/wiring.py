"""Process-wide connections: Redis, the Store over it, RQ queues, the Label Studio client, the adapter store.

Everything else reaches these through this module (``wiring.make_client()``), so tests swap one
attribute here for an in-memory Label Studio.
"""
from __future__ import annotations

from functools import lru_cache

from rq import Queue

from backend.settings import get_settings
from backend.store import Store, connect


@lru_cache(maxsize=4)
def _conn(url: str, timeout_s: float):
    return connect(url, timeout_s)


def redis_conn():
    s = get_settings()
    return _conn(s.redis_url, s.redis_timeout_s)


def store() -> Store:
    return Store(redis_conn())


def queue(name: str) -> Queue:
    return Queue(name, connection=redis_conn())


def make_client():
    """The Label Studio client (tests replace this with an in-memory fake)."""
    from backend.labelstudio import LabelStudioClient
    return LabelStudioClient.from_settings(get_settings())


def adapter_store():
    from model.adapters import AdapterStore
    # New version numbers continue after every version any host published (backend.adapter_sync).
    return AdapterStore(get_settings().model_dir, taken=lambda project: store().highest_published(project))
