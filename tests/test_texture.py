"""The visibility-aware photo texture (outputs/texture.py) on a real turned face (AFLW2000-3D image02024,
the subject's right cheek turned away from the camera), and UVs made by xatlas for a mesh without any.

MediaPipe's canonical UV layout is left-right symmetric about u = 0.5 (to ~1e-3), so a texel's mirror is
the texel in the same row, mirrored column: an independent check of the fill's source."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from facerecon.kernel.contract.records import IBUG68
from facerecon.kernel.host.imageio import load_image
from facerecon.outputs.texture import (
    TexelSurface,
    bake_texture,
    feathered,
    mirror_vertices,
    photo_unwrap,
    symmetry_plane,
    visibility,
    with_atlas_uvs,
)

SIZE = 512


@pytest.fixture(scope="module")
def turned(shared_data, pipeline):
    image = load_image(shared_data / "faces" / "samples" / "aflw2000" / "image02024.jpg")
    face = pipeline(image).reconstructions[0]
    mesh = face.final.mesh
    texels = TexelSurface.of(mesh, SIZE)
    weight = np.zeros((SIZE, SIZE))
    weight[texels.mask] = feathered(visibility(mesh, texels, image.shape), texels.mask, SIZE)
    new = bake_texture(mesh, image, SIZE, face.segmentation).astype(np.float64)
    old = photo_unwrap(mesh, image, SIZE).astype(np.float64)
    return mesh, texels.mask, weight, new, old


def test_a_turned_face_hides_texels(turned):
    _, mask, weight, _, _ = turned
    hidden = (weight < 0.05) & mask
    assert 0.1 < hidden.sum() / mask.sum() < 0.6
    # Hidden on one side: the image-left half of the layout (the subject's right cheek) far more than the other.
    left, right = hidden[:, : SIZE // 2].sum(), hidden[:, SIZE // 2 :].sum()
    assert left > 3 * right


def test_hidden_texels_are_filled_from_the_mirrored_visible_side(turned):
    _, mask, weight, new, old = turned
    mirror_weight = weight[:, ::-1]
    mirror_mask = mask[:, ::-1]
    filled = mask & mirror_mask & (weight < 0.02) & (mirror_weight > 0.98)
    assert filled.sum() > 5000
    mirrored_photo = old[:, ::-1]  # the visible side's colours, seen through the mirror
    new_error = np.abs(new - mirrored_photo).mean(axis=2)[filled]
    old_error = np.abs(old - mirrored_photo).mean(axis=2)[filled]
    print(f"hidden texels vs their mirror: new {np.median(new_error):.1f}, old {np.median(old_error):.1f} grey levels")
    assert np.median(new_error) < 6.0
    assert np.median(old_error) > 3 * np.median(new_error)


def coherence(texture: np.ndarray, region: np.ndarray) -> float:
    """Mean structure-tensor coherence ((l1 - l2) / (l1 + l2))^2 over ``region``: near 1 where the texture
    varies along one direction only (a smear's streaks), lower for skin, hair and features."""
    import cv2

    grey = texture.mean(axis=2).astype(np.float32)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = (cv2.GaussianBlur(a, (0, 0), 4) for a in (gx * gx, gy * gy, gx * gy))
    trace = jxx + jyy
    root = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)
    strong = region & (trace > np.percentile(trace[region], 50))
    return float(np.mean((root / np.maximum(trace, 1e-6))[strong] ** 2))


def test_no_stretched_smears_where_the_photo_saw_the_surface_edge_on(turned):
    _, mask, weight, new, old = turned
    from scipy.ndimage import binary_erosion

    hidden = binary_erosion((weight < 0.05) & mask, iterations=6)
    seen = binary_erosion((weight > 0.95) & mask, iterations=6)
    old_hidden, new_hidden, new_seen = coherence(old, hidden), coherence(new, hidden), coherence(new, seen)
    print(f"coherence: old hidden {old_hidden:.2f}, new hidden {new_hidden:.2f}, new seen {new_seen:.2f}")
    assert old_hidden > new_hidden + 0.1  # the plain unwrap's streaks
    assert new_hidden < new_seen + 0.05  # the fill is no more streaky than the photo's own texels


def test_the_mirror_of_the_canonical_layout_is_its_uv_mirror(turned):
    mesh = turned[0]
    mirror = mirror_vertices(mesh)
    uv = np.asarray(mesh.uvs, np.float64)
    assert np.abs(uv[mirror, 0] - (1 - uv[:, 0])).max() < 2e-3
    # The symmetry plane from the landmarks agrees: reflected vertices land near their UV mirrors.
    normal, offset = symmetry_plane(mesh.vertices, mesh.landmark_maps[IBUG68])
    vertices = np.asarray(mesh.vertices, np.float64)
    reflected = vertices - 2 * (vertices @ normal - offset)[:, None] * normal
    face_width = np.ptp(vertices[:, 0])
    assert np.median(np.linalg.norm(reflected - vertices[mirror], axis=1)) < 0.05 * face_width


def test_a_mesh_without_uvs_gets_an_xatlas_layout_and_a_texture(pipeline, face_photo, tmp_path):
    pytest.importorskip("xatlas")
    from facerecon.facelib.canonical import CanonicalTopology
    from facerecon.outputs.folder import write_outputs

    rec = pipeline(face_photo)
    face = rec.reconstructions[0]
    small = CanonicalTopology.load(None, 1).mesh(np.asarray(face.face.landmarks.points[:468], np.float64))
    bare = replace(small, uvs=None)
    atlas = with_atlas_uvs(bare)
    assert atlas.uvs is not None and atlas.uvs.min() >= 0 and atlas.uvs.max() <= 1
    assert atlas.topology.endswith("-xatlas")
    assert len(atlas.triangles) == len(bare.triangles) and len(atlas.vertices) >= len(bare.vertices)
    assert np.array_equal(np.unique(atlas.vertices, axis=0), np.unique(bare.vertices, axis=0))
    # Landmarks stay where they were (the map follows the split vertices).
    assert np.allclose(atlas.landmarks(IBUG68).xy, bare.landmarks(IBUG68).xy, atol=1e-3)
    texture = bake_texture(atlas, face_photo, 256)
    assert texture.shape == (256, 256, 3) and texture.std() > 10
    # The output folder gives such a stage a textured file.
    stage = replace(face.stages[0], mesh=bare)
    bare_rec = replace(rec, reconstructions=(replace(face, stages=(stage,)),))
    write_outputs(bare_rec, face_photo, tmp_path / "out", source="photo", texture_size=256)
    obj = (tmp_path / "out" / "coarse.obj").read_text()
    assert (tmp_path / "out" / "coarse.png").is_file() and "\nvt " in obj
    import json

    (entry,) = json.loads((tmp_path / "out" / "result.json").read_text())["reconstructions"][0]["stages"]
    assert entry["vertices"] == len(bare.vertices) and entry["file_vertices"] == len(atlas.vertices)


def test_a_uv_layout_is_rasterised_once_per_size_and_kept_read_only(turned):
    from facerecon.outputs.texture import uv_raster

    mesh = turned[0]
    moved = replace(mesh, vertices=np.asarray(mesh.vertices) * 1.5)  # another face of the same layout
    first, again = uv_raster(mesh, SIZE), uv_raster(moved, SIZE)
    assert again is first  # the same arrays, not rasterised again
    assert not first.triangle.flags.writeable and not first.barycentric.flags.writeable
    smaller = uv_raster(mesh, SIZE // 2)
    assert smaller.triangle.shape == (SIZE // 2, SIZE // 2)
    # (the texel points are rounded to float32, as before the cache)
    np.testing.assert_allclose(TexelSurface.of(moved, SIZE).points, 1.5 * TexelSurface.of(mesh, SIZE).points, atol=1e-4)


def test_compiled_blend_equals_the_numpy_form(turned, shared_data, pipeline, monkeypatch):
    """The bake's per-texel loops give the bytes the vectorised form gives (mirror fill included)."""
    from facerecon.outputs import texture

    mesh = turned[0]
    image = load_image(shared_data / "faces" / "samples" / "aflw2000" / "image02024.jpg")
    compiled_texture = bake_texture(mesh, image, SIZE)
    monkeypatch.setattr(texture, "compiled", lambda loop: None)
    assert np.array_equal(compiled_texture, bake_texture(mesh, image, SIZE))
