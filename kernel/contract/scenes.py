"""The record of a synthetic scene with known geometry: what a ``facerecon_render_scene`` hook returns
(the ``synthetic-faces`` plugin) and ``facerecon eval synthetic`` scores the pipeline against.

Every map is on the photo's pixel grid (row = y, column = x, pixel centres at integers). Depths are in
the mesh frame of :mod:`.records` (z away from the camera, pixels of the orthographic camera); detail
bands are > 0 where the surface is deeper (a groove or a pit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facerecon.kernel.contract.errors import RecordError


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A rendered face and its ground truth.

    image: uint8 (H, W, 3) RGB, the photo the pipeline sees.
    depth: float64 (H, W) the true surface's z (px) = smooth + wrinkles + pores; NaN off the face.
    smooth: float64 (H, W) the morphable model's surface alone (px); NaN off the face.
    wrinkles, pores: float64 (H, W) the two detail bands (px, > 0 deeper); 0 off the face.
    texture: float64 (H, W) the albedo's own relative change (-0.05 = 5 % darker) that is NOT geometry.
    mask: bool (H, W) the pixels to score (rendered skin: no eyes, brows, lips, nostrils, no seam).
    mm_per_px: the camera's scale: millimetres of the face per pixel (depths x mm_per_px = mm).
    meta: JSON-ready facts (seed, photo, pose, lighting, counts of wrinkles and pores).
    """

    image: np.ndarray
    depth: np.ndarray
    smooth: np.ndarray
    wrinkles: np.ndarray
    pores: np.ndarray
    texture: np.ndarray
    mask: np.ndarray
    mm_per_px: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise RecordError(f"scene image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        grid = image.shape[:2]
        for name in ("depth", "smooth", "wrinkles", "pores", "texture", "mask"):
            value = np.asarray(getattr(self, name))
            if value.shape != grid:
                raise RecordError(f"scene {name} must be on the image's grid {grid}, got {value.shape}")
            value = value.astype(bool if name == "mask" else np.float64)
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        if not (np.isfinite(self.mm_per_px) and self.mm_per_px > 0):
            raise RecordError(f"scene mm_per_px must be > 0, got {self.mm_per_px}")
