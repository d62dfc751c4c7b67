"""The admin's per-project settings: the ML backend connection's ``extra_params`` -> ``ProjectConfig``.

Label Studio stores ``extra_params`` (a JSON object, a JSON string, or null) and is the source of
truth; every error names the offending setting because Label Studio shows /setup's message to the admin.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.budget import Budget
from model.config import METRICS, WITHIN_ORDERS, SelectionConfig, TrainConfig
from model.strategies import STRATEGIES


class ProjectConfigError(ValueError):
    """Invalid ``extra_params``; ``setting`` names the offending key (None: the whole value)."""

    def __init__(self, setting: str | None, problem: str):
        self.setting, self.problem = setting, problem
        super().__init__(f"extra_params: setting '{setting}': {problem}" if setting
                         else f"extra_params: {problem}")


class ProjectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    budget: int | float = Field(0.25, description=(
        "Prompts to annotate: an int >= 1, or a fraction 0 < f <= 1 of the project's tasks (rounded up: "
        "0.25 of 10 tasks is 3). Default 0.25."))
    min_per_task: int = Field(5, ge=0, description="Base allocation per task before weighting. Default 5.")
    strategy: Literal[STRATEGIES] = Field("weighted_task_diversity", description=(
        f"Selection strategy: {', '.join(STRATEGIES)}. Default weighted_task_diversity."))
    metric: Literal[METRICS] = Field("sequence_prob", description=(
        f"Confidence metric: {', '.join(METRICS)}. Default sequence_prob."))
    within: Literal[WITHIN_ORDERS] = Field("random", description=(
        f"Order inside a task: {', '.join(WITHIN_ORDERS)}. Default random."))
    seed: int = Field(0, description="Seed of every random choice. Default 0.")
    prompt_field: str | None = Field(None, description=(
        "Task data field holding the prompt. Default None = the Text tag the first TextArea points at."))
    task_field: str | None = Field("task", description=(
        "Task data field holding the task label. Default task. When no task has the field (or it is "
        "null), tasks are inferred by clustering prompt embeddings (k by silhouette)."))
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Draft length in tokens. Default 64.")
    train_every: int = Field(10, ge=0, description=(
        "Retrain after this many annotation changes; 0 = only on START_TRAINING. Default 10."))
    rounds: int = Field(1, ge=1, description=(
        "Selection rounds (docs/selection.md): the budget split evenly over R rounds; round r+1 is selected "
        "with the adapter trained when every prompt of rounds 1..r is annotated (not at every "
        "train_every), min_per_task counting over all rounds. Default 1."))
    r: int = Field(TrainConfig.r, ge=1, description=f"LoRA rank. Default {TrainConfig.r}.")
    lora_alpha: int = Field(TrainConfig.lora_alpha, ge=1,
                            description=f"LoRA scaling numerator. Default {TrainConfig.lora_alpha}.")
    lora_dropout: float = Field(TrainConfig.lora_dropout, ge=0, lt=1,
                                description=f"Dropout on the LoRA layers. Default {TrainConfig.lora_dropout}.")
    learning_rate: float = Field(TrainConfig.learning_rate, gt=0,
                                 description=f"AdamW learning rate. Default {TrainConfig.learning_rate}.")
    epochs: int = Field(TrainConfig.epochs, ge=1,
                        description=f"Passes over the annotations per training. Default {TrainConfig.epochs}.")
    batch_size: int = Field(TrainConfig.batch_size, ge=1,
                            description=f"Training batch size. Default {TrainConfig.batch_size}.")
    max_length: int = Field(TrainConfig.max_length, ge=8, description=(
        f"Prompt + response tokens per training example. Default {TrainConfig.max_length}."))
    holdout: float = Field(0.1, ge=0, lt=1, description=(
        "Share of tasks whose annotations are kept out of training to measure the adapter (held-out "
        "NLL, base vs adapter); a task is held out or not for good (a hash of its id). Held-out tasks "
        "stay in the queue and are annotated as usual. 0 = train on everything, no quality figures. "
        "Default 0.1."))
    draft_ahead: int = Field(50, ge=0, description=(
        "Unlabeled tasks, next in queue order, whose drafts a retraining pass re-writes with the new "
        "adapter; tasks further down keep their last draft until the window reaches them. "
        "0 = never re-draft. Default 50."))

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, v: Any):
        if isinstance(v, str):  # JSON has numbers for this; "3" in extra_params is a mistake worth naming
            raise ValueError(f"must be a number (an integer >= 1 or a fraction 0 < f <= 1), got {v!r}")
        return Budget.parse(v).value

    def budget_for(self, n_tasks: int) -> int:
        """The budget in prompts for a project of ``n_tasks`` tasks (``model.budget``: a fraction rounds up)."""
        return Budget.parse(self.budget).resolve(n_tasks)

    def selection(self, budget: int) -> SelectionConfig:
        return SelectionConfig(budget=budget, strategy=self.strategy, min_per_task=self.min_per_task,
                               metric=self.metric, within=self.within, seed=self.seed)

    def training(self) -> TrainConfig:
        return TrainConfig(r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                           learning_rate=self.learning_rate, epochs=self.epochs, batch_size=self.batch_size,
                           max_length=self.max_length, seed=self.seed)


def parse_extra_params(raw: Any) -> ProjectConfig:
    """Validate ``extra_params`` as Label Studio stores it; raises ``ProjectConfigError``."""
    params = extra_params_dict(raw)
    try:
        return ProjectConfig(**params)
    except ValidationError as e:
        err = e.errors()[0]
        setting = ".".join(str(p) for p in err["loc"]) or None
        problem = {"extra_forbidden": "unknown setting",
                   "value_error": str(err.get("ctx", {}).get("error", err["msg"]))}.get(err["type"], err["msg"])
        raise ProjectConfigError(setting, problem) from None


def extra_params_dict(raw: Any) -> dict:
    """``extra_params`` as a dict: null/empty -> {}, a JSON string is decoded, anything else is an error."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ProjectConfigError(None, f"not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise ProjectConfigError(None, f"must be a JSON object, got {type(raw).__name__}")
    return raw
