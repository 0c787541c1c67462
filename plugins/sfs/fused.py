"""The fine stage's two iterated energies with their gradients written out, in compiled passes (CPU).

Depth (step 5). ``solver.DepthEnergy`` minimises, over the detail δ (H, W) added to the medium height h0
inside the refined mask m (d = m·δ, heights in samples towards the viewer, image rows going down),

    E(δ) = Σ m·c·ρ(γ·S(n) + s·β(n) − I)·u/N  +  base  +  λd1 Σ m δ²/N  +  λd2 Σ m (∇²d)²/N
           + λd3 Σ m·w·(ΔI − λd4 (∇²h0 + ∇²d))²/N

(ρ: Cauchy's loss summed over the colour channels, c the data confidence, u the intensity unit, N the mask's
samples, n the normals of h0 + d, β the highlight lobe or the fixed per-pixel specular). With autograd each
of L-BFGS's ~50 evaluations per face records and replays ~80 elementwise operations on (H, W) tensors; here
everything but the base term is one loop over the masked samples that gives the value and, by the adjoint of
each step, the gradient; the base term (a low-pass at a third of the rate) has its own small loops
(``depth_terms``, ``depth_energy``).

Albedo (step 3, and its steps between the depth updates): the data term, the skin-colour prior and RTV of
``solver.Reflectance.albedo_loss`` (``albedo_terms``): the per-sample work and the 2 x 2 block means in
compiled loops, the blurs and their adjoints in ``filters``.

The same numbers as autograd to float rounding, ~3-4x faster per evaluation (README, "Speed"). The solver keeps
the autograd forms as the reference (and for CUDA); tests/test_sfs_fused.py compares the two.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from facerecon.geometry.jit import compiled, in_parallel, row_blocks


@dataclass
class FusedInputs:
    """What the pass reads besides δ, as float32 numpy arrays on the (H, W) grid: mask m (0/1), height0
    h0, albedo γ (3, H, W) and image I (3, H, W) in 0-255, confidence c, the fixed specular β (H, W, used
    without a lobe), ΔI (lap_image, in the energy's units), ∇²h0 (lap_height0), the transfer term's weight
    w (lap_weight); sh_scaled (9, 3) float64: the SH coefficients times their basis constants; lobe (6,)
    float64: active (0/1), the unit half-vector h (3), k and α of the highlight k·max(n·h, 1e-6)^α. Scalars: s the
    specular scale, the Cauchy threshold, data_scale = u/N, inv_count = 1/N; the base term's weight, σ and
    rate (``solver.DepthEnergy._base_term``) and its samples low_count; threads: how many blocks of rows the
    pass runs on at once."""

    mask: np.ndarray
    height0: np.ndarray
    albedo: np.ndarray
    image: np.ndarray
    confidence: np.ndarray
    specular: np.ndarray
    lap_image: np.ndarray
    lap_height0: np.ndarray
    lap_weight: np.ndarray
    sh_scaled: np.ndarray
    lobe: np.ndarray
    specular_scale: float
    threshold: float
    data_scale: float
    inv_count: float
    base_weight: float = 0.0
    base_sigma: float = 1.0
    base_factor: int = 1
    low_count: float = 1.0
    threads: int = 1


def depth_terms(delta: Tensor, inputs: FusedInputs, weights: tuple[float, float, float, float]) -> Tensor:
    """E(δ), a 0-d tensor differentiable in ``delta`` (H, W) float32 on the CPU."""
    return _DepthTerms.apply(delta, inputs, weights)


class _DepthTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta: Tensor, inputs: FusedInputs, weights: tuple[float, float, float, float]) -> Tensor:
        energy, grad = depth_energy(delta.detach().numpy(), inputs, weights)
        ctx.save_for_backward(torch.from_numpy(grad))
        return torch.tensor(energy, dtype=delta.dtype)

    @staticmethod
    def backward(ctx, upstream: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return upstream * grad, None, None


def depth_energy(
    delta: np.ndarray, inputs: FusedInputs, weights: tuple[float, float, float, float]
) -> tuple[float, np.ndarray]:
    """E(δ) and its gradient (H, W) float32, for ``delta`` (H, W) (what ``depth_terms`` wraps; an optimiser
    may call it directly, without autograd)."""
    values = np.ascontiguousarray(delta, dtype=np.float32)
    grad = np.empty_like(values)
    return _kernel()(values, inputs, *weights, grad), grad


def _kernel():
    """The compiled pass, wrapped to unpack ``FusedInputs`` and to split the grid's rows over ``threads``
    (``fastmath``: ~20 % faster; its inputs are finite)."""
    loop, combine, block_means = compiled(_pass, fastmath=True), compiled(_gradient), compiled(_block_means)
    assert loop is not None and combine is not None and block_means is not None  # ``available`` checked numba

    def run(delta, p: FusedInputs, l1, l2, l3, l4, grad):
        rows, cols = delta.shape
        blocks = row_blocks(rows, p.threads, work=p.mask.sum(1))  # (the masked samples are the work)
        g_detail = [np.zeros((rows, cols)) for _ in blocks]  # one per block: the stencils reach across

        def block(start: int, end: int, out: np.ndarray) -> float:
            return loop(
                delta, p.mask, p.height0, p.albedo, p.image, p.confidence, p.specular, p.lap_image,
                p.lap_height0, p.lap_weight, p.sh_scaled, p.lobe, p.specular_scale, p.threshold, p.data_scale,
                p.inv_count, float(l1), float(l2), float(l3), float(l4), start, end, out,
            )  # fmt: skip

        tasks = [functools.partial(block, start, end, out) for (start, end), out in zip(blocks, g_detail, strict=True)]
        energy = sum(in_parallel(tasks))
        base, g_blocks = _base_term(delta, p, block_means)

        def gradient(start: int, end: int) -> None:
            k = p.base_factor if p.base_weight else 0
            combine(tuple(g_detail), g_blocks, k, p.mask, delta, 2 * float(l1) * p.inv_count, start, end, grad)

        in_parallel([functools.partial(gradient, *rows_of) for rows_of in row_blocks(rows, p.threads)])
        return energy + base

    return run


def _base_term(delta: np.ndarray, p: FusedInputs, block_means) -> tuple[float, np.ndarray]:
    """The base term w·Σ low²/n (low: the k x k block means of d = m·δ, blurred by σ/k, as
    ``operators.low_pass``) and its gradient with respect to each block's samples (⌈H/k⌉, ⌈W/k⌉): the
    block mean's adjoint, its value over the block's size (``_gradient`` spreads it)."""
    from facerecon.plugins.sfs import filters

    if p.base_weight == 0:
        return 0.0, np.zeros((1, 1))
    k = p.base_factor
    means = np.zeros((-(-delta.shape[0] // k), -(-delta.shape[1] // k)))
    sizes = block_means(delta, p.mask, k, means)
    taps = filters.gaussian_taps(p.base_sigma / k)
    low = filters.blur(means[None], taps)[0]
    energy = p.base_weight * float((low * low).sum()) / p.low_count
    g_means = filters.blur_adjoint((2 * p.base_weight / p.low_count) * low[None], taps)[0]
    return energy, g_means / sizes


def _block_means(delta, m, k, means):
    """The k x k block means of m·δ into ``means`` (the last blocks may be partial); returns the blocks'
    sizes (numba compiles it)."""
    rows, cols = delta.shape
    for i in range(rows):
        for bj in range(means.shape[1]):
            total = 0.0
            for j in range(bj * k, min(bj * k + k, cols)):
                total += delta[i, j] * m[i, j]
            means[i // k, bj] += total
    sizes = np.empty(means.shape)
    for bi in range(means.shape[0]):
        for bj in range(means.shape[1]):
            sizes[bi, bj] = (min(bi * k + k, rows) - bi * k) * (min(bj * k + k, cols) - bj * k)
            means[bi, bj] /= sizes[bi, bj]
    return sizes


def _gradient(g_detail, g_blocks, k, m, delta, l1_scale, row_start, row_end, grad):
    """δ's gradient over rows [row_start, row_end): m · (Σ g_detail (the blocks' parts, a tuple) + the
    base term's g_blocks[i // k, j // k] (with k = 0: none) + the λd1 term's 2·λd1·δ/N (``l1_scale``))."""
    for i in range(row_start, row_end):
        block_i, block_j, within = i // max(k, 1), 0, 0  # (the column's block, counted along the row)
        for j in range(grad.shape[1]):
            total = l1_scale * delta[i, j]
            for part in g_detail:
                total += part[i, j]
            if k > 0:
                total += g_blocks[block_i, block_j]
                within += 1
                if within == k:
                    block_j, within = block_j + 1, 0
            grad[i, j] = m[i, j] * total


def _pass(
    delta, m, h0, albedo, image, confidence, specular, lap_image, lap_h0, lap_weight, sh, lobe,
    s, threshold, data_scale, inv_count, l1, l2, l3, l4, row_start, row_end, g_detail,
):  # fmt: skip
    """Plain loops (numba compiles them) over the masked samples of rows [row_start, row_end): returns their
    energy, and adds the adjoints of each sample's height differences (hx, hy) and of its Laplacian of d
    onto d's samples in ``g_detail`` (the transposes of the central differences and of the 5-point
    stencil, borders replicated as in ``operators.normals_from_height`` / ``operators.laplacian``; they
    reach one row beyond the block). δ's gradient is m · g_detail plus the λd1 term's (``_gradient``)."""
    rows, cols = delta.shape
    t2 = threshold * threshold
    energy = 0.0
    for i in range(row_start, row_end):
        up, down = max(i - 1, 0), min(i + 1, rows - 1)
        for j in range(cols):
            mij = m[i, j]
            if mij == 0.0:
                continue
            left, right = max(j - 1, 0), min(j + 1, cols - 1)
            d_c = delta[i, j] * mij
            d_l, d_r = delta[i, left] * m[i, left], delta[i, right] * m[i, right]
            d_u, d_d = delta[up, j] * m[up, j], delta[down, j] * m[down, j]
            # normals n = v/|v|, v = (−∂h/∂x, ∂h/∂y, 1) (rows go down: ∂h/∂y = (h[i+1] − h[i−1])/2)
            hx = ((h0[i, right] + d_r) - (h0[i, left] + d_l)) / 2
            hy = ((h0[down, j] + d_d) - (h0[up, j] + d_u)) / 2
            norm = np.sqrt(hx * hx + hy * hy + 1.0)
            nx, ny, nz = -hx / norm, hy / norm, 1.0 / norm
            # the highlight and its derivative along the lobe's half-vector
            if lobe[0] > 0:
                cosine = nx * lobe[1] + ny * lobe[2] + nz * lobe[3]
                if cosine > 1e-6:
                    highlight = lobe[4] * cosine ** lobe[5]
                    d_highlight = lobe[5] * highlight / cosine  # k·α·cos^(α−1), one power
                else:
                    highlight, d_highlight = lobe[4] * 1e-6 ** lobe[5], 0.0
            else:
                highlight, d_highlight = specular[i, j], 0.0
            # S_c(n) = sh[0,c] + Σ_k sh[k,c] P_k(n), P = (y, z, x, xy, yz, 3z²−1, xz, x²−y²) (solver.sh_basis)
            weight = confidence[i, j] * mij * data_scale
            gx = gy = gz = g_specular = 0.0
            excess = 0.0  # Π_c (1 + q_c) − 1, so that Σ_c log(1 + q_c) is one log1p
            for c in range(3):
                shade = (
                    sh[0, c] + sh[1, c] * ny + sh[2, c] * nz + sh[3, c] * nx + sh[4, c] * nx * ny
                    + sh[5, c] * ny * nz + sh[6, c] * (3 * nz * nz - 1) + sh[7, c] * nx * nz
                    + sh[8, c] * (nx * nx - ny * ny)
                )  # fmt: skip
                r = albedo[c, i, j] * shade + s * highlight - image[c, i, j]
                q = r * r / t2
                excess += q + excess * q
                g = weight * 2 * r / (1 + q)  # ∂/∂r of t²·log(1 + r²/t²)
                g_specular += g
                ga = g * albedo[c, i, j]
                gx += ga * (sh[3, c] + sh[4, c] * ny + sh[7, c] * nz + 2 * sh[8, c] * nx)
                gy += ga * (sh[1, c] + sh[4, c] * nx + sh[5, c] * nz - 2 * sh[8, c] * ny)
                gz += ga * (sh[2, c] + sh[5, c] * ny + 6 * sh[6, c] * nz + sh[7, c] * nx)
            energy += weight * t2 * np.log1p(excess)
            g_specular *= s * d_highlight
            gx += g_specular * lobe[1]
            gy += g_specular * lobe[2]
            gz += g_specular * lobe[3]
            # through n = v/|v|: ∂E/∂v = (g − (g·n) n)/|v|; hx enters v as −hx, hy as +hy
            along = gx * nx + gy * ny + gz * nz
            g_hx = -(gx - along * nx) / norm
            g_hy = (gy - along * ny) / norm
            # the λ terms
            lap = d_u + d_d + d_l + d_r - 4 * d_c
            energy += (l1 * delta[i, j] ** 2 + l2 * lap * lap) * mij * inv_count
            g = 2 * l2 * lap * mij * inv_count
            if l3 != 0.0:
                transfer = lap_image[i, j] - l4 * (lap_h0[i, j] + lap)
                energy += l3 * mij * lap_weight[i, j] * transfer * transfer * inv_count
                g -= 2 * l3 * l4 * mij * lap_weight[i, j] * transfer * inv_count
            # the transposes of the central differences and of the Laplacian's stencil
            g_detail[i, right] += g_hx / 2
            g_detail[i, left] -= g_hx / 2
            g_detail[down, j] += g_hy / 2
            g_detail[up, j] -= g_hy / 2
            g_detail[up, j] += g
            g_detail[down, j] += g
            g_detail[i, left] += g
            g_detail[i, right] += g
            g_detail[i, j] -= 4 * g
    return energy


def available(like: Tensor) -> bool:
    """Whether the pass runs for tensors like ``like``: float32 on the CPU, with numba installed."""
    if like.device.type != "cpu" or like.dtype != torch.float32:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class AlbedoInputs:
    """What the albedo energy (``solver.Reflectance.albedo_loss``) reads besides γ, float32 numpy arrays:
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
