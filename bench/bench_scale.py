"""Scale (issue #8): a retraining pass costs the same at 2,000 or 20,000 tasks; Label Studio stays bounded.

    python bench/bench_scale.py                          # starts its own Label Studio (SQLite)
    python bench/bench_scale.py --label-studio URL TOKEN # or uses a running one
    python bench/bench_scale.py --sizes 2000 20000 --redis-url redis://127.0.0.1:6379/7

A real Label Studio 1.23.2, a real Redis (the database given is FLUSHED), the tiny test model, and the
backend's jobs run by an in-process burst worker (no server: training is enqueued directly, as
START_TRAINING would). For each project size, 12 task labels: the time to the first queue; then 3
retraining passes, each after ``train_every`` annotations taken from Label Studio's own /next, timed
from enqueueing the training to the queue written (train -> refresh -> window scoring -> write);
per pass the rows written (predictions imported + re-drafted in place), the bytes read from Label
Studio, and the prediction rows Label Studio keeps. Prints one JSON object (also written to
``$OUT/bench_scale.json`` when ``$OUT`` is set), PASS/FAIL per target on stderr, exits 1 on a miss.

Targets: pass time at the largest size <= 1.5 x at the smallest; rows kept <= 1.2 x N; rows written per
pass <= 2 x draft_ahead + 10. Not a test: not run by CI.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABEL_CONFIG = ('<View><Text name="prompt" value="$prompt"/>'
                '<TextArea name="response" toName="prompt" editable="true"/></View>')
TASKS = ["summarize", "translate", "classify", "reverse", "count", "rewrite", "explain", "list",
         "compare", "answer", "extract", "title"]
TRAIN_EVERY, DRAFT_AHEAD, PASSES = 5, 50, 3
PARAMS = {"budget": 300, "min_per_task": 5, "task_field": "task", "max_new_tokens": 4, "train_every": TRAIN_EVERY,
          "draft_ahead": DRAFT_AHEAD, "epochs": 1, "batch_size": 4, "r": 4, "lora_alpha": 8}


class Meter:
    """Counts what the backend's Label Studio client reads and writes (one shared client for all jobs)."""

    def __init__(self, client):
        self.client, self.bytes_read, self.imported, self.patched = client, 0, 0, 0
        client._http.httpx_client.event_hooks["response"].append(self._count)
        real_import, real_update = client.import_predictions, client.update_prediction

        def import_predictions(project, preds):
            self.imported += len(preds)
            return real_import(project, preds)

        def update_prediction(pred_id, result):
            self.patched += 1
            return real_update(pred_id, result)
        client.import_predictions, client.update_prediction = import_predictions, update_prediction

    def _count(self, response):
        response.read()
        self.bytes_read += len(response.content)

    def snapshot(self) -> tuple[int, int, int]:
        return self.bytes_read, self.imported, self.patched


def prompts(n: int) -> list[dict]:
    return [{"data": {"prompt": f"{TASKS[i % 12]} the paragraph number {i} about rivers and towns",
                      "task": TASKS[i % 12]}} for i in range(n)]


def run_jobs() -> None:
    from rq import SimpleWorker

    from backend import wiring
    from backend.settings import get_settings
    SimpleWorker(get_settings().queues, connection=wiring.redis_conn()).work(burst=True)


def bench_size(n: int, client, meter: Meter) -> dict:
    from backend import enqueue, wiring
    from backend.annotations import textarea_result, parse_label_config

    st = wiring.store()
    project = client.create_project(f"scale-{n}-{uuid.uuid4().hex[:6]}", LABEL_CONFIG)["id"]
    t0 = time.perf_counter()
    client.import_tasks(project, prompts(n))
    import_s = time.perf_counter() - t0
    st.save_setup(project, LABEL_CONFIG, PARAMS)  # what /setup records (no server in this bench)
    t0 = time.perf_counter()
    enqueue.enqueue_refresh(project)
    run_jobs()
    first = {"s": round(time.perf_counter() - t0, 1), "rows_kept": sum(client.model_versions(project).values())}
    iface = parse_label_config(LABEL_CONFIG)
    passes = []
    for _ in range(PASSES):
        for _ in range(TRAIN_EVERY):
            task = client.next_task(project)
            client.create_annotation(task["id"], textarea_result(iface, "a reference answer"))
        before = meter.snapshot()
        t0 = time.perf_counter()
        enqueue.enqueue_train(project)
        run_jobs()
        elapsed = time.perf_counter() - t0
        after = meter.snapshot()
        state = st.queue(project)
        passes.append({"s": round(elapsed, 2), "kind": state["pass"], "redrafted": state["redrafted"],
                       "rows_written": (after[1] - before[1]) + (after[2] - before[2]),
                       "bytes_read": after[0] - before[0],
                       "rows_kept": sum(client.model_versions(project).values()),
                       "adapter": st.adapter(project)})
    return {"tasks": n, "import_s": round(import_s, 1), "first_queue": first, "passes": passes,
            "pass_s_median": statistics.median(p["s"] for p in passes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--label-studio", nargs=2, metavar=("URL", "TOKEN"))
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/7", help="FLUSHED before and after")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    import redis
    import torch
    torch.set_num_threads(a.threads)
    server = None
    if a.label_studio:
        url, token = a.label_studio
    else:
        from tests.e2e.labelstudio_server import start_label_studio
        server = start_label_studio(Path(tempfile.mkdtemp(prefix="bench-scale-ls-")))
        url, token = server.url, server.token
    from model.tiny import make_tiny_model
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    os.environ.update({"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token, "REDIS_URL": a.redis_url,
                       "MODEL_NAME_OR_PATH": str(make_tiny_model(tmp / "tiny")), "MODEL_DIR": str(tmp / "adapters"),
                       "DEVICE": "cpu", "SCORE_CHUNK_SIZE": "1024", "SCORE_BATCH_SIZE": "64",
                       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    from backend import wiring
    from backend.labelstudio import LabelStudioClient
    from backend.settings import get_settings
    get_settings.cache_clear()
    client = LabelStudioClient(url, token, timeout_s=300)
    meter = Meter(client)
    wiring.make_client = lambda: client
    conn = redis.Redis.from_url(a.redis_url)
    conn.flushdb()
    try:
        results = [bench_size(n, client, meter) for n in a.sizes]
    finally:
        conn.flushdb()
        if server is not None:
            server.stop()
    small, large = results[0], results[-1]
    checks = {
        f"pass time at {large['tasks']} <= 1.5 x at {small['tasks']}":
            large["pass_s_median"] <= 1.5 * small["pass_s_median"],
        "rows kept <= 1.2 x N": all(p["rows_kept"] <= 1.2 * r["tasks"] for r in results for p in r["passes"]),
        f"rows written per pass <= 2 x draft_ahead + 10 = {2 * DRAFT_AHEAD + 10}":
            all(p["rows_written"] <= 2 * DRAFT_AHEAD + 10 for r in results for p in r["passes"]),
    }
    out = {"params": PARAMS, "results": results, "checks": checks,
           "machine": f"{os.cpu_count()} CPUs, torch threads {a.threads}, load {os.getloadavg()[0]:.1f}"}
    print(json.dumps(out, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_scale.json").write_text(json.dumps(out, indent=2))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}", file=sys.stderr)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
