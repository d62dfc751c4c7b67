"""Versioned, atomic storage of trained LoRA adapters: ``<root>/<project>/v0001``, ``v0002``, ...

A save writes the adapter and ``meta.json`` into a hidden temporary folder beside the versions and
then renames it to the next free version. ``rename`` of a folder onto an existing non-empty folder
fails, so two concurrent savers can never claim the same version (the loser retries with the next
number), and a reader never sees a half-written adapter: every ``vNNNN`` folder is complete.
Earlier versions are kept so a project can roll back; ``prune`` deletes all but the newest few
(and the ones in use). ``archive`` / ``install`` carry a version to another host's store as bytes.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

META = "meta.json"
_VERSION = re.compile(r"v(\d{4,})")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_CLAIMS = 1000
"""Give up after this many lost races for a version number (something is badly wrong by then)."""
STALE_TMP_S = 3600
"""A hidden temporary folder untouched this long belongs to a killed save or install: prune removes it."""


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


def prunable(versions: list[str], keep: int, protect=()) -> list[str]:
    """Of ``versions``, those older than the newest ``keep`` and not in ``protect``, oldest first."""
    ordered = sorted(versions, key=version_number)
    old = ordered[:-keep] if keep > 0 else ordered
    return [v for v in old if v not in set(protect)]


class AdapterStore:
    def __init__(self, root, taken=None):
        """``taken(project) -> int``: the highest version number used elsewhere (other hosts' stores),
        so a new version never reuses a number another host already published."""
        self.root = Path(root)
        self.taken = taken

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
        floor = self.taken(folder.name) if self.taken else 0
        for _ in range(_MAX_CLAIMS):
            latest = max([floor, *(version_number(v) for v in self.versions(folder.name))])
            version = version_name(latest + 1)
            try:
                os.rename(tmp, folder / version)
                return version
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Another saver took this number between our listing and our rename: try the next.
        raise RuntimeError(f"could not claim an adapter version in {folder} after {_MAX_CLAIMS} tries")


    def archive(self, project, version: str) -> bytes:
        """The version's files as an uncompressed tar (LoRA weights barely compress)."""
        folder = self.path(project, version)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in sorted(folder.iterdir()):
                if not f.is_file():
                    raise ValueError(f"adapter {version} of project {project!r}: {f.name} is not a plain file")
                tar.add(f, arcname=f.name, recursive=False)
        return buf.getvalue()

    def install(self, project, version: str, archive: bytes) -> Path:
        """Unpack an ``archive`` as ``version`` atomically (temp folder, then rename); keep an existing one.

        Only plain files with plain names are accepted, so an archive cannot write outside the folder.
        """
        version_number(version)
        folder = self._project_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
                for member in tar.getmembers():
                    if not member.isfile() or member.name != Path(member.name).name or member.name.startswith("."):
                        raise ValueError(f"adapter archive of {version}: unexpected member {member.name!r}")
                    (tmp / member.name).write_bytes(tar.extractfile(member).read())
            if not (tmp / META).is_file():
                raise ValueError(f"adapter archive of {version}: no {META}")
            try:
                os.rename(tmp, folder / version)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Installed meanwhile by another process of this host (the same files): keep that one.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.path(project, version)

    def remove(self, project, version: str) -> bool:
        """Delete a version: renamed away first, so no reader ever lists a half-deleted folder."""
        version_number(version)
        folder = self._project_dir(project)
        doomed = folder / f".tmp-removed-{version}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(folder / version, doomed)
        except FileNotFoundError:
            return False
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def prune(self, project, keep: int, protect=(), stale_tmp_s: float = STALE_TMP_S) -> list[str]:
        """Delete versions older than the newest ``keep`` except ``protect``, and stale temp folders.

        Returns the deleted versions. A reader that loads a version while it is deleted fails and is
        retried by the caller's next pass; the versions in use (``protect``) are never touched.
        """
        removed = [v for v in prunable(self.versions(project), keep, protect) if self.remove(project, v)]
        folder = self._project_dir(project)
        if folder.is_dir():
            cutoff = time.time() - stale_tmp_s
            for tmp in folder.glob(".tmp-*"):
                try:
                    if tmp.stat().st_mtime < cutoff:
                        shutil.rmtree(tmp, ignore_errors=True)
                except FileNotFoundError:
                    pass  # another pruner got it first
        return removed


def _base_model_path(peft_model) -> str | None:
    config = getattr(peft_model, "peft_config", {}).get("default")
    return getattr(config, "base_model_name_or_path", None)
