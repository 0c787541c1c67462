"""Tiny face-parsing networks exported to ONNX by the tests themselves (no real weights exist here), whose
outputs are known functions of the input, so the labels the onnx-parsing segmenter must produce can be
computed independently."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])

# Class prototypes (RGB) in CelebAMask-HQ order: a blue-ish background, skin, hair, cloth; the other
# classes sit on far-away saturated colours that real photos rarely come near.
PROTOTYPES = np.array(
    [
        (60, 90, 200),  # 0 background
        (200, 150, 130),  # 1 skin
        (255, 0, 255),
        (0, 255, 0),
        (0, 255, 255),
        (255, 255, 0),
        (255, 0, 128),
        (128, 0, 255),
        (0, 128, 255),
        (255, 128, 0),
        (0, 255, 128),
        (128, 255, 0),
        (255, 0, 0),
        (60, 45, 30),  # 13 hair
        (0, 0, 255),
        (0, 128, 0),
        (128, 0, 0),
        (0, 0, 128),
        (200, 40, 60),  # 18 cloth
    ],
    dtype=np.float64,
)


def normalise(
    rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    return (np.asarray(rgb, np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)


def nearest_class(rgb: np.ndarray, prototypes: np.ndarray = PROTOTYPES, **norm: Sequence[float]) -> np.ndarray:
    """What the nearest-colour network predicts for (..., 3) uint8 colours: the prototype nearest in the
    normalised space (int array of class indices)."""
    x, p = normalise(rgb, **norm), normalise(prototypes, **norm)
    return np.argmin(((x[..., None, :] - p) ** 2).sum(-1), axis=-1)


def export_nearest_colour(
    path: Path,
    *,
    prototypes: np.ndarray = PROTOTYPES,
    size: int = 64,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    bgr: bool = False,
    pool: int = 1,
    heads: int = 1,
    argmax: bool = False,
    linear: np.ndarray | None = None,
    half: bool = False,
) -> Path:
    """A 1x1 convolution whose logit for class c is -|x - p_c|^2 up to a term common to all classes
    (2 p_c . x - |p_c|^2), x the normalised input pixel: it labels each pixel with its nearest prototype.

    bgr: the prototypes are given in RGB but the network reads BGR input. pool: output at 1/pool of the
    input size. heads: that many identical outputs (as BiSeNet's export has 3). argmax: output (N, h, w)
    int64 class indices instead of logits. linear: instead of prototypes, raw (C, 3) weights (bias 0).
    half: the whole network in float16 (its input and its logits).
    """
    import torch

    if linear is not None:
        weight, bias = np.asarray(linear, np.float64), np.zeros(len(linear))
    else:
        p = normalise(prototypes, mean, std)
        weight, bias = 2 * p, -(p**2).sum(1)
    if bgr:
        weight = weight[:, ::-1]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, len(weight), 1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor(weight.copy(), dtype=torch.float32)[:, :, None, None])
                self.conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.conv(x)
            if pool > 1:
                y = torch.nn.functional.avg_pool2d(y, pool)
            if argmax:
                y = y.argmax(dim=1)
            return tuple([y] * heads) if heads > 1 else y

    dtype = torch.float16 if half else torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Net().to(dtype).eval(),
            (torch.zeros(1, 3, size, size, dtype=dtype),),
            str(path),
            input_names=["input"],
            output_names=[f"out{i}" for i in range(heads)],
            dynamo=False,
        )
    return path
