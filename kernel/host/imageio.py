"""Reading photos into the pipeline's image format: ``uint8 (H, W, 3)`` RGB, upright.

Every way a file can be unusable becomes an :class:`InputError` with a message that says which:
missing, unreadable, empty, not an image, truncated, too large, too small, a side too long. Greyscale,
16-bit, palette and RGBA images are converted (16-bit scaled to 8-bit, alpha composited over white);
EXIF orientation is applied so phone photos are upright; an animation gives its first frame.

Limits, checked from the file's header before any pixel is decoded: ``max_pixels`` (the config's
``max_image_pixels``) and :data:`MAX_SIDE` on either side (native image code such as OpenCV's ``remap``
aborts the process on a side of 32767 px or more; the limit leaves room for padding; see
:mod:`facerecon.kernel.contract.images`).
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from facerecon.kernel.contract.errors import InputError
from facerecon.kernel.contract.images import check_sides

_PHOTO_SUFFIXES = [
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".apng",
    ".bmp",
    ".dib",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".gif",
    ".avif",
    ".avifs",
    ".jp2",
    ".j2k",
    ".jpx",
    ".tga",
    ".qoi",
    ".mpo",
]
IMAGE_SUFFIXES = frozenset(s for s in _PHOTO_SUFFIXES if s in Image.registered_extensions())
"""Suffixes a folder input picks up: the photo formats this Pillow build can open."""


def load_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = 80_000_000,
    name: str = "<bytes>",
    limit_hint: str = "raise max_image_pixels in the config to allow it",
) -> np.ndarray:
    """Decode a file path or encoded bytes to ``uint8 (H, W, 3)`` RGB. Errors name the path, or ``name`` for
    bytes; one over ``max_pixels`` says how to allow it (``limit_hint``: a server names its own flag). The
    array may be read-only (Pillow's buffer, not copied): ``np.array(image)`` gives one to draw on."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise InputError(f"{name}: " + ("a folder, not an image file" if path.is_dir() else "no such file"))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
    else:
        data = bytes(source)
    if not data:
        raise InputError(f"{name}: empty file")
    try:
        opened = _open(data)
        with opened:
            width, height = opened.size
            check_sides(width, height, name)
            if width * height > max_pixels:
                raise InputError(
                    f"{name}: image is {width}x{height} = {width * height / 1e6:.3g} MP, above the limit of "
                    f"{max_pixels / 1e6:.3g} MP ({limit_hint})"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                opened.load()
            image = ImageOps.exif_transpose(opened)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{name}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from None
    return to_rgb8(image, name=name)


def _open(data: bytes) -> ImageFile.ImageFile:
    """``Image.open`` where Pillow's decompression-bomb check does not decide: the caller's ``max_pixels``
    does. Pillow warns above ``Image.MAX_IMAGE_PIXELS`` (ignored) and refuses above twice that; as its limit
    is one global for the whole process, an image it refuses is opened by its format's plugin directly, as
    ``Image.open`` does, without the check (the header only: no pixel is decoded yet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            Image.init()
            for format_id in Image.ID:
                factory, accept = Image.OPEN[format_id]
                accepted = accept is None or accept(data[:16])
                if accepted and not isinstance(accepted, str):  # a str: Pillow's warning, not this format
                    try:
                        return factory(io.BytesIO(data), "")
                    except (SyntaxError, IndexError, TypeError, struct.error):
                        continue
            raise


def to_rgb8(image: Image.Image, *, name: str = "<image>") -> np.ndarray:
    """Convert any Pillow image mode to ``uint8 (H, W, 3)`` RGB."""
    check_sides(image.width, image.height, name)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.max() <= 1.0 else 1.0
        grey = np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def fit_within(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """``image`` shrunk (area-averaged) so its longer side is at most ``max_side``; returns it and the
    factor from its pixels to the original's (1.0: returned unchanged). Pixel centres map as
    ``x_original = (x + 0.5) * factor - 0.5``."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return image, 1.0
    factor = longest / max_side
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    small = Image.fromarray(image).resize(size, Image.Resampling.BOX, reducing_gap=3.0)
    return np.asarray(small), factor


def find_images(
    inputs: list[str], suffixes: frozenset[str] | set[str] = IMAGE_SUFFIXES
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (non-recursive, files with ``suffixes``, default :data:`IMAGE_SUFFIXES`) and
    glob patterns.

    Returns the image paths in a stable order, and ``(input, reason)`` for each input that gave none
    (matched nothing, or a folder that cannot be read).
    """
    import glob

    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            try:
                matches = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
            except OSError as exc:
                problems.append((item, f"cannot read the folder ({exc.strerror or exc})"))
                continue
        elif path.exists():
            matches = [path]
        else:
            # a glob over a folder of photos and their annotations (.pts) picks up the photos
            matches = sorted(
                Path(p) for p in glob.glob(item) if Path(p).is_file() and Path(p).suffix.lower() in suffixes
            )
        if matches:
            found.extend(matches)
        else:
            problems.append((item, "no such file or no images matched"))
    unique = list(dict.fromkeys(found))
    return unique, problems
