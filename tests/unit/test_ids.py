"""Job ids: version 7, strictly increasing within a process, and distinct across a fork
(the random bits are read from os.urandom in blocks, which a child must not share)."""

from __future__ import annotations

import os
import uuid

from pgjobs.ids import uuid7, uuid7_many


def test_ids_are_version_7_and_strictly_increase() -> None:
    ids = uuid7_many(10_000)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_the_parents_random_bits() -> None:
    uuid7()  # the parent now holds a block of random bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids to the parent, then leave at once
        os.close(read)
        os.write(write, "".join(i.hex for i in uuid7_many(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parent = [i.hex for i in uuid7_many(50)]
    child_ids = [child[n : n + 32] for n in range(0, len(child), 32)]
    # The random tail (the last 16 hex digits hold rand_b) never matches the parent's.
    assert len(child_ids) == 50
    assert not {c[-15:] for c in child_ids} & {p[-15:] for p in parent}
