import pytest

from backend.annotations import (Interface, LabelConfigError, annotation_signature, latest_annotation,
                                 parse_label_config, result_text, sft_pairs, textarea_result)
from tests.backend.fakes import LABEL_CONFIG


def test_interface_from_label_config():
    assert parse_label_config(LABEL_CONFIG) == Interface("response", "prompt", "prompt")
    xml = '<View><Header value="x"/><Text name="q" value="$question"/><TextArea name="a" toName="q"/></View>'
    assert parse_label_config(xml) == Interface("a", "q", "question")


@pytest.mark.parametrize("xml", ["", "<View>", '<View><Text name="p" value="$p"/></View>',
                                 '<View><TextArea name="a" toName="missing"/></View>',
                                 '<View><Text name="p" value="literal"/><TextArea name="a" toName="p"/></View>'])
def test_unusable_label_configs(xml):
    with pytest.raises(LabelConfigError):
        parse_label_config(xml)


def test_result_round_trip():
    iface = parse_label_config(LABEL_CONFIG)
    result = textarea_result(iface, "hello")
    assert result == [{"from_name": "response", "to_name": "prompt", "type": "textarea",
                       "value": {"text": ["hello"]}}]
    assert result_text(result, "response") == "hello"
    assert result_text(result, "other") is None
    assert result_text([{"from_name": "response", "type": "textarea", "value": {"text": ["a", "b"]}}],
                       "response") == "a\nb"


def _ann(i, text, updated, cancelled=False):
    return {"id": i, "was_cancelled": cancelled, "updated_at": updated,
            "result": [{"from_name": "response", "type": "textarea", "value": {"text": [text]}}]}


def test_latest_non_cancelled_annotation_makes_the_pair():
    iface = parse_label_config(LABEL_CONFIG)
    tasks = [{"id": 1, "data": {"prompt": "p1"}, "annotations": [
                _ann(1, "old", "2026-01-01"), _ann(2, "new", "2026-01-02"), _ann(3, "skip", "2026-01-03", True)]},
             {"id": 2, "data": {"prompt": "p2"}, "annotations": [_ann(4, "x", "2026-01-01", True)]},
             {"id": 3, "data": {"prompt": "p3"}, "annotations": []},
             {"id": 4, "data": {}, "annotations": [_ann(5, "no prompt", "2026-01-01")]}]
    assert sft_pairs(tasks, iface, "prompt") == [("p1", "new")]
    assert latest_annotation(tasks[1]) is None
    assert annotation_signature(latest_annotation(tasks[0])) == "2@2026-01-02"


def test_responses_are_trimmed_and_blank_ones_are_not_pairs():
    iface = parse_label_config(LABEL_CONFIG)
    lines = {"from_name": "response", "type": "textarea", "value": {"text": ["  5 centuries\n", "", " \t"]}}
    assert result_text([lines], "response") == "5 centuries"
    code = {"from_name": "response", "type": "textarea", "value": {"text": ["def f():\n    return 1\n\n", "ok "]}}
    assert result_text([code], "response") == "def f():\n    return 1\nok"  # inner indentation is kept
    tasks = [{"id": 1, "data": {"prompt": "p1"}, "annotations": [_ann(1, "5 centuries\n", "2026-01-01")]},
             {"id": 2, "data": {"prompt": "p2"}, "annotations": [_ann(2, " \n\n ", "2026-01-01")]},
             {"id": 3, "data": {"prompt": "p3"}, "annotations": [_ann(3, "kept", "2026-01-01"),
                                                                  _ann(4, "\n", "2026-01-02")]}]
    # the blank latest answer of task 3 replaces the earlier one: task 3 is not trained on
    assert sft_pairs(tasks, iface, "prompt") == [("p1", "5 centuries")]
