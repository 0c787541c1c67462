"""``preview.png``: the photo, its landmarks, the face parsing and a shaded render of every stage, side by
side, and under each stage its side view (the profile in the head frame, where depth errors show); label
colours by name (CelebAMask-HQ's palette)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from facerecon.geometry.raster import shade
from facerecon.kernel.contract.records import Mesh, Reconstruction, Segmentation
from facerecon.outputs.frames import FileFrame, head_frame

PREVIEW_HEIGHT = 512
"""Height of one row of panels; the sheet has a second row of side views when a stage ran."""

SKIN_GREY = np.array([235, 225, 210])


LABEL_COLORS: dict[str, tuple[int, int, int]] = {
    "skin": (204, 0, 0),
    "nose": (76, 153, 0),
    "eye_g": (204, 204, 0),
    "l_eye": (51, 51, 255),
    "r_eye": (204, 0, 204),
    "l_brow": (0, 255, 255),
    "r_brow": (255, 204, 204),
    "l_ear": (102, 51, 0),
    "r_ear": (255, 0, 0),
    "mouth": (102, 204, 0),
    "u_lip": (255, 255, 0),
    "l_lip": (0, 0, 153),
    "hair": (0, 0, 204),
    "hat": (255, 51, 153),
    "ear_r": (0, 204, 204),
    "neck_l": (0, 51, 0),
    "neck": (255, 153, 51),
    "cloth": (0, 204, 0),
}
"""Preview colour of each face-parsing label, by name: CelebAMask-HQ's own colour map (other names get a
colour derived from the name)."""


def label_color(name: str) -> tuple[int, int, int]:
    """The preview colour of a face-parsing label (see LABEL_COLORS)."""
    if name in LABEL_COLORS:
        return LABEL_COLORS[name]
    digest = hashlib.sha256(name.encode()).digest()
    return (64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192)


def render_segmentation(image: np.ndarray, segmentations: Sequence[Segmentation]) -> np.ndarray:
    """The photo with each labelled pixel tinted by its label's colour (60% colour, 40% photo)."""
    panel = image.astype(np.float32)
    for seg in segmentations:
        if seg.labels.shape != image.shape[:2]:
            continue
        palette = np.zeros((256, 3), np.float32)
        for label, name in seg.label_names.items():
            if 0 < int(label) < 256 and name != "background":
                palette[int(label)] = label_color(name)
        mask = seg.labels > 0
        panel[mask] = 0.4 * panel[mask] + 0.6 * palette[seg.labels[mask]]
    return panel.astype(np.uint8)


def render_preview(image: np.ndarray, rec: Reconstruction, heads: Mapping[int, FileFrame] | None = None) -> np.ndarray:
    """Panels side by side: photo | landmarks | segmentation (when a segmenter ran) | one shaded render
    per stage (over the dimmed photo); under each stage's render its side view: every face turned to its
    profile in its head frame (pose removed, nose to the right), at the front view's scale and place.
    Panels are cropped around the reconstructed faces and scaled to PREVIEW_HEIGHT pixels; the segmentation
    panel has a swatch of each region colour of the first face.

    Everything is drawn on the crop already scaled to the preview's size (the meshes rendered straight into
    it), so the cost and memory do not grow with the photo's resolution. ``heads``: each face's head frame
    by face index, when the caller made them already."""
    height, width = image.shape[:2]
    faces = [r.face for r in rec.reconstructions] or list(rec.faces)
    boxes = np.array([f.box for f in faces]) if faces else np.array([[0.0, 0.0, width, height]])
    x0, y0, x1, y1 = _crop_box(boxes, width, height)
    scale = PREVIEW_HEIGHT / max(1, y1 - y0)
    size = (max(1, round((x1 - x0) * scale)), PREVIEW_HEIGHT)
    photo = np.asarray(Image.fromarray(image[y0:y1, x0:x1]).resize(size, Image.Resampling.BILINEAR))

    def to_tile(xy: np.ndarray) -> np.ndarray:
        """Photo pixels -> tile pixels (pixel centres at integers in both)."""
        return (np.asarray(xy, np.float64) - [x0 - 0.5, y0 - 0.5]) * scale - 0.5

    panels = [photo]
    marks = Image.fromarray(photo.copy())
    draw = ImageDraw.Draw(marks)
    radius = max(1.0, size[0] / 250)
    for face in rec.faces:
        box = to_tile(np.reshape(face.box, (2, 2))).ravel()
        _draw_face(draw, box, to_tile(face.landmarks.xy), radius)
    panels.append(np.asarray(marks))
    segmentations = [
        replace(r.segmentation, labels=_resized_labels(r.segmentation.labels, (x0, y0, x1, y1), size))
        for r in rec.reconstructions
        if r.segmentation is not None and r.segmentation.labels.shape == image.shape[:2]
    ]
    if segmentations:
        panels.append(render_segmentation(photo, segmentations))
    n_stages = max((len(r.stages) for r in rec.reconstructions), default=0)
    heads = heads or {r.face_index: head_frame(r) for r in rec.reconstructions}
    sides = []
    for s in range(n_stages):
        panel = (photo.astype(np.float32) * 0.35).astype(np.uint8)
        side = np.full_like(photo, 48)
        for r in rec.reconstructions:
            if s >= len(r.stages):
                continue
            mesh = r.stages[s].mesh
            frame = _image_frame(mesh)
            tile = np.column_stack([to_tile(frame[:, :2]), frame[:, 2] * scale])  # uniform: normals unchanged
            _paint(panel, tile, mesh, size)
            head = heads[r.face_index]
            centre = to_tile(head.pixels(np.zeros((1, 3))))[0]
            profile = head.apply(mesh.vertices) * (_pixels_per_mm(head, r.coarse.mesh) * scale)
            # The head turned 90 degrees about its y axis (a rotation, no mirror): the nose (+z) to the right,
            # up (+y) up; the face's x becomes the depth.
            view = np.column_stack([centre[0] + profile[:, 2], centre[1] - profile[:, 1], profile[:, 0]])
            _paint(side, view, mesh, size)
        panels.append(panel)
        sides.append(side)
    rows = 2 if sides else 1
    sheet = Image.new("RGB", (size[0] * len(panels), size[1] * rows), "white")
    for i, tile_image in enumerate(panels):
        sheet.paste(Image.fromarray(tile_image), (i * size[0], 0))
    first_stage = len(panels) - len(sides)
    for i, tile_image in enumerate(sides):
        sheet.paste(Image.fromarray(tile_image), ((first_stage + i) * size[0], size[1]))
    labels = ["input", "landmarks"] + ["segmentation"] * bool(segmentations)
    labels += [next(r.stages[s].stage for r in rec.reconstructions if s < len(r.stages)) for s in range(n_stages)]
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(labels):
        draw.text((i * size[0] + 6, 4), label, fill=(255, 255, 0))
    for i, label in enumerate(labels[first_stage:]):
        draw.text(((first_stage + i) * size[0] + 6, size[1] + 4), f"{label}, side view", fill=(255, 255, 0))
    if sides:
        draw.text((6, size[1] + 4), "side views (head frame, pose removed):", fill=(0, 0, 0))
        draw.text((6, size[1] + 18), "depth errors show there", fill=(0, 0, 0))
    if segmentations:
        _draw_swatches(draw, segmentations[0], 2 * size[0], size)
    return np.asarray(sheet)


def _resized_labels(labels: np.ndarray, crop: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = crop
    return np.asarray(Image.fromarray(labels[y0:y1, x0:x1]).resize(size, Image.Resampling.NEAREST))


def _draw_swatches(draw: ImageDraw.ImageDraw, seg: Segmentation, x: int, size: tuple[int, int]) -> None:
    """Along the bottom of the tile at ``x``: one square per region colour, framed in the label's colour."""
    colors = list(seg.region_colors.items())
    if not colors:
        return
    side = max(6, min(28, (size[0] - 8) // len(colors) - 2))
    y = size[1] - side - 4
    for i, (name, color) in enumerate(colors):
        x0 = x + 4 + i * (side + 2)
        fill = tuple(int(round(float(c) * 255)) for c in np.clip(color, 0, 1))
        draw.rectangle([x0, y, x0 + side, y + side], fill=fill, outline=label_color(name), width=2)


def _paint(panel: np.ndarray, tile: np.ndarray, mesh: Mesh, size: tuple[int, int]) -> None:
    """Shade ``mesh`` at tile coordinates (x right, y down, z away: a z-buffer) into ``panel``."""
    grey, mask = shade(tile, mesh.triangles, size[1], size[0])
    panel[mask] = (SKIN_GREY * grey[mask, None]).astype(np.uint8)


def _pixels_per_mm(head: FileFrame, mesh: Mesh) -> float:
    """Image pixels per head-frame millimetre at the head's origin (its depth, for a perspective mesh)."""
    to_mesh = np.linalg.inv(head.to_file)
    units_per_mm = float(np.cbrt(abs(np.linalg.det(to_mesh[:3, :3]))))
    if mesh.camera_matrix is None:
        return units_per_mm
    return units_per_mm * float(mesh.camera_matrix[0, 0]) / max(float(to_mesh[2, 3]), 1e-6)


def _image_frame(mesh: Any) -> np.ndarray:
    """Vertices with x, y in image pixels (projected if the mesh is metric), z kept for the z-buffer."""
    vertices = np.asarray(mesh.vertices, np.float64)
    return np.column_stack([mesh.project(vertices), vertices[:, 2]])


def _crop_box(boxes: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    lo, hi = boxes[:, :2].min(0), boxes[:, 2:].max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() * 0.75
    x0, y0 = np.floor(np.maximum(centre - half, 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(centre + half, [width, height])).astype(int)
    return int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))


def _draw_face(draw: ImageDraw.ImageDraw, box: np.ndarray, xy: np.ndarray, radius: float) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    draw.rectangle([x0, y0, x1, y1], outline=(0, 200, 255), width=max(1, round(radius)))
    for x, y in xy:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(0, 255, 0))
