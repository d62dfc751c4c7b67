"""Held-out metrics: exact match and ROUGE-L F1 of greedy outputs, per-token NLL of references,
and the macro average over tasks (every task weighs the same, however many test rows it has).
"""
from __future__ import annotations

import math
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

METRIC_NAMES = ("nll", "exact_match", "rouge_l")
LOWER_IS_BETTER = {"nll": True, "exact_match": False, "rouge_l": False}

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: 'Yes.' and 'yes' count as the same answer."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference."""
    pred = normalize(prediction)
    return float(any(pred == normalize(r) for r in references))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence length, O(len(a) * len(b)) time, O(len(b)) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on lowercased whitespace tokens (no stemming, punctuation kept as written)."""
    pred, ref = prediction.lower().split(), reference.lower().split()
    if not pred or not ref:
        return float(pred == ref)  # two empty strings agree; one empty side has no overlap
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_rouge_l(prediction: str, references: Sequence[str]) -> float:
    return max(rouge_l(prediction, r) for r in references)


def mean_nll(token_logprobs: np.ndarray) -> float:
    """Mean negative log-likelihood per reference token (nats)."""
    return float(-np.mean(token_logprobs))


def per_task_means(tasks: Iterable, values: Iterable[float]) -> dict:
    """task -> mean of its values, tasks in sorted order (labels as given)."""
    by_task: dict = defaultdict(list)
    for task, value in zip(tasks, values):
        by_task[task].append(value)
    return {task: float(np.mean(by_task[task])) for task in sorted(by_task, key=str)}


def macro_average(per_task: dict) -> float:
    """Unweighted mean over tasks."""
    if not per_task:
        raise ValueError("no tasks to average")
    value = float(np.mean(list(per_task.values())))
    if not math.isfinite(value):
        raise ValueError(f"macro average is not finite: {per_task}")
    return value


def evaluate_outputs(tasks: Sequence, predictions: Sequence[str], references: Sequence[Sequence[str]],
                     reference_logprobs: Sequence[np.ndarray]) -> dict:
    """Per-task and macro metrics of one model on the test rows.

    ``references[i]`` lists row i's acceptable outputs (the training reference first);
    ``reference_logprobs[i]`` are the teacher-forced token log-probs of that first reference.
    """
    per_example = {
        "nll": [mean_nll(lp) for lp in reference_logprobs],
        "exact_match": [exact_match(p, refs) for p, refs in zip(predictions, references)],
        "rouge_l": [best_rouge_l(p, refs) for p, refs in zip(predictions, references)],
    }
    per_task = {name: per_task_means(tasks, values) for name, values in per_example.items()}
    return {"macro": {name: macro_average(per_task[name]) for name in METRIC_NAMES}, "per_task": per_task}
