"""Builds the viewer's JavaScript into the package when a wheel or an sdist is made.

Everything else is in pyproject.toml. ``outputs/viewer/static/viewer.bundle.js`` (three.js from npm plus
outputs/viewer/app.js, bundled by esbuild) is never committed; ``make viewer`` builds it in a checkout, and
this hook builds it (``npm ci && npm run build``, Node.js 18+) when a wheel or sdist is made without it or
with one older than its sources. An sdist carries the bundle, so a wheel built from the sdist needs no Node.js.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
BUNDLE = ROOT / "outputs" / "viewer" / "static" / "viewer.bundle.js"
SOURCES = [ROOT / "outputs" / "viewer" / "app.js", ROOT / "package.json", ROOT / "package-lock.json"]


def build_viewer(required: bool) -> None:
    fresh = BUNDLE.is_file() and all(not s.is_file() or s.stat().st_mtime <= BUNDLE.stat().st_mtime for s in SOURCES)
    if fresh:
        return
    npm = shutil.which("npm")
    if npm is None or not SOURCES[0].is_file():
        message = f"cannot build {BUNDLE.relative_to(ROOT)}: needs npm (Node.js 18+) and the sources {SOURCES[0].name}"
        if required and not BUNDLE.is_file():
            raise SystemExit(f"error: {message}; `facerecon view` cannot work without it")
        keeping = "keeping the older bundle" if BUNDLE.is_file() else "`facerecon view` will say so"
        print(f"warning: {message}; {keeping}")
        return
    if not (ROOT / "node_modules" / "three").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=ROOT, check=True)
    subprocess.run([npm, "run", "build"], cwd=ROOT, check=True)


class BuildPyWithViewer(build_py):
    def run(self) -> None:
        # An editable install reads the bundle from the source tree (make setup builds it first).
        build_viewer(required=not getattr(self, "editable_mode", False))
        super().run()


class SdistWithViewer(sdist):
    def run(self) -> None:
        build_viewer(required=True)
        super().run()


setup(cmdclass={"build_py": BuildPyWithViewer, "sdist": SdistWithViewer})
