"""Option checks shared by the ML core's commands (``score``, ``select``, ``report``, ``evaluate``).

A bad option value raises ``UsageError`` with one line naming the option; ``model.cli`` prints it
and exits 2. This module imports nothing of the CLIs, so both import it without a circle.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable

from model.budget import Budget


class UsageError(ValueError):
    """A bad option value: reported like bad input (one line, exit 2)."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line and exit 2
        raise UsageError(message)


def integer(option: str, value: str, minimum: int = 0) -> int:
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--{option}: not an integer: {value!r}") from None
    if n < minimum:
        raise UsageError(f"--{option}: must be >= {minimum}, got {n}")
    return n


def integers(option: str, values: Iterable[str], minimum: int = 0) -> list[int]:
    return [integer(option, v, minimum) for v in values]


def one_of(option: str, value: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise UsageError(f"--{option}: unknown value {value!r} (choose from {', '.join(allowed)})")
    return value


def choices(option: str, values: Iterable[str], allowed: Iterable[str]) -> list[str]:
    return [one_of(option, v, allowed) for v in values]


def budget(option: str, value: str) -> Budget:
    try:
        return Budget.parse(value)
    except ValueError as e:
        raise UsageError(f"--{option}: {e}") from None
