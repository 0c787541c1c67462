"""The rasteriser of :mod:`facerecon.geometry.raster` in PyTorch, for a GPU when one is present.

Same frames, same coverage rule (pixel centres at integers inside the triangle, nearest z wins) and the
same outputs as ``rasterize``; the algorithm is the vectorised one (every triangle's bounding-box pixels
as candidates, barycentrics as affine functions of the pixel centre, a z-buffer by scatter-min), run in
chunks to bound memory. Plain tensor operations only, so it runs on any torch device (CUDA, or the CPU
for testing).
"""

from __future__ import annotations

import numpy as np

from .raster import Raster

_CHUNK = 8_000_000


def rasterize_torch(vertices: np.ndarray, faces: np.ndarray, height: int, width: int, device: str = "cuda") -> Raster:
    import torch

    dev = torch.device(device)
    V = torch.as_tensor(np.asarray(vertices, np.float64), device=dev)
    F = torch.as_tensor(np.asarray(faces, np.int64), device=dev)
    n_pixels = height * width
    depth = torch.full((n_pixels,), float("inf"), dtype=torch.float64, device=dev)
    triangle = torch.full((n_pixels,), -1, dtype=torch.int64, device=dev)
    bary = torch.zeros((n_pixels, 3), dtype=torch.float64, device=dev)
    if len(F):
        P = V[F]
        x, y = P[:, :, 0], P[:, :, 1]
        x0 = torch.clamp(torch.ceil(x.min(1).values), 0, width).long()
        x1 = torch.clamp(torch.floor(x.max(1).values), -1, width - 1).long()
        y0 = torch.clamp(torch.ceil(y.min(1).values), 0, height).long()
        y1 = torch.clamp(torch.floor(y.max(1).values), -1, height - 1).long()
        area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
        keep = (area.abs() > 1e-12) & (x1 >= x0) & (y1 >= y0) & torch.isfinite(area)
        ids = torch.nonzero(keep).squeeze(1)
        if len(ids):
            inv = 1.0 / area[ids]
            coeff = torch.empty((len(ids), 3, 3), dtype=torch.float64, device=dev)  # a, b, c per corner
            for k in range(3):
                i, j = (k + 1) % 3, (k + 2) % 3
                coeff[:, 0, k] = (y[ids, i] - y[ids, j]) * inv
                coeff[:, 1, k] = (x[ids, j] - x[ids, i]) * inv
                coeff[:, 2, k] = (x[ids, i] * y[ids, j] - x[ids, j] * y[ids, i]) * inv
            z = P[ids, :, 2]
            w = x1[ids] - x0[ids] + 1
            counts = w * (y1[ids] - y0[ids] + 1)
            ends = torch.cumsum(counts, 0)
            start = 0
            while start < len(ids):
                base = int(ends[start - 1]) if start else 0
                stop = max(int(torch.searchsorted(ends, base + _CHUNK, right=True)), start + 1)
                sel = torch.arange(start, stop, device=dev)
                c = counts[sel]
                t = torch.repeat_interleave(sel, c)
                local = torch.arange(int(c.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
                px = x0[ids[t]] + local % w[t]
                py = y0[ids[t]] + torch.div(local, w[t], rounding_mode="floor")
                lam = coeff[t, 0] * px[:, None] + coeff[t, 1] * py[:, None] + coeff[t, 2]
                inside = (lam >= -1e-9).all(1)
                t, px, py, lam = t[inside], px[inside], py[inside], lam[inside]
                zs = (lam * z[t]).sum(1)
                pixel = py * width + px
                depth.scatter_reduce_(0, pixel, zs, reduce="amin")
                winner = zs == depth[pixel]
                # Among candidates at the winning depth (shared edges), keep the lowest triangle index.
                candidate = torch.full((n_pixels,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
                candidate.scatter_reduce_(0, pixel[winner], ids[t[winner]], reduce="amin")
                chosen = winner & (ids[t] == candidate[pixel])
                triangle[pixel[chosen]] = ids[t[chosen]]
                bary[pixel[chosen]] = lam[chosen]
                start = stop
    return Raster(
        depth.reshape(height, width).float().cpu().numpy(),
        triangle.reshape(height, width).int().cpu().numpy(),
        bary.reshape(height, width, 3).float().cpu().numpy(),
    )
