"""The demo's process supervision (scripts/local_labelstudio.py) with real processes and signals:
process groups stopped whole, pid files, leftovers of a crashed run, clean-up with stdout gone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from scripts.local_labelstudio import REPO, Supervisor, cmdline, group_members

# A service that forks a child into its own process group, as Label Studio's runserver may.
FORKING_SERVICE = [sys.executable, "-c", "import subprocess, sys, time; "
                   "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"]


def wait_for(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_stop_all_stops_every_group_and_removes_pid_files(tmp_path):
    sup = Supervisor(tmp_path, out=open(os.devnull, "w"))
    procs = [sup.start(name, FORKING_SERVICE, dict(os.environ)) for name in ("a", "b")]
    assert all(wait_for(lambda p=p: len(group_members(p.pid)) == 2) for p in procs)  # leader + child each
    assert sorted(p.name for p in tmp_path.glob("*.pid")) == ["a.pid", "b.pid"]
    assert json.loads((tmp_path / "a.pid").read_text()) == {"pid": procs[0].pid, "argv": FORKING_SERVICE}
    sup.stop_all()
    assert all(group_members(p.pid) == [] for p in procs)
    assert not list(tmp_path.glob("*.pid")) and sup.procs == []
    assert "stopped a" in (tmp_path / "supervisor.log").read_text()


CRASHING_RUN = textwrap.dedent("""
    import os, sys
    from scripts.local_labelstudio import Supervisor
    sup = Supervisor(sys.argv[1])
    sup.start("svc", {service!r}, dict(os.environ))
    os.kill(os.getpid(), 9)  # a crash: no clean-up at all
""")


def test_a_later_run_stops_the_leftovers_of_a_crashed_one(tmp_path):
    r = subprocess.run([sys.executable, "-c", CRASHING_RUN.format(service=FORKING_SERVICE), str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL
    pgid = json.loads((tmp_path / "svc.pid").read_text())["pid"]
    assert wait_for(lambda: len(group_members(pgid)) == 2)  # orphaned, still running
    # A pid file whose pid now runs something else (a recycled pid) must be left alone.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    (tmp_path / "recycled.pid").write_text(json.dumps({"pid": stranger.pid, "argv": ["label-studio", "start"]}))
    try:
        stopped = Supervisor(tmp_path, out=open(os.devnull, "w")).stop_leftovers()
        assert stopped == ["svc"]
        assert group_members(pgid) == []
        assert stranger.poll() is None and cmdline(stranger.pid)
        assert not list(tmp_path.glob("*.pid"))
    finally:
        stranger.kill()
        stranger.wait()


SUPERVISED_RUN = textwrap.dedent("""
    import os, sys, time
    from scripts.local_labelstudio import Supervisor, supervised
    sup = Supervisor(sys.argv[1])
    with supervised(sup):
        sup.start("svc", {service!r}, dict(os.environ))
        sup.start("svc2", {service!r}, dict(os.environ))
        sup.say("ready")
        while True:
            time.sleep(0.05)
    sup.say("clean-up done")
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_cleans_up_even_when_stdout_is_gone(tmp_path, sig):
    """`make demo | tee log` then Ctrl-C: tee dies with the script, so the clean-up writes to a dead pipe."""
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISED_RUN.format(service=FORKING_SERVICE), str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[2] == b"ready\n", lines
        pgids = [json.loads((tmp_path / f"{name}.pid").read_text())["pid"] for name in ("svc", "svc2")]
        assert all(wait_for(lambda g=g: len(group_members(g)) == 2) for g in pgids)
        proc.stdout.close()  # the reader (tee) is gone
        proc.send_signal(sig)
        assert proc.wait(60) == 0, proc.stderr.read().decode()
        assert all(group_members(g) == [] for g in pgids)  # both, although the first "stopped" line hit a dead pipe
        assert not list(tmp_path.glob("*.pid"))
        log = (tmp_path / "supervisor.log").read_text()
        assert "stopped svc2" in log and "stopped svc\n" in log and "clean-up done" in log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
