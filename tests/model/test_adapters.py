"""AdapterStore: increasing versions, atomic saves (no partial adapter is ever listed), safe under
concurrent savers, project ids that cannot escape the store's root."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from model.adapters import AdapterStore


class FakeAdapter:
    """Writes what peft's ``save_pretrained`` writes; the storage logic does not care what's inside."""

    def __init__(self, tag="a", base="/models/base", barrier: threading.Barrier | None = None, fail=False):
        self.tag, self.barrier, self.fail = tag, barrier, fail
        self.peft_config = {"default": type("Cfg", (), {"base_model_name_or_path": base})()}

    def save_pretrained(self, folder):
        (folder / "adapter_config.json").write_text(json.dumps({"tag": self.tag}))
        if self.fail:
            raise OSError("disk full")
        if self.barrier is not None:
            self.barrier.wait()  # every saver finishes writing at once, then all race for a version


def tag(store, project, version):
    return json.loads((store.path(project, version) / "adapter_config.json").read_text())["tag"]


def test_versions_increase_and_earlier_ones_are_kept(tmp_path):
    store = AdapterStore(tmp_path / "adapters")
    assert store.versions(7) == [] and store.latest(7) is None
    v1 = store.save(7, FakeAdapter("first"), {"n_examples": 3, "loss": 1.5})
    v2 = store.save("7", FakeAdapter("second"), {"n_examples": 5, "loss": 1.2})
    assert (v1, v2) == ("v0001", "v0002")
    assert store.versions(7) == ["v0001", "v0002"] and store.latest(7) == "v0002"
    assert (tag(store, 7, v1), tag(store, 7, v2)) == ("first", "second")  # rollback target intact
    meta = store.meta(7, v2)
    assert meta["n_examples"] == 5 and meta["loss"] == 1.2 and meta["version"] == "v0002"
    assert meta["base_model"] == "/models/base" and meta["created"].endswith("+00:00")
    assert store.versions(8) == []  # projects are separate


def test_numeric_order_past_v9999(tmp_path):
    store = AdapterStore(tmp_path)
    for name in ("v9999", "v10000"):
        (tmp_path / "p" / name).mkdir(parents=True)
    assert store.versions("p") == ["v9999", "v10000"]
    assert store.save("p", FakeAdapter(), {}) == "v10001"


def test_partial_and_failed_saves_are_invisible(tmp_path):
    store = AdapterStore(tmp_path)
    partial = tmp_path / "p" / ".tmp-crashed"  # what a saver killed mid-write leaves behind
    partial.mkdir(parents=True)
    (partial / "adapter_config.json").write_text("{")
    assert store.versions("p") == [] and store.latest("p") is None
    with pytest.raises(OSError, match="disk full"):
        store.save("p", FakeAdapter(fail=True), {})
    assert store.versions("p") == []
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [".tmp-crashed"]  # its own temp removed
    assert store.save("p", FakeAdapter(), {}) == "v0001"


def test_concurrent_saves_get_distinct_versions(tmp_path):
    store = AdapterStore(tmp_path)
    n = 8
    barrier = threading.Barrier(n)
    with ThreadPoolExecutor(n) as pool:
        versions = list(pool.map(lambda i: store.save("p", FakeAdapter(f"t{i}", barrier=barrier), {"i": i}),
                                 range(n)))
    assert sorted(versions) == [f"v{i:04d}" for i in range(1, n + 1)]
    for i, version in enumerate(versions):  # each version holds the adapter its saver wrote
        assert tag(store, "p", version) == f"t{i}" and store.meta("p", version)["i"] == i
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(".")]


def test_a_saver_that_loses_the_race_takes_the_next_version(tmp_path, monkeypatch):
    store = AdapterStore(tmp_path)
    listed = store.versions

    def listing_then_rival_claims(project):
        # Threads rarely interleave at exactly this point, so force it: a rival saver completes
        # the version this saver is about to pick, right after this saver listed the versions.
        seen = listed(project)
        rival = tmp_path / "p" / f"v{len(seen) + 1:04d}"
        if not rival.exists() and len(seen) == 0:
            rival.mkdir()
            (rival / "adapter_config.json").write_text(json.dumps({"tag": "rival"}))
        return seen

    monkeypatch.setattr(store, "versions", listing_then_rival_claims)
    assert store.save("p", FakeAdapter("mine"), {}) == "v0002"
    assert (tag(store, "p", "v0001"), tag(store, "p", "v0002")) == ("rival", "mine")


@pytest.mark.parametrize("project", ["../x", "a/b", "..", ".", "", ".hidden", "a..b", "a\\b", True, None, 1.5])
def test_unsafe_project_ids_are_rejected(tmp_path, project):
    store = AdapterStore(tmp_path / "root")
    with pytest.raises(ValueError, match="project id"):
        store.save(project, FakeAdapter(), {})
    with pytest.raises(ValueError, match="project id"):
        store.versions(project)
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())


def test_path_errors(tmp_path):
    store = AdapterStore(tmp_path)
    store.save("p", FakeAdapter(), {})
    assert store.path("p", "v0001") == tmp_path / "p" / "v0001"
    with pytest.raises(FileNotFoundError, match="v0002"):
        store.path("p", "v0002")
    with pytest.raises(FileNotFoundError):
        store.meta("other", "v0001")
    with pytest.raises(ValueError, match="not an adapter version"):
        store.path("p", "../p/v0001")


def test_prune_keeps_the_newest_and_the_protected_and_clears_stale_temps(tmp_path):
    import os
    import time
    store = AdapterStore(tmp_path)
    for i in range(6):
        store.save("p", FakeAdapter(f"t{i}"), {})
    stale, fresh = tmp_path / "p" / ".tmp-killed", tmp_path / "p" / ".tmp-saving"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert store.prune("p", keep=2, protect={"v0002", None}) == ["v0001", "v0003", "v0004"]
    assert store.versions("p") == ["v0002", "v0005", "v0006"]
    assert tag(store, "p", "v0002") == "t1" and tag(store, "p", "v0006") == "t5"
    assert sorted(p.name for p in (tmp_path / "p").iterdir() if p.name.startswith(".")) == [".tmp-saving"]
    assert store.prune("p", keep=2, protect={"v0002"}) == []  # nothing more to do
    assert store.prune("none", keep=1) == []  # a project without adapters


def test_prunable_is_by_number_not_by_name():
    from model.adapters import prunable
    assert prunable(["v10000", "v9999", "v0001"], keep=1) == ["v0001", "v9999"]
    assert prunable(["v0001", "v0002"], keep=5) == []


def test_archive_installs_the_same_files_in_another_store(tmp_path):
    here, there = AdapterStore(tmp_path / "a"), AdapterStore(tmp_path / "b")
    version = here.save("p", FakeAdapter("moved"), {"loss": 0.5})
    path = there.install("p", version, here.archive("p", version))
    assert path == tmp_path / "b" / "p" / version and there.versions("p") == [version]
    assert tag(there, "p", version) == "moved" and there.meta("p", version)["loss"] == 0.5
    # A second install of the same version (another process on that host won the race) keeps the first.
    assert there.install("p", version, here.archive("p", version)) == path
    assert not [p for p in (tmp_path / "b" / "p").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["../escape", "sub/file", ".hidden"])
def test_install_refuses_archives_that_write_elsewhere(tmp_path, name):
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member in ("meta.json", name):
            info = tarfile.TarInfo(member)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    store = AdapterStore(tmp_path / "root")
    with pytest.raises(ValueError, match="unexpected member"):
        store.install("p", "v0001", buf.getvalue())
    assert store.versions("p") == [] and not list((tmp_path / "root" / "p").iterdir())
    assert not (tmp_path / "escape").exists()


def test_numbers_continue_after_versions_taken_elsewhere(tmp_path):
    store = AdapterStore(tmp_path, taken=lambda project: {"p": 7}.get(project, 0))
    assert store.save("p", FakeAdapter(), {}) == "v0008"
    assert store.save("p", FakeAdapter(), {}) == "v0009"
    assert store.save("q", FakeAdapter(), {}) == "v0001"


def test_remove_is_safe_to_repeat(tmp_path):
    store = AdapterStore(tmp_path)
    version = store.save("p", FakeAdapter(), {})
    assert store.remove("p", version) is True and store.remove("p", version) is False
    assert store.versions("p") == [] and not list((tmp_path / "p").iterdir())
