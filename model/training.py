"""LoRA supervised fine-tuning on annotators' (prompt, response) pairs, loss on response tokens only.

Each call starts from the base model (the backend retrains on all annotations every time). The base
is never touched: ``train_lora`` deep-copies ``lm.model`` and wraps the *copy* with peft, so the
caller's model keeps scoring exactly as before, and the returned ``peft_model`` is a self-contained
model (its own base copy + adapter) that can score or be saved with ``AdapterStore``.

Examples are formatted with ``model.prompting`` - the same text scoring uses - so what is trained is
what is later scored: ``prompt_text(tok, prompt)`` followed by ``response_text(tok, response)``.
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from model.config import TrainConfig
from model.prompting import has_chat_template, prompt_text, response_text

log = logging.getLogger(__name__)

IGNORE = -100
"""Label value that the causal-LM loss skips (prompt tokens and padding)."""

MEGABATCH = 64
"""Batches drawn per length-sorted bucket: sorting inside a bucket cuts padding, while the bucket
being a random sample keeps batches from different epochs different."""

Progress = Callable[[int, int, float], None]


@dataclass
class TrainResult:
    peft_model: object
    """A ``peft.PeftModel`` in eval mode, on ``lm.device``: a copy of the base plus the trained adapter."""
    loss: float
    """Mean training loss over the last epoch's steps."""
    n_examples: int
    steps: int
    duration_s: float
    losses: list[float] = field(default_factory=list)
    """Loss of every optimizer step, in order."""

    def meta(self) -> dict:
        """The fields worth keeping beside a saved adapter (``AdapterStore.save(..., meta)``)."""
        return {"n_examples": self.n_examples, "loss": self.loss, "steps": self.steps,
                "duration_s": round(self.duration_s, 3)}


@dataclass
class Example:
    input_ids: list[int]
    n_prompt: int
    """How many leading tokens of ``input_ids`` are prompt (no loss on them)."""


def encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> Example:
    """Token ids of one training example, truncated to ``max_length`` keeping the response start.

    Prompt and response are tokenized separately so the response tokens are exactly those the
    model would generate after the prompt. The chat template already spells out its special
    tokens, so the tokenizer adds none then; a plain prompt gets the tokenizer's usual ones (BOS).
    If too long, the prompt loses tokens from its left (its end, next to the response, matters
    most) but keeps at least half the window; then the response loses tokens from its end.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    p_text = prompt_text(tokenizer, prompt)
    p_ids = tokenizer(p_text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    r_ids = tokenizer(response_text(tokenizer, response), add_special_tokens=False)["input_ids"]
    n_prompt = min(len(p_ids), max(max_length - len(r_ids), max_length // 2))
    p_ids = p_ids[len(p_ids) - n_prompt:]
    r_ids = r_ids[:max_length - n_prompt]
    return Example(input_ids=p_ids + r_ids, n_prompt=n_prompt)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are the response token ids and ``IGNORE`` everywhere else.

    Labels come from positions, not token ids, because the pad token is often the EOS token,
    which *is* trained at the end of every response.
    """
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, e.n_prompt:n] = ids[i, e.n_prompt:n]
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches for one epoch: shuffled, bucketed by length, then the batch order shuffled."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    bucket = batch_size * MEGABATCH
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start:start + bucket], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def warmup_linear(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return factor


def wrap_lora(base, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(base, lora)


def fresh_base(lm):
    """A private copy of the base model to wrap with peft (peft injects its layers in place)."""
    from peft import PeftModel

    if isinstance(lm.model, PeftModel):
        # An adapter loaded on top: copy, then strip the adapter layers to get the plain base back.
        return copy.deepcopy(lm.model).unload()
    if getattr(lm, "adapter", None):
        raise ValueError(f"{lm.name_or_path}: an adapter ({lm.adapter}) is merged into this model; "
                         "train from the base model (load it without an adapter)")
    return copy.deepcopy(lm.model)


def train_lora(lm, pairs: list[tuple[str, str]], cfg: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Train a fresh LoRA adapter on ``pairs``; ``progress(step, total_steps, loss)`` after every step."""
    if not pairs:
        raise ValueError("no (prompt, response) pairs to train on")
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(s, str) for s in pair):
            raise ValueError(f"pair {i}: expected (prompt: str, response: str), got {pair!r}")
    if cfg.batch_size < 1 or cfg.epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {cfg.batch_size} and {cfg.epochs}")

    started = time.monotonic()
    tok, device = lm.tokenizer, torch.device(lm.device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples = [encode_pair(tok, p, r, cfg.max_length) for p, r in pairs]
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs

    # Seed LoRA init and dropout without disturbing the caller's global RNG state.
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(cfg.seed)
        model = wrap_lora(fresh_base(lm), cfg).to(device)
        if cfg.gradient_checkpointing:
            # Non-reentrant checkpointing needs no input grads, which the frozen embeddings lack.
            model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        trainable = [p for p in model.parameters() if p.requires_grad]  # the LoRA weights only
        opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(total, cfg.warmup_ratio))
        log.info("training LoRA r=%d on %d examples: %d epochs x %d steps, device %s",
                 cfg.r, len(examples), cfg.epochs, steps_per_epoch, device)
        losses = run_epochs(model, examples, cfg, opt, sched, pad_id, device, total, progress)
    model.eval()
    if cfg.gradient_checkpointing:
        model.get_base_model().activation_checkpointing_disable()
    return TrainResult(peft_model=model, loss=sum(losses[-steps_per_epoch:]) / steps_per_epoch,
                       n_examples=len(examples), steps=total, duration_s=time.monotonic() - started,
                       losses=losses)


def run_epochs(model, examples: list[Example], cfg: TrainConfig, opt, sched, pad_id: int, device: torch.device,
               total: int, progress: Progress | None) -> list[float]:
    """The optimisation loop; returns every step's loss."""
    rng = random.Random(cfg.seed)
    lengths = [len(e.input_ids) for e in examples]
    params = [p for group in opt.param_groups for p in group["params"]]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    log_every = max(1, total // 10)
    losses: list[float] = []
    model.train()
    for epoch in range(cfg.epochs):
        for idx in length_batches(lengths, cfg.batch_size, rng):
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
            with autocast:
                loss = model(**batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step = len(losses)
            if progress is not None:
                progress(step, total, losses[-1])
            if step % log_every == 0 or step == total:
                log.info("step %d/%d epoch %d loss %.4f", step, total, epoch + 1, losses[-1])
    return losses
