"""The depth energy of step 5 with its gradient written out, in compiled passes (CPU).

``solver.DepthEnergy`` minimises, over the detail δ (H, W) added to the medium height h0 inside the refined
mask m (d = m·δ, heights in samples towards the viewer, image rows going down),

    E(δ) = Σ m·c·ρ(γ·S(n) + s·β(n) − I)·u/N  +  base  +  λd1 Σ m δ²/N  +  λd2 Σ m (∇²d)²/N
           + λd3 Σ m·w·(ΔI − λd4 (∇²h0 + ∇²d))²/N

(ρ: Cauchy's loss summed over the colour channels, c the data confidence, u the intensity unit, N the mask's
samples, n the normals of h0 + d, β the highlight lobe or the fixed per-pixel specular). With autograd each
of L-BFGS's ~50 evaluations per face records and replays ~80 elementwise operations on (H, W) tensors; here
everything but the base term is one loop over the masked samples that gives the value and, by the adjoint of
each step, the gradient; the base term (a low-pass at a third of the rate) has its own small loops
(``depth_terms``, ``depth_energy``). The rows are split over threads (``FusedInputs.threads``).
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
