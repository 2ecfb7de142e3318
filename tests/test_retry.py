"""Retry policy: pure backoff bounds, and which failures retry at all.

``compute_backoff`` and ``retry_delay_s`` take their random source as a
parameter, so these tests need no server and no waiting.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamq.retry import Retry, compute_backoff, retry_delay_s

attempts = st.integers(min_value=1, max_value=2_000)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=0, max_value=1, exclude_max=True)


@given(attempt=attempts, base=seconds, cap=seconds, r=unit)
def test_backoff_stays_within_full_jitter_bounds(
    attempt: int, base: float, cap: float, r: float
) -> None:
    """0 <= delay <= min(cap, base * 2**(attempt-1)) for any attempt, even huge ones.

    Past attempt 63 the exponent is clamped (2**62 * base exceeds any cap),
    so the bound is computed here without overflow: a float power that
    overflowed would raise OverflowError or give inf/nan.
    """
    delay = compute_backoff(attempt, base, cap, rand=lambda: r)
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 1023)) if base else 0.0
    assert math.isfinite(delay)
    assert 0 <= delay <= ceiling
    if attempt <= 63:  # below the clamp the delay is exactly the jittered ceiling
        assert delay == pytest.approx(ceiling * r)


@given(attempt=attempts, base=seconds, cap=seconds)
def test_backoff_with_the_default_random_source_is_bounded(
    attempt: int, base: float, cap: float
) -> None:
    delay = compute_backoff(attempt, base, cap)
    assert 0 <= delay <= min(cap, base * 2.0 ** min(attempt - 1, 1023))


def test_backoff_is_exponential_up_to_the_cap() -> None:
    """With the jitter at its top, the delay doubles per attempt until the cap."""
    top = [compute_backoff(a, 0.5, 10.0, rand=lambda: 1.0) for a in range(1, 8)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert compute_backoff(3, 0.5, 10.0, rand=lambda: 0.0) == 0.0
    assert compute_backoff(3, 0.5, 10.0, rand=lambda: 0.25) == 0.5


def test_attempt_below_one_is_treated_as_the_first() -> None:
    assert compute_backoff(0, 2.0, 100.0, rand=lambda: 1.0) == 2.0
    assert compute_backoff(-5, 2.0, 100.0, rand=lambda: 1.0) == 2.0


def delay(exc: BaseException | None, attempt: int = 1, **options: object) -> float | None:
    kwargs: dict[str, object] = {
        "max_retries": 3,
        "retry_on": (Exception,),
        "backoff_base_s": 1.0,
        "backoff_cap_s": 60.0,
        "rand": lambda: 1.0,
    }
    kwargs.update(options)
    return retry_delay_s(exc, attempt=attempt, **kwargs)  # type: ignore[arg-type]


def test_retry_with_a_delay_wins_over_the_backoff() -> None:
    assert delay(Retry(delay=5), attempt=3) == 5
    assert delay(Retry(delay=0)) == 0
    # ... and over retry_on: asking for a retry is explicit.
    assert delay(Retry(delay=7), retry_on=(KeyError,)) == 7


def test_retry_without_a_delay_uses_the_backoff() -> None:
    assert delay(Retry(), attempt=3) == 4.0
    assert delay(Retry(), attempt=3, retry_on=(KeyError,)) == 4.0


def test_retry_on_filters_exceptions_by_type() -> None:
    assert delay(ValueError("x"), retry_on=(ValueError,)) == 1.0
    assert delay(UnicodeDecodeError("utf-8", b"", 0, 1, "r"), retry_on=(ValueError,)) == 1.0
    assert delay(KeyError("x"), retry_on=(ValueError,)) is None
    assert delay(KeyError("x"), retry_on=()) is None


def test_timeouts_retry_whatever_retry_on_says() -> None:
    """A timeout has no exception (None): it is always retryable."""
    assert delay(None, retry_on=()) == 1.0
    assert delay(None, attempt=2, retry_on=(KeyError,)) == 2.0


def test_attempt_past_max_retries_fails() -> None:
    """``attempt`` counts from 1: max_retries 3 means attempts 1..4, retries after 1..3."""
    assert delay(ValueError(), attempt=3, max_retries=3) is not None
    assert delay(ValueError(), attempt=4, max_retries=3) is None
    assert delay(Retry(delay=1), attempt=4, max_retries=3) is None
    assert delay(None, attempt=4, max_retries=3) is None
    assert delay(ValueError(), attempt=1, max_retries=0) is None


@given(
    attempt=st.integers(min_value=1, max_value=20),
    max_retries=st.integers(min_value=0, max_value=20),
    kind=st.sampled_from(["timeout", "matching", "other", "retry", "retry-delay"]),
)
def test_retry_decision_matches_the_rules(attempt: int, max_retries: int, kind: str) -> None:
    exc: BaseException | None = {
        "timeout": None,
        "matching": ValueError(),
        "other": KeyError(),
        "retry": Retry(),
        "retry-delay": Retry(delay=3),
    }[kind]
    got = delay(exc, attempt=attempt, max_retries=max_retries, retry_on=(ValueError,))
    if attempt > max_retries or kind == "other":
        assert got is None
    elif kind == "retry-delay":
        assert got == 3
    else:
        assert got is not None and 0 <= got <= min(60.0, 2.0 ** (attempt - 1))


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf, -math.inf])
def test_retry_rejects_a_bad_delay(bad: float) -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        Retry(delay=bad)
