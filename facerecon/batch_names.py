"""The output folder of each input of a batch (``facerecon reconstruct``), the same in every run and every
shard of the same inputs, and which input an earlier run wrote into a folder (resuming skips only the same
input, never another photo of the same name)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

BATCH_FILES = re.compile(r"(summary|failures)(-shard-\d+-of-\d+)?\.json|index\.html")
"""Names of the files a batch writes into its output folder itself (and ``--view``'s page)."""

_INPUT = re.compile(r'"input":\s*("(?:[^"\\]|\\.)*")')

WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?", re.IGNORECASE)
"""Names Windows cannot give a file or folder (``CON``, ``nul.x``, ...): a photo named so gets a ``_`` in
front too, so that results copied to (or written on) Windows keep their folder."""


def output_names(paths: list[Path]) -> list[str]:
    """One folder name per input: the file stem; ``<stem>_<suffix>`` where inputs share a stem
    (``x.png``, ``x.jpg``); and, where they share both (``a/x.png``, ``b/x.png``), ``_`` and 8 hex digits
    of the input's absolute path. Computed over all the inputs before a shard takes its part, so every
    shard names a photo alike. A name that is one of the batch's own files (a photo ``summary.json.jpg``)
    or hidden (``.x.png``) or reserved on Windows (``CON.jpg``) gets a ``_`` in front."""
    stems = Counter(p.stem for p in paths)  # linear in the inputs, also for 100k of them
    first = [f"{p.stem}_{p.suffix.lstrip('.')}" if stems[p.stem] > 1 else p.stem for p in paths]
    again = Counter(first)
    names = [f"{name}_{_digest(p)}" if again[name] > 1 else name for name, p in zip(first, paths, strict=True)]
    special = (BATCH_FILES, WINDOWS_RESERVED)
    return [f"_{name}" if name.startswith(".") or any(p.fullmatch(name) for p in special) else name for name in names]


def _digest(path: Path) -> str:
    return hashlib.sha1(str(path.absolute()).encode()).hexdigest()[:8]


def recorded_input(folder: Path, video: bool) -> str | None:
    """The input whose complete result ``folder`` holds (``result.json``'s ``input``, a video's
    ``video.json`` source path; "" when the file does not say), or None when it holds no complete result.
    A photo's result.json is read only as far as its first key (the writer puts ``input`` first)."""
    try:
        if video:
            data = json.loads((folder / "video.json").read_text(encoding="utf-8"))
            return str(data["source"]["path"]) if isinstance(data, dict) else ""
        with (folder / "result.json").open("rb") as file:
            head = file.read(4096).decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    found = _INPUT.search(head)
    return str(json.loads(found.group(1))) if found else ""


def same_input(recorded: str, path: Path) -> bool:
    """Whether an earlier run's ``recorded`` input (as it was given then) is ``path``: the same file where
    both exist; else (moved, or given relative to another working folder) the same file name."""
    if not recorded or recorded == str(path):
        return True
    try:
        return Path(recorded).samefile(path)
    except OSError:
        return Path(recorded).name == path.name
