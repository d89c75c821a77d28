"""Time-ordered job ids (UUID version 7, RFC 9562).

Ids generated in one process strictly increase, so jobs created in one batch keep
their order when they share a `run_at`. Within one millisecond a 12-bit counter (the
`rand_a` field, RFC 9562 method 1) orders them; the clock is never pushed ahead of
real time except for the rare burst of more than 4,096 ids in one millisecond.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from array import array
from collections.abc import Iterator

_lock = threading.Lock()
_last_ms = 0
_counter = 0
# Random bits come from os.urandom in blocks, read as 64-bit words: one system call per
# id was a third of the time `App.build` takes (create_many builds 20,000 jobs in one
# call), and slicing bytes per id cost another tenth.
_RANDOM_BLOCK = 4096
_words: Iterator[int] = iter(())
_VERSION_AND_VARIANT = 0x7 << 76 | 0b10 << 62
_RAND_B = 0x3FFF_FFFF_FFFF_FFFF
_UNKNOWN = uuid.SafeUUID.unknown
_new = object.__new__
_set = object.__setattr__


def _random_word() -> int:
    """64 random bits from the current block of os.urandom output (call holding `_lock`)."""
    global _words
    word = next(_words, None)
    if word is None:
        _words = iter(array("Q", os.urandom(_RANDOM_BLOCK)))
        word = next(_words)
    return word


def _forget_random_in_child() -> None:
    # A forked child must not hand out the random bits its parent holds (same ids).
    global _words
    _words = iter(())


os.register_at_fork(after_in_child=_forget_random_in_child)


def _from_int(value: int) -> uuid.UUID:
    """`uuid.UUID(int=value)` for a value known to fit: the constructor's argument
    checks were most of the cost of an id. (A UUID is its `int` and `is_safe` slots.)"""
    made: uuid.UUID = _new(uuid.UUID)
    _set(made, "int", value)
    _set(made, "is_safe", _UNKNOWN)
    return made


def uuid7() -> uuid.UUID:
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _counter = now_ms, _random_word() & 0x3F
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms, _counter = _last_ms + 1, 0
        ms, counter = _last_ms, _counter
        rand_b = _random_word() & _RAND_B
    return _from_int((ms & 0xFFFF_FFFF_FFFF) << 80 | _VERSION_AND_VARIANT | counter << 64 | rand_b)


def uuid7_many(count: int) -> list[uuid.UUID]:
    return [uuid7() for _ in range(count)]
