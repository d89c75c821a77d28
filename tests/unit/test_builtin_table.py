"""The built-in types: each table entry names the module that runs it, and an App loads
none of those modules (httpx, jinja2, cryptography) until a job of the type runs."""

from __future__ import annotations

import importlib
import subprocess
import sys

from pgjobs.app import App
from pgjobs.types.builtin import MODULES


def test_each_entry_names_the_module_of_its_type() -> None:
    for type_name, module_name in MODULES.items():
        module = importlib.import_module(f"pgjobs.types.{module_name}")
        assert type_name == module.TYPE
    app = App(database_url="postgresql://nobody@127.0.0.1:1/none")
    assert set(MODULES) <= set(app.handlers)
    assert all(app.handlers[name].is_async for name in MODULES)


def test_creating_an_app_imports_no_type_module() -> None:
    heavy = [f"pgjobs.types.{name}" for name in MODULES.values()] + ["httpx", "jinja2"]
    probe = (
        "import sys; from pgjobs import App; App(database_url='postgresql://x@127.0.0.1:1/x'); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
