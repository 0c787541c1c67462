"""The rings of docs/architecture.md hold: import-linter's contracts (pyproject.toml) are kept by the
tree, and they catch a plugin that reaches into the host."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, str(ROOT / "scripts" / "lint_imports.py")]

pytestmark = pytest.mark.skipif(
    shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
    reason="import-linter is not installed (pip install -e '.[dev]')",
)


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LINT, "--root", str(root)], capture_output=True, text=True, timeout=300, check=False)


def _copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for folder in ("facerecon", "kernel", "plugins", "services", "geometry", "facelib", "outputs", "evaluation"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_tree_keeps_every_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _lint_with(tmp_path: Path, module: str, line: str) -> str:
    """The linter's report on a copy of the tree where ``module`` (a path under plugins/) gains ``line``."""
    tree = _copy_tree(tmp_path)
    source = tree / "plugins" / module
    source.write_text(source.read_text() + f"\n{line}  # noqa: E402,F401\n")
    result = _lint(tree)
    assert result.returncode != 0
    return " ".join(result.stdout.split())


def test_a_plugin_importing_the_host_breaks_the_plugin_rule(tmp_path):
    report = _lint_with(tmp_path, "laplace.py", "from facerecon.kernel import Pipeline")
    assert "plugins and face libraries import the contract" in report and "BROKEN" in report
    assert "facerecon.plugins.laplace -> facerecon.kernel" in report


def test_a_plugin_importing_another_entry_point_breaks_independence(tmp_path):
    report = _lint_with(tmp_path, "fit3dmm.py", "from facerecon.plugins import landmark_mesh")
    assert "no plugin entry point imports another BROKEN" in report
