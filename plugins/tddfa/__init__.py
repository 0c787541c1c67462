"""Regressor ``3ddfa``: 3DDFA_V2 (Guo, Zhu, Yang, Yang, Lei, Li: *Towards Fast, Accurate and Stable 3D
Dense Face Alignment*, ECCV 2020; github.com/cleardusk/3DDFA_V2, MIT).

A MobileNet-V1 (width 0.5: ``mb05_120x120.pth``, or 1.0: ``mb1_120x120.pth``) looks at a 120x120 crop
around the face and regresses 62 numbers, de-normalised with ``param_mean_std_62d_120x120.pkl``
(``params = output * std + mean``): a 3x4 affine camera ``P = [s·R | t]`` (12), 40 identity and 10
expression coefficients of BFM "noneck v3" (``bfm_noneck_v3.pkl``, 38,365 vertices). The maths are
3DDFA_V2's, written out in facerecon's frames:

* Crop (``roi_box_from_box``, their ``parse_roi_box_from_bbox``): a square 1.58 times the mean side of
  the face box, moved down by 0.14 of it; cut out with integer-rounded bounds (zero padding outside the
  image), resized to 120x120 with bilinear interpolation, **BGR**, ``(x - 127.5) / 128``.
* Optional second pass (``two_pass``, as 3DDFA_V2's demos do): the crop is re-made from the 68
  landmarks of the first pass (``roi_box_from_landmarks``, their ``parse_roi_box_from_landmark``) and
  the network runs again. It needs the model (the landmarks are model vertices).
* Vertices: 3DDFA computes ``c = P[:, :3] @ S_um + P[:, 3]`` in the crop (y up, 1-based, BFM in
  micrometres) and maps it to the image with their ``similar_transform``: ``x = (c_x - 1)·σx + x0``,
  ``y = (120 - c_y)·σy + y0``, ``z = (c_z - 1)·σ`` (σ = crop side / 120). Here the model is a
  :class:`~facerecon.facelib.morphable.model.MorphableModel` in millimetres and the mesh frame has
  z away from the camera, so ``vertex = A @ S_mm + b`` with ``A = 1000 · diag(σx, -σy, -σ) @ P[:, :3]``
  and ``b = ((t_x - 1)·σx + x0, (120 - t_y)·σy + y0, 0)``: x and y are exactly 3DDFA_V2's; depth is
  theirs negated, with the model origin at depth 0 (an orthographic camera has no absolute depth).
* Pose: the regressed ``A`` is affine, not a scaled rotation. The reported rotation is the nearest
  rotation (SVD), the scale 3DDFA's own ``P2sRt`` image-plane scale (mean norm of the first two rows),
  the translation ``b``; so ``vertices ≈ scale · R @ S + t``, while the mesh keeps the exact affine map
  the network was trained with. Angles: ``yaw_pitch_roll_deg`` in facerecon's convention
  (:func:`facerecon.geometry.transforms.yaw_pitch_roll`), and ``pitch_yaw_roll_aflw_deg`` in
  AFLW2000-3D / 300W-LP's ``Pose_Para`` convention (what 3DDFA was trained and is evaluated on; its yaw
  and pitch have the opposite signs and the rotations compose in another order).

Two inference back-ends: PyTorch (``weights`` = the ``.pth`` checkpoint; CPU, or CUDA with
``device = "cuda"``) and onnxruntime (``weights`` = an ``.onnx`` file, e.g. made by :func:`export_onnx`
or by 3DDFA_V2's own ``convert_to_onnx``). Model files are never downloaded: users supply them.

The package: this module is the entry point (options, the stage, its factory and registration, and
every public name of the package); ``params`` holds the crop and parameter maths and the parameter
statistics, ``network`` the MobileNet, its checkpoints, the two runners and :func:`export_onnx`, and
``__main__`` the ``export-onnx`` command (``python -m facerecon.plugins.tddfa export-onnx
mb05_120x120.pth mb05_120x120.onnx``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerecon.facelib.morphable.model import MorphableModel
from facerecon.kernel.contract import IBUG68, CoarseResult, Face, Mesh, Registrar, hookimpl
from facerecon.kernel.contract.errors import ModelFileError, PluginError
from facerecon.kernel.contract.images import check_image
from facerecon.plugins.tddfa.network import (
    BLOCKS,
    OPTIONAL_KEYS,
    OnnxRunner,
    TorchRunner,
    build_network,
    export_onnx,
    load_checkpoint,
)
from facerecon.plugins.tddfa.params import (
    BFM_UNITS_PER_MM,
    INPUT_SIZE,
    N_EXPRESSION,
    N_IDENTITY,
    N_PARAMS,
    N_POSE,
    PARAM_STATS_NAME,
    aflw_pitch_yaw_roll,
    camera_from_params,
    existing_file,
    load_param_stats,
    locate_param_stats,
    network_input,
    pose_from_params,
    roi_box_from_box,
    roi_box_from_landmarks,
)

__all__ = [
    "BFM_UNITS_PER_MM",
    "BLOCKS",
    "INPUT_SIZE",
    "N_EXPRESSION",
    "N_IDENTITY",
    "N_PARAMS",
    "N_POSE",
    "OPTIONAL_KEYS",
    "PARAM_STATS_NAME",
    "OnnxRunner",
    "TddfaOptions",
    "TddfaPrediction",
    "TddfaRegressor",
    "TorchRunner",
    "aflw_pitch_yaw_roll",
    "build_network",
    "camera_from_params",
    "export_onnx",
    "facerecon_register_stages",
    "factory",
    "load_checkpoint",
    "load_param_stats",
    "locate_param_stats",
    "main",
    "network_input",
    "pose_from_params",
    "roi_box_from_box",
    "roi_box_from_landmarks",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TddfaOptions:
    """Options of the ``3ddfa`` regressor (``[options.regressor.3ddfa]``).

    weights: the network, a 3DDFA_V2 PyTorch checkpoint (``mb05_120x120.pth``, ``mb1_120x120.pth``) or
        an ONNX export of one (``.onnx``: run with onnxruntime, no PyTorch needed).
    param_stats: ``param_mean_std_62d_120x120.pkl`` (default: beside ``weights``, or in a ``configs``
        folder beside it or beside its folder, as in 3DDFA_V2's layout).
    model: ``bfm_noneck_v3.pkl`` (40 identity + 10 expression bases the network's coefficients refer
        to), or the .npz ``facerecon models convert`` made of it; required for the mesh.
    width: MobileNet width multiplier (0.5 for mb05, 1.0 for mb1); None reads it from the checkpoint.
    two_pass: run the network a second time on a crop made from the first pass's 68 landmarks.
    """

    weights: Path | None = None
    param_stats: Path | None = None
    model: Path | None = None
    width: float | None = None
    two_pass: bool = True

    def __post_init__(self) -> None:
        for name in ("weights", "param_stats", "model"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value).expanduser())
        if self.width is not None and not 0.0 < self.width <= 4.0:
            raise ValueError(f"width must be in (0, 4], got {self.width}")


@dataclass(frozen=True, eq=False)
class TddfaPrediction:
    """What the network said about one face.

    params62: float32 (62,) de-normalised parameters: 3x4 camera (row-major), 40 identity, 10 expression.
    roi_box: float64 (4,) x0, y0, x1, y1 image pixels of the crop the parameters refer to.
    """

    params62: np.ndarray
    roi_box: np.ndarray


# -- the stage ---------------------------------------------------------------------------------------


class TddfaRegressor:
    """The ``3ddfa`` stage: the network, its parameter statistics and (for meshes) the BFM model.

    ``model``: a MorphableModel of bfm_noneck_v3 (the first 40 identity and 10 expression components are
    the network's); without it, :meth:`infer` and :func:`pose_from_params` still give the pose, and
    :meth:`regress` raises :class:`ModelFileError`.
    """

    def __init__(self, options: TddfaOptions, device: str = "cpu", model: MorphableModel | None = None) -> None:
        self.options = options
        weights = existing_file(_required_weights(options), "3DDFA weights")
        stats = options.param_stats if options.param_stats is not None else locate_param_stats(weights)
        self.param_mean, self.param_std = load_param_stats(stats)
        self.runner: Callable[[np.ndarray], np.ndarray]
        if weights.suffix.lower() == ".onnx":
            self.runner = OnnxRunner(weights, device)
        else:
            self.runner = TorchRunner(weights, options.width, device)
        self.backend: str = getattr(self.runner, "name", "")
        self.model = _checked_model(model) if model is not None else None
        if self.model is not None:
            lmap = self.model.landmark_maps[IBUG68]
            ids = np.asarray(lmap.vertex_ids)
            rows = 3 * ids[..., None] + np.arange(3)  # (68, 3 vertices, 3 coordinates) rows of the bases
            self._lm_mean = np.asarray(self.model.mean, np.float64)[ids]
            self._lm_identity = np.asarray(self.model.identity_basis, np.float64)[rows]
            self._lm_expression = np.asarray(self.model.expression_basis, np.float64)[rows]
            self._lm_weights = np.asarray(lmap.weights, np.float64)
            self._lm_valid = lmap.valid
            # One float32 (3N, 50) basis: a float64 product would copy the whole basis on every call.
            self._mean = np.asarray(self.model.mean, np.float32).reshape(-1)
            self._basis = np.ascontiguousarray(
                np.hstack([self.model.identity_basis, self.model.expression_basis]), np.float32
            )

    # The network ---------------------------------------------------------------------------------

    def params_for_crop(self, image: np.ndarray, roi_box: Iterable[float]) -> np.ndarray:
        """float32 (62,) de-normalised parameters for the RGB ``image``'s crop ``roi_box``."""
        raw = self.runner(network_input(image, roi_box))
        if raw.shape != (1, N_PARAMS) or not np.isfinite(raw).all():
            raise PluginError(f"3ddfa: the network returned {raw.shape} (finite: {np.isfinite(raw).all()})")
        return (raw[0] * self.param_std + self.param_mean).astype(np.float32)

    def landmarks68(self, params62: np.ndarray, roi_box: Iterable[float]) -> np.ndarray:
        """float64 (68, 3) mesh-frame iBUG-68 landmarks of the parameters (needs the model); NaN rows for
        landmarks the model's map leaves out."""
        if self.model is None:
            raise ModelFileError("3ddfa: landmarks need the BFM model (option model = bfm_noneck_v3.pkl)")
        p = np.asarray(params62, np.float64)
        shape = (
            self._lm_mean
            + self._lm_identity @ p[N_POSE : N_POSE + N_IDENTITY]
            + self._lm_expression @ p[N_POSE + N_IDENTITY : N_PARAMS]
        )
        points = np.einsum("kj,kjc->kc", self._lm_weights, shape)
        matrix, offset = camera_from_params(p, roi_box)
        points = points @ matrix.T + offset
        points[~self._lm_valid] = np.nan
        return points

    def infer(self, image: np.ndarray, face: Face) -> TddfaPrediction:
        """Run the network on ``face`` (its box; a second pass from the landmarks with ``two_pass`` and a
        model). ``image``: uint8 (H, W, 3) RGB."""
        image = check_image(image)
        roi = roi_box_from_box(face.box)
        params = self.params_for_crop(image, roi)
        if self.options.two_pass and self.model is not None:
            marks = self.landmarks68(params, roi)
            roi = roi_box_from_landmarks(marks[np.isfinite(marks).all(1)])
            params = self.params_for_crop(image, roi)
        return TddfaPrediction(params62=params, roi_box=roi)

    # The stage -----------------------------------------------------------------------------------

    def regress(self, image: np.ndarray, face: Face) -> CoarseResult:
        image = check_image(image)
        if self.model is None:
            raise ModelFileError("3ddfa: a mesh needs the BFM model (option model = bfm_noneck_v3.pkl)")
        prediction = self.infer(image, face)
        params = prediction.params62.astype(np.float64)
        identity = params[N_POSE : N_POSE + N_IDENTITY]
        expression = params[N_POSE + N_IDENTITY : N_PARAMS]
        matrix, offset = camera_from_params(params, prediction.roi_box)
        shape = (self._mean + self._basis @ params[N_POSE:N_PARAMS].astype(np.float32)).reshape(-1, 3)
        vertices = shape @ matrix.T.astype(np.float32) + offset.astype(np.float32)
        scale, rotation, translation, head_angles = pose_from_params(params, prediction.roi_box)
        mesh = Mesh(
            vertices=vertices,
            triangles=self.model.triangles,
            topology=self.model.topology or f"bfm-noneck-{self.model.n_vertices}",
            uvs=self.model.uvs,
            landmark_maps=self.model.landmark_maps,
        )
        return CoarseResult(
            mesh=mesh,
            rotation=rotation,
            translation=translation,
            scale=scale,
            parameters={
                "identity": identity,
                "expression": expression,
                "yaw_pitch_roll_deg": head_angles,
                "pitch_yaw_roll_aflw_deg": aflw_pitch_yaw_roll(rotation),
                "params62": prediction.params62,
                "roi_box": prediction.roi_box,
            },
        )


def _checked_model(model: MorphableModel) -> MorphableModel:
    """The model truncated to the network's 40 + 10 components, with its fitness for 3DDFA checked."""
    where = model.name or model.topology or "the 3ddfa model"
    if model.n_identity < N_IDENTITY or model.n_expression < N_EXPRESSION:
        raise ModelFileError(
            f"{where}: 3DDFA needs at least {N_IDENTITY} identity and {N_EXPRESSION} expression components "
            f"(bfm_noneck_v3.pkl), the model has {model.n_identity} and {model.n_expression}"
        )
    if IBUG68 not in model.landmark_maps:
        raise ModelFileError(f"{where}: the model has no {IBUG68!r} landmark map (bfm_noneck_v3's keypoints)")
    extent = float(np.ptp(np.asarray(model.mean)[:, 0]))
    if not 50.0 <= extent <= 1000.0:
        raise ModelFileError(
            f"{where}: the mean face is {extent:g} units wide; 3DDFA needs the model in millimetres "
            "(bfm_noneck_v3.pkl is in micrometres: the loader must divide by 1000)"
        )
    model = model.truncated(N_IDENTITY, N_EXPRESSION)
    mean = np.asarray(model.mean, np.float64)
    tri = np.asarray(model.triangles)
    normals = np.cross(mean[tri[:, 1]] - mean[tri[:, 0]], mean[tri[:, 2]] - mean[tri[:, 0]])
    if normals[:, 2].sum() < 0:  # MorphableModel promises counter-clockwise from the front (+z normals)
        log.warning("%s: triangles are clockwise seen from the front; reversing them for the mesh", where)
        model = dataclasses.replace(model, triangles=tri[:, ::-1])
    return model


def _required_weights(options: TddfaOptions) -> Path:
    if options.weights is None:
        raise ModelFileError(
            "the 3ddfa regressor needs its network: set [options.regressor.3ddfa] weights = path to "
            "mb1_120x120.pth or mb05_120x120.pth (3DDFA_V2's weights/), or an .onnx export of one"
        )
    return options.weights


def factory(options: TddfaOptions, device: str = "cpu") -> TddfaRegressor:
    """The stage factory: loads the network, its statistics and the BFM model (required for meshes)."""
    _required_weights(options)
    if options.model is None:
        raise ModelFileError(
            "the 3ddfa regressor needs the BFM model its coefficients refer to: set "
            "[options.regressor.3ddfa] model = path to bfm_noneck_v3.pkl (from 3DDFA_V2's configs/)"
        )
    model_path = existing_file(options.model, "3DDFA BFM model, bfm_noneck_v3.pkl")
    return TddfaRegressor(options, device, model=_load_bfm(model_path))


def _load_bfm(path: Path) -> MorphableModel:
    """bfm_noneck_v3.pkl, or the .npz ``facerecon models convert`` made of it (its topology says so: the
    network's coefficients mean something only on that basis)."""
    from facerecon.facelib.morphable.formats import load_model
    from facerecon.facelib.morphable.formats.tddfa_pkl import TOPOLOGY

    if path.suffix.lower() != ".npz":
        return load_model(path, format="3ddfa")
    model = load_model(path, format="npz")
    if not model.topology.startswith(TOPOLOGY):
        raise ModelFileError(
            f"{path}: 3DDFA's coefficients refer to bfm_noneck_v3.pkl's basis; this .npz holds "
            f"{model.topology!r}, not one converted from it ({TOPOLOGY}...)"
        )
    return model


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "regressor",
        "3ddfa",
        factory,
        options=TddfaOptions,
        summary="3DDFA_V2: a MobileNet regresses pose + 40 identity + 10 expression BFM coefficients "
        "from a 120x120 crop (needs its weights and bfm_noneck_v3.pkl)",
        license_note="3DDFA_V2 code MIT; BFM-derived bases: BFM licence (non-commercial)",
        available=lambda: False,  # never chosen by "auto": it needs its weights and model configured
        mesh_units=("px",),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m facerecon.plugins.tddfa export-onnx mb05_120x120.pth mb05_120x120.onnx`` (the command
    lives in ``__main__``; imported on call so that ``python -m`` does not find it imported already)."""
    from facerecon.plugins.tddfa.__main__ import main as command

    return command(argv)
