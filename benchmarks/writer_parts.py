"""CPU time per photo of the output writers' parts, in one process with the models warm.

    python benchmarks/writer_parts.py [--photos 20]

Runs the coarse-only pipeline on the first LFPW photos, writes one warm-up folder, then times
``write_outputs`` on every photo with ``time.process_time()`` around its parts (the texture bake, the mesh
files, the preview's render and PNG). Prints one JSON line of milliseconds per photo. It imports whichever
facerecon the interpreter has: ``benchmarks/bench_writers.py --parts`` runs it with an older checkout's
venv too (parts that checkout lacks are left out).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image
from facerecon.outputs import folder

SPENT: collections.defaultdict[str, float] = collections.defaultdict(float)


def timed(module: Any, name: str, label: str) -> None:
    """Replace ``module.name`` with a wrapper that adds its CPU time to SPENT[label] (if it exists)."""
    function: Callable[..., Any] | None = getattr(module, name, None)
    if function is None:
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            SPENT[label] += time.process_time() - start

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=20)
    args = parser.parse_args()
    data = shared_data_dir()
    assert data is not None, "needs ../shared/data (or $FACERECON_SHARED_DATA)"
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))[: args.photos]
    timed(folder, "bake_texture", "texture_bake")
    timed(folder, "write_mesh", "mesh_files")
    timed(folder, "render_preview", "preview_render")
    timed(folder, "png_bytes", "preview_png")
    with Pipeline.from_config(PipelineConfig(refiners=())) as pipeline:
        pipeline(load_image(photos[0]))  # models warm
        start = time.process_time()
        runs = []
        for path in photos:
            image = load_image(path)
            runs.append((path, image, pipeline(image)))
        stages = (time.process_time() - start) / len(photos)
        ids = pipeline.plugin_ids()
    out = Path(tempfile.mkdtemp(prefix="writer-parts-"))
    try:
        folder.write_outputs(runs[0][2], runs[0][1], out / "warm-up", source=str(runs[0][0]))
        SPENT.clear()
        start = time.process_time()
        for path, image, rec in runs:
            folder.write_outputs(rec, image, out / path.stem, source=str(path), plugins=ids)
        writing = (time.process_time() - start) / len(photos)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    row = {"photos": len(photos), "stages_ms": round(1000 * stages, 1), "writing_ms": round(1000 * writing, 1)}
    row |= {f"{label}_ms": round(1000 * spent / len(photos), 1) for label, spent in sorted(SPENT.items())}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
