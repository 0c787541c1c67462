"""The text of an OBJ's lines, formatted fast: ``rows`` for any printf format, ``number_lines`` for vertex,
normal and UV lines (``%.6f``-style) and ``face_lines`` for the face lines. A face mesh's ~90k numbers and
half a million indices take ~90 ms through Python's ``%`` and ~10 ms through the compiled loops here
(numba), which write the same text: a number whose rounding the loop cannot decide for sure (within a unit
in the last place of a tie) sends its lines to Python's formatting."""

from __future__ import annotations

import numpy as np

from facerecon.geometry.jit import compiled


def rows(fmt: str, values: np.ndarray) -> bytes:
    """``np.savetxt(fmt)``'s text (one ``fmt % row`` a line), formatted in one call (~3x faster), ASCII."""
    values = np.asarray(values)
    return (((fmt + "\n") * len(values)) % tuple(values.ravel().tolist())).encode("ascii")


def number_lines(prefix: str, values: np.ndarray, decimals: int) -> bytes:
    """``prefix %.{decimals}f %.{decimals}f ...`` lines, one per row of (N, C) ``values``, ASCII."""
    values = np.ascontiguousarray(values, np.float64)
    fmt = " ".join([prefix] + [f"%.{decimals}f"] * values.shape[1])
    loop = compiled(_number_loop)
    finite = bool(np.isfinite(values).all()) and (values.size == 0 or float(np.abs(values).max()) < 1e9)
    if loop is None or not finite or decimals > 9:
        return rows(fmt, values)
    width = len(prefix) + values.shape[1] * (decimals + 13) + 1  # at most this many characters a line
    buffer = np.empty(len(values) * width, np.uint8)
    length = loop(np.frombuffer(prefix.encode("ascii"), np.uint8), values, decimals, buffer)
    return rows(fmt, values) if length < 0 else buffer[:length].tobytes()


def face_lines(faces: np.ndarray, with_uvs: bool) -> bytes:
    """``f a/a/a b/b/b c/c/c`` (``with_uvs``: vertex, UV and normal indices alike) or ``f a//a b//b c//c``
    lines for (M, 3) 1-based vertex indices, ASCII."""
    faces = np.ascontiguousarray(faces, np.int64)
    if faces.size and faces.min() < 1:
        raise ValueError("OBJ indices are 1-based")
    loop = compiled(_face_loop)
    if loop is None:
        if with_uvs:
            return rows("f %d/%d/%d %d/%d/%d %d/%d/%d", np.repeat(faces, 3, axis=1))
        return rows("f %d//%d %d//%d %d//%d", np.repeat(faces, 2, axis=1))
    digits = len(str(int(faces.max()))) if faces.size else 1
    buffer = np.empty(len(faces) * (3 * (3 * digits + 3) + 2), np.uint8)  # at most this many characters
    return buffer[: loop(faces, with_uvs, buffer)].tobytes()


def _face_loop(faces, with_uvs, out):
    """Writes the lines into ``out`` (uint8), returns their length."""
    scratch = np.empty(20, np.uint8)
    position = 0
    for m in range(faces.shape[0]):
        out[position] = 102  # "f"
        position += 1
        for corner in range(3):
            out[position] = 32  # " "
            position += 1
            value = faces[m, corner]
            count = 0
            while True:  # the decimal digits, last first
                scratch[count] = 48 + value % 10
                value //= 10
                count += 1
                if value == 0:
                    break
            for repeat in range(3):  # a/a/a, or a//a
                if repeat > 0:
                    out[position] = 47  # "/"
                    position += 1
                if repeat == 1 and not with_uvs:
                    continue
                for k in range(count):
                    out[position] = scratch[count - 1 - k]
                    position += 1
        out[position] = 10  # "\n"
        position += 1
    return position


def _number_loop(prefix, values, decimals, out):
    """Writes the lines into ``out`` (uint8) and returns their length, or −1 when a value lies within an
    ulp of a rounding tie (then Python formats the array: its rounding is the exact value's)."""
    scale = 10.0**decimals
    unit = np.int64(10) ** decimals
    scratch = np.empty(24, np.uint8)
    position = 0
    for i in range(values.shape[0]):
        for k in range(prefix.shape[0]):
            out[position + k] = prefix[k]
        position += prefix.shape[0]
        for j in range(values.shape[1]):
            x = values[i, j]
            scaled = abs(x) * scale
            fraction = scaled - np.floor(scaled)
            if abs(fraction - 0.5) <= 4 * np.spacing(scaled):
                return -1
            digits = np.int64(np.rint(scaled))
            out[position] = 32  # " "
            position += 1
            if x < 0 or (x == 0 and np.signbit(x)):
                out[position] = 45  # "-": printf keeps the sign of a negative number rounded to 0
                position += 1
            whole, part = digits // unit, digits % unit
            count = 0
            while True:
                scratch[count] = 48 + whole % 10
                whole //= 10
                count += 1
                if whole == 0:
                    break
            for k in range(count):
                out[position + k] = scratch[count - 1 - k]
            position += count
            if decimals > 0:
                out[position] = 46  # "."
                position += 1
                for k in range(decimals - 1, -1, -1):
                    out[position + k] = 48 + part % 10
                    part //= 10
                position += decimals
        out[position] = 10  # "\n"
        position += 1
    return position
