"""The report folder (``-o``) of ``facerecon eval`` and ``bench``: checked before any work, written whole.

A report folder holds one instrument's files and nothing else, as a ``reconstruct`` result folder holds
one photo's. Before an instrument runs, ``-o`` must be creatable, or an empty folder, or an earlier report
of the same instrument (its ``summary.json`` / ``bench.json`` names it under :data:`MARK`); anything else
is refused (:class:`OutputError`), so a run never writes into another program's folder, a ``reconstruct``
output or another instrument's report. The report is written into a staging folder beside ``-o`` and
moved into place once complete (``outputs.folder``'s staging and ``replace_dir``): a run killed while
writing leaves the earlier report as it was, and a report never mixes two runs' files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from facerecon.kernel.contract.errors import OutputError
from facerecon.outputs.folder import json_object, remove_stale_partials, replace_dir, staging_folder

MARK = "report"
"""The key of ``summary.json`` / ``bench.json`` that names the instrument that wrote the folder."""

REPORTS = {
    "eval landmarks": ("summary.json", "per_image.csv", "ced.png"),
    "eval rgbd": ("summary.json", "per_sample.csv"),
    "eval mesh": ("summary.json", "distances.npy", "heatmap.png"),
    "eval synthetic": ("summary.json", "per_scene.csv", "table.txt", "scenes"),
    "bench": ("bench.json", "bench.png"),
}
"""Each instrument's report files; the first holds :data:`MARK` (reports written before 0.16.0 have no
mark: a folder of only these files, whose first is a JSON object, is taken as one)."""


def check_report_folder(out: Path, report: str) -> None:
    """Raise :class:`OutputError` unless ``report``'s files may be written as folder ``out``."""
    names = REPORTS[report]
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"-o {out}: exists and is not a folder")
    if not out.exists():
        parent = out.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise OutputError(f"-o {out}: cannot make the folder there ({parent} is not a folder)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"-o {out}: cannot make the folder there ({parent} is not writable)")
        return
    if not os.access(out.parent, os.W_OK | os.X_OK):  # the report replaces the folder whole
        raise OutputError(f"-o {out}: cannot replace the folder ({out.parent} is not writable)")
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise OutputError(f"-o {out}: cannot read the folder ({exc.strerror or exc})") from None
    if not entries:
        return
    mark = json_object(out / names[0])
    if mark is not None and (mark.get(MARK) == report or (MARK not in mark and set(entries) <= set(names))):
        return
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    what = (
        f"a report of facerecon {mark[MARK]}"
        if mark is not None and MARK in mark
        else f"not a report of facerecon {report}"
    )
    raise OutputError(
        f"-o {out}: exists and is {what} (it holds {shown}); the report replaces its folder whole, so it is "
        "only written into a new or empty folder or over an earlier report of the same kind: choose another -o"
    )


def write_report_folder(out: Path, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Call ``write(folder)`` on a new staging folder beside ``out``, then put that folder in place of
    ``out`` (an earlier report there goes only then); the files written, under ``out``."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"-o {out}: cannot make the folder ({exc.strerror or exc})") from None
    remove_stale_partials(out.parent)
    staging = staging_folder(out)
    try:
        files = write(staging)
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / file.relative_to(staging) for file in files]
