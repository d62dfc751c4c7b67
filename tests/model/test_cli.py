"""`python -m model` round trips and every bad-input case the CLI promises to reject cleanly."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from model.cli import EXIT_BAD_INPUT, main
from model.config import WITHIN_ORDERS, SelectionConfig
from model.strategies import STRATEGIES, needs

REPO = Path(__file__).resolve().parents[2]


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def scored_rows(n_per_task=(12, 8, 20), probs=(0.9, 0.5, 0.1)):
    rows, k = [], 0
    for t, (n, p) in enumerate(zip(n_per_task, probs)):
        for j in range(n):
            rows.append({"id": f"r{k}", "task": f"task{t}", "prompt": f"prompt {t} number {j} " + "w" * j,
                         "sequence_prob": p * (0.9 + 0.01 * j), "mean_logprob": math.log(p),
                         "mean_entropy": 1 - p, "min_margin": p, "n_tokens": 5})
            k += 1
    return rows


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_select_round_trip(tmp_path, capsys):
    rows = scored_rows()
    src = write_rows(tmp_path / "scores.jsonl", rows)
    out = tmp_path / "queue.jsonl"
    code, err = run_cli(["select", "--input", src, "--budget", 18, "--output", out], capsys)
    assert code == 0, err
    queue = [json.loads(line) for line in out.read_text().splitlines()]
    assert [q["rank"] for q in queue] == list(range(18))
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[q["id"]]["task"] == q["task"] for q in queue)
    assert len({q["id"] for q in queue}) == 18
    counts = {t: sum(q["task"] == t for q in queue) for t in ("task0", "task1", "task2")}
    assert counts["task2"] > counts["task1"] > counts["task0"] >= 5  # less confident -> more budget
    for task in counts:  # per-task summary on stderr
        assert task in err
    out2 = tmp_path / "queue2.jsonl"
    assert run_cli(["select", "--input", src, "--budget", 18, "--output", out2], capsys)[0] == 0
    assert out2.read_text() == out.read_text()  # same inputs and seed, same queue


@pytest.mark.parametrize("strategy", ["task_diversity", "random"])
def test_select_other_strategies(tmp_path, capsys, strategy):
    src = write_rows(tmp_path / "s.jsonl", scored_rows())
    out = tmp_path / "q.jsonl"
    code, err = run_cli(["select", "--input", src, "--budget", 10, "--output", out, "--strategy", strategy], capsys)
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 10


def only(rows, fields):
    return [{k: r[k] for k in ("id", "task", *fields)} for r in rows]


@pytest.mark.parametrize("within", WITHIN_ORDERS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs_on_only_the_fields_it_needs(tmp_path, capsys, strategy, within):
    """The registry says what a strategy reads; the CLI asks for exactly that, no less and no more."""
    cfg = SelectionConfig(budget=1, strategy=strategy, within=within)
    fields = needs(cfg).fields(cfg)
    rows = only(scored_rows(), fields)
    out = tmp_path / "q.jsonl"
    args = ["select", "--input", write_rows(tmp_path / "in.jsonl", rows), "--budget", 9, "--output", out,
            "--strategy", strategy, "--within", within, "--min-per-task", 2]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    queue = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(queue) == 9 and len({q["id"] for q in queue}) == 9
    for missing in fields:  # and each of those fields is really needed: without it, one clear line
        rows_without = only(scored_rows(), [f for f in fields if f != missing])
        args[2] = write_rows(tmp_path / f"no-{missing}.jsonl", rows_without)
        code, err = run_cli(args, capsys)
        assert code == EXIT_BAD_INPUT and f"'{missing}'" in err and len(err.strip().splitlines()) == 1


def test_task_diversity_on_unscored_prompts(tmp_path, capsys):
    """The issue's reproduction: prompts that were never scored, Task Diversity, a fractional budget."""
    rows = [{"id": i, "task": f"t{i % 4}", "prompt": f"p{i}"} for i in range(40)]
    out = tmp_path / "q.jsonl"
    code, err = run_cli(["select", "--input", write_rows(tmp_path / "prompts.jsonl", rows), "--strategy",
                         "task_diversity", "--budget", "0.25", "--output", out], capsys)
    assert code == 0, err
    queue = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(queue) == 10  # ceil(0.25 * 40)
    assert "budget=10" in err and "confidence" in err


def bad_case(tmp_path, rows):
    return write_rows(tmp_path / "bad.jsonl", rows)


GOOD = scored_rows((3, 3), (0.5, 0.2))


@pytest.mark.parametrize("rows, extra, expect", [
    (GOOD[:1] + ["{not json"] + GOOD[1:], [], ["row 2", "JSON"]),
    (GOOD[:2] + [{k: v for k, v in GOOD[2].items() if k != "task"}], [], ["row 3", "'task'", "missing"]),
    (GOOD[:1] + [{**GOOD[1], "sequence_prob": "high"}], [], ["row 2", "'sequence_prob'"]),
    (GOOD[:3] + ['{"id": "x", "task": "t", "sequence_prob": NaN}'], [], ["row 4", "'sequence_prob'"]),
    (GOOD[:1] + [{**GOOD[1], "sequence_prob": None}], [], ["row 2", "'sequence_prob'"]),
    (GOOD[:2] + [{**GOOD[2], "id": GOOD[0]["id"]}], [], ["row 3", "'id'", "duplicate"]),
    (GOOD, ["--metric", "mean_entropy"], []),  # control: a valid run
    ([], [], ["empty"]),
    (GOOD, ["--strategy", "nope"], ["--strategy", "nope"]),
    (GOOD, ["--metric", "nope"], ["--metric"]),
    (GOOD, ["--budget", "-3"], ["--budget", ">= 1"]),
    (GOOD, ["--budget", "0"], ["--budget", ">= 1"]),
    (GOOD, ["--budget", "1.5"], ["--budget", "0 < f <= 1"]),
    (GOOD, ["--budget", "ten"], ["--budget", "not a number"]),
    (GOOD, ["--strategy", "k_center"], None),  # needs prompts: present here, so valid
    ([{k: v for k, v in r.items() if k != "prompt"} for r in GOOD], ["--strategy", "k_center"], ["row 1", "'prompt'"]),
], ids=["not-json", "missing-task", "non-numeric", "nan", "null-metric", "duplicate-id", "valid-control",
        "empty", "unknown-strategy", "unknown-metric", "negative-budget", "zero-budget",
        "fraction-over-one", "non-int-budget", "k-center-ok",
        "k-center-needs-prompt"])
def test_select_bad_input(tmp_path, capsys, rows, extra, expect):
    src = bad_case(tmp_path, rows)
    out = tmp_path / "queue.jsonl"
    args = ["select", "--input", src, "--budget", 4, "--output", out] + extra
    if "--budget" in extra:
        i = args.index("--budget")
        del args[i:i + 2]
    code, err = run_cli(args, capsys)
    if not expect:
        assert code == 0, err
        assert out.exists()
        return
    assert code == EXIT_BAD_INPUT
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for piece in expect:
        assert piece in lines[0]
    if any(p.startswith("row") for p in expect) or "empty" in expect:
        assert str(src) in lines[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".queue.jsonl.*"))  # no temporary file left behind


def test_unreadable_input(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    code, err = run_cli(["select", "--input", missing, "--budget", 3, "--output", tmp_path / "q.jsonl"], capsys)
    assert code == EXIT_BAD_INPUT and str(missing) in err and "cannot read" in err
    code, err = run_cli(["score", "--input", missing, "--output", tmp_path / "s.jsonl"], capsys)
    assert code == EXIT_BAD_INPUT and str(missing) in err


def test_failed_run_keeps_previous_output(tmp_path, capsys):
    out = write_rows(tmp_path / "queue.jsonl", [{"id": "old", "task": "t", "rank": 0}])
    before = out.read_text()
    src = bad_case(tmp_path, GOOD[:1] + ["{oops"])
    assert run_cli(["select", "--input", src, "--budget", 1, "--output", out], capsys)[0] == EXIT_BAD_INPUT
    assert out.read_text() == before


@pytest.mark.parametrize("rows, extra, expect", [
    ([{"id": 1}], [], ["row 1", "'prompt'", "missing"]),
    ([{"id": 1, "prompt": 5}], [], ["row 1", "'prompt'", "not a string"]),
    ([{"id": 1, "prompt": "hi"}], ["--max-new-tokens", "0"], ["--max-new-tokens"]),
    ([{"id": 1, "prompt": "hi"}], ["--batch-size", "x"], ["--batch-size"]),
])
def test_score_bad_input(tmp_path, capsys, rows, extra, expect):
    src = write_rows(tmp_path / "p.jsonl", rows)
    out = tmp_path / "s.jsonl"
    code, err = run_cli(["score", "--input", src, "--output", out] + extra, capsys)
    assert code == EXIT_BAD_INPUT
    assert len(err.strip().splitlines()) == 1
    assert all(piece in err for piece in expect)
    assert not out.exists()


def test_score_then_select_round_trip(tmp_path, tiny_model_dir):
    """The real entry point, in a subprocess: score with the tiny model, then select from its output."""
    prompts = [{"id": i, "prompt": f"summarize the text number {i} " + "word " * (i % 7), "task": f"t{i % 3}"}
               for i in range(12)]
    src = write_rows(tmp_path / "prompts.jsonl", prompts)
    scores, queue = tmp_path / "scores.jsonl", tmp_path / "queue.jsonl"
    cmd = [sys.executable, "-m", "model", "score", "--input", str(src), "--output", str(scores),
           "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--batch-size", "4", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(12))
    for row, src_row in zip(rows, prompts):
        assert row["prompt"] == src_row["prompt"] and row["task"] == src_row["task"]
        assert isinstance(row["response"], str)
        assert 0 < row["sequence_prob"] <= 1 and row["mean_logprob"] <= 0
        assert 1 <= row["n_tokens"] <= 6
        assert math.isclose(math.exp(row["mean_logprob"] * row["n_tokens"]), row["sequence_prob"], rel_tol=1e-4)
        assert row["mean_entropy"] >= 0 and 0 <= row["min_margin"] <= 1
    r = subprocess.run([sys.executable, "-m", "model", "select", "--input", str(scores), "--budget", "6",
                        "--min-per-task", "1", "--output", str(queue)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["rank"] for line in queue.read_text().splitlines()] == list(range(6))
    assert "t0" in r.stderr and "allocation" in r.stderr


def test_outputs_get_ordinary_file_permissions(tmp_path, capsys):
    import os
    from model.io import write_jsonl
    out = tmp_path / "rows.jsonl"
    write_jsonl(out, [{"id": 1}])
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
