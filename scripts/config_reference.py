"""Print the configuration reference (env settings + extra_params) as Markdown tables.

The README embeds this output between markers; tests/test_docs.py fails when they drift apart.
Usage: python scripts/config_reference.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _default(field) -> str:
    d = field.default
    if d is None:
        return "unset"
    if hasattr(d, "get_secret_value"):
        return "unset" if not d.get_secret_value() else "(secret)"
    return f"`{d}`"


def _rows(fields, name, read_by=None) -> list[str]:
    out = []
    for key, f in fields.items():
        desc = " ".join((f.description or "").split())
        who = f" {read_by.get(key, '?')} |" if read_by is not None else ""
        out.append(f"| `{name(key)}` |{who} {_default(f)} | {desc.replace('|', '/')} |")
    return out


def render() -> str:
    from backend.project_config import ProjectConfig
    from backend.settings import READ_BY, Settings
    lines = ["Environment variables (`backend/settings.py`); *read by* names the process that reads each one "
             "(`python -m backend serve` = server, `python -m backend worker` = worker): set it there.", "",
             "| variable | read by | default | meaning |", "|---|---|---|---|"]
    lines += _rows(Settings.model_fields, str.upper, READ_BY)
    lines.append("| `MODEL_CACHE_DIR` | both | `~/.cache/wtd-backend` | Where the default model is converted to (once) "
                 "and evaluation data is cached (`model/config.py`). |")
    lines += ["", "Per-project `extra_params` keys, set by admins on the ML backend connection "
              "(`backend/project_config.py`):", "", "| key | default | meaning |", "|---|---|---|"]
    lines += _rows(ProjectConfig.model_fields, str)
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
