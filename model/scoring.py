"""Batched greedy generation with per-example confidence metrics, and teacher-forced log-probs.

Every prompt gets a greedy response; its confidence is read off the probabilities the model gave the
tokens it chose. A response ends at its FIRST end-of-sequence token (pad == eos for SmolLM2, so the pad
id can never tell us where a response stops). The EOS token counts as a generated token: deciding to
stop is part of the answer, and its probability is part of the sequence's probability. So ``n_tokens``,
``token_logprobs`` and all metrics include it; ``response`` is the text before it. A response cut by
``max_new_tokens`` has exactly that many tokens and no EOS.

Metrics are computed on the fly from the float32 log-softmax of each step's logits: keeping every
step's full vocabulary scores (what ``generate(output_scores=True)`` does) costs gigabytes at batch 256.
"""
from __future__ import annotations

import inspect
import logging
import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.config import METRICS, ScoringConfig
from model.prompting import has_chat_template, prompt_text, response_text

log = logging.getLogger(__name__)


@dataclass
class ScoredExample:
    response: str
    token_logprobs: list[float]
    sequence_prob: float
    """exp(sum of token log-probs): the probability of the whole greedy response (EOS included)."""
    mean_logprob: float
    mean_entropy: float
    """Mean over tokens of the entropy (nats) of the predictive distribution the token was drawn from."""
    min_margin: float
    """Min over tokens of top-1 minus top-2 probability."""
    n_tokens: int

    def metrics(self) -> dict:
        return {**{m: getattr(self, m) for m in METRICS}, "n_tokens": self.n_tokens}


# ---------------------------------------------------------------------------------------------- input

def _encode(tok, prompts: list[str], chat_template: bool, max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of each formatted prompt. A chat template already writes its special tokens.

    A prompt over ``max_tokens`` keeps its first and last tokens (its middle is cut): the template's
    opening and the assistant header that the response follows both survive.
    """
    templated = chat_template and has_chat_template(tok)
    texts = [prompt_text(tok, p, chat_template) for p in prompts]
    ids = tok(texts, add_special_tokens=not templated)["input_ids"]
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"prompt {i} is empty after tokenization; the model needs at least one token")
    if max_tokens is not None:
        long = sum(len(row) > max_tokens for row in ids)
        if long:
            log.warning("%d prompt(s) over %d tokens cut in the middle to fit the model's context", long, max_tokens)
            head = (max_tokens + 1) // 2
            ids = [row if len(row) <= max_tokens else row[:head] + row[len(row) - (max_tokens - head):]
                   for row in ids]
    return ids


def prompt_budget(lm, max_new_tokens: int) -> int | None:
    """Most prompt tokens the model takes with room for ``max_new_tokens`` (at least half its context);
    None when neither the model config nor the tokenizer states a context length."""
    stated = [getattr(lm.model.config, "max_position_embeddings", None),
              getattr(lm.tokenizer, "model_max_length", None)]
    context = min((n for n in stated if isinstance(n, int) and 0 < n < 10 ** 8), default=None)  # 1e30 = unset
    return None if context is None else max(context - max_new_tokens, context // 2)


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # Left padding: a row's first real token is position 0, whatever its column (as if unpadded).
    return (mask.cumsum(-1) - 1).clamp_min(0)


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first: an out-of-memory shows up in the first batch), chunked."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _eos_ids(lm) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the generation config's (int or list)."""
    ids = {lm.tokenizer.eos_token_id}
    gen = getattr(lm.model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    ids.discard(None)
    if not ids:
        raise ValueError(f"{lm.name_or_path}: the tokenizer has no EOS token, so responses cannot end")
    return sorted(ids)


def _cache_kw(model) -> str:
    """The forward argument that takes a KV cache: ``cache`` in newer transformers (which deprecate
    ``past_key_values``), ``past_key_values`` before (the GPU machine's 5.17)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the LM
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="prompt", desc="scoring")


# --------------------------------------------------------------------------------------------- decode

@dataclass
class _Steps:
    """One batch's per-step tokens and metrics, (batch, steps). A row's response is its first n columns
    (n counts its first EOS when ``ended``); later columns are what it produced while the batch ran on."""
    tokens: torch.Tensor
    logprob: torch.Tensor
    entropy: torch.Tensor
    margin: torch.Tensor
    n: torch.Tensor
    ended: torch.Tensor


def _step_metrics(logits: torch.Tensor):
    """Greedy token and its log-prob, predictive entropy and top-1/top-2 margin, from last-step logits."""
    logp = F.log_softmax(logits.float(), dim=-1)
    top = logp.topk(2, dim=-1)
    entropy = torch.special.entr(logp.exp()).sum(-1)  # entr(0) = 0: an underflowed prob adds nothing
    probs = top.values.exp()
    return top.indices[:, 0], top.values[:, 0], entropy, probs[:, 0] - probs[:, 1]


def _finish(cols, eos: torch.Tensor) -> _Steps:
    tokens, logprob, entropy, margin = (torch.stack(c, dim=1).cpu() for c in cols)
    is_eos = torch.isin(tokens, eos.cpu())
    ended = is_eos.any(1)
    n = torch.where(ended, is_eos.int().argmax(1) + 1, tokens.shape[1])
    return _Steps(tokens, logprob, entropy, margin, n, ended)


def _decode_dynamic(model, ids, mask, max_new_tokens: int, eos: torch.Tensor) -> _Steps:
    """Greedy decoding with a growing KV cache; stops as soon as every row has produced an EOS."""
    from transformers import DynamicCache

    kv = {_cache_kw(model): DynamicCache()}
    pos = _positions(mask)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **kv)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    cols = ([], [], [], [])
    for step in range(max_new_tokens):
        tok, *metrics = _step_metrics(out.logits[:, -1])
        for col, x in zip(cols, (tok, *metrics)):
            col.append(x)
        done |= torch.isin(tok, eos)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        # Finished rows keep decoding (the batch moves together); _finish drops what follows their EOS.
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, use_cache=True, **kv)
    return _finish(cols, eos)


class _StaticDecoder:
    """CUDA fast path: one static KV cache of fixed (batch, length) shape and a compiled one-token step.

    A 135M model's decode step is a few hundred tiny kernels: launched one by one from Python it is
    launch-bound (about 55 ms a step on an H100/H200). With fixed shapes, ``reduce-overhead`` captures
    the step as a CUDA graph and replays it. Every batch is padded to ``batch_size`` rows and the cache
    length is fixed per decoder, so the step compiles once.
    """

    def __init__(self, model, batch_size: int, cache_len: int, compile: bool = True):
        from transformers import StaticCache

        self.model, self.batch_size, self.cache_len = model, batch_size, cache_len
        self.cache = StaticCache(config=model.config, max_cache_len=cache_len)
        self.cache_kw = _cache_kw(model)
        self.compiled = compile
        self.step = torch.compile(self._step, mode="reduce-overhead") if compile else self._step

    def _step(self, tok, pos, cache_position, mask, cache):
        out = self.model(input_ids=tok, attention_mask=mask, position_ids=pos, cache_position=cache_position,
                         use_cache=True, **{self.cache_kw: cache})
        return _step_metrics(out.logits[:, -1])

    def decode(self, ids, mask, max_new_tokens: int, eos: torch.Tensor) -> _Steps:
        rows, width = ids.shape
        if rows < self.batch_size:  # filler rows copy row 0, so no row is all padding; dropped below
            fill = self.batch_size - rows
            ids = torch.cat([ids, ids[:1].expand(fill, -1)])
            mask = torch.cat([mask, mask[:1].expand(fill, -1)])
        # The mask always spans the whole cache, so the compiled step sees the same shapes at every step
        # and in every batch. Slots not written yet stay masked: an all-ones mask lets attention skip its
        # causal mask, and the step would attend to empty (or, without the reset, stale) slots.
        full = torch.zeros((self.batch_size, self.cache_len), dtype=mask.dtype, device=mask.device)
        full[:, :width] = mask
        pos = _positions(mask)
        self.cache.reset()  # newer transformers write at the cache's own fill count, not cache_position
        out = self.model(input_ids=ids, attention_mask=full, position_ids=pos, use_cache=True, logits_to_keep=1,
                         cache_position=torch.arange(width, device=ids.device), **{self.cache_kw: self.cache})
        result = _step_metrics(out.logits[:, -1])
        pos = pos[:, -1:]
        done = torch.zeros(self.batch_size, dtype=torch.bool, device=ids.device)
        cols = ([], [], [], [])
        for step in range(max_new_tokens):
            for col, x in zip(cols, result):
                col.append(x[:rows].clone())  # a CUDA graph's outputs are overwritten by its next replay
            done |= torch.isin(result[0], eos)
            if step == max_new_tokens - 1 or bool(done[:rows].all()):
                break
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()
            pos = pos + 1
            full[:, width + step] = 1
            result = self.step(result[0][:, None].clone(), pos, torch.tensor([width + step], device=ids.device),
                               full, self.cache)
        return _finish(cols, eos)


_decoder_cache: dict[tuple, _StaticDecoder] = {}


def _static_decoder(model, batch_size: int, cache_len: int, compile: bool) -> _StaticDecoder:
    """One decoder (and compiled graph) per model and shape, kept across calls: compiling takes a while."""
    # Round the length up so runs with slightly different prompt lengths share a compiled step.
    cache_len = -(-cache_len // 256) * 256
    key = (id(model), batch_size, cache_len, compile)
    if key not in _decoder_cache:
        _decoder_cache.clear()  # a worker serves one model; old graphs and caches only hold memory
        _decoder_cache[key] = _StaticDecoder(model, batch_size, cache_len, compile)
    return _decoder_cache[key]


def _examples(steps: _Steps, tok) -> list[ScoredExample]:
    out = []
    for i in range(steps.tokens.shape[0]):
        n = int(steps.n[i])
        ids = steps.tokens[i, :n].tolist()
        lp = steps.logprob[i, :n].double()
        total = float(lp.sum())
        out.append(ScoredExample(
            response=tok.decode(ids[:-1] if steps.ended[i] else ids, skip_special_tokens=True),
            token_logprobs=lp.tolist(),
            sequence_prob=math.exp(total),
            # n = 0 cannot happen while the EOS counts and max_new_tokens >= 1; defined as certain anyway.
            mean_logprob=total / n if n else 0.0,
            mean_entropy=float(steps.entropy[i, :n].double().mean()) if n else 0.0,
            min_margin=float(steps.margin[i, :n].min()) if n else 1.0,
            n_tokens=n))
    return out


# ---------------------------------------------------------------------------------------------- public

def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@torch.inference_mode()
def score_prompts(lm, prompts: list[str], cfg: ScoringConfig, *, fast: bool | None = None,
                  compile: bool = True) -> list[ScoredExample]:
    """Greedy response + confidence metrics for every prompt, in the input order.

    ``fast`` (default ``cfg.fast``; None = on for CUDA, off elsewhere) uses the static-cache decoder; ``compile`` lets it
    capture the step with torch.compile. Any error in the fast path falls back to the plain one.
    """
    _check_positive("max_new_tokens", cfg.max_new_tokens)
    _check_positive("batch_size", cfg.batch_size)
    if not prompts:
        return []
    tok = lm.tokenizer
    encoded = _encode(tok, list(prompts), cfg.chat_template, prompt_budget(lm, cfg.max_new_tokens))
    eos = torch.tensor(_eos_ids(lm), device=lm.device)
    batches = _batches([len(r) for r in encoded], cfg.batch_size)
    decoder = None
    fast = cfg.fast if fast is None else fast
    if fast is None:
        fast = lm.device.type == "cuda"
    if fast:
        cache_len = max(map(len, encoded), default=0) + cfg.max_new_tokens
        decoder = _static_decoder(lm.model, min(cfg.batch_size, len(encoded)), cache_len, compile)
    results: list[ScoredExample | None] = [None] * len(encoded)
    with _progress(len(encoded), cfg.progress and len(batches) > 1) as bar:
        for batch in batches:
            ids, mask = _left_pad([encoded[i] for i in batch], tok.pad_token_id, lm.device)
            steps = None
            if decoder is not None:
                try:
                    steps = decoder.decode(ids, mask, cfg.max_new_tokens, eos)
                except Exception as e:  # an unsupported model/version must not stop scoring
                    log.warning("fast decoding failed (%s: %s); using the plain decoder", type(e).__name__, e)
                    decoder = None
            if steps is None:
                steps = _decode_dynamic(lm.model, ids, mask, cfg.max_new_tokens, eos)
            for i, ex in zip(batch, _examples(steps, tok)):
                results[i] = ex
            bar.update(len(batch))
    return results


def score_rows(rows: list[dict], lm, cfg: ScoringConfig, start: int = 0, stop: int | None = None, *,
               prompt_field: str = "prompt", fast: bool | None = None) -> list[dict]:
    """Score ``rows[start:stop]`` (so several workers can split one project); each output row is the input
    row plus ``response`` and the metrics."""
    part = rows[start:stop]
    scored = score_prompts(lm, [r[prompt_field] for r in part], cfg, fast=fast)
    return [{**row, "response": ex.response, **ex.metrics()} for row, ex in zip(part, scored)]


def generate(lm, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy responses only (same formatting and stopping as scoring)."""
    cfg = ScoringConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    return [ex.response for ex in score_prompts(lm, prompts, cfg)]


@torch.inference_mode()
def response_logprobs(lm, prompts: list[str], responses: list[str], batch_size: int = 16,
                      chat_template: bool = True) -> list[np.ndarray]:
    """Teacher-forced log-prob of each response token (its EOS included) given the formatted prompt."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    _check_positive("batch_size", batch_size)
    tok = lm.tokenizer
    prompt_ids = _encode(tok, list(prompts), chat_template)
    resp_ids = tok([response_text(tok, r) for r in responses], add_special_tokens=False)["input_ids"]
    seqs = [p + r for p, r in zip(prompt_ids, resp_ids)]
    out: list[np.ndarray | None] = [None] * len(seqs)
    for batch in _batches([len(s) for s in seqs], batch_size):
        ids, mask = _left_pad([seqs[i] for i in batch], tok.pad_token_id, lm.device)
        longest = max(len(resp_ids[i]) for i in batch)
        # Left padding puts every response at the right edge: the last longest+1 positions predict them all.
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                          logits_to_keep=longest + 1).logits
        for row, i in enumerate(batch):
            r = len(resp_ids[i])
            logp = F.log_softmax(logits[row, longest - r:longest].float(), dim=-1)
            target = torch.tensor(resp_ids[i], device=logp.device)
            out[i] = logp.gather(-1, target[:, None])[:, 0].cpu().numpy()
    return out
