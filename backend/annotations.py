"""Label Studio results <-> text: where the prompt and the response live in a project.

The first ``<TextArea>`` of the label config is the response; the ``<Text>`` it points at (``toName``)
holds the prompt, whose ``value="$field"`` names the task data field.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


class LabelConfigError(ValueError):
    """A label config this backend cannot work with (message says why)."""


@dataclass(frozen=True)
class Interface:
    from_name: str
    """The TextArea's name: where the response goes."""
    to_name: str
    """The Text tag the TextArea points at."""
    prompt_field: str
    """The task data field the Text shows (its ``value="$field"``)."""


def parse_label_config(xml: str) -> Interface:
    try:
        root = ET.fromstring(xml or "")
    except ET.ParseError as e:
        raise LabelConfigError(f"label config is not valid XML: {e}") from None
    area = next((el for el in root.iter() if el.tag.lower() == "textarea"), None)
    if area is None or not area.get("name") or not area.get("toName"):
        raise LabelConfigError("label config needs a <TextArea name=... toName=...> for the response")
    to_name = area.get("toName").split(",")[0].strip()
    text = next((el for el in root.iter() if el.get("name") == to_name), None)
    if text is None:
        raise LabelConfigError(f"the TextArea's toName {to_name!r} matches no tag in the label config")
    value = text.get("value", "")
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"tag {to_name!r} needs value=\"$field\" naming the prompt's data field")
    return Interface(area.get("name"), to_name, value[1:])


def textarea_result(iface: Interface, text: str) -> list[dict]:
    """A pre-annotation (or annotation) result holding ``text`` in the response TextArea."""
    return [{"from_name": iface.from_name, "to_name": iface.to_name, "type": "textarea",
             "value": {"text": [text]}}]


def result_text(result: list[dict] | None, from_name: str) -> str | None:
    """The response text in an annotation result, None if absent or blank.

    The TextArea's lines are trimmed, blank ones dropped, and the rest joined: plain Enter submits a
    line in Label Studio, so a saved answer often ends in whitespace or an empty line that no model
    should learn to produce.
    """
    for item in result or []:
        if item.get("from_name") == from_name and item.get("type", "textarea") == "textarea":
            lines = (item.get("value") or {}).get("text") or []
            text = "\n".join(s for s in (str(line).strip() for line in lines) if s)
            return text or None
    return None


def latest_annotation(task: dict) -> dict | None:
    """The most recently saved non-cancelled annotation of a task."""
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(kept, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0),
               default=None)


def is_annotated(task: dict) -> bool:
    return latest_annotation(task) is not None


def annotation_signature(annotation: dict) -> str:
    """Identifies one saved state of an annotation: a new or edited annotation has a new signature."""
    return f"{annotation.get('id')}@{annotation.get('updated_at') or annotation.get('created_at') or ''}"


def sft_examples(tasks: list[dict], iface: Interface, prompt_field: str) -> list[tuple[dict, dict, str, str]]:
    """(task, annotation, prompt, response) of every task whose latest non-cancelled annotation has a
    non-blank (trimmed) response and whose prompt is a non-blank string: what training and export use."""
    out = []
    for task in tasks:
        ann = latest_annotation(task)
        prompt = (task.get("data") or {}).get(prompt_field)
        text = result_text(ann.get("result"), iface.from_name) if ann else None
        if isinstance(prompt, str) and prompt.strip() and text:
            out.append((task, ann, prompt, text))
    return out


def sft_pairs(tasks: list[dict], iface: Interface, prompt_field: str) -> list[tuple[str, str]]:
    """(prompt, response) training pairs: the latest non-cancelled annotation of each task, trimmed;
    a blank response is never a pair."""
    return [(prompt, text) for _, _, prompt, text in sft_examples(tasks, iface, prompt_field)]
