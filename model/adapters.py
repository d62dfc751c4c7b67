"""Versioned, atomic storage of trained LoRA adapters: ``<root>/<project>/v0001``, ``v0002``, ...

A save writes the adapter and ``meta.json`` into a hidden temporary folder beside the versions and
then renames it to the next free version. ``rename`` of a folder onto an existing non-empty folder
fails, so two concurrent savers can never claim the same version (the loser retries with the next
number), and a reader never sees a half-written adapter: every ``vNNNN`` folder is complete.
Earlier versions are kept so a project can roll back.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

META = "meta.json"
_VERSION = re.compile(r"v(\d{4,})")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_CLAIMS = 1000
"""Give up after this many lost races for a version number (something is badly wrong by then)."""


def project_dir_name(project: str | int) -> str:
    """``project`` as a single safe path component (no separators, no '..', no hidden names)."""
    if isinstance(project, bool) or not isinstance(project, (str, int)):
        raise ValueError(f"project id must be a string or an integer, got {project!r}")
    name = str(project)
    if not _PROJECT.fullmatch(name) or ".." in name:
        raise ValueError(f"unsafe project id {project!r}: use letters, digits, '.', '_', '-' "
                         "(not starting with '.', no '..')")
    return name


def version_name(n: int) -> str:
    return f"v{n:04d}"


def version_number(version: str) -> int:
    m = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if not m:
        raise ValueError(f"not an adapter version: {version!r} (expected like 'v0001')")
    return int(m.group(1))


class AdapterStore:
    def __init__(self, root):
        self.root = Path(root)

    def _project_dir(self, project) -> Path:
        return self.root / project_dir_name(project)

    def versions(self, project) -> list[str]:
        """Complete versions, oldest first (numeric order, so v10000 follows v9999)."""
        folder = self._project_dir(project)
        if not folder.is_dir():
            return []
        names = [p.name for p in folder.iterdir() if _VERSION.fullmatch(p.name) and p.is_dir()]
        return sorted(names, key=version_number)

    def latest(self, project) -> str | None:
        found = self.versions(project)
        return found[-1] if found else None

    def path(self, project, version: str) -> Path:
        """The adapter folder (loadable with ``PeftModel.from_pretrained``)."""
        version_number(version)  # rejects '../x' and other non-version names before touching disk
        folder = self._project_dir(project) / version
        if not folder.is_dir():
            raise FileNotFoundError(f"no adapter {version} for project {project!r} in {self.root}")
        return folder

    def meta(self, project, version: str) -> dict:
        """What was saved with the adapter, plus ``version``."""
        meta = json.loads((self.path(project, version) / META).read_text(encoding="utf-8"))
        return {**meta, "version": version}

    def save(self, project, peft_model, meta: dict) -> str:
        """Store ``peft_model``'s adapter with ``meta`` (+ created time, base model); return its version."""
        folder = self._project_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))  # same filesystem: rename is atomic
        try:
            peft_model.save_pretrained(tmp)
            record = {**meta, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "base_model": meta.get("base_model") or _base_model_path(peft_model)}
            (tmp / META).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
            return self._claim_version(folder, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _claim_version(self, folder: Path, tmp: Path) -> str:
        for _ in range(_MAX_CLAIMS):
            latest = max((version_number(v) for v in self.versions(folder.name)), default=0)
            version = version_name(latest + 1)
            try:
                os.rename(tmp, folder / version)
                return version
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Another saver took this number between our listing and our rename: try the next.
        raise RuntimeError(f"could not claim an adapter version in {folder} after {_MAX_CLAIMS} tries")


def _base_model_path(peft_model) -> str | None:
    config = getattr(peft_model, "peft_config", {}).get("default")
    return getattr(config, "base_model_name_or_path", None)
