"""What a team paid for, in forms other tools read: the annotated set as chat-format SFT data (JSONL) and
the current adapter as a peft folder (``python -m backend export``).

One row per task whose latest non-cancelled annotation has a non-blank answer (trimmed, exactly the pairs
the training job sees, held-out ones included and flagged)::

    {"messages": [{"role": "user", "content": <prompt>}, {"role": "assistant", "content": <response>}],
     "task_label": "summarize", "task_id": 12, "annotation_id": 345, "annotator": 2, "heldout": false}

``annotator`` is Label Studio's user id (``completed_by``). O(N + A) for N tasks and A annotations.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from backend.annotations import is_annotated, sft_examples
from backend.project import Project
from backend.quality import is_heldout, task_label
from model.adapters import META
from model.io import write_jsonl


def sft_rows(proj: Project) -> list[dict]:
    """The export rows of a project, by task id."""
    rows = []
    for task, ann, prompt, response in sft_examples(proj.tasks, proj.iface, proj.prompt_field):
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                     "task_label": task_label(task, proj.config.task_field), "task_id": task["id"],
                     "annotation_id": ann.get("id"), "annotator": annotator(ann),
                     "heldout": is_heldout(task["id"], proj.config.holdout)})
    return sorted(rows, key=lambda r: r["task_id"])


def annotator(ann: dict):
    """The user id of an annotation's author; Label Studio sends an id, or a user object when expanded."""
    who = ann.get("completed_by")
    return who.get("id") if isinstance(who, dict) else who


def write_sft(proj: Project, output) -> dict:
    """Write the rows atomically (a reader never sees half a file); returns counts for the summary
    (``left_out``: annotated tasks without a usable pair, a blank answer or no prompt)."""
    rows = sft_rows(proj)
    write_jsonl(output, rows)
    return {"rows": len(rows), "heldout": sum(r["heldout"] for r in rows),
            "left_out": sum(is_annotated(t) for t in proj.tasks) - len(rows)}


def adapter_dest_problem(dest) -> str | None:
    """Why ``dest`` cannot take an exported adapter (None if it can): an earlier export or an empty
    folder is replaced, anything else is not overwritten."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        return f"--adapter {dest}: exists and is not a folder"
    if dest.is_dir() and any(dest.iterdir()) and not (dest / "adapter_config.json").exists():
        return f"--adapter {dest}: a folder that is not an exported adapter; not overwriting it"
    return None


def write_adapter(adapter_dir: Path, dest, extra_meta: dict) -> Path:
    """Copy a stored adapter folder to ``dest``, its ``meta.json`` completed with ``extra_meta``.

    The copy is made beside ``dest`` and renamed into place; an earlier export at ``dest`` is replaced
    only once the new one is complete. ``dest`` loads with ``PeftModel.from_pretrained(base, dest)``.
    """
    dest = Path(dest)
    if problem := adapter_dest_problem(dest):
        raise ValueError(problem)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    old = None
    try:
        shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
        meta = json.loads((tmp / META).read_text(encoding="utf-8")) if (tmp / META).exists() else {}
        (tmp / META).write_text(json.dumps({**meta, **extra_meta}, indent=2, default=str), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes 0700; the export is for others to read
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.rename(dest, old / "adapter")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.rename(old / "adapter", dest)  # put the earlier export back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dest
