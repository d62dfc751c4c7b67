"""``python -m backend export``: SFT rows from the fake Label Studio, the adapter as a peft folder that
``PeftModel.from_pretrained`` loads (tiny model), and one-line errors with exit 2."""
import json

import pytest

from backend import cli, quality, wiring
from backend.labelstudio import LabelStudioClient, LabelStudioError
from scripts.local_labelstudio import free_port
from tests.backend.fakes import backend_env, fake_ls  # noqa: F401 (fixtures)


def _export(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_writes_the_latest_answer_of_each_task_as_chat_rows(fake_ls, tmp_path, capsys):
    ls, pid = fake_ls, fake_ls.project_id
    tasks = ls.tasks_by_project[pid]
    ls.annotate(pid, tasks[0]["id"], "first try", completed_by=7)
    ls.annotate(pid, tasks[0]["id"], "5 centuries\n", completed_by=8)  # the edit replaces the first try
    ls.annotate(pid, tasks[1]["id"], "kept", completed_by=7)
    ls.annotate(pid, tasks[1]["id"], "skipped", cancelled=True, completed_by=9)
    ls.annotate(pid, tasks[2]["id"], "  \n", completed_by=7)  # blank: not SFT data
    ls.annotate(pid, tasks[3]["id"], "held?", completed_by=7)
    out = tmp_path / "out" / "sft.jsonl"
    code, stdout, _ = _export(capsys, "--project", str(pid), "--output", str(out))
    assert code == 0 and "wrote 3 rows" in stdout and "1 annotated tasks left out" in stdout
    rows = _read(out)
    assert [r["task_id"] for r in rows] == [t["id"] for t in tasks[:2]] + [tasks[3]["id"]]
    first = rows[0]
    assert first["messages"] == [{"role": "user", "content": tasks[0]["data"]["prompt"]},
                                 {"role": "assistant", "content": "5 centuries"}]
    assert first["task_label"] == "summarize" and first["annotator"] == 8
    assert first["annotation_id"] == ls.tasks_by_project[pid][0]["annotations"][1]["id"]
    assert rows[1]["messages"][1]["content"] == "kept" and rows[1]["annotator"] == 7
    assert [r["heldout"] for r in rows] == [quality.is_heldout(r["task_id"], 0.1) for r in rows]
    assert set(first) == {"messages", "task_label", "task_id", "annotation_id", "annotator", "heldout"}
    assert not list(out.parent.glob(".*"))  # no temporary file left behind


def test_export_with_the_adapter_loads_with_peft(fake_ls, backend_env, tiny_model_dir, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from model.config import TrainConfig
    from model.loading import load_model
    from model.training import fresh_base, wrap_lora

    ls, pid, st = fake_ls, fake_ls.project_id, wiring.store()
    ls.annotate(pid, ls.tasks_by_project[pid][0]["id"], "an answer", completed_by=3)
    dest = tmp_path / "adapter"
    code, _, err = _export(capsys, "--project", str(pid), "--output", str(tmp_path / "a.jsonl"),
                           "--adapter", str(dest))
    assert code == 2 and err.strip() == f"error: --adapter: project {pid} has no trained adapter yet"
    assert not dest.exists() and not (tmp_path / "a.jsonl").exists()

    torch.manual_seed(0)
    peft_model = wrap_lora(fresh_base(load_model(str(tiny_model_dir), device="cpu")), TrainConfig(r=4))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # a fresh LoRA B is zero: make the adapter change something
    peft_model.eval()  # no LoRA dropout when comparing outputs
    version = wiring.adapter_store().save(str(pid), peft_model, {"n_examples": 1, "loss": 0.5})
    st.set_adapter(pid, version)
    st.save_quality(pid, version, {"version": version, "status": "too few held-out answers (0 of 5 needed)"})
    for _ in range(2):  # a second export replaces the first
        code, out, _ = _export(capsys, "--project", str(pid), "--output", str(tmp_path / "a.jsonl"),
                               "--adapter", str(dest))
        assert code == 0 and f"wrote adapter {version}" in out
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["n_examples"] == 1 and meta["version"] == version and meta["project"] == pid
    assert meta["heldout_quality"]["status"].startswith("too few") and meta["base_model"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), dest)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        logits = loaded(input_ids=ids).logits
        assert torch.allclose(logits, peft_model(input_ids=ids).logits, atol=1e-5)  # the same adapter
        assert not torch.allclose(logits, base(input_ids=ids).logits, atol=1e-3)  # and it is loaded


def test_export_refuses_to_overwrite_a_folder_that_is_not_an_adapter(fake_ls, tmp_path, capsys):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    code, _, err = _export(capsys, "--project", str(fake_ls.project_id), "--output", str(tmp_path / "a.jsonl"),
                           "--adapter", str(dest))
    assert code == 2 and "not an exported adapter" in err and (dest / "notes.txt").read_text() == "keep me"


def test_unknown_project_is_one_line_and_exit_2(fake_ls, tmp_path, capsys, monkeypatch):
    def not_found(project_id):  # what LabelStudioClient raises on a 404 (the fake only knows its projects)
        raise LabelStudioError(f"Label Studio GET /api/projects/{project_id} failed after 1 try: HTTP 404: "
                               '{"detail":"Not found."}', 404, f"/api/projects/{project_id}")
    monkeypatch.setattr(fake_ls, "project", not_found)
    code, out, err = _export(capsys, "--project", "999", "--output", str(tmp_path / "a.jsonl"))
    assert code == 2 and out == ""
    assert err == "error: project 999: not found in Label Studio (GET /api/projects/999: HTTP 404)\n"
    assert not (tmp_path / "a.jsonl").exists()


def test_unreachable_label_studio_is_one_line_and_exit_2(backend_env, tmp_path, capsys, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setattr(wiring, "make_client", lambda: LabelStudioClient(url, "key", retries=0))
    code, _, err = _export(capsys, "--project", "1", "--output", str(tmp_path / "a.jsonl"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "ConnectError" in err
    assert err.startswith(f"error: cannot reach Label Studio at {url}: ")
    assert not (tmp_path / "a.jsonl").exists()


@pytest.mark.parametrize("args", [["--project", "abc", "--output", "x.jsonl"], ["--project", "1"]])
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", *args])
    assert e.value.code == 2
