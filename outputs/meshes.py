"""Writing meshes that open upright, textured, in Blender, MeshLab and web viewers.

Meshes live in the mesh frame (x right, y down, z away from the camera, see records.py); files use the
y-up, z-towards-the-viewer convention, so exporters turn the mesh 180 degrees about x: (x, y, z) ->
(x, -y, -z). A rotation, not a mirror: handedness and triangle winding stay right. Coordinates keep
the mesh's units (pixels or millimetres).

Every file is written atomically (a temporary file in the same folder, then renamed), so a crash or
Ctrl-C never leaves half a mesh behind. Writers are looked up by suffix in :data:`WRITERS`.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from facerecon.geometry.raster import interpolate, rasterize
from facerecon.kernel.contract.records import Mesh

Y_UP = np.array([1.0, -1.0, -1.0])


def to_y_up(vertices: np.ndarray) -> np.ndarray:
    """Mesh-frame vertices (N, 3) -> file frame (y up, z towards the viewer)."""
    return np.asarray(vertices, np.float64) * Y_UP


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def bake_texture(mesh: Mesh, image: np.ndarray, size: int = 1024) -> np.ndarray:
    """Unwrap the photo into the mesh's UV layout: uint8 (size, size, 3) RGB, v up as OBJ expects.

    Each texel finds its surface point by rasterising the mesh in UV space, then samples the photo where
    that point projects (bilinear). Texels not covered by the UV layout stay the mean face colour.
    """
    if mesh.uvs is None:
        raise ValueError(f"mesh of topology {mesh.topology!r} has no UVs to bake a texture into")
    uv = np.asarray(mesh.uvs, np.float64)
    # Texture rows go top to bottom while v goes up: row = (1 - v) * size - 0.5.
    flat = np.column_stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5, np.zeros(len(uv))])
    raster = rasterize(flat, mesh.triangles, size, size)
    pixels = interpolate(raster, mesh.triangles, mesh.project(np.asarray(mesh.vertices)))
    colours = _bilinear(image, pixels[..., 0], pixels[..., 1])
    mask = raster.mask
    texture = np.empty((size, size, 3), np.uint8)
    texture[:] = colours[mask].mean(axis=0).astype(np.uint8) if mask.any() else 128
    texture[mask] = colours[mask]
    return texture


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]

    def at(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:  # only the sampled pixels become float
        return image[rows, cols].astype(np.float32)

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return np.clip(top * (1 - fy) + bottom * fy + 0.5, 0, 255).astype(np.uint8)


def write_obj(mesh: Mesh, path: str | Path, texture: np.ndarray | None = None) -> list[Path]:
    """Wavefront OBJ (+ .mtl and .png when a texture is given). Returns the files written."""
    path = Path(path)
    vertices = to_y_up(mesh.vertices)
    lines = [f"# facerecon mesh, topology {mesh.topology}, units {mesh.units}, y up"]
    written = [path]
    if texture is not None and mesh.uvs is not None:
        material, picture = path.with_suffix(".mtl"), path.with_suffix(".png")
        atomic_write(picture, png_bytes(texture))
        mtl = f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {picture.name}\n"
        atomic_write(material, mtl.encode())
        lines += [f"mtllib {material.name}", "usemtl face"]
        written += [material, picture]
    body = io.StringIO()
    body.write("\n".join(lines) + "\n")
    np.savetxt(body, vertices, fmt="v %.6f %.6f %.6f")
    faces = np.asarray(mesh.triangles) + 1
    if mesh.uvs is not None:
        np.savetxt(body, mesh.uvs, fmt="vt %.6f %.6f")
        np.savetxt(body, np.repeat(faces, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(body, faces, fmt="f %d %d %d")
    atomic_write(path, body.getvalue().encode())
    return written


def _trimesh_export(mesh: Mesh, path: Path, file_type: str, texture: np.ndarray | None) -> list[Path]:
    import trimesh

    visual = None
    if texture is not None and mesh.uvs is not None:
        visual = trimesh.visual.TextureVisuals(uv=np.asarray(mesh.uvs), image=Image.fromarray(texture))
    shape = trimesh.Trimesh(to_y_up(mesh.vertices), np.asarray(mesh.triangles), visual=visual, process=False)
    exported = shape.export(file_type=file_type)
    atomic_write(path, exported if isinstance(exported, bytes) else str(exported).encode())
    return [path]


def write_ply(mesh: Mesh, path: str | Path, texture: np.ndarray | None = None) -> list[Path]:
    """Binary PLY (geometry only; PLY has no standard texture reference)."""
    return _trimesh_export(mesh, Path(path), "ply", None)


def write_glb(mesh: Mesh, path: str | Path, texture: np.ndarray | None = None) -> list[Path]:
    """Binary glTF with the texture embedded (opens in Blender, three.js, Windows 3D Viewer)."""
    return _trimesh_export(mesh, Path(path), "glb", texture)


WRITERS: dict[str, Callable[[Mesh, str | Path, np.ndarray | None], list[Path]]] = {
    ".obj": write_obj,
    ".ply": write_ply,
    ".glb": write_glb,
}


def write_mesh(mesh: Mesh, path: str | Path, texture: np.ndarray | None = None) -> list[Path]:
    """Write ``mesh`` in the format its suffix names (.obj, .ply, .glb); returns the files written."""
    suffix = Path(path).suffix.lower()
    try:
        writer = WRITERS[suffix]
    except KeyError:
        raise ValueError(f"unknown mesh format {suffix!r} (known: {', '.join(WRITERS)})") from None
    return writer(mesh, path, texture)
