"""Face-parsing conventions shared by facerecon's segmenters (and offered to third-party ones).

**Label ids.** Every built-in segmenter writes CelebAMask-HQ's 19 class ids, in the order of the
dataset's own ``face_parsing/Data_preprocessing/g_mask.py`` (``label_list``, id = position + 1, 0 =
background), so a landmark-based segmenter and a learned parser are interchangeable::

    0 background  1 skin   2 nose   3 eye_g   4 l_eye   5 r_eye   6 l_brow   7 r_brow   8 l_ear
    9 r_ear      10 mouth 11 u_lip 12 l_lip  13 hair   14 hat    15 ear_r  16 neck_l  17 neck  18 cloth

``l_`` / ``r_`` are the *person's* left and right (a frontal face's ``l_eye`` is on the image's right), as
in MediaPipe's ``LEFT_EYE`` and iBUG-68's points 43-48. ``mouth`` is the mouth interior (between the lips),
``eye_g`` eyeglasses, ``ear_r`` earrings, ``neck_l`` necklaces. Networks trained with
face-parsing.PyTorch (the usual BiSeNet weights) emit the same 19 classes in another order
(:data:`LABEL_ORDERS`); the ``onnx-parsing`` segmenter maps them back to these ids by name.

**Region colours.** :func:`region_colors` gives each labelled region's typical colour — the seed paper's
per-region mean skin colour γ_avg (section 3.4, Fig. 4), the albedo prior of the fine stage — made robust
to specular highlights and cast shadows (see :func:`robust_color` for the method).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

CELEBAMASK_HQ_NAMES: tuple[str, ...] = (
    "background",
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
)
CELEBAMASK_HQ: Mapping[int, str] = MappingProxyType(dict(enumerate(CELEBAMASK_HQ_NAMES)))
"""Label id -> name, CelebAMask-HQ's 19 classes (what ``Segmentation.label_names`` holds)."""
LABEL_IDS: Mapping[str, int] = MappingProxyType({name: i for i, name in enumerate(CELEBAMASK_HQ_NAMES)})

LABEL_ORDERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "celebamask-hq": CELEBAMASK_HQ_NAMES,
        # zllrunning/face-parsing.PyTorch (BiSeNet, 79999_iter.pth and its ONNX exports).
        "face-parsing.pytorch": (
            "background",
            "skin",
            "l_brow",
            "r_brow",
            "l_eye",
            "r_eye",
            "eye_g",
            "l_ear",
            "r_ear",
            "ear_r",
            "nose",
            "mouth",
            "u_lip",
            "l_lip",
            "neck",
            "neck_l",
            "cloth",
            "hair",
            "hat",
        ),
    }
)
"""A network's output channel order (channel k is class ``order[k]``), by the name of its training code."""

MIN_REGION_PIXELS = 20
"""Regions smaller than this get no colour (too few pixels for a statistic)."""
MAX_SAMPLES = 20_000
"""Larger regions are subsampled evenly (every k-th pixel in raster order) to this many pixels."""

CLIPPED = 250 / 255
"""A channel at or above this is treated as clipped (blown-out highlight)."""
DARK = 12 / 255
"""Pixels whose mean channel is below this carry no usable chromaticity."""
CHROMA_GATE = 3.0
"""Chromaticity outliers: farther than this many robust deviations from the median chromaticity."""
SATURATION_GATE = 1.5
"""Washed-out pixels: saturation more than this many robust deviations below the median saturation."""
INTENSITY_BAND = 0.22
"""Half-width, in natural-log intensity (about ±25%), of the band kept around the chosen exposure."""
DENSITY_SIGMA = 0.15
"""Smoothing (Gaussian sigma, log intensity) of the intensity histogram whose peak is sought."""
BRIGHTNESS_PRIOR = 3.0
"""The histogram is weighted by exp(BRIGHTNESS_PRIOR * log intensity) before its peak is taken: of two
exposures a region shows, the lit one wins unless the shadowed one holds about e^(3 * 0.9) = 15 times
as many pixels (for a shadow at 40% brightness)."""


def region_colors(
    image: np.ndarray, labels: np.ndarray, label_names: Mapping[int, str], min_pixels: int = MIN_REGION_PIXELS
) -> dict[str, np.ndarray]:
    """Label name -> float32 (3,) robust typical sRGB colour in [0, 1] of that region of ``image``
    (uint8 (H, W, 3) RGB), for every labelled region (not background) of at least ``min_pixels``."""
    colors: dict[str, np.ndarray] = {}
    rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
    if len(rows) == 0:
        return colors
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    labels, image = labels[window], image[window]
    present = np.bincount(labels.ravel(), minlength=256)
    for label in np.flatnonzero(present >= min_pixels):
        name = label_names.get(int(label))
        if label == 0 or name is None or name == "background":
            continue
        pixels = image[labels == label]
        step = -(-len(pixels) // MAX_SAMPLES)  # an even subsample of large regions: the statistic is robust
        color = robust_color(pixels[::step])
        if color is not None:
            colors[name] = color
    return colors


def robust_color(pixels: np.ndarray) -> np.ndarray | None:
    """The typical lit colour of ``pixels`` (uint8 (N, 3) RGB), robust to highlights and shadows.

    Highlights and cast shadows are *minorities* of a region that differ from its bulk in known ways, so
    they are left out rather than averaged in:

    1. clipped pixels (a channel >= 250) and near-black ones go first: they hold no colour;
    2. **chromaticity gates** — in normalised rgb (each pixel divided by its mean channel, a space where
       an intensity change cancels out: shading and shadows keep a pixel's chromaticity, since the sRGB
       curve is close to a power law and a power law preserves channel ratios): specular highlights mix
       the illuminant's (near-white) colour into the skin's and wash it out, so pixels whose saturation
       (distance from grey) lies more than :data:`SATURATION_GATE` robust deviations below the median
       are dropped, and so are pixels farther than :data:`CHROMA_GATE` robust deviations from the median
       chromaticity (clutter: hair, glasses, make-up at a region's edge);
    3. **exposure** — the peak of the smoothed histogram of log intensity, weighted towards brighter
       values (:data:`BRIGHTNESS_PRIOR`), picks the exposure of the lit part of the region: a cast shadow
       is a second, darker peak (which drags a mean or a median, but not this choice), a highlight a
       brighter, desaturated tail already thinned by step 2; a few mean-shift steps centre it;
    4. the mean of the pixels within ±:data:`INTENSITY_BAND` of that exposure is the colour (sRGB, [0, 1]).

    Measured on LFPW photos with painted shadows and highlights in tests/test_segmenters.py. Returns None
    for no pixels; falls back to the median when the gates leave too few.
    """
    rgb = np.asarray(pixels, np.float32).reshape(-1, 3) / np.float32(255.0)
    if len(rgb) == 0:
        return None
    intensity = rgb.mean(axis=1)
    usable = (rgb.max(axis=1) < CLIPPED) & (intensity > DARK)
    if usable.sum() < max(5, 0.05 * len(rgb)):
        return np.median(rgb, axis=0).astype(np.float32)
    rgb, intensity = rgb[usable], intensity[usable]
    chroma = rgb / intensity[:, None]
    saturation = np.linalg.norm(chroma - 1.0, axis=1)
    middle = float(np.median(saturation))
    spread = max(1.4826 * float(np.median(np.abs(saturation - middle))), 0.01)
    keep = saturation >= middle - SATURATION_GATE * spread
    distance = np.linalg.norm(chroma - np.median(chroma[keep], axis=0), axis=1)
    spread = max(1.4826 * float(np.median(distance[keep])), 0.01)
    keep &= distance <= CHROMA_GATE * spread
    rgb, log_i = rgb[keep], np.log(intensity[keep])
    exposure = _lit_exposure(log_i)
    chosen = rgb[np.abs(log_i - exposure) <= INTENSITY_BAND]
    if len(chosen) < max(3, 0.02 * len(rgb)):
        return np.median(rgb, axis=0).astype(np.float32)
    return chosen.mean(axis=0).astype(np.float32)


def _lit_exposure(log_i: np.ndarray) -> float:
    """The brightness-weighted peak of the smoothed log-intensity histogram, then mean-shifted (flat
    window of half-width INTENSITY_BAND) to the centre of its pixels."""
    from scipy.ndimage import gaussian_filter1d

    step = 0.02
    lo, hi = float(log_i.min()), float(log_i.max())
    bins = max(1, int(np.ceil((hi - lo) / step)) + 1)
    counts, edges = np.histogram(log_i, bins=bins, range=(lo - step / 2, lo - step / 2 + bins * step))
    centres = (edges[:-1] + edges[1:]) / 2
    density = gaussian_filter1d(counts.astype(np.float64), DENSITY_SIGMA / step, mode="constant")
    centre = float(centres[int(np.argmax(density * np.exp(BRIGHTNESS_PRIOR * (centres - hi))))])
    for _ in range(5):
        window = log_i[np.abs(log_i - centre) <= INTENSITY_BAND]
        if len(window) == 0:
            break
        shifted = float(window.mean())
        if abs(shifted - centre) < 1e-4:
            break
        centre = shifted
    return centre
