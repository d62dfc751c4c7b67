"""The annotation budget: a count of prompts (int >= 1) or a fraction of the pool (0 < f <= 1).

One type, parsed once wherever a budget comes in (the CLIs, the harness, a project's
``extra_params``), and one rounding rule for a fraction f of a pool of n prompts:

    resolve(n) = min(n, ceil(f * n))        a count B: min(n, B)

Rounding up, because a fraction states a coverage ("annotate a quarter of the tasks"): rounding up
never annotates less than asked and never resolves a positive fraction to 0 prompts (no special
case for tiny pools), while Python's ``round`` rounds half to even (0.25 of 10 -> 2, 0.25 of 14 -> 4).
f * n is computed on the decimal the user wrote (0.07 * 100 = 7, where binary floats give
7.000000000000001 and so 8 after ``ceil``).

``1`` is a count (one prompt) and ``1.0`` a fraction (the whole pool): an int and a float differ here.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction

RULE = "a count B gives min(B, n); a fraction f gives min(n, ceil(f * n)) (rounded up)"
"""The rounding rule in words, for help texts."""


def number(text: str) -> int | float:
    """The text of a budget as a number: "16" -> 16 (a count), "0.05" or "1.0" -> a float (a fraction).
    Only the conversion; ``Budget`` checks the range."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"not a number: {text!r}") from None


@dataclass(frozen=True)
class Budget:
    value: int | float
    """An int >= 1 (prompts) or a float 0 < f <= 1 (fraction of the pool)."""

    def __post_init__(self):
        v = self.value
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"must be an integer >= 1 or a fraction 0 < f <= 1, got {v!r}")
        if isinstance(v, numbers.Integral):
            if v < 1:
                raise ValueError(f"a count must be >= 1, got {v}")
            object.__setattr__(self, "value", int(v))
        elif not (math.isfinite(v) and 0 < v <= 1):
            raise ValueError(f"a fraction must be 0 < f <= 1, got {v!r}")
        else:
            object.__setattr__(self, "value", float(v))

    @classmethod
    def parse(cls, value: str | int | float | Budget) -> Budget:
        """A budget from text ("16", "0.05") or a number; ValueError with a one-line reason."""
        if isinstance(value, Budget):
            return value
        return cls(number(value) if isinstance(value, str) else value)

    @property
    def is_fraction(self) -> bool:
        return isinstance(self.value, float)

    def resolve(self, pool_size: int) -> int:
        """The number of prompts for a pool of ``pool_size`` (see the module docstring)."""
        if isinstance(pool_size, bool) or not isinstance(pool_size, numbers.Integral) or pool_size < 0:
            raise ValueError(f"pool size must be a non-negative integer, got {pool_size!r}")
        if not self.is_fraction:
            return min(self.value, int(pool_size))
        return min(int(pool_size), math.ceil(Fraction(repr(self.value)) * int(pool_size)))

    def __str__(self) -> str:
        return repr(self.value)
