"""Every mesh file facerecon writes, read back as a user's tools read it (issue 17, items 5-7).

* Frames: the files default to the head frame (pose removed, centred, y up, millimetres); ``frame="image"``
  keeps the photo's placement; result.json's transforms map one onto the other and onto image pixels.
* Materials and normals: a PBR skin material (metallic 0, base colour factor 1) and unit vertex normals in
  GLB, OBJ/MTL and PLY; a normal map as glTF's normalTexture and the MTL's norm / map_Bump.
* Conformance: each format re-imports (trimesh) with the in-memory vertex count and bounds, and every GLB
  passes the Khronos glTF validator (npm gltf-validator, scripts/gltf-validator) with 0 errors.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import REPO, missing
from PIL import Image

from facerecon.facelib.canonical import CanonicalTopology
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.contract import IBUG68, CoarseResult, FaceReconstruction, Mesh, StageResult
from facerecon.outputs.folder import write_outputs
from facerecon.outputs.frames import AVERAGE_OUTER_EYE_CORNERS_MM, file_frame, head_frame, image_frame
from facerecon.outputs.meshes import ROUGHNESS, TextureWarning, write_mesh
from facerecon.outputs.preview import PREVIEW_HEIGHT, render_preview

VALIDATOR = REPO / "scripts" / "gltf-validator"
FORMATS = ("obj", "ply", "glb")
TEXTURE = 256


@pytest.fixture(scope="session")
def validate_gltf():
    """Run the Khronos glTF validator on files: -> one report dict per file (errors, warnings, messages)."""
    node = shutil.which("node")
    if node is None:
        missing("node is not installed (Node.js 18+ runs the Khronos glTF validator)")
    if not (VALIDATOR / "node_modules" / "gltf-validator").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            missing("npm is not installed (it installs the glTF validator: make gltf-validator)")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=VALIDATOR, check=True, capture_output=True, timeout=300
        )

    def validate(paths: list[Path]) -> list[dict]:
        run = subprocess.run(
            [node, str(VALIDATOR / "validate.js"), *map(str, paths)], capture_output=True, text=True, timeout=300
        )
        assert run.returncode in (0, 1), run.stderr
        return [json.loads(line) for line in run.stdout.splitlines()]

    return validate


def glb_json(path: Path) -> dict:
    """The JSON chunk of a binary glTF (the header is 12 bytes, then chunk length and type)."""
    data = path.read_bytes()
    magic, version, _ = struct.unpack("<4sII", data[:12])
    length, kind = struct.unpack("<I4s", data[12:20])
    assert magic == b"glTF" and version == 2 and kind == b"JSON"
    return json.loads(data[20 : 20 + length])


def glb_accessor(path: Path, attribute: str) -> np.ndarray:
    """The float32 values of a GLB's first primitive's ``attribute`` (tightly packed, as facerecon writes)."""
    data = path.read_bytes()
    gltf = glb_json(path)
    accessor = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"][attribute]]
    view = gltf["bufferViews"][accessor["bufferView"]]
    width = {"VEC2": 2, "VEC3": 3, "VEC4": 4}[accessor["type"]]
    json_length = struct.unpack("<I", data[12:16])[0]
    start = 20 + json_length + 8 + view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    return np.frombuffer(data, "<f4", accessor["count"] * width, start).reshape(-1, width).astype(np.float64)


@pytest.fixture(scope="module")
def reconstruction(face_photo):
    """LFPW image_0001 through the whole seed pipeline: coarse, medium (laplace) and fine (sfs) meshes."""
    try:
        import torch  # noqa: F401
    except ImportError:
        missing("torch is not installed (the sfs fine stage: pip install 'facerecon[fine]')")
    config = PipelineConfig(refiners=("laplace", "sfs"), device="cpu").with_options("refiner", "sfs", {"max_side": 96})
    with Pipeline(config) as pipe:  # a small fine stage: these tests are about files, not detail
        rec = pipe(face_photo)
    assert [s.stage for s in rec.reconstructions[0].stages] == ["coarse", "medium", "fine"]
    return rec


@pytest.fixture(scope="module")
def written(tmp_path_factory, reconstruction, face_photo) -> Path:
    """The output folders in the head frame (the default) and in the image frame."""
    out = tmp_path_factory.mktemp("files")
    for frame in ("head", "image"):
        write_outputs(
            reconstruction,
            face_photo,
            out / frame,
            source="image_0001",
            formats=FORMATS,
            texture_size=TEXTURE,
            frame=frame,
        )
    return out


def test_every_file_reimports_with_the_vertices_and_bounds_in_memory(written, reconstruction):
    face = reconstruction.reconstructions[0]
    for frame_name in ("head", "image"):
        frame = file_frame(face, frame_name)
        for stage in face.stages:
            expected = frame.apply(stage.mesh.vertices)
            bounds = np.array([expected.min(axis=0), expected.max(axis=0)])
            for fmt in FORMATS:
                path = written / frame_name / f"{stage.stage}.{fmt}"
                loaded = trimesh.load(path, process=False, force="mesh")
                assert len(loaded.vertices) == len(stage.mesh.vertices), path
                assert len(loaded.faces) == len(stage.mesh.triangles), path
                # GLB holds metres where the frame is in millimetres (glTF's unit is the metre)
                metres = 1e-3 if fmt == "glb" and frame.units == "mm" else 1.0
                span = np.ptp(bounds, axis=0).max()
                assert np.allclose(loaded.bounds, bounds * metres, atol=1e-4 * span * metres), path
                assert isinstance(loaded.visual, trimesh.visual.TextureVisuals) and loaded.visual.uv is not None
                assert np.allclose(loaded.visual.uv, stage.mesh.uvs, atol=1e-5), path


def test_head_frame_is_centred_upright_and_in_millimetres(written, reconstruction):
    face = reconstruction.reconstructions[0]
    head = head_frame(face)
    coarse = head.apply(face.coarse.mesh.vertices)
    assert np.allclose((coarse.min(axis=0) + coarse.max(axis=0)) / 2, 0.0, atol=1e-6)  # centred
    corners = face.coarse.mesh.landmark_maps[IBUG68].locate(coarse)
    eyes, chin, nose = corners[[36, 45]], corners[8], corners[30]
    assert 75 < np.linalg.norm(eyes[0] - eyes[1]) < 105  # millimetres: adults' outer eye corners ~90 mm apart
    assert eyes[:, 1].min() > chin[1] + 60  # y up: the eyes above the chin, a face-sized distance away
    assert nose[2] > coarse[:, 2].mean() + 20  # z out of the face: the nose tip in front
    assert eyes[1, 0] > eyes[0, 0]  # x: the photo's right (point 45 is on the image's right)
    # pose removed: the eye line level, whatever the head's roll and yaw in the photo
    assert abs(eyes[1, 1] - eyes[0, 1]) < 0.05 * abs(eyes[1, 0] - eyes[0, 0])
    result = json.loads((written / "head" / "result.json").read_text())
    frames = result["reconstructions"][0]["frames"]
    assert frames["files"] == "head" and frames["head"]["units"] == "mm" and "y: up" in frames["head"]["axes"]
    assert "landmark-mesh" in frames["head"]["scale_from"]
    lines = (written / "head" / "coarse.obj").read_text().splitlines()
    assert lines[0] == f"# facerecon mesh, topology {face.coarse.mesh.topology}, head frame, units mm, y up"


def test_result_json_transforms_map_head_to_image_and_to_pixels(written, reconstruction):
    """head_to_image takes the head-frame files onto the image-frame files; head_to_pixels and
    image_to_pixels take file vertices onto the photo (checked against the landmarks68 of result.json)."""
    result = json.loads((written / "head" / "result.json").read_text())
    frames = result["reconstructions"][0]["frames"]
    face = reconstruction.reconstructions[0]
    for stage in face.stages:
        in_head = trimesh.load(written / "head" / f"{stage.stage}.ply", process=False).vertices
        in_image = trimesh.load(written / "image" / f"{stage.stage}.ply", process=False).vertices
        mapped = _apply(frames["head_to_image"], in_head)
        assert np.abs(mapped - in_image).max() < 1e-3 * np.ptp(in_image, axis=0).max()
        assert np.abs(_apply(frames["image_to_head"], in_image) - in_head).max() < 1e-3 * np.ptp(in_head, axis=0).max()
        landmarks = stage.mesh.landmark_maps[IBUG68]
        rows = next(s for s in result["reconstructions"][0]["stages"] if s["stage"] == stage.stage)["landmarks68"]
        valid = np.array([row is not None for row in rows])
        assert np.array_equal(valid, landmarks.valid)
        expected = np.array([row for row in rows if row is not None])
        entry = next(s for s in result["reconstructions"][0]["stages"] if s["stage"] == stage.stage)
        assert np.allclose(entry["bounds"], [in_head.min(axis=0), in_head.max(axis=0)], atol=2e-3)
        on_file = landmarks.locate(np.asarray(in_head, np.float64))[valid]
        assert np.allclose([row for row in entry["landmarks68_3d"] if row is not None], on_file, atol=2e-3)
        for key, vertices in (("head_to_pixels", in_head), ("image_to_pixels", in_image)):
            pixels = _project(frames[key], landmarks.locate(np.asarray(vertices, np.float64))[valid])
            assert np.abs(pixels - expected).max() < 0.01, (stage.stage, key)


def test_result_json_stage_units_are_the_units_of_its_files(written, reconstruction):
    """A stage's `units` is that of the numbers beside it (`bounds`, `landmarks68_3d`) and of its files
    (millimetres in the head frame, the mesh's pixels in the image frame); `mesh_units` the mesh's in memory."""
    in_memory = [stage.mesh.units for stage in reconstruction.reconstructions[0].stages]
    assert set(in_memory) == {"px"}
    for frame_name, units in (("head", "mm"), ("image", "px")):
        face = json.loads((written / frame_name / "result.json").read_text())["reconstructions"][0]
        assert face["frames"]["files"] == frame_name and face["frames"][frame_name]["units"] == units
        assert [(s["units"], s["mesh_units"]) for s in face["stages"]] == [(units, px) for px in in_memory]
        header = (written / frame_name / "coarse.obj").read_text().splitlines()[0]
        assert f"{frame_name} frame, units {units}," in header


def _apply(matrix: list[list[float]], points: np.ndarray) -> np.ndarray:
    m = np.array(matrix)
    return np.asarray(points, np.float64) @ m[:3, :3].T + m[:3, 3]


def _project(matrix: list[list[float]], points: np.ndarray) -> np.ndarray:
    uvw = np.column_stack([points, np.ones(len(points))]) @ np.array(matrix).T
    return uvw[:, :2] / uvw[:, 2:3]


def test_every_glb_passes_the_khronos_validator(written, validate_gltf, tmp_path, reconstruction):
    mesh = reconstruction.reconstructions[0].coarse.mesh
    extra = [tmp_path / "normal_map.glb", tmp_path / "no_uvs.glb"]
    flat_normals = np.full((64, 64, 3), (128, 128, 255), np.uint8)
    write_mesh(mesh, extra[0], np.full((64, 64, 3), 200, np.uint8), normal_map=flat_normals)
    with pytest.warns(TextureWarning, match="no UVs"):
        write_mesh(Mesh(mesh.vertices, mesh.triangles, "no-uvs"), extra[1], np.zeros((8, 8, 3), np.uint8))
    files = sorted(written.glob("*/*.glb")) + extra
    assert len(files) == 2 * 4 + 2  # coarse, medium, fine and final (the medium mesh with the fine maps)
    reports = validate_gltf(files)
    assert [r["file"] for r in reports] == [str(f) for f in files]
    for report in reports:
        assert report["errors"] == 0, report
        # No warning either: a normal-mapped mesh carries its TANGENT attribute (no
        # MESH_PRIMITIVE_GENERATED_TANGENT_SPACE), one without a normal map none (no unused tangents).
        assert report["warnings"] == 0, report
        mapped = report["file"] == str(extra[0]) or report["file"].endswith("final.glb")
        attributes = glb_json(Path(report["file"]))["meshes"][0]["primitives"][0]["attributes"]
        assert ("TANGENT" in attributes) == mapped, report["file"]


def test_the_validator_without_its_npm_package_says_how_to_install_it(tmp_path):
    """validate.js before `make gltf-validator` (a clean clone): one line that names the command, exit 2."""
    node = shutil.which("node")
    if node is None:
        missing("node is not installed (Node.js 18+ runs the Khronos glTF validator)")
    shutil.copy(VALIDATOR / "validate.js", tmp_path)  # away from scripts/gltf-validator/node_modules
    run = subprocess.run([node, str(tmp_path / "validate.js"), "x.glb"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "run `make gltf-validator`" in run.stderr, run.stderr


def test_glb_material_normals_and_textures(written, tmp_path, reconstruction):
    gltf = glb_json(written / "head" / "coarse.glb")
    (material,) = gltf["materials"]
    pbr = material["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0  # glTF's default 1.0 made faces dark metal
    assert pbr["baseColorFactor"] == [1.0, 1.0, 1.0, 1.0]
    assert pbr["roughnessFactor"] == pytest.approx(ROUGHNESS) and 0.3 <= ROUGHNESS <= 0.8
    assert "baseColorTexture" in pbr and len(gltf["images"]) == 1
    (primitive,) = gltf["meshes"][0]["primitives"]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(primitive["attributes"])
    loaded = trimesh.load(written / "head" / "coarse.glb", process=False, force="mesh")
    normals = np.asarray(loaded.vertex_normals)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)
    # The normals are the surface's (smooth shading): the face looks out along +z on average.
    assert np.average(loaded.face_normals[:, 2], weights=loaded.area_faces) > 0.5

    mesh = reconstruction.reconstructions[0].coarse.mesh
    normal_map = np.zeros((32, 32, 3), np.uint8) + np.array([128, 128, 255], np.uint8)
    write_mesh(mesh, tmp_path / "mapped.glb", np.full((32, 32, 3), 90, np.uint8), normal_map=normal_map)
    gltf = glb_json(tmp_path / "mapped.glb")
    material = gltf["materials"][0]
    assert "normalTexture" in material and "baseColorTexture" in material["pbrMetallicRoughness"]
    assert material["normalTexture"]["index"] != material["pbrMetallicRoughness"]["baseColorTexture"]["index"]
    assert len(gltf["images"]) == 2
    # TANGENT as glTF defines it: unit xyz orthogonal to the normal along +u, B = w * (N x T) along +v of the
    # normal map's "up" (glTF's TEXCOORD v grows down the image: up is -v_gltf).
    positions, normals, texcoords, tangent = (
        glb_accessor(tmp_path / "mapped.glb", name) for name in ("POSITION", "NORMAL", "TEXCOORD_0", "TANGENT")
    )
    assert tangent.shape == (len(mesh.vertices), 4) and set(np.unique(tangent[:, 3])) <= {-1.0, 1.0}
    assert np.allclose(np.linalg.norm(tangent[:, :3], axis=1), 1.0, atol=1e-5)
    assert np.abs(np.sum(tangent[:, :3] * normals, axis=1)).max() < 1e-4
    bitangent = tangent[:, 3:] * np.cross(normals, tangent[:, :3])
    first, second = mesh.triangles[:, 0], mesh.triangles[:, 1]
    edges = positions[second] - positions[first]
    du, up = texcoords[second, 0] - texcoords[first, 0], texcoords[first, 1] - texcoords[second, 1]
    assert np.corrcoef(np.sum(edges * tangent[first, :3], axis=1), du)[0, 1] > 0.9
    assert np.corrcoef(np.sum(edges * bitangent[first], axis=1), up)[0, 1] > 0.9


def test_glb_without_uvs_is_untextured_with_a_warning(tmp_path, reconstruction):
    mesh = reconstruction.reconstructions[0].coarse.mesh
    bare = Mesh(mesh.vertices, mesh.triangles, "no-uvs")
    with pytest.warns(TextureWarning, match="no UVs; written without its texture and normal map"):
        files = write_mesh(
            bare, tmp_path / "bare.glb", np.zeros((8, 8, 3), np.uint8), normal_map=np.zeros((8, 8, 3), np.uint8)
        )
    assert files == [tmp_path / "bare.glb"]
    gltf = glb_json(files[0])
    assert "images" not in gltf and "TEXCOORD_0" not in gltf["meshes"][0]["primitives"][0]["attributes"]
    assert gltf["materials"][0]["pbrMetallicRoughness"]["metallicFactor"] == 0.0


def test_obj_mtl_and_ply_carry_material_normals_uvs_and_colours(written, tmp_path, reconstruction, face_photo):
    folder = written / "head"
    mtl = (folder / "coarse.mtl").read_text().splitlines()
    assert {"Ka 0.000 0.000 0.000", "Kd 1.000 1.000 1.000", "Pm 0", f"Pr {ROUGHNESS:g}", "map_Kd coarse.png"} <= set(
        mtl
    )
    obj = (folder / "coarse.obj").read_text().splitlines()
    mesh = reconstruction.reconstructions[0].coarse.mesh
    assert sum(line.startswith("vn ") for line in obj) == len(mesh.vertices)
    assert next(line for line in obj if line.startswith("f ")).count("/") == 6  # v/vt/vn
    loaded = trimesh.load(folder / "coarse.obj", process=False)
    assert loaded.visual.material.image.size == (TEXTURE, TEXTURE)

    normal_map = np.full((16, 16, 3), (128, 128, 255), np.uint8)
    files = write_mesh(mesh, tmp_path / "face.obj", np.full((16, 16, 3), 60, np.uint8), normal_map=normal_map)
    assert [f.name for f in files] == ["face.obj", "face.mtl", "face.png", "face_uv_normal.png"]
    lines = (tmp_path / "face.mtl").read_text().splitlines()
    assert "norm face_uv_normal.png" in lines and "map_Bump -bm 1 face_uv_normal.png" in lines
    assert any("OpenGL" in line and "Non-Color" in line for line in lines if line.startswith("#"))

    ply = trimesh.load(folder / "coarse.ply", process=False)
    raw = ply.metadata["_ply_raw"]["vertex"]["data"]
    assert {"nx", "ny", "nz", "s", "t", "red", "green", "blue"} <= set(raw.dtype.names)
    texture = np.asarray(Image.open(folder / "coarse.png").convert("RGB"))
    assert b"comment TextureFile coarse.png" in (folder / "coarse.ply").read_bytes()[:1000]
    colours = np.column_stack([raw["red"], raw["green"], raw["blue"]]).astype(int)
    # The vertex colours are the photo's: each vertex's colour is the texel under its UV.
    rows = np.clip(np.round((1 - mesh.uvs[:, 1]) * TEXTURE - 0.5), 0, TEXTURE - 1).astype(int)
    cols = np.clip(np.round(mesh.uvs[:, 0] * TEXTURE - 0.5), 0, TEXTURE - 1).astype(int)
    assert np.array_equal(colours, texture[rows, cols])
    assert colours.std() > 10  # a photo's colours, not one grey


def test_material_names_are_unique_across_stages_and_faces(written, tmp_path, reconstruction):
    """Every mesh file names its material after itself (``final``, ``face1-coarse``): tools that match
    materials by name (Unity's model importer remaps to an existing material of the same name; a scene with
    two faces' OBJs) must not give every stage and face of a photo one shared material and texture."""
    folder = written / "head"
    mesh = reconstruction.reconstructions[0].coarse.mesh
    other = write_mesh(mesh, tmp_path / "face1-coarse.obj", np.full((8, 8, 3), 90, np.uint8))
    other += write_mesh(mesh, tmp_path / "face1-coarse.glb", np.full((8, 8, 3), 90, np.uint8))
    names: dict[str, str] = {}
    for obj in [*sorted(folder.glob("*.obj")), tmp_path / "face1-coarse.obj"]:
        (newmtl,) = [
            line.split(maxsplit=1)[1]
            for line in obj.with_suffix(".mtl").read_text().splitlines()
            if line.startswith("newmtl ")
        ]
        (usemtl,) = [line.split(maxsplit=1)[1] for line in obj.read_text().splitlines() if line.startswith("usemtl ")]
        assert usemtl == newmtl == obj.stem
        names[obj.name] = newmtl
    for glb in [*sorted(folder.glob("*.glb")), tmp_path / "face1-coarse.glb"]:
        (material,) = glb_json(glb)["materials"]
        assert material["name"] == glb.stem
        names[glb.name] = material["name"]
    assert {"coarse.obj", "final.obj", "face1-coarse.obj", "final.glb", "face1-coarse.glb"} <= set(names)
    for suffix in (".obj", ".glb"):
        per_format = [name for file, name in names.items() if file.endswith(suffix)]
        assert len(set(per_format)) == len(per_format), per_format


def test_pose_is_removed_from_a_rolled_photo(pipeline, face_photo):
    """The same face rolled 25 degrees in the photo: tilted in the image frame, level in the head frame, and
    the same size in millimetres."""
    rolled = np.asarray(Image.fromarray(face_photo).rotate(25, resample=Image.Resampling.BILINEAR, expand=True))
    tilts, widths = {}, {}
    for name, image in (("upright", face_photo), ("rolled", rolled)):
        face = pipeline(image).reconstructions[0]
        lmap = face.coarse.mesh.landmark_maps[IBUG68]
        for frame in (head_frame(face), image_frame(face.coarse.mesh)):
            eyes = lmap.locate(frame.apply(face.coarse.mesh.vertices))[[36, 45]]
            tilts[name, frame.name] = np.degrees(np.arctan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0]))
            widths[name, frame.name] = np.linalg.norm(eyes[1] - eyes[0])
    assert abs(tilts["rolled", "image"] - tilts["upright", "image"] - 25) < 3  # PIL rotates anticlockwise
    assert abs(tilts["rolled", "head"]) < 3 and abs(tilts["upright", "head"]) < 3
    assert widths["rolled", "head"] == pytest.approx(widths["upright", "head"], rel=0.03)


def test_head_frame_of_a_3dmm_is_the_model_s_millimetres(shared_data, face_photo):
    """3dmm-fit with the Surrey model, orthographic and perspective: the head-frame mesh is the fitted model
    instance itself (pose removed), so its size is the model's, and head_to_pixels lands on the photo."""
    sfm = shared_data / "models" / "sfm" / "sfm_shape_3448.bin"
    sizes = {}
    for camera in ("orthographic", "perspective"):
        config = PipelineConfig(regressor="3dmm-fit", segmenter=None, device="cpu", refiners=()).with_options(
            "regressor", "3dmm-fit", {"model": str(sfm), "camera": camera}
        )
        with Pipeline(config) as pipe:
            face = pipe(face_photo).reconstructions[0]
        head = head_frame(face)
        vertices = head.apply(face.coarse.mesh.vertices)
        sizes[camera] = np.ptp(vertices, axis=0)
        assert "3dmm-fit" in head.scale_from
        marks = face.coarse.mesh.landmarks(IBUG68)
        lmap = face.coarse.mesh.landmark_maps[IBUG68]
        pixels = head.pixels(lmap.locate(vertices)[lmap.valid])
        assert np.abs(pixels - marks.xy[lmap.valid]).max() < 0.01
    # The Surrey model's faces are ~150 mm wide and ~100 mm deep; both cameras give the model's size.
    assert 120 < sizes["orthographic"][0] < 180 and 70 < sizes["orthographic"][2] < 130
    assert np.allclose(sizes["perspective"], sizes["orthographic"], rtol=0.1)


def test_a_regressor_without_pose_gets_the_average_face_scale():
    """A third-party regressor that leaves the pose at the record's defaults: frontal, scaled so the outer eye
    corners are AVERAGE_OUTER_EYE_CORNERS_MM apart, which is MediaPipe's canonical face's own distance."""
    canonical = CanonicalTopology.load(None, 0)
    in_cm = canonical.mesh(canonical.vertices)
    corners = in_cm.landmark_maps[IBUG68].locate(np.asarray(in_cm.vertices, np.float64))[[36, 45]]
    assert np.linalg.norm(corners[0] - corners[1]) * 10 == pytest.approx(AVERAGE_OUTER_EYE_CORNERS_MM, abs=0.05)
    pixels = canonical.mesh(canonical.vertices * 3.0 + [200.0, 240.0, 0.0])  # 0.3 px per mm, no pose reported
    coarse = CoarseResult(pixels)
    from facerecon.kernel.contract import Face, Landmarks

    face = Face(np.array([100, 100, 300, 300]), 0.9, Landmarks("f", np.zeros((3, 3))))
    rec = FaceReconstruction(face, 0, coarse, (StageResult("coarse", "third-party", "1", pixels, 1.0),))
    head = head_frame(rec)
    eyes = pixels.landmark_maps[IBUG68].locate(head.apply(pixels.vertices))[[36, 45]]
    assert np.linalg.norm(eyes[0] - eyes[1]) == pytest.approx(AVERAGE_OUTER_EYE_CORNERS_MM, rel=1e-5)
    assert "no pose reported" in head.scale_from
    assert eyes[0, 1] > pixels.landmark_maps[IBUG68].locate(head.apply(pixels.vertices))[8, 1]  # y up


def test_preview_has_a_side_view_of_each_stage(reconstruction, face_photo):
    """Under each stage's front render, its profile: the silhouette's width / height is the head frame's
    depth / height (the front view's is width / height)."""
    sheet = render_preview(face_photo, reconstruction)
    assert sheet.shape[0] == 2 * PREVIEW_HEIGHT
    face = reconstruction.reconstructions[0]
    n = len(face.stages)
    width = sheet.shape[1] // (3 + n)  # input, landmarks, segmentation, then the stages
    extent = np.ptp(head_frame(face).apply(face.coarse.mesh.vertices), axis=0)
    for i in range(n):
        side = sheet[PREVIEW_HEIGHT:, (3 + i) * width : (4 + i) * width]
        drawn = np.abs(side.astype(int) - 48).sum(axis=2) > 30
        drawn[:20] = False  # the caption
        rows, cols = np.nonzero(drawn)
        ratio = np.ptp(cols) / np.ptp(rows)
        assert ratio == pytest.approx(extent[2] / extent[1], rel=0.12), face.stages[i].stage
        assert ratio < 0.85 * extent[0] / extent[1]  # a profile, not the front


@pytest.mark.parametrize("with_uvs", [True, False])
def test_obj_face_lines_are_the_printf_text(with_uvs):
    from facerecon.outputs import objtext

    faces = np.array([[1, 2, 3], [9, 10, 11], [99, 100, 1000], [28881, 7, 123456789]])
    expected = "".join(
        ("f {0}/{0}/{0} {1}/{1}/{1} {2}/{2}/{2}\n" if with_uvs else "f {0}//{0} {1}//{1} {2}//{2}\n").format(*row)
        for row in faces
    )
    assert objtext.face_lines(faces, with_uvs).decode() == expected
    assert objtext.face_lines(np.empty((0, 3), np.int64), with_uvs) == b""
    with pytest.raises(ValueError, match="1-based"):
        objtext.face_lines(faces - 1, with_uvs)


def test_obj_number_lines_are_the_printf_text():
    from facerecon.outputs import objtext

    rng = np.random.default_rng(5)
    scales = 10.0 ** rng.integers(-8, 8, (2000, 1))
    values = rng.normal(size=(2000, 3)) * scales
    ties = np.array([[0.0, -0.0, -1e-9], [1 / 128, -1 / 128, 2.5e-6], [0.9999995, -3.0000005, 1e8 + 0.25]])
    for array in (values, ties, values.astype(np.float32)):
        for decimals in (6, 5, 0):
            fmt = " ".join(["v"] + [f"%.{decimals}f"] * 3)
            expected = "".join(fmt % tuple(row) + "\n" for row in np.asarray(array, np.float64))
            assert objtext.number_lines("v", array, decimals).decode() == expected
    nan = np.array([[np.nan, np.inf, 1.0]])
    assert objtext.number_lines("vn", nan, 5).decode() == "vn nan inf 1.00000\n"
