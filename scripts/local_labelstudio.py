"""How to run a real Label Studio 1.23.2 locally: its own venv, 127.0.0.1 only, private addresses allowed.

One recipe for the demo (``scripts/demo.py``) and the tests (``tests/e2e/labelstudio_server.py``).
``make venv-ls`` builds ``.venv-ls``; ``LABEL_STUDIO_BIN`` points elsewhere.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def label_studio_bin() -> Path:
    return Path(os.environ.get("LABEL_STUDIO_BIN", REPO / ".venv-ls" / "bin" / "label-studio"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def wait_until_ready(url: str, token: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll until the API answers with our token; fail early if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            r = httpx.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"},
                          timeout=5)
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"Label Studio did not answer within {timeout_s:.0f}s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the group we started (runserver may fork), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
