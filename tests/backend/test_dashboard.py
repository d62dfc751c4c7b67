"""/dashboard: the same numbers as /metrics, rendered as HTML that reloads itself; behind the same auth."""
import re

import pytest
from fastapi.testclient import TestClient

from backend.dashboard import project_section
from backend.label_config import RECOMMENDED_LABEL_CONFIG
from backend.server import app
from tests.backend.fakes import LABEL_CONFIG, TEST_PARAMS, backend_env, fake_ls, run_worker  # noqa: F401


@pytest.fixture
def client(backend_env):
    return TestClient(app)


def _setup(client, pid, schema=LABEL_CONFIG):
    r = client.post("/setup", json={"project": f"{pid}.1", "schema": schema, "extra_params": TEST_PARAMS})
    assert r.status_code == 200, r.text


def values(page: str, key: str) -> dict[str | None, str]:
    """data-key="key" values of a page, by data-task (None when the number has no task)."""
    found = re.findall(r'<span data-key="%s"(?: data-task="([^"]*)")?>([^<]*)</span>' % re.escape(key), page)
    return {task or None: value for task, value in found}


def test_dashboard_shows_the_numbers_of_metrics(client, fake_ls):
    pid = fake_ls.project_id
    _setup(client, pid, RECOMMENDED_LABEL_CONFIG)
    run_worker()
    for task_id in [t["id"] for t in fake_ls.tasks(pid)][:3]:  # train_every = 3: one training
        fake_ls.annotate(pid, task_id, f"answer {task_id}")
        client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": pid}})
    run_worker()
    m = client.get("/metrics").json()["projects"][str(pid)]
    r = client.get("/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert '<meta http-equiv=refresh content=10>' in page and f'data-project="{pid}"' in page
    sel = m["selection"]
    assert values(page, "budget") == {None: str(sel["budget"])} and values(page, "selected") == {None: str(sel["selected"])}
    assert values(page, "annotated") == {None: str(m["queue"]["annotated"])}
    assert values(page, "allocated") == {t: str(n) for t, n in sel["allocation"].items()}
    assert values(page, "pool") == {t: str(n) for t, n in sel["task_sizes"].items()}
    assert values(page, "confidence") == {t: f"{c:.3g}" for t, c in sel["task_confidence"].items()}
    assert [(h["version"], h["annotations"]) for h in m["training_history"]] == [("v0001", 3)]
    assert values(page, "examples") == {"v0001": str(m["training_history"][0]["n_examples"])}
    assert " ".join(f"#{t}" for t in m["queue"]["head"]).replace(" ", ", ") in page
    assert values(page, "scored")[None] == str(m["scoring"]["done"])
    assert "data-key=failed_jobs>none" in page and "hides the model's draft" not in page


def test_setup_warns_when_the_config_hides_the_draft(client, fake_ls, caplog):
    pid = fake_ls.project_id
    _setup(client, pid)  # the fake's config: editable, no transcription, no maxSubmissions
    warnings = client.get("/metrics").json()["projects"][str(pid)]["label_config_warnings"]
    assert len(warnings) == 2 and 'transcription="true"' in warnings[0] and "maxSubmissions" in warnings[1]
    assert any("hides the model's draft" in rec.getMessage() for rec in caplog.records)
    assert "hides the model's draft" in client.get("/dashboard").text
    _setup(client, pid, RECOMMENDED_LABEL_CONFIG)  # fixed: the warning goes away
    assert client.get("/metrics").json()["projects"][str(pid)]["label_config_warnings"] == []


def test_dashboard_needs_basic_auth_when_set(client, backend_env, monkeypatch):
    from backend.settings import get_settings
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "pw")
    get_settings.cache_clear()
    assert client.get("/dashboard").status_code == 401
    assert client.get("/dashboard", auth=("ls", "wrong")).status_code == 401
    assert client.get("/dashboard", auth=("ls", "pw")).status_code == 200


def test_sections_render_from_partial_metrics_and_escape_names():
    empty = project_section(3, {})
    assert empty.count("not yet available") >= 3 and "<svg" not in empty
    quality = {"versions": [{"version": "v0001", "annotations": 4, "overall": {"base_nll": 2.5, "adapter_nll": 2.1, "n": 8}},
                            {"version": "v0002", "annotations": 8, "overall": {"base_nll": 2.5, "adapter_nll": 1.9, "n": 8}}]}
    sel = {"budget": 4, "selected": 4, "allocation": {"<b>x</b>": 4}, "task_confidence": {"<b>x</b>": 0.5},
           "task_sizes": {"<b>x</b>": 10}}
    jobs = {"train": {"id": "wtd-train-3-1", "status": "failed", "error": "RuntimeError: out of memory"}}
    html = project_section(3, {"quality": quality, "selection": sel, "jobs": jobs,
                               "progress": {"<b>x</b>": {"annotated": 2, "allocated": 3}}})
    assert html.count("<polyline") == 2 and values(html, "adapter_nll") == {"v0001": "2.1", "v0002": "1.9"}
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert values(html, "annotated") == {None: "2"} and values(html, "task_annotated") == {"&lt;b&gt;x&lt;/b&gt;": "2"}
    assert "RuntimeError: out of memory" in html and "wtd-train-3-1" in html
