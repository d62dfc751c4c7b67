"""``python -m backend serve|worker|settings|export``.

serve     the FastAPI server under uvicorn (binds 127.0.0.1 unless told otherwise)
worker    an RQ worker on the backend's queues; it runs jobs in-process so the model loads once
settings  show a project's settings and state; change them through Label Studio (the source of truth),
          or roll the drafts back to a stored adapter version, then re-plan the queue
export    write the annotated pairs as chat-format SFT data (JSONL), and the current adapter
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from backend.settings import get_settings

EXIT_BAD_INPUT = 2


def _budget(value: str) -> int | float:
    """The number as the project's ``budget`` setting stores it; ``ProjectConfig`` (``model.budget``)
    checks its range, so a bad value is reported like a bad ``extra_params`` setting."""
    from model.budget import number
    try:
        return number(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    s.add_argument("--budget", type=_budget,
                   help="prompts to annotate (an int >= 1), or a fraction 0 < f <= 1 of the tasks (rounded up)")
    s.add_argument("--min-per-task", type=int)
    s.add_argument("--strategy")
    s.add_argument("--metric")
    s.add_argument("--train-every", type=int)
    s.add_argument("--rounds", type=int)
    s.add_argument("--adapter", help="roll the drafts back to this stored adapter version")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_settings)

    s = sub.add_parser("export", help="write the annotated pairs as SFT data (and the current adapter)")
    s.add_argument("--project", type=int, required=True)
    s.add_argument("--output", required=True, help="the JSONL file to write (replaced atomically)")
    s.add_argument("--adapter", metavar="DIR", help="also write the current adapter (a peft folder) here")
    s.set_defaults(func=cmd_export)
    return p


def cmd_serve(a) -> int:
    import uvicorn

    from backend.access_log import log_config
    uvicorn.run("backend.server:app", host=a.host, port=a.port, log_level="info", log_config=log_config())
    return 0


def cmd_worker(a) -> int:
    from backend import wiring
    from backend.worker import BackendWorker
    s = get_settings()
    # Jobs run in this process (no fork per job): the model stays loaded between jobs. Its heartbeat
    # thread also runs the scheduler (the reconcile pass) and fails the jobs of dead workers.
    worker = BackendWorker(a.queue or s.queues, connection=wiring.redis_conn(), heartbeat_s=s.worker_heartbeat_s)
    worker.work(burst=a.burst)
    return 0


CHANGEABLE = ("budget", "min_per_task", "strategy", "metric", "train_every", "rounds")


def cmd_settings(a) -> int:
    from backend import adapter_sync, wiring
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
    if a.adapter is not None and not adapter_sync.available(a.project, a.adapter):
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
    from backend.quality import report as quality_report

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
            "quality": quality_report(st, project),
            "progress": st.progress(project)}


def _human(state: dict) -> str:
    lines = [f"project {state['project']}"]
    lines += [f"  {k}: {v}" for k, v in state["settings"].items()]
    lines += [f"{k}: {v}" for k, v in state.items() if k not in ("project", "settings", "quality")]
    return "\n".join(lines + _quality_lines(state.get("quality")))


def _quality_lines(report: dict | None) -> list[str]:
    from backend.quality import describe

    if report is None:
        return []
    return [f"quality: {report['status']}"] + [f"  {describe(r)}" for r in report["versions"]]


def cmd_export(a) -> int:
    from backend import adapter_sync, wiring
    from backend.annotations import LabelConfigError
    from backend.export import adapter_dest_problem, write_adapter, write_sft
    from backend.labelstudio import LabelStudioError
    from backend.project import load_project
    from backend.project_config import ProjectConfigError
    from backend.quality import report as quality_report

    if a.adapter is not None and (problem := adapter_dest_problem(a.adapter)):
        return _fail(problem)
    st, client = wiring.store(), None
    try:
        client = wiring.make_client()
        proj = load_project(client, st, a.project)
    except LabelStudioError as e:
        if e.status == 404:
            return _fail(f"project {a.project}: not found in Label Studio (GET {e.path}: HTTP 404)")
        unreachable = e.path and e.status is None  # a call that never got an HTTP answer
        where = getattr(client, "url", None) or get_settings().label_studio_url
        return _fail((f"cannot reach Label Studio at {where}: " if unreachable else "") + str(e).splitlines()[0])
    except (LabelConfigError, ProjectConfigError) as e:
        return _fail(f"project {a.project}: {e}")
    version = proj.draft_adapter
    if a.adapter is not None and version is None:
        return _fail(f"--adapter: project {a.project} has no trained adapter yet")
    counts = write_sft(proj, a.output)
    left_out = f"; {counts['left_out']} annotated tasks left out (blank answer or no prompt)"
    print(f"wrote {counts['rows']} rows ({counts['heldout']} held out) to {a.output}"
          + (left_out if counts["left_out"] else ""))
    if a.adapter is not None:
        quality = next((r for r in quality_report(st, a.project)["versions"] if r["version"] == version), None)
        try:  # this host's copy, fetched from Redis when it trained elsewhere
            folder = adapter_sync.ensure_local(a.project, version)
        except adapter_sync.AdapterUnavailable as e:
            return _fail(str(e))
        write_adapter(folder, a.adapter, {"project": a.project, "version": version, "heldout_quality": quality})
        print(f"wrote adapter {version} of project {a.project} to {a.adapter}")
    return 0


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
        # export: a bad project id (404) or an unreachable Label Studio is bad input to this command
        return EXIT_BAD_INPUT if a.command == "export" and not isinstance(e, RedisDown) else 1
