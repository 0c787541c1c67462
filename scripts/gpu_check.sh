#!/usr/bin/env bash
# One short device run (GPU machine lent through the device tool): the fine stage's solve on CUDA vs
# the CPU at the issue's 400 and 1024 px, and the torch rasteriser's CUDA path against the CPU one.
# Run from the repository root: bash scripts/gpu_check.sh
set -euo pipefail
python3 -m pip install --no-deps --no-build-isolation -q -e . >/dev/null 2>&1 || python3 -m pip install --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name --format=csv,noheader
python3 - <<'PY'
import time, json
import numpy as np, torch
from tests.synthetic_sfs import make_scene
from facerecon.plugins.sfs import SfsOptions
from facerecon.plugins.sfs.solver import Problem, solve
from facerecon.geometry.raster import rasterize_numpy
from facerecon.geometry.raster_torch import rasterize_torch
report = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "cpu_threads": torch.get_num_threads()}
heights = {}
# The fine stage's solve at the issue's two face sizes: CUDA runs the autograd energies, the CPU the
# compiled passes (plugins/sfs/fused/).
for size in (400, 1024):
    scene = make_scene(size=size)
    for device in ("cuda", "cpu"):
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)
        mask = torch.as_tensor(scene.mask, device=device)
        problem = Problem(t(scene.image), mask, mask, t(scene.smooth), t(scene.albedo_avg))
        solve(problem, SfsOptions())  # warm-up
        times = []
        for _ in range(3 if device == "cuda" else 1):
            if device == "cuda": torch.cuda.synchronize()
            start = time.perf_counter(); sol = solve(problem, SfsOptions())
            if device == "cuda": torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        report[f"sfs_solve_{size}_{device}_median_s"] = round(float(np.median(times)), 3)
        heights[device] = sol.height.cpu().numpy()
    report[f"sfs_{size}_cuda_vs_cpu_max_height_diff_px"] = float(np.abs(heights["cuda"] - heights["cpu"]).max())
# Rasteriser: a 400x400 face-sized grid mesh, CUDA vs numpy.
n = 250
yy, xx = np.mgrid[:n, :n]
v = np.column_stack([xx.ravel() * 1.6 + 0.3, yy.ravel() * 1.6 + 0.7, np.sin(xx.ravel() / 9.0) * 5 + 100])
idx = (yy[:-1, :-1] * n + xx[:-1, :-1]).ravel()
f = np.concatenate([np.column_stack([idx, idx + n, idx + 1]), np.column_stack([idx + 1, idx + n, idx + n + 1])])
ref = rasterize_numpy(v, f, 400, 400)
rasterize_torch(v, f, 400, 400, "cuda")
torch.cuda.synchronize(); start = time.perf_counter(); out = rasterize_torch(v, f, 400, 400, "cuda"); torch.cuda.synchronize()
report["raster_124k_tris_cuda_ms"] = round((time.perf_counter() - start) * 1000, 2)
report["raster_cuda_mask_equal"] = bool((out.mask == ref.mask).all())
report["raster_cuda_max_depth_diff"] = float(np.abs(out.depth[ref.mask] - ref.depth[ref.mask]).max())
print(json.dumps(report, indent=1))
PY
