"""Helpers shared by test modules (fixtures live in the conftest files)."""
from __future__ import annotations

from contextlib import contextmanager

import pytest


@contextmanager
def empty_redis(url: str):
    """A connection to a real Redis database, flushed before and after; fails loudly when none answers."""
    import redis
    conn = redis.Redis.from_url(url)
    try:
        conn.ping()
    except redis.ConnectionError as e:
        pytest.fail(f"this test needs a real Redis at {url}: {e}")
    conn.flushdb()
    try:
        yield conn
    finally:
        conn.flushdb()
