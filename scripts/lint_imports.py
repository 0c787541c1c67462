"""Check the import-linter contracts of pyproject.toml (the rings of docs/architecture.md).

import-linter reads packages from disk, but facerecon's folders are installed under one namespace
(``facerecon.kernel`` = ``kernel/``, ... : pyproject's ``package-dir``). This assembles that layout in a
temporary folder (copies of the sources) and runs ``lint-imports`` on it. Used by ``make lint``.

    python scripts/lint_imports.py [--root SOURCE_TREE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the source tree to check (default: this one)")
    root = parser.parse_args(argv).root.resolve()
    with open(root / "pyproject.toml", "rb") as file:
        package_dirs: dict[str, str] = tomllib.load(file)["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="facerecon-lint-") as tmp:
        for package, folder in sorted(package_dirs.items()):  # "facerecon" before "facerecon.kernel"
            shutil.copytree(
                root / folder,
                Path(tmp, *package.split(".")),
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                dirs_exist_ok=True,
            )
        env = {**os.environ, "PYTHONPATH": tmp}
        lint = Path(sys.executable).with_name("lint-imports")
        command = [str(lint), "--no-cache", str(root / "pyproject.toml")]
        return subprocess.run(command, cwd=tmp, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
