"""Scoring: metrics against an independent reference, first-EOS masking, order, slicing, fast path."""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from model.config import ScoringConfig
from model.loading import load_model
from model.prompting import prompt_text, response_text
from model.scoring import _encode, generate, prompt_budget, response_logprobs, score_prompts, score_rows

PROMPTS = ["hello", "summarize the following text in one sentence please",
           "a b c", "translate this sentence into french " * 4, "x", "count the words"]
METRIC_KEYS = {"sequence_prob", "mean_logprob", "mean_entropy", "min_margin", "n_tokens"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    """The tiny model with larger random weights: its greedy responses vary from prompt to prompt (the
    stock init repeats one token everywhere), which the EOS and ordering tests need."""
    lm = load_model(str(tiny_model_dir))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return lm


def cfg(**kw) -> ScoringConfig:
    return ScoringConfig(**{"max_new_tokens": 10, "batch_size": 4, "progress": False, **kw})


def reference(lm, prompt: str, max_new_tokens: int, eos_ids: set[int]):
    """Greedy decoding one token at a time without a KV cache, then one teacher-forced pass over
    prompt + response in float64: the tokens, log-probs, entropies and margins the scorer must report."""
    ids = lm.tokenizer(prompt_text(lm.tokenizer, prompt), add_special_tokens=False)["input_ids"]
    gen: list[int] = []
    with torch.no_grad():
        while len(gen) < max_new_tokens and not (gen and gen[-1] in eos_ids):
            gen.append(int(lm.model(torch.tensor([ids + gen])).logits[0, -1].argmax()))
        logits = lm.model(torch.tensor([ids + gen])).logits[0, len(ids) - 1:-1].double()
    logp = logits.log_softmax(-1)
    p = logp.exp()
    top2 = p.topk(2, dim=-1).values
    return gen, logp[range(len(gen)), gen], -(p * logp).sum(-1), top2[:, 0] - top2[:, 1]


def assert_matches_reference(lm, ex, prompt, max_new_tokens, eos_ids):
    gen, lp, ent, margin = reference(lm, prompt, max_new_tokens, eos_ids)
    assert ex.n_tokens == len(gen) == len(ex.token_logprobs)
    np.testing.assert_allclose(ex.token_logprobs, lp.numpy(), atol=1e-4)
    assert ex.sequence_prob == pytest.approx(float(lp.sum().exp()), rel=1e-3)
    assert ex.mean_logprob == pytest.approx(float(lp.mean()), abs=1e-4)
    assert ex.mean_entropy == pytest.approx(float(ent.mean()), abs=1e-4)
    assert ex.min_margin == pytest.approx(float(margin.min()), abs=1e-4)
    text_ids = gen[:-1] if gen[-1] in eos_ids else gen
    assert ex.response == lm.tokenizer.decode(text_ids, skip_special_tokens=True)


def test_metrics_match_a_teacher_forced_recomputation(lm):
    results = score_prompts(lm, PROMPTS, cfg(batch_size=3))
    for prompt, ex in zip(PROMPTS, results):
        assert_matches_reference(lm, ex, prompt, 10, {lm.tokenizer.eos_token_id})


def test_a_response_ends_at_its_first_eos_and_the_batch_is_unaffected(lm, monkeypatch):
    # Make the 4th token of one response an extra EOS id (as a generation config may list several):
    # that response must stop there, the others run on, and batching must not change anything.
    free, *_ = reference(lm, PROMPTS[3], 10, set())
    stop_tok = next(t for k, t in enumerate(free) if k >= 3 and t not in free[:k])
    eos_ids = {lm.tokenizer.eos_token_id, stop_tok}
    monkeypatch.setattr(lm.model.generation_config, "eos_token_id", sorted(eos_ids))
    batched = score_prompts(lm, PROMPTS, cfg(batch_size=len(PROMPTS)))
    alone = [score_prompts(lm, [p], cfg())[0] for p in PROMPTS]
    assert batched[3].n_tokens == free.index(stop_tok) + 1 < 10
    assert max(ex.n_tokens for ex in batched) == 10  # someone ran to the limit in the same batch
    for prompt, b, a in zip(PROMPTS, batched, alone):
        assert_matches_reference(lm, b, prompt, 10, eos_ids)
        assert (b.n_tokens, b.response) == (a.n_tokens, a.response)
        np.testing.assert_allclose(b.token_logprobs, a.token_logprobs, atol=1e-5)


def test_results_follow_the_input_order_whatever_the_bucketing(lm):
    expected = {p: ex for p, ex in zip(PROMPTS, score_prompts(lm, PROMPTS, cfg(batch_size=1)))}
    shuffled = PROMPTS[:]
    random.Random(0).shuffle(shuffled)
    for batch_size in (2, 4):
        for p, ex in zip(shuffled, score_prompts(lm, shuffled, cfg(batch_size=batch_size))):
            assert ex.response == expected[p].response
            assert ex.mean_logprob == pytest.approx(expected[p].mean_logprob, abs=1e-5)


def test_scoring_is_deterministic(lm):
    assert score_prompts(lm, PROMPTS, cfg()) == score_prompts(lm, PROMPTS, cfg())


def test_score_rows_scores_a_slice_and_keeps_the_input_fields(lm):
    rows = [{"id": i, "prompt": p, "task": f"t{i % 2}"} for i, p in enumerate(PROMPTS)]
    out = score_rows(rows, lm, cfg(), start=1, stop=4)
    assert [r["id"] for r in out] == [1, 2, 3]
    scored = score_prompts(lm, PROMPTS[1:4], cfg())
    for row, src, ex in zip(out, rows[1:4], scored):
        assert set(row) == set(src) | {"response"} | METRIC_KEYS
        assert {k: row[k] for k in src} == src
        assert row["response"] == ex.response and row["n_tokens"] == ex.n_tokens
        assert row["sequence_prob"] == pytest.approx(ex.sequence_prob, rel=1e-4)
    assert [r["id"] for r in score_rows(rows, lm, cfg(), start=4)] == [4, 5]


def test_bad_settings_are_refused(lm):
    with pytest.raises(ValueError, match="max_new_tokens"):
        score_prompts(lm, PROMPTS, cfg(max_new_tokens=0))
    with pytest.raises(ValueError, match="batch_size"):
        score_prompts(lm, PROMPTS, cfg(batch_size=0))
    with pytest.raises(ValueError, match="empty"):
        score_prompts(lm, [""], cfg(chat_template=False))
    assert score_prompts(lm, [], cfg()) == []


def test_progress_bar_only_for_several_batches(lm, capsys):
    score_prompts(lm, PROMPTS[:2], cfg(batch_size=4, progress=True))
    assert "scoring" not in capsys.readouterr().err
    score_prompts(lm, PROMPTS, cfg(batch_size=2, progress=True))
    assert "scoring" in capsys.readouterr().err


def test_generate_returns_the_scored_responses(lm):
    assert generate(lm, PROMPTS, max_new_tokens=10, batch_size=4) == [
        ex.response for ex in score_prompts(lm, PROMPTS, cfg())]


def test_response_logprobs_are_teacher_forced_log_probs(lm):
    responses = ["the quick brown fox", "", "yes", "label studio sends webhooks", "no", "a"]
    got = response_logprobs(lm, PROMPTS, responses, batch_size=4)
    tok = lm.tokenizer
    for prompt, response, lp in zip(PROMPTS, responses, got):
        p_ids = tok(prompt_text(tok, prompt), add_special_tokens=False)["input_ids"]
        r_ids = tok(response_text(tok, response), add_special_tokens=False)["input_ids"]
        assert r_ids[-1] == tok.eos_token_id and lp.shape == (len(r_ids),)
        with torch.no_grad():
            logits = lm.model(torch.tensor([p_ids + r_ids])).logits[0, len(p_ids) - 1:-1].double()
        np.testing.assert_allclose(lp, logits.log_softmax(-1)[range(len(r_ids)), r_ids].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="responses"):
        response_logprobs(lm, PROMPTS, responses[:2])


def test_static_cache_path_matches_the_plain_path(lm):
    # The CUDA fast path without torch.compile: static cache, filler rows, cache reused across batches.
    plain = score_prompts(lm, PROMPTS, cfg(batch_size=4), fast=False)
    static = score_prompts(lm, PROMPTS, cfg(batch_size=4), fast=True, compile=False)
    for a, b in zip(plain, static):
        assert (a.response, a.n_tokens) == (b.response, b.n_tokens)
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-5)


def test_fast_path_errors_fall_back_to_the_plain_path(lm, monkeypatch, caplog):
    from model import scoring

    def broken(*args, **kwargs):
        raise RuntimeError("no graphs today")
    monkeypatch.setattr(scoring._StaticDecoder, "decode", broken)
    with caplog.at_level(logging.WARNING, logger="model.scoring"):
        got = score_prompts(lm, PROMPTS, cfg(), fast=True, compile=False)
    assert "no graphs today" in caplog.text
    assert got == score_prompts(lm, PROMPTS, cfg(), fast=False)


@pytest.mark.gpu
def test_compiled_cuda_path_matches_the_plain_path(tiny_model_dir):
    gpu = load_model(str(tiny_model_dir), device="cuda")
    gpu.model.float()  # fp32 so both paths pick the same argmax
    plain = score_prompts(gpu, PROMPTS, cfg(), fast=False)
    for _ in range(2):  # the second run replays the captured graph
        fast = score_prompts(gpu, PROMPTS, cfg(), fast=True)
        for a, b in zip(plain, fast):
            assert (a.response, a.n_tokens) == (b.response, b.n_tokens)
            np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-3)


@pytest.mark.slow
def test_smollm2_responses_are_fluent_and_consistent_with_teacher_forcing():
    real = load_model()
    prompts = ["What is the capital of France?", "Say hello.", "Name three primary colors."]
    scored = score_prompts(real, prompts, cfg(max_new_tokens=48))
    assert any(ex.n_tokens < 48 for ex in scored)  # at least one ends with its EOS
    forced = response_logprobs(real, prompts, [ex.response for ex in scored])
    tok = real.tokenizer
    for ex, lp in zip(scored, forced):
        assert ex.response.strip() and 0 < ex.sequence_prob <= 1 and 0 <= ex.min_margin <= 1
        ids = tok(response_text(tok, ex.response), add_special_tokens=False)["input_ids"]
        if ex.n_tokens < 48 and len(ids) == ex.n_tokens:  # the response re-tokenizes the same way
            np.testing.assert_allclose(lp, ex.token_logprobs, atol=1e-3)


def test_prompts_over_the_context_are_cut_in_the_middle(lm, caplog):
    budget = prompt_budget(lm, 10)
    assert budget == lm.model.config.max_position_embeddings - 10 == 1014  # the tiny model's 1024 positions
    assert prompt_budget(lm, 2000) == 512  # never less than half the context
    long = "start " + "filler words " * 1500 + "the end"
    full = _encode(lm.tokenizer, [long, "hello"], True)
    cut = _encode(lm.tokenizer, [long, "hello"], True, budget)
    assert len(full[0]) > budget and len(cut[0]) == budget and cut[1] == full[1]
    head = (budget + 1) // 2
    assert cut[0][:head] == full[0][:head] and cut[0][head:] == full[0][-(budget - head):]
    caplog.set_level(logging.WARNING)
    ex = score_prompts(lm, [long], cfg())[0]
    assert 1 <= ex.n_tokens <= 10 and "cut in the middle" in caplog.text
