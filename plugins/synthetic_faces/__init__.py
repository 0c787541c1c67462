"""``synthetic-faces``: scenes with known geometry for ``facerecon eval synthetic``.

Implements the host hook ``facerecon_render_scene``: a face of a configured morphable model (a
catalogue name or a file, read by ``facelib.morphable``'s loaders, once per process) with random identity,
expression, multi-scale detail, albedo texture, SH light and a highlight drawn from a seed, rendered over
the face of a real photo (render.py; the detail and texture in detail.py). It offers no stage: the
evaluation, which may not import a face library, reaches the model through this hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facerecon.facelib.morphable import catalog
from facerecon.kernel.contract import check_image, hookimpl
from facerecon.kernel.contract.scenes import SyntheticScene


@hookimpl
def facerecon_render_scene(
    model: str | None, expressions: str | None, seed: int, photo: Any, landmarks: Any
) -> SyntheticScene:
    from .render import render_scene

    image = np.asarray(photo)
    check_image(image)
    entry = catalog.resolve(model, Path(expressions).expanduser() if expressions else None)
    return render_scene(catalog.load(entry), seed, image, np.asarray(landmarks, np.float64))
