"""A synthetic face-like scene with known multi-scale geometry, textured albedo, SH light and a specular
highlight, for testing the fine stage against ground truth (tests/test_sfs.py).

The image is formed independently of the solver's operators (no "inverse crime"): the surface is
evaluated on a 4x finer grid, its normals taken there by central differences, shaded, and each pixel
is the mean over its 4x4 sub-samples, as a camera integrates over a pixel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facerecon.geometry.shading import blobs, sh_shading, viewer_normals
from facerecon.geometry.shading import pixel_mean as _pixel_mean

__all__ = ["Scene", "make_scene", "viewer_normals"]


@dataclass
class Scene:
    image: np.ndarray  # (3, H, W) 0-255: albedo * shading + specular + noise
    shading: np.ndarray  # (3, H, W) the true diffuse shading (pixel means of the 4x supersampled surface)
    specular: np.ndarray  # (H, W) the true highlight, grey levels
    smooth: np.ndarray  # (H, W) height towards the viewer, pixels
    detail: np.ndarray  # (H, W) wrinkles + pores added to smooth
    wrinkles: np.ndarray  # (H, W) the coarse detail band alone
    pores: np.ndarray  # (H, W) the fine detail band alone
    albedo: np.ndarray  # (3, H, W) 0-255, with its own texture
    texture: np.ndarray  # (H, W) the albedo's high-frequency pattern (freckles, brow hair), 0..1
    albedo_avg: np.ndarray  # (3, H, W) the flat skin colour a segmenter would report
    mask: np.ndarray  # (H, W) bool, the face
    sh: np.ndarray  # (9, 3)


SUPERSAMPLING = 4

SCENE_LIGHT = np.zeros((9, 3))
"""The scene's SH shading coefficients (9, 3): ambient + a light from the upper left. Free coefficients, not
a physical key + ambient (its 3z²−1 term is negative), so the "key" light model cannot represent it exactly."""
SCENE_LIGHT[0] = 2.0
SCENE_LIGHT[1] = 0.4  # from above (y up)
SCENE_LIGHT[3] = -0.35  # from the left
SCENE_LIGHT[2] = 0.75  # towards the viewer
SCENE_LIGHT[6] = -0.12  # (bright enough to use the range, dim enough that the highlight does not clip)


def surface(yy: np.ndarray, xx: np.ndarray, size: int, pore_centres: np.ndarray):
    """(smooth, wrinkles, pores) heights towards the viewer, in pixels, at pixel coordinates (yy, xx)."""
    cx, cy = size / 2, size / 2
    r2 = ((xx - cx) / (0.42 * size)) ** 2 + ((yy - cy) / (0.47 * size)) ** 2
    smooth = 0.4 * size * np.sqrt(np.clip(1 - r2, 0, None))
    # Wrinkles: forehead creases, wavelength ~12 px, 0.5 px deep; pores: 0.2 px pits, sigma 0.8 px.
    forehead = np.exp(-((yy - 0.22 * size) ** 2) / (2 * (0.05 * size) ** 2))
    wrinkles = -0.5 * forehead * np.clip(np.sin(2 * np.pi * yy / 12.0), 0, None) ** 2
    pores = -0.2 * blobs(yy, xx, pore_centres, 0.8)
    return smooth, wrinkles, pores


def pixel_mean(fine: np.ndarray) -> np.ndarray:
    """(..., H*k, W*k) -> (..., H, W): the mean over each pixel's k x k sub-samples."""
    return _pixel_mean(fine, SUPERSAMPLING)


def make_scene(size: int = 160, seed: int = 0, light: np.ndarray | None = None) -> Scene:
    """The scene; ``light`` (9, 3) SH shading coefficients replace its own light (ambient and a key from
    the upper left, ``SCENE_LIGHT``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(float)
    cx, cy = size / 2, size / 2
    r2 = ((xx - cx) / (0.42 * size)) ** 2 + ((yy - cy) / (0.47 * size)) ** 2
    mask = r2 < 0.85
    cheeks = (np.abs(xx - cx) > 0.15 * size) & (yy > 0.55 * size) & (yy < 0.78 * size)
    pore_centres = np.column_stack([rng.uniform(0.55, 0.78, 500) * size, rng.uniform(0.1, 0.9, 500) * size])
    pore_centres = pore_centres[cheeks[pore_centres[:, 0].astype(int), pore_centres[:, 1].astype(int)]]
    # Each pixel's height is the mean over its area (what its image value can tell about).
    k = SUPERSAMPLING
    fine_y, fine_x = (np.mgrid[: size * k, : size * k] + 0.5) / k - 0.5
    fine_surface = surface(fine_y, fine_x, size, pore_centres)
    smooth, wrinkles, pores = (pixel_mean(h) for h in fine_surface)
    detail = wrinkles + pores
    # Albedo: skin with freckles (dark spots) across the nose and brow hair (dark strokes), away from the
    # wrinkles (forehead) and pores (cheeks) so that each effect can be measured in its own region.
    freckle_centres = np.column_stack([rng.uniform(0.45, 0.6, 40) * size, rng.uniform(0.4, 0.6, 40) * size])
    freckles = np.clip(blobs(yy, xx, freckle_centres, 1.0), 0, 1)
    brows = np.zeros((size, size))
    for side in (-1, 1):
        for _ in range(25):
            x0 = cx + side * rng.uniform(0.1, 0.3) * size
            y0 = 0.4 * size + rng.uniform(-2, 2)
            for t in np.linspace(0, 4, 9):
                brows[int(y0 - t * 0.5), int(x0 + side * t)] = 1.0
    texture = np.clip(freckles + brows, 0, 1)
    skin = np.array([205.0, 150.0, 125.0])
    # Freckles and hair are brown: they darken blue and green more than red (real pigment), so they
    # change the skin's chromaticity as well as its brightness.
    pigment = np.array([0.35, 0.5, 0.6])
    albedo = skin[:, None, None] * (1 - pigment[:, None, None] * texture[None])
    albedo_avg = np.broadcast_to(skin[:, None, None], albedo.shape).copy()
    # Light: ambient + from the upper left; shading from the true normals.
    sh = SCENE_LIGHT.copy() if light is None else np.asarray(light, np.float64)
    normals = viewer_normals(sum(fine_surface), 1.0 / k)
    shading = pixel_mean(sh_shading(normals, sh))
    # A specular highlight over the forehead: Blinn-Phong with the half vector between light and view.
    half = np.array([-0.2, 0.3, 1.0])
    half /= np.linalg.norm(half)
    specular = pixel_mean(40.0 * np.clip(normals @ half, 0, 1) ** 40)
    image = albedo * shading + specular[None]
    image = image + rng.normal(0, 0.5, image.shape)
    return Scene(
        image=np.clip(image, 0, 255),
        shading=shading,
        specular=specular,
        smooth=smooth,
        detail=detail,
        wrinkles=wrinkles,
        pores=pores,
        albedo=albedo,
        texture=texture,
        albedo_avg=albedo_avg,
        mask=mask,
        sh=sh,
    )
