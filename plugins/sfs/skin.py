"""The skin-chromaticity confidence of the fine stage (seed section 3.4's per-region skin-colour prior, made
per pixel): shading changes a pixel's brightness, not its chromaticity; pigment (freckles, hair, a beard)
and white highlights move it away from the skin's. Images are (3, H, W) float tensors, 0-255 (the sRGB
photo's values: ``chroma_tolerance`` is stated for them), masks (H, W) bool.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facerecon.plugins.sfs.operators import gaussian_blur, masked_blur
from facerecon.plugins.sfs.options import SfsOptions

SKIN_GAMUT = 4.0
"""How far (in ``chroma_tolerance``) a colour may lie from the face's median chromaticity and still count
towards the local skin colour: a flush or a tan does, a grey beard on brown skin (~9 tolerances) does not."""


def chromaticity(image: Tensor) -> Tensor:
    """(3, H, W) colour over brightness: r, g, b / (r + g + b)."""
    return image / image.sum(0, keepdim=True).clamp(min=1e-3)


def skin_colour(diffuse: Tensor, region: Tensor, options: SfsOptions) -> Tensor:
    """(3, H, W): the skin's colour around each sample, the Gaussian mean (σ ``skin_colour_sigma``) of the
    colours of ``region`` ((H, W) bool, not empty) that are near the face's median chromaticity. Averaging
    every colour would make a beard the "skin colour" where it covers the face, and so trusted as shading."""
    chroma = chromaticity(diffuse)
    samples = chroma[:, ::2, ::2][:, region[::2, ::2]]  # every 4th sample is enough for a median
    if samples.shape[1] == 0:  # (a region on odd rows or columns only)
        samples = chroma[:, region]
    typical = samples.median(dim=1).values[:, None, None]
    deviation = ((chroma - typical) ** 2).sum(0).sqrt()
    near = torch.exp(-((deviation / (SKIN_GAMUT * options.chroma_tolerance)) ** 2))
    return masked_blur(diffuse, region.float() * near, options.skin_colour_sigma)


def skin_confidence(diffuse: Tensor, albedo_avg: Tensor, measured: Tensor, options: SfsOptions) -> Tensor:
    """(H, W) in [0, 1]: how far a pixel's chromaticity stays the region's skin colour. Shading changes
    brightness, not chromaticity; pigment (freckles, hair) and highlights (white) move it away from the
    skin colour. Pixels that do are trusted less as shading evidence, so that their darkness or
    brightness stays in the albedo (and specular) instead of turning into geometry."""
    chroma, skin_chroma = chromaticity(diffuse), chromaticity(albedo_avg)
    # (Unmeasured pixels have no chromaticity: they are left out of the neighbourhood average.)
    weight = gaussian_blur(measured.float()[None], 1.0)[0].clamp(min=1e-3)
    deviation = (gaussian_blur(((chroma - skin_chroma) ** 2).sum(0, keepdim=True) * measured, 1.0)[0] / weight).sqrt()
    return torch.exp(-((deviation / options.chroma_tolerance) ** 2))
