"""Writing meshes that open upright, textured and smooth-shaded in Blender, MeshLab and web viewers.

Meshes live in the mesh frame (x right, y down, z away from the camera, see records.py); a file's
coordinates are a :class:`~facerecon.outputs.frames.FileFrame`'s: the head frame (pose removed, y up,
millimetres; what ``write_outputs`` writes by default) or the image frame (the mesh frame turned 180 degrees
about x: y up, z towards the viewer, the mesh's units; the writers' default for a bare mesh). Both are
rotations (plus scale and offset), never mirrors: handedness and triangle winding stay right.

Every format carries vertex normals (so viewers smooth-shade), UVs where the mesh has them, and a PBR
skin material (metallic 0, base colour factor 1, roughness :data:`ROUGHNESS`): GLB's own
``pbrMetallicRoughness`` (baseColorTexture, normalTexture), the MTL's ``Kd``/``Pr``/``Pm`` with ``map_Kd``
and ``norm``/``map_Bump`` (what Blender's importer reads), PLY's per-vertex colours sampled from the
texture plus ``comment TextureFile``. GLB coordinates are metres where the frame is in millimetres
(glTF's unit is the metre).

Every file is written atomically (a temporary file in the same folder, then renamed), so a crash or
Ctrl-C never leaves half a mesh behind. Writers are looked up by suffix in :data:`WRITERS`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from facerecon.geometry.raster import vertex_normals
from facerecon.geometry.tangents import vertex_tangents
from facerecon.kernel.contract.records import Mesh
from facerecon.outputs import objtext
from facerecon.outputs.frames import FileFrame, image_frame
from facerecon.outputs.gltf import GlbMaterial, glb_bytes

ROUGHNESS = 0.6
"""PBR roughness of the skin material: skin is a dielectric (metallic 0), neither a mirror nor chalk."""

SPECULAR = 0.25
"""The MTL's Ks (Phong viewers' highlight; Blender reads it as its specular level)."""


class TextureWarning(UserWarning):
    """A texture or normal map was given for a mesh without UVs: the file is written without it."""


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


PNG_COMPRESSION = 1
"""zlib level of the PNGs facerecon writes: 1 encodes a 1024² texture or the preview 3-4x faster than 6
(PIL's default, facerecon 0.7's) for 20-30% more bytes (``--png-compression 6``: the smaller files)."""


def png_bytes(image: np.ndarray, level: int = PNG_COMPRESSION) -> bytes:
    """PNG of a uint8 (H, W[, 3 or 4]) RGB(A) or uint16 (H, W) image at zlib ``level`` (0-9).

    Encoded by OpenCV's libpng with every row's filter "up" (the row above as the prediction): on photos
    and renders as small as libpng's adaptive per-row choice (PIL's way) and ~2x faster to encode."""
    import cv2

    if not 0 <= level <= 9:
        raise ValueError(f"PNG compression level must be 0-9, got {level}")
    image = np.ascontiguousarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    options = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        options += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    ok, encoded = cv2.imencode(".png", image, options)
    if not ok:
        raise ValueError(f"cannot encode a {image.dtype} {image.shape} image as PNG")
    return encoded.tobytes()


class PngImage:
    """A uint8 (H, W, 3) image and its PNG, encoded on first use and then shared by every file that holds
    it (a texture written beside an OBJ and a PLY and embedded in a GLB is encoded once)."""

    def __init__(self, pixels: np.ndarray, level: int = PNG_COMPRESSION) -> None:
        self.pixels = pixels
        self.level = level
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = png_bytes(self.pixels, self.level)
        return self._data


def _pixels(image: np.ndarray | PngImage) -> np.ndarray:
    return image.pixels if isinstance(image, PngImage) else np.asarray(image)


@dataclass(frozen=True)
class FileMesh:
    """A mesh as it goes into a file: float64 (N, 3) vertices and float32 (N, 3) unit normals in the frame's
    coordinates, int32 (M, 3) triangles, the UVs (float32 (N, 2), v up) or None, and the images a file
    may reference (uint8 (H, W, 3) with their PNG; None when not given or the mesh has no UVs)."""

    vertices: np.ndarray
    normals: np.ndarray
    triangles: np.ndarray
    uvs: np.ndarray | None
    texture: PngImage | None
    normal_map: PngImage | None
    frame: FileFrame
    header: str


def file_mesh(
    mesh: Mesh,
    texture: np.ndarray | PngImage | None = None,
    normal_map: np.ndarray | PngImage | None = None,
    frame: FileFrame | None = None,
    *,
    path: str | Path = "mesh",
) -> FileMesh:
    """Check the images, move the mesh into ``frame`` (default: its image frame) and compute its normals."""
    frame = frame if frame is not None else image_frame(mesh)
    to_file = np.asarray(frame.to_file, np.float64)
    if to_file.shape != (4, 4) or not np.linalg.det(to_file[:3, :3]) > 0:
        raise ValueError("a file frame must be a 4x4 similarity with a positive determinant (no mirror)")
    images: dict[str, PngImage | None] = {}
    for name, given in (("texture", texture), ("normal_map", normal_map)):
        if given is None:
            images[name] = None
            continue
        image = _pixels(given)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"{name} must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        images[name] = given if isinstance(given, PngImage) else PngImage(image)
    if mesh.uvs is None and any(image is not None for image in images.values()):
        dropped = " and ".join(name.replace("_", " ") for name, image in images.items() if image is not None)
        warnings.warn(
            f"{Path(path).name}: the mesh (topology {mesh.topology!r}) has no UVs; written without its {dropped}",
            TextureWarning,
            stacklevel=3,
        )
        images = {name: None for name in images}
    vertices = frame.apply(mesh.vertices)
    triangles = np.asarray(mesh.triangles, np.int32)
    normals = vertex_normals(vertices, triangles) if len(triangles) else np.zeros_like(vertices)
    # Vertices on no triangle (or only on degenerate ones) still need a unit normal (glTF requires it).
    normals[np.linalg.norm(normals, axis=1) < 0.5] = (0.0, 0.0, 1.0)
    header = f"facerecon mesh, topology {mesh.topology}, {frame.name} frame, units {frame.units}, y up"
    return FileMesh(
        vertices=vertices,
        normals=normals.astype(np.float32),
        triangles=triangles,
        uvs=None if mesh.uvs is None else np.asarray(mesh.uvs, np.float32),
        texture=images["texture"],
        normal_map=images["normal_map"],
        frame=frame,
        header=header,
    )


def _write_images(shape: FileMesh, path: Path) -> tuple[list[Path], str | None, str | None]:
    """The texture (``<stem>.png``) and normal map (``<stem>_uv_normal.png``) beside ``path``."""
    written: list[Path] = []
    names: list[str | None] = []
    for image, file in ((shape.texture, path.with_suffix(".png")), (shape.normal_map, _normal_map_path(path))):
        if image is None:
            names.append(None)
            continue
        atomic_write(file, image.data)
        written.append(file)
        names.append(file.name)
    return written, names[0], names[1]


def _normal_map_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}_uv_normal.png")


def material_name(path: str | Path) -> str:
    """The material's name in a mesh file: the file's stem (``final``, ``face1-coarse``), blanks replaced.
    Every file has its own: tools that match materials by name (Unity's model importer reuses an existing
    material of that name; several faces' OBJs in one scene) would otherwise give them all one texture."""
    return "_".join(Path(path).stem.split()) or "face"


def mtl_text(texture: str | None, normal_map: str | None, name: str = "face") -> str:
    """The skin material ``name`` as MTL, with the PBR extension Blender's importer reads (Pr roughness, Pm
    metallic; Ka 0: Blender reads the ambient colour as metallic)."""
    lines = [
        "# facerecon skin material: PBR metallic 0, base colour factor 1, roughness " + f"{ROUGHNESS:g}",
        f"newmtl {name}",
        "Ka 0.000 0.000 0.000",
        "Kd 1.000 1.000 1.000",
        f"Ks {SPECULAR:.3f} {SPECULAR:.3f} {SPECULAR:.3f}",
        f"Ns {1000 * (1 - ROUGHNESS) ** 2:.1f}",  # Blender: roughness = 1 - sqrt(Ns / 1000)
        "illum 2",
        f"Pr {ROUGHNESS:g}",
        "Pm 0",
    ]
    if texture is not None:
        lines.append(f"map_Kd {texture}")
    if normal_map is not None:  # norm: three.js' MTLLoader; map_Bump: Blender's OBJ importer (a Normal Map node)
        lines += [
            "# normal map: tangent space (MikkTSpace), OpenGL convention (green = +v, Y+); colour space Non-Color",
            f"norm {normal_map}",
            f"map_Bump -bm 1 {normal_map}",
        ]
    return "\n".join(lines) + "\n"


def write_obj(
    mesh: Mesh,
    path: str | Path,
    texture: np.ndarray | PngImage | None = None,
    *,
    normal_map: np.ndarray | PngImage | None = None,
    frame: FileFrame | None = None,
) -> list[Path]:
    """Wavefront OBJ with vertex normals and UVs, its .mtl (the skin material) and, when given, the texture
    ``<stem>.png`` and the tangent-space normal map ``<stem>_uv_normal.png`` (uint8 (H, W, 3), OpenGL
    convention). ``frame``: the file's coordinates (default: the mesh's image frame). Returns the files."""
    path = Path(path)
    shape = file_mesh(mesh, texture, normal_map, frame, path=path)
    written, texture_name, normal_name = _write_images(shape, path)
    material = path.with_suffix(".mtl")
    name = material_name(path)
    atomic_write(material, mtl_text(texture_name, normal_name, name).encode())
    body = [f"# {shape.header}\nmtllib {material.name}\nusemtl {name}\n".encode()]
    body += [objtext.number_lines("v", shape.vertices, 6), objtext.number_lines("vn", shape.normals, 5)]
    if shape.uvs is not None:
        body.append(objtext.number_lines("vt", shape.uvs, 6))
    body.append(objtext.face_lines(shape.triangles + 1, with_uvs=shape.uvs is not None))
    atomic_write(path, b"".join(body))
    return [path, material, *written]


def write_ply(
    mesh: Mesh,
    path: str | Path,
    texture: np.ndarray | PngImage | None = None,
    *,
    normal_map: np.ndarray | PngImage | None = None,
    frame: FileFrame | None = None,
) -> list[Path]:
    """Binary PLY: positions, normals, UVs (``s``, ``t``) and, with a texture, per-vertex colours sampled
    from it, the texture written beside it and named by ``comment TextureFile`` (MeshLab's convention). PLY
    has no normal-map reference: ``normal_map`` is only checked."""
    path = Path(path)
    shape = file_mesh(mesh, texture, normal_map, frame, path=path)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if shape.uvs is not None:
        fields += [("s", "<f4"), ("t", "<f4")]
    if shape.texture is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertices = np.zeros(len(shape.vertices), dtype=fields)
    for i, axis in enumerate("xyz"):
        vertices[axis] = shape.vertices[:, i]
        vertices[f"n{axis}"] = shape.normals[:, i]
    written = []
    header = ["ply", "format binary_little_endian 1.0", f"comment {shape.header}"]
    if shape.uvs is not None:
        vertices["s"], vertices["t"] = shape.uvs[:, 0], shape.uvs[:, 1]
    if shape.texture is not None and shape.uvs is not None:
        colours = _texels(shape.texture.pixels, shape.uvs)
        for i, channel in enumerate(("red", "green", "blue")):
            vertices[channel] = colours[:, i]
        picture = path.with_suffix(".png")
        atomic_write(picture, shape.texture.data)
        written.append(picture)
        header.append(f"comment TextureFile {picture.name}")
    types = {"<f4": "float", "u1": "uchar"}
    header.append(f"element vertex {len(vertices)}")
    header += [f"property {types[kind]} {name}" for name, kind in fields]
    header += [f"element face {len(shape.triangles)}", "property list uchar int vertex_indices", "end_header"]
    faces = np.zeros(len(shape.triangles), dtype=[("n", "u1"), ("ids", "<i4", (3,))])
    faces["n"], faces["ids"] = 3, shape.triangles
    atomic_write(path, ("\n".join(header) + "\n").encode() + vertices.tobytes() + faces.tobytes())
    return [path, *written]


def _texels(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """uint8 (N, 3): the texel under each UV (nearest; rows top to bottom, v up)."""
    height, width = texture.shape[:2]
    cols = np.clip(np.round(uvs[:, 0] * width - 0.5), 0, width - 1).astype(int)
    rows = np.clip(np.round((1.0 - uvs[:, 1]) * height - 0.5), 0, height - 1).astype(int)
    return texture[rows, cols]


def write_glb(
    mesh: Mesh,
    path: str | Path,
    texture: np.ndarray | PngImage | None = None,
    *,
    normal_map: np.ndarray | PngImage | None = None,
    frame: FileFrame | None = None,
) -> list[Path]:
    """Binary glTF (opens in Blender, three.js, Windows 3D Viewer): positions (metres where the frame is in
    millimetres), normals, UVs, and the skin material as ``pbrMetallicRoughness`` (metallicFactor 0,
    baseColorFactor 1, roughnessFactor :data:`ROUGHNESS`) with the texture as ``baseColorTexture`` and the
    tangent-space normal map (OpenGL convention, glTF's own) as ``normalTexture``, both embedded; with a
    normal map, the TANGENT attribute the map was baked against (:func:`geometry.tangents.vertex_tangents`
    of the file's normals and UVs) so that viewers need not generate their own."""
    path = Path(path)
    shape = file_mesh(mesh, texture, normal_map, frame, path=path)
    tangents = None
    if shape.normal_map is not None and shape.uvs is not None and len(shape.triangles):
        tangents = vertex_tangents(shape.vertices, shape.triangles, shape.uvs, shape.normals)
    material = GlbMaterial(
        name=material_name(path),
        base_color_factor=(1.0, 1.0, 1.0, 1.0),
        metallic=0.0,
        roughness=ROUGHNESS,
        base_color_png=None if shape.texture is None else shape.texture.data,
        normal_png=None if shape.normal_map is None else shape.normal_map.data,
    )
    metres = 1e-3 if shape.frame.units == "mm" else 1.0
    data = glb_bytes(
        shape.vertices * metres,
        shape.normals,
        shape.triangles,
        material,
        uvs=shape.uvs,
        tangents=tangents,
        name=path.stem,
    )
    atomic_write(path, data)
    return [path]


class MeshWriter(Protocol):
    """A writer of one format: ``writer(mesh, path, texture=None, *, normal_map=None, frame=None)`` -> the
    files written (see :func:`write_mesh` for the arguments)."""

    def __call__(
        self,
        mesh: Mesh,
        path: str | Path,
        texture: np.ndarray | PngImage | None = None,
        *,
        normal_map: np.ndarray | PngImage | None = None,
        frame: FileFrame | None = None,
    ) -> list[Path]: ...


def mesh_formats(names: Iterable[str]) -> tuple[tuple[str, ...], list[str]]:
    """Mesh format names as given (``"OBJ"``, ``".obj"``, blanks skipped) -> the formats (``"obj"``, each
    once, in the order given) and the given names no writer has, quoted as given (for a message)."""
    given = [name.strip() for name in names if name.strip()]
    formats = [name.lower().removeprefix(".") for name in given]
    unknown = [repr(g) for g, f in zip(given, formats, strict=True) if f".{f}" not in WRITERS]
    return tuple(dict.fromkeys(formats)), unknown


WRITERS: dict[str, MeshWriter] = {
    ".obj": write_obj,
    ".ply": write_ply,
    ".glb": write_glb,
}


def write_mesh(
    mesh: Mesh,
    path: str | Path,
    texture: np.ndarray | PngImage | None = None,
    *,
    normal_map: np.ndarray | PngImage | None = None,
    frame: FileFrame | None = None,
) -> list[Path]:
    """Write ``mesh`` in the format its suffix names (.obj, .ply, .glb); returns the files written.

    texture: uint8 (H, W, 3) RGB base colour in the mesh's UV layout (rows top to bottom, v up).
    normal_map: uint8 (H, W, 3) tangent-space normal map in the UV layout, OpenGL convention (x along u,
        y along v: green up, z out of the surface; (n + 1) / 2 * 255).
    frame: the file's coordinates (:func:`facerecon.outputs.frames.head_frame` for a reconstructed face's
        head frame); default: the mesh's image frame (y up, the mesh's units).
    A texture or normal map for a mesh without UVs is left out with a :class:`TextureWarning`.
    """
    suffix = Path(path).suffix.lower()
    try:
        writer = WRITERS[suffix]
    except KeyError:
        raise ValueError(f"unknown mesh format {suffix!r} (known: {', '.join(WRITERS)})") from None
    return writer(mesh, path, texture, normal_map=normal_map, frame=frame)
