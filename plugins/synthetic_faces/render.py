"""A face of a morphable model rendered over the face of a real photo, with its ground truth.

1. Shape: random identity (N(0, σ²) per component, clipped at 2.5 σ) and expression (N(0, (0.4 σ)²),
   clipped at σ) of the model; posed by the scaled orthographic camera that puts its 68 iBUG landmarks
   on the photo's (``geometry.transforms.orthographic_pose``): the camera, and the pixels per mm.
2. Surface: the posed mesh Loop-subdivided twice (smooth, through the model's vertices) and z-buffered on
   a 2x supersampled grid around it (``geometry.raster``), plus the wrinkle and pore bands (detail.py).
3. Image, in linear light as a camera sees it: albedo = the photo's skin colour (sRGB-decoded, strongly
   blurred, from the skin the face covers) x (1 + T), T the albedo texture (detail.py); diffuse light =
   2nd-order SH of an ambient term, a key light from above-front and a fill (``geometry.shading``),
   1.05-1.2 on a frontal normal; a white Blinn-Phong highlight of the key light; each pixel the mean of
   its 2x2 samples; then sRGB-encoded (``geometry.colour``; before 0.12.0 the photo's sRGB values were
   shaded as if linear) and 1 DN Gaussian noise added.
4. Composite: the render replaces the photo's skin; the photo's eyes, brows, lips and nostrils (from its
   landmarks, feathered 2 px), the border of the rendered face (faded over 6 px) and everything else
   (hair, background) stay the photo's, so the face looks like a photo to the detector. The scored mask
   is where the render alone is seen.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import distance_transform_edt, gaussian_filter

from facerecon.facelib.morphable.model import MorphableModel
from facerecon.geometry.colour import linear_to_srgb, srgb_to_linear
from facerecon.geometry.raster import rasterize
from facerecon.geometry.shading import directional_sh, pixel_mean, sh_basis, sh_shading, viewer_normals
from facerecon.geometry.subdivision import Subdivider
from facerecon.geometry.transforms import orthographic_pose, yaw_pitch_roll
from facerecon.kernel.contract.errors import InputError, ModelFileError
from facerecon.kernel.contract.records import IBUG68
from facerecon.kernel.contract.scenes import SyntheticScene

from . import detail

SUPERSAMPLING = 2
SUBDIVISION_LEVELS = 2
MARGIN_PX = 8
FADE_PX = 6.0
NOISE_DN = 1.0


@functools.lru_cache(maxsize=2)
def _subdivider(model: MorphableModel) -> Subdivider:
    return Subdivider.build(model.n_vertices, model.triangles, SUBDIVISION_LEVELS)


def random_shape(model: MorphableModel, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """float64 (N, 3) model-frame vertices (mm) of a random identity and expression, and their facts."""
    identity = np.clip(rng.standard_normal(model.n_identity), -2.5, 2.5) * model.identity_std
    expression = np.clip(rng.normal(0.0, 0.4, model.n_expression), -1.0, 1.0) * model.expression_std
    facts = {
        "identity_sigmas_rms": round(float(np.sqrt(np.mean((identity / model.identity_std) ** 2))), 3)
        if model.n_identity
        else 0.0,
        "expression": [round(float(v), 3) for v in expression],
    }
    return model.shape(identity, expression).astype(np.float64), facts


def model_landmarks(model: MorphableModel, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's 68 iBUG points (68, 3) on ``vertices`` and which of them it defines (bool (68,))."""
    if IBUG68 not in model.landmark_maps:
        raise ModelFileError(f"{model.name or model.topology}: no iBUG-68 landmark map (needed to place the face)")
    marks = model.landmark_maps[IBUG68]
    points = np.einsum("kj,kjc->kc", marks.weights.astype(np.float64), vertices[marks.vertex_ids])
    return points, marks.weights.sum(axis=1) > 0


def lighting(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """SH coefficients (9, 3), the key light's direction (viewer frame) and the facts: ambient + a key
    light from above-front + a fill from the other side, slightly warm, 1.05-1.2 on a frontal normal."""
    key = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.1, 0.6), 1.0])
    key /= np.linalg.norm(key)
    fill = np.array([-np.sign(key[0]) * 0.8, 0.0, 1.0])
    ambient = np.zeros(9)
    ambient[0] = 1 / sh_basis(np.array([0.0, 0.0, 1.0]))[0]  # a constant 1
    strengths = (rng.uniform(0.35, 0.5), rng.uniform(0.45, 0.65), rng.uniform(0.05, 0.2))
    coefficients = strengths[0] * ambient + strengths[1] * directional_sh(key) + strengths[2] * directional_sh(fill)
    coefficients *= rng.uniform(1.05, 1.2) / (sh_basis(np.array([0.0, 0.0, 1.0])) @ coefficients)
    tint = np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.88, 0.97)])
    sh = coefficients[:, None] * tint[None, :]
    facts = {"key_direction": [round(float(v), 4) for v in key], "sh": np.round(sh, 5).tolist()}
    return sh, key, facts


def feature_mask(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """float (h, w) 0..1: the photo's eyes, brows, lips and nostrils (feathered 2 px), from its landmarks
    (pixels of this grid): what the render leaves to the photo."""
    e, _, up = detail.face_axes(landmarks)
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)

    def polygon(points: np.ndarray) -> None:
        draw.polygon([tuple(p) for p in points], fill=255)

    def grown(ids: list[int], factor: float) -> np.ndarray:
        p = landmarks[ids]
        return p.mean(0) + factor * (p - p.mean(0))

    def band(ids: list[int], above: float, below: float) -> np.ndarray:
        p = landmarks[ids]
        return np.vstack([p + up * e * above, (p - up * e * below)[::-1]])

    polygon(grown(list(range(36, 42)), 1.8))
    polygon(grown(list(range(42, 48)), 1.8))
    polygon(band(list(range(17, 22)), 0.08, 0.07))
    polygon(band(list(range(22, 27)), 0.08, 0.07))
    polygon(grown(list(range(48, 60)), 1.3))
    polygon(band(list(range(31, 36)), 0.03, 0.1))
    hard = np.asarray(canvas, np.float64) / 255
    return np.clip(2 * gaussian_filter(hard, 2.0), 0, 1)


def _fill_outside(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``values`` with every sample outside ``inside`` set to its nearest inside sample's (so that the
    gradients at the silhouette stay those of the surface)."""
    _, (rows, cols) = distance_transform_edt(~inside, return_indices=True)
    return values[rows, cols]


def skin_colour(photo: np.ndarray, skin: np.ndarray, sigma: float) -> np.ndarray:
    """float (h, w, 3): the photo's colour (linear 0-255) over ``skin`` blurred (normalised Gaussian,
    ``sigma`` px), its brightness kept within 25 % of the skin's median (hair or a shadow does not make
    dark skin)."""
    weight = gaussian_filter(skin.astype(np.float64), sigma)
    colour = np.stack([gaussian_filter(photo[..., c] * skin, sigma) for c in range(3)], -1)
    median = np.median(photo[skin], axis=0) if skin.any() else srgb_to_linear(np.array([190.0, 150.0, 130.0]))
    colour = np.where(weight[..., None] > 1e-3, colour / np.maximum(weight, 1e-3)[..., None], median)
    brightness, reference = colour.mean(-1, keepdims=True), max(float(median.mean()), 20.0)
    return colour * np.clip(brightness, 0.75 * reference, 1.25 * reference) / np.maximum(brightness, 1e-6)


def render_scene(model: MorphableModel, seed: int, photo: np.ndarray, landmarks: np.ndarray) -> SyntheticScene:
    """A face of ``model`` drawn from ``seed`` over the face of ``photo`` (uint8 (H, W, 3)) whose 68 iBUG
    ``landmarks`` (float (68, 2), 0-based pixels) place it (see the module's docstring)."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (68, 2) or not np.isfinite(landmarks).all():
        raise InputError(f"scene landmarks must be 68 finite (x, y) points, got {landmarks.shape}")
    rng = np.random.default_rng(seed)
    detail_rng, texture_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])  # own streams
    shape, shape_facts = random_shape(model, rng)
    marks, defined = model_landmarks(model, shape)
    scale, rotation, translation = orthographic_pose(marks[defined], landmarks[defined])
    posed = scale * shape @ rotation.T + translation  # mesh frame: x, y pixels, z pixels away from the camera
    height, width = photo.shape[:2]
    left, top = (max(int(np.floor(v)) - MARGIN_PX, 0) for v in posed[:, :2].min(0))
    right, bottom = int(np.ceil(posed[:, 0].max())) + MARGIN_PX, int(np.ceil(posed[:, 1].max())) + MARGIN_PX
    right, bottom = min(right, width), min(bottom, height)
    if right - left < 32 or bottom - top < 32:
        raise InputError(f"the face placed on this photo is {right - left}x{bottom - top} px: too small to render")
    k = SUPERSAMPLING
    fine = _subdivider(model).interpolating(posed)
    fine[:, 0] = (fine[:, 0] - left + 0.5) * k - 0.5
    fine[:, 1] = (fine[:, 1] - top + 0.5) * k - 0.5
    hf, wf = (bottom - top) * k, (right - left) * k
    raster = rasterize(fine, _subdivider(model).faces, hf, wf)
    inside = raster.mask
    yy, xx = (np.mgrid[:hf, :wf] + 0.5) / k - 0.5
    yy, xx = yy + top, xx + left
    crop_marks = landmarks - [left, top]
    e = detail.face_axes(landmarks)[0]
    wrinkles, wrinkle_list = detail.wrinkles(yy, xx, inside, landmarks, detail_rng)
    pores, pore_count = detail.pores(inside, 1 / k, e, detail_rng)
    texture, texture_counts = detail.texture(inside, 1 / k, e, texture_rng)
    smooth = np.where(inside, raster.depth.astype(np.float64), np.nan)
    surface = _fill_outside(np.where(inside, smooth + wrinkles + pores, 0.0), inside)
    normals = viewer_normals(-surface, 1.0 / k)  # height towards the viewer = -z

    sh, key, light_facts = lighting(rng)
    features = feature_mask((bottom - top, right - left), crop_marks)
    coverage = pixel_mean(inside.astype(np.float64), k)
    photo_crop = photo[top:bottom, left:right].astype(np.float64)
    base = skin_colour(srgb_to_linear(photo_crop), (coverage > 0.5) & (features < 0.01), 0.1 * e)
    base_fine = np.repeat(np.repeat(base, k, axis=0), k, axis=1).transpose(2, 0, 1)  # (3, hf, wf)
    pigment = np.array([0.8, 1.0, 1.15])  # brown pigment darkens blue and green more than red
    albedo = base_fine * (1 + pigment[:, None, None] * texture[None])
    half = key + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    strength, exponent = rng.uniform(8, 25), rng.uniform(15, 40)
    specular = strength * np.clip(normals @ half, 0, 1) ** exponent
    rendered = pixel_mean(albedo * sh_shading(normals, sh) + specular[None], k).transpose(1, 2, 0)
    rendered = linear_to_srgb(rendered) + rng.normal(0.0, NOISE_DN, rendered.shape)

    inner = distance_transform_edt(coverage >= 1.0)
    alpha = (np.clip((inner - 1) / FADE_PX, 0, 1) * (1 - features))[..., None]
    image = photo.copy()
    image[top:bottom, left:right] = np.clip(np.rint(alpha * rendered + (1 - alpha) * photo_crop), 0, 255)
    full = (height, width)

    def placed(values: np.ndarray, empty: float) -> np.ndarray:
        out = np.full(full, empty)
        out[top:bottom, left:right] = values
        return out

    whole = coverage >= 1.0
    mask = placed((alpha[..., 0] > 0.999) & whole & (features == 0), 0.0).astype(bool)
    yaw, pitch, roll = yaw_pitch_roll(rotation)
    meta = {
        "seed": int(seed),
        "model": model.name or model.topology,
        **shape_facts,
        "pose_deg": {"yaw": round(float(yaw), 2), "pitch": round(float(pitch), 2), "roll": round(float(roll), 2)},
        "px_per_mm": round(float(scale), 5),
        "eye_corner_distance_px": round(e, 2),
        "window_ltrb": [left, top, right, bottom],
        **light_facts,
        "specular": {"peak_dn": round(float(strength), 2), "exponent": round(float(exponent), 2)},
        "wrinkles": wrinkle_list,
        "pores": pore_count,
        "texture": texture_counts,
        "mask_px": int(mask.sum()),
    }
    return SyntheticScene(
        image=image,
        depth=placed(np.where(whole, pixel_mean(smooth + wrinkles + pores, k), np.nan), np.nan),
        smooth=placed(np.where(whole, pixel_mean(smooth, k), np.nan), np.nan),
        wrinkles=placed(pixel_mean(wrinkles, k), 0.0),
        pores=placed(pixel_mean(pores, k), 0.0),
        texture=placed(pixel_mean(texture, k), 0.0),
        mask=mask,
        mm_per_px=1.0 / float(scale),
        meta=meta,
    )
