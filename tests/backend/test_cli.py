"""``python -m backend settings|serve|worker`` (settings against the fake Label Studio)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from rq import Queue

from backend import cli, enqueue, wiring
from tests.backend.fakes import backend_env, fake_ls, run_worker  # noqa: F401


def _settings(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the in-process worker printed
    code = cli.main(["settings", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_settings_shows_the_state(fake_ls, capsys):
    pid = fake_ls.project_id
    enqueue.enqueue_refresh(pid)
    run_worker()
    code, out, _ = _settings(capsys, "--project", str(pid), "--json")
    state = json.loads(out)
    assert code == 0 and state["budget"] == 4 and state["annotated"] == 0 and state["tasks"] == 10
    assert state["queue_head"] == wiring.store().selection(pid)["order"][:4] + state["queue_head"][4:]
    assert state["model_version"] == f"wtd-{pid}-1" and state["adapter"] is None
    code, out, _ = _settings(capsys, "--project", str(pid))
    assert code == 0 and "budget: 4" in out


def test_settings_shows_live_progress_per_task_label(fake_ls, capsys):
    """Annotated vs allocated per task label, as annotations arrive (not as of the last queue write)."""
    pid = fake_ls.project_id
    enqueue.enqueue_refresh(pid)
    run_worker()
    alloc = wiring.store().selection(pid)["allocation"]
    first = wiring.store().selection(pid)["order"][0]
    label = next(t["data"]["task"] for t in fake_ls.tasks_by_project[pid] if t["id"] == first)
    fake_ls.annotate(pid, first, "an answer")  # its webhook was lost: the command reads the truth
    code, out, _ = _settings(capsys, "--project", str(pid), "--json")
    progress = json.loads(out)["progress"]
    assert code == 0 and progress[label] == {"annotated": 1, "allocated": alloc[label]}
    assert sum(p["annotated"] for p in progress.values()) == 1


def test_settings_change_goes_through_label_studio_and_replans(fake_ls, capsys, backend_env):
    pid = fake_ls.project_id
    code, out, _ = _settings(capsys, "--project", str(pid), "--budget", "0.5", "--strategy", "random",
                             "--train-every", "5", "--json")
    assert code == 0 and json.loads(out)["budget"] == 5
    params = next(iter(fake_ls.backends.values()))["extra_params"]
    assert params["budget"] == 0.5 and params["strategy"] == "random" and params["train_every"] == 5
    assert params["task_field"] == "task"  # untouched settings are kept
    assert Queue(backend_env.score_queue, connection=wiring.redis_conn()).count == 1
    run_worker()
    assert wiring.store().queue(pid)["selected"] == 5


@pytest.mark.parametrize("args,message", [(["--budget", "0"], "'budget'"), (["--strategy", "best"], "'strategy'"),
                                          (["--adapter", "v0042"], "v0042")])
def test_settings_rejects_bad_values(fake_ls, capsys, args, message):
    code, _, err = _settings(capsys, "--project", str(fake_ls.project_id), *args)
    assert code == 2 and message in err
    assert "set_extra_params" not in fake_ls.calls


def test_settings_rolls_back_to_a_stored_adapter(fake_ls, capsys, backend_env):
    pid = fake_ls.project_id
    for v in ("v0001", "v0002"):  # complete versions, as AdapterStore leaves them
        (backend_env.model_dir / str(pid) / v).mkdir(parents=True)
    wiring.store().set_adapter(pid, "v0002")
    code, out, _ = _settings(capsys, "--project", str(pid), "--adapter", "v0001", "--json")
    assert code == 0 and json.loads(out)["adapter"] == "v0001" and json.loads(out)["refresh_pending"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_and_worker_commands(backend_env):
    env = {**os.environ, "REDIS_URL": backend_env.redis_url}
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = None
        for _ in range(100):
            try:
                body = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1))
                break
            except OSError:
                time.sleep(0.2)
        assert body == {"status": "UP", "model_class": "WeightedTaskDiversity"}
    finally:
        server.terminate()
        server.wait(10)
    worker = subprocess.run([sys.executable, "-m", "backend", "worker", "--burst"], env=env, timeout=120,
                            capture_output=True, text=True)
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert wiring.store().conn.exists("wtd:reconcile:scheduled")  # the worker scheduled the reconcile pass


def test_serve_keeps_query_strings_out_of_the_access_log(backend_env, tmp_path):
    env = {**os.environ, "REDIS_URL": backend_env.redis_url}
    port = _free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            status = None
            for _ in range(100):
                try:
                    status = urllib.request.urlopen(f"http://127.0.0.1:{port}/health?token=q-secret-42",
                                                    timeout=1).status
                    break
                except OSError:
                    time.sleep(0.2)
            assert status == 200
        finally:
            server.terminate()
            server.wait(10)
    text = log_path.read_text()
    assert '"GET /health HTTP/1.1" 200' in text  # the access log is on, with the path
    assert "q-secret-42" not in text and "token=" not in text
