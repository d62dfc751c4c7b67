"""Evaluation data: rows ``{"id", "task", "prompt", "reference", "split"}`` with split ``pool`` or ``test``.

Three sources, all producing the same rows:

* ``read_rows(path)``: the user's own JSONL, validated row by row (``InputError`` names row and field).
* ``synthetic_rows(...)``: a tiny offline multi-task set generated in code (CI smoke run).
* ``natural_instructions_rows(...)``: BIG-bench 1.0.0's copy of Natural Instructions v1. PyPI carries
  BIG-bench only as a 358 MB source archive; we download that one file once into ``cache_dir()`` and
  read the subtasks' ``task.json`` straight from the tarball (installing bigbench would pull TensorFlow).

A row may carry ``alternatives``: every acceptable output (NI lists several for many inputs). The
``reference`` (the first one) stands in for the annotator's response in training and is what the NLL
is measured on; exact match and ROUGE-L take the best score over the alternatives, as NI's own
evaluation does.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

from model.config import cache_dir
from model.io import InputError, atomic_open, read_jsonl

log = logging.getLogger(__name__)

SPLITS = ("pool", "test")
FIELDS = ("id", "task", "prompt", "reference", "split")

BIGBENCH_FILE = "bigbench-1.0.0.tar.gz"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
NI_DIR = "/benchmark_tasks/natural_instructions/"


# ------------------------------------------------------------------------------------- user's own data

def read_rows(path, check_splits: bool = True) -> list[dict]:
    """Validated evaluation rows from a JSONL file; with ``check_splits`` every task must have pool and
    test rows (the harness needs both; a pool-only file, like the demo's, does not)."""
    rows = read_jsonl(path, required=FIELDS)
    seen: dict = {}
    for i, row in enumerate(rows, 1):
        if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
            raise InputError(path, i, "id", f"not a string or integer: {row['id']!r}")
        if row["id"] in seen:
            raise InputError(path, i, "id", f"duplicate of row {seen[row['id']]}")
        seen[row["id"]] = i
        if isinstance(row["task"], bool) or not isinstance(row["task"], (str, int)):
            raise InputError(path, i, "task", f"not a string or integer: {row['task']!r}")
        for field in ("prompt", "reference"):
            if not isinstance(row[field], str) or not row[field].strip():
                raise InputError(path, i, field, f"not a non-empty string: {row[field]!r}")
        if row["split"] not in SPLITS:
            raise InputError(path, i, "split", f"must be 'pool' or 'test', got {row['split']!r}")
        alternatives = row.get("alternatives")
        if alternatives is not None and (not isinstance(alternatives, list)
                                         or not all(isinstance(a, str) for a in alternatives)):
            raise InputError(path, i, "alternatives", "must be a list of strings")
    if check_splits:
        _check_splits(rows, path)
    return rows


def _check_splits(rows: list[dict], path) -> None:
    """Macro-averages need every task on both sides: a task only in the pool can never be scored."""
    splits_by_task: dict = {}
    for row in rows:
        splits_by_task.setdefault(row["task"], set()).add(row["split"])
    for task, splits in splits_by_task.items():
        missing = set(SPLITS) - splits
        if missing:
            raise InputError(path, None, "split", f"task {task!r} has no {missing.pop()!r} rows")


def split_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    return [r for r in rows if r["split"] == "pool"], [r for r in rows if r["split"] == "test"]


# ---------------------------------------------------------------------------------- synthetic (smoke)

_WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "candle", "garden", "rocket",
          "window", "silver", "forest", "bottle", "pepper", "planet", "marble", "ladder", "button", "castle",
          "dragon", "jacket", "kitten", "mirror", "orange", "pencil", "rabbit", "saddle", "temple", "violet"]

# Four skills of clearly different difficulty for a small LM: copying is trivial, counting is hard.
_SYNTHETIC_TASKS = {
    "copy": ("Repeat the word exactly.", lambda w: w),
    "uppercase": ("Write the word in capital letters.", str.upper),
    "reverse": ("Write the letters of the word in reverse order.", lambda w: w[::-1]),
    "count": ("How many letters does the word have? Answer with a number.", lambda w: str(len(w))),
}


def synthetic_rows(pool_per_task: int, test_per_task: int, seed: int = 0) -> list[dict]:
    """A few word-manipulation tasks; each task draws distinct words for its pool and test rows."""
    n = pool_per_task + test_per_task
    if n > len(_WORDS):
        raise ValueError(f"at most {len(_WORDS)} synthetic examples per task, asked for {n}")
    rows = []
    for task, (instruction, answer) in _SYNTHETIC_TASKS.items():
        words = random.Random(f"{seed}-{task}").sample(_WORDS, n)
        for k, word in enumerate(words):
            rows.append({"id": f"{task}-{k}", "task": task, "prompt": f"{instruction}\nWord: {word}",
                         "reference": answer(word), "split": "pool" if k < pool_per_task else "test"})
    return rows


# ------------------------------------------------------------------------------- Natural Instructions

def _package_index() -> str:
    """The index pip is configured with (PIP_INDEX_URL, then pip's config), else pip's own default."""
    url = os.environ.get("PIP_INDEX_URL", "")
    if not url:
        got = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                             capture_output=True, text=True)
        url = got.stdout.strip() if got.returncode == 0 else ""
    if not url:
        from pip._internal.models.index import PyPI
        url = PyPI.simple_url
    return url


def bigbench_archive() -> Path:
    """The BIG-bench source archive in the cache, downloaded from PyPI (sha256-checked) if missing.

    ``pip download`` cannot fetch it: pip builds the sdist's metadata, which declares a direct-URL
    dependency that PyPI rejects. So we ask the package index pip uses for the file's URL ourselves.
    """
    path = cache_dir() / "downloads" / BIGBENCH_FILE
    if path.exists():
        return path
    index = _package_index().rstrip("/") + "/bigbench/"
    request = urllib.request.Request(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        files = json.load(r)["files"]
    url = next(f["url"] for f in files if f["filename"] == BIGBENCH_FILE)
    log.info("downloading %s (358 MB) into %s", url, path.parent)
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as r, atomic_open(path, "wb") as out:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != BIGBENCH_SHA256:  # raising inside atomic_open discards the file
            raise ValueError(f"{url}: sha256 {digest.hexdigest()} != {BIGBENCH_SHA256}")
    return path


def read_ni_subtasks(names: list[str], archive: Path | None = None) -> dict[str, dict]:
    """subtask name -> its task.json, read from the archive in one pass (about 10 s for the tarball)."""
    archive = archive or bigbench_archive()
    wanted, found = set(names), {}
    with tarfile.open(archive, "r:gz") as tf:
        for member in tf:
            parts = member.name.split(NI_DIR)
            if len(parts) == 2 and parts[1].endswith("/task.json") and parts[1].split("/")[0] in wanted:
                found[parts[1].split("/")[0]] = json.load(tf.extractfile(member))
    missing = wanted - set(found)
    if missing:
        raise ValueError(f"Natural Instructions subtasks not in {archive.name}: {sorted(missing)}")
    return found


def task_definition(task: dict, definition: str) -> str:
    """``full``: NI's whole definition (``task_prefix``: definition, things to avoid, one-line prompt);
    ``instruction``: only its closing one-line ``Prompt:`` (a third of the tokens, for CPU runs)."""
    prefix = task["task_prefix"].strip()
    if definition == "full":
        return prefix
    if definition == "instruction":
        return prefix[prefix.rfind("Prompt:") + len("Prompt:"):].strip() if "Prompt:" in prefix else prefix
    raise ValueError(f"unknown definition {definition!r} (choose from full, instruction)")


def ni_rows_from_task(name: str, task: dict, pool_per_task: int, test_per_task: int,
                      max_prompt_chars: int, max_reference_words: int, seed: int,
                      definition: str = "full") -> list[dict]:
    """Seeded sample of one subtask's examples that fit the length limits, split into pool and test.

    The prompt is the task definition followed by the input. Long prompts are dropped rather than
    cut, since a cut definition or input changes the task; long references are dropped so exact
    match stays meaningful.
    """
    definition = task_definition(task, definition)
    candidates = []
    for k, ex in enumerate(task["examples"]):
        targets = ex["target"] if isinstance(ex["target"], list) else [ex["target"]]
        targets = [t.strip() for t in targets if isinstance(t, str) and t.strip()]
        prompt = f"{definition}\n\n{ex['input'].strip()}"
        if targets and len(prompt) <= max_prompt_chars and len(targets[0].split()) <= max_reference_words:
            candidates.append({"id": f"{name}-{k}", "task": name, "prompt": prompt, "reference": targets[0],
                               "alternatives": targets})
    need = pool_per_task + test_per_task
    if len(candidates) < need:
        raise ValueError(f"{name}: only {len(candidates)} examples fit the length limits, need {need}")
    chosen = random.Random(f"{seed}-{name}").sample(candidates, need)
    return [{**row, "split": "pool" if k < pool_per_task else "test"} for k, row in enumerate(chosen)]


def natural_instructions_rows(subtasks: list[str], pool_per_task: int, test_per_task: int,
                              max_prompt_chars: int, max_reference_words: int, seed: int = 0,
                              definition: str = "full") -> list[dict]:
    """Evaluation rows from NI subtasks, cached as JSONL so a restart skips the tarball scan."""
    key = json.dumps([sorted(subtasks), pool_per_task, test_per_task, max_prompt_chars, max_reference_words,
                      seed, definition])
    cached = cache_dir() / "data" / f"ni-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"
    if cached.exists():
        return read_rows(cached, check_splits=test_per_task > 0)
    tasks = read_ni_subtasks(subtasks)
    rows = [row for name in subtasks for row in ni_rows_from_task(
        name, tasks[name], pool_per_task, test_per_task, max_prompt_chars, max_reference_words, seed,
        definition)]
    with atomic_open(cached) as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return rows
