"""``GET /dashboard``: one server-rendered HTML page for admins, the same numbers as ``/metrics``.

No front-end build and no JavaScript: the page is plain HTML with inline SVG, and reloads itself every
``REFRESH_S`` seconds. Each project gets a section built from ``metrics.project_metrics``; a section
whose key is absent from the metrics says "not yet available", so the page renders on any backend.
Every number a test compares carries ``data-key`` (and ``data-task`` in per-task rows).

The metrics keys read here (``m`` = one project's metrics):
  m["label_config_warnings"]  list of strings (the /setup check, backend/label_config.py)
  m["selection"]              {"budget", "selected", "allocation": {task: n}, "task_confidence":
                              {task: float}, "task_sizes": {task: n}}
  m["progress"]               live counts per task label (Store.progress): {task: {"annotated", "allocated"}};
                              while empty, the queue's ``annotated`` (as of its last write) is shown
  m["queue"]                  {"model_version", "head": [task ids], "annotated", "tasks", ...}
  m["scoring"]                {"chunks", "by_status": {status: n}, "done", "total"}
  m["training_history"]       [{"version", "n_examples", "annotations", "loss", "steps", "duration_s",
                              "finished_at"}, ...] (Store.training_history, oldest first)
  m["quality"]                held-out quality per adapter version (backend/quality.py): {"status",
                              "versions": [{"version", "annotations", "heldout", "status", "overall":
                              {"base_nll", "adapter_nll", "n"}}, ...]}, drawn as a line chart (lower is better)
  m["jobs"]                   {kind: {"id", "status", "error"?}}: failed ones listed with their error line
Cost: one ``project_metrics`` call per project (O(jobs + training records) Redis reads).
"""
from __future__ import annotations

import html
import time

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from backend import wiring
from backend.metrics import project_metrics

REFRESH_S = 10
router = APIRouter()

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.4rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}h3{font-size:1rem}
table{border-collapse:collapse;margin:.3rem 0 1rem}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}.warn{background:#fff3cd;border:1px solid #e0b400;padding:.5rem}
.err{color:#a00}.muted{color:#777}.bar{fill:#4c78a8}.bar2{fill:#f58518}
"""


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard() -> HTMLResponse:
    st = wiring.store()
    sections = [project_section(p, project_metrics(st, p)) for p in st.projects()]
    body = "".join(sections) or "<p class=muted>No project has connected yet (Label Studio calls /setup).</p>"
    return HTMLResponse(page(body))


def page(body: str) -> str:
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (f"<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content={REFRESH_S}>"
            f"<title>WTD backend dashboard</title><style>{_CSS}</style></head><body>"
            f"<h1>Weighted Task Diversity backend</h1><p class=muted>{now}; reloads every {REFRESH_S} s; "
            f"the same numbers as <a href=metrics>/metrics</a>.</p>{body}</body></html>")


def _e(v) -> str:
    return html.escape(str(v))


def _num(key: str, value, task: str | None = None) -> str:
    """A number the browser test reads back: ``data-key`` (and ``data-task``) name it."""
    attrs = f' data-key="{_e(key)}"' + (f' data-task="{_e(task)}"' if task is not None else "")
    shown = "-" if value is None else (f"{value:.3g}" if isinstance(value, float) else value)
    return f"<span{attrs}>{_e(shown)}</span>"


def _missing(what: str) -> str:
    return f"<p class=muted>{_e(what)}: not yet available.</p>"


def project_section(project: int, m: dict) -> str:
    parts = [f'<section data-project="{project}"><h2>Project {project}</h2>',
             warnings_part(m.get("label_config_warnings")), progress_part(m), tasks_part(m),
             queue_part(m.get("queue")), scoring_part(m.get("scoring")), training_part(m),
             quality_part(m.get("quality")), failed_part(m.get("jobs"), m.get("scoring")), "</section>"]
    return "".join(parts)


def warnings_part(warnings: list[str] | None) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return (f"<div class=warn data-key=label_config_warnings><b>The label config hides the model's draft "
            f"from annotators.</b><ul>{items}</ul>Use the recommended config (README).</div>")


def _annotated(m: dict) -> tuple[int | None, str]:
    """Annotated prompts: live counts when the metrics carry them, else the queue's (as of its write)."""
    progress = m.get("progress")
    if progress:
        return sum(counts.get("annotated", 0) for counts in progress.values()), "live"
    queue = m.get("queue")
    return (queue.get("annotated"), "at the last queue write") if queue else (None, "")


def progress_part(m: dict) -> str:
    sel = m.get("selection")
    if not sel:
        return "<h3>Budget and progress</h3>" + _missing("selection (the first scoring pass has not finished)")
    annotated, source = _annotated(m)
    selected = sel.get("selected") or 0
    share = min(1.0, (annotated or 0) / selected) if selected else 0.0
    return ("<h3>Budget and progress</h3><table><tr><th class=l>budget</th><th class=l>selected</th>"
            f"<th class=l>annotated ({_e(source)})</th><th class=l>progress</th></tr><tr>"
            f"<td>{_num('budget', sel.get('budget'))}</td><td>{_num('selected', selected)}</td>"
            f"<td>{_num('annotated', annotated)}</td><td>{_bar(share, 200)} {share:.0%}</td></tr></table>")


def _bar(share: float, width: int, cls: str = "bar") -> str:
    w = max(0.0, min(1.0, share)) * width
    return (f'<svg width="{width}" height="12" role="img"><rect width="{width}" height="12" fill="#eee"/>'
            f'<rect class="{cls}" width="{w:.1f}" height="12"/></svg>')


def tasks_part(m: dict) -> str:
    sel = m.get("selection")
    if not sel:
        return ""
    sizes, alloc, conf = sel.get("task_sizes") or {}, sel.get("allocation") or {}, sel.get("task_confidence") or {}
    live = m.get("progress") or {}
    top = max([*sizes.values(), 1])
    rows = []
    # Least confident first: the order in which Weighted Task Diversity spends the budget.
    for task in sorted(sizes, key=lambda t: (conf.get(t) is None, conf.get(t) or 0.0, t)):
        done = (live.get(task) or {}).get("annotated")
        rows.append(f"<tr><td class=l>{_e(task)}</td><td>{_num('pool', sizes[task], task)}</td>"
                    f"<td>{_num('confidence', conf.get(task), task)}</td>"
                    f"<td>{_num('allocated', alloc.get(task, 0), task)}</td>"
                    f"<td>{_num('task_annotated', done, task)}</td>"
                    f"<td class=l>{_bar(alloc.get(task, 0) / top, 160)}<br>{_bar((done or 0) / top, 160, 'bar2')}</td></tr>")
    return ("<h3>Per task</h3><table><tr><th class=l>task</th><th>pool size</th><th>mean confidence</th>"
            "<th>allocated</th><th>annotated</th><th class=l>allocated (blue) / annotated (orange), "
            f"scaled to the largest pool</th></tr>{''.join(rows)}</table>"
            + ("" if live else "<p class=muted>Per-task annotated counts: not yet available.</p>"))


def queue_part(queue: dict | None) -> str:
    if not queue:
        return "<h3>Queue</h3>" + _missing("queue (none written yet)")
    head = ", ".join(f"#{_e(t)}" for t in queue.get("head") or []) or "empty"
    when = _clock(queue.get("written_at"))
    return (f"<h3>Queue</h3><p>version <code data-key=model_version>{_e(queue.get('model_version'))}</code>, "
            f"written {when}: {_num('predictions', queue.get('predictions'))} drafts for "
            f"{_num('tasks', queue.get('tasks'))} prompts, {_num('unscored', queue.get('unscored'))} unscored.<br>"
            f"Head (served next, in order): <span data-key=head>{head}</span></p>")


def _clock(epoch) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)) if isinstance(epoch, (int, float)) else "?"


def scoring_part(scoring: dict | None) -> str:
    if not scoring or not scoring.get("chunks"):
        return "<h3>Scoring</h3><p class=muted>No scoring pass recorded.</p>"
    total, done = scoring.get("total") or 0, scoring.get("done") or 0
    statuses = ", ".join(f"{_e(s)}: {n}" for s, n in sorted((scoring.get("by_status") or {}).items()))
    return (f"<h3>Scoring</h3><p>{_num('scored', done)} of {_num('to_score', total)} prompts "
            f"{_bar(done / total if total else 0.0, 200)}; {_e(scoring['chunks'])} chunks ({statuses})</p>")


def training_part(m: dict) -> str:
    history = m.get("training_history")
    if history is None:
        return "<h3>Training</h3>" + _missing("training history")
    pending = " A training is queued." if m.get("training_pending") else ""
    if not history:
        return f"<h3>Training</h3><p class=muted>No adapter trained yet.{pending}</p>"
    rows = "".join(
        f"<tr><td class=l>{_e(h.get('version'))}</td><td>{_num('examples', h.get('n_examples'), h.get('version'))}</td>"
        f"<td>{_e(h.get('annotations', '-'))}</td><td>{_num('loss', h.get('loss'), h.get('version'))}</td>"
        f"<td>{_e(h.get('steps', '-'))}</td><td>{_e(h.get('duration_s', '-'))}</td>"
        f"<td class=l>{_e(_clock(h.get('finished_at')))}</td></tr>" for h in history)
    return (f"<h3>Training</h3><p>Drafts come from adapter <code data-key=adapter>{_e(m.get('adapter') or 'base')}"
            f"</code>.{pending}</p><table><tr><th class=l>version</th><th>examples</th><th>annotations</th>"
            f"<th>loss</th><th>steps</th><th>seconds</th><th class=l>finished</th></tr>{rows}</table>")


def quality_part(quality: dict | None) -> str:
    if not isinstance(quality, dict):
        return "<h3>Held-out quality</h3>" + _missing("held-out quality per adapter version")
    versions = quality.get("versions") or []
    status = f"<p data-key=quality_status>{_e(quality.get('status', ''))}</p>"
    if not versions:
        return f"<h3>Held-out quality</h3>{status}"
    points = [(str(v.get("version")), (v.get("overall") or {}).get("base_nll"),
               (v.get("overall") or {}).get("adapter_nll")) for v in versions]
    rows = "".join(f"<tr><td class=l>{_e(v)}</td><td>{_e(r.get('annotations', '-'))}</td>"
                   f"<td>{_e(r.get('heldout', '-'))}</td><td>{_num('base_nll', b, v)}</td>"
                   f"<td>{_num('adapter_nll', a, v)}</td><td class=l>{_e(r.get('status', ''))}</td></tr>"
                   for (v, b, a), r in zip(points, versions))
    return (f"<h3>Held-out quality</h3>{status}{_line_chart(points)}<table><tr><th class=l>version</th>"
            "<th>annotations</th><th>held out</th><th>base NLL</th><th>adapter NLL</th><th class=l>status</th>"
            f"</tr>{rows}</table>")


def _line_chart(points: list[tuple[str, float | None, float | None]], w: int = 420, h: int = 160) -> str:
    """Base (orange) and adapter (blue) held-out NLL per version: the adapter line should fall."""
    values = [x for _, b, a in points for x in (b, a) if isinstance(x, (int, float))]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    step = (w - 60) / max(1, len(points) - 1)

    def xy(i, v):
        return 40 + i * step, 10 + (h - 40) * (1 - (v - lo) / span)

    def line(idx, color):
        pts = [xy(i, p[idx]) for i, p in enumerate(points) if isinstance(p[idx], (int, float))]
        dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in pts)
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}"/>{dots}'

    labels = "".join(f'<text x="{40 + i * step:.1f}" y="{h - 8}" font-size="10" text-anchor="middle">{_e(v)}</text>'
                     for i, (v, _, _) in enumerate(points))
    return (f'<svg width="{w}" height="{h}" role="img" aria-label="held-out NLL per version">'
            f'<text x="2" y="14" font-size="10">{hi:.3g}</text><text x="2" y="{h - 30}" font-size="10">{lo:.3g}</text>'
            f'{line(1, "#f58518")}{line(2, "#4c78a8")}{labels}</svg>'
            '<p class=muted>held-out NLL (lower is better): base model orange, adapter blue</p>')


def failed_part(jobs: dict | None, scoring: dict | None) -> str:
    failed = [(kind, j) for kind, j in (jobs or {}).items() if j.get("status") == "failed"]
    chunks = ((scoring or {}).get("by_status") or {}).get("failed", 0)
    if not failed and not chunks:
        return "<h3>Failed jobs</h3><p data-key=failed_jobs>none</p>"
    items = "".join(f"<li><code>{_e(j.get('id'))}</code> ({_e(kind)}): <span class=err>{_e(j.get('error', '?'))}</span></li>"
                    for kind, j in failed)
    if chunks:
        items += f"<li>{_e(chunks)} scoring chunks failed (their prompts stay unscored until reconcile)</li>"
    return f"<h3>Failed jobs</h3><ul data-key=failed_jobs>{items}</ul>"
