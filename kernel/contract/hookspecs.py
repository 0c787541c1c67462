"""The stage hook: the contract between facerecon and a plugin that offers stages.

A plugin is any module or object with functions marked ``@facerecon.kernel.contract.hookimpl`` whose
names and arguments match the specs here (and, for command-line extensions, in
:mod:`facerecon.kernel.host.hookspecs`). Plugins are found through the ``facerecon`` entry-point group
(the built-in stages use it too) or registered by hand with ``PluginHost.register_plugin``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

PROJECT = "facerecon"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

StageFactory = Callable[[Any, str], object]
# Mesh units a stage works in: a tuple of "px" / "mm", or (a regressor's) function of its options dataclass.
MeshUnits = tuple[str, ...] | Callable[[Any], tuple[str, ...]]
MESH_UNITS = ("px", "mm")
"""``factory(options, device) -> stage``: options is the plugin's options dataclass (or None), device
``"cpu"`` or ``"cuda"``."""


class Registrar(Protocol):
    """What :func:`facerecon_register_stages` receives (the host implements it)."""

    def register(
        self,
        kind: str,
        name: str,
        factory: StageFactory,
        *,
        options: type | None = None,
        summary: str = "",
        version: str | None = None,
        license_note: str = "",
        priority: int = 0,
        available: Callable[[], bool] | None = None,
        accepts: tuple[str, ...] | None = None,
        produces: tuple[str, ...] | None = None,
        devices: tuple[str, ...] = ("cpu", "cuda"),
        mesh_units: MeshUnits | None = None,
        install_hint: str = "",
        reads: str = "image",
    ) -> None:
        """Offer stage ``name`` of ``kind``.

        :param kind: ``"detector"``, ``"regressor"``, ``"segmenter"`` or ``"refiner"``.
        :param name: what users type after ``--detector`` etc.
        :param factory: ``factory(options, device)`` builds the stage object, once per process, when the
            pipeline first needs it: load models there, not at import time.
        :param options: the stage's options dataclass, filled from the user's TOML table (unknown keys
            and wrong types refused); None when it takes none.
        :param summary: one line for ``facerecon plugins``.
        :param version: the stage's version (default: its distribution's).
        :param license_note: the licence of the model it runs, when it is not the code's.
        :param priority: when the config asks for ``"auto"``, the available stage of that kind with the
            highest priority runs.
        :param available: whether the stage can run with no options given (e.g. its model file is found).
        :param accepts: the landmark schemes (``Landmarks.scheme``) the stage can use, None = any. The
            pipeline checks the chain when it is built: a regressor, segmenter or refiner that cannot use
            the detector's landmarks is refused before any photo is read, and ``"auto"`` picks a regressor
            that can.
        :param produces: for a detector, the landmark schemes it gives (None = not known in advance, e.g. a
            remote one).
        :param devices: where it runs (a CPU-only stage runs on the CPU in a CUDA pipeline); shown by
            ``facerecon plugins``.
        :param mesh_units: the mesh frames (``Mesh.units``) the stage works in: ``"px"`` (orthographic,
            image pixels) or ``"mm"`` (millimetres seen through a ``camera_matrix``). For a regressor, what
            it gives: a tuple, or a function of its options dataclass when an option decides (e.g. a
            camera model); for a refiner, what it can refine. None = any (or not known in advance). The
            pipeline refuses, when it is built, a refiner that cannot take the regressor's meshes.
        :param install_hint: what makes the stage available where ``available`` says it is not (e.g.
            ``pip install 'facerecon[fine]'``); said when the default pipeline runs without it.
        :param reads: what of the image the stage reads (:data:`~facerecon.kernel.contract.stages.READS`):
            ``"image"`` (any pixel; the default), ``"face-crop"`` (only the pixels of
            :func:`~facerecon.kernel.contract.stages.face_window`) or ``"landmarks"`` (no pixel: the image's
            size only). A remote stage sends only that; declare no less than the stage reads.
        """
        ...


@hookspec
def facerecon_register_stages(registry: Registrar) -> None:
    """Register the stage implementations this plugin provides.

    :param registry: call ``registry.register(kind, name, factory, ...)`` once per stage.

    The stage object must satisfy the protocol of its kind in :mod:`facerecon.kernel.contract.stages`:

    * detector: ``detect(image) -> list[Face]``
    * regressor: ``regress(image, face) -> CoarseResult``
    * segmenter: ``segment(image, face) -> Segmentation``
    * refiner: ``refine(image, face, mesh, segmentation) -> Mesh | Refinement`` and a ``stage`` name
      (e.g. "medium")

    Registering a name that another plugin registered replaces it (with a warning), so a pip-installed
    package can override a built-in stage.
    """
