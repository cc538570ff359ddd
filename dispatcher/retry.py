"""How often, and how far apart, a failing handler is retried."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from dispatcher.errors import ValidationError


class _Uniform(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with full jitter.

    Full jitter (a uniform draw between 0 and the exponential cap) spreads the retries
    of many deliveries that failed together, so a recovering endpoint is not hit by a
    synchronized wave.
    """

    max_attempts: int = 8
    base: float = 1.0
    max_delay: float = 3600.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValidationError(
                "retry", f"max_attempts must be an integer, got {self.max_attempts!r}"
            )
        if self.max_attempts < 1:
            raise ValidationError(
                "retry",
                f"max_attempts must be at least 1, got {self.max_attempts}; "
                "use max_attempts=1 for no retries",
            )
        if not self.base > 0:
            raise ValidationError(
                "retry", f"base must be a positive number of seconds, got {self.base!r}; try 1.0"
            )
        if not self.max_delay >= self.base:
            raise ValidationError(
                "retry",
                f"max_delay ({self.max_delay!r}) must be >= base ({self.base!r}); "
                "raise max_delay or lower base",
            )

    def delay(self, attempt: int, rng: _Uniform = random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValidationError("retry", f"attempt numbers start at 1, got {attempt}")
        # Cap the exponent first: 2 ** 10_000 as a float overflows.
        exponent = min(attempt - 1, 1024)
        try:
            cap = min(self.max_delay, self.base * 2.0**exponent)
        except OverflowError:
            cap = self.max_delay
        return rng.uniform(0.0, cap)
