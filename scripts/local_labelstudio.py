"""Local processes for the demo and the tests: a real Label Studio 1.23.2 (its own venv, 127.0.0.1
only, private addresses allowed), the waits for a server to answer, and a supervisor that stops
every process it started, whatever ends the run.

One recipe for the demo (``scripts/demo.py``) and the tests (``tests/e2e/labelstudio_server.py``,
``tests/e2e/test_end_to_end.py``). ``make venv-ls`` builds ``.venv-ls``; ``LABEL_STUDIO_BIN`` points
elsewhere.

The supervisor (``Supervisor`` + ``supervised``) starts each process in a process group of its own
(so the terminal's Ctrl-C reaches only the script, which then stops the groups in order) and writes a
pid file per process; Ctrl-C, SIGTERM and SIGHUP all run the clean-up, which keeps going when stdout
is gone (``make demo | tee log`` loses ``tee`` to the same Ctrl-C; a closed terminal gives EIO). A
later run finds what a crashed or ``kill -9``-ed run left behind from those pid files and stops it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------- Label Studio
def label_studio_bin() -> Path:
    return Path(os.environ.get("LABEL_STUDIO_BIN", REPO / ".venv-ls" / "bin" / "label-studio"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def label_studio_env(data_dir: Path, username: str, password: str, token: str) -> dict[str, str]:
    """The environment a local Label Studio needs to work with an ML backend on 127.0.0.1."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # Without these two, connecting a backend or webhook on a private address is a 403.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # No calls home: no PyPI version check, no analytics.
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
    })
    return env


def label_studio_argv(binary: Path, data_dir: Path, port: int) -> list[str]:
    # --internal-host is the bind address (the default is 0.0.0.0); --host only shapes links.
    return [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir)]


# ---------------------------------------------------------------------------------- waits
def wait_for_http(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float, what: str = "the server",
                  ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200, **request) -> None:
    """Poll ``url`` until ``ok(response)``; RuntimeError with the log's tail if the process dies or
    the time runs out. ``request`` goes to ``httpx.get`` (headers, auth)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            if ok(httpx.get(url, timeout=5, **request)):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f}s:\n{tail(log_path)}")


def wait_until_ready(url: str, token: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Until Label Studio's API answers with our token; fail early if the process dies."""
    wait_for_http(f"{url}/api/current-user/whoami", proc, log_path, timeout_s, what="Label Studio",
                  headers={"Authorization": f"Token {token}"})


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------- processes
def stop_process_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the group we started (runserver may fork), SIGKILL if it lingers."""
    if proc.poll() is not None:
        _kill_group(proc.pid, grace_s)  # the leader is gone; children in its group may not be
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
    _kill_group(proc.pid, grace_s)


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (from /proc; empty where there is none)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


def cmdline(pid: int) -> list[str] | None:
    """A live process's argv (None if it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a for a in raw.decode(errors="replace").split("\0") if a] or None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(pgid: int, grace_s: float) -> None:
    """SIGTERM what is left of a group, SIGKILL after ``grace_s``."""
    if not group_members(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_members(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _ours(argv: list[str], recorded: list[str]) -> bool:
    # A script runs as "python <script> args": what we started is the tail of the argv.
    return len(argv) >= len(recorded) and argv[-len(recorded):] == recorded


class Supervisor:
    """The processes this run started, each in its own process group with a pid file in ``run_dir``."""

    def __init__(self, run_dir: Path, out=None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._out = out

    def say(self, message: str) -> None:
        """Print to stdout, and keep going when stdout is gone (a dead ``tee``, a closed terminal)."""
        with open(self.run_dir / "supervisor.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {message.strip()}\n")
        out = self._out or sys.stdout
        try:
            print(message, file=out, flush=True)
        except (OSError, ValueError):  # BrokenPipeError, EIO, or a closed file
            self._out = open(os.devnull, "w")
            try:  # also for the interpreter's own flush at exit
                os.dup2(self._out.fileno(), sys.stdout.fileno())
            except (OSError, ValueError):
                pass

    def start(self, name: str, argv: list[str], env: dict, cwd: Path = REPO) -> subprocess.Popen:
        log_path = self.run_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        (self.run_dir / f"{name}.pid").write_text(json.dumps({"pid": proc.pid, "argv": argv}))
        self.procs.append((name, proc))
        self.say(f"  started {name} (pid {proc.pid}, log {log_path})")
        return proc

    def stop_all(self) -> None:
        """Stop every group started here, last started first, and remove their pid files."""
        while self.procs:
            name, proc = self.procs.pop()
            stop_process_group(proc)
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
            self.say(f"  stopped {name}")

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs if proc.poll() is not None]

    def stop_leftovers(self) -> list[str]:
        """Stop what an earlier run left behind (crash, ``kill -9``), found by its pid files.

        A group is stopped only if one of its live members still runs the recorded argv: a pid that
        was recycled for another program is left alone.
        """
        stopped = []
        for pid_file in sorted(self.run_dir.glob("*.pid")):
            try:
                info = json.loads(pid_file.read_text())
                pgid, recorded = int(info["pid"]), list(info["argv"])
            except (OSError, ValueError, KeyError, TypeError):
                pid_file.unlink(missing_ok=True)
                continue
            members = [p for p in group_members(pgid) if p != os.getpid()]
            if any(_ours(cmdline(p) or [], recorded) for p in members):
                self.say(f"  stopping leftover {pid_file.stem} (process group {pgid})")
                _kill_group(pgid, grace_s=15)
                stopped.append(pid_file.stem)
            pid_file.unlink(missing_ok=True)
        return stopped


def _interrupt(signum, frame):
    raise KeyboardInterrupt


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def supervised(sup: Supervisor) -> Iterator[Supervisor]:
    """Run the body; however it ends (return, error, Ctrl-C, SIGTERM, SIGHUP) stop every process started.

    Explicit handlers: a shell that starts a script in the background sets SIGINT to "ignore". During
    the clean-up the signals are ignored, so a second Ctrl-C cannot cut it short.
    """
    previous = {sig: signal.signal(sig, _interrupt) for sig in SIGNALS}
    try:
        yield sup
    except KeyboardInterrupt:
        sup.say("\nstopping")
    finally:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        try:
            sup.stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
