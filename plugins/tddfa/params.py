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
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pickle
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerecon.facelib.morphable.model import MorphableModel
from facerecon.geometry.transforms import FLIP_YZ, yaw_pitch_roll
from facerecon.kernel.contract import IBUG68, CoarseResult, Face, Mesh, Registrar, hookimpl
from facerecon.kernel.contract.errors import InputError, ModelFileError, PluginError
from facerecon.kernel.contract.images import check_image

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INPUT_SIZE = 120
"""Side of the network's square input crop, pixels."""
N_POSE, N_IDENTITY, N_EXPRESSION = 12, 40, 10
N_PARAMS = N_POSE + N_IDENTITY + N_EXPRESSION
BFM_UNITS_PER_MM = 1000.0
"""3DDFA's BFM is in micrometres; a MorphableModel is in millimetres."""
PARAM_STATS_NAME = "param_mean_std_62d_120x120.pkl"
OPTIONAL_KEYS = ("fc_lm.",)
"""Checkpoint keys that may be absent: 3DDFA_V2's landmark head, which inference does not use."""


@dataclass(frozen=True)
class TddfaOptions:
    """Options of the ``3ddfa`` regressor (``[options.regressor.3ddfa]``).

    weights: the network, a 3DDFA_V2 PyTorch checkpoint (``mb05_120x120.pth``, ``mb1_120x120.pth``) or
        an ONNX export of one (``.onnx``: run with onnxruntime, no PyTorch needed).
    param_stats: ``param_mean_std_62d_120x120.pkl`` (default: beside ``weights``, or in a ``configs``
        folder beside it or beside its folder, as in 3DDFA_V2's layout).
    model: ``bfm_noneck_v3.pkl`` (40 identity + 10 expression bases the network's coefficients refer
        to); required for the mesh.
    width: MobileNet width multiplier (0.5 for mb05, 1.0 for mb1); None reads it from the checkpoint.
    two_pass: run the network a second time on a crop made from the first pass's 68 landmarks.
    """

    weights: Path
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


# -- crops ---------------------------------------------------------------------------------------------


def roi_box_from_box(box: Iterable[float]) -> np.ndarray:
    """3DDFA_V2's crop for a face box (x0, y0, x1, y1): float64 (4,) x0, y0, x1, y1 of a square."""
    left, top, right, bottom = (float(v) for v in box)
    old_size = (right - left + bottom - top) / 2
    center_x = right - (right - left) / 2
    center_y = bottom - (bottom - top) / 2 + old_size * 0.14
    size = int(old_size * 1.58)
    x0, y0 = center_x - size / 2, center_y - size / 2
    return np.array([x0, y0, x0 + size, y0 + size])


def roi_box_from_landmarks(points: np.ndarray) -> np.ndarray:
    """3DDFA_V2's crop for landmarks (K, 2+) in image pixels: a square centred on their bounding box, its
    side the diagonal of the smallest square holding that box. float64 (4,) x0, y0, x1, y1."""
    xy = np.asarray(points, np.float64)[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    center = (lo + hi) / 2
    radius = float((hi - lo).max()) / 2
    side = float(np.sqrt(2.0) * 2 * radius)
    x0, y0 = center - side / 2
    return np.array([x0, y0, x0 + side, y0 + side])


def network_input(image: np.ndarray, roi_box: Iterable[float], size: int = INPUT_SIZE) -> np.ndarray:
    """float32 (1, 3, size, size): the RGB ``image``'s crop ``roi_box`` as 3DDFA_V2 feeds it — bounds
    rounded to integers, zeros outside the image, bilinear resize, BGR, (x - 127.5) / 128."""
    import cv2

    sx, sy, ex, ey = (round(float(v)) for v in roi_box)
    height, width = image.shape[:2]
    if ex - sx < 1 or ey - sy < 1:
        raise InputError(f"3ddfa: the face crop {[sx, sy, ex, ey]} is under one pixel; is the face box valid?")
    if (ex - sx) * (ey - sy) > 25 * height * width + 1_000_000:
        raise InputError(f"3ddfa: the face crop {[sx, sy, ex, ey]} is far larger than the {width}x{height} image")
    patch = np.zeros((ey - sy, ex - sx, 3), np.uint8)
    x0, y0, x1, y1 = max(sx, 0), max(sy, 0), min(ex, width), min(ey, height)
    if x0 < x1 and y0 < y1:
        patch[y0 - sy : y1 - sy, x0 - sx : x1 - sx] = image[y0:y1, x0:x1, ::-1]  # RGB -> BGR
    resized = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    return ((resized.astype(np.float32).transpose(2, 0, 1) - 127.5) / 128.0)[None]


# -- parameters -> camera, pose ------------------------------------------------------------------------


def camera_from_params(
    params62: np.ndarray, roi_box: Iterable[float] | None = None, size: int = INPUT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """The regressed affine camera in facerecon's frames: ``(A (3, 3), b (3,))`` float64 with
    ``mesh-frame vertex = A @ model_vertex_mm + b`` (see the module docstring). ``roi_box``: the crop the
    parameters refer to (default: the 120x120 crop itself, i.e. crop pixels)."""
    p = np.asarray(params62, np.float64).reshape(-1)
    if p.size < N_POSE:
        raise ValueError(f"need at least the 12 pose parameters, got {p.size}")
    camera = p[:N_POSE].reshape(3, 4)
    sx, sy, ex, ey = (float(v) for v in (roi_box if roi_box is not None else (0, 0, size, size)))
    scale_x, scale_y = (ex - sx) / size, (ey - sy) / size
    scale_z = (scale_x + scale_y) / 2
    matrix = BFM_UNITS_PER_MM * np.diag([scale_x, -scale_y, -scale_z]) @ camera[:, :3]
    offset = np.array([(camera[0, 3] - 1.0) * scale_x + sx, (size - camera[1, 3]) * scale_y + sy, 0.0])
    return matrix, offset


def aflw_pitch_yaw_roll(rotation: np.ndarray) -> np.ndarray:
    """Pitch, yaw, roll (degrees) of a model -> mesh-frame rotation in AFLW2000-3D / 300W-LP's
    ``Pose_Para`` convention (3DDFA's training labels): in the y-up camera frame the rotation is
    ``Rx(pitch) @ Ry(yaw) @ Rz(roll)`` with their matrices ``Rx = [[1,0,0],[0,c,s],[0,-s,c]]``,
    ``Ry = [[c,0,-s],[0,1,0],[s,0,c]]``, ``Rz = [[c,s,0],[-s,c,0],[0,0,1]]``. Yaw > 0: the nose points to
    the image's left; pitch > 0: looks up; roll > 0: tilts clockwise in the image."""
    r = FLIP_YZ @ np.asarray(rotation, np.float64)  # back to the y-up camera frame
    yaw = np.arcsin(np.clip(-r[0, 2], -1.0, 1.0))
    pitch = np.arctan2(r[1, 2], r[2, 2])
    roll = np.arctan2(r[0, 1], r[0, 0])
    return np.degrees([pitch, yaw, roll])


def pose_from_params(
    params62: np.ndarray, roi_box: Iterable[float] | None = None, size: int = INPUT_SIZE
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """``(scale, R, t, yaw_pitch_roll_deg)`` of the regressed camera: R float64 (3, 3) the rotation
    nearest (SVD) to the affine camera, model frame -> mesh frame; scale in image pixels per model
    millimetre (3DDFA's image-plane scale); t (3,) image pixels (the model origin, depth 0); angles in
    facerecon's convention (:func:`facerecon.geometry.transforms.yaw_pitch_roll`). Without ``roi_box``,
    scale and t are in pixels of the 120x120 crop."""
    matrix, offset = camera_from_params(params62, roi_box, size)
    u, _, vt = np.linalg.svd(matrix)
    fix = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt)))])
    rotation = u @ fix @ vt
    scale = float(np.linalg.norm(matrix[0]) + np.linalg.norm(matrix[1])) / 2
    return scale, rotation, offset, yaw_pitch_roll(rotation)


# -- files -------------------------------------------------------------------------------------------


def _existing_file(path: Path | str, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file ({what})")
    return path


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle file cannot run code on load."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:  # renamed in numpy 2
            module = "numpy._core" + module.removeprefix("numpy.core")
        return super().find_class(module, name)


def locate_param_stats(weights: Path) -> Path:
    """The default ``param_stats`` file for ``weights``: beside it, or in ``configs/`` next to it or next
    to its folder (3DDFA_V2 keeps weights in ``weights/`` and the statistics in ``configs/``)."""
    candidates = [
        weights.parent / PARAM_STATS_NAME,
        weights.parent / "configs" / PARAM_STATS_NAME,
        weights.parent.parent / "configs" / PARAM_STATS_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        f"{PARAM_STATS_NAME} not found beside {weights} (looked in: {', '.join(str(c) for c in candidates)}); "
        "set the 3ddfa option param_stats"
    )


def load_param_stats(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` float32 (62,) from 3DDFA's ``param_mean_std_62d_120x120.pkl``."""
    path = _existing_file(path, "3DDFA parameter statistics")
    try:
        with path.open("rb") as stream:
            data = _NumpyOnlyUnpickler(stream, encoding="latin1").load()
    except Exception as exc:
        raise ModelFileError(f"{path}: not a 3DDFA parameter-statistics pickle ({_short(exc)})") from None
    if not isinstance(data, Mapping) or "mean" not in data or "std" not in data:
        found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise ModelFileError(f"{path}: expected a dict with 'mean' and 'std' arrays, found {found}")
    mean = np.asarray(data["mean"], np.float32).reshape(-1)
    std = np.asarray(data["std"], np.float32).reshape(-1)
    if mean.shape != (N_PARAMS,) or std.shape != (N_PARAMS,):
        raise ModelFileError(f"{path}: 'mean' and 'std' must have {N_PARAMS} values, got {mean.size}, {std.size}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ModelFileError(f"{path}: parameter statistics contain NaN or infinity")
    return mean, std


# -- the network -------------------------------------------------------------------------------------

BLOCKS: tuple[tuple[str, int, int, int], ...] = (
    ("dw2_1", 32, 64, 1),
    ("dw2_2", 64, 128, 2),
    ("dw3_1", 128, 128, 1),
    ("dw3_2", 128, 256, 2),
    ("dw4_1", 256, 256, 1),
    ("dw4_2", 256, 512, 2),
    ("dw5_1", 512, 512, 1),
    ("dw5_2", 512, 512, 1),
    ("dw5_3", 512, 512, 1),
    ("dw5_4", 512, 512, 1),
    ("dw5_5", 512, 512, 1),
    ("dw5_6", 512, 1024, 2),
    ("dw6", 1024, 1024, 1),
)
"""3DDFA_V2's MobileNet-V1: (name, input channels, output channels, stride) at width 1."""


@functools.lru_cache(maxsize=1)
def _network_class() -> type:
    import torch
    from torch import nn

    class DepthWiseBlock(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int) -> None:
            super().__init__()
            self.conv_dw = nn.Conv2d(inplanes, inplanes, 3, stride=stride, padding=1, groups=inplanes, bias=False)
            self.bn_dw = nn.BatchNorm2d(inplanes)
            self.conv_sep = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn_sep = nn.BatchNorm2d(planes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn_dw(self.conv_dw(x)))
            return torch.relu(self.bn_sep(self.conv_sep(x)))

    class MobileNetV1(nn.Module):
        """Input (N, 3, 120, 120) normalised BGR; output (N, 62) normalised parameters."""

        def __init__(self, width: float) -> None:
            super().__init__()
            self.width = width
            self.conv1 = nn.Conv2d(3, int(32 * width), 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(int(32 * width))
            for name, inplanes, planes, stride in BLOCKS:
                self.add_module(name, DepthWiseBlock(int(inplanes * width), int(planes * width), stride))
            self.fc_param = nn.Linear(int(1024 * width), N_PARAMS)
            self.fc_lm = nn.Linear(int(1024 * width), 136)  # 3DDFA_V2's auxiliary 68-landmark head, unused

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            for name, *_ in BLOCKS:
                x = getattr(self, name)(x)
            return self.fc_param(x.mean(dim=(2, 3)))

    return MobileNetV1


def build_network(width: float) -> torch.nn.Module:
    """3DDFA_V2's MobileNet-V1 at ``width`` (0.5: mb05, 1.0: mb1), untrained, in eval mode."""
    network = _network_class()(width)
    network.eval()
    return network


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_checkpoint(path: Path | str, width: float | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """A 3DDFA_V2 MobileNet checkpoint as ``(state_dict, width)``: ``module.`` prefixes stripped, keys and
    shapes checked against the network of that width (read from ``conv1.weight`` when None)."""
    import torch

    path = _existing_file(path, "3DDFA weights")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable PyTorch checkpoint ({_short(exc)})") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise ModelFileError(f"{path}: holds no state dict (expected {{'state_dict': {{name: tensor}}}})")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{path}: entry {key!r} of the state dict is not a tensor")
        name = str(key).removeprefix("module.")
        if name.startswith("fc."):  # 3DDFA_V2's models/mobilenet_v1.py calls the parameter head "fc"
            name = "fc_param." + name[3:]
        tensors[name] = value
    known_width = width
    if known_width is None:
        first = tensors.get("conv1.weight")
        if first is not None and first.ndim == 4 and first.shape[0] % 8 == 0:
            known_width = first.shape[0] / 32
    expected = build_network(known_width or 1.0).state_dict()  # the key names are the same at every width
    missing = sorted(k for k in expected if k not in tensors and not k.startswith(OPTIONAL_KEYS))
    unexpected = sorted(k for k in tensors if k not in expected)
    mismatched = [
        f"{k} {tuple(tensors[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in tensors and known_width is not None and tensors[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched or known_width is None:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {_listing(mismatched)}")
        if known_width is None:
            problems.append("no width: 'conv1.weight' must be (32 x width, 3, 3, 3)")
        of_width = f" of width {known_width:g}" if known_width is not None else ""
        raise ModelFileError(f"{path}: not a 3DDFA_V2 MobileNet-V1 checkpoint{of_width} ({'; '.join(problems)})")
    width = known_width
    for key, value in expected.items():  # the unused landmark head may be absent
        tensors.setdefault(key, value)
    return tensors, float(width)


class _TorchRunner:
    def __init__(self, path: Path, width: float | None, device: str) -> None:
        import torch

        state, self.width = load_checkpoint(path, width)
        self.network = build_network(self.width)
        self.network.load_state_dict(state, strict=True)
        self.device = torch.device("cuda" if device == "cuda" else "cpu")
        self.network.to(self.device)
        self.name = f"torch-{self.device.type}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.network(torch.from_numpy(batch).to(self.device))
        return out.float().cpu().numpy()


class _OnnxRunner:
    def __init__(self, path: Path, device: str) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise PluginError(f"{path}: running an .onnx network needs onnxruntime (pip install onnxruntime)") from None
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("3ddfa: onnxruntime has no CUDA provider here; running %s on the CPU", path.name)
        settings = onnxruntime.SessionOptions()
        settings.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(path), sess_options=settings, providers=providers)
        except Exception as exc:
            raise ModelFileError(f"{path}: not a readable ONNX model ({_short(exc)})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape_in = list(inputs[0].shape) if len(inputs) == 1 else []
        shape_out = list(outputs[0].shape) if outputs else []
        if len(shape_in) != 4 or shape_in[1:] != [3, INPUT_SIZE, INPUT_SIZE] or shape_out[-1:] != [N_PARAMS]:
            raise ModelFileError(
                f"{path}: not a 3DDFA network: expected one input (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) and an "
                f"output (N, {N_PARAMS}); found inputs {[list(i.shape) for i in inputs]}, outputs "
                f"{[list(o.shape) for o in outputs]}"
            )
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.name = f"onnxruntime-{self.session.get_providers()[0].removesuffix('ExecutionProvider').lower()}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], np.float32)


def export_onnx(pth_path: Path | str, onnx_path: Path | str, *, width: float | None = None) -> Path:
    """Export a 3DDFA_V2 MobileNet checkpoint to ONNX (input ``"input"`` (N, 3, 120, 120) normalised BGR,
    output ``"output"`` (N, 62) normalised parameters — the same interface as 3DDFA_V2's own export), so
    the ``3ddfa`` regressor can run it with onnxruntime alone. Returns the written path."""
    import torch

    state, width = load_checkpoint(pth_path, width)
    network = build_network(width)
    network.load_state_dict(state, strict=True)
    onnx_path = Path(onnx_path).expanduser()
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    partial = onnx_path.with_name(onnx_path.name + ".partial")
    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            network,
            (example,),
            str(partial),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )
    partial.replace(onnx_path)
    return onnx_path


# -- the stage ---------------------------------------------------------------------------------------


class TddfaRegressor:
    """The ``3ddfa`` stage: the network, its parameter statistics and (for meshes) the BFM model.

    ``model``: a MorphableModel of bfm_noneck_v3 (the first 40 identity and 10 expression components are
    the network's); without it, :meth:`infer` and :func:`pose_from_params` still give the pose, and
    :meth:`regress` raises :class:`ModelFileError`.
    """

    def __init__(self, options: TddfaOptions, device: str = "cpu", model: MorphableModel | None = None) -> None:
        self.options = options
        weights = _existing_file(options.weights, "3DDFA weights")
        stats = options.param_stats if options.param_stats is not None else locate_param_stats(weights)
        self.param_mean, self.param_std = load_param_stats(stats)
        self.runner: Callable[[np.ndarray], np.ndarray]
        if weights.suffix.lower() == ".onnx":
            self.runner = _OnnxRunner(weights, device)
        else:
            self.runner = _TorchRunner(weights, options.width, device)
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


def factory(options: TddfaOptions, device: str = "cpu") -> TddfaRegressor:
    """The stage factory: loads the network, its statistics and the BFM model (required for meshes)."""
    if options.model is None:
        raise ModelFileError(
            "the 3ddfa regressor needs the BFM model its coefficients refer to: set "
            "[options.regressor.3ddfa] model = path to bfm_noneck_v3.pkl (from 3DDFA_V2's configs/)"
        )
    model_path = _existing_file(options.model, "3DDFA BFM model, bfm_noneck_v3.pkl")
    from facerecon.facelib.morphable.formats import load_model

    return TddfaRegressor(options, device, model=load_model(model_path, format="3ddfa"))


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
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m facerecon.plugins.tddfa export-onnx mb05_120x120.pth mb05_120x120.onnx``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m facerecon.plugins.tddfa")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-onnx", help="convert a 3DDFA_V2 .pth checkpoint to .onnx")
    export.add_argument("pth", type=Path)
    export.add_argument("onnx", type=Path)
    export.add_argument("--width", type=float, default=None, help="MobileNet width (default: from the file)")
    args = parser.parse_args(argv)
    try:
        written = export_onnx(args.pth, args.onnx, width=args.width)
    except ModelFileError as exc:
        parser.exit(1, f"error: {exc}\n")
    print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
