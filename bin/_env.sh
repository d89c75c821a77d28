# Shared by bin/*: a local virtualenv (.venv) holding exactly the versions in uv.lock,
# with the project installed in it (editable). `uv sync --locked` makes .venv match the
# lock on every run (a no-op when it already does) and refuses to run when uv.lock no
# longer matches pyproject.toml. PGJOBS_VENV names another, ready environment instead
# (bin/test --latest builds a throwaway one).
source "$(dirname "${BASH_SOURCE[0]}")/_uv.sh"
if [ -z "${PGJOBS_VENV:-}" ]; then
    if ! "$UV" lock --check --quiet --python "$PY" 2>/dev/null; then
        echo "error: uv.lock does not match pyproject.toml; run bin/lock (or bin/upgrade-deps)" >&2
        exit 1
    fi
    # The first run installs everything quietly (about a minute): say so, step by step.
    if [ ! -x .venv/bin/python ]; then
        echo "== creating the virtualenv .venv (first run only)"
        "$UV" venv --quiet --python "$PY" .venv
        echo "== installing the packages locked in uv.lock into .venv (first run only, about a minute)"
    fi
    "$UV" sync --locked --quiet --extra dev --extra embedded --extra docs --python "$PY"
    export PATH="$ROOT/.venv/bin:$PATH"
else
    export PATH="$PGJOBS_VENV/bin:$PATH"
fi
