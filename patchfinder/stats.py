"""Statistics on counts, in pure numpy: rates always travel with their n and an interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """`successes` out of `n`, with a Wilson score interval [low, high] at 95 %."""

    successes: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    def __str__(self) -> str:
        if not self.n:
            return "n/a (n=0)"
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] (n={self.n})"


def wilson_interval(
    successes: np.ndarray | int, n: np.ndarray | int, *, z: float = Z95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial proportions, elementwise.

    It stays inside [0, 1] and is honest at small n and at rates of 0 or 1, where the
    normal approximation collapses to a zero-width interval. n = 0 gives (nan, nan).

    Args:
        successes, n: broadcastable integer arrays, 0 <= successes <= n.
    Returns:
        (low, high), float arrays of the broadcast shape.
    """
    k = np.asarray(successes, dtype=np.float64)
    total = np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(k > total):
        raise ValueError(f"Need 0 <= successes <= n; Received: successes={successes}, n={n}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / total
        denominator = 1.0 + z**2 / total
        centre = (p + z**2 / (2 * total)) / denominator
        half = z * np.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
        low, high = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    return low, high


def rate(successes: int, n: int) -> Rate:
    """A `Rate` with its Wilson interval."""
    low, high = wilson_interval(successes, n)
    return Rate(int(successes), int(n), float(low), float(high))
