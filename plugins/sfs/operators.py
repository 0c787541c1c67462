"""Image operators of the fine stage on a depth-map grid, in torch: normals of a height map, the
Laplacian, Gaussian blurs (differentiable, with OpenCV's forward and adjoint on the CPU), low-pass and
relative total variation, noise level, sRGB decoding.

Images are (C, H, W) float tensors, heights (H, W) in grid samples towards the viewer, normals (H, W, 3)
in the viewer frame (x right, y up, z to the viewer).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from facerecon.geometry import colour
from facerecon.plugins.sfs import filters


def normals_from_height(height):
    """Unit normals (H, W, 3) in the viewer frame of a height map h (H, W) towards the viewer, image rows
    going down: n ∝ (−∂h/∂x, ∂h/∂y, 1) with central differences (one-sided at the border)."""
    padded = torch.nn.functional.pad(height[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    hx = (padded[1:-1, 2:] - padded[1:-1, :-2]) / 2
    hy = (padded[2:, 1:-1] - padded[:-2, 1:-1]) / 2
    n = torch.stack([-hx, hy, torch.ones_like(height)], dim=-1)
    return n / n.norm(dim=-1, keepdim=True)


def laplacian(image):
    """5-point Laplacian of (..., H, W) with replicated borders."""
    flat = image.reshape(-1, 1, *image.shape[-2:])
    padded = torch.nn.functional.pad(flat, (1, 1, 1, 1), mode="replicate")
    out = padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:] - 4 * flat
    return out.reshape(image.shape)


def gaussian_kernel(sigma: float) -> list[float]:
    """Normalised 1-D Gaussian taps, radius 3σ."""
    return filters.gaussian_taps(sigma).tolist()


def _blur_axis(x: Tensor, taps: list[float], dim: int) -> Tensor:
    """Correlate x with symmetric ``taps`` along ``dim``, borders replicated (sum of shifted slices:
    on the CPU this is ~10x faster than a depthwise conv2d with a 1-D kernel, and its backward more)."""
    n, radius = x.shape[dim], len(taps) // 2
    edge = [x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)]
    size = list(x.shape)
    size[dim] = radius
    padded = torch.cat([edge[0].expand(size), x, edge[1].expand(size)], dim)
    out = padded.narrow(dim, 0, n) * taps[0]
    for i in range(1, len(taps)):
        out.add_(padded.narrow(dim, i, n), alpha=taps[i])
    return out


def _blur_axis_adjoint(g: Tensor, taps: list[float], dim: int) -> Tensor:
    """The transpose of ``_blur_axis``: scatter each output back onto its taps, then fold what landed
    in the replicated border onto the edge samples."""
    n, radius = g.shape[dim], len(taps) // 2
    size = list(g.shape)
    size[dim] = n + 2 * radius
    padded = g.new_zeros(size)
    for i, tap in enumerate(taps):
        padded.narrow(dim, i, n).add_(g, alpha=tap)
    out = padded.narrow(dim, radius, n).clone()
    out.narrow(dim, 0, 1).add_(padded.narrow(dim, 0, radius).sum(dim, keepdim=True))
    out.narrow(dim, n - 1, 1).add_(padded.narrow(dim, n + radius, radius).sum(dim, keepdim=True))
    return out


def _blur_cv2(image: Tensor, taps: list[float]) -> Tensor:
    """``_blur_axis`` along both axes by ``filters.blur`` (OpenCV's separable filter, the same border rule)."""
    planes = image.detach().reshape(-1, *image.shape[-2:]).numpy()
    return torch.from_numpy(filters.blur(planes, np.asarray(taps))).reshape(image.shape)


def _blur_adjoint_cv2(grad: Tensor, taps: list[float]) -> Tensor:
    """``_blur_axis_adjoint`` along both axes by ``filters.blur_adjoint``."""
    planes = grad.detach().reshape(-1, *grad.shape[-2:]).numpy()
    return torch.from_numpy(filters.blur_adjoint(planes, np.asarray(taps))).reshape(grad.shape)


class _GaussianBlur(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image: Tensor, taps: list[float]) -> Tensor:
        ctx.taps = taps
        if image.device.type == "cpu" and image.dtype in (torch.float32, torch.float64) and image.numel():
            return _blur_cv2(image, taps)
        return _blur_axis(_blur_axis(image, taps, -1), taps, -2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        if grad.device.type == "cpu" and grad.dtype in (torch.float32, torch.float64) and grad.numel():
            return _blur_adjoint_cv2(grad, ctx.taps), None
        return _blur_axis_adjoint(_blur_axis_adjoint(grad, ctx.taps, -2), ctx.taps, -1), None


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (radius 3σ, borders replicated) of (..., H, W), differentiable."""
    return _GaussianBlur.apply(image, gaussian_kernel(sigma))


def masked_blur(image: Tensor, weight: Tensor, sigma: float, factor: int = 1) -> Tensor:
    """Normalised convolution: the ``weight``-ed Gaussian mean of (C, H, W) around every sample,
    weights (H, W) >= 0 (what lies outside the weighted region does not bleed in). With ``factor`` k > 1
    the two blurs run at 1/k of the rate (k x k block sums, σ/k; blocks past the border weigh 0) and the
    mean is interpolated back bilinearly: for a wide σ (σ/k of a few samples) the same to ~1e-3, at ~1/k²
    of the cost."""
    if factor <= 1:
        total = gaussian_blur(weight[None], sigma).clamp(min=1e-6)
        return gaussian_blur(image * weight, sigma) / total
    rows, cols = image.shape[-2:]
    pad = (0, -cols % factor, 0, -rows % factor)  # whole blocks; the padding's weight is 0
    planes = torch.nn.functional.pad(torch.cat([image * weight, weight[None]]), pad)
    coarse = gaussian_blur(torch.nn.functional.avg_pool2d(planes[:, None], factor)[:, 0], sigma / factor)
    mean = coarse[:-1] / coarse[-1:].clamp(min=1e-6 / factor**2)
    fine = torch.nn.functional.interpolate(mean[None], scale_factor=factor, mode="bilinear", align_corners=False)
    return fine[0, :, :rows, :cols]


def low_pass(image: Tensor, sigma: float, factor: int) -> Tensor:
    """A Gaussian low-pass of (..., H, W) sampled at 1/``factor`` of the rate, (..., ⌈H/k⌉, ⌈W/k⌉):
    averaged over k x k blocks, then blurred by σ/k. Being smooth, it loses nothing at the reduced rate
    (its mean square is the full-rate one's to within the blocks' edge effects), at ~1/k² of the cost:
    the energies evaluate it at every step."""
    shape = image.shape
    flat = image.reshape(-1, 1, *shape[-2:])
    coarse = torch.nn.functional.avg_pool2d(flat, factor, ceil_mode=True)[:, 0] if factor > 1 else flat[:, 0]
    coarse = gaussian_blur(coarse, sigma / factor)
    return coarse.reshape(*shape[:-2], *coarse.shape[-2:])


def relative_total_variation(image: Tensor, sigma: float, eps: float = 1e-3, factor: int = 2) -> Tensor:
    """Per-pixel RTV_x + RTV_y of (C, H, W) (Xu, Yan, Xia, Jia 2012, eq. 3-4): G*|∂γ| / (|G*∂γ| + e),
    sampled at 1/``factor`` of the rate (the windowed sums are smooth; see ``low_pass``). Texture (many
    small gradients of mixed sign) scores high, structure (consistent edges) low."""
    dx = torch.nn.functional.pad(image[..., :, 1:] - image[..., :, :-1], (0, 1))
    dy = torch.nn.functional.pad(image[..., 1:, :] - image[..., :-1, :], (0, 0, 0, 1))
    # The four windowed sums in one call (fewer, larger operations).
    abs_dx, sum_dx, abs_dy, sum_dy = low_pass(torch.stack([dx.abs(), dx, dy.abs(), dy]), sigma, factor)
    return abs_dx / (sum_dx.abs() + eps) + abs_dy / (sum_dy.abs() + eps)


# -- the optimisation ---------------------------------------------------------------------------------


def noise_level(image: Tensor, mask: Tensor) -> float:
    """σ of additive white noise in (H, W) over ``mask``: Immerkær's estimator (1996),
    σ = √(π/2) · mean |I * N| / 6 with N = [[1,-2,1],[-2,4,-2],[1,-2,1]], which cancels smooth image
    content up to second order."""
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))  # zeros around, as a conv2d's padding=1
    along_x = padded[:, :-2] - 2 * padded[:, 1:-1] + padded[:, 2:]  # N = [1, -2, 1] ⊗ [1, -2, 1]
    response = along_x[:-2] - 2 * along_x[1:-1] + along_x[2:]  # (~20x faster than conv2d on the CPU)
    inner = -torch.nn.functional.max_pool2d(-mask[None].float(), 3, stride=1, padding=1)[0] > 0
    if int(inner.sum()) == 0:
        return 0.0
    return float((torch.pi / 2) ** 0.5 * response[inner].abs().mean() / 6)


def srgb_to_linear(image):
    """sRGB-encoded 0-255 -> linear 0-255 (``geometry.colour``), of a tensor, a numpy array or a number."""
    return colour.srgb_to_linear(image, torch.where if isinstance(image, Tensor) else np.where)


def linear_to_srgb(image):
    """Linear 0-255 -> sRGB-encoded 0-255, the inverse of ``srgb_to_linear`` (negative values clipped)."""
    return colour.linear_to_srgb(image, torch.where if isinstance(image, Tensor) else np.where)
