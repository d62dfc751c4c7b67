"""``python -m backend serve|worker|settings``.

serve     the FastAPI server under uvicorn (binds 127.0.0.1 unless told otherwise)
worker    an RQ worker on the backend's queues; it runs jobs in-process so the model loads once
settings  show a project's settings and state; change them through Label Studio (the source of truth),
          or roll the drafts back to a stored adapter version, then re-plan the queue
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from backend.settings import get_settings

EXIT_BAD_INPUT = 2


def _budget(value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9090)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("worker", help="run an RQ worker on the backend's queues")
    s.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    s.add_argument("--queue", action="append", help="only these queues (default: all the backend's)")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("settings", help="show or change a project's settings (through Label Studio)")
    s.add_argument("--project", type=int, required=True)
    s.add_argument("--budget", type=_budget, help="prompts to annotate, or a fraction 0 < f <= 1 of the tasks")
    s.add_argument("--min-per-task", type=int)
    s.add_argument("--strategy")
    s.add_argument("--metric")
    s.add_argument("--train-every", type=int)
    s.add_argument("--rounds", type=int)
    s.add_argument("--adapter", help="roll the drafts back to this stored adapter version")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_settings)
    return p


def cmd_serve(a) -> int:
    import uvicorn
    uvicorn.run("backend.server:app", host=a.host, port=a.port, log_level="info")
    return 0


def cmd_worker(a) -> int:
    from rq import SimpleWorker

    from backend import wiring
    from backend.enqueue import schedule_reconcile
    s = get_settings()
    conn = wiring.redis_conn()
    schedule_reconcile()
    # SimpleWorker runs jobs in this process (no fork per job): the model stays loaded between jobs.
    worker = SimpleWorker(a.queue or s.queues, connection=conn)
    worker.work(burst=a.burst, with_scheduler=True)
    return 0


CHANGEABLE = ("budget", "min_per_task", "strategy", "metric", "train_every", "rounds")


def cmd_settings(a) -> int:
    from backend import wiring
    from backend.enqueue import enqueue_refresh
    from backend.project import our_backend
    from backend.project_config import ProjectConfigError, extra_params_dict, parse_extra_params

    client, st = wiring.make_client(), wiring.store()
    backend = our_backend(client.ml_backends(a.project), get_settings())
    if backend is None:
        return _fail(f"project {a.project}: no ML backend of this service is connected")
    changes = {k: getattr(a, k) for k in CHANGEABLE if getattr(a, k) is not None}
    try:
        params = {**extra_params_dict(backend.get("extra_params")), **changes}
        parse_extra_params(params)
    except ProjectConfigError as e:
        return _fail(str(e))
    if a.adapter is not None and a.adapter not in wiring.adapter_store().versions(str(a.project)):
        return _fail(f"--adapter: project {a.project} has no stored adapter version {a.adapter!r}")
    if changes:
        client.set_extra_params(backend["id"], params)
        st.save_setup(a.project, client.project(a.project).get("label_config", ""), params)
    if a.adapter is not None:
        st.set_adapter(a.project, a.adapter)
    if changes or a.adapter is not None:
        enqueue_refresh(a.project)
    state = project_state(client, st, a.project)
    print(json.dumps(state, indent=2, default=str) if a.json else _human(state))
    return 0


def project_state(client, st, project: int) -> dict:
    from backend.project import load_project

    proj = load_project(client, st, project)
    unlabeled = proj.unlabeled
    positions = st.positions(project, [t["id"] for t in unlabeled])
    return {"project": project, "settings": proj.config.model_dump(),
            "budget": proj.config.budget_for(len(proj.usable)), "tasks": len(proj.tasks),
            "annotated": len(proj.usable) - len(unlabeled),
            "queue_head": sorted(positions, key=positions.get)[:10],
            "model_version": (st.queue(project) or {}).get("model_version"),
            "adapter": st.adapter(project), "last_training": st.last_training(project),
            "refresh_pending": st.is_pending(project, "refresh"), "training_pending": st.is_pending(project, "train"),
            "progress": st.progress(project)}


def _human(state: dict) -> str:
    lines = [f"project {state['project']}"]
    lines += [f"  {k}: {v}" for k, v in state["settings"].items()]
    lines += [f"{k}: {v}" for k, v in state.items() if k not in ("project", "settings")]
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return a.func(a)
    except Exception as e:  # Label Studio or Redis unreachable: one line, not a traceback
        from redis.exceptions import ConnectionError as RedisDown
        if type(e).__name__ != "LabelStudioError" and not isinstance(e, RedisDown):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
