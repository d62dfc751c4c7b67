"""Named evaluation configurations (``--config smoke|small``) as dataclasses."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from model.config import TrainConfig

# Natural Instructions v1 subtasks with short targets (exact match is meaningful) and the shortest
# definitions among those, so prompts stay around 150-250 tokens. They mix yes/no classification,
# extraction, answering, wrong-answer and question generation: very different difficulty for the LM.
SMALL_SUBTASKS = [
    "subtask003_mctaco_question_generation_event_duration",
    "subtask004_mctaco_answer_generation_event_duration",
    "subtask005_mctaco_wrong_answer_generation_event_duration",
    "subtask009_mctaco_question_generation_event_ordering",
    "subtask010_mctaco_answer_generation_event_ordering",
    "subtask011_mctaco_wrong_answer_generation_event_ordering",
    "subtask012_mctaco_question_generation_absolute_timepoint",
    "subtask013_mctaco_answer_generation_absolute_timepoint",
    "subtask014_mctaco_wrong_answer_generation_absolute_timepoint",
    "subtask016_mctaco_answer_generation_frequency",
    "subtask020_mctaco_span_based_question",
    "subtask021_mctaco_grammatical_logical",
    "subtask022_cosmosqa_passage_inappropriate_binary",
    "subtask033_winogrande_answer_generation",
    "subtask036_qasc_topic_word_to_generate_related_fact",
    "subtask039_qasc_find_overlapping_words",
    "subtask041_qasc_answer_generation",
    "subtask047_misc_answering_science_questions",
    "subtask050_multirc_answerability",
    "subtask051_multirc_correct_answer_single_sentence",
]


@dataclass
class DataConfig:
    source: str
    """``natural_instructions`` or ``synthetic``; ``--data`` replaces either with the user's file."""
    pool_per_task: int
    test_per_task: int
    subtasks: list[str] = field(default_factory=list)
    definition: str = "full"
    """NI prompt = definition + input: ``full`` definition or its one-line ``instruction``."""
    max_prompt_chars: int = 1000
    """NI examples with a longer prompt (definition + input) are skipped; ~1000 chars ~ 250 tokens."""
    max_reference_words: int = 10
    seed: int = 0
    """Which examples are sampled (fixed across runs: the runs' seeds vary selection and training)."""


def _all_strategies() -> list[str]:
    from model.strategies import STRATEGIES
    return list(STRATEGIES)


@dataclass
class EvalConfig:
    name: str
    data: DataConfig
    model: str | None = None
    """Base model path; None = SmolLM2-135M-Instruct; ``tiny`` = ``model.tiny.make_tiny_model``."""
    budgets: list[float | int] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5, 1.0])
    """Fractions of the pool (floats) or numbers of examples (ints); 1.0 is the full pool."""
    strategies: list[str] = field(default_factory=_all_strategies)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    min_per_task: list[int] = field(default_factory=lambda: [1])
    metric: list[str] = field(default_factory=lambda: ["sequence_prob"])
    rounds: list[int] = field(default_factory=lambda: [1])
    score_max_new_tokens: int = 32
    """Greedy tokens when scoring the pool for task confidence."""
    eval_max_new_tokens: int = 32
    batch_size: int = 16
    """Generation / teacher-forcing batch size."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def smoke() -> EvalConfig:
    """CI: tiny model, synthetic data, every strategy, one seed; well under a minute on 2 cores."""
    return EvalConfig(
        name="smoke", model="tiny",
        data=DataConfig(source="synthetic", pool_per_task=8, test_per_task=3),
        budgets=[0.25, 1.0], seeds=[0],
        score_max_new_tokens=8, eval_max_new_tokens=8,
        train=TrainConfig(r=4, lora_alpha=8, epochs=2, batch_size=4, learning_rate=5e-3, max_length=64))


def small() -> EvalConfig:
    """20 NI subtasks on SmolLM2-135M-Instruct, sized for about an hour on a shared 2-core CPU.

    Measured there (6 processes on 2 cores, one torch thread): LoRA training ~40 tokens/s, so every
    choice below cuts tokens: the one-line task instruction instead of the full definition (~70
    instead of ~160 prompt tokens), 4 pool + 2 test examples per task, short references and outputs.
    min_per_task=1: with 4 pool examples per task, the default 5 would be the whole task and leave
    the weighting nothing to decide. One epoch at batch size 2 and lr 5e-4: twice the optimizer
    steps of batch 4 for the same compute (the smallest budget still gets only 2).
    """
    return EvalConfig(
        name="small",
        data=DataConfig(source="natural_instructions", subtasks=list(SMALL_SUBTASKS), definition="instruction",
                        pool_per_task=4, test_per_task=2, max_prompt_chars=500, max_reference_words=6),
        eval_max_new_tokens=12, score_max_new_tokens=12,
        train=TrainConfig(r=8, lora_alpha=16, epochs=1, batch_size=2, learning_rate=5e-4, max_length=160))


CONFIGS = {"smoke": smoke, "small": small}


def get_config(name: str) -> EvalConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r} (choose from {', '.join(CONFIGS)})")
    return CONFIGS[name]()
