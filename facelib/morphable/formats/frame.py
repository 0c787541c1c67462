"""A check that a loaded model is in the model frame (see ``model.py``): what a converter got wrong."""

from __future__ import annotations

import numpy as np

from facerecon.facelib.morphable.model import MorphableModel
from facerecon.kernel.contract.records import IBUG68

__all__ = ["frame_problems"]


def frame_problems(model: MorphableModel) -> list[str]:
    """What is wrong with ``model``'s frame (empty when fine), checked on the mean shape of a face model:

    * the area-weighted mean triangle normal points to +z (within 60°): CCW seen from the front;
    * with an ibug68 map: the nose tip (iBUG 31) lies in front of the mean z, the subject's right outer
      eye corner (iBUG 37) at smaller x than the left one (iBUG 46), and both eyes above the nose tip.
    """
    problems = []
    v = model.mean.astype(np.float64)
    t = model.triangles
    normal = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]]).sum(axis=0)
    length = float(np.linalg.norm(normal))
    if length == 0 or normal[2] / length < 0.5:
        unit = normal / length if length else normal
        problems.append(f"mean triangle normal {np.round(unit, 3).tolist()} does not point to +z")
    lmap = model.landmark_maps.get(IBUG68)
    if lmap is not None and len(lmap.valid) == 68:
        points = lmap.locate(v)
        if lmap.valid[30] and not points[30, 2] > v[:, 2].mean():
            mean_z = v[:, 2].mean()
            problems.append(f"nose tip z {points[30, 2]:.1f} is not in front of the mean z {mean_z:.1f}")
        if lmap.valid[36] and lmap.valid[45]:
            if not points[36, 0] < points[45, 0]:
                problems.append("the subject's right eye (iBUG 37) is not at smaller x than the left (46)")
            if lmap.valid[30] and not min(points[36, 1], points[45, 1]) > points[30, 1]:
                problems.append("the eyes are not above the nose tip (y must point up)")
    return problems
