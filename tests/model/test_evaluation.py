"""The evaluation harness: metrics on hand-checked strings, data validation, planning, and the smoke
config end to end (tiny model, synthetic tasks, every strategy) including resuming."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.cli import main as cli_main
from model.evaluation import data, metrics
from model.evaluation.configs import smoke
from model.budget import Budget
from model.evaluation.harness import BASE, FULL, plan_runs
from model.io import InputError

# ------------------------------------------------------------------------------------------- metrics


def test_rouge_l_on_hand_checked_strings():
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides: P = R = F = 5/6
    assert metrics.rouge_l("the cat sat on the mat", "The cat is on the mat") == pytest.approx(5 / 6)
    # LCS "a c" = 2: P = 2/4, R = 2/2, F = 2PR/(P+R) = 2/3
    assert metrics.rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert metrics.rouge_l("x y", "a b") == 0.0
    assert metrics.rouge_l("", "a") == 0.0
    assert metrics.rouge_l("", "") == 1.0
    assert metrics.best_rouge_l("a c", ["x", "a b c"]) == pytest.approx(0.8)  # P = 1, R = 2/3


def test_lcs_length():
    assert metrics.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert metrics.lcs_length([], list("abc")) == 0


def test_exact_match_normalises_case_punctuation_and_spaces():
    assert metrics.exact_match("Yes.", ["yes"]) == 1.0
    assert metrics.exact_match("  The   answer! ", ["the answer"]) == 1.0
    assert metrics.exact_match("no", ["yes", "No."]) == 1.0  # any alternative counts
    assert metrics.exact_match("yes it is", ["yes"]) == 0.0


def test_macro_average_weighs_tasks_not_rows():
    per_task = metrics.per_task_means(["a", "a", "a", "a", "b"], [1.0, 0.0, 0.0, 0.0, 1.0])
    assert per_task == {"a": 0.25, "b": 1.0}
    assert metrics.macro_average(per_task) == pytest.approx(0.625)  # the row mean would be 0.4


def test_evaluate_outputs_per_task_and_macro():
    result = metrics.evaluate_outputs(
        tasks=["a", "a", "b"], predictions=["Yes", "no", "red car"],
        references=[["yes"], ["yes"], ["a red car"]],
        reference_logprobs=[np.log([0.5, 0.5]), np.log([0.25]), np.log([1.0, 0.5])])
    assert result["per_task"]["exact_match"] == {"a": 0.5, "b": 0.0}
    assert result["per_task"]["nll"]["a"] == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert result["per_task"]["nll"]["b"] == pytest.approx(math.log(2) / 2)
    assert result["macro"]["rouge_l"] == pytest.approx((0.5 + 0.8) / 2)


# ---------------------------------------------------------------------------------------- data, plan


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _custom_rows():
    rows = []
    for task, answer in (("greet", "hello"), ("agree", "yes")):
        for k in range(5):
            rows.append({"id": f"{task}{k}", "task": task, "prompt": f"{task} please {k}", "reference": answer,
                         "split": "pool" if k < 3 else "test"})
    return rows


def test_read_rows_names_bad_row_and_field(tmp_path):
    rows = _custom_rows()
    rows[2] = {k: v for k, v in rows[2].items() if k != "reference"}
    _write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError, match=r"row 3: field 'reference': missing"):
        data.read_rows(tmp_path / "bad.jsonl")
    rows = _custom_rows()
    rows[4]["split"] = "train"
    _write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError, match=r"row 5: field 'split'"):
        data.read_rows(tmp_path / "bad.jsonl")


def test_read_rows_needs_test_rows_for_every_task(tmp_path):
    rows = [r for r in _custom_rows() if not (r["task"] == "agree" and r["split"] == "test")]
    _write_rows(tmp_path / "rows.jsonl", rows)
    with pytest.raises(InputError, match="'agree' has no 'test' rows"):
        data.read_rows(tmp_path / "rows.jsonl")


def test_synthetic_rows_split_and_answers():
    rows = data.synthetic_rows(pool_per_task=5, test_per_task=2)
    pool, test = data.split_rows(rows)
    assert len(pool) == 20 and len(test) == 8
    by_task = {r["task"]: r for r in rows}
    word = by_task["reverse"]["prompt"].split("Word: ")[1]
    assert by_task["reverse"]["reference"] == word[::-1]
    assert len({r["id"] for r in rows}) == len(rows)


def test_ni_rows_filter_long_examples_and_keep_alternatives():
    task = {"task_prefix": "Definition: long text. Prompt: Answer it.",
            "examples": [{"input": f"q{k}", "target": [f"a{k}", "alt"]} for k in range(6)]
                        + [{"input": "x" * 500, "target": ["a"]}, {"input": "q", "target": ["one two three"]}]}
    rows = data.ni_rows_from_task("t", task, 3, 2, max_prompt_chars=100, max_reference_words=2, seed=0,
                                  definition="instruction")
    assert len(rows) == 5 and [r["split"] for r in rows].count("test") == 2
    assert all(r["prompt"].startswith("Answer it.\n\nq") for r in rows)
    assert all(r["alternatives"] == [r["reference"], "alt"] for r in rows)
    with pytest.raises(ValueError, match="only 6 examples fit"):
        data.ni_rows_from_task("t", task, 5, 2, 100, 2, 0)


def test_budgets_and_plan():
    assert [Budget.parse(b).resolve(80) for b in (0.05, 0.1, 0.2, 0.5, 1.0, 200)] == [4, 8, 16, 40, 80, 80]
    cfg = smoke()
    cfg.seeds, cfg.min_per_task = [0, 1], [0, 5]
    specs = plan_runs(cfg, pool_size=32)
    assert sum(s.strategy == BASE for s in specs) == 1
    assert [s.seed for s in specs if s.strategy == FULL] == [0, 1]  # strategy-independent: once per seed
    # min_per_task only changes the task-diversity strategies; random runs once per seed and budget
    assert sum(s.strategy == "random" for s in specs) == 2
    assert sum(s.strategy == "weighted_task_diversity" for s in specs) == 4
    assert [s.seed for s in specs if s.strategy != BASE] == sorted(s.seed for s in specs if s.strategy != BASE)


# -------------------------------------------------------------------------------------- end to end
# The smoke config through the real CLI: tiny model, MiniLM embeddings, LoRA training (~1 min on 2 cores).


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        assert cli_main(["evaluate", "--config", "smoke", "--output", str(out), "--threads", "1"]) == 0
        yield out, mp


@pytest.mark.slow
def test_smoke_writes_every_strategy_and_budget(smoke_run):
    out, _ = smoke_run
    doc = json.loads((out / "results.json").read_text())
    assert doc["metadata"]["complete"] and doc["metadata"]["device"].startswith("cpu")
    strategies = {r["strategy"] for r in doc["runs"]}
    assert strategies == set(smoke().strategies) | {BASE, FULL}
    for run in doc["runs"]:
        assert all(math.isfinite(v) for v in run["macro"].values())
        assert set(run["per_task"]["rouge_l"]) == {"copy", "uppercase", "reverse", "count"}
        assert sum(run["allocation"].values()) == run["budget_n"] == len(run["selected_ids"])
    table = (out / "table.md").read_text()
    assert "| 8 (25%) |" in table
    for strategy in smoke().strategies:
        assert table.count(f"| {strategy} |") == 3  # one row per metric table
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_smoke_resumes_without_training(smoke_run, monkeypatch):
    out, _ = smoke_run
    before = json.loads((out / "results.json").read_text())["runs"]

    def no_training(*args, **kwargs):
        raise AssertionError("a completed run was trained again")

    monkeypatch.setattr("model.training.train_lora", no_training)
    assert cli_main(["evaluate", "--config", "smoke", "--output", str(out), "--threads", "1"]) == 0
    assert json.loads((out / "results.json").read_text())["runs"] == before


@pytest.mark.slow
def test_ablation_values_add_runs_to_the_same_output(smoke_run):
    out, _ = smoke_run
    before = json.loads((out / "results.json").read_text())["runs"]
    assert cli_main(["evaluate", "--config", "smoke", "--output", str(out), "--threads", "1",
                     "--strategies", "weighted_task_diversity", "--budgets", "0.25",
                     "--rounds", "1", "2", "--min-per-task", "0", "--metric", "mean_entropy"]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert runs[:len(before)] == before
    new = runs[len(before):]
    assert {(r["strategy"], r["min_per_task"], r["metric"], r["rounds"]) for r in new} == {
        ("weighted_task_diversity", 0, "mean_entropy", 1), ("weighted_task_diversity", 0, "mean_entropy", 2)}
    two = next(r for r in new if r["rounds"] == 2)
    first, second = (sum(a.values()) for a in two["round_allocations"])
    assert (first, second) == (4, 4) and len(set(two["selected_ids"])) == 8
    assert "min_per_task=0" in (out / "table.md").read_text()


@pytest.mark.slow
def test_output_holding_other_data_is_refused(smoke_run, tmp_path, capsys):
    out, _ = smoke_run
    before = (out / "results.json").read_text()
    _write_rows(tmp_path / "rows.jsonl", _custom_rows())
    assert cli_main(["evaluate", "--config", "smoke", "--data", str(tmp_path / "rows.jsonl"),
                     "--output", str(out), "--threads", "1"]) == 2
    assert "different data set" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before


@pytest.mark.slow
def test_custom_data_replaces_builtin(smoke_run, tmp_path):
    _write_rows(tmp_path / "rows.jsonl", _custom_rows())
    out = tmp_path / "out"
    assert cli_main(["evaluate", "--config", "smoke", "--data", str(tmp_path / "rows.jsonl"), "--output", str(out),
                     "--strategies", "random", "weighted_task_diversity", "--budgets", "2", "--threads", "1"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["metadata"]["tasks"] == ["agree", "greet"] and doc["metadata"]["n_pool"] == 6
    assert {(r["strategy"], r["budget_n"]) for r in doc["runs"]} == {
        (BASE, 0), ("random", 2), ("weighted_task_diversity", 2)}


def test_custom_data_bad_row_exits_2(tmp_path, capsys):
    rows = _custom_rows()
    rows[1]["prompt"] = 7
    _write_rows(tmp_path / "rows.jsonl", rows)
    assert cli_main(["evaluate", "--config", "smoke", "--data", str(tmp_path / "rows.jsonl"),
                     "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "row 2" in err and "'prompt'" in err
    assert not (tmp_path / "out").exists()
