"""Model file loaders: each BFM-like format written here in its exact on-disk layout with a small known
model (50 vertices), the real Surrey Face Model from the shared data, bad files, and the npz round trip."""

from __future__ import annotations

import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from facerecon.facelib.morphable import formats
from facerecon.facelib.morphable.formats import (
    KNOWN_FILES,
    LOADERS,
    frame_problems,
    load_model,
    read_contours,
    read_ibug_map,
    save_npz,
    sha256_of,
)
from facerecon.facelib.morphable.model import MorphableModel
from facerecon.facelib.unpickle import safe_load
from facerecon.kernel.contract.errors import ModelFileError
from facerecon.kernel.contract.records import LandmarkMap

COLS, ROWS = 5, 10  # a 5 x 10 grid of vertices = 50
N = COLS * ROWS
NOSE = 4 * COLS + 2  # centre column, y = -10
RIGHT_EYE, LEFT_EYE, CHIN = 6 * COLS + 1, 6 * COLS + 3, 2  # subject's right eye at -x
IBUG_TOML = f"""# an eos-style mapping (TOML); only some landmarks defined
[landmark_mappings]
 9 = {CHIN}  # chin
31 = {NOSE}  # nose tip
37 = {RIGHT_EYE}  # right eye outer corner
46 = {LEFT_EYE}  # left eye outer corner
"""


def face_grid() -> tuple[np.ndarray, np.ndarray]:
    """A curved face-like mask in the model frame (mm, y up, z to the viewer): float64 (50, 3) vertices
    and int32 triangles counter-clockwise seen from the front."""
    x, y = np.meshgrid(np.linspace(-70, 70, COLS), np.linspace(-90, 90, ROWS))
    z = 80.0 - 0.006 * x**2 - 0.002 * y**2
    vertices = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    vertices[NOSE, 2] += 30.0
    triangles = []
    for r in range(ROWS - 1):
        for c in range(COLS - 1):
            i = r * COLS + c
            triangles += [[i, i + 1, i + COLS + 1], [i, i + COLS + 1, i + COLS]]
    return vertices, np.asarray(triangles, np.int32)


def orthonormal(rows: int, k: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(rows, k)))
    return q


@pytest.fixture(scope="module")
def face():
    vertices, triangles = face_grid()
    return vertices, triangles, orthonormal(3 * N, 5, 1), np.array([40.0, 25.0, 12.0, 6.0, 3.0])


def ibug_keypoints() -> np.ndarray:
    """68 vertex ids (0-based) with the four known landmarks at their iBUG places."""
    ids = np.arange(68) % N
    ids[[8, 30, 36, 45]] = CHIN, NOSE, RIGHT_EYE, LEFT_EYE
    return ids


def read_ibug_map_from_text(text: str) -> LandmarkMap:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "m.txt").write_text(text)
        return read_ibug_map(Path(folder) / "m.txt")


# ----------------------------------------------------------------------------------------- BFM 2009


def write_bfm2009(folder: Path, face, **override) -> Path:
    vertices, triangles, basis, std_mm = face
    data = {
        "shapeMU": (vertices.reshape(-1, 1) * 1000).astype(np.float32),  # micrometres
        "shapePC": basis.astype(np.float32),
        "shapeEV": (std_mm * 1000).reshape(-1, 1).astype(np.float32),
        "texMU": np.linspace(0, 255, 3 * N).reshape(-1, 1).astype(np.float32),
        "texPC": basis.astype(np.float32),
        "texEV": np.ones((5, 1), np.float32),
        "tl": (triangles[:, [0, 2, 1]] + 1).astype(np.float64),  # 1-based, clockwise from the front (BFM)
    }
    data.update(override)
    path = folder / "01_MorphableModel.mat"
    scipy.io.savemat(path, {k: v for k, v in data.items() if v is not None})
    return path


def test_bfm2009_units_triangles_colours_and_std(tmp_path, face):
    vertices, triangles, basis, std_mm = face
    path = write_bfm2009(tmp_path, face)
    (tmp_path / "ibug_to_bfm2009.txt").write_text(IBUG_TOML)  # picked up beside the model, as eos names it
    model = load_model(path)
    assert formats.detect_format(path) == "bfm2009"
    assert model.topology == "bfm2009-50" and "01_MorphableModel.mat" in model.name
    np.testing.assert_allclose(model.mean, vertices, atol=1e-3)  # µm -> mm
    np.testing.assert_allclose(model.identity_basis, basis, atol=1e-6)
    np.testing.assert_allclose(model.identity_std, std_mm, rtol=1e-6)
    np.testing.assert_array_equal(model.triangles, triangles)  # 0-based and flipped to counter-clockwise
    np.testing.assert_allclose(model.colors.reshape(-1), np.linspace(0, 1, 3 * N), atol=1e-6)
    assert model.n_expression == 0
    # The std convention: one std of component 0 moves the shape as BFM's own shapeMU + shapePC·(α·shapeEV).
    bfm_um = vertices.reshape(-1) * 1000 + basis[:, 0] * std_mm[0] * 1000
    np.testing.assert_allclose(model.shape([model.identity_std[0]]).reshape(-1), bfm_um / 1000, atol=1e-3)
    lmap = model.landmark_maps["ibug68"]
    assert lmap.valid.sum() == 4 and lmap.vertex_ids[30, 0] == NOSE
    assert frame_problems(model) == []


def write_exp_pca(folder: Path, n_vertices: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exp_Pca.bin as Deep3DFaceRecon reads it (int32 K, float32 mean 3n, float32 basis (K, 3n)) and
    std_exp.txt (µm); returns the basis (3n, K) and std (µm)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=3 * n_vertices).astype(np.float32)
    basis = orthonormal(3 * n_vertices, k, seed).astype(np.float32)
    with (folder / "Exp_Pca.bin").open("wb") as handle:
        np.array([k], "<i4").tofile(handle)
        mean.astype("<f4").tofile(handle)
        np.ascontiguousarray(basis.T).astype("<f4").tofile(handle)  # one component after the other
    std_um = np.linspace(3000, 500, k)
    np.savetxt(folder / "std_exp.txt", std_um)
    return basis, std_um


def test_bfm2009_with_exp_pca_on_the_same_vertices(tmp_path, face):
    path = write_bfm2009(tmp_path, face)
    exp_basis, std_um = write_exp_pca(tmp_path, N, 4, seed=2)
    model = load_model(path, expression_path=tmp_path / "Exp_Pca.bin")
    assert model.n_expression == 4
    np.testing.assert_allclose(model.expression_basis, exp_basis, atol=1e-6)
    np.testing.assert_allclose(model.expression_std, std_um / 1000, rtol=1e-6)
    moved = model.shape(expression=[0.0, model.expression_std[1]]) - model.mean
    np.testing.assert_allclose(moved.reshape(-1), exp_basis[:, 1] * std_um[1] / 1000, atol=1e-4)


def test_bfm2009_exp_pca_mapped_through_trim_index(tmp_path, face):
    """Guo et al.'s basis has fewer vertices (53215 of 53490): BFM_exp_idx.mat maps them."""
    path = write_bfm2009(tmp_path, face)
    kept = np.setdiff1d(np.arange(N), [0, 7, 49])  # three vertices without expressions
    exp_basis, _ = write_exp_pca(tmp_path, len(kept), 3, seed=3)
    scipy.io.savemat(tmp_path / "BFM_exp_idx.mat", {"trimIndex": (kept + 1).reshape(-1, 1)})
    model = load_model(path, expression_path=tmp_path / "Exp_Pca.bin")
    per_vertex = model.expression_basis.reshape(N, 3, 3)
    np.testing.assert_allclose(per_vertex[kept], exp_basis.reshape(-1, 3, 3), atol=1e-6)
    assert not per_vertex[[0, 7, 49]].any()


def test_bfm2009_exp_pca_needs_its_companions(tmp_path, face):
    path = write_bfm2009(tmp_path, face)
    write_exp_pca(tmp_path, N - 5, 3, seed=4)
    with pytest.raises(ModelFileError, match=r"Exp_Pca\.bin: has 45 vertices and the model 50: needs BFM_exp_idx"):
        load_model(path, expression_path=tmp_path / "Exp_Pca.bin")
    (tmp_path / "std_exp.txt").unlink()
    with pytest.raises(ModelFileError, match="needs std_exp.txt"):
        load_model(path, expression_path=tmp_path / "Exp_Pca.bin")
    (tmp_path / "Exp_Pca.bin").write_bytes(struct.pack("<i", 4) + b"\0" * 20)
    with pytest.raises(ModelFileError, match=r"Exp_Pca\.bin: header says K = 4"):
        load_model(path, expression_path=tmp_path / "Exp_Pca.bin")


# ------------------------------------------------------------------------------------ BFM 2017/2019


def write_bfm2017(path: Path, face, *, basis_shape: tuple[int, int] | None = None) -> Path:
    h5py = pytest.importorskip("h5py")
    vertices, triangles, basis, std_mm = face
    with h5py.File(path, "w") as h5:
        h5["shape/model/mean"] = vertices.reshape(-1).astype(np.float32)
        h5["shape/model/pcaBasis"] = basis.astype(np.float32) if basis_shape is None else np.ones(basis_shape)
        h5["shape/model/pcaVariance"] = (std_mm**2).astype(np.float32)
        h5["shape/representer/points"] = vertices.T.astype(np.float32)
        h5["shape/representer/cells"] = triangles.T.astype(np.uint32)  # (3, M), 0-based
        h5["expression/model/mean"] = np.full(3 * N, 0.5, np.float32)
        h5["expression/model/pcaBasis"] = orthonormal(3 * N, 3, 5).astype(np.float32)
        h5["expression/model/pcaVariance"] = np.array([4.0, 1.0, 0.25], np.float32)
        h5["color/model/mean"] = np.full(3 * N, 0.4, np.float32)
    return path


def test_bfm2017_h5(tmp_path, face):
    vertices, triangles, basis, std_mm = face
    path = write_bfm2017(tmp_path / "model2017-1_bfm_nomouth.h5", face)
    (tmp_path / "ibug_to_bfm2017-1_bfm_nomouth.txt").write_text(IBUG_TOML)
    model = load_model(path)
    assert model.topology == "bfm2017-1_bfm_nomouth"
    np.testing.assert_allclose(model.mean, vertices + 0.5, atol=1e-4)  # mm; the expression mean added
    np.testing.assert_allclose(model.identity_basis, basis, atol=1e-6)
    np.testing.assert_allclose(model.identity_std, std_mm, rtol=1e-6)  # sqrt(pcaVariance)
    np.testing.assert_allclose(model.expression_std, [2.0, 1.0, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(model.triangles, triangles)
    np.testing.assert_allclose(model.colors, 0.4, atol=1e-6)
    assert model.landmark_maps["ibug68"].valid.sum() == 4
    assert frame_problems(model) == []


def test_bfm2017_wrong_basis_shape_is_named(tmp_path, face):
    path = write_bfm2017(tmp_path / "model.h5", face, basis_shape=(10, 4))
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    assert str(caught.value) == f"{path}: /shape/model/pcaBasis has shape (10, 4), expected (3N, K) with 3N = 150"


# ------------------------------------------------------------------------------ 3DDFA bfm_noneck_v3.pkl


def write_3ddfa(folder: Path, vertices: np.ndarray, triangles_cw: np.ndarray, keypoints: np.ndarray, seed=6):
    """bfm_noneck_v3.pkl (µm, 40 + 10 components), tri.pkl (3, M) and the 62-d parameter statistics."""
    n = len(vertices)
    data = {
        "u": (vertices.reshape(-1, 1) * 1000).astype(np.float32),
        "w_shp": orthonormal(3 * n, 40, seed).astype(np.float32),
        "w_exp": (orthonormal(3 * n, 10, seed + 1) * 1000).astype(np.float32),
        "keypoints": (3 * np.asarray(keypoints)[:, None] + np.arange(3)).reshape(-1).astype(np.int64),
    }
    with (folder / "bfm_noneck_v3.pkl").open("wb") as handle:
        pickle.dump(data, handle)
    with (folder / "tri.pkl").open("wb") as handle:
        pickle.dump(np.ascontiguousarray(triangles_cw.T).astype(np.int32), handle)
    stats = {"mean": np.zeros(62, np.float32), "std": np.linspace(1, 62, 62).astype(np.float32)}
    with (folder / "param_mean_std_62d_120x120.pkl").open("wb") as handle:
        pickle.dump(stats, handle)
    return folder / "bfm_noneck_v3.pkl", data, stats


def test_3ddfa_pkl(tmp_path, face):
    vertices, triangles, _, _ = face
    path, data, stats = write_3ddfa(tmp_path, vertices, triangles[:, [0, 2, 1]], ibug_keypoints())
    model = load_model(path)
    assert formats.detect_format(path) == "3ddfa" and model.topology == "bfm2009-3ddfa50"
    np.testing.assert_allclose(model.mean, vertices, atol=1e-3)
    # 3DDFA's own coefficients: shape_mm = mean + (w / 1000) @ α, α's std from the 62-d statistics.
    np.testing.assert_allclose(model.identity_basis, data["w_shp"] / 1000, rtol=1e-6)
    np.testing.assert_allclose(model.expression_basis, data["w_exp"] / 1000, rtol=1e-6)
    np.testing.assert_allclose(model.identity_std, stats["std"][12:52])
    np.testing.assert_allclose(model.expression_std, stats["std"][52:62])
    np.testing.assert_array_equal(model.triangles, triangles)  # from tri.pkl, transposed, made CCW
    np.testing.assert_array_equal(model.landmark_maps["ibug68"].vertex_ids[:, 0], ibug_keypoints())
    assert frame_problems(model) == []


def test_3ddfa_needs_its_parameter_statistics(tmp_path, face):
    vertices, triangles, _, _ = face
    path, _, _ = write_3ddfa(tmp_path, vertices, triangles, ibug_keypoints())
    (tmp_path / "param_mean_std_62d_120x120.pkl").unlink()
    with pytest.raises(ModelFileError, match=r"bfm_noneck_v3\.pkl: .*param_mean_std_62d_120x120\.pkl"):
        load_model(path)


def test_3ddfa_layout_on_real_3ddfa_geometry(shared_data, tmp_path):
    """The real 3DDFA arrays: v1 mean (u_shp + u_exp, 53215 vertices, µm) cut to noneck v3 with the real
    indices.npy, the real tri.pkl (clockwise) and 62-d statistics, and keypoints_sim's 68 landmarks."""
    d = shared_data / "models" / "3ddfa"
    u = (np.load(d / "v1" / "u_shp.npy") + np.load(d / "v1" / "u_exp.npy")).reshape(-1, 3)
    indices = np.load(d / "configs" / "indices.npy")
    vertices = u[indices] / 1000
    keypoints = np.searchsorted(indices, np.load(d / "v1" / "keypoints_sim.npy")[::3] // 3)
    tri = pickle.loads((d / "configs" / "tri.pkl").read_bytes()).T
    path, _, _ = write_3ddfa(tmp_path, vertices, tri, keypoints)
    for name in ("tri.pkl", "param_mean_std_62d_120x120.pkl"):
        (tmp_path / name).write_bytes((d / "configs" / name).read_bytes())
        assert sha256_of(tmp_path / name) in KNOWN_FILES
    model = load_model(path)
    assert model.n_vertices == 38365 and len(model.triangles) == 76073
    np.testing.assert_array_equal(model.triangles, tri[:, [0, 2, 1]])  # 3DDFA's triangles are clockwise
    assert frame_problems(model) == []
    assert 140 < np.ptp(model.mean[:, 0]) < 180  # a face width in mm
    assert model.identity_std[0] > 1e5 and model.expression_std[0] < 10  # 3DDFA's own α scales


def test_3ddfa_pkl_with_its_own_one_based_triangles(tmp_path, face):
    vertices, triangles, _, _ = face
    path, data, _ = write_3ddfa(tmp_path, vertices, triangles, ibug_keypoints())
    (tmp_path / "tri.pkl").unlink()
    data["tri"] = (triangles.T + 1).astype(np.int32)  # (3, M), 1..N
    other = tmp_path / "bfm_other.pkl"
    other.write_bytes(pickle.dumps(data))
    np.testing.assert_array_equal(load_model(other).triangles, triangles)
    data["keypoints"] = data["keypoints"][:-3]
    other.write_bytes(pickle.dumps(data))
    with pytest.raises(ModelFileError, match=r"bfm_other\.pkl: keypoints must be 68 \(x, y, z\) index triples"):
        load_model(other)


# ------------------------------------------------------------------------- Deep3DFaceRecon front model


def test_deep3d_mat(tmp_path, face):
    vertices, triangles, basis, std_mm = face
    path = tmp_path / "BFM_model_front.mat"
    scipy.io.savemat(
        path,
        {
            "meanshape": (vertices.reshape(1, -1) / 100).astype(np.float32),  # decimetres
            "idBase": (basis * std_mm / 100).astype(np.float32),  # already times the std
            "exBase": (orthonormal(3 * N, 4, 7) * 0.01).astype(np.float32),
            "meantex": np.full((1, 3 * N), 127.5, np.float32),
            "texBase": np.zeros((3 * N, 2), np.float32),
            "tri": (triangles[:, [0, 2, 1]] + 1).astype(np.float64),
            "keypoints": (ibug_keypoints() + 1).reshape(-1, 1).astype(np.float64),
            "point_buf": np.ones((N, 8)),
        },
    )
    model = load_model(path)
    assert formats.detect_format(path) == "deep3d" and model.topology == "bfm2009-deep3d50"
    np.testing.assert_allclose(model.mean, vertices, atol=1e-3)
    np.testing.assert_allclose(model.identity_basis, basis * std_mm, atol=1e-4)
    np.testing.assert_array_equal(model.identity_std, np.ones(5))
    np.testing.assert_allclose(model.expression_basis, orthonormal(3 * N, 4, 7), atol=1e-5)
    np.testing.assert_array_equal(model.triangles, triangles)
    np.testing.assert_allclose(model.colors, 0.5, atol=1e-6)
    np.testing.assert_array_equal(model.landmark_maps["ibug68"].vertex_ids[:, 0], ibug_keypoints())
    assert frame_problems(model) == []


def eos_matrix(values: np.ndarray) -> bytes:
    """An Eigen float matrix as eos's cereal serialisation writes it: int32 rows, cols, column-major data."""
    values = np.asarray(values, np.float32)
    values = values.reshape(-1, 1) if values.ndim == 1 else values
    return struct.pack("<ii", *values.shape) + values.T.astype("<f4").tobytes()


def eos_pca(mean, basis, eigenvalues, triangles) -> bytes:
    tri = np.asarray(triangles, "<i4").reshape(-1, 3)
    return eos_matrix(mean) + eos_matrix(basis) + eos_matrix(eigenvalues) + struct.pack("<Q", len(tri)) + tri.tobytes()


def eos_string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def test_eos_version4_archive_with_pca_expressions_and_landmarks(tmp_path, face):
    """The newer eos layout (MorphableModel version 4): expression PcaModel inside the variant, landmark
    definitions, per-vertex texture coordinates and texture triangles."""
    vertices, triangles, basis, std = face
    exp_basis = orthonormal(3 * N, 2, 11)
    uv = np.random.default_rng(12).uniform(size=(N, 2))
    empty = eos_pca(np.zeros((0, 1)), np.zeros((0, 0)), np.zeros((0, 1)), np.zeros((0, 3)))
    definitions = {"31": NOSE, "37": RIGHT_EYE, "46": LEFT_EYE, "eye.left.outer": LEFT_EYE}
    archive = b"".join(
        [
            struct.pack("<I", 4),
            eos_pca(vertices.reshape(-1), basis, std**2, triangles),
            empty,  # shape-only: an empty colour model
            b"\x00" + struct.pack("<i", 0),  # optional engaged; variant index 0 = PcaModel
            eos_pca(np.full(3 * N, 0.25), exp_basis, [9.0, 4.0], triangles),
            b"\x00" + struct.pack("<Q", len(definitions)),
            b"".join(eos_string(k) + struct.pack("<i", v) for k, v in definitions.items()),
            struct.pack("<Q", N) + uv.astype("<f8").tobytes(),
            struct.pack("<Q", len(triangles)) + triangles.astype("<i4").tobytes(),
        ]
    )
    path = tmp_path / "model.bin"
    path.write_bytes(archive)
    model = load_model(path)
    np.testing.assert_allclose(model.mean, vertices + 0.25, atol=1e-4)  # the expression mean added
    np.testing.assert_allclose(model.identity_std, std, rtol=1e-6)
    np.testing.assert_allclose(model.expression_basis, exp_basis, atol=1e-6)
    np.testing.assert_allclose(model.expression_std, [3.0, 2.0])
    np.testing.assert_allclose(model.uvs, np.column_stack([uv[:, 0], 1 - uv[:, 1]]), atol=1e-6)
    assert model.landmark_maps["ibug68"].valid.sum() == 3 and frame_problems(model) == []
    path.write_bytes(archive[:-1])
    with pytest.raises(ModelFileError, match=r"model\.bin: truncated: texture triangle indices"):
        load_model(path)


# ----------------------------------------------------------------------- the real Surrey Face Model


@pytest.fixture(scope="module")
def sfm_dir(shared_data) -> Path:
    return shared_data / "models" / "sfm"


@pytest.fixture(scope="module")
def sfm(sfm_dir) -> MorphableModel:
    return load_model(sfm_dir / "sfm_shape_3448.bin")  # picks up blendshapes, ibug map, contours


def test_real_sfm_sizes_and_companions(sfm, sfm_dir):
    assert (sfm.n_vertices, sfm.n_identity, sfm.n_expression) == (3448, 63, 6)
    assert len(sfm.triangles) == 6736 and sfm.topology == "sfm3448" and sfm.colors is None
    # ibug_to_sfm.txt defines 50 of the 68 points (not the 16 contour points, nor 61 and 65).
    valid = sfm.landmark_maps["ibug68"].valid
    assert valid.sum() == 50 and not valid[[0, 7, 9, 16, 60, 64]].any() and valid[[8, 30, 36, 45]].all()
    assert sfm.landmark_maps["ibug68"].vertex_ids[30, 0] == 114  # "31 = 114 # nose-tip"
    assert {side: len(ids) for side, ids in sfm.contours.items()} == {"right": 17, "left": 17}
    assert sfm.contours["right"][0] == 380 and sfm.contours["left"][-1] == 465
    # eos: orthonormal basis + eigenvalues (variances); blendshapes are unit-std deformations.
    gram = sfm.identity_basis.T.astype(np.float64) @ sfm.identity_basis
    np.testing.assert_allclose(gram, np.eye(63), atol=1e-5)
    assert 200 < sfm.identity_std[0] < 260 and np.all(np.diff(sfm.identity_std) <= 0)
    np.testing.assert_array_equal(sfm.expression_std, np.ones(6))
    assert sha256_of(sfm_dir / "sfm_shape_3448.bin") in KNOWN_FILES


def test_real_sfm_frame_and_units(sfm, sfm_dir):
    assert frame_problems(sfm) == []
    width, height, depth = np.ptp(sfm.mean, axis=0)
    assert 120 < width < 180 and 150 < height < 220 and 60 < depth < 140  # a face, in millimetres
    # Triangles kept as eos stores them: already counter-clockwise from the front.
    raw = (sfm_dir / "sfm_shape_3448.bin").read_bytes()
    start = 4 + 8 + 3 * 3448 * 4 + 8 + 3 * 3448 * 63 * 4 + 8 + 63 * 4 + 8
    np.testing.assert_array_equal(sfm.triangles, np.frombuffer(raw, "<i4", 6736 * 3, start).reshape(-1, 3))
    # Contours run from the top of the face down; uvs have v up (eyes above the chin).
    assert np.all(np.diff(sfm.mean[sfm.contours["right"], 1]) < 0)
    assert sfm.uvs[177, 1] > sfm.uvs[33, 1]
    # A random face within ±3 std stays a plausible face.
    sample = sfm.shape(sfm.identity_std * np.random.default_rng(0).uniform(-3, 3, 63))
    assert 100 < np.ptp(sample[:, 0]) < 220


def test_real_sfm_mean_is_close_to_its_reference_shape(sfm, sfm_dir):
    """sfm_reference.obj is the reference the SFM was built from (its 845 lowest-resolution vertices),
    not the mean: the two agree to a couple of millimetres."""
    lines = (sfm_dir / "sfm_reference.obj").read_text().splitlines()
    reference = np.array([[float(v) for v in line.split()[1:4]] for line in lines if line.startswith("v ")])
    assert reference.shape == (845, 3)
    distance = np.linalg.norm(sfm.mean[:845] - reference, axis=1)
    assert np.sqrt((distance**2).mean()) < 3.0 and distance.max() < 8.0


def test_real_sfm_without_companions_and_with_explicit_ones(sfm, sfm_dir, tmp_path):
    alone = tmp_path / "sfm_shape_3448.bin"
    alone.write_bytes((sfm_dir / "sfm_shape_3448.bin").read_bytes())
    bare = load_model(alone)
    assert bare.n_expression == 0 and not bare.landmark_maps and not bare.contours
    full = formats.load_sfm(
        alone,
        sfm_dir / "expression_blendshapes_3448.bin",
        ibug_map_path=sfm_dir / "ibug_to_sfm.txt",
        contours_path=sfm_dir / "sfm_model_contours.json",
    )
    np.testing.assert_array_equal(full.expression_basis, sfm.expression_basis)
    assert np.abs(full.expression_basis).max() > 1.0  # blendshape deltas in mm


# ------------------------------------------------------------------------------ landmarks, contours


def test_read_ibug_map_and_contours(tmp_path):
    (tmp_path / "map.txt").write_text(IBUG_TOML)
    lmap = read_ibug_map(tmp_path / "map.txt")
    assert lmap.scheme == "ibug68" and lmap.vertex_ids.shape == (68, 3) and lmap.valid.sum() == 4
    assert lmap.weights[30].tolist() == [1, 0, 0] and not lmap.weights[0].any()
    (tmp_path / "bad.txt").write_text("[landmark_mappings]\n70 = 3\n")
    with pytest.raises(ModelFileError, match=r"bad\.txt: landmark '70' is not an iBUG number"):
        read_ibug_map(tmp_path / "bad.txt")
    (tmp_path / "broken.txt").write_text("[landmark_mappings\n")
    with pytest.raises(ModelFileError, match=r"broken\.txt: not a TOML landmark mapping"):
        read_ibug_map(tmp_path / "broken.txt")
    (tmp_path / "c.json").write_text('{"model_contour": {"right_contour": [3, 2], "left_contour": [7]}}')
    assert {k: v.tolist() for k, v in read_contours(tmp_path / "c.json").items()} == {"right": [3, 2], "left": [7]}
    (tmp_path / "c.json").write_text('{"contour": []}')
    with pytest.raises(ModelFileError, match="no 'model_contour'"):
        read_contours(tmp_path / "c.json")


def test_frame_problems_catches_flipped_and_mirrored_models(face):
    vertices, triangles, basis, std = face
    lmap = read_ibug_map_from_text(IBUG_TOML)
    common = dict(identity_basis=basis, identity_std=std, expression_basis=np.zeros((3 * N, 0)))
    common.update(expression_std=np.zeros(0), topology="t", landmark_maps={"ibug68": lmap})
    good = MorphableModel(mean=vertices, triangles=triangles, **common)
    assert frame_problems(good) == []
    flipped = MorphableModel(mean=vertices, triangles=triangles[:, [0, 2, 1]], **common)
    assert any("normal" in p for p in frame_problems(flipped))
    mirrored = MorphableModel(mean=vertices * [-1, 1, 1], triangles=triangles[:, [0, 2, 1]], **common)
    assert any("right eye" in p for p in frame_problems(mirrored))
    backwards = MorphableModel(mean=vertices * [-1, 1, -1], triangles=triangles, **common)
    assert any("nose tip" in p for p in frame_problems(backwards))


# -------------------------------------------------------------------------------------- bad files


def test_truncated_sfm(sfm_dir, tmp_path):
    raw = (sfm_dir / "sfm_shape_3448.bin").read_bytes()
    half = tmp_path / "sfm_shape_3448.bin"
    half.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match=r"sfm_shape_3448\.bin: truncated: shape model basis"):
        load_model(half)
    (tmp_path / "tail.bin").write_bytes(raw + b"\0\0")
    with pytest.raises(ModelFileError, match=r"tail\.bin: 2 unexpected bytes after the MorphableModel"):
        load_model(tmp_path / "tail.bin")


def test_wrong_eos_files_get_a_hint(sfm_dir, tmp_path):
    with pytest.raises(ModelFileError, match=r"3448\.bin: an eos blendshapes file, not a MorphableModel: pass"):
        load_model(sfm_dir / "expression_blendshapes_3448.bin")
    write_exp_pca(tmp_path, N, 2, seed=8)
    with pytest.raises(ModelFileError, match=r"Exp_Pca\.bin: .*Guo et al.'s expression basis"):
        load_model(tmp_path / "Exp_Pca.bin")


def test_mat_missing_keys_and_wrong_shapes(tmp_path, face):
    path = write_bfm2009(tmp_path, face, shapePC=None)
    with pytest.raises(ModelFileError, match=r"01_MorphableModel\.mat: missing shapePC — not a complete Basel"):
        load_model(path, format="bfm2009")
    path = write_bfm2009(tmp_path, face, shapeEV=np.ones((4, 1)))
    with pytest.raises(ModelFileError, match=r"01_MorphableModel\.mat: shapeEV has 4 values, expected 5"):
        load_model(path)
    path = write_bfm2009(tmp_path, face, shapePC=np.ones((149, 5)))
    with pytest.raises(ModelFileError, match=r"shapePC has shape \(149, 5\), expected \(3N, K\) with 3N = 150"):
        load_model(path)
    path = write_bfm2009(tmp_path, face, tl=np.array([[1, 2, 51]]))
    with pytest.raises(ModelFileError, match=r"tl indices run 1\.\.51, expected 1\.\.50"):
        load_model(path)
    scipy.io.savemat(tmp_path / "other.mat", {"something": np.ones(3)})
    with pytest.raises(ModelFileError, match=r"other\.mat: a MATLAB file, but neither .* it holds: something"):
        load_model(tmp_path / "other.mat")


def test_not_the_format_the_name_says(tmp_path):
    (tmp_path / "model.h5").write_text("hello, not HDF5")
    with pytest.raises(ModelFileError, match=r"model\.h5: not an HDF5 file \(it starts with b'hello"):
        load_model(tmp_path / "model.h5")
    (tmp_path / "model.mat").write_text("not matlab")
    with pytest.raises(ModelFileError, match=r"model\.mat: not a MATLAB \.mat file"):
        load_model(tmp_path / "model.mat")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ModelFileError, match=r"list\.pkl: expected a pickled dict .*found list"):
        load_model(tmp_path / "list.pkl")
    (tmp_path / "model.npz").write_text("nope")
    with pytest.raises(ModelFileError, match=r"model\.npz: not an \.npz \(zip\) archive"):
        load_model(tmp_path / "model.npz")
    (tmp_path / "model.xyz").write_text("nope")
    with pytest.raises(
        ModelFileError, match=r"model\.xyz: cannot tell the model format from its contents or its suffix"
    ):
        load_model(tmp_path / "model.xyz")


@pytest.mark.parametrize("name", ["empty.bin", "empty.mat", "empty.h5", "empty.pkl", "empty.npz"])
def test_empty_and_missing_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ModelFileError, match=rf"{name}: file is empty"):
        load_model(tmp_path / name)
    with pytest.raises(ModelFileError, match=r"absent\.bin: no such file"):
        load_model(tmp_path / "absent.bin")


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"u": Evil()}))
    with pytest.raises(ModelFileError, match=r"evil\.pkl: not a readable pickle .*refusing to load builtins\.print"):
        load_model(tmp_path / "evil.pkl")


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_one_safe_unpickler_guards_both_entry_points(tmp_path, protocol):
    """facelib.unpickle is the one allow-list: the model loader and 3ddfa's parameter statistics both
    refuse a pickle that names os.system or builtins.eval, before anything runs, with the same words."""
    from facerecon.plugins.tddfa import load_param_stats

    marker = tmp_path / "pwned"
    attacks = {
        "os.system": b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
        "builtins.eval": b"cbuiltins\neval\n(S'open(" + repr(str(marker)).encode() + b', "w")\'\ntR.',
    }
    for name, payload in attacks.items():
        refusal = rf"refusing to load {re.escape(name)} \(only numpy arrays are allowed\)"
        with pytest.raises(pickle.UnpicklingError, match=refusal):
            safe_load(payload)
        evil = tmp_path / f"{name}.pkl"
        evil.write_bytes(payload)
        with pytest.raises(ModelFileError, match=rf"not a readable pickle of numpy arrays \({refusal}\)"):
            load_model(evil)
        stats_refusal = rf"not a 3DDFA parameter-statistics pickle \(UnpicklingError: {refusal}"
        with pytest.raises(ModelFileError, match=stats_refusal):
            load_param_stats(evil)
    assert not marker.exists()
    # ... while numpy arrays, dtypes and scalars in plain containers load at every protocol.
    stats = {"mean": np.arange(62, dtype=np.float32), "std": np.ones(62, np.float32), "n": np.int64(62)}
    loaded = safe_load(pickle.dumps(stats, protocol=protocol))
    assert loaded["n"] == 62 and np.array_equal(loaded["mean"], stats["mean"])
    (tmp_path / "stats.pkl").write_bytes(pickle.dumps(stats, protocol=protocol))
    mean, std = load_param_stats(tmp_path / "stats.pkl")
    assert np.array_equal(mean, stats["mean"]) and np.array_equal(std, stats["std"])


def test_format_argument_and_registry(tmp_path, face):
    assert set(LOADERS) == {"bfm2009", "bfm2017", "3ddfa", "deep3d", "sfm", "npz"}
    path = write_bfm2009(tmp_path, face)
    with pytest.raises(ModelFileError, match="unknown model format 'obj'; known: bfm2009, bfm2017"):
        load_model(path, format="obj")
    with pytest.raises(ModelFileError, match=r"01_MorphableModel\.mat: not an HDF5 file"):
        load_model(path, format="bfm2017")
    with pytest.raises(ModelFileError, match="carries its own expression basis"):
        load_model(write_bfm2017(tmp_path / "m.h5", face), expression_path=path)


def test_known_files_and_sha256(tmp_path):
    assert KNOWN_FILES["89ac96480eddc331120f2c8401737c55a5fcc97b10f8a64574e63976c3d246ca"][0] == "bfm_noneck_v3.pkl"
    (tmp_path / "a.txt").write_bytes(b"abc")
    assert sha256_of(tmp_path / "a.txt") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ModelFileError, match="no such file"):
        sha256_of(tmp_path / "nothing")


# --------------------------------------------------------------------------------------- npz round trip


def assert_same_model(a: MorphableModel, b: MorphableModel) -> None:
    for key in ("mean", "identity_basis", "identity_std", "expression_basis", "expression_std", "triangles"):
        assert getattr(a, key).dtype == getattr(b, key).dtype
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    for key in ("colors", "uvs"):
        assert (getattr(a, key) is None) == (getattr(b, key) is None)
        if getattr(a, key) is not None:
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert (a.topology, a.name, a.license) == (b.topology, b.name, b.license)
    assert set(a.landmark_maps) == set(b.landmark_maps)
    for scheme, lmap in a.landmark_maps.items():
        np.testing.assert_array_equal(lmap.vertex_ids, b.landmark_maps[scheme].vertex_ids)
        np.testing.assert_array_equal(lmap.weights, b.landmark_maps[scheme].weights)
    assert {k: v.tolist() for k, v in a.contours.items()} == {k: v.tolist() for k, v in b.contours.items()}


def test_npz_round_trip(tmp_path, face):
    write_exp_pca(tmp_path, N, 3, seed=9)
    loaded = load_model(write_bfm2009(tmp_path, face), expression_path=tmp_path / "Exp_Pca.bin")
    keep = ("mean", "identity_basis", "identity_std", "expression_basis", "expression_std", "triangles", "colors")
    model = MorphableModel(
        **{key: getattr(loaded, key) for key in keep},
        topology="bfm2009-50",
        name="a test model",
        license="CC0",
        uvs=np.random.default_rng(0).uniform(size=(N, 2)),
        landmark_maps={"ibug68": read_ibug_map_from_text(IBUG_TOML), "custom": read_ibug_map_from_text(IBUG_TOML)},
        contours={"right": [1, 2, 3], "left": [4, 5]},
    )
    out = tmp_path / "model.npz"
    save_npz(model, out)
    assert formats.detect_format(out) == "npz"
    assert_same_model(model, load_model(out))
    save_npz(model, tmp_path / "packed.bin", compressed=True)  # the name is kept as given
    assert_same_model(model, load_model(tmp_path / "packed.bin", format="npz"))


def test_npz_round_trip_of_the_real_sfm(sfm, tmp_path):
    save_npz(sfm, tmp_path / "sfm.npz")
    assert_same_model(sfm, load_model(tmp_path / "sfm.npz"))


def test_npz_refuses_other_archives_and_versions(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ModelFileError, match=r"other\.npz: not a facerecon model file \(format = None"):
        load_model(tmp_path / "other.npz")
    np.savez(tmp_path / "future.npz", format=np.array(formats.NPZ_FORMAT), format_version=np.array(2))
    with pytest.raises(ModelFileError, match=r"future\.npz: facerecon model format version 2, this facerecon reads 1"):
        load_model(tmp_path / "future.npz")
    np.savez(tmp_path / "partial.npz", format=np.array(formats.NPZ_FORMAT), format_version=np.array(1))
    with pytest.raises(ModelFileError, match=r"partial\.npz: missing mean, identity_basis"):
        load_model(tmp_path / "partial.npz")


@pytest.mark.parametrize(
    ("key", "spoil", "problem"),
    [
        ("mean", lambda a: a.__setitem__((5, 1), np.nan), "mean holds NaN or infinity"),
        ("identity_basis", lambda a: a.__setitem__((7, 3), np.inf), "identity_basis holds NaN or infinity"),
        ("expression_std", lambda a: a.__setitem__(0, np.nan), "expression_std holds NaN or infinity"),
        ("identity_std", lambda a: a.__setitem__(0, -1.0), "identity_std has negative values"),
        ("uvs", lambda a: a.__setitem__((0, 0), np.nan), "uvs holds NaN or infinity"),
    ],
)
def test_npz_with_nan_or_negative_std_is_refused(sfm, tmp_path, key, spoil, problem):
    """A corrupt model used to load, and then failed every photo with a numerical error (or not at all)."""
    save_npz(sfm, tmp_path / "sfm.npz")
    arrays = dict(np.load(tmp_path / "sfm.npz"))
    spoil(arrays[key])
    np.savez(tmp_path / "spoilt.npz", **arrays)
    with pytest.raises(ModelFileError, match=rf"spoilt\.npz: .*{problem}"):
        load_model(tmp_path / "spoilt.npz")


def test_eos_model_with_nan_in_its_mean_is_refused(sfm_dir, tmp_path):
    raw = bytearray((sfm_dir / "sfm_shape_3448.bin").read_bytes())
    raw[12:16] = struct.pack("<f", float("nan"))  # the first value of the shape model's mean
    (tmp_path / "sfm_shape_3448.bin").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"sfm_shape_3448\.bin: .*mean holds NaN or infinity"):
        load_model(tmp_path / "sfm_shape_3448.bin")


def test_npz_member_claiming_a_huge_array_is_a_file_error(sfm, tmp_path):
    """A header that claims terabytes: one ModelFileError, not numpy's MemoryError."""
    import io
    import zipfile

    save_npz(sfm, tmp_path / "sfm.npz")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(tmp_path / "sfm.npz") as source, zipfile.ZipFile(tmp_path / "huge.npz", "w") as target:
        for member in source.namelist():
            data = source.read(member)
            target.writestr(member, header.getvalue() + bytes(64) if member == "identity_basis.npy" else data)
    # MemoryError, or the short data's EOF where the kernel overcommits memory without limit
    with pytest.raises(ModelFileError, match=r"huge\.npz: cannot be read \((MemoryError|ValueError)"):
        load_model(tmp_path / "huge.npz")


def test_a_multi_line_parser_message_is_one_line(tmp_path):
    """pickle's persistent-id message spans two lines; the error must stay one line."""
    (tmp_path / "photo.pkl").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(ModelFileError) as caught:
        load_model(tmp_path / "photo.pkl")
    assert "photo.pkl: not a readable pickle" in str(caught.value) and "\n" not in str(caught.value)
