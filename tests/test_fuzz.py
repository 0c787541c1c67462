"""Property-based fuzz tests (hypothesis; bounded, derandomized) of what facerecon accepts from outside:
``load_image`` on arbitrary bytes and on small PNG/JPEG/GIF/BMP/TIFF/WebP files that are then truncated,
bit-flipped, padded or given absurd IHDR sizes; the gRPC request decoders of ``facerecon.services.convert``
on generated, and on randomly parsed, Tensor/Image/Face/Mesh/Segmentation messages; and fuzzed Detect and
Segment calls to real servers on loopback. The contract checked: either a well-formed value comes back (a
uint8 (H, W, 3) image within the side and pixel limits; a record holding exactly what was sent), or an
InputError / RecordError is raised (DecodeError for bytes that are no message; INVALID_ARGUMENT over gRPC),
exactly when a reference check built here says the input is bad — never any other exception."""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from services_support import serving, toy_host

from facerecon.kernel.contract.errors import InputError, RecordError
from facerecon.kernel.contract.records import Face, Landmarks, Mesh, Segmentation
from facerecon.kernel.host.imageio import load_image
from facerecon.services import convert
from facerecon.services.images import LIMIT_HINT
from facerecon.services.server import Server, ServerSettings
from facerecon.v1 import records_pb2 as pb
from facerecon.v1 import stages_pb2, stages_pb2_grpc

# Expected with fuzzed input: Pillow's warnings about corrupt TIFF/EXIF metadata, and numpy's about float64
# values beyond float32 (which the records then refuse as infinite).
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]


def fuzz(examples: int) -> settings:
    """Bounded and reproducible: a fixed number of examples, derandomized, no example database."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# The limits, written down here independently of facerecon.kernel.host.imageio.
MIN_SIDE, MAX_SIDE, DEFAULT_MAX_PIXELS = 16, 16384, 80_000_000
SCHEME_POINTS = {"ibug68": 68, "mediapipe478": 478, "mediapipe468": 468}
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("u1"),
    2: np.dtype("<i4"),
    3: np.dtype("<i8"),
    4: np.dtype("<f4"),
    5: np.dtype("<f8"),
}
INTS = (pb.DTYPE_INT32, pb.DTYPE_INT64)
MAX_DIMS = convert.MAX_DIMENSIONS  # the protocol's documented limits on a Tensor's shape
MAX_EXTENT = convert.MAX_EXTENT


def refused(call, *args, allowed=(InputError, RecordError), **kwargs):
    """The exception ``call`` raised, which must be one of ``allowed``; None when it returned. Any other
    exception propagates and fails the test."""
    try:
        call(*args, **kwargs)
    except allowed as exc:
        return exc
    return None


# -- the image loader -----------------------------------------------------------------------------


def assert_loaded(image: np.ndarray, max_pixels: int) -> None:
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3
    height, width = image.shape[:2]
    assert MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE
    assert height * width <= max_pixels


def outcome(source, max_pixels: int, **naming: str) -> np.ndarray | InputError:
    """load_image's image (checked against the contract) or its InputError; anything else fails. ``naming``:
    load_image's ``name`` and ``limit_hint``."""
    try:
        image = load_image(source, max_pixels=max_pixels, **naming)
    except InputError as exc:
        return exc
    assert_loaded(image, max_pixels)
    return image


FORMAT_MODES = {
    "PNG": ("RGB", "L", "RGBA", "P", "I;16"),
    "JPEG": ("RGB", "L"),
    "GIF": ("P", "L"),
    "BMP": ("RGB", "L", "P"),
    "TIFF": ("RGB", "L", "RGBA", "P", "I;16"),
    "WEBP": ("RGB", "RGBA"),
}
EXIF_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}
SIGNATURES = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"P6\n",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
]


class Encoded:
    """A small image file made with Pillow, and what load_image must make of it (a plain class: hypothesis
    prints dataclasses field by field, pixels and all)."""

    def __init__(self, data: bytes, fmt: str, mode: str, width: int, height: int, expected, grey_16: bool) -> None:
        self.data, self.format, self.mode = data, fmt, mode
        self.width, self.height = width, height  # as decoded, after the EXIF orientation
        self.expected: np.ndarray | None = expected  # the exact uint8 (H, W, 3) result; None for lossy formats
        self.grey_16 = grey_16  # a 16-bit image: the expected values may differ by one (rounding)

    def __repr__(self) -> str:
        return f"<{self.format} {self.mode} {self.width}x{self.height}, {len(self.data)} bytes>"


def make_image(fmt: str, mode: str, width: int, height: int, seed: int, orientation: int | None) -> Encoded:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    grey_16 = False
    expected: np.ndarray | None
    if mode == "RGB":
        image, expected = Image.fromarray(rgb), rgb
    elif mode == "L":
        image, expected = Image.fromarray(rgb[:, :, 0]), np.repeat(rgb[:, :, :1], 3, axis=2)
    elif mode == "RGBA":  # alpha 0 or 255 only: composited over white, the result is exact
        alpha = np.where(rng.random((height, width)) < 0.3, 0, 255).astype(np.uint8)
        image = Image.fromarray(np.dstack([rgb, alpha]))
        expected = np.where(alpha[:, :, None] == 0, np.uint8(255), rgb)
    elif mode == "P":
        image = Image.fromarray(rgb).quantize(colors=int(rng.integers(2, 64)))
        expected = np.asarray(image.convert("RGB"))
    else:  # I;16, the full range so the peak is 65535 whatever Pillow calls the mode on reading
        values = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        values[0, 0] = 65535
        image, grey_16 = Image.fromarray(values), True
        expected = np.repeat(np.round(values / 65535.0 * 255.0).astype(np.uint8)[:, :, None], 3, axis=2)
    options: dict = {}
    if fmt == "JPEG":
        options["quality"] = 90
        expected = None
    if fmt == "WEBP":
        options["lossless"] = True
    if orientation is not None and fmt in EXIF_FORMATS:
        exif = image.getexif()
        exif[0x0112] = orientation
        options["exif"] = exif
        if orientation in ORIENT and expected is not None:
            expected = np.ascontiguousarray(ORIENT[orientation](expected))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    turned = orientation in (5, 6, 7, 8) and fmt in EXIF_FORMATS
    w, h = (height, width) if turned else (width, height)
    return Encoded(buffer.getvalue(), fmt, mode, w, h, expected, grey_16)


@st.composite
def encoded_images(draw, min_side: int = 1, max_side: int = 40) -> Encoded:
    fmt = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[fmt]))
    sides = st.integers(min_side, max_side)
    orientation = draw(st.none() | st.integers(1, 8) | st.just(9))  # 9: not an orientation (ignored)
    return make_image(fmt, mode, draw(sides), draw(sides), draw(st.integers(0, 2**16)), orientation)


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """``data`` truncated, bit-flipped, with bytes inserted, deleted or overwritten (biased to the header)."""
    out = bytearray(data)
    for op in draw(
        st.lists(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite"]), min_size=1, max_size=4)
    ):
        if not out:
            break
        where = draw(st.integers(0, min(len(out) - 1, 64)) | st.integers(0, len(out) - 1))
        if op == "truncate":
            del out[where:]
        elif op == "flip":
            out[where] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[where : where + draw(st.integers(1, 16))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\xff\xff\xff\xff", b"\0\0\0\0"]))
            out[where : where + len(chunk)] = chunk
    return bytes(out)


MAX_PIXELS = st.sampled_from([1000, 4096, 100_000, DEFAULT_MAX_PIXELS])


@fuzz(300)
@given(data=st.binary(max_size=2048) | st.tuples(st.sampled_from(SIGNATURES), st.binary(max_size=512)).map(b"".join))
def test_arbitrary_bytes_load_or_raise_input_error(data):
    result = outcome(data, DEFAULT_MAX_PIXELS)
    if not data:
        assert isinstance(result, InputError) and "empty" in str(result)


@fuzz(200)
@given(encoded=encoded_images(), max_pixels=MAX_PIXELS)
def test_valid_images_decode_exactly(encoded, max_pixels):
    result = outcome(encoded.data, max_pixels)
    w, h = encoded.width, encoded.height
    if min(w, h) < MIN_SIDE:
        assert isinstance(result, InputError) and "too small" in str(result)
    elif w * h > max_pixels:
        assert isinstance(result, InputError) and "above the limit" in str(result)
    else:
        assert isinstance(result, np.ndarray), f"{encoded!r} refused: {result}"
        assert result.shape == (h, w, 3)
        if encoded.expected is not None:
            difference = np.abs(result.astype(int) - encoded.expected.astype(int)).max()
            assert difference <= (1 if encoded.grey_16 else 0)
    # The service path decodes the same bytes to the same outcome.
    again = check_image_message(convert.encoded_image(encoded.data), max_pixels)
    assert type(again) is type(result)


@fuzz(400)
@given(st.data())
def test_mutated_images_load_or_raise_input_error(data):
    encoded = data.draw(encoded_images(min_side=12))
    mutated = data.draw(mutations(encoded.data))
    # load_image's contract (an image within the limits, or InputError), and image_from_proto the same.
    check_image_message(pb.Image(encoded=mutated), data.draw(MAX_PIXELS))


def png_with_size(width: int, height: int, fix_crc: bool) -> bytes:
    """A valid 24 x 20 RGB PNG whose IHDR claims ``width`` x ``height`` (CRC recomputed or left stale)."""
    image = np.random.default_rng(3).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    if fix_crc:
        png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def reason(error: InputError, *expected: str) -> bool:
    """Whether the error says one of ``expected``, or is Pillow's own decompression-bomb refusal (from the
    header, above twice Image.MAX_IMAGE_PIXELS: it comes before facerecon's own checks)."""
    return any(text in str(error) for text in (*expected, "too large to decode safely"))


SIDES = st.sampled_from(
    [0, 1, 15, 16, 17, 20, 24, 100, 8900, 16383, 16384, 16385, 32767, 32768, 65535, 2**31 - 1, 2**32 - 1]
) | st.integers(0, 2**32 - 1)


@fuzz(150)
@given(width=SIDES, height=SIDES, fix_crc=st.booleans(), max_pixels=MAX_PIXELS)
@example(width=32767, height=100, fix_crc=True, max_pixels=DEFAULT_MAX_PIXELS)
@example(width=100, height=32767, fix_crc=True, max_pixels=DEFAULT_MAX_PIXELS)
@example(width=8900, height=8900, fix_crc=True, max_pixels=DEFAULT_MAX_PIXELS)  # 79.2 MP: passes, then truncated
@example(width=8900, height=8900, fix_crc=True, max_pixels=4096)
@example(width=16384, height=16384, fix_crc=True, max_pixels=DEFAULT_MAX_PIXELS)
@example(width=16384, height=16384, fix_crc=True, max_pixels=300_000_000)  # Pillow's bomb check refuses it
@example(width=16385, height=16, fix_crc=True, max_pixels=DEFAULT_MAX_PIXELS)
@example(width=15, height=16, fix_crc=True, max_pixels=DEFAULT_MAX_PIXELS)
@example(width=0, height=0, fix_crc=True, max_pixels=DEFAULT_MAX_PIXELS)
@example(width=2**31 - 1, height=2**31 - 1, fix_crc=True, max_pixels=DEFAULT_MAX_PIXELS)
@example(width=16, height=16, fix_crc=True, max_pixels=DEFAULT_MAX_PIXELS)  # smaller than its data
def test_png_header_sizes_are_checked_before_decoding(width, height, fix_crc, max_pixels):
    result = outcome(png_with_size(width, height, fix_crc), max_pixels)
    if (width, height) == (24, 20):
        assert isinstance(result, np.ndarray) == (max_pixels >= 24 * 20)
    elif not fix_crc:
        assert isinstance(result, InputError)  # a broken IHDR checksum
    elif min(width, height) < MIN_SIDE:
        assert isinstance(result, InputError) and reason(result, "too small", "not an image")  # PNG forbids 0
    elif max(width, height) > MAX_SIDE:
        assert isinstance(result, InputError) and reason(result, f"sides above {MAX_SIDE} px are not supported")
    elif width * height > max_pixels:
        assert isinstance(result, InputError) and reason(result, "above the limit")
    elif isinstance(result, np.ndarray):
        # The data decoded under the new size. Pillow does this, e.g., for 24 x 21 claimed over 24 x 20 rows
        # of data (a complete zlib stream that ends early): the missing row comes back black.
        assert result.shape == (height, width, 3)
    if (width, height) == (8900, 8900) and max_pixels >= 8900 * 8900:  # allowed by the header: decoding fails
        assert isinstance(result, InputError) and "truncated" in str(result)


@pytest.mark.parametrize("fmt", sorted(FORMAT_MODES))
def test_max_pixels_is_honoured(fmt):
    encoded = make_image(fmt, FORMAT_MODES[fmt][0], 64, 64, seed=1, orientation=None)
    with pytest.raises(InputError, match="above the limit"):
        load_image(encoded.data, max_pixels=1000)
    with pytest.raises(InputError, match="above the server's limit"):  # raw pixels: from the shape
        convert.image_from_proto(convert.image_to_proto(np.zeros((64, 64, 3), np.uint8)), max_pixels=1000)
    image = load_image(encoded.data, max_pixels=64 * 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert isinstance(refused(load_image, encoded.data, max_pixels=64 * 64 - 1), InputError)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-files")


@fuzz(60)
@given(st.data())
def test_files_load_like_their_bytes(files, data):
    encoded = data.draw(encoded_images(min_side=12))
    content = data.draw(st.just(encoded.data) | mutations(encoded.data))
    path = files / f"image.{encoded.format.lower()}"
    path.write_bytes(content)
    from_file, from_bytes = outcome(path, 100_000), outcome(content, 100_000)
    if isinstance(from_bytes, InputError):
        assert isinstance(from_file, InputError)
        assert str(from_file).split(": ", 1)[1] == str(from_bytes).split(": ", 1)[1]  # the same reason
    else:
        assert isinstance(from_file, np.ndarray) and np.array_equal(from_file, from_bytes)
    assert isinstance(outcome(str(path), 100_000), type(from_file))


def test_paths_that_are_no_image_file_raise_input_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    for path, why in [
        (tmp_path / "missing.png", "no such file"),
        (tmp_path, "a folder, not an image file"),
        (tmp_path / "empty.png", "empty file"),
    ]:
        with pytest.raises(InputError, match=why):
            load_image(path)


# -- Tensors --------------------------------------------------------------------------------------


def reference_array(t: pb.Tensor, ndim: int | None = None, dtypes=None) -> np.ndarray | None:
    """What convert.array must return for ``t``; None where it must raise RecordError."""
    dtype = DTYPES.get(t.dtype)
    shape = [int(n) for n in t.shape]
    if dtype is None or (dtypes is not None and t.dtype not in dtypes) or (ndim is not None and len(shape) != ndim):
        return None
    if any(n < 0 for n in shape) or math.prod(shape) * dtype.itemsize != len(t.data):
        return None
    if len(shape) > MAX_DIMS or any(n > MAX_EXTENT for n in shape):
        return None  # beyond the protocol's shape limits, even when zero-size
    return np.frombuffer(t.data, dtype).reshape(shape)


DTYPE_CODES = (
    st.sampled_from([0, 1, 2, 3, 4, 5])
    | st.sampled_from([6, 99, -1, 2**31 - 1, -(2**31)])
    | st.integers(-(2**31), 2**31 - 1)
)
HUGE = [2**40, 2**62, 2**63 - 1]
DIMS = st.integers(0, 5) | st.sampled_from([0, -1, -(2**40), -(2**63), 3, 4, 68, *HUGE])
SHAPES = (
    st.lists(st.integers(0, 5), max_size=4)
    | st.lists(DIMS, max_size=5)
    | st.lists(st.sampled_from([0, 1, *HUGE]), min_size=2, max_size=3)  # zero elements, absurd sizes
    | st.lists(st.sampled_from([1, 1, 1, 0]), min_size=MAX_DIMS - 1, max_size=MAX_DIMS + 2)  # many dims
)
TENSOR_DTYPES = st.sampled_from([1, 2, 3, 4, 5]) | DTYPE_CODES  # mostly a valid dtype


@st.composite
def tensors(draw, dtypes=TENSOR_DTYPES, shapes=SHAPES) -> pb.Tensor:
    """Any Tensor: dtype any int32 (also outside the enum), any shape (negative, zero, huge), data of the
    right or of a random length."""
    code, shape = draw(dtypes), draw(shapes)
    needed = math.prod(shape) * DTYPES.get(code, np.dtype("u1")).itemsize if min(shape, default=0) >= 0 else -1
    kind = draw(st.sampled_from(["exact", "exact", "exact", "random"]))
    if kind == "exact" and 0 <= needed <= 2048:
        data = draw(st.binary(min_size=needed, max_size=needed))
    else:
        data = draw(st.binary(max_size=64))
    return pb.Tensor(dtype=code, shape=shape, data=data)


def raw_tensor(dtype: int, shape: list[int], data: bytes) -> pb.Tensor:
    """A Tensor with any dtype number (proto3 enums are open: unknown values are kept)."""
    return pb.Tensor(dtype=dtype, shape=shape, data=data)  # type: ignore[arg-type]


def check_array(t: pb.Tensor, ndim: int | None = None, dtypes=None) -> np.ndarray | None:
    expected = reference_array(t, ndim, dtypes)
    if expected is None:
        with pytest.raises(RecordError, match="^t: "):
            convert.array(t, "t", ndim=ndim, dtypes=dtypes)
        return None
    got = convert.array(t, "t", ndim=ndim, dtypes=dtypes)
    assert isinstance(got, np.ndarray) and not got.flags.writeable
    assert got.dtype == expected.dtype and got.shape == expected.shape and got.tobytes() == t.data
    return got


@fuzz(500)
@given(
    t=tensors(),
    ndim=st.none() | st.none() | st.integers(0, 4),
    dtypes=st.none() | st.lists(st.sampled_from([1, 2, 3, 4, 5]), min_size=1, max_size=3, unique=True),
)
def test_array_returns_exactly_the_tensor_or_raises_record_error(t, ndim, dtypes):
    check_array(t, ndim, dtypes)


def test_array_of_a_shape_at_the_protocols_limits():
    t = pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[1] * MAX_DIMS, data=b"\x07")
    assert convert.array(t, "t").shape == (1,) * MAX_DIMS
    t = pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[0, MAX_EXTENT], data=b"")
    assert convert.array(t, "t").shape == (0, MAX_EXTENT)


# Regression (a bug this module found, fixed): convert.array raises numpy's ValueError, not RecordError, for a zero-size
# tensor whose other dimensions overflow numpy's size ("array is too big; `arr.size * arr.dtype.itemsize`
# is larger than the maximum possible size"), at the reshape in services/convert.py array().
@pytest.mark.parametrize("shape", [[0, 2**62], [0, 2**40, 2**40], [2**63 - 1, 0, 2]])
def test_zero_size_tensor_with_an_overflowing_shape_is_a_record_error(shape):
    with pytest.raises(RecordError):
        convert.array(pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=shape, data=b""), "t")


# Regression (a bug this module found, fixed): more dimensions than numpy supports: ValueError ("maximum supported
# dimension for an ndarray is currently 64, found 65") from the reshape in services/convert.py array(),
# reachable wherever no ndim is given (CoarseResult.parameters, ImageMaps.maps).
def test_tensor_with_more_dimensions_than_numpy_holds_is_a_record_error():
    with pytest.raises(RecordError):
        convert.array(pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[1] * (MAX_DIMS + 1), data=b"\0"), "t")


# -- images as messages ---------------------------------------------------------------------------

PIXEL_SIDES = st.integers(16, 40) | st.sampled_from([-1, 0, 15, 16, 16384, 16385, 2**40, -(2**40)])


@st.composite
def pixel_tensors(draw) -> pb.Tensor:
    code = draw(st.just(1) | DTYPE_CODES)
    shape = draw(
        st.tuples(PIXEL_SIDES, PIXEL_SIDES, st.sampled_from([3, 3, 1, 4, 0])).map(list)
        | st.lists(PIXEL_SIDES, max_size=4)
    )
    needed = math.prod(shape) * DTYPES.get(code, np.dtype("u1")).itemsize if min(shape, default=0) >= 0 else -1
    kind = draw(st.sampled_from(["exact", "exact", "short", "random"]))
    if kind == "exact" and 0 <= needed <= 2_000_000:
        data = np.random.default_rng(needed).bytes(needed)
    elif kind == "short" and 0 < needed <= 2_000_000:
        data = bytes(needed - 1)
    else:
        data = draw(st.binary(max_size=64))
    return pb.Tensor(dtype=code, shape=shape, data=data)


def check_image_message(message: pb.Image, max_pixels: int) -> np.ndarray | InputError:
    """image_from_proto's image or InputError, checked against load_image (encoded files) or against the
    reference rules for raw pixels."""
    got = refused(convert.image_from_proto, message, max_pixels=max_pixels, allowed=(InputError,))
    if got is not None:
        assert type(got) is InputError  # not a RecordError: images are the caller's input
    which = message.WhichOneof("content")
    if which is None:
        assert got is not None and "no image" in str(got)
        return got
    if which == "encoded":
        # (a server names the bytes and its own flag for the limit)
        expected = outcome(message.encoded, max_pixels, name="the request's image", limit_hint=LIMIT_HINT)
        if isinstance(expected, InputError):
            assert got is not None and str(got) == str(expected)
            return got
        assert got is None
        image = convert.image_from_proto(message, max_pixels=max_pixels)
        assert np.array_equal(image, expected)
        return image
    t = message.pixels
    shape = list(t.shape)
    good = (
        t.dtype == pb.DTYPE_UINT8
        and len(shape) == 3
        and shape[2] == 3
        and MIN_SIDE <= shape[0] <= MAX_SIDE
        and MIN_SIDE <= shape[1] <= MAX_SIDE
        and shape[0] * shape[1] <= max_pixels
        and len(t.data) == shape[0] * shape[1] * 3
    )
    if not good:
        assert got is not None, f"raw pixels {t.dtype} {shape} with {len(t.data)} bytes were accepted"
        return got
    assert got is None, f"raw pixels {shape} refused: {got}"
    image = convert.image_from_proto(message, max_pixels=max_pixels)
    assert_loaded(image, max_pixels)
    assert image.shape == tuple(shape) and image.tobytes() == t.data
    return image


@fuzz(300)
@given(t=pixel_tensors(), max_pixels=MAX_PIXELS)
@example(t=raw_tensor(99, [20, 20, 3], bytes(1200)), max_pixels=DEFAULT_MAX_PIXELS)
@example(t=raw_tensor(-1, [20, 20, 3], bytes(1200)), max_pixels=DEFAULT_MAX_PIXELS)
@example(t=raw_tensor(1, [2**40, 2**40, 3], b""), max_pixels=DEFAULT_MAX_PIXELS)
@example(t=raw_tensor(1, [16384, 16384, 3], b""), max_pixels=DEFAULT_MAX_PIXELS)
def test_raw_pixels_are_checked(t, max_pixels):
    message = pb.Image()
    message.pixels.CopyFrom(t)
    check_image_message(message, max_pixels)


def test_an_image_message_without_content_is_an_input_error():
    with pytest.raises(InputError, match="no image"):
        convert.image_from_proto(pb.Image(), max_pixels=DEFAULT_MAX_PIXELS)
    with pytest.raises(InputError, match="empty"):
        convert.image_from_proto(pb.Image(encoded=b""), max_pixels=DEFAULT_MAX_PIXELS)


# -- Face -----------------------------------------------------------------------------------------


def float_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, poison: str = "none") -> np.ndarray:
    """Random values in [-10, 500) of ``dtype``, one of them NaN, infinite or 1e300 as ``poison`` says."""
    values = rng.uniform(-10.0, 500.0, shape)
    if dtype in ("int32", "uint8"):
        values = values.clip(0, 255)
    if poison != "none" and values.size:
        values.flat[int(rng.integers(values.size))] = {"nan": np.nan, "inf": np.inf, "huge": 1e300}[poison]
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(dtype)


def faults(draw, names: list[str]) -> set[str]:
    """Which of ``names`` to break in a message that is otherwise valid: none in about half the messages."""
    count = draw(st.sampled_from([0, 0, 0, 1, 1, 2]))
    return set(draw(st.lists(st.sampled_from(names), min_size=count, max_size=count, unique=True)))


FACE_FAULTS = [
    "no landmarks",
    "box order",
    "box nan",
    "box inf",  # accepted by the kernel (only the order is checked)
    "box shape",
    "box tensor",
    "score",
    "score nan",
    "point count",
    "point columns",
    "points nan",
    "points inf",
    "points huge",
    "points tensor",
    "points unset",
    "visibility length",
    "visibility tensor",
    "pose shape",
    "pose tensor",
]
FLOATS = st.sampled_from(["float32", "float64"])
SCHEMES = [("ibug68", 68), ("mediapipe478", 478), ("mediapipe468", 468), ("other", 5), ("other", 0), ("", 1)]
WRONG_COUNT = {"ibug68": 67, "mediapipe478": 468, "mediapipe468": 478, "other": 3, "": 2}


@st.composite
def face_messages(draw) -> pb.Face:
    """A Face message: valid, or with one or two faults (a wrong field, or any Tensor in its place)."""
    broken = faults(draw, FACE_FAULTS)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    message = pb.Face(score=draw(st.floats(0, 1)))
    x0, y0 = draw(st.floats(-1e4, 1e4)), draw(st.floats(-1e4, 1e4))
    box = np.array([x0, y0, x0 + draw(st.floats(1, 600)), y0 + draw(st.floats(1, 600))])
    if "box order" in broken:
        box[[0, 2]] = box[[2, 0]]
    for fault, value in (("box nan", np.nan), ("box inf", np.inf)):
        if fault in broken:
            box[draw(st.integers(2, 3))] = value
    if "box shape" in broken:
        box = np.append(box, 1.0)
    message.box.CopyFrom(draw(tensors()) if "box tensor" in broken else convert.tensor(box.astype(draw(FLOATS))))
    if "score" in broken:
        message.score = draw(st.sampled_from([-0.01, 1.01, 1e9, -np.inf, np.inf]))
    if "score nan" in broken:
        message.score = np.nan
    if "no landmarks" not in broken:
        marks = message.landmarks
        marks.scheme, k = draw(st.sampled_from(SCHEMES))
        if "point count" in broken:
            k = WRONG_COUNT[marks.scheme]
        cols = draw(st.sampled_from([1, 4])) if "point columns" in broken else draw(st.sampled_from([3, 3, 2]))
        dtype = draw(st.sampled_from(["float32", "float32", "float64", "int32", "uint8"]))
        poison = next((f.split()[1] for f in ("points nan", "points inf", "points huge") if f in broken), "none")
        if poison != "none":
            dtype = "float64"
        if "points tensor" in broken:
            marks.points.CopyFrom(draw(tensors()))
        elif "points unset" not in broken:
            marks.points.CopyFrom(convert.tensor(float_array(rng, (k, cols), dtype, poison)))
        if "visibility tensor" in broken:
            marks.visibility.CopyFrom(draw(tensors()))
        elif "visibility length" in broken:
            marks.visibility.CopyFrom(convert.tensor(rng.random(k + 1).astype(np.float32)))
        elif draw(st.booleans()):
            marks.visibility.CopyFrom(convert.tensor(rng.random(k).astype(draw(FLOATS))))
    if "pose tensor" in broken:
        message.head_pose.CopyFrom(draw(tensors()))
    elif "pose shape" in broken:
        message.head_pose.CopyFrom(convert.tensor(rng.random(draw(st.sampled_from([(3, 3), (4, 5), (16, 1)])))))
    elif draw(st.booleans()):
        message.head_pose.CopyFrom(convert.tensor(float_array(rng, (4, 4), draw(FLOATS))))
    for name, value in draw(st.lists(st.tuples(st.text(max_size=8), st.floats(allow_nan=False)), max_size=3)):
        message.attributes.add(name=name, value=value)
    return message


def as_float32(array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(np.float32)


def reference_face(message: pb.Face) -> dict | None:
    """The fields face_from_proto must return for ``message``; None where it must raise RecordError."""
    if not message.HasField("landmarks"):
        return None
    marks = message.landmarks
    box = reference_array(message.box, 1)
    points = reference_array(marks.points, 2)
    visibility = reference_array(marks.visibility, 1) if marks.HasField("visibility") else None
    pose = reference_array(message.head_pose, 2) if message.HasField("head_pose") else None
    if box is None or points is None:
        return None
    if (marks.HasField("visibility") and visibility is None) or (message.HasField("head_pose") and pose is None):
        return None
    box = as_float32(box)
    if box.shape != (4,) or not np.isfinite(box).all() or not (box[0] < box[2] and box[1] < box[3]):
        return None
    if not 0.0 <= message.score <= 1.0:
        return None
    points = as_float32(points)
    if points.shape[1] == 2:
        points = np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1)
    if points.shape[1] != 3 or not np.isfinite(points).all():
        return None
    if marks.scheme in SCHEME_POINTS and len(points) != SCHEME_POINTS[marks.scheme]:
        return None
    if visibility is not None and visibility.shape != (len(points),):
        return None
    if pose is not None and (pose.shape != (4, 4) or not np.isfinite(as_float32(pose)).all()):
        return None
    return {
        "box": box,
        "points": points,
        "visibility": None if visibility is None else as_float32(visibility),
        "head_pose": None if pose is None else as_float32(pose),
        "attributes": {a.name: a.value for a in message.attributes},
    }


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def check_face(message: pb.Face) -> Face | None:
    expected = reference_face(message)
    if expected is None:
        with pytest.raises(RecordError):
            convert.face_from_proto(message)
        return None
    face = convert.face_from_proto(message)
    assert isinstance(face, Face)
    assert same(face.box, expected["box"]) and face.score == message.score
    assert face.landmarks.scheme == message.landmarks.scheme and same(face.landmarks.points, expected["points"])
    assert same(face.landmarks.visibility, expected["visibility"]) and same(face.head_pose, expected["head_pose"])
    assert list(face.attributes) == list(expected["attributes"])
    assert same(np.array(list(face.attributes.values())), np.array(list(expected["attributes"].values())))
    assert not face.box.flags.writeable and not face.landmarks.points.flags.writeable
    return face


@fuzz(500)
@given(message=face_messages())
def test_face_decodes_exactly_or_raises_record_error(message):
    check_face(message)


@pytest.mark.parametrize(
    ("scheme", "count", "ok"),
    [
        ("ibug68", 68, True),
        ("ibug68", 478, False),
        ("mediapipe478", 478, True),
        ("mediapipe478", 468, False),
        ("mediapipe468", 468, True),
        ("mediapipe468", 478, False),
        ("other", 3, True),
    ],
)
def test_well_known_schemes_need_their_point_count(scheme, count, ok):
    message = pb.Face(box=convert.tensor(np.array([0, 0, 10, 10], np.float32)), score=0.5)
    message.landmarks.scheme = scheme
    message.landmarks.points.CopyFrom(convert.tensor(np.ones((count, 3), np.float32)))
    if ok:
        assert len(convert.face_from_proto(message).landmarks.points) == count
    else:
        with pytest.raises(RecordError, match=f"must be {SCHEME_POINTS[scheme]} points, got {count}"):
            convert.face_from_proto(message)


# -- Mesh -----------------------------------------------------------------------------------------

MESH_FAULTS = [
    "vertices nan",
    "vertices inf",
    "vertices huge",
    "vertex columns",
    "vertices tensor",
    "triangle past the end",
    "triangle negative",
    "triangle past 32 bits",  # int64 indices that wrap to valid int32 ones
    "triangles float",
    "triangle columns",
    "triangles tensor",
    "uvs long",
    "uvs wide",
    "uvs tensor",
    "map twice",
    "map id past the end",
    "map id negative",
    "map id past 32 bits",
    "map weights",
    "map weights nan",
    "map weights shape",
    "map ids float",
    "units",
    "mm without camera",
    "camera shape",
    "camera tensor",
]


@st.composite
def mesh_messages(draw) -> pb.Mesh:
    """A Mesh message: valid, or with one or two faults (a wrong field, or any Tensor in its place)."""
    broken = faults(draw, MESH_FAULTS)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n = draw(st.integers(1, 6) | st.just(0))
    message = pb.Mesh(topology=draw(st.text(max_size=6)))
    poison = next((f.split()[1] for f in ("vertices nan", "vertices inf", "vertices huge") if f in broken), "none")
    dtype = "float64" if poison != "none" else draw(st.sampled_from(["float32", "float32", "float64", "int32"]))
    vertices = float_array(rng, (n, 2 if "vertex columns" in broken else 3), dtype, poison)
    message.vertices.CopyFrom(draw(tensors()) if "vertices tensor" in broken else convert.tensor(vertices))

    def indices(rows: int, cols: int, prefix: str, int64: bool) -> np.ndarray:
        values = rng.integers(0, max(n, 1), (rows, cols)).astype(np.int64 if int64 else np.int32)
        if values.size:
            at = int(rng.integers(values.size))
            if f"{prefix} past the end" in broken:
                values.flat[at] = n + int(rng.integers(0, 3))
            if f"{prefix} negative" in broken:
                values.flat[at] = -1 - int(rng.integers(0, 3))
            if f"{prefix} past 32 bits" in broken:
                values = values.astype(np.int64)
                values.flat[at] = int(values.flat[at]) + 2**32
        return values

    triangle_faults = any(f.startswith("triangle ") for f in broken)
    rows = draw(st.integers(1, 4)) if triangle_faults else draw(st.integers(0, 4)) if n else 0
    triangles = indices(rows, 2 if "triangle columns" in broken else 3, "triangle", draw(st.booleans()))
    if "triangles float" in broken:
        triangles = triangles.astype(np.float32)
    message.triangles.CopyFrom(draw(tensors()) if "triangles tensor" in broken else convert.tensor(triangles))
    if "uvs tensor" in broken:
        message.uvs.CopyFrom(draw(tensors()))
    elif "uvs long" in broken or "uvs wide" in broken or draw(st.booleans()):
        shape = (n + 1, 2) if "uvs long" in broken else (n, 3) if "uvs wide" in broken else (n, 2)
        message.uvs.CopyFrom(convert.tensor(rng.random(shape).astype(draw(FLOATS))))
    schemes = draw(st.lists(st.sampled_from(["ibug68", "five", "mediapipe478"]), max_size=2, unique=True)) if n else []
    if "map twice" in broken:
        schemes = ["ibug68", "ibug68"]
    map_faults = {f for f in broken if f.startswith("map ") and f != "map twice"}
    if map_faults and not schemes:
        schemes = ["ibug68"]
    for scheme in schemes:
        k = draw(st.integers(1, 3) if map_faults else st.integers(0, 3))
        ids = indices(k, 3, "map id", draw(st.booleans()))
        if "map ids float" in broken:
            ids = ids.astype(np.float32)
        weights = rng.random((k, 3)).astype(np.float32) + np.float32(0.01)
        weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        if k and draw(st.booleans()):
            weights[0] = 0  # a landmark that is not on this mesh
        if "map weights" in broken:
            weights[-1] *= 2
        if "map weights nan" in broken:
            weights[-1, 0] = np.nan
        if "map weights shape" in broken:
            weights = weights[:, :2]
        message.landmark_maps.add(scheme=scheme, vertex_ids=convert.tensor(ids), weights=convert.tensor(weights))
    units = draw(st.sampled_from(["", "px", "mm"]))
    if "units" in broken:
        units = draw(st.sampled_from(["cm", "PX", "pixels", " px"]))
    message.units = units
    if "camera tensor" in broken:
        message.camera_matrix.CopyFrom(draw(tensors()))
    elif "camera shape" in broken:
        message.camera_matrix.CopyFrom(convert.tensor(rng.random((2, 3))))
    elif (units == "mm" and "mm without camera" not in broken) or draw(st.booleans()):
        message.camera_matrix.CopyFrom(convert.tensor(rng.random((3, 3)).astype(draw(FLOATS))))
    if "mm without camera" in broken:
        message.units = "mm"
        message.ClearField("camera_matrix")
    return message


def reference_mesh(message: pb.Mesh) -> dict | None:
    """The fields mesh_from_proto must return for ``message``; None where it must raise RecordError."""
    vertices = reference_array(message.vertices, 2)
    triangles = reference_array(message.triangles, 2, INTS)
    if vertices is None or triangles is None:
        return None
    vertices = as_float32(vertices)
    n = len(vertices)
    if vertices.shape[1] != 3 or not np.isfinite(vertices).all() or triangles.shape[1] != 3:
        return None
    if triangles.size and not (triangles.min() >= 0 and triangles.max() < n):
        return None  # every index, as sent, must point into the mesh (no wrapping to 32 bits)
    uvs = None
    if message.HasField("uvs"):
        uvs = reference_array(message.uvs, 2)
        if uvs is None or uvs.shape != (n, 2):
            return None
    maps = {}
    for m in message.landmark_maps:
        ids = reference_array(m.vertex_ids, 2, INTS)
        weights = reference_array(m.weights, 2)
        if m.scheme in maps or ids is None or weights is None or ids.shape[1:] != (3,) or weights.shape != ids.shape:
            return None
        if ids.size and not (ids.min() >= 0 and ids.max() < n):
            return None  # as for triangles: ids as sent, into the mesh
        if n == 0:
            return None  # any landmark map on an empty mesh points past it
        w = as_float32(weights)
        sums = w.sum(axis=1)
        if not np.all((np.abs(sums - 1) < 1e-3) | (np.abs(w).sum(axis=1) == 0)):
            return None
        maps[m.scheme] = (ids, w)
    units = message.units or "px"
    if units not in ("px", "mm"):
        return None
    camera = None
    if message.HasField("camera_matrix"):
        camera = reference_array(message.camera_matrix, 2)
        if camera is None or camera.shape != (3, 3):
            return None
    elif units == "mm":
        return None
    return {
        "vertices": vertices,
        "triangles": triangles,
        "uvs": None if uvs is None else as_float32(uvs),
        "maps": maps,
        "units": units,
        "camera": None if camera is None else as_float32(camera),
    }


def check_mesh(message: pb.Mesh) -> Mesh | None:
    expected = reference_mesh(message)
    if expected is None:
        with pytest.raises(RecordError):
            convert.mesh_from_proto(message)
        return None
    mesh = convert.mesh_from_proto(message)
    assert isinstance(mesh, Mesh) and mesh.topology == message.topology and mesh.units == expected["units"]
    assert same(mesh.vertices, expected["vertices"]) and mesh.triangles.dtype == np.int32
    assert np.array_equal(mesh.triangles, expected["triangles"])  # the indices as sent
    assert same(mesh.uvs, expected["uvs"]) and same(mesh.camera_matrix, expected["camera"])
    assert list(mesh.landmark_maps) == list(expected["maps"])
    for scheme, (ids, weights) in expected["maps"].items():
        lmap = mesh.landmark_maps[scheme]
        assert lmap.scheme == scheme and np.array_equal(lmap.vertex_ids, ids) and same(lmap.weights, weights)
    return mesh


@fuzz(500)
@given(message=mesh_messages())
def test_mesh_decodes_exactly_or_raises_record_error(message):
    check_mesh(message)


def small_mesh(triangles: np.ndarray, ids: np.ndarray | None = None) -> pb.Mesh:
    message = pb.Mesh(topology="t", vertices=convert.tensor(np.eye(3, dtype=np.float32)))
    message.triangles.CopyFrom(convert.tensor(triangles))
    if ids is not None:
        lmap = message.landmark_maps.add(scheme="ibug68", vertex_ids=convert.tensor(ids))
        lmap.weights.CopyFrom(convert.tensor(np.array([[1, 0, 0]], np.float32)))
    return message


# Regression (a bug this module found, fixed): int64 triangle indices are cast to int32 without a range check
# (kernel/contract/records.py Mesh.__post_init__: np.asarray(self.triangles, dtype=np.int32)), so 2**32 + 2 wraps to
# 2 and passes the "triangle indices out of range" check: the decoder returns a mesh that is not the one sent.
def test_int64_triangle_indices_past_32_bits_are_refused():
    with pytest.raises(RecordError):
        convert.mesh_from_proto(small_mesh(np.array([[0, 1, 2**32 + 2]], np.int64)))


# Regression (a bug this module found, fixed): landmark-map vertex ids are only checked against the top of the range
# (kernel/contract/records.py Mesh.__post_init__: lmap.vertex_ids.max(initial=0) < len(vertices)); a negative id is
# accepted, and LandmarkMap.locate then silently reads vertices[-1]. int64 ids past 32 bits wrap the same way.
@pytest.mark.parametrize("ids", [[[-1, 0, 0]], [[2**32, 0, 0]]])
def test_landmark_map_ids_outside_the_mesh_are_refused(ids):
    with pytest.raises(RecordError):
        convert.mesh_from_proto(small_mesh(np.array([[0, 1, 2]], np.int32), np.array(ids, np.int64)))


def test_mesh_errors_name_their_problem():
    with pytest.raises(RecordError, match="out of range"):
        convert.mesh_from_proto(small_mesh(np.array([[0, 1, 3]], np.int32)))
    with pytest.raises(RecordError, match="points past the mesh"):
        convert.mesh_from_proto(small_mesh(np.array([[0, 1, 2]], np.int32), np.array([[3, 0, 0]], np.int32)))
    nan = small_mesh(np.array([[0, 1, 2]], np.int32))
    nan.vertices.CopyFrom(convert.tensor(np.array([[0, 0, 0], [1, np.nan, 0], [0, 1, 0]], np.float32)))
    with pytest.raises(RecordError, match="NaN"):
        convert.mesh_from_proto(nan)


# -- Segmentation ---------------------------------------------------------------------------------


@st.composite
def segmentation_messages(draw) -> pb.Segmentation:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    message = pb.Segmentation()
    kind = draw(st.sampled_from(["uint8", "uint8", "uint8", "int32", "1-d", "random"]))
    shape = (draw(st.integers(0, 20)), draw(st.integers(0, 20)))
    if kind == "random":
        message.labels.CopyFrom(draw(tensors()))
    else:
        labels = rng.integers(0, 19, shape).astype(np.int32 if kind == "int32" else np.uint8)
        message.labels.CopyFrom(convert.tensor(labels.ravel() if kind == "1-d" else labels))
    for label, name in draw(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.text(max_size=8)), max_size=4)):
        message.label_names.add(id=label, name=name)
    colour = st.floats(width=32) | st.floats(0, 1, width=32)
    for name, rgb in draw(
        st.lists(
            st.tuples(
                st.text(max_size=6),
                st.lists(colour, min_size=3, max_size=3) | st.lists(colour, min_size=3, max_size=3) | st.lists(colour),
            ),
            max_size=3,
        )
    ):
        message.region_colors.add(name=name, rgb=rgb)
    return message


def check_segmentation(message: pb.Segmentation) -> Segmentation | None:
    labels = reference_array(message.labels, 2, (pb.DTYPE_UINT8,))
    rgb = [np.array(c.rgb, np.float32) for c in message.region_colors]
    outside = any(len(c) == 3 and not (np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1) for c in rgb)
    if labels is None or any(len(c) != 3 for c in rgb) or outside:  # (colours are RGB in [0, 1])
        with pytest.raises(RecordError):
            convert.segmentation_from_proto(message)
        return None
    seg = convert.segmentation_from_proto(message)
    assert isinstance(seg, Segmentation) and same(seg.labels, labels)
    assert dict(seg.label_names) == {label.id: label.name for label in message.label_names}
    colours = {c.name: np.array(c.rgb, np.float32) for c in message.region_colors}
    assert list(seg.region_colors) == list(colours)
    assert all(same(seg.region_colors[name], rgb) for name, rgb in colours.items())
    return seg


@fuzz(300)
@given(message=segmentation_messages())
def test_segmentation_decodes_exactly_or_raises_record_error(message):
    check_segmentation(message)


# -- bytes that may not be a message at all ---------------------------------------------------------


def parsed(kind: type, data: bytes):
    """``kind`` parsed from ``data``, or None for a DecodeError (the only error protobuf may raise)."""
    message = kind()
    try:
        message.ParseFromString(data)
    except DecodeError:
        return None
    return message


def serialized(strategy) -> st.SearchStrategy[bytes]:
    """Random bytes, or a generated message's bytes mutated."""
    valid = strategy.map(lambda m: m.SerializeToString())
    return st.binary(max_size=512) | valid | valid.flatmap(mutations)


@fuzz(300)
@given(data=serialized(tensors()), ndim=st.none() | st.integers(0, 3))
def test_tensor_from_bytes(data, ndim):
    t = parsed(pb.Tensor, data)
    if t is not None:
        check_array(t, ndim)


@fuzz(200)
@given(
    data=serialized(
        pixel_tensors().map(lambda t: pb.Image(pixels=t)) | encoded_images().map(lambda e: pb.Image(encoded=e.data))
    )
)
def test_image_from_bytes(data):
    message = parsed(pb.Image, data)
    if message is not None:
        check_image_message(message, 100_000)


@fuzz(300)
@given(data=serialized(face_messages()))
def test_face_from_bytes(data):
    message = parsed(pb.Face, data)
    if message is not None:
        check_face(message)


@fuzz(300)
@given(data=serialized(mesh_messages()))
def test_mesh_from_bytes(data):
    message = parsed(pb.Mesh, data)
    if message is not None:
        check_mesh(message)


@fuzz(200)
@given(data=serialized(segmentation_messages()))
def test_segmentation_from_bytes(data):
    message = parsed(pb.Segmentation, data)
    if message is not None:
        check_segmentation(message)


# -- through real servers on loopback --------------------------------------------------------------

SERVER_PIXELS = 100_000


@pytest.fixture(scope="module")
def stubs():
    """A mediapipe detector and the toy segmenter, served on 127.0.0.1, with a 0.1 MP image limit."""
    host = toy_host()
    settings_ = ServerSettings(port=0, max_image_pixels=SERVER_PIXELS)
    detector = Server.for_stage("detector", "mediapipe", host=host, device="cpu", settings=settings_)
    segmenter = Server.for_stage("segmenter", "toy-seg", host=host, device="cpu", settings=settings_)
    with (
        serving(detector) as d,
        serving(segmenter) as s,
        grpc.insecure_channel(d) as dc,
        grpc.insecure_channel(s) as sc,
    ):
        yield stages_pb2_grpc.DetectorStub(dc), stages_pb2_grpc.SegmenterStub(sc)


@st.composite
def image_messages(draw) -> pb.Image:
    if draw(st.booleans()):
        message = pb.Image()
        message.pixels.CopyFrom(draw(pixel_tensors()))
        return message
    encoded = draw(encoded_images(min_side=12))
    return pb.Image(encoded=draw(st.just(encoded.data) | mutations(encoded.data)))


def call(method, request):
    """(status code, details, response) of a unary call."""
    try:
        return grpc.StatusCode.OK, "", method(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), None


def blank_image(message: pb.Image) -> None:
    convert.image_to_proto(np.full((48, 64, 3), 128, np.uint8), message)


def test_fuzzed_detect_requests_get_ok_or_invalid_argument(stubs):
    detector, _ = stubs
    seen: Counter[grpc.StatusCode] = Counter()

    @fuzz(25)
    @given(image=image_messages(), plugin=st.sampled_from(["", "", "mediapipe", "dlib"]))
    def one(image, plugin):
        request = stages_pb2.DetectRequest(image=image, plugin=plugin)
        code, details, response = call(detector.Detect, request)
        seen[code] += 1
        if plugin == "dlib":
            assert code == grpc.StatusCode.NOT_FOUND
            return
        expected = check_image_message(request.image, SERVER_PIXELS)
        if isinstance(expected, InputError):
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, str(expected))
        else:
            assert code == grpc.StatusCode.OK, details
            assert all(isinstance(convert.face_from_proto(f), Face) for f in response.faces)

    one()
    assert set(seen) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    assert seen[grpc.StatusCode.OK] >= 3 and seen[grpc.StatusCode.INVALID_ARGUMENT] >= 3  # both paths ran
    good = stages_pb2.DetectRequest()
    blank_image(good.image)
    assert call(detector.Detect, good)[0] == grpc.StatusCode.OK  # still serving
    assert detector.Info(stages_pb2.InfoRequest(), timeout=10).plugin == "mediapipe"


def test_fuzzed_segment_requests_get_ok_or_invalid_argument(stubs):
    _, segmenter = stubs
    seen: Counter[grpc.StatusCode] = Counter()

    @fuzz(30)
    @given(face=st.none() | face_messages(), image=st.none() | image_messages())
    def one(face, image):
        request = stages_pb2.SegmentRequest(face=face, image=image)
        if image is None:
            blank_image(request.image)
        expected_face = reference_face(request.face) if face is not None else None
        # The toy segmenter (a test helper) rounds the box to ints; the kernel accepts an infinite box.
        if expected_face is not None and not np.isfinite(expected_face["box"]).all():
            return
        code, details, response = call(segmenter.Segment, request)
        seen[code] += 1
        if face is None:
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "the request carries no face")
            return
        if expected_face is None:
            error = refused(convert.face_from_proto, request.face)
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, str(error))
            return
        image_or_error = check_image_message(request.image, SERVER_PIXELS)
        if isinstance(image_or_error, InputError):
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, str(image_or_error))
        else:
            assert code == grpc.StatusCode.OK, details
            seg = check_segmentation(response.segmentation)
            assert seg is not None and seg.labels.shape == image_or_error.shape[:2]
            assert set(np.unique(seg.labels)) <= {0, 1} and dict(seg.label_names) == {0: "background", 1: "skin"}

    one()
    assert set(seen) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    assert seen[grpc.StatusCode.OK] >= 3 and seen[grpc.StatusCode.INVALID_ARGUMENT] >= 3  # both paths ran
    good = stages_pb2.SegmentRequest(face=convert.face_to_proto(Face([4, 4, 20, 30], 0.9, _marks())))
    blank_image(good.image)
    code, details, response = call(segmenter.Segment, good)  # still serving
    assert code == grpc.StatusCode.OK, details
    labels = convert.segmentation_from_proto(response.segmentation).labels
    assert labels.shape == (48, 64) and labels.sum() == 26 * 16  # the box, rows 4..29 and columns 4..19


def _marks() -> Landmarks:
    return Landmarks("other", np.ones((3, 3)))


# Regression (a bug this module found, fixed): a face whose head_pose is a zero-size tensor with an
# overflowing shape made the decoder raise numpy's ValueError (see
# test_zero_size_tensor_with_an_overflowing_shape_is_a_record_error), which the server answered INTERNAL.
def test_an_unrepresentable_face_tensor_is_invalid_argument_not_internal(stubs):
    _, segmenter = stubs
    request = stages_pb2.SegmentRequest(face=convert.face_to_proto(Face([4, 4, 20, 30], 0.9, _marks())))
    request.face.head_pose.CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[0, 2**62], data=b""))
    blank_image(request.image)
    assert call(segmenter.Segment, request)[0] == grpc.StatusCode.INVALID_ARGUMENT
