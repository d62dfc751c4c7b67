"""``python -m tests.backend.fake_ls_worker [worker options]``: ``python -m backend worker`` on the in-memory
fake Label Studio (tests.backend.fakes), for tests that kill worker processes.

A subprocess cannot share a test's fake, so every process builds the same one: project 1 with the test
prompts, the first 3 tasks annotated, and ``TEST_PARAMS`` updated from the JSON in ``FAKE_LS_EXTRA_PARAMS``.
"""
from __future__ import annotations

import json
import os
import sys

from backend import wiring
from backend.cli import main
from tests.backend.fakes import PROMPTS, TASK_LABELS, TEST_PARAMS, FakeLabelStudio

PROJECT = 1


def fake_label_studio() -> FakeLabelStudio:
    extra = json.loads(os.environ.get("FAKE_LS_EXTRA_PARAMS") or "{}")
    ls = FakeLabelStudio(extra_params={**TEST_PARAMS, **extra})
    assert ls.add_project(PROMPTS, TASK_LABELS) == PROJECT
    for task in ls.tasks(PROJECT)[:3]:
        ls.annotate(PROJECT, task["id"], "a short answer")
    return ls


if __name__ == "__main__":
    ls = fake_label_studio()
    wiring.make_client = lambda: ls
    sys.exit(main(["worker", *sys.argv[1:]]))
