"""What annotators see: the recommended label config, the project's instructions, and the check that
a project's config shows the model's draft as an editable box (one source for README, demo and tests).

Label Studio 1.23 shows a TextArea pre-annotation (the backend's draft) as a read-only region unless
the TextArea has BOTH ``editable="true"`` and ``transcription="true"``; with ``maxSubmissions="1"`` as
well, the annotator gets exactly one focused input box holding the draft, which they edit and submit.
Without ``maxSubmissions="1"`` an empty extra box sits above the draft, and text typed there is saved as
a second response beside the draft. ``rows="4"`` makes it a multi-line box (Enter adds a line; only
Submit saves) and ``showSubmitButton="false"`` hides the TextArea's own "Add" button.
Verified in headless Chromium by tests/browser/test_labeling_and_dashboard.py.

What Label Studio 1.23's own options cannot do: refuse an emptied draft. ``enable_empty_annotation:
false`` refuses only an annotation without any result, and ``required="true"`` only a TextArea without
any region; an edited-in-place draft is a region even when its text was deleted, so Submit saves
``{"text": [""]}`` either way (both tried in headless Chromium; the browser test checks the first). The backend never trains on empty
responses, and the instructions tell annotators to Skip instead.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

log = logging.getLogger(__name__)

RECOMMENDED_LABEL_CONFIG = """<View>
  <Header value="Task: $task"/>
  <Text name="prompt" value="$prompt"/>
  <TextArea name="response" toName="prompt" editable="true" transcription="true" maxSubmissions="1"
            rows="4" showSubmitButton="false" placeholder="Write the response"/>
</View>"""
"""Prompt in ``$prompt``, task name in ``$task`` (drop the Header when tasks have no such field)."""

INSTRUCTIONS = """<p>The box under the prompt holds the model's <b>draft</b> response. Make it the response
you would want the model to give, then press <b>Submit</b>:</p>
<ul>
  <li><b>Submit</b> as it is when the draft is already a good response.</li>
  <li><b>Edit</b>: click into the box, correct the text, then Submit.</li>
  <li><b>Rewrite</b>: select all the text in the box (Ctrl+A), type your own response, then Submit.</li>
  <li><b>Skip</b> a prompt you cannot answer, rather than submitting an empty box.</li>
</ul>
<p>Enter starts a new line inside the box; only the Submit button saves. An emptied box would still be
saved (as an empty response, which is never trained on): use Skip instead.</p>"""
"""HTML for Label Studio's ``expert_instruction`` (shown before the first task and under "Instructions")."""

PROJECT_FIELDS = {"expert_instruction": INSTRUCTIONS, "show_instruction": True,
                  "enable_empty_annotation": False, "show_skip_button": True}
"""Label Studio project fields for a project labeled with this backend (``create_project(**fields)``)."""


def draft_warnings(label_config: str) -> list[str]:
    """Why this config would not show the draft as one editable box (empty list = it does).

    Looks at the response TextArea (the first one, as ``annotations.parse_label_config`` does); an
    unparsable config gives no warning here (``parse_label_config`` rejects it with the reason).
    """
    try:
        root = ET.fromstring(label_config or "")
    except ET.ParseError:
        return []
    area = next((el for el in root.iter() if el.tag.lower() == "textarea"), None)
    if area is None:
        return []
    attrs = {k.lower(): v.strip().lower() for k, v in area.attrib.items()}
    name = area.get("name", "?")
    warnings = []
    missing = [a for a in ("editable", "transcription") if attrs.get(a.lower()) != "true"]
    if missing:
        lacking = " and ".join(f'{a}="true"' for a in missing)
        warnings.append(f"TextArea {name!r} lacks {lacking}: "
                        "Label Studio shows the model's draft as a read-only region that the annotator "
                        "must hover to edit or delete")
    if attrs.get("maxsubmissions") != "1":
        warnings.append(f"TextArea {name!r} lacks maxSubmissions=\"1\": an empty extra box sits above the "
                        "draft, and text typed there is saved as a second response beside the draft")
    return warnings


def record_draft_warnings(st, project: int, label_config: str) -> list[str]:
    """Log and store (for /metrics and the dashboard) why the project's config hides the draft."""
    warnings = draft_warnings(label_config)
    for w in warnings:
        log.warning("project %s: the label config hides the model's draft: %s", project, w)
    st.set_config_warnings(project, warnings)
    return warnings
