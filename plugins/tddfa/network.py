"""3DDFA_V2's network: the MobileNet-V1, its checkpoints, and the two runners (PyTorch for ``.pth``,
onnxruntime for ``.onnx``) that turn a (N, 3, 120, 120) normalised BGR batch into (N, 62) normalised
parameters; :func:`export_onnx` converts one into the other.

torch is imported inside the functions that need it, never at module level: the ``3ddfa`` plugin (and
an ``.onnx`` network) works without PyTorch installed.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facerecon.facelib.onnx import onnx_session
from facerecon.kernel.contract.errors import ModelFileError, PluginError
from facerecon.plugins.tddfa.params import INPUT_SIZE, N_PARAMS, existing_file, short_error

if TYPE_CHECKING:
    import torch

__all__ = ["BLOCKS", "OPTIONAL_KEYS", "OnnxRunner", "TorchRunner", "build_network", "export_onnx", "load_checkpoint"]

log = logging.getLogger(__name__)

OPTIONAL_KEYS = ("fc_lm.",)
"""Checkpoint keys that may be absent: 3DDFA_V2's landmark head, which inference does not use."""

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

    path = existing_file(path, "3DDFA weights")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable PyTorch checkpoint ({short_error(exc)})") from None
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


class TorchRunner:
    """The network run by PyTorch from a ``.pth`` checkpoint (CPU, or CUDA for ``device = "cuda"``)."""

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


class OnnxRunner:
    """The network run by onnxruntime from an ``.onnx`` export (:func:`export_onnx`, or 3DDFA_V2's)."""

    def __init__(self, path: Path, device: str) -> None:
        try:
            self.session = onnx_session(path, device, warn=log, who="3ddfa")
        except ImportError:
            raise PluginError(f"{path}: running an .onnx network needs onnxruntime (pip install onnxruntime)") from None
        except Exception as exc:
            raise ModelFileError(f"{path}: not a readable ONNX model ({short_error(exc)})") from None
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
