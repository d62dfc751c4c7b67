"""LoRA SFT on the tiny model: loss goes down, only response tokens are trained, the base is untouched,
and a saved adapter scores exactly like the in-memory one."""
from __future__ import annotations

import pytest
import torch

from model.adapters import AdapterStore
from model.config import TrainConfig
from model.loading import load_model
from model.prompting import prompt_text, response_text
from model.training import IGNORE, collate, encode_pair, train_lora

PAIRS = [(f"count the number of words in the sentence {i}", f"{i} yes the quick brown fox") for i in range(8)]
CFG = TrainConfig(epochs=12, batch_size=4, learning_rate=1e-2, seed=3)
PROBE = ["answer the question briefly", "translate this sentence into french"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


def logits(model, tok, prompts):
    ids = [tok(prompt_text(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
    batch = collate_left(ids, tok.pad_token_id)
    with torch.no_grad():
        return model(**batch).logits


def collate_left(rows, pad_id):
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def trained(lm):
    """One training run shared by the tests, with the base logits taken before and after it."""
    before = logits(lm.model, lm.tokenizer, PROBE)
    calls = []
    result = train_lora(lm, PAIRS, CFG, progress=lambda *a: calls.append(a))
    after = logits(lm.model, lm.tokenizer, PROBE)
    return result, calls, before, after


def test_training_reduces_loss_and_reports_progress(trained):
    result, calls, _, _ = trained
    assert result.n_examples == 8
    assert result.steps == CFG.epochs * 2 == len(result.losses)
    # The tiny random model's tied, small embeddings cap how peaked its outputs can get (~4.7 nats
    # floor over a 384-token vocabulary), so a drop of over a nat from ~6.0 is most of what LoRA can do.
    assert result.losses[0] > 5.5
    assert result.loss < result.losses[0] - 1.0
    assert result.loss == pytest.approx(sum(result.losses[-2:]) / 2)
    assert [(s, t) for s, t, _ in calls] == [(s, result.steps) for s in range(1, result.steps + 1)]
    assert [loss for _, _, loss in calls] == result.losses
    assert not result.peft_model.training


def test_base_model_is_untouched(lm, trained):
    result, _, before, after = trained
    assert torch.equal(before, after)
    assert not any("lora_" in name for name, _ in lm.model.named_modules())
    adapted = logits(result.peft_model, lm.tokenizer, PROBE)
    assert not torch.allclose(adapted, before, atol=1e-3)  # the adapter itself did change the outputs


def test_collate_trains_response_tokens_only(lm):
    tok = lm.tokenizer
    short, long_ = ("hi", "yes"), ("answer the question briefly please", "the quick brown fox")
    examples = [encode_pair(tok, p, r, max_length=512) for p, r in (short, long_)]
    batch = collate(examples, pad_id=tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(examples[1].input_ids))
    for row, (prompt, response) in enumerate((short, long_)):
        p_ids = tok(prompt_text(tok, prompt), add_special_tokens=False)["input_ids"]
        r_ids = tok(response_text(tok, response), add_special_tokens=False)["input_ids"]
        assert r_ids[-1] == tok.eos_token_id  # the end-of-turn token is trained too
        n = len(p_ids) + len(r_ids)
        labels = batch["labels"][row].tolist()
        assert batch["input_ids"][row, :n].tolist() == p_ids + r_ids
        assert labels[len(p_ids):n] == r_ids
        assert labels[:len(p_ids)] == [IGNORE] * len(p_ids)
        assert labels[n:] == [IGNORE] * (batch["labels"].shape[1] - n)  # padding (= EOS id here) ignored
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["labels"].shape[1] - n)


def test_truncation_keeps_the_response_start(lm):
    tok = lm.tokenizer
    prompt = " ".join(["summarize the following text in one sentence"] * 10)
    p_ids = tok(prompt_text(tok, prompt), add_special_tokens=False)["input_ids"]
    r_ids = tok(response_text(tok, "yes"), add_special_tokens=False)["input_ids"]

    ex = encode_pair(tok, prompt, "yes", max_length=16)
    assert len(ex.input_ids) == 16
    assert ex.input_ids[ex.n_prompt:] == r_ids  # the whole short response survives
    assert ex.input_ids[:ex.n_prompt] == p_ids[-ex.n_prompt:]  # the prompt lost its start

    long_response = " ".join(["the quick brown fox jumps over the lazy dog"] * 5)
    lr_ids = tok(response_text(tok, long_response), add_special_tokens=False)["input_ids"]
    ex = encode_pair(tok, prompt, long_response, max_length=16)
    assert len(ex.input_ids) == 16 and ex.n_prompt == 8  # the prompt keeps half the window
    assert ex.input_ids[:8] == p_ids[-8:]
    assert ex.input_ids[8:] == lr_ids[:8]  # and the response keeps its start


def test_adapter_round_trip_scores_like_the_trained_model(lm, tiny_model_dir, trained, tmp_path):
    result = trained[0]
    store = AdapterStore(tmp_path)
    version = store.save(42, result.peft_model, result.meta())
    assert store.meta(42, version)["n_examples"] == 8
    loaded = load_model(str(tiny_model_dir), adapter=str(store.path(42, version)), device="cpu")
    expected = logits(result.peft_model, lm.tokenizer, PROBE)
    assert torch.allclose(logits(loaded.model, loaded.tokenizer, PROBE), expected, atol=1e-5)


def test_training_starts_from_the_base_even_with_an_adapter_loaded(lm, tiny_model_dir, trained, tmp_path):
    store = AdapterStore(tmp_path)
    path = store.path("p", store.save("p", trained[0].peft_model, {}))
    with_adapter = load_model(str(tiny_model_dir), adapter=str(path), device="cpu")
    cfg = TrainConfig(epochs=1, batch_size=4, learning_rate=1e-2, seed=CFG.seed)
    from_base = train_lora(lm, PAIRS, cfg)
    from_adapted = train_lora(with_adapter, PAIRS, cfg)
    assert from_adapted.losses == pytest.approx(from_base.losses)  # same start, same seed, same run
    assert "lora_" in " ".join(name for name, _ in with_adapter.model.named_modules())  # still adapted


def test_gradient_checkpointing_gives_the_same_run(lm):
    cfg = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2, seed=1)
    plain = train_lora(lm, PAIRS, cfg)
    checkpointed = train_lora(lm, PAIRS, TrainConfig(**{**cfg.__dict__, "gradient_checkpointing": True}))
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-4)
    assert not lm.model.is_activation_checkpointing
    assert not checkpointed.peft_model.get_base_model().is_activation_checkpointing


def test_bad_input_is_rejected(lm):
    with pytest.raises(ValueError, match="no .*pairs"):
        train_lora(lm, [], CFG)
    with pytest.raises(ValueError, match="pair 1"):
        train_lora(lm, [("a", "b"), ("a", None)], CFG)
