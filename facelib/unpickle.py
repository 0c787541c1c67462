"""The one pickle reader for user-supplied model files: numpy arrays in plain containers, nothing that runs code.

A pickle is a program: every global it names is imported and called while loading. Model files come
from users (3DDFA_V2's ``bfm_noneck_v3.pkl``, ``tri.pkl``, ``param_mean_std_62d_120x120.pkl``), so
:class:`SafeUnpickler` resolves only the globals in :data:`ALLOWED` and refuses every other one with
``pickle.UnpicklingError("refusing to load <module>.<name> (only numpy arrays are allowed)")``.
dict, list, tuple, str, bytes, int, float, bool and None need no global (they are pickle opcodes).

The allow-list, and why each entry is needed:

* ``numpy.ndarray``, ``numpy._core.multiarray._reconstruct`` — how ``ndarray.__reduce__`` pickles an
  array at protocols 2-4: ``_reconstruct(ndarray, (0,), b"b")`` makes an empty array, ``__setstate__``
  fills it;
* ``numpy.dtype`` — every array's (and scalar's) dtype travels as ``dtype("<f4", ...)``;
* ``numpy._core.multiarray.scalar`` — a numpy scalar (``np.float32(1.5)``, ``np.int64(3)``);
* ``numpy._core.numeric._frombuffer`` — how numpy pickles a contiguous array at protocol 5 (Python
  3.14's default): ``_frombuffer(buffer, dtype, shape, order)``;
* ``_codecs.encode`` — how Python 3 pickles ``bytes`` at protocol 2 (no bytes opcode there):
  ``_codecs.encode(text, "latin1")``; an array's raw data in such a file needs it. It only encodes a
  string;
* ``collections.OrderedDict`` — state dicts and configs saved as ordered dicts.

Files written by numpy 1.x name ``numpy.core.*``; numpy 2 renamed the package to ``numpy._core`` (the
old name is a deprecated alias), so both spellings are accepted and resolved to the current one. No
``builtins`` entry is needed, and none is allowed (``builtins.eval``, ``builtins.getattr``, ... are
exactly how a malicious pickle runs code).
"""

from __future__ import annotations

import io
import pickle
from typing import IO, Any

import numpy as np

__all__ = ["ALLOWED", "SafeUnpickler", "safe_load"]

ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
)
"""(module, name) of every global a pickle may name, in numpy 2's spelling (see the module docstring)."""

_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def _current_module(module: str) -> str:
    """numpy 1.x's ``numpy.core.*`` as ``numpy._core.*`` (the allow-list's spelling)."""
    if module == "numpy.core" or module.startswith("numpy.core."):
        return "numpy._core" + module.removeprefix("numpy.core")
    return module


class SafeUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and scalars inside plain containers; refuses every other global
    (:data:`ALLOWED`), so a model file cannot run code on load."""

    def find_class(self, module: str, name: str) -> Any:
        canonical = _current_module(module)
        if (canonical, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        if not _NUMPY_2 and canonical.startswith("numpy._core"):  # numpy 1.x only has numpy.core
            canonical = "numpy.core" + canonical.removeprefix("numpy._core")
        return super().find_class(canonical, name)


def safe_load(source: bytes | IO[bytes]) -> Any:
    """The object pickled in ``source`` (bytes or a binary file), through :class:`SafeUnpickler`.

    ``encoding="latin1"`` reads Python 2 pickles of numpy arrays (3DDFA's files) as numpy needs. Raises
    ``pickle.UnpicklingError`` for a refused global, and whatever ``pickle`` raises for a damaged file
    (EOFError, ValueError, ...): callers turn those into their own error naming the file.
    """
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    return SafeUnpickler(stream, encoding="latin1").load()
