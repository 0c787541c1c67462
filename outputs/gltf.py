"""Binary glTF 2.0 (``.glb``) of one textured triangle mesh, written directly (no scene library).

One scene, one node, one mesh with one triangle primitive: POSITION (with its min / max, as glTF
requires), NORMAL, TEXCOORD_0 (glTF's v points down the image: v_gltf = 1 - v), TANGENT when a normal map
is given (xyz + the bitangent sign w, MikkTSpace-style, :mod:`facerecon.geometry.tangents`; without them a
viewer must generate its own and the Khronos validator warns MESH_PRIMITIVE_GENERATED_TANGENT_SPACE), and
uint32 indices; a PBR metallic-roughness material with the base colour and normal map embedded as PNG.
Every buffer view starts on a 4-byte boundary; the JSON chunk is padded with spaces, the binary chunk with
zeros (glTF 2.0, section "GLB File Format Specification").
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from facerecon.geometry.bounds import bounds

FLOAT, UNSIGNED_INT = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
LINEAR, LINEAR_MIPMAP_LINEAR, REPEAT = 9729, 9987, 10497


@dataclass(frozen=True)
class GlbMaterial:
    """The PBR material: factors, and the PNG bytes of the base colour and tangent-space normal map."""

    name: str
    base_color_factor: tuple[float, float, float, float]
    metallic: float
    roughness: float
    base_color_png: bytes | None = None
    normal_png: bytes | None = None


def glb_bytes(
    positions: np.ndarray,
    normals: np.ndarray,
    triangles: np.ndarray,
    material: GlbMaterial,
    *,
    uvs: np.ndarray | None = None,
    tangents: np.ndarray | None = None,
    name: str = "mesh",
    extras: dict[str, Any] | None = None,
) -> bytes:
    """The .glb file: positions float (N, 3) in metres, unit normals (N, 3), triangles int (M, 3), UVs
    float (N, 2) with v up (or None), tangents float (N, 4) (or None)."""
    blob = bytearray()
    views: list[dict[str, Any]] = []
    accessors: list[dict[str, Any]] = []

    def view(data: bytes, target: int | None = None) -> int:
        blob.extend(b"\0" * (-len(blob) % 4))
        entry: dict[str, Any] = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            entry["target"] = target
        blob.extend(data)
        views.append(entry)
        return len(views) - 1

    def accessor(values: np.ndarray, kind: str, component: int, target: int, with_bounds: bool = False) -> int:
        array = np.ascontiguousarray(values, np.float32 if component == FLOAT else np.uint32)
        entry: dict[str, Any] = {
            "bufferView": view(array.tobytes(), target),
            "componentType": component,
            "count": int(array.shape[0] if kind != "SCALAR" else array.size),
            "type": kind,
        }
        if with_bounds and len(array):
            lo, hi = bounds(array)
            entry["min"], entry["max"] = lo.tolist(), hi.tolist()
        accessors.append(entry)
        return len(accessors) - 1

    attributes = {
        "POSITION": accessor(positions, "VEC3", FLOAT, ARRAY_BUFFER, with_bounds=True),
        "NORMAL": accessor(normals, "VEC3", FLOAT, ARRAY_BUFFER),
    }
    if uvs is not None:
        uv = np.asarray(uvs, np.float64)
        attributes["TEXCOORD_0"] = accessor(np.column_stack([uv[:, 0], 1.0 - uv[:, 1]]), "VEC2", FLOAT, ARRAY_BUFFER)
    if tangents is not None:
        attributes["TANGENT"] = accessor(tangents, "VEC4", FLOAT, ARRAY_BUFFER)
    primitive = {
        "attributes": attributes,
        "indices": accessor(np.asarray(triangles).ravel(), "SCALAR", UNSIGNED_INT, ELEMENT_ARRAY_BUFFER),
        "material": 0,
        "mode": 4,
    }
    pbr: dict[str, Any] = {
        "baseColorFactor": list(material.base_color_factor),
        "metallicFactor": material.metallic,
        "roughnessFactor": material.roughness,
    }
    gltf_material: dict[str, Any] = {"name": material.name, "pbrMetallicRoughness": pbr}
    images: list[dict[str, Any]] = []
    textured = uvs is not None
    for png, slot in ((material.base_color_png, "base"), (material.normal_png, "normal")):
        if png is None or not textured:
            continue
        images.append({"bufferView": view(png), "mimeType": "image/png"})
        index = len(images) - 1
        if slot == "base":
            pbr["baseColorTexture"] = {"index": index, "texCoord": 0}
        else:
            gltf_material["normalTexture"] = {"index": index, "texCoord": 0}
    if extras:
        gltf_material["extras"] = extras
    gltf: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "facerecon"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"name": name, "mesh": 0}],
        "meshes": [{"name": name, "primitives": [primitive]}],
        "materials": [gltf_material],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob) + (-len(blob) % 4)}],
    }
    if images:
        gltf["images"] = images
        gltf["samplers"] = [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": REPEAT, "wrapT": REPEAT}]
        gltf["textures"] = [{"source": i, "sampler": 0} for i in range(len(images))]
    chunk = json.dumps(gltf, separators=(",", ":")).encode()
    chunk += b" " * (-len(chunk) % 4)
    blob.extend(b"\0" * (-len(blob) % 4))
    total = 12 + 8 + len(chunk) + 8 + len(blob)
    return b"".join(
        [
            struct.pack("<4sII", b"glTF", 2, total),
            struct.pack("<I4s", len(chunk), b"JSON"),
            chunk,
            struct.pack("<I4s", len(blob), b"BIN\0"),
            bytes(blob),
        ]
    )
