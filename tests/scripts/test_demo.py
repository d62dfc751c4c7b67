"""The demo's report comes from the backend's public surface (/metrics), not from its Redis keys."""
from __future__ import annotations

import ast
import json
from pathlib import Path

from fastapi.testclient import TestClient

from backend.server import app
from scripts import demo
from tests.backend.fakes import LABEL_CONFIG, TEST_PARAMS, backend_env, fake_ls, run_worker  # noqa: F401


def test_demo_reads_no_backend_internals():
    tree = ast.parse(Path(demo.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"backend.store", "backend.jobs", "redis.Redis"}, imported
    # Redis is only pinged to decide whether to start one; no key of the backend is read.
    assert ".selection(" not in Path(demo.__file__).read_text()


def test_report_and_png_from_metrics(fake_ls, tmp_path):
    client = TestClient(app)
    pid = fake_ls.project_id
    body = {"project": f"{pid}.1764212345", "schema": LABEL_CONFIG, "hostname": "http://127.0.0.1:8080",
            "access_token": "secret-token", "extra_params": json.dumps(TEST_PARAMS)}
    assert client.post("/setup", json=body).status_code == 200
    run_worker()
    metrics = client.get("/metrics").json()["projects"][str(pid)]
    task_of = {t["id"]: t["data"].get("task") for t in fake_ls.tasks(pid)}
    lines = []
    demo.print_report(lines.append, metrics, task_of)
    text = "\n".join(lines)
    sizes, alloc = metrics["selection"]["task_sizes"], metrics["selection"]["allocation"]
    for task, n in sizes.items():  # one row per task: prompts and allocation as the backend has them
        row = next(line for line in lines if line.split()[:1] == [task])
        assert row.split()[1] == str(n) and row.split()[-1] == str(alloc[task])
    assert "budget: 4 prompts" in text
    head = [str(task_of[t]) for t in metrics["queue"]["head"]]
    assert f"queue head (tasks of the first {len(head)} prompts): {', '.join(head)}" in text
    png = demo.write_png(metrics, tmp_path / "allocation.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
