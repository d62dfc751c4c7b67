"""JSONL input/output with row-level validation and atomic writes.

Every input problem raises ``InputError`` naming the file, the 1-based row number and the field, so
the CLI can print one line and exit 2.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


class InputError(ValueError):
    def __init__(self, path, row: int | None, field: str | None, problem: str):
        self.path, self.row, self.field, self.problem = str(path), row, field, problem
        where = self.path + (f": row {row}" if row is not None else "")
        super().__init__(f"{where}: " + (f"field '{field}': " if field else "") + problem)


def read_jsonl(path, required: Iterable[str] = (), numeric: Iterable[str] = ()) -> list[dict]:
    """Rows of a JSONL file; blank lines are skipped. ``numeric`` fields must be finite numbers."""
    required, numeric = tuple(required), tuple(numeric)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, None, None, f"cannot read: {e.strerror if isinstance(e, OSError) else e}")
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, i, None, f"not valid JSON ({e.msg})")
        if not isinstance(row, dict):
            raise InputError(path, i, None, "not a JSON object")
        for f in required + numeric:
            if f not in row or row[f] is None:
                raise InputError(path, i, f, "missing")
        for f in numeric:
            v = row[f]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(path, i, f, f"not a finite number: {v!r}")
        rows.append(row)
    if not rows:
        raise InputError(path, None, None, "no rows (empty input)")
    return rows


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it; done once, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_open(path, mode: str = "w") -> Iterator:
    """Write to a temporary file beside ``path`` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path, rows: Iterable[dict]) -> None:
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
