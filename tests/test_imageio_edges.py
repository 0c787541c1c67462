"""`max_image_pixels` is the only pixel limit of the photo loader: Pillow's decompression-bomb check (a
warning above Image.MAX_IMAGE_PIXELS, about 89 MP, an error above twice that) neither refuses an image the
config allows nor speaks instead of it, and Pillow's global limit is left as it is for other callers."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facerecon.kernel import InputError
from facerecon.kernel.host.imageio import load_image


def png_header_only(width: int, height: int) -> bytes:
    """A greyscale PNG that declares ``width`` x ``height`` and holds a few rows: cheap to open, and a
    decoder that gets past the header says it is truncated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_an_image_above_pillows_limit_loads_when_max_pixels_allows_it(monkeypatch):
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (90, 120, 200)).save(buffer, format="PNG")
    lowered = 10_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", lowered)  # Pillow's own knob: it refuses above 20,000 px
    image = load_image(buffer.getvalue(), max_pixels=100_000)
    assert image.shape == (200, 300, 3) and np.all(image == (90, 120, 200))
    with pytest.raises(InputError, match=r"image is 300x200 = 0.06 MP, above the limit"):
        load_image(buffer.getvalue(), max_pixels=50_000)
    assert lowered == Image.MAX_IMAGE_PIXELS  # not changed behind other callers' backs


def test_a_16384_square_png_is_judged_by_max_pixels_not_by_pillow():
    """268 MP: above Pillow's default refusal (179 MP), within the side limit. Refused by our 80 MP limit in
    our words; with max_pixels 300 MP it gets past the header, to the decoder (which finds it truncated)."""
    default = Image.MAX_IMAGE_PIXELS
    assert default is not None and 2 * default < 16384 * 16384
    png = png_header_only(16384, 16384)
    with pytest.raises(InputError, match=r"16384x16384 = 268 MP, above the limit of 80 MP"):
        load_image(png, max_pixels=80_000_000)
    with pytest.raises(InputError, match="corrupt or truncated image"):
        load_image(png, max_pixels=300_000_000)
    assert default == Image.MAX_IMAGE_PIXELS
