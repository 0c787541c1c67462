"""The hook specifications: the whole contract between facerecon and its plugins.

A plugin is any module or object with functions marked ``@facerecon.kernel.hookimpl`` whose names and
arguments match the specs below. Plugins are found through the ``facerecon`` entry-point group (the
built-in stages use it too) or registered by hand with :meth:`PluginHost.register_plugin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import argparse

    from .registry import StageRegistrar

PROJECT = "facerecon"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def facerecon_register_stages(registry: StageRegistrar) -> None:
    """Register the stage implementations this plugin provides.

    Call ``registry.register(kind, name, factory, ...)`` once per stage, where ``kind`` is one of
    ``"detector"``, ``"regressor"``, ``"segmenter"``, ``"refiner"``, ``name`` is what users type after
    ``--detector`` etc., and ``factory(options, device)`` builds the stage object. ``options`` is an
    instance of the plugin's own options dataclass (filled from the user's TOML config, unknown keys
    refused); ``device`` is ``"cpu"`` or ``"cuda"``. The factory is called once per process, when the
    pipeline first needs the stage, so load models there, not at import time.

    The stage object must satisfy the protocol of its kind in :mod:`facerecon.kernel.stages`:

    * detector: ``detect(image) -> list[Face]``
    * regressor: ``regress(image, face) -> CoarseResult``
    * segmenter: ``segment(image, face) -> Segmentation``
    * refiner: ``refine(image, face, mesh, segmentation) -> Mesh`` and a ``stage`` name (e.g. "medium")

    Registering a name that another plugin registered replaces it (with a warning), so a pip-installed
    package can override a built-in stage.
    """


@hookspec
def facerecon_register_commands(subcommands: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``facerecon`` command line (e.g. ``facerecon models``).

    Call ``parser = subcommands.add_parser(name, help=...)``, add arguments, and
    ``parser.set_defaults(handler=function)``; ``function(args) -> int`` returns the exit code
    (0 success, 1 failure, 2 usage error) and may raise ``FaceReconError`` for a clear message.
    """
