"""ML core of the Weighted Task Diversity active-learning backend (no web code).

Scoring (batched generation + confidence metrics), selection strategies and the annotation queue,
LoRA training and adapter storage. Usable from Python and from ``python -m model``.
"""
