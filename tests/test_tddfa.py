"""The ``3ddfa`` regressor (3DDFA_V2): real MobileNet-0.5 weights, real AFLW2000-3D poses, frames.

bfm_noneck_v3.pkl (the 40 + 10 BFM bases) is not in the shared data, so the mesh tests build a model of
the same layout from what is there: 3DDFA's real mean shape (v1 ``u_shp + u_exp`` restricted to
``configs/indices.npy``, the 38,365 noneck-v3 vertices), its triangles (``configs/tri.pkl``) and its 68
keypoints (``v1/keypoints_sim.npy``), with smooth synthetic bases of realistic magnitude.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from facerecon.facelib.morphable.model import MorphableModel
from facerecon.geometry import transforms
from facerecon.geometry.transforms import rotation_from_yaw_pitch_roll
from facerecon.kernel import IBUG68, ConfigError, Face, InputError, LandmarkMap, Landmarks, ModelFileError
from facerecon.kernel import testing as conformance
from facerecon.kernel.host.imageio import load_image
from facerecon.kernel.host.registry import PluginHost
from facerecon.plugins import tddfa

torch = pytest.importorskip("torch")
scipy_io = pytest.importorskip("scipy.io")

N_VERTICES = 38365


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tddfa_dir(shared_data: Path) -> Path:
    return shared_data / "models" / "3ddfa"


@pytest.fixture(scope="module")
def weights(tddfa_dir: Path) -> Path:
    return tddfa_dir / "mb05_120x120.pth"


@pytest.fixture(scope="module")
def param_stats(tddfa_dir: Path) -> Path:
    return tddfa_dir / "configs" / "param_mean_std_62d_120x120.pkl"


def _smooth_basis(mean_mm: np.ndarray, n: int, per_unit_mm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(3N, n) smooth displacement fields (quadratic in the vertex position), column k moving the face
    by about ``per_unit_mm[k]`` mm (RMS) per unit of its coefficient."""
    x = (mean_mm - mean_mm.mean(0)) / 80.0
    features = np.column_stack([x, x**2, x[:, [0]] * x[:, [1]], x[:, [1]] * x[:, [2]]])  # (N, 8)
    columns = []
    for k in range(n):
        field = features @ rng.normal(size=(features.shape[1], 3))
        field *= per_unit_mm[k] / np.sqrt((field**2).sum(1).mean())
        columns.append(field.reshape(-1))
    return np.stack(columns, axis=1).astype(np.float32)


def _v1_noneck(tddfa_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (N, 3) micrometres, triangles (M, 3) as in tri.pkl, keypoint vertex ids (68,)) of noneck v3."""
    u = np.load(tddfa_dir / "v1" / "u_shp.npy") + np.load(tddfa_dir / "v1" / "u_exp.npy")
    indices = np.load(tddfa_dir / "configs" / "indices.npy")
    with (tddfa_dir / "configs" / "tri.pkl").open("rb") as stream:
        triangles = np.asarray(pickle.load(stream)).T
    keypoints = np.load(tddfa_dir / "v1" / "keypoints_sim.npy")
    inverse = np.full(len(u) // 3, -1)
    inverse[indices] = np.arange(len(indices))
    landmark_ids = inverse[keypoints[0::3] // 3]
    assert (landmark_ids >= 0).all()
    return u.reshape(-1, 3)[indices].astype(np.float64), triangles, landmark_ids


@pytest.fixture(scope="module")
def model(tddfa_dir: Path, param_stats: Path) -> MorphableModel:
    """A bfm_noneck_v3-shaped model in millimetres: the real mean, smooth synthetic bases scaled so that
    one regressed standard deviation of each coefficient moves the face by about 1 mm."""
    mean_um, triangles, landmark_ids = _v1_noneck(tddfa_dir)
    assert len(mean_um) == N_VERTICES and triangles.max() == N_VERTICES - 1
    mean_mm = mean_um / 1000.0
    _, std = tddfa.load_param_stats(param_stats)
    rng = np.random.default_rng(3)
    ids = np.repeat(landmark_ids[:, None], 3, axis=1)
    weights = np.zeros((68, 3), np.float32)
    weights[:, 0] = 1.0
    return MorphableModel(
        mean=mean_mm,
        identity_basis=_smooth_basis(mean_mm, 40, 1.0 / std[12:52], rng),
        identity_std=std[12:52],
        expression_basis=_smooth_basis(mean_mm, 10, 1.0 / std[52:], rng),
        expression_std=std[52:],
        triangles=triangles[:, ::-1],  # tri.pkl is clockwise from the front; the record wants CCW
        topology=f"bfm-noneck-{N_VERTICES}",
        name="3DDFA v1 mean shape on noneck v3 (test)",
        landmark_maps={IBUG68: LandmarkMap(IBUG68, ids, weights)},
    )


@pytest.fixture(scope="module")
def regressor(weights: Path, param_stats: Path, model: MorphableModel) -> tddfa.TddfaRegressor:
    return tddfa.TddfaRegressor(tddfa.TddfaOptions(weights=weights, param_stats=param_stats), "cpu", model=model)


@pytest.fixture(scope="module")
def aflw(shared_data: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, RGB image, Pose_Para pitch/yaw/roll in degrees, pt3d_68 (68, 3)) of the AFLW2000-3D samples."""
    folder = shared_data / "faces" / "samples" / "aflw2000"
    samples = []
    for photo in sorted(folder.glob("*.jpg")):
        truth = scipy_io.loadmat(photo.with_suffix(".mat"))
        pose = np.degrees(truth["Pose_Para"][0][:3])
        samples.append((photo.stem, load_image(photo), pose, truth["pt3d_68"].T.astype(np.float64)))
    assert len(samples) == 9, f"expected 9 AFLW2000 samples, found {len(samples)}"
    return samples


@pytest.fixture(scope="module")
def aflw_faces(aflw, pipeline) -> dict[str, Face]:
    """The pipeline's detection of each AFLW2000 sample (the largest face), where it finds one."""
    faces = {}
    for name, image, _, _ in aflw:
        found = pipeline.detect(image)
        if found:
            faces[name] = found[0]
    return faces


def _face_from_points(points: np.ndarray) -> Face:
    xy = np.asarray(points)[:, :2]
    return Face(box=np.r_[xy.min(0), xy.max(0)], score=1.0, landmarks=Landmarks("ibug68", xy))


def _rotation_aflw(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """AFLW2000-3D / 300W-LP's RotationMatrix(pitch, yaw, roll) (radians), y-up camera frame."""
    c, s = np.cos, np.sin
    rx = np.array([[1, 0, 0], [0, c(pitch), s(pitch)], [0, -s(pitch), c(pitch)]])
    ry = np.array([[c(yaw), 0, -s(yaw)], [0, 1, 0], [s(yaw), 0, c(yaw)]])
    rz = np.array([[c(roll), s(roll), 0], [-s(roll), c(roll), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0)


# -- crops and pose maths (no model files) -----------------------------------------------------------


def test_roi_box_from_box_is_3ddfas():
    # old size 100, centre (150, 150 + 14), side int(158)
    assert np.allclose(tddfa.roi_box_from_box([100, 100, 200, 200]), [71, 85, 229, 243])
    # old size 20, centre (5, 15 + 2.8), side int(31.6)
    assert np.allclose(tddfa.roi_box_from_box([0.0, 0.0, 10.0, 30.0]), [-10.5, 2.3, 20.5, 33.3])


def test_roi_box_from_landmarks_is_3ddfas():
    points = np.array([[10.0, 20.0], [30.0, 20.0], [20.0, 60.0]])
    side = np.sqrt(2.0) * 40.0  # the diagonal of the 40 x 40 square around the points' box
    assert np.allclose(
        tddfa.roi_box_from_landmarks(points), [20 - side / 2, 40 - side / 2, 20 + side / 2, 40 + side / 2]
    )


def test_network_input_is_bgr_cropped_padded_normalised():
    image = np.zeros((50, 80, 3), np.uint8)
    image[..., 0] = 255  # pure red
    batch = tddfa.network_input(image, [-40, 0, 40, 80])  # left half outside the image
    assert batch.shape == (1, 3, 120, 120) and batch.dtype == np.float32
    red, blue = batch[0, 2], batch[0, 0]  # BGR: red is the last channel
    assert np.allclose(red[:60, 70:], 127.5 / 128) and np.allclose(blue[:60, 70:], -127.5 / 128)
    assert np.allclose(red[:, :50], -127.5 / 128), "outside the image must be zero (black) padding"
    assert np.allclose(red[100:, 70:], -127.5 / 128), "below the image must be zero padding"
    with pytest.raises(InputError):
        tddfa.network_input(image, [10, 10, 10.2, 10.2])


def _params(rotation_y_up: np.ndarray, s: float, t: tuple[float, float, float]) -> np.ndarray:
    params = np.zeros(62)
    params[:12] = np.column_stack([s * rotation_y_up, t]).reshape(-1)
    return params


def test_pose_from_params_recovers_a_known_rotation():
    angles = np.radians([12.0, -35.0, 8.0])  # pitch, yaw, roll
    truth = _rotation_aflw(*angles)
    params = _params(truth, 5e-4, (60.0, 70.0, -60.0))
    roi = (100.0, 50.0, 340.0, 290.0)  # sigma = 2 px per crop pixel
    scale, rotation, translation, yaw_pitch_roll = tddfa.pose_from_params(params, roi)
    assert np.allclose(rotation, transforms.FLIP_YZ @ truth, atol=1e-9), "model -> mesh frame = flip y, z"
    assert np.allclose(tddfa.aflw_pitch_yaw_roll(rotation), [12.0, -35.0, 8.0], atol=1e-9)
    assert scale == pytest.approx(1000 * 5e-4 * 2)  # px per mm
    assert np.allclose(translation, [(60 - 1) * 2 + 100, (120 - 70) * 2 + 50, 0.0])
    assert np.allclose(yaw_pitch_roll, transforms.yaw_pitch_roll(rotation))
    # Without a crop box: pixels of the 120 x 120 crop.
    scale, _, translation, _ = tddfa.pose_from_params(params)
    assert scale == pytest.approx(0.5) and np.allclose(translation, [59, 50, 0])
    # A sheared, anisotropic camera still gives a proper rotation, near the true one.
    rng = np.random.default_rng(0)
    noisy = params.copy()
    noisy[:12] += np.column_stack([5e-4 * 0.03 * rng.normal(size=(3, 3)), np.zeros(3)]).reshape(-1)
    _, rotation, _, _ = tddfa.pose_from_params(noisy, roi)
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-9) and np.linalg.det(rotation) == pytest.approx(1)
    assert np.degrees(np.arccos((np.trace(rotation.T @ transforms.FLIP_YZ @ truth) - 1) / 2)) < 5


def test_pose_angle_signs_in_the_image():
    """Turn, nod and tilt a frontal face and look where its nose and crown go in the image: AFLW's yaw and
    pitch have the opposite signs of facerecon's (geometry.transforms.yaw_pitch_roll), roll the same."""
    nose, crown = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])  # model frame: z to the viewer, y up
    for angles, check in [
        ((0, 20, 0), lambda r: (r @ nose)[0] < 0),  # AFLW yaw > 0: nose to the image's left
        ((20, 0, 0), lambda r: (r @ nose)[1] < 0),  # AFLW pitch > 0: looks up (y down in the mesh frame)
        ((0, 0, 20), lambda r: (r @ crown)[0] > 0),  # roll > 0: crown to the image's right (clockwise)
    ]:
        _, rotation, _, head_angles = tddfa.pose_from_params(
            _params(_rotation_aflw(*np.radians(angles)), 1e-3, (0, 0, 0))
        )
        assert check(rotation), angles
        pitch, yaw, roll = angles
        assert np.allclose(tddfa.aflw_pitch_yaw_roll(rotation), angles, atol=1e-9)
        assert np.allclose(head_angles, [-yaw, -pitch, roll], atol=1e-9)
        assert np.allclose(rotation, rotation_from_yaw_pitch_roll(*head_angles), atol=1e-9)


# -- the network ---------------------------------------------------------------------------------------


def test_checkpoint_loads_strictly_and_width_is_inferred(weights: Path, tmp_path: Path):
    state, width = tddfa.load_checkpoint(weights)
    assert width == 0.5 and "fc_param.weight" in state and not any(k.startswith("module.") for k in state)
    network = tddfa.build_network(width)
    network.load_state_dict(state, strict=True)
    # A width-1.0 (mb1) checkpoint in 3DDFA_V2's own training layout: "fc" head, no landmark head.
    mb1 = {
        "module." + k.replace("fc_param.", "fc."): v
        for k, v in tddfa.build_network(1.0).state_dict().items()
        if not k.startswith("fc_lm.")
    }
    torch.save({"epoch": 1, "state_dict": mb1}, tmp_path / "mb1.pth")
    state, width = tddfa.load_checkpoint(tmp_path / "mb1.pth")
    assert width == 1.0 and state["fc_param.weight"].shape == (62, 1024)


@pytest.fixture(scope="module")
def onnx_weights(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    return tddfa.export_onnx(weights, tmp_path_factory.mktemp("onnx") / "mb05_120x120.onnx")


def test_onnxruntime_and_torch_give_the_same_parameters(regressor, onnx_weights, param_stats, aflw, model):
    onnx = tddfa.TddfaRegressor(tddfa.TddfaOptions(weights=onnx_weights, param_stats=param_stats), model=model)
    assert onnx.backend == "onnxruntime-cpu" and regressor.backend == "torch-cpu"
    for _, image, _, points in aflw[:3]:
        batch = tddfa.network_input(image, tddfa.roi_box_from_landmarks(points))
        assert np.allclose(onnx.runner(batch), regressor.runner(batch), atol=1e-4)
        face = _face_from_points(points)
        a, b = onnx.infer(image, face), regressor.infer(image, face)
        assert np.allclose(a.roi_box, b.roi_box, atol=1e-3)
        assert (np.abs(a.params62 - b.params62) / regressor.param_std).max() < 1e-4
        assert np.allclose(
            onnx.regress(image, face).mesh.vertices, regressor.regress(image, face).mesh.vertices, atol=0.05
        )


def test_export_onnx_command(weights: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    assert tddfa.main(["export-onnx", str(weights), str(tmp_path / "out" / "net.onnx")]) == 0
    assert (tmp_path / "out" / "net.onnx").stat().st_size > 1_000_000
    assert not list((tmp_path / "out").glob("*.partial"))


# -- bad files -----------------------------------------------------------------------------------------


def _options(weights: Path, param_stats: Path, **kw) -> tddfa.TddfaOptions:
    return tddfa.TddfaOptions(weights=weights, param_stats=param_stats, **kw)


def test_bad_weight_files_are_model_file_errors(weights: Path, param_stats: Path, tddfa_dir: Path, tmp_path: Path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights.read_bytes()[:200_000])
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    torch.save(
        {"state_dict": {"module.conv1.weight": torch.zeros(16, 3, 3, 3), "module.head.weight": torch.zeros(2)}},
        tmp_path / "wrong.pth",
    )
    torch.save([1, 2, 3], tmp_path / "list.pth")
    cases = {
        truncated: "not a readable PyTorch checkpoint",
        text: "not a readable PyTorch checkpoint",
        tmp_path / "wrong.pth": "missing keys: bn1.bias",
        tmp_path / "list.pth": "holds no state dict",
        tmp_path / "absent.pth": "no such file",
        tddfa_dir / "FaceBoxesProd.pth": "missing keys: bn1.bias",  # a real checkpoint of another network
    }
    for path, words in cases.items():
        with pytest.raises(ModelFileError) as caught:
            tddfa.TddfaRegressor(_options(path, param_stats))
        assert str(path) in str(caught.value) and words in str(caught.value), str(caught.value)
    with pytest.raises(
        ModelFileError, match=r"width 1 .*shape mismatches: conv1.weight \(16, 3, 3, 3\) != \(32, 3, 3, 3\)"
    ):
        tddfa.TddfaRegressor(_options(weights, param_stats, width=1.0))
    with pytest.raises(ModelFileError, match="unexpected keys: head.weight"):
        tddfa.load_checkpoint(tmp_path / "wrong.pth")


def test_bad_onnx_files_are_model_file_errors(param_stats: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(ModelFileError, match="not a readable ONNX model") as caught:
        tddfa.TddfaRegressor(_options(garbage, param_stats))
    assert str(garbage) in str(caught.value)
    from onnx import TensorProto, helper, save

    other = tmp_path / "other.onnx"  # a valid ONNX model of the wrong shape: (1, 3, 32, 32) -> itself
    spec = [1, 3, 32, 32]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "other",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, spec)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, spec)],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(other))
    with pytest.raises(ModelFileError, match="not a 3DDFA network"):
        tddfa.TddfaRegressor(_options(other, param_stats))


def test_bad_param_stats_are_model_file_errors(weights: Path, tmp_path: Path):
    (tmp_path / "text.pkl").write_text("mean, std\n")
    with (tmp_path / "short.pkl").open("wb") as stream:
        pickle.dump({"mean": np.zeros(12, np.float32), "std": np.ones(12, np.float32)}, stream)
    with (tmp_path / "evil.pkl").open("wb") as stream:
        pickle.dump(logging.getLogger, stream)  # any callable: the loader must refuse to import it
    for name, words in [
        ("text.pkl", "not a 3DDFA parameter-statistics pickle"),
        ("short.pkl", "62 values"),
        ("evil.pkl", "refusing to load logging.getLogger"),
    ]:
        with pytest.raises(ModelFileError, match=words):
            tddfa.load_param_stats(tmp_path / name)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "net.pth").write_bytes(weights.read_bytes())
    with pytest.raises(ModelFileError, match="param_mean_std_62d_120x120.pkl not found beside"):
        tddfa.TddfaRegressor(tddfa.TddfaOptions(weights=lonely / "net.pth"))


def test_param_stats_are_found_in_3ddfa_v2s_layout(weights: Path, tddfa_dir: Path):
    assert tddfa.locate_param_stats(weights) == tddfa_dir / "configs" / "param_mean_std_62d_120x120.pkl"


# -- pose on real photos -------------------------------------------------------------------------------


def test_pose_on_aflw2000_with_the_detectors_boxes(regressor, aflw, aflw_faces):
    """Yaw, pitch, roll of the real mb05 network (two passes) against AFLW2000-3D's Pose_Para.
    Measured: 8 of 9 samples detected (not image00181, yaw 79 degrees); MAE 1.8 degrees."""
    assert len(aflw_faces) >= 7, f"the detector found only {sorted(aflw_faces)}"
    errors = []
    for name, image, truth, _ in aflw:
        if name in aflw_faces:
            result = regressor.regress(image, aflw_faces[name])
            errors.append(_angle_error(result.parameters["pitch_yaw_roll_aflw_deg"], truth))
    errors = np.array(errors)
    print(
        f"\n3ddfa mb05 pose MAE on {len(errors)} AFLW2000 samples (detector boxes, two passes): "
        f"pitch {errors[:, 0].mean():.2f}, yaw {errors[:, 1].mean():.2f}, roll {errors[:, 2].mean():.2f}, "
        f"mean {errors.mean():.2f} degrees"
    )
    assert errors.mean() < 4.0 and errors.max() < 12.0, errors.round(1)


def test_pose_on_aflw2000_from_landmark_crops_without_a_model(weights: Path, param_stats: Path, aflw):
    """One pass on 3DDFA's landmark crop from the ground-truth 68 points, all 9 samples (yaw up to 79
    degrees), no BFM needed. Measured: MAE 2.0 degrees."""
    network = tddfa.TddfaRegressor(_options(weights, param_stats))
    assert network.model is None
    errors = []
    for _, image, truth, points in aflw:
        roi = tddfa.roi_box_from_landmarks(points)
        _, rotation, _, _ = tddfa.pose_from_params(network.params_for_crop(image, roi), roi)
        errors.append(_angle_error(tddfa.aflw_pitch_yaw_roll(rotation), truth))
    errors = np.array(errors)
    print(
        f"\n3ddfa mb05 pose MAE on {len(errors)} AFLW2000 samples (ground-truth landmark crops, one pass): "
        f"{errors.mean():.2f} degrees"
    )
    assert errors.mean() < 4.0 and errors.max() < 12.0, errors.round(1)
    face = _face_from_points(aflw[0][3])
    prediction = network.infer(aflw[0][1], face)  # without a model: one pass from the face box
    assert np.allclose(prediction.roi_box, tddfa.roi_box_from_box(face.box))
    with pytest.raises(ModelFileError, match="needs the BFM model"):
        network.regress(aflw[0][1], face)


# -- the mesh ------------------------------------------------------------------------------------------


def test_conformance_on_aflw2000_and_lfpw(regressor, aflw, aflw_faces, face_photo, pipeline):
    for name, image, _, _ in aflw:
        if name in aflw_faces:
            result = conformance.check_regressor(regressor, image, aflw_faces[name])
            break
    mesh = result.mesh
    assert mesh.topology == f"bfm-noneck-{N_VERTICES}" and mesh.vertices.shape == (N_VERTICES, 3)
    assert set(result.parameters) >= {
        "identity",
        "expression",
        "yaw_pitch_roll_deg",
        "params62",
        "pitch_yaw_roll_aflw_deg",
    }
    assert result.parameters["identity"].shape == (40,) and result.parameters["expression"].shape == (10,)
    conformance.check_regressor(regressor, face_photo, pipeline.detect(face_photo)[0])


def test_mesh_lies_on_the_face(regressor, aflw, aflw_faces):
    """The re-projected iBUG-68 points of the mesh against AFLW2000-3D's 68 landmarks (NME normalised by
    the ground-truth box size, AFLW2000-3D's convention). Mean shape and synthetic bases only, so this is
    a frame check, not an accuracy claim. Measured: mean NME 0.036."""
    errors = []
    for name, image, truth, points in aflw:
        if name not in aflw_faces or abs(truth[1]) > 60:
            continue
        result = regressor.regress(image, aflw_faces[name])
        marks = result.mesh.landmarks(IBUG68)
        size = np.sqrt(np.prod(points[:, :2].max(0) - points[:, :2].min(0)))
        errors.append(np.linalg.norm(marks.xy - points[:, :2], axis=1).mean() / size)
        # Depth: the mesh frame's z points away from the camera, so the nose tip is the nearest point.
        assert marks.points[30, 2] < np.median(result.mesh.vertices[:, 2])
        # The similarity pose approximates the exact affine mesh.
        shape = regressor.model.shape(result.parameters["identity"], result.parameters["expression"])
        posed = result.scale * shape.astype(np.float64) @ np.asarray(result.rotation, np.float64).T + result.translation
        assert np.abs(posed[:, :2] - result.mesh.vertices[:, :2]).mean() < 0.05 * size
    print(f"\n3ddfa mesh iBUG-68 NME (box-normalised) on {len(errors)} AFLW2000 samples: {np.mean(errors):.3f}")
    assert len(errors) >= 6 and np.mean(errors) < 0.08 and max(errors) < 0.12, np.round(errors, 3)


def _reference_3ddfa_v2(
    params: np.ndarray, roi: np.ndarray, u_um: np.ndarray, w_shp: np.ndarray, w_exp: np.ndarray
) -> np.ndarray:
    """3DDFA_V2's recon_vers + similar_transform, transcribed: (3, K) in their image frame (z towards the
    viewer, before their min-depth shift)."""
    p = params.astype(np.float64)
    camera = p[:12].reshape(3, 4)
    points = camera[:, :3] @ (u_um + w_shp @ p[12:52] + w_exp @ p[52:]).reshape(3, -1, order="F") + camera[:, 3:]
    points[0] -= 1
    points[2] -= 1
    points[1] = 120 - points[1]
    sx, sy, ex, ey = roi
    scale_x, scale_y = (ex - sx) / 120, (ey - sy) / 120
    points[0] = points[0] * scale_x + sx
    points[1] = points[1] * scale_y + sy
    points[2] *= (scale_x + scale_y) / 2
    return points


def test_vertices_are_3ddfa_v2s_maths_in_facerecons_frame(regressor, model, aflw, aflw_faces):
    name, image, _, _ = next(sample for sample in aflw if sample[0] in aflw_faces)
    result = regressor.regress(image, aflw_faces[name])
    params, roi = result.parameters["params62"], result.parameters["roi_box"]
    ids = model.landmark_maps[IBUG68].vertex_ids[:, 0]
    rows = (3 * ids[:, None] + np.arange(3)).reshape(-1)  # 3DDFA's keypoints: rows of the flat (3N,) arrays
    to_um = tddfa.BFM_UNITS_PER_MM
    theirs = _reference_3ddfa_v2(
        params,
        roi,
        model.mean.reshape(-1)[rows].astype(np.float64) * to_um,
        model.identity_basis[rows].astype(np.float64) * to_um,
        model.expression_basis[rows].astype(np.float64) * to_um,
    )
    ours = result.mesh.vertices[ids].astype(np.float64)
    assert np.abs(ours[:, :2] - theirs[:2].T).max() < 1e-2, "x, y must be 3DDFA_V2's pixels"
    depth = ours[:, 2] + theirs[2]  # ours is theirs negated, shifted by a constant
    assert np.ptp(depth) < 1e-2


def test_regress_needs_a_good_model(weights: Path, param_stats: Path, model: MorphableModel, caplog):
    def variant(**changes) -> MorphableModel:
        fields = {
            k: getattr(model, k)
            for k in (
                "mean",
                "identity_basis",
                "identity_std",
                "expression_basis",
                "expression_std",
                "triangles",
                "topology",
                "landmark_maps",
            )
        }
        fields.update(changes)
        return MorphableModel(**fields)

    options = _options(weights, param_stats)
    with pytest.raises(ModelFileError, match="micrometres"):
        tddfa.TddfaRegressor(options, model=variant(mean=model.mean * 1000, identity_basis=model.identity_basis * 1000))
    with pytest.raises(ModelFileError, match="at least 40 identity"):
        tddfa.TddfaRegressor(options, model=model.truncated(20, 10))
    with pytest.raises(ModelFileError, match="no 'ibug68' landmark map"):
        tddfa.TddfaRegressor(options, model=variant(landmark_maps={}))
    with caplog.at_level(logging.WARNING, logger="facerecon.plugins.tddfa"):
        flipped = tddfa.TddfaRegressor(options, model=variant(triangles=model.triangles[:, ::-1]))
    assert "clockwise" in caplog.text
    assert np.array_equal(flipped.model.triangles, model.triangles)


def test_two_pass_refines_the_crop(
    weights: Path, param_stats: Path, model: MorphableModel, regressor, aflw, aflw_faces
):
    single = tddfa.TddfaRegressor(_options(weights, param_stats, two_pass=False), model=model)
    name, image, _, _ = next(sample for sample in aflw if sample[0] in aflw_faces)
    face = aflw_faces[name]
    one, two = single.infer(image, face), regressor.infer(image, face)
    assert np.allclose(one.roi_box, tddfa.roi_box_from_box(face.box))
    assert not np.allclose(two.roi_box, one.roi_box)
    marks = single.landmarks68(one.params62, one.roi_box)
    assert np.allclose(two.roi_box, tddfa.roi_box_from_landmarks(marks))


# -- the plugin ----------------------------------------------------------------------------------------


def test_registered_as_a_regressor(weights: Path, param_stats: Path, tmp_path: Path):
    host = PluginHost(load_entrypoints=False)
    assert host.register_plugin(tddfa, name="3ddfa")
    spec = host.spec("regressor", "3ddfa")
    assert "non-commercial" in spec.license_note
    options = spec.make_options({"weights": str(weights), "param_stats": str(param_stats), "two_pass": False})
    assert options == tddfa.TddfaOptions(weights=weights, param_stats=param_stats, two_pass=False)
    with pytest.raises(ConfigError, match="unknown option"):
        spec.make_options({"weights": str(weights), "bfm": "x.pkl"})
    with pytest.raises(ModelFileError, match=r"needs its network: set \[options.regressor.3ddfa\] weights"):
        host.create("regressor", "3ddfa", {}, "cpu")  # a clear error, not a missing positional argument
    with pytest.raises(ConfigError, match="width"):
        spec.make_options({"weights": str(weights), "width": -1.0})
    with pytest.raises(ModelFileError, match="needs the BFM model"):
        host.create("regressor", "3ddfa", {"weights": str(weights)}, "cpu")
    with pytest.raises(ModelFileError, match="no such file"):
        host.create(
            "regressor", "3ddfa", {"weights": str(weights), "model": str(tmp_path / "bfm_noneck_v3.pkl")}, "cpu"
        )


def test_factory_with_the_3ddfa_loader(
    weights: Path, param_stats: Path, tddfa_dir: Path, model, regressor, aflw, aflw_faces, tmp_path: Path
):
    """Once ``morphable.formats`` exists: a file in bfm_noneck_v3.pkl's layout (micrometres, (3N, 1) u,
    (3N, 40) w_shp, (3N, 10) w_exp, flat keypoint rows, tri as 3 x M) through ``load_model`` gives the same
    mesh as the model built by hand here. Guards the loader's units, axes and keypoints."""
    pytest.importorskip("facerecon.facelib.morphable.formats")
    _, triangles, landmark_ids = _v1_noneck(tddfa_dir)
    data = {
        "u": (model.mean.astype(np.float64) * 1000).reshape(-1, 1).astype(np.float32),
        "w_shp": model.identity_basis * 1000,
        "w_exp": model.expression_basis * 1000,
        "tri": triangles.T.astype(np.int32),
        "keypoints": (3 * landmark_ids[:, None] + np.arange(3)).reshape(-1).astype(np.int64),
    }
    path = tmp_path / "bfm_noneck_v3.pkl"
    (tmp_path / param_stats.name).write_bytes(param_stats.read_bytes())  # the loader's coefficient prior
    with path.open("wb") as stream:
        pickle.dump(data, stream)
    built = tddfa.factory(_options(weights, param_stats, model=path), "cpu")
    name, image, _, _ = next(sample for sample in aflw if sample[0] in aflw_faces)
    ours = regressor.regress(image, aflw_faces[name])
    theirs = built.regress(image, aflw_faces[name])
    assert np.abs(theirs.mesh.landmarks(IBUG68).xy - ours.mesh.landmarks(IBUG68).xy).max() < 0.05
    assert np.abs(theirs.mesh.vertices - ours.mesh.vertices).max() < 0.05
    assert theirs.mesh.topology == built.model.topology  # the loader names the vertex layout
    # the .npz `facerecon models convert` makes of it serves as well; another model's .npz is refused
    from facerecon.facelib.morphable.formats import save_npz

    converted = tmp_path / "bfm_noneck_v3.npz"
    save_npz(built.model, converted)
    from_npz = tddfa.factory(_options(weights, param_stats, model=converted), "cpu")
    assert np.abs(from_npz.regress(image, aflw_faces[name]).mesh.vertices - theirs.mesh.vertices).max() < 1e-3
    other = tmp_path / "other.npz"
    save_npz(dataclasses.replace(built.model, topology="sfm3448"), other)
    with pytest.raises(ModelFileError, match="refer to bfm_noneck_v3.pkl's basis"):
        tddfa.factory(_options(weights, param_stats, model=other), "cpu")
