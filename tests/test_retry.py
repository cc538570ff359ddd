"""Retry: full-jitter exponential backoff, and argument checks with a fix hint."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.errors import ValidationError
from dispatcher.retry import Retry


class Top:
    """An rng that always draws the top of the range: exposes the cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_defaults() -> None:
    assert Retry() == Retry(max_attempts=8, base=1.0, max_delay=3600.0)


def test_cap_doubles_per_attempt_until_max_delay() -> None:
    retry = Retry(base=2.0, max_delay=20.0)
    assert [retry.delay(n, Top()) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


def test_huge_attempt_numbers_stay_at_max_delay() -> None:
    assert Retry(max_delay=60.0).delay(100_000, Top()) == 60.0


def test_jitter_is_full_from_zero() -> None:
    rng = random.Random(7)
    delays = [Retry(base=10.0, max_delay=10.0).delay(1, rng) for _ in range(2000)]
    assert min(delays) < 0.5 and max(delays) > 9.5  # spread over the whole [0, cap]


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0.001, max_value=100.0))
def test_delay_is_within_bounds(attempt: int, base: float) -> None:
    retry = Retry(base=base, max_delay=base * 50)
    delay = retry.delay(attempt, random.Random(attempt))
    assert 0.0 <= delay <= min(retry.max_delay, base * 2 ** (attempt - 1))


@pytest.mark.parametrize(
    ("kwargs", "hint"),
    [
        ({"max_attempts": 0}, "max_attempts=1 for no retries"),
        ({"base": 0}, "try 1.0"),
        ({"base": -1.0}, "try 1.0"),
        ({"base": 10.0, "max_delay": 5.0}, "raise max_delay or lower base"),
        ({"max_attempts": 2.5}, "integer"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs: dict[str, float], hint: str) -> None:
    with pytest.raises(ValidationError) as info:
        Retry(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == "retry"
    assert hint in str(info.value)


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValidationError):
        Retry().delay(0)
