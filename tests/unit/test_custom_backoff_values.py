"""What a handler's backoff function may return: seconds or a timedelta, or None; any
other value means "use the job's own backoff", logged once per job type."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from pgjobs.backoff import CustomBackoff

LIMIT_MS = 10 * 365 * 86_400_000


def returning(value: Any) -> CustomBackoff:
    return CustomBackoff("report", lambda attempt, error: value)


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (0, 0),
        (1, 1000),
        (0.25, 250),
        (2.0004, 2000),
        (Fraction(3, 2), 1500),
        (Decimal("1.5"), 1500),
        (timedelta(minutes=2), 120_000),
        (timedelta(0), 0),
        (None, None),
    ],
)
def test_delays_it_accepts(value: Any, ms: int | None) -> None:
    assert returning(value).delay_ms(1, ValueError(), limit_ms=LIMIT_MS) == ms


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -0.001,
        float("nan"),
        float("inf"),
        float("-inf"),
        1e300,
        10 * 365 * 86_400 + 1,  # more than ten years
        timedelta(seconds=-1),
        timedelta.max,
        True,
        "5",
        [1000],
        object(),
        Decimal("NaN"),
        10**400,
    ],
)
def test_values_that_fall_back(value: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="pgjobs.backoff")
    backoff = returning(value)
    assert backoff.delay_ms(1, ValueError(), limit_ms=LIMIT_MS) is None
    assert backoff.delay_ms(2, ValueError(), limit_ms=LIMIT_MS) is None
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("backoff of job type 'report' returned ")
    assert "not a number of seconds from 0 to 315360000" in message
    assert len(message) < 400


def test_a_value_whose_repr_fails_is_still_reported(caplog: pytest.LogCaptureFixture) -> None:
    class Odd:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    caplog.set_level(logging.ERROR, logger="pgjobs.backoff")
    assert returning(Odd()).delay_ms(1, ValueError(), limit_ms=LIMIT_MS) is None
    assert "returned a Odd, not a number" in caplog.records[0].getMessage()


def test_the_function_sees_the_attempt_and_the_error() -> None:
    seen: list[tuple[int, BaseException]] = []
    error = TimeoutError("job exceeded 100 ms")

    def record(attempt: int, exc: BaseException) -> float:
        seen.append((attempt, exc))
        return 3

    assert CustomBackoff("t", record).delay_ms(4, error, limit_ms=LIMIT_MS) == 3000
    assert seen == [(4, error)]
