"""A real Label Studio 1.23.2 for the e2e and client tests, started once per pytest run.

Label Studio lives in its own venv (it pins Django, rq, redis and its own SDK): ``make venv-ls``
builds ``.venv-ls``; ``LABEL_STUDIO_BIN`` points elsewhere. The server binds 127.0.0.1 on a free
port, keeps its SQLite data in a temp dir, and is stopped when the pytest run ends.

Both ``tests/e2e/conftest.py`` and ``tests/backend/test_labelstudio.py`` import the ``label_studio``
fixture from here; the server itself is a module-level singleton so that the two fixture copies
pytest sees share one process (its first start runs migrations: 25-60 s on a busy machine).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.local_labelstudio import (free_port, label_studio_argv, label_studio_bin, label_studio_env,
                                       stop_process_group, wait_until_ready)

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "e2e-admin-pass"
ADMIN_TOKEN = "e2e-legacy-token-0123456789"
START_TIMEOUT_S = float(os.environ.get("LABEL_STUDIO_START_TIMEOUT", "240"))


@dataclass
class LabelStudioServer:
    url: str
    token: str
    data_dir: Path
    proc: subprocess.Popen

    @property
    def log_path(self) -> Path:
        return self.data_dir / "label-studio.log"

    def stop(self) -> None:
        stop_process_group(self.proc)


def start_label_studio(data_dir: Path) -> LabelStudioServer:
    binary = label_studio_bin()
    if not binary.exists():
        pytest.fail(f"Label Studio is not installed at {binary}: run `make venv-ls` (a venv of its own, "
                    "label-studio==1.23.2) or set LABEL_STUDIO_BIN", pytrace=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir / "label-studio.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(label_studio_argv(binary, data_dir, port), cwd=data_dir, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=label_studio_env(data_dir, ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN),
                                start_new_session=True)
    server = LabelStudioServer(url, ADMIN_TOKEN, data_dir, proc)
    try:
        wait_until_ready(url, ADMIN_TOKEN, proc, log_path, START_TIMEOUT_S)
    except RuntimeError as e:
        server.stop()
        pytest.fail(str(e), pytrace=False)
    return server


_server: LabelStudioServer | None = None


@pytest.fixture(scope="session")
def label_studio(request, tmp_path_factory) -> tuple[str, str]:
    """(url, legacy token) of a running Label Studio, shared by every test in the run."""
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = start_label_studio(tmp_path_factory.mktemp("label-studio"))
        request.config.add_cleanup(_server.stop)
    return _server.url, _server.token
