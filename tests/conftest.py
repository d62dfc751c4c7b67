"""Fixtures shared by every test package: the tiny model, a real Redis, GPU skipping."""
from __future__ import annotations

import os

import pytest

from tests.support import empty_redis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Llama with a real BPE tokenizer and chat template, saved as a HF folder."""
    from model.tiny import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def redis_url():
    """A real Redis (db 15), emptied before and after the test."""
    with empty_redis(TEST_REDIS_URL):
        yield TEST_REDIS_URL


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-model ops are too small to split: extra torch threads only fight over a busy machine's CPUs."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
