"""What annotators and admins see, in a real browser: headless Chromium (selenium) against a real Label
Studio 1.23, ``python -m backend serve`` and a burst worker (the e2e test's fixtures and helpers).

The annotator logs in through the web form, opens "Label All Tasks" on a project made with the
recommended label config and instructions, edits the draft in place and submits it, submits the next
draft unchanged, and empties the third one and submits it (Label Studio saves it: documented in
backend/label_config.py): the API must hold exactly those texts, on the first three tasks of the
backend's queue. The annotations' webhooks start a training (train_every = 2); once a burst worker has
run it and re-written the queue, the admin opens /dashboard, whose numbers must equal /metrics. Screenshots of both pages
go to $BROWSER_SCREENSHOTS (docs/screenshots for the README) or the test's temp dir.
"""
from __future__ import annotations

import base64
import os
import re
import uuid
from pathlib import Path

import httpx
import pytest

from backend.label_config import PROJECT_FIELDS, RECOMMENDED_LABEL_CONFIG
from backend.labelstudio import LabelStudioClient
from backend.project_config import ProjectConfig
from backend.quality import is_heldout
from tests.e2e.labelstudio_server import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.e2e.test_end_to_end import (AUTH, SUBJECTS, TEMPLATES, active_predictions, backend,  # noqa: F401
                                       e2e_redis, run_worker)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

EXTRA_PARAMS = {"budget": 6, "min_per_task": 1, "train_every": 2, "task_field": "task", "max_new_tokens": 6,
                "epochs": 1, "batch_size": 2, "r": 4}
HOLDOUT = ProjectConfig().holdout
WAIT_S = 90
EDITED = "An edited answer.\nIts second line."


def _wait(driver, what, message: str = "", timeout_s: float = WAIT_S):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    # React re-renders the page while it loads: an element found a moment ago may be gone; look again.
    return WebDriverWait(driver, timeout_s, poll_frequency=0.25,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                         ).until(what, message)


def _screenshot(driver, tmp_path: Path, name: str) -> None:
    out = Path(os.environ.get("BROWSER_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out / name))


def log_in(driver, ls_url: str) -> None:
    from selenium.webdriver.common.by import By
    driver.get(f"{ls_url}/user/login/")
    _wait(driver, lambda d: d.find_element(By.NAME, "email")).send_keys(ADMIN_EMAIL)
    driver.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    _wait(driver, lambda d: "/user/login" not in d.current_url)


def draft_box(driver, draft: str, old=None):
    """The one editable box of the labeling page once it holds ``draft`` and is not ``old``, the previous
    task's box (Label Studio renders a new element for each task: comparing ids needs no DOM access)."""
    from selenium.webdriver.common.by import By

    def ready(d):
        boxes = [b for b in d.find_elements(By.TAG_NAME, "textarea") if b.is_displayed()]
        fresh = boxes and boxes[0] != old and boxes[0].get_attribute("value") == draft
        return boxes if fresh else False
    boxes = _wait(driver, ready, f"no editable box holding the draft {draft!r}")
    assert len(boxes) == 1, "the draft must be the only input box (maxSubmissions=1, transcription=true)"
    return boxes[0]


def submit(driver) -> None:
    from selenium.webdriver.common.by import By
    driver.find_element(By.XPATH, "//button[normalize-space()='Submit']").click()


def saved_texts(client: LabelStudioClient, project: int) -> dict[int, list]:
    return {t["id"]: [r["value"]["text"] for a in t["annotations"] for r in a["result"]]
            for t in client.tasks(project) if t.get("annotations")}


def test_annotator_edits_draft_in_place_and_dashboard_matches_metrics(label_studio, backend, e2e_redis, chrome,
                                                                        tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ls_url, _ = label_studio
    backend_url, env, _, _ = backend
    client = LabelStudioClient(*label_studio)
    project = client.create_project(f"browser-{uuid.uuid4().hex[:8]}", RECOMMENDED_LABEL_CONFIG,
                                    **PROJECT_FIELDS)["id"]
    data = [{"prompt": template.format(subject), "task": task}
            for task, template in list(TEMPLATES.items())[:3] for subject in SUBJECTS[:4]]
    assert client.import_tasks(project, [{"data": d} for d in data]) == 12
    client.connect_ml_backend(project, backend_url, EXTRA_PARAMS, basic_auth=AUTH)
    run_worker(env, tmp_path, e2e_redis)
    _, preds = active_predictions(client, project)
    queue = [p["task"] for p in sorted(preds, key=lambda p: p["score"])]
    drafts = {p["task"]: p["result"][0]["value"]["text"][0] for p in preds}
    assert len(queue) == 12

    # Label All Tasks: the instructions first, then the first queued draft in one editable box.
    log_in(chrome, ls_url)
    chrome.get(f"{ls_url}/projects/{project}/data")
    _wait(chrome, lambda d: d.find_element(By.XPATH, "//button[contains(., 'Label All Tasks')]")).click()
    close = _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, "button[aria-label='Close modal']"))
    # The modal fades in: its close button can be there before its text is visible.
    _wait(chrome, lambda d: "Rewrite" in d.find_element(By.TAG_NAME, "body").text,
          "the project's instructions (What Rewrite does) were not shown")
    close.click()
    box = draft_box(chrome, drafts[queue[0]])
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(EDITED.split("\n")[0], Keys.ENTER, EDITED.split("\n")[1])  # Enter adds a line
    _screenshot(chrome, tmp_path, "labeling.png")
    submit(chrome)

    # The next task is the queue's next; submitting it unchanged saves the draft as it is.
    box = draft_box(chrome, drafts[queue[1]], old=box)
    submit(chrome)
    # What Label Studio 1.23 cannot refuse (backend/label_config.py): a draft whose text was deleted is
    # still a region, so neither enable_empty_annotation=false nor required="true" stops its Submit.
    box = draft_box(chrome, drafts[queue[2]], old=box)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    submit(chrome)
    _wait(chrome, lambda d: len(saved_texts(client, project)) == 3)
    assert saved_texts(client, project) == {queue[0]: [[EDITED]], queue[1]: [[drafts[queue[1]]]], queue[2]: [[""]]}
    assert client.next_task(project)["id"] == queue[3]

    # The annotations' webhooks queued a training: run it (it re-writes the queue), then the
    # dashboard, behind the backend's basic auth, shows the numbers of /metrics.
    def metrics() -> dict:
        return httpx.get(f"{backend_url}/metrics", auth=AUTH, timeout=10).json()["projects"][str(project)]
    _wait(chrome, lambda d: metrics()["training_pending"])
    run_worker(env, tmp_path, e2e_redis)
    m = metrics()
    assert [h["version"] for h in m["training_history"]] == ["v0001"] and m["queue"]["annotated"] == 3
    chrome.execute_cdp_cmd("Network.enable", {})
    token = base64.b64encode(":".join(AUTH).encode()).decode()
    chrome.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    chrome.get(f"{backend_url}/dashboard")
    section = _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f'section[data-project="{project}"]'))
    chrome.set_window_size(1400, 1500)
    _screenshot(chrome, tmp_path, "dashboard.png")

    def shown(key: str) -> dict:
        return {e.get_attribute("data-task"): e.text
                for e in section.find_elements(By.CSS_SELECTOR, f'[data-key="{key}"]')}
    sel = m["selection"]
    assert shown("budget") == {None: str(sel["budget"])} and shown("selected") == {None: str(sel["selected"])}
    assert shown("allocated") == {t: str(n) for t, n in sel["allocation"].items()}
    assert sum(sel["allocation"].values()) == EXTRA_PARAMS["budget"]
    assert shown("pool") == {t: str(n) for t, n in sel["task_sizes"].items()} == {t: "4" for t in list(TEMPLATES)[:3]}
    assert shown("confidence") == {t: f"{c:.3g}" for t, c in sel["task_confidence"].items()}
    live = m["progress"]  # the webhooks' live counts, per task label
    assert shown("annotated") == {None: str(sum(c["annotated"] for c in live.values()))}
    assert shown("task_annotated") == {t: str(live.get(t, {}).get("annotated", 0)) for t in sel["task_sizes"]}
    assert shown("model_version") == {None: m["queue"]["model_version"]}
    assert re.findall(r"#(\d+)", shown("head")[None]) == [str(t) for t in m["queue"]["head"]]
    assert m["queue"]["head"] == queue[3:3 + len(m["queue"]["head"])]
    # Trained on every annotation with a response (a tiny-model draft may be only whitespace), held-out
    # tasks aside.
    answers = {queue[0]: EDITED, queue[1]: drafts[queue[1]], queue[2]: ""}
    responses = sum(1 for t, text in answers.items() if text.strip() and not is_heldout(t, HOLDOUT))
    assert shown("examples") == {"v0001": str(m["training_history"][0]["n_examples"])} == {"v0001": str(responses)}, \
        repr(drafts[queue[1]])
    assert shown("failed_jobs") == {None: "none"} and not m["label_config_warnings"]
