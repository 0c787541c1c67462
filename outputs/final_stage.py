"""The detailed result as files a 3D tool opens: ``final.*`` (the clean medium mesh with the fine stage's
detail as UV maps) and the detailed geometry itself in ``fine.*`` with a vertex budget.

When the last stage made a new surface (a fine stage: another topology than the stage before it), its
detail is baked into the previous stage's ("base") UV layout (:mod:`.uv_maps`):

* ``final.<fmt>`` (+ ``final.glb`` always): the base mesh with the base colour ``final.png`` (the fine
  stage's albedo where it has one, the photo elsewhere, visibility-aware: :mod:`.texture`) and the tangent
  -space normal map ``final_uv_normal.png`` (OpenGL convention: +Y = increasing v); GLB's
  baseColorTexture + normalTexture, MTL's ``map_Kd`` + ``norm``/``map_Bump``;
* ``final_uv_displacement.png``: 16-bit, h = (value / 65535 - 0.5) · strength along the base mesh's outward
  normal, the strength in the files' units; in the MTL as ``disp -mm base gain`` and in the GLB's material
  ``extras.displacement`` (glTF has no displacement field), both with the strength, midlevel and units.
"""

from __future__ import annotations

import json
import struct
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.kernel.contract.records import FaceReconstruction, ImageMaps, Mesh, StageResult
from facerecon.outputs.frames import FileFrame
from facerecon.outputs.meshes import PNG_COMPRESSION, PngImage, atomic_write, png_bytes, write_mesh
from facerecon.outputs.texture import ImageSurface, bake_texture
from facerecon.outputs.uv_maps import bake_detail

FINE_VERTEX_BUDGET = 100_000
"""Most vertices of a written fine mesh (its quadric decimation keeps the detail where it is)."""


class DecimationWarning(UserWarning):
    """The fine mesh was written whole: fast-simplification is not installed (pip install 'facerecon[fine]')."""


def detail_stages(face: FaceReconstruction) -> tuple[StageResult, StageResult] | None:
    """(base, detailed): the stage before the last and the last, when the last is a fine stage (its
    stage is "fine", or it gave image maps, as ``sfs`` does) that made a new surface with detail to bake,
    and the base has (or can get) UVs; else None. A medium stage that only subdivided a sparse mesh
    (``laplace`` after ``3dmm-fit``) is not detail: ``--fast`` writes no ``final.*``."""
    if len(face.stages) < 2:
        return None
    base, detailed = face.stages[-2], face.stages[-1]
    if detailed.maps is None and detailed.stage != "fine":
        return None
    if detailed.mesh.topology == base.mesh.topology or base.mesh.uvs is None:
        return None
    return base, detailed


def base_colour_image(image: np.ndarray, maps: ImageMaps | None) -> np.ndarray:
    """uint8 (H, W, 3): the photo with a stage's ``albedo`` map (where its ``mask`` is and the albedo was
    measured: neither black nor clipped white; feathered) pasted at its place, so a texture baked from it
    shows the skin's own colour without the photo's lighting."""
    import cv2

    if maps is None or "albedo" not in maps.maps:
        return image
    albedo = np.nan_to_num(np.asarray(maps.maps["albedo"], np.float32))
    mask = np.asarray(maps.maps.get("mask", np.ones(albedo.shape[:2])), np.float32)
    # Only where the stage measured an albedo: not black (unsolved), not clipped white (a blown highlight).
    mask = mask * (albedo.max(axis=2) > 0.02) * (albedo.min(axis=2) < 0.98)
    albedo = albedo * 255.0
    h, w = image.shape[:2]
    # The maps' sample (i, j) sits at image pixel origin + (j, i) · step: warp them onto the photo's grid.
    x0, y0 = maps.origin
    affine = np.array([[1 / maps.step, 0, -x0 / maps.step], [0, 1 / maps.step, -y0 / maps.step]], np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    albedo_img = cv2.warpAffine(albedo, affine, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    weight = cv2.warpAffine(mask, affine, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT)
    sigma = max(1.0, 0.01 * max(albedo.shape[:2]) * maps.step)
    weight = np.minimum(weight, cv2.GaussianBlur(weight, (0, 0), sigma))[..., None]
    blended = weight * albedo_img + (1 - weight) * image.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def decimated(mesh: Mesh, budget: int = FINE_VERTEX_BUDGET) -> Mesh:
    """``mesh`` with at most ``budget`` vertices (quadric decimation, fast-simplification), its UVs read back
    from the original surface where each new vertex projects; landmark maps dropped (they name old
    vertices). Unchanged when already within budget."""
    if len(mesh.vertices) <= budget:
        return mesh
    try:
        import fast_simplification
    except ImportError:
        warnings.warn(
            f"the {len(mesh.vertices)}-vertex fine mesh is written whole (pip install 'facerecon[fine]' "
            "for fast-simplification)",
            DecimationWarning,
            stacklevel=2,
        )
        return mesh
    vertices = np.asarray(mesh.vertices, np.float64)
    reduction = 1.0 - 0.98 * budget / len(vertices)  # on triangles; vertices follow within ~1%
    points, triangles = fast_simplification.simplify(vertices, np.array(mesh.triangles, np.int32), reduction)
    used = np.unique(triangles)  # drop vertices no triangle keeps
    index = np.full(len(points), -1, np.int64)
    index[used] = np.arange(len(used))
    points, triangles = points[used], index[triangles]
    uvs = None
    if mesh.uvs is not None:
        uvs, hit = ImageSurface.of(mesh).at(mesh.project(points), np.asarray(mesh.uvs, np.float64))
        if not hit.all():  # a vertex moved off the surface's silhouette: the nearest original vertex's UV
            from scipy.spatial import cKDTree

            uvs[~hit] = np.asarray(mesh.uvs)[cKDTree(vertices).query(points[~hit])[1]]
    return replace(
        mesh,
        vertices=points,
        triangles=triangles,
        uvs=uvs,
        landmark_maps={},
        topology=f"{mesh.topology}-decimated{len(points)}",
    )


def write_final(
    face: FaceReconstruction,
    image: np.ndarray,
    folder: Path,
    prefix: str,
    formats: tuple[str, ...],
    frame: FileFrame,
    texture_size: int,
    png_compression: int = PNG_COMPRESSION,
) -> tuple[dict[str, Any], PngImage] | None:
    """Write ``<prefix>final.*`` and the UV maps (module docstring) when the face has detail to bake;
    returns result.json's ``detail_maps`` entry and the base colour texture (uint8 (size, size, 3), with its
    PNG encoded once for every file that holds it), or None."""
    stages = detail_stages(face)
    if stages is None:
        return None
    base, detailed = stages
    maps = bake_detail(base.mesh, detailed.mesh, texture_size)
    colour = bake_texture(base.mesh, base_colour_image(image, detailed.maps), texture_size, face.segmentation)
    texture, normal_map = PngImage(colour, png_compression), PngImage(maps.normal, png_compression)
    scale = float(np.cbrt(np.linalg.det(np.asarray(frame.to_file, np.float64)[:3, :3])))
    strength = maps.strength * scale  # in the files' units
    stem = f"{prefix}final"
    displacement_name = f"{stem}_uv_displacement.png"
    atomic_write(folder / displacement_name, png_bytes(np.asarray(maps.displacement, np.uint16), png_compression))
    displacement = {
        "file": displacement_name,
        "encoding": "uint16; h = (value / 65535 - midlevel) * strength along the outward vertex normal",
        "midlevel": 0.5,
        "strength": round(strength, 6),
        "units": frame.units,
        "grey_level": round(strength / 65535, 9),
    }
    files = []
    for fmt in dict.fromkeys((*formats, "glb")):
        path = folder / f"{stem}.{fmt}"
        write_mesh(base.mesh, path, texture, normal_map=normal_map, frame=frame)
        files.append(path.name)
        if fmt == "obj":
            _add_mtl_displacement(path.with_suffix(".mtl"), displacement_name, strength)
        elif fmt == "glb":
            glb_strength = strength * (1e-3 if frame.units == "mm" else 1.0)  # GLB coordinates: metres
            glb_units = "m" if frame.units == "mm" else frame.units
            glb = displacement | {"strength": glb_strength, "units": glb_units, "grey_level": glb_strength / 65535}
            _add_glb_extras(path, {"displacement": glb})
    # The PNGs beside the meshes: the texture with OBJ and PLY, the normal map with OBJ (PLY has no field for
    # it); the GLB embeds both. A file not written is named None, and ``embedded`` says where they are.
    info = {
        "base_stage": base.stage,
        "detail_stage": detailed.stage,
        "files": files,
        "texture": f"{stem}.png" if {"obj", "ply"} & set(formats) else None,
        "base_colour": "albedo" if detailed.maps is not None and "albedo" in detailed.maps.maps else "photo",
        "embedded": f"{stem}.glb: baseColorTexture and normalTexture",
        "normal_map": {
            "file": f"{stem}_uv_normal.png" if "obj" in formats else None,
            "space": "tangent (MikkTSpace-style per-vertex tangents of the file's vertex normals and UVs)",
            "convention": "OpenGL: x along +u, y along +v (green up), z out of the surface; rgb = (n + 1) / 2",
        },
        "displacement": displacement,
        "coverage": round(maps.coverage, 4),
    }
    return info, texture


def same_layout(base: Mesh, detailed: Mesh) -> bool:
    """Whether ``detailed``'s UVs are ``base``'s layout (a refiner that carried them over, as sfs does):
    at the detailed mesh's vertices, the base surface's UVs where they project agree within 1%."""
    if base.uvs is None or detailed.uvs is None:
        return False
    points = np.asarray(detailed.vertices, np.float64)[:: max(1, len(detailed.vertices) // 2000)]
    uvs = np.asarray(detailed.uvs, np.float64)[:: max(1, len(detailed.vertices) // 2000)]
    on_base, hit = ImageSurface.of(base).at(base.project(points), np.asarray(base.uvs, np.float64))
    return bool(hit.mean() > 0.5 and np.median(np.abs(on_base[hit] - uvs[hit]).max(axis=1)) < 0.01)


def _add_mtl_displacement(material: Path, displacement_name: str, strength: float) -> None:
    """The displacement map in the MTL: ``disp -mm base gain`` maps a texel value t in [0, 1] to
    base + gain · t = (t - 0.5) · strength."""
    text = material.read_text()
    line = f"disp -mm {-0.5 * strength:.6g} {strength:.6g} {displacement_name}\n"
    atomic_write(material, (text + line).encode())


def _add_glb_extras(path: Path, extras: dict[str, Any]) -> None:
    """Merge ``extras`` into the first material's ``extras`` of a GLB (rewriting its JSON chunk)."""
    data = path.read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    length, kind = struct.unpack_from("<I4s", data, 12)
    if magic != b"glTF" or kind != b"JSON":
        raise ValueError(f"{path} is not a binary glTF")
    gltf = json.loads(data[20 : 20 + length])
    materials = gltf.setdefault("materials", [{}])
    materials[0].setdefault("extras", {}).update(extras)
    chunk = json.dumps(gltf, separators=(",", ":")).encode()
    chunk += b" " * (-len(chunk) % 4)  # JSON chunks are padded with spaces to 4 bytes
    rest = data[20 + length :]
    header = struct.pack("<4sII", magic, version, 12 + 8 + len(chunk) + len(rest))
    atomic_write(path, header + struct.pack("<I4s", len(chunk), b"JSON") + chunk + rest)
