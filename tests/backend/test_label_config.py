"""The recommended label config and the /setup check that a project's config hides the draft."""
import pytest

from backend.annotations import parse_label_config
from backend.label_config import PROJECT_FIELDS, RECOMMENDED_LABEL_CONFIG, draft_warnings

PLAIN = '<View><Text name="prompt" value="$prompt"/><TextArea name="response" toName="prompt"{}/></View>'


def test_recommended_config_shows_the_draft_and_is_usable():
    assert draft_warnings(RECOMMENDED_LABEL_CONFIG) == []
    iface = parse_label_config(RECOMMENDED_LABEL_CONFIG)
    assert (iface.from_name, iface.to_name, iface.prompt_field) == ("response", "prompt", "prompt")


@pytest.mark.parametrize("attrs,expected", [
    ("", ["editable=\"true\" and transcription=\"true\"", "maxSubmissions"]),
    (' editable="true" maxSubmissions="1"', ['transcription="true"']),
    (' transcription="TRUE" editable="True"', ["maxSubmissions"]),
    (' editable="true" transcription="true" maxSubmissions="2"', ["maxSubmissions"]),
    (' editable="true" transcription="true" maxSubmissions="1"', []),
])
def test_draft_warnings_name_what_is_missing(attrs, expected):
    warnings = draft_warnings(PLAIN.format(attrs))
    assert len(warnings) == len(expected)
    for warning, fragment in zip(warnings, expected):
        assert fragment in warning and "'response'" in warning


def test_unusable_configs_are_left_to_the_parser():
    assert draft_warnings("<View") == [] and draft_warnings('<View><Text name="p" value="$p"/></View>') == []


def test_project_fields_show_instructions_and_refuse_empty_annotations():
    assert PROJECT_FIELDS["show_instruction"] is True and PROJECT_FIELDS["enable_empty_annotation"] is False
    for word in ("Submit", "Edit", "Rewrite", "Skip"):
        assert f"<b>{word}</b>" in PROJECT_FIELDS["expert_instruction"]
