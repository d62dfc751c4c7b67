"""The project's tasks as the jobs see them, kept in Redis and brought up to date by difference.

Label Studio stays the source of truth; the index only saves re-reading it whole. A sync reads:
the tasks added since the last one (imports only add higher ids: ``id > max known id``), every task
id only when Label Studio's task count disagrees with the index (tasks were deleted), and the
annotations of the annotated tasks. So a pass reads O(new tasks + A) from Label Studio, never O(N)
task data and never a prediction.
"""
from __future__ import annotations

import logging

from backend.annotations import is_annotated
from backend.store import Store

log = logging.getLogger(__name__)


def sync_index(client, st: Store, project: int, task_number: int | None) -> dict:
    """Bring the index up to date with Label Studio; returns what changed. O(new + A) reads,
    O(N) ids only after a deletion."""
    known = st.task_ids(project)
    new = client.task_index(project, after_id=max(known, default=0))
    st.put_tasks(project, {t["id"]: t["data"] for t in new})
    known |= {t["id"] for t in new}
    dropped = 0
    if task_number is not None and task_number != len(known):
        ids = set(client.task_ids(project))
        gone = known - ids
        st.drop_tasks(project, gone)
        dropped = len(gone)
        if ids - known:  # an id below the known maximum (should not happen): read it in full
            log.warning("project %s: %d tasks below the newest known id; re-reading the index", project,
                        len(ids - known))
            st.put_tasks(project, {t["id"]: t["data"] for t in client.task_index(project) if t["id"] in ids - known})
    annotated = {t["id"]: t["annotations"] for t in client.annotated_tasks(project)}
    st.replace_annotations(project, annotated)
    st.replace_annotated(project, [t for t, anns in annotated.items() if is_annotated({"annotations": anns})])
    return {"new": len(new), "dropped": dropped, "annotated": len(annotated)}


def indexed_tasks(st: Store, project: int) -> list[dict]:
    """``{"id", "data", "annotations"}`` of every indexed task, in id order (annotations [] if none)."""
    data, annotations = st.task_data(project), st.annotations(project)
    return [{"id": t, "data": data[t], "annotations": annotations.get(t, [])} for t in sorted(data)]
