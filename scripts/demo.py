"""``make demo``: Redis, Label Studio, the backend and a worker on 127.0.0.1, and a demo project.

Starts what is not already running (Redis only if none answers on 127.0.0.1:6379), creates the demo
project once (found again by title on the next run), connects the backend, waits for the first
Weighted-Task-Diversity queue and prints the allocation. Ctrl-C stops everything this script
started, and only that. Pid files in ./var/run let the next run stop leftovers of a crashed one.

    .venv/bin/python scripts/demo.py            # 8 Natural Instructions subtasks x 25 prompts, SmolLM2
    .venv/bin/python scripts/demo.py --tiny     # offline: synthetic prompts and the tiny test model
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.labelstudio import LabelStudioClient  # noqa: E402
from model.budget import Budget  # noqa: E402
from scripts.local_labelstudio import (Supervisor, label_studio_argv, label_studio_bin,  # noqa: E402
                                      label_studio_env, port_open, supervised, wait_for_http, wait_until_ready)

VAR = ROOT / "var"
RUN = VAR / "run"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "wtd-demo-password"
ADMIN_TOKEN = "wtd-demo-legacy-token-0123456789"
LABEL_CONFIG = """<View>
  <Header value="Task: $task"/>
  <Text name="prompt" value="$prompt"/>
  <TextArea name="response" toName="prompt" rows="6" editable="true" maxSubmissions="1"
            placeholder="Write the response (the model's draft is pre-filled)"/>
</View>"""
# Eight Natural Instructions v1 subtasks of different kinds (question generation, wrong-answer
# generation, classification, extraction, answering) whose prompts stay under 1000 characters.
SUBTASKS = [
    "subtask003_mctaco_question_generation_event_duration",
    "subtask005_mctaco_wrong_answer_generation_event_duration",
    "subtask022_cosmosqa_passage_inappropriate_binary",
    "subtask033_winogrande_answer_generation",
    "subtask036_qasc_topic_word_to_generate_related_fact",
    "subtask039_qasc_find_overlapping_words",
    "subtask041_qasc_answer_generation",
    "subtask050_multirc_answerability",
]


# ---------------------------------------------------------------------------------- services
def need_free(port: int, what: str, flag: str) -> None:
    if port_open(port):
        sys.exit(f"error: 127.0.0.1:{port} is taken by another program; stop it or pass {flag} for {what}")


def ensure_redis(services: Supervisor, port: int) -> None:
    import redis
    try:
        redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).ping()
        services.say(f"  Redis already answers on 127.0.0.1:{port}: using it")
        return
    except redis.ConnectionError:
        pass
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("error: no Redis on 127.0.0.1:%d and no redis-server on PATH (apt install redis-server)" % port)
    data = RUN / "redis"
    data.mkdir(exist_ok=True)
    services.start("redis", [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(data)], dict(os.environ))
    for _ in range(50):
        try:
            redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).ping()
            return
        except redis.ConnectionError:
            time.sleep(0.2)
    sys.exit(f"error: redis-server did not start; see {RUN / 'redis.log'}")


def start_label_studio(services: Supervisor, port: int) -> str:
    binary = label_studio_bin()
    if not binary.exists():
        sys.exit(f"error: Label Studio is not installed at {binary}: run `make venv-ls`")
    data = VAR / "label-studio"
    data.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    proc = services.start("label-studio", label_studio_argv(binary, data, port),
                          label_studio_env(data, ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN), cwd=data)
    services.say("  waiting for Label Studio (the first start runs its migrations: about a minute)")
    try:
        wait_until_ready(url, ADMIN_TOKEN, proc, RUN / "label-studio.log", timeout_s=600)
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    return url


def backend_env(ls_url: str, redis_url: str, model_path: Path | None, backend_url: str) -> dict:
    unset = ("MODEL_NAME_OR_PATH", "BASIC_AUTH_USER", "BASIC_AUTH_PASS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update({"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": ADMIN_TOKEN, "REDIS_URL": redis_url,
                "MODEL_DIR": str(VAR / "adapters"), "PUBLIC_URL": backend_url,
                # Label Studio's webhook gets this header from the backend's connect job.
                "WEBHOOK_SECRET": secrets.token_urlsafe(24), "PYTHONPATH": str(ROOT)})
    if model_path is not None:
        env["MODEL_NAME_OR_PATH"] = str(model_path)
    return env


def wait_for_backend(url: str, proc) -> None:
    try:
        wait_for_http(f"{url}/health", proc, RUN / "backend.log", timeout_s=120, what="the backend")
    except RuntimeError as e:
        sys.exit(f"error: {e}")


# ---------------------------------------------------------------------------------- project
def demo_rows(say, tiny: bool, per_task: int) -> list[dict]:
    from model.evaluation.data import natural_instructions_rows, synthetic_rows
    if tiny:
        return synthetic_rows(pool_per_task=per_task, test_per_task=0)
    say("  reading Natural Instructions from the BIG-bench archive (downloaded once, 358 MB)")
    return natural_instructions_rows(SUBTASKS, pool_per_task=per_task, test_per_task=0,
                                     max_prompt_chars=1000, max_reference_words=30)


def ensure_project(say, client: LabelStudioClient, title: str, rows: list[dict]) -> int:
    found = client.find_project(title)
    if found:
        say(f"  reusing project {found['id']} {title!r} ({found.get('task_number', '?')} tasks)")
        return found["id"]
    project = client.create_project(title, LABEL_CONFIG, description="Weighted Task Diversity demo")["id"]
    n = client.import_tasks(project, [{"data": {"prompt": r["prompt"], "task": r["task"]}} for r in rows])
    say(f"  created project {project} {title!r} with {n} tasks")
    return project


def connect_backend(client: LabelStudioClient, project: int, backend_url: str, params: dict) -> None:
    """Connect once; on a rerun, re-send the settings (Label Studio then calls /setup again)."""
    mine = [b for b in client.ml_backends(project) if b["url"].rstrip("/") == backend_url]
    if mine:
        client.set_extra_params(mine[0]["id"], params)
    else:
        client.connect_ml_backend(project, backend_url, params, title="Weighted Task Diversity")


BUSY = {"queued", "started", "deferred", "scheduled"}


def wait_for_queue(client: LabelStudioClient, backend_url: str, project: int, services: Supervisor) -> dict:
    """Until no job of the project is pending and Label Studio serves the backend's latest queue;
    returns the project's ``/metrics`` entry then.

    A rerun with unchanged settings starts no job: the queue already written is the answer then.
    Shows scoring progress; stops on a failed job.
    """
    import httpx
    last = ""
    while True:
        if services.dead():
            sys.exit(f"error: {', '.join(services.dead())} stopped; see the logs in {RUN}")
        m = httpx.get(f"{backend_url}/metrics", timeout=10).json()["projects"].get(str(project), {})
        jobs = list(m.get("jobs", {}).values())
        failed = [j for j in jobs if j.get("status") == "failed"]
        if failed:
            sys.exit(f"error: job {failed[0]['id']} failed: {failed[0].get('error')}; see {RUN / 'worker.log'}")
        scoring = m.get("scoring", {})
        busy = any(j.get("status") in BUSY for j in jobs) or any(s in BUSY for s in scoring.get("by_status", {}))
        queue = m.get("queue")
        if not busy and queue and queue["model_version"] == client.project(project)["model_version"]:
            return m
        finished = scoring.get("by_status", {}).get("finished", 0)
        line = (f"  scoring: {finished}/{scoring.get('chunks', 0)} chunks done, "
                f"{scoring.get('done', 0)} prompts so far")
        if scoring.get("chunks") and line != last:
            services.say(line)
            last = line
        time.sleep(2)


def print_report(say, metrics: dict, task_of: dict) -> None:
    """The allocation table from the backend's ``/metrics`` (its public surface, not its Redis keys)."""
    from model.report import summary_table

    selection, queue = metrics["selection"], metrics["queue"]
    table = summary_table(selection["task_confidence"], selection["allocation"], selection["task_sizes"])
    width = max([len("task")] + [len(str(bar.task)) for bar in table])
    say(f"\n  {'task':<{width}}  prompts  mean conf.  allocated")
    for bar in table:
        conf = "-" if bar.confidence != bar.confidence else f"{bar.confidence:.3g}"  # NaN: no scores
        say(f"  {str(bar.task):<{width}}  {bar.size:>7}  {conf:>10}  {bar.allocated:>9}")
    head = [str(task_of.get(t, "?")) for t in queue.get("head", [])]
    say(f"  budget: {selection['budget']} prompts; least confident tasks first")
    say(f"  queue head (tasks of the first {len(head)} prompts): {', '.join(head)}\n")


def write_png(metrics: dict, out: Path) -> Path | None:
    try:
        from model.report import plot_table, summary_table
    except ImportError:
        return None
    s = metrics["selection"]
    table = summary_table(s["task_confidence"], s["allocation"], s["task_sizes"])
    return plot_table(table, out, budget=s["budget"], strategy="weighted_task_diversity")


# ---------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="offline: synthetic prompts and the tiny test model")
    p.add_argument("--per-task", type=int, default=25, help="prompts per task (default 25)")
    p.add_argument("--budget", type=_budget, default=Budget(0.3),
                   help="prompts to annotate: a count, or a fraction of the tasks (default 0.3, rounded up)")
    p.add_argument("--train-every", type=int, default=10, help="retrain after this many annotations")
    p.add_argument("--ls-port", type=int, default=8080)
    p.add_argument("--backend-port", type=int, default=9090)
    p.add_argument("--redis-port", type=int, default=6379)
    # Separate databases: a backend re-scores every project it knows when the model changes.
    p.add_argument("--redis-db", type=int, default=None, help="default 0, or 1 with --tiny")
    return p.parse_args(argv)


def _budget(text: str) -> Budget:
    try:
        return Budget.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv=None) -> int:
    a = parse_args(argv)
    services = Supervisor(RUN)
    # Stale processes of a crashed run first: they would hold the ports.
    services.stop_leftovers()
    with supervised(services):
        return run(a, services)
    return 0  # stopped by Ctrl-C, SIGTERM or SIGHUP, after the clean-up


def run(a, services: Supervisor) -> int:
    say = services.say
    say("data")
    rows = demo_rows(say, a.tiny, a.per_task)  # first: a data problem should not cost a Label Studio start
    say("services")
    need_free(a.ls_port, "Label Studio", "--ls-port")
    need_free(a.backend_port, "the backend", "--backend-port")
    ensure_redis(services, a.redis_port)
    db = a.redis_db if a.redis_db is not None else int(a.tiny)
    redis_url = f"redis://127.0.0.1:{a.redis_port}/{db}"
    ls_url = start_label_studio(services, a.ls_port)

    model_path = None
    if a.tiny:
        from model.tiny import make_tiny_model
        model_path = make_tiny_model(VAR / "models" / "tiny")
    backend_url = f"http://127.0.0.1:{a.backend_port}"
    env = backend_env(ls_url, redis_url, model_path, backend_url)
    backend = services.start("backend", [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1",
                                         "--port", str(a.backend_port)], env)
    services.start("worker", [sys.executable, "-m", "backend", "worker"], env)
    wait_for_backend(backend_url, backend)

    say("project")
    client = LabelStudioClient(ls_url, ADMIN_TOKEN)
    title = "WTD demo (tiny, synthetic)" if a.tiny else "WTD demo: Natural Instructions"
    project = ensure_project(say, client, title, rows)
    # The backend resolves the budget (a fraction rounds up); the report shows what it made of it.
    params = {"budget": a.budget.value, "task_field": "task", "min_per_task": 3, "train_every": a.train_every,
              "max_new_tokens": 16 if a.tiny else 32}
    connect_backend(client, project, backend_url, params)

    metrics = wait_for_queue(client, backend_url, project, services)
    task_of = {t["id"]: t["data"].get("task") for t in client.tasks(project)}
    print_report(say, metrics, task_of)
    png = write_png(metrics, VAR / "demo" / "allocation.png")
    queue = metrics["queue"]

    say(f"Label Studio   {ls_url}/projects/{project}/data   (Label All Tasks follows the queue)")
    say(f"login          {ADMIN_EMAIL} / {ADMIN_PASSWORD}   (API token {ADMIN_TOKEN})")
    say(f"queue          {queue['model_version']}: {queue['selected']} selected of {queue['tasks']} tasks")
    say(f"backend        {backend_url}/metrics")
    if png:
        say(f"allocation     {png.relative_to(ROOT)}")
    say("Ctrl-C stops everything this script started.")
    while not services.dead():
        time.sleep(2)
    sys.exit(f"error: {', '.join(services.dead())} stopped; see the logs in {RUN}")


if __name__ == "__main__":
    sys.exit(main())
