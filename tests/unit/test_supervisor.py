"""The supervisor's fork: a child exits with its body's status and never returns into
the supervisor's code."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

import pytest

from pgjobs.cli.supervisor import Forked, fork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def status_of(body: Callable[[], int]) -> int | None:
    child = Forked(fork(body))
    while (code := child.poll()) is None:
        time.sleep(0.01)
    return code


def exits_with_systemexit() -> int:
    sys.exit(3)


def raises() -> int:
    raise RuntimeError("boom")


def test_a_forked_child_exits_with_its_status() -> None:
    assert status_of(lambda: 0) == 0
    assert status_of(lambda: 5) == 5
    assert status_of(exits_with_systemexit) == 3
    assert status_of(raises) == 1


def test_a_forked_child_has_the_default_stop_signals() -> None:
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:

        def handler_is_default() -> int:
            return 0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 1

        assert status_of(handler_is_default) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
