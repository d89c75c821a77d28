"""Print the packages whose version differs from a uv.lock.

`lockdiff.py LOCK` reads `name==version` lines (pip freeze) on standard input and
compares them with LOCK (`bin/test --latest`); `lockdiff.py OLD NEW` compares two lock
files (`bin/upgrade-deps`).
"""

from __future__ import annotations

import re
import sys
import tomllib


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(path: str) -> dict[str, str]:
    with open(path, "rb") as handle:
        lock = tomllib.load(handle)
    return {
        normalise(package["name"]): str(package.get("version", ""))
        for package in lock.get("package", [])
    }


def frozen_versions(lines: list[str]) -> dict[str, str]:
    pins = (line.strip().partition("==") for line in lines)
    return {normalise(name): version for name, sep, version in pins if sep}


def main() -> None:
    before = locked_versions(sys.argv[1])
    if len(sys.argv) > 2:
        after = locked_versions(sys.argv[2])
    else:
        after = frozen_versions(sys.stdin.readlines())
    changes = [
        f"  {name}: {before.get(name, 'not locked')} -> {after.get(name, 'removed')}"
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name) and (len(sys.argv) > 2 or name in after)
    ]
    print("\n".join(changes) if changes else "  none")


if __name__ == "__main__":
    main()
