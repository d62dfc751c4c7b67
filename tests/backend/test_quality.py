"""Held-out quality: the split, the record's figures, the base-NLL cache (real Redis, tiny model), and a
training that stores base vs adapter NLL per version (fake Label Studio, real RQ worker)."""
import json

import pytest

from backend import cli, enqueue, quality, wiring
from backend.metrics import project_metrics
from tests.backend.fakes import TEST_PARAMS, FakeLabelStudio, backend_env, fake_ls, run_worker  # noqa: F401


def test_a_task_never_changes_side():
    ids = list(range(1, 2001))
    held = {t for t in ids if quality.is_heldout(t, 0.1)}
    assert 150 < len(held) < 250  # about the share
    assert held == {t for t in reversed(ids) if quality.is_heldout(t, 0.1)}  # order plays no part
    assert held <= {t for t in ids if quality.is_heldout(t, 0.3)}  # a larger share only adds tasks
    assert not any(quality.is_heldout(t, 0) for t in ids)


def test_summary_withholds_noise():
    labels = ["a", "a", "a", "b", "c", "c"]
    base, adapter = [3.0, 2.0, 1.0, 9.0, 4.0, 2.0], [2.0, 1.0, 0.0, 1.0, 3.0, 1.0]
    ok = quality.summarize(labels, base, adapter, 0.1)
    assert ok["status"] == "ok"
    assert ok["overall"] == {"n": 6, "base_nll": pytest.approx(21 / 6), "adapter_nll": pytest.approx(8 / 6)}
    assert ok["per_task"]["a"] == {"n": 3, "base_nll": 2.0, "adapter_nll": 1.0}
    assert ok["per_task"]["b"] == {"n": 1, "status": "too few held-out answers (1 of 2 needed)"}
    assert ok["macro"] == {"tasks": 2, "base_nll": 2.5, "adapter_nll": 1.5}  # a and c; b has too few
    few = quality.summarize(labels[:4], base[:4], adapter[:4], 0.1)
    assert few["status"] == "too few held-out answers (4 of 5 needed)" and few["overall"] == {"n": 4}
    assert few["macro"] is None and "base_nll" not in json.dumps(few)
    assert quality.summarize([], [], [], 0)["status"] == "nothing is held out (holdout 0)"


def test_split_keeps_held_out_tasks_out_of_training(fake_ls):
    from backend.project import load_project

    ls, pid = fake_ls, fake_ls.project_id
    ls.backends[next(iter(ls.backends))]["extra_params"]["holdout"] = 0.5
    tasks = ls.tasks_by_project[pid]
    for t in tasks:
        ls.annotate(pid, t["id"], f"answer {t['id']}\n")
    proj = load_project(ls, wiring.store(), pid)
    train, heldout = quality.split(proj)
    held_ids = {t["id"] for t in tasks if quality.is_heldout(t["id"], 0.5)}
    assert 0 < len(held_ids) < len(tasks)
    assert {h.task_id for h in heldout} == held_ids and len(train) + len(heldout) == len(tasks)
    assert {r for _, r in train}.isdisjoint(h.response for h in heldout)
    assert all(r == r.strip() for _, r in train)  # trimmed
    labels = {t["id"]: t["data"]["task"] for t in tasks}
    assert all(h.label == labels[h.task_id] for h in heldout)


def test_base_nll_is_computed_once_per_held_out_answer(backend_env, fake_ls, monkeypatch, one_thread):
    from backend.model_cache import models
    from backend.project import load_project

    ls, pid, st = fake_ls, fake_ls.project_id, wiring.store()
    ls.backends[next(iter(ls.backends))]["extra_params"]["holdout"] = 0.5
    held = [t["id"] for t in ls.tasks_by_project[pid] if quality.is_heldout(t["id"], 0.5)]
    for t in held[:2]:
        ls.annotate(pid, t, "a short answer")
    calls = []
    real = quality.nlls
    monkeypatch.setattr(quality, "nlls", lambda lm, ex, bs: calls.append(len(ex)) or real(lm, ex, bs))
    base = models.get(None)
    proj = load_project(ls, st, pid)
    first = quality.measure(st, proj, "v0001", base, base, quality.split(proj)[1], 0, 4)
    assert calls == [2, 2] and first["heldout"] == 2 and first["status"].startswith("too few")
    ls.annotate(pid, held[2], "another answer")
    proj = load_project(ls, st, pid)
    second = quality.measure(st, proj, "v0002", base, base, quality.split(proj)[1], 0, 4)
    assert calls[2:] == [1, 3]  # the base reads only the new answer; the adapter reads all three
    assert second["heldout"] == 3 and [r["version"] for r in st.quality(pid)] == ["v0001", "v0002"]
    # the cached base figures are the ones a fresh computation gives
    fresh = real(base, quality.split(proj)[1], 4)
    assert sorted(st.base_nll(pid, [h.cache_key(proj.model) for h in quality.split(proj)[1]]).values()) == \
        pytest.approx(sorted(fresh))


@pytest.mark.slow
def test_training_stores_base_and_adapter_nll_per_version(backend_env, monkeypatch, capsys, one_thread):
    """30 tasks, half held out: every training scores the held-out answers with the base and the adapter."""
    prompts = [f"{verb} sentence number {i}" for i, verb in enumerate(["summarize", "translate", "count"] * 10)]
    labels = [{"task": p.split()[0]} for p in prompts]
    params = {**TEST_PARAMS, "holdout": 0.5, "epochs": 4, "learning_rate": 0.01, "train_every": 0}
    ls = FakeLabelStudio(extra_params=params)
    pid = ls.add_project(prompts, labels)
    monkeypatch.setattr(wiring, "make_client", lambda: ls)
    st = wiring.store()
    tasks = ls.tasks_by_project[pid]
    for t in tasks[:20]:
        ls.annotate(pid, t["id"], "yes the answer is true\n")
    enqueue.enqueue_train(pid)
    run_worker()
    held = sum(quality.is_heldout(t["id"], 0.5) for t in tasks[:20])
    [v1] = st.quality(pid)
    assert v1["version"] == "v0001" and v1["heldout"] == held and v1["trained_on"] == 20 - held
    assert st.last_training(pid)["n_examples"] == 20 - held  # held-out answers were not trained on
    assert v1["status"] == "ok" and set(v1["per_task"]) <= {"summarize", "translate", "count"}
    o = v1["overall"]
    assert o["adapter_nll"] < o["base_nll"]  # trained on the same answer, the adapter predicts it better

    for t in tasks[20:]:
        ls.annotate(pid, t["id"], "yes the answer is true")
    enqueue.enqueue_train(pid)
    run_worker()
    report = project_metrics(st, pid)["quality"]
    assert [r["version"] for r in report["versions"]] == ["v0001", "v0002"] and report["status"] == "ok"
    v2 = report["versions"][1]
    assert v2["annotations"] == 30 and v2["heldout"] == sum(quality.is_heldout(t["id"], 0.5) for t in tasks)

    capsys.readouterr()
    assert cli.main(["settings", "--project", str(pid), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quality"]["versions"][1]["version"] == "v0002"
    assert cli.main(["settings", "--project", str(pid)]) == 0
    out = capsys.readouterr().out
    assert "quality: ok" in out and "v0002 after 30 annotations" in out and "-> adapter" in out


def test_a_failed_evaluation_is_recorded_and_does_not_raise(fake_ls, monkeypatch):
    from backend.project import load_project

    st, pid = wiring.store(), fake_ls.project_id

    def broken(lm, examples, batch_size):
        raise RuntimeError("CUDA out of memory\nwith details")
    monkeypatch.setattr(quality, "nlls", broken)
    proj = load_project(fake_ls, st, pid)
    quality.after_training(st, proj, "v0001", None, None, [quality.HeldOut(3, "a", "p", "r")], 4)
    [record] = st.quality(pid)
    assert record["status"] == "evaluation failed: CUDA out of memory" and record["annotations"] == 5
    assert quality.report(st, pid)["status"] == record["status"]
    assert quality.describe(record) == "v0001 after 5 annotations (1 held out): evaluation failed: CUDA out of memory"
