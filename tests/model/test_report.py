"""The admin chart: the numbers behind the bars, a real PNG written atomically, clear input errors."""
from __future__ import annotations

import math

import pytest

from model.io import InputError
from model.report import allocation_table, plot_allocation


def scores(per_task: dict, metric="sequence_prob"):
    return [{"id": f"{task}-{i}", "task": task, metric: v} for task, vs in per_task.items() for i, v in enumerate(vs)]


def queue(counts: dict):
    rows = [{"id": f"{task}-{i}", "task": task} for task, n in counts.items() for i in range(n)]
    return [{**row, "rank": rank} for rank, row in enumerate(rows)]


SCORES = scores({"easy": [0.9, 0.7], "hard": [0.1, 0.2, 0.3], "mid": [0.5]})


def test_table_is_least_confident_first_with_counts():
    table = allocation_table(SCORES, queue({"hard": 3, "easy": 1}))
    assert [bar.task for bar in table] == ["hard", "mid", "easy"]
    assert [bar.confidence for bar in table] == pytest.approx([0.2, 0.5, 0.8])
    assert [(bar.allocated, bar.size) for bar in table] == [(3, 3), (0, 1), (1, 2)]


def test_entropy_is_turned_into_confidence():
    rows = scores({"sure": [0.1], "unsure": [3.0]}, metric="mean_entropy")
    table = allocation_table(rows, queue({"unsure": 1}), metric="mean_entropy")
    assert [bar.task for bar in table] == ["unsure", "sure"]  # high entropy = least confident
    assert table[0].confidence == pytest.approx(math.exp(-3.0))


def test_writes_a_png(tmp_path):
    out = plot_allocation(SCORES, queue({"hard": 3, "easy": 1}), tmp_path / "sub" / "chart.png",
                          budget=4, strategy="weighted_task_diversity")
    assert out == tmp_path / "sub" / "chart.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert [p.name for p in out.parent.iterdir()] == ["chart.png"]  # no temp file left behind


def test_many_long_task_names(tmp_path):
    per_task = {f"a rather long task name number {t} about summarising documents": [t / 30] for t in range(1, 25)}
    out = plot_allocation(scores(per_task), queue({t: 1 for t in per_task}), tmp_path / "many.png")
    assert out.stat().st_size > 5000


def test_queue_task_missing_from_scores_is_an_input_error(tmp_path):
    out = tmp_path / "chart.png"
    with pytest.raises(InputError, match=r"queue: row 2: field 'task': task 'ghost' does not appear in the scores"):
        plot_allocation(SCORES, [{"id": 1, "task": "hard"}, {"id": 2, "task": "ghost"}], out)
    assert not out.exists()


@pytest.mark.parametrize("bad, match", [
    ({"id": "x", "task": "hard"}, r"scores: row 7: field 'sequence_prob': missing"),
    ({"id": "x", "task": "hard", "sequence_prob": "high"}, r"row 7: field 'sequence_prob': not a finite number"),
    ({"id": "x", "sequence_prob": 0.5}, r"row 7: field 'task': missing"),
])
def test_bad_score_rows_are_input_errors(tmp_path, bad, match):
    with pytest.raises(InputError, match=match):
        plot_allocation(SCORES + [bad], [], tmp_path / "chart.png")


def test_unknown_metric(tmp_path):
    with pytest.raises(ValueError, match="unknown metric 'loss'"):
        plot_allocation(SCORES, [], tmp_path / "chart.png", metric="loss")
