"""Images <-> protobuf ``Image`` messages (part of :mod:`.convert`, which re-exports these): raw pixels, an
encoded file, or a window of an image (only the pixels a stage reads, issue 19)."""

from __future__ import annotations

import numpy as np

from facerecon.kernel.contract.errors import InputError, RecordError
from facerecon.kernel.contract.images import check_image, check_sides
from facerecon.kernel.host.imageio import load_image
from facerecon.v1 import records_pb2 as pb

# -- images ------------------------------------------------------------------------------------


def image_to_proto(
    image: np.ndarray, into: pb.Image | None = None, window: tuple[int, int, int, int] | None = None
) -> pb.Image:
    """Raw pixels: uint8 (H, W, 3) RGB (exact; no encoding cost). ``window`` = (left, top, right, bottom):
    only those pixels (an empty window: none), with the whole image's size (``Image.window``)."""
    image = check_image(image)
    message = pb.Image() if into is None else into
    if window is not None:
        left, top, right, bottom = window
        message.window.width, message.window.height = image.shape[1], image.shape[0]
        message.window.left, message.window.top = left, top
        image = image[top:bottom, left:right]
    # Filled in place: pb.Image(pixels=...) copies the pixels through the oneof slowly (~2 ms a photo).
    message.pixels.dtype = pb.DTYPE_UINT8
    message.pixels.shape.extend(image.shape)
    message.pixels.data = image.tobytes()
    return message


def encoded_image(data: bytes) -> pb.Image:
    """An image file's bytes (PNG, JPEG, ...), decoded by the server."""
    return pb.Image(encoded=bytes(data))


LIMIT_HINT = "set by the server's --max-image-mp"


def image_from_proto(message: pb.Image, *, max_pixels: int, name: str = "the request's image") -> np.ndarray:
    """uint8 (H, W, 3) RGB. The pixel count is checked against ``max_pixels`` before anything is decoded:
    from the header of an encoded file, from the shape of raw pixels. Every problem is an InputError; one
    in an encoded file names it ``name`` (the client's file name, where the request carries one)."""
    from .convert import array, dtype_name  # (convert imports this module)

    which = message.WhichOneof("content")
    if which == "encoded":
        if message.HasField("window"):  # a window travels with raw pixels only: refused, not ignored
            raise InputError("image.window is for raw pixels (image.pixels), not for an encoded file")
        return load_image(message.encoded, max_pixels=max_pixels, name=name, limit_hint=LIMIT_HINT)
    if which == "pixels":
        t = message.pixels
        shape = [int(n) for n in t.shape]
        if t.dtype != pb.DTYPE_UINT8 or len(shape) != 3 or shape[2] != 3 or min(shape) < 0:
            raise InputError(
                f"raw pixels must be DTYPE_UINT8 of shape (height, width, 3), got {dtype_name(t.dtype)} {shape}"
            )
        height, width = shape[0], shape[1]
        window = message.window if message.HasField("window") else None
        if window is not None:
            height, width = window.height, window.width
            fits = window.left >= 0 and window.top >= 0
            if not (fits and window.left + shape[1] <= width and window.top + shape[0] <= height):
                raise InputError(
                    f"image.window: {shape[1]}x{shape[0]} pixels at ({window.left}, {window.top}) do not fit "
                    f"a {width}x{height} image"
                )
        check_sides(width, height)
        if height * width > max_pixels:
            raise InputError(
                f"image is {width}x{height} = {width * height / 1e6:.3g} MP, above the server's limit of "
                f"{max_pixels / 1e6:.3g} MP ({LIMIT_HINT})"
            )
        try:
            pixels = array(t, "image.pixels")
        except RecordError as exc:
            raise InputError(str(exc)) from None
        if window is None:
            return pixels
        # The whole image, zero outside the window (np.zeros maps untouched pages lazily: no cost there).
        whole = np.zeros((height, width, 3), np.uint8)
        whole[window.top : window.top + shape[0], window.left : window.left + shape[1]] = pixels
        return whole
    raise InputError("the request carries no image (set image.encoded or image.pixels)")
