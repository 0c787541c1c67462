"""The ``sfs`` refiner's options (the user's ``[refiner.sfs]`` TOML table); the solver reads them too."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from facerecon.geometry.jit import threads_for


@dataclass(frozen=True)
class SfsOptions:
    """Options of the ``sfs`` refiner (``[options.refiner.sfs]``); defaults are the seed's section 4.1.

    max_side: the depth map's longer side in samples (the face box at native resolution up to this).
    margin: extra border around the face box, as a fraction of its size.
    albedo_weight, albedo_rtv_weight: λγ1, λγ2 (step 3).
    albedo_optimizer, albedo_iterations, albedo_lr: step 3's first fit, "lbfgs" (default; 8 iterations)
        or "adam" (the seed's; its steps at lr albedo_lr, 20 of them before 0.14.0).
    specular_weight, specular_lr, specular_iterations, specular_scale: λβ, lr, steps, ε (step 3).
    phase1_weights / phase2_weights: λd1..λd4 of each depth phase; phase*_lr, phase*_iterations.
    alternate_every: depth steps between albedo (lr albedo_lr_depth) and specular updates.
    rtv_sigma: the RTV window's Gaussian sigma in samples; specular_sigma: blur of the initial specular β0;
    albedo_blur: blur of the residual the initial albedo is fitted to (see solve()).
    depth_optimizer: "lbfgs" (default; phase*_lr unused) or "adam" (the seed's, with phase*_lr).
    base_weight, base_sigma: keep the medium mesh's shape: a penalty on the low-pass (Gaussian sigma
        base_sigma samples) of the depth change, so shading the lighting model cannot explain is not
        answered by bending the whole face (not in the seed, whose λd1 is too weak to stop that drift).
    max_displacement: safety bound on |d − d0| as a fraction of the face width (no spikes).
    depth_intensity_unit: grey levels per intensity unit in the depth energy, which sets the balance
        between its data terms and the λd regularisers on depths in samples (chosen on the first 8
        known-detail renders of ../shared/data/synth-detail; the albedo and specular energies are in grey
        levels).
    noise_weighting: the unit is at least this many times the image's noise std (Immerkær's estimate),
        so that a noisy image leans more on the priors; 0 disables.
    robust_threshold: sRGB grey levels where the depth's Cauchy data term starts to redescend (with
        ``linear_shading``, converted to linear levels at the face's median brightness).
    chroma_tolerance, skin_prior_boost: the skin-chromaticity confidence (see skin.skin_confidence;
        chromaticity of the sRGB values, also with ``linear_shading``) and how much more the albedo prior
        weighs where the colour is the skin's.
    saturation, dark: pixels with a channel above ``saturation`` or a brightest channel at most ``dark``
        (clipped, or holes in a registered RGB-D colour frame) carry no shading evidence.
    specular_model: "lobe" (a white Blinn-Phong lobe rendered from the current normals; default) or
        "per-pixel" (the seed's β map); specular_min_peak: a fitted lobe fainter than this (grey levels)
        is dropped.
    detail_noise_threshold: ΔI is soft-thresholded at this many of its noise std (Immerkær's estimate)
        before the λd3 term copies it into Δd; 0 disables.
    albedo_sigma: the Gaussian σ (samples) of the local skin colour that is the albedo prior γ_avg;
        skin_colour_sigma: that of the colour the chromaticity confidence compares with.
    medium_smoothing: σ (samples) of the local quadric fit that smooths the medium depth (0: none).
    medium_smoothing_fraction: when > 0, that σ is this fraction of the face's width in samples instead
        (the medium mesh's wobble is a fraction of the face, whatever its size in pixels).
    lighting_rounds, lighting_albedo_sigma: how many times the lighting is refitted with the albedo the
        current light implies (masked Gaussian σ of image / shading).
    lighting_prior_weight: weight (squared grey levels) of the Gaussian portrait-lighting prior on the
        normalised SH coefficients (``solver.portrait_lighting_prior``); 0 fits the light by least squares alone.
    lighting_model: "sh" (nine free SH coefficients per channel, by least squares) or "key" (a white key
        light ``key_elevation`` degrees above the camera axis plus an ambient irradiance ``key_ambient``
        times the key's, with a gain per channel: only the key's azimuth is fitted; see
        ``lighting.key_light_candidates``). lighting_prior_weight applies to "sh" only.
    threads: how many threads the compiled passes of the albedo and depth energies split each evaluation's
        rows over (0: the cores this process may use, at most 4). Plain threads that sleep while they wait: with a
        second job on the machine they cost little (unlike torch's OpenMP workers, ``torch_threads``).
    linear_shading: decode the photo from sRGB to linear RGB before the solve (the Lambertian + SH image
        model holds for linear intensities); the albedo, rendering and input maps are encoded back.
    """

    max_side: int = 512
    margin: float = 0.05
    albedo_weight: float = 0.3
    albedo_rtv_weight: float = 2.5
    albedo_lr: float = 1.5
    albedo_iterations: int = 8
    albedo_optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    albedo_lr_depth: float = 0.05
    specular_weight: float = 0.5
    specular_lr: float = 0.25
    specular_iterations: int = 10
    specular_scale: float = 1.0
    phase1_weights: tuple[float, ...] = (0.001, 1000.0, 0.0, 0.0)
    phase1_lr: float = 0.015
    phase1_iterations: int = 10
    phase2_weights: tuple[float, ...] = (0.001, 100.0, 0.0, 2.5)
    phase2_lr: float = 0.05
    phase2_iterations: int = 20
    alternate_every: int = 10
    depth_intensity_unit: float = 1.0
    noise_weighting: float = 1.0
    robust_threshold: float = 3.0
    chroma_tolerance: float = 0.02
    skin_prior_boost: float = 100.0
    saturation: float = 250.0
    dark: float = 5.0
    detail_noise_threshold: float = 1.0
    specular_model: Literal["lobe", "per-pixel"] = "lobe"
    specular_min_peak: float = 8.0
    depth_optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    base_weight: float = 1.0
    base_sigma: float = 6.0
    rtv_sigma: float = 2.0
    specular_sigma: float = 3.0
    albedo_blur: float = 3.0
    albedo_sigma: float = 4.0
    skin_colour_sigma: float = 8.0
    medium_smoothing: float = 6.0
    medium_smoothing_fraction: float = 0.07
    lighting_rounds: int = 3
    lighting_albedo_sigma: float = 12.0
    lighting_prior_weight: float = 0.0
    lighting_model: Literal["sh", "key"] = "key"
    key_elevation: float = 30.0
    key_ambient: float = 0.8
    linear_shading: bool = True
    max_displacement: float = 0.05
    threads: int = 0

    def __post_init__(self) -> None:
        # Each refusal names the option and the value it got (a config table's key is the field's name).
        problems = [
            f"{name} needs 4 values (λd1..λd4), got {len(getattr(self, name))}: {list(getattr(self, name))}"
            for name in ("phase1_weights", "phase2_weights")
            if len(getattr(self, name)) != 4
        ]
        if self.specular_model not in ("lobe", "per-pixel"):
            problems.append(f"specular_model must be 'lobe' or 'per-pixel', got {self.specular_model!r}")
        for name in ("depth_optimizer", "albedo_optimizer"):
            if getattr(self, name) not in ("lbfgs", "adam"):
                problems.append(f"{name} must be 'lbfgs' or 'adam', got {getattr(self, name)!r}")
        if self.lighting_model not in ("sh", "key"):
            problems.append(f"lighting_model must be 'sh' or 'key', got {self.lighting_model!r}")
        if not -90 <= self.key_elevation <= 90:  # (NaN fails this and the next)
            problems.append(f"key_elevation must be within [-90, 90] degrees, got {self.key_elevation!r}")
        if not 0 <= self.key_ambient < math.inf:
            problems.append(
                f"a finite key_ambient >= 0 is required (ambient / key irradiance), got {self.key_ambient!r}"
            )
        # Every other number is a weight, step, count, σ or threshold: finite and >= 0 (NaN fails both).
        for f in fields(self):
            value = getattr(self, f.name)
            numbers = value if f.name.endswith("_weights") else (value,)
            if f.name in ("key_elevation", "key_ambient") or not all(_is_number(v) for v in numbers):
                continue
            least = {"max_side": 16, "alternate_every": 1}.get(f.name, 0)
            if any(v == math.inf for v in numbers):
                problems.append(f"{f.name} must be finite, got {value!r}")
            elif not all(v >= least for v in numbers):
                problems.append(f"{f.name} must be >= {least}, got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def pass_threads(self) -> int:
        """``threads``, with 0 resolved to the cores this process may use, at most ``jit.MAX_DEFAULT_THREADS``
        (each block of rows keeps its own full-size gradient: more blocks would cost memory and merging)."""
        return threads_for(self.threads)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
