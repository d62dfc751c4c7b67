"""The paper's comparison harness (``python -m model evaluate``): select with each strategy at several
budgets, LoRA-train on the selection, evaluate on a held-out split; see docs/evaluation.md."""
