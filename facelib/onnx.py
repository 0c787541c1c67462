"""The one way facerecon opens an ``.onnx`` network with onnxruntime: execution providers and session options.

``device = "cuda"`` puts onnxruntime's CUDA provider before the CPU one when this onnxruntime build has
it, and otherwise logs a warning and runs on the CPU; every other device runs on the CPU provider.
Sessions log errors only (``log_severity_level = 3``); ``threads`` sets ``intra_op_num_threads`` (None
or 0: onnxruntime's default).

onnxruntime is imported lazily, when a session is made. Callers word the two failures themselves:
``ImportError`` (onnxruntime is not installed: name the extra that brings it) and any other exception
(the file is no readable ONNX model: name the file, and say why with :func:`load_failure`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["load_failure", "onnx_session", "providers_for"]

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
_NOISE = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : |Load model from \S+ failed: ?|/\S+:\d+ [^()]*\([^)]*\)\s*")
"""What onnxruntime wraps its reasons in: its error code, the path again, the C++ source line and signature."""
CUDA_PROVIDER = "CUDAExecutionProvider"


def providers_for(
    device: str,
    available: list[str],
    *,
    warn: logging.Logger | None = None,
    who: str = "onnx",
    what: str = "the network",
) -> list[str]:
    """onnxruntime execution providers for ``device``, preferred first, given the ``available`` ones
    (``onnxruntime.get_available_providers()``): ``[CUDA, CPU]`` for ``"cuda"`` when CUDA is available,
    else ``[CPU]``. Asking for CUDA without it logs a warning to ``warn`` naming the stage ``who`` and
    the network ``what``."""
    providers = [CPU_PROVIDER]
    if device == "cuda":
        if CUDA_PROVIDER in available:
            providers.insert(0, CUDA_PROVIDER)
        else:
            (warn or log).warning("%s: onnxruntime has no CUDA provider here; running %s on the CPU", who, what)
    return providers


def onnx_session(
    path: Path | str,
    device: str = "cpu",
    *,
    threads: int | None = None,
    warn: logging.Logger | None = None,
    who: str = "onnx",
) -> onnxruntime.InferenceSession:
    """An onnxruntime session for the network at ``path`` on ``device`` (see the module docstring);
    ``warn`` / ``who``: the logger and stage name of the warning when CUDA is asked for but missing.

    Raises ImportError without onnxruntime, and whatever onnxruntime raises for an unreadable file."""
    import onnxruntime

    providers = providers_for(device, onnxruntime.get_available_providers(), warn=warn, who=who, what=Path(path).name)
    settings = onnxruntime.SessionOptions()
    settings.log_severity_level = 3
    if threads:
        settings.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), sess_options=settings, providers=providers)


def load_failure(exc: BaseException, limit: int = 400) -> str:
    """Why onnxruntime could not open a network, on one line: its message without the error code, the
    repeated path and the C++ source location (which can hide the reason, e.g. an unsupported opset)."""
    text = " ".join(_NOISE.sub("", str(exc)).split())
    return text[:limit] if len(text) <= limit else text[: limit - 3] + "..."
