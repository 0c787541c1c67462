"""Segmenter ``onnx-parsing``: a learned face parser (BiSeNet layout) run with onnxruntime from your ``.onnx``.

facerecon ships and downloads no weights: point ``model_path`` (or ``$FACERECON_FACE_PARSER``) at a
network you have, e.g. an ONNX export of face-parsing.PyTorch's BiSeNet trained on CelebAMask-HQ.
What the network must look like (every item configurable, see :class:`OnnxParsingOptions`):

* one input ``(N, 3, S, S)`` float32 or float16, N 1 or dynamic — an RGB crop resized to S x S (default:
  the model's own fixed size, else 512), scaled to [0, 1] and normalised per channel with ImageNet's mean
  and std;
* an output ``(N, C, h, w)`` of float class logits (any h x w: resized to the crop), or ``(N, h, w)``
  integer class indices; with several outputs (BiSeNet exports its three heads) the first is used. With
  class indices the number of classes cannot be checked: the configured names must be the network's;
* C classes in a known order, by default CelebAMask-HQ's (``label_order = "face-parsing.pytorch"`` for
  zllrunning's BiSeNet weights, or list the names in ``labels``).

Per face: a square crop ``crop_scale`` times the face box's longer side around the box centre (raised by
``crop_shift`` box heights; parts outside the image are black) is resized to S x S (area averaging when
shrinking), parsed, and the logits are resampled bilinearly back onto the crop's image pixels; the
class with the highest logit wins, and is mapped by *name* to CelebAMask-HQ's ids
(:mod:`facerecon.facelib.face_parsing`), so the result means the same as ``landmark-regions``'.
Pixels outside the crop are background. Pixel centres are at integers on both sides: image pixel x
sits at crop pixel ``(x - x0 + 0.5) * S / side - 0.5``.

Needs onnxruntime (``pip install 'facerecon[parsing]'``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerecon.facelib.face_parsing import CELEBAMASK_HQ, LABEL_IDS, LABEL_ORDERS, region_colors
from facerecon.facelib.onnx import load_failure, onnx_session
from facerecon.kernel.contract import Face, Registrar, Segmentation, hookimpl
from facerecon.kernel.contract.errors import ConfigError, InputError, ModelFileError, PluginError
from facerecon.kernel.contract.images import check_image

log = logging.getLogger(__name__)

ENV_VAR = "FACERECON_FACE_PARSER"
EXTRA_HINT = "pip install 'facerecon[parsing]'"
DEFAULT_INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
"""The network input's element types the segmenter can feed, and the numpy type fed."""
PASTE_BUDGET = 64 << 20
"""Bytes of resampled logits held at once when pasting back (larger crops go in horizontal strips)."""


@dataclass(frozen=True)
class OnnxParsingOptions:
    """Options of ``onnx-parsing`` (``[options.segmenter.onnx-parsing]``).

    model_path: the ``.onnx`` network (default: ``$FACERECON_FACE_PARSER``); required.
    input_size: side S of the square network input; default: the model's fixed input size, else 512.
    mean, std: per-channel normalisation of [0, 1] pixel values, in the network's channel order.
    bgr: the network takes BGR instead of RGB.
    label_order: the network's class order by training code: "celebamask-hq" or "face-parsing.pytorch".
    labels: the class names in the network's output order, overriding ``label_order`` (CelebAMask-HQ
        names map to its ids; other names get ids from 19 up).
    crop_scale: side of the square crop, in face-box sizes (the longer side of the detector's box).
    crop_shift: how far the crop's centre sits above the box centre, in box heights (hair is above).
    output_index: which network output holds the logits.
    threads: onnxruntime's intra-op threads (0: its default).
    """

    model_path: Path | None = None
    input_size: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    bgr: bool = False
    label_order: str = "celebamask-hq"
    labels: tuple[str, ...] | None = None
    crop_scale: float = 2.0
    crop_shift: float = 0.0
    output_index: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (one per channel)")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        if self.labels is None and self.label_order not in LABEL_ORDERS:
            raise ValueError(f"label_order must be one of {', '.join(LABEL_ORDERS)}, got {self.label_order!r}")
        if self.input_size is not None and not 16 <= self.input_size <= 4096:
            raise ValueError(f"input_size must be in 16..4096, got {self.input_size}")
        if not 0.5 <= self.crop_scale <= 8:
            raise ValueError(f"crop_scale must be in 0.5..8, got {self.crop_scale}")
        if self.output_index < 0 or self.threads < 0:
            raise ValueError("output_index and threads must be >= 0")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.labels) if self.labels is not None else LABEL_ORDERS[self.label_order]


def class_ids(names: tuple[str, ...]) -> tuple[np.ndarray, dict[int, str]]:
    """The network's class k -> label id (uint8 lookup table), and id -> name for every id it can emit:
    CelebAMask-HQ's 19 plus any other names, numbered from 19 in order of appearance."""
    table = dict(CELEBAMASK_HQ)
    lookup = np.zeros(len(names), np.uint8)
    extra = len(CELEBAMASK_HQ)
    for k, name in enumerate(names):
        if name in LABEL_IDS:
            lookup[k] = LABEL_IDS[name]
            continue
        known = next((i for i, n in table.items() if n == name), None)
        if known is None:
            if extra > 255:
                raise ConfigError("onnx-parsing: more than 256 distinct labels")
            known, extra = extra, extra + 1
            table[known] = name
        lookup[k] = known
    return lookup, table


def output_usable(rank: int, element_type: str) -> bool:
    """Whether a network output of this rank and onnxruntime element type ("tensor(float)", ...) is
    (N, C, h, w) float logits or (N, h, w) integer class indices."""
    if rank == 4:
        return element_type in ("tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)")
    return rank == 3 and element_type.startswith(("tensor(int", "tensor(uint"))


OUTPUT_LAYOUTS = "expected (N, C, h, w) float logits or (N, h, w) integer class indices"


def crop_window(box: np.ndarray, scale: float, shift: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop in whole image pixels: its top-left pixel and side length."""
    x0, y0, x1, y1 = (float(v) for v in box)
    size = max(x1 - x0, y1 - y0) + 1.0  # the box holds pixel centres x0..x1: x1 - x0 + 1 pixels
    side = max(8, round(scale * size))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - shift * (y1 - y0 + 1.0)
    return round(cx - (side - 1) / 2), round(cy - (side - 1) / 2), side


def cut(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The (side, side, 3) window of ``image`` whose top-left pixel is (x0, y0), black outside the image."""
    height, width = image.shape[:2]
    out = np.zeros((side, side, 3), np.uint8)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
    if xa < xb and ya < yb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    return out


class OnnxParser:
    """The stage: one onnxruntime session, reused for every face."""

    def __init__(self, options: OnnxParsingOptions | None = None, device: str = "cpu") -> None:
        self.options = options = options or OnnxParsingOptions()
        path = options.model_path or (Path(os.environ[ENV_VAR]).expanduser() if os.environ.get(ENV_VAR) else None)
        if path is None:
            raise ModelFileError(
                "onnx-parsing needs a face-parsing network (.onnx): set model_path in "
                f"[options.segmenter.onnx-parsing] or ${ENV_VAR}; facerecon ships none"
            )
        if not path.is_file():
            raise ModelFileError(f"onnx-parsing: model file not found: {path}")
        self.model_path = path
        try:
            self.session = onnx_session(path, device, threads=options.threads, warn=log, who="onnx-parsing")
        except ImportError:
            raise PluginError(f"onnx-parsing needs onnxruntime: {EXTRA_HINT}") from None
        except Exception as exc:
            raise ModelFileError(f"{path}: not a readable ONNX model ({load_failure(exc)})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        if len(shape) != 4 or shape[1] != 3 or options.output_index >= len(outputs):
            raise ModelFileError(
                f"{path}: not a face parser: expected one input (N, 3, S, S) and at least "
                f"{options.output_index + 1} output(s); found inputs {[list(i.shape) for i in inputs]}, "
                f"outputs {[list(o.shape) for o in outputs]}"
            )
        if inputs[0].type not in INPUT_TYPES:
            raise ModelFileError(f"{path}: the network's input is {inputs[0].type}; expected float32 or float16")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise ModelFileError(f"{path}: the network's input {shape} takes batches of {shape[0]}; expected 1 or any")
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if len(fixed) == 2 and fixed[0] != fixed[1]:
            raise ModelFileError(f"{path}: input {shape} is not square")
        if fixed and fixed[0] < 16:
            raise ModelFileError(
                f"{path}: input {shape} is {fixed[0]} pixels square (channels last?); expected (N, 3, S, S)"
            )
        if options.input_size is not None and fixed and fixed[0] != options.input_size:
            raise ModelFileError(f"{path}: the network takes {fixed[0]} pixels square, not {options.input_size}")
        self.input_size = options.input_size or (fixed[0] if fixed else DEFAULT_INPUT_SIZE)
        self.input_name = inputs[0].name
        self.input_type = INPUT_TYPES[inputs[0].type]
        self.output_name = outputs[options.output_index].name
        out_shape = list(outputs[options.output_index].shape)
        out_type = outputs[options.output_index].type
        if out_shape and not output_usable(len(out_shape), out_type):
            raise ModelFileError(f"{path}: output {options.output_index} is {out_type} {out_shape}; {OUTPUT_LAYOUTS}")
        names = options.class_names
        if len(out_shape) == 4 and isinstance(out_shape[1], int) and out_shape[1] != len(names):
            raise ModelFileError(
                f"{path}: the network outputs {out_shape[1]} classes but {len(names)} label names are configured "
                f"(label_order {options.label_order!r} / labels)"
            )
        self.lookup, self.label_names = class_ids(names)
        self.mean = np.asarray(options.mean, np.float32)
        self.std = np.asarray(options.std, np.float32)

    # -- the steps, public for tests and tools -------------------------------------------------------

    def preprocess(self, crop: np.ndarray) -> np.ndarray:
        """uint8 (side, side, 3) RGB crop -> float32 (1, 3, S, S) network input."""
        import cv2

        size = self.input_size
        shrink = crop.shape[0] > size
        resized = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if self.options.bgr:
            resized = resized[:, :, ::-1]
        normalised = (resized.astype(np.float32) / 255.0 - self.mean) / self.std
        return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=self.input_type)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The chosen output for one input: float (C, h, w) logits or int (h, w) class indices."""
        out = np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0])
        element_type = f"tensor({'float' if np.issubdtype(out.dtype, np.floating) else 'int'})"
        if not output_usable(out.ndim, element_type):
            raise ModelFileError(f"{self.model_path}: output is {out.dtype} {list(out.shape)}; {OUTPUT_LAYOUTS}")
        return out[0]

    def paste(self, output: np.ndarray, x0: int, y0: int, side: int, height: int, width: int) -> np.ndarray:
        """The network's output for the crop at (x0, y0, side) as a uint8 (height, width) label map."""
        import cv2

        labels = np.zeros((height, width), np.uint8)
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
        if xa >= xb or ya >= yb:
            return labels
        logits = output.ndim == 3
        h, w = output.shape[-2:]
        # Image pixel (x, y) -> output pixel ((x - x0 + 0.5) * w / side - 0.5, ...), pixel centres at integers.
        kx, ky = w / side, h / side
        warp = np.array([[kx, 0.0, (xa - x0 + 0.5) * kx - 0.5], [0.0, ky, (ya - y0 + 0.5) * ky - 0.5]])
        size = (xb - xa, yb - ya)
        if logits:
            if output.shape[0] != len(self.lookup):
                raise ModelFileError(
                    f"{self.model_path}: the network outputs {output.shape[0]} classes but {len(self.lookup)} "
                    "label names are configured"
                )
            planes = np.ascontiguousarray(output.transpose(1, 2, 0), dtype=np.float32)
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            classes = np.empty((size[1], size[0]), np.int64)
            rows = max(1, PASTE_BUDGET // (4 * size[0] * planes.shape[2]))  # bound the resampled logits' memory
            for top in range(0, size[1], rows):
                strip = warp.copy()
                strip[1, 2] += top * ky
                count = min(rows, size[1] - top)
                sampled = cv2.warpAffine(planes, strip, (size[0], count), flags=flags, borderMode=cv2.BORDER_REPLICATE)
                classes[top : top + count] = sampled.reshape(count, size[0], -1).argmax(axis=2)
        else:
            flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
            source = np.ascontiguousarray(output, dtype=np.int32).astype(np.float32)
            classes = cv2.warpAffine(source, warp, size, flags=flags, borderMode=cv2.BORDER_REPLICATE).astype(np.int64)
            if classes.min() < 0 or classes.max() >= len(self.lookup):
                raise ModelFileError(f"{self.model_path}: class index {int(classes.max())} has no label name")
        labels[ya:yb, xa:xb] = self.lookup[classes]
        return labels

    def segment(self, image: np.ndarray, face: Face) -> Segmentation:
        image = check_image(image)
        height, width = image.shape[:2]
        x0, y0, side = crop_window(face.box, self.options.crop_scale, self.options.crop_shift)
        if side > 4 * max(height, width) + 64:
            raise InputError(f"face box {face.box} is far larger than the {width}x{height} image")
        output = self.infer(self.preprocess(cut(image, x0, y0, side)))
        labels = self.paste(output, x0, y0, side, height, width)
        colors = region_colors(image, labels, self.label_names)
        return Segmentation(labels=labels, label_names=self.label_names, region_colors=colors)


def _configured() -> bool:
    return bool(os.environ.get(ENV_VAR))


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "segmenter",
        "onnx-parsing",
        OnnxParser,
        options=OnnxParsingOptions,
        summary="your learned face parser (BiSeNet layout, .onnx) in onnxruntime: CelebAMask-HQ's 19 classes or yours",
        license_note="the network's own licence (none shipped)",
        available=_configured,
    )
