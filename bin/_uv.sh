# Shared by bin/*: uv, installed once into .tools/ from requirements/uv.txt (pinned and
# hash-checked). Sets ROOT, PY and UV and moves to the project's root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
export UV_PYTHON_DOWNLOADS=never   # use this machine's Python, never a downloaded one
if [ ! -x .tools/bin/uv ] || ! cmp -s requirements/uv.txt .tools/.installed-from; then
    echo "== installing uv from requirements/uv.txt into .tools/"
    "$PY" -m venv --clear .tools
    .tools/bin/python -m pip install --quiet --disable-pip-version-check \
        --require-hashes --no-deps -r requirements/uv.txt
    cp requirements/uv.txt .tools/.installed-from
fi
UV="$ROOT/.tools/bin/uv"
