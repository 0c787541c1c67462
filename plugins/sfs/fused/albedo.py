"""The albedo energy of step 3 (and of its steps between the depth updates) with its gradient written out:
the data term, the skin-colour prior and RTV of ``reflectance.Reflectance.albedo_loss`` (``albedo_terms``), the
per-sample work and the 2 x 2 block means in compiled loops over blocks of rows, the blurs and their
adjoints in ``filters``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from facerecon.geometry.jit import compiled, in_parallel, row_blocks


@dataclass
class AlbedoInputs:
    """What the albedo energy (``reflectance.Reflectance.albedo_loss``) reads besides γ, float32 numpy arrays:
    image I (3, H, W) 0-255, measured (H, W) 0/1, mask m (H, W) 0/1 and its half-rate coverage coarse_m,
    skin_weight (H, W) = 1 + boost · skin confidence, skin_albedo γ_avg (3, H, W); scalars: the mask's
    samples (count) and coarse coverage (coarse_count), the prior weights w_avg and w_rtv, the RTV window's
    σ, the specular scale s; threads: how many blocks of rows the per-sample passes run on at once."""

    image: np.ndarray
    measured: np.ndarray
    mask: np.ndarray
    coarse_mask: np.ndarray
    skin_weight: np.ndarray
    skin_albedo: np.ndarray
    count: float
    coarse_count: float
    w_avg: float
    w_rtv: float
    rtv_sigma: float
    specular_scale: float
    threads: int = 1


RTV_EPS = 1e-3
"""e in RTV's G*|∂γ| / (|G*∂γ| + e) (``solver.relative_total_variation``'s default)."""


def albedo_terms(albedo: Tensor, inputs: AlbedoInputs, shade: Tensor, specular: Tensor, blur: float) -> Tensor:
    """The albedo energy, a 0-d tensor differentiable in ``albedo`` (3, H, W) float32 on the CPU:

        E(γ) = Σ m·|γ·S + s·β − I|²/N (the residual's low-pass at half rate when ``blur`` > 0)
               + w_avg Σ m·w_skin·|γ − γ_avg|²/N + w_rtv Σ m½·RTV(γ/255)²/N½

    for the shading S (3, H, W) and specular β (1, H, W) given (constants here)."""
    return _AlbedoTerms.apply(albedo, inputs, shade, specular, blur)


class _AlbedoTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, albedo: Tensor, inputs: AlbedoInputs, shade: Tensor, specular: Tensor, blur: float) -> Tensor:
        value, grad = _albedo_energy(
            albedo.detach().numpy(), inputs, shade.detach().numpy(), specular.detach().numpy(), blur
        )
        ctx.save_for_backward(torch.from_numpy(grad))
        return torch.tensor(value, dtype=albedo.dtype)

    @staticmethod
    def backward(ctx, upstream: Tensor) -> tuple[Tensor, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return upstream * grad, None, None, None, None


def _albedo_energy(
    albedo: np.ndarray, p: AlbedoInputs, shade: np.ndarray, specular: np.ndarray, blur: float
) -> tuple[float, np.ndarray]:
    """The value of ``albedo_terms`` and its gradient (3, H, W), each step's adjoint written out: the
    per-sample work in compiled passes (with the 2 x 2 block means of the half-rate terms), the blurs in
    ``filters``."""
    from facerecon.plugins.sfs import filters

    rows, cols = albedo.shape[1:]
    half = (-(-rows // 2), -(-cols // 2))
    samples, windows_of, scatter = _albedo_kernels()
    grad = np.empty_like(albedo)
    # (both written whole by the pass: a block's first sample sets its mean, the others add to it)
    residual = np.empty((3, *half), albedo.dtype)  # block means of m · (γ·S + s·β − I) over the measured samples
    differences = np.empty((12, *half), albedo.dtype)  # those of |∂xγ|, ∂xγ, |∂yγ|, ∂yγ of γ/255 (3 channels each)
    blocks = row_blocks(rows, p.threads, multiple=2)  # (each block's 2 x 2 means are its own)

    def samples_of(start: int, end: int) -> float:
        return samples(
            albedo, shade, specular[0], p.image, p.measured, p.mask, p.skin_weight, p.skin_albedo,
            p.specular_scale, p.count, p.w_avg, blur <= 0, start, end, grad, residual, differences,
        )  # fmt: skip

    value = sum(in_parallel([functools.partial(samples_of, *block) for block in blocks]))
    g_residual = np.zeros((1, 1, 1), albedo.dtype)  # (none: the scatter skips it)
    if blur > 0:  # the residual's low-pass at half rate: block means, then a blur of σ/2
        taps = filters.gaussian_taps(blur / 2)
        low = filters.blur(residual, taps, p.threads)
        value += float((low * low * p.coarse_mask).sum()) / p.coarse_count
        g_residual = filters.blur_adjoint((2 / p.coarse_count) * low * p.coarse_mask, taps, p.threads)
    g_differences = np.zeros((1, 1, 1), albedo.dtype)
    if p.w_rtv:  # RTV at half rate (solver.relative_total_variation)
        taps = filters.gaussian_taps(p.rtv_sigma / 2)
        windows = filters.blur(differences, taps, p.threads)
        g_windows = np.empty_like(windows)

        def windows_in(start: int, end: int) -> float:
            return windows_of(windows, p.coarse_mask, p.coarse_count, RTV_EPS, start, end, g_windows)

        coarse_blocks = row_blocks(windows.shape[1], p.threads)
        value += p.w_rtv * sum(in_parallel([functools.partial(windows_in, *block) for block in coarse_blocks]))
        g_differences = filters.blur_adjoint(g_windows, taps, p.threads)
    # a block's differences reach the first row of the next: that row goes to ``spill`` (one per block)
    spill = np.zeros((len(blocks), 3, cols), grad.dtype)

    def scatter_of(start: int, end: int, extra: np.ndarray) -> None:
        scatter(
            g_residual, g_differences, blur > 0, p.w_rtv != 0, albedo, shade, p.measured, p.mask, p.w_rtv / 255,
            start, end, grad, extra,
        )  # fmt: skip

    in_parallel(
        [functools.partial(scatter_of, start, end, extra) for (start, end), extra in zip(blocks, spill, strict=True)]
    )
    for (_, end), extra in zip(blocks, spill, strict=True):
        if end < rows:
            grad[:, end] += extra
    return value, grad


def _albedo_kernels() -> tuple:
    """The albedo energy's compiled passes."""
    return compiled(_albedo_samples), compiled(_rtv_windows), compiled(_albedo_scatter)


def _albedo_samples(
    albedo, shade, specular, image, measured, m, skin_weight, skin_albedo, s, count, w_avg, plain_data,
    row_start, row_end, grad, residual, differences,
):  # fmt: skip
    """Per sample of rows [row_start, row_end) (row_start even): the masked residual (with ``plain_data``
    its mean square and gradient, else its 2 x 2 block means into ``residual``), the skin-colour prior and
    its gradient (into ``grad``), and the block means of γ/255's forward differences for RTV (0 past the
    last column / row). Returns the energy of the terms it completes."""
    channels, rows, cols = albedo.shape
    energy = 0.0
    for c in range(channels):
        for i in range(row_start, row_end):
            share_i = 0.5 if i - i % 2 + 1 < rows else 1.0  # 1 / the block's rows (the last may have 1)
            for j in range(cols):
                share = share_i * (0.5 if j - j % 2 + 1 < cols else 1.0)
                r = (albedo[c, i, j] * shade[c, i, j] + s * specular[i, j] - image[c, i, j]) * measured[i, j]
                r *= m[i, j]  # m is 0/1, and (r·m)² = r²·m
                g = 0.0
                first = i % 2 == 0 and j % 2 == 0  # the block's first sample
                if plain_data:
                    energy += r * r / count
                    g = 2 * r / count * measured[i, j] * shade[c, i, j]
                elif first:
                    residual[c, i // 2, j // 2] = share * r
                else:
                    residual[c, i // 2, j // 2] += share * r
                away = albedo[c, i, j] - skin_albedo[c, i, j]
                weight = skin_weight[i, j] * m[i, j]
                energy += w_avg * weight * away * away / count
                grad[c, i, j] = g + 2 * w_avg / count * weight * away
                dx = (albedo[c, i, j + 1] - albedo[c, i, j]) / 255 if j + 1 < cols else 0.0
                dy = (albedo[c, i + 1, j] - albedo[c, i, j]) / 255 if i + 1 < rows else 0.0
                if first:
                    differences[c, i // 2, j // 2] = share * abs(dx)
                    differences[3 + c, i // 2, j // 2] = share * dx
                    differences[6 + c, i // 2, j // 2] = share * abs(dy)
                    differences[9 + c, i // 2, j // 2] = share * dy
                else:
                    differences[c, i // 2, j // 2] += share * abs(dx)
                    differences[3 + c, i // 2, j // 2] += share * dx
                    differences[6 + c, i // 2, j // 2] += share * abs(dy)
                    differences[9 + c, i // 2, j // 2] += share * dy
    return energy


def _rtv_windows(windows, coarse_m, coarse_count, eps, row_start, row_end, g_windows):
    """RTV = G*|∂xγ| / (|G*∂xγ| + e) + the same along y from the windowed sums (12, h, w), over rows
    [row_start, row_end); returns their Σ m½·RTV²/N½ and writes its gradient with respect to the windowed
    sums."""
    channels = windows.shape[0] // 4
    energy = 0.0
    for c in range(channels):
        for i in range(row_start, row_end):
            for j in range(windows.shape[2]):
                abs_x, sum_x = windows[c, i, j], windows[3 + c, i, j]
                abs_y, sum_y = windows[6 + c, i, j], windows[9 + c, i, j]
                inherent_x, inherent_y = abs(sum_x) + eps, abs(sum_y) + eps
                rtv = abs_x / inherent_x + abs_y / inherent_y
                energy += rtv * rtv * coarse_m[i, j] / coarse_count
                g = 2 * rtv * coarse_m[i, j] / coarse_count
                g_windows[c, i, j] = g / inherent_x
                g_windows[3 + c, i, j] = -g * abs_x * np.sign(sum_x) / inherent_x**2
                g_windows[6 + c, i, j] = g / inherent_y
                g_windows[9 + c, i, j] = -g * abs_y * np.sign(sum_y) / inherent_y**2
    return energy


def _albedo_scatter(
    g_residual, g_differences, use_residual, use_differences, albedo, shade, measured, m, scale, row_start, row_end,
    grad, spill,
):  # fmt: skip
    """Adds the half-rate terms' gradient to ``grad`` (3, H, W) from the samples of rows [row_start,
    row_end): each block mean's adjoint (its value over the block's size) reaches the block's samples; the
    residual's through ∂r/∂γ = m·S on measured samples, the differences' times ``scale`` (1/255) through
    ∂|d|/∂d = sign d and each difference's two samples (the second of the last row's into ``spill`` (3, W),
    for the caller to add to row ``row_end``). ``use_residual`` / ``use_differences``: whether those terms
    are in the energy (else their arrays are not read)."""
    channels, rows, cols = grad.shape
    for c in range(channels):
        for i in range(row_start, row_end):
            share_i = 0.5 if i - i % 2 + 1 < rows else 1.0  # 1 / the block's rows (the last may have 1)
            for j in range(cols):
                share = share_i * (0.5 if j - j % 2 + 1 < cols else 1.0)
                bi, bj = i // 2, j // 2
                if use_residual:
                    grad[c, i, j] += share * g_residual[c, bi, bj] * m[i, j] * measured[i, j] * shade[c, i, j]
                if not use_differences:
                    continue
                if j + 1 < cols:
                    dx = albedo[c, i, j + 1] - albedo[c, i, j]
                    g = share * scale * (g_differences[3 + c, bi, bj] + g_differences[c, bi, bj] * np.sign(dx))
                    grad[c, i, j + 1] += g
                    grad[c, i, j] -= g
                if i + 1 < rows:
                    dy = albedo[c, i + 1, j] - albedo[c, i, j]
                    g = share * scale * (g_differences[9 + c, bi, bj] + g_differences[6 + c, bi, bj] * np.sign(dy))
                    if i + 1 < row_end:
                        grad[c, i + 1, j] += g
                    else:
                        spill[c, j] += g
                    grad[c, i, j] -= g
