"""worker_app's handlers from a module that starts a thread when imported (as some
monitoring clients do): `--processes N` must then start its workers as new
interpreters, since a fork would leave them without that thread."""

from __future__ import annotations

import threading

from worker_app import app

_stop = threading.Event()
threading.Thread(target=_stop.wait, name="import-time-thread", daemon=True).start()

__all__ = ["app"]
