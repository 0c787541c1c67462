"""Host hooks: how a plugin extends the ``facerecon`` command line (not needed to offer a stage; see
:mod:`facerecon.kernel.contract.hookspecs` for that).
"""

from __future__ import annotations

import argparse
from typing import Any

from facerecon.kernel.contract.hookspecs import hookspec
from facerecon.kernel.host.config import PipelineConfig


@hookspec
def facerecon_register_commands(subcommands: argparse._SubParsersAction, host: Any) -> None:
    """Add sub-commands to the ``facerecon`` command line (e.g. ``facerecon models``).

    :param subcommands: call ``parser = subcommands.add_parser(name, help=...)``, add arguments, and
        ``parser.set_defaults(handler=function)``; ``function(args) -> int`` returns the exit code
        (0 success, 1 failure, 2 usage error) and may raise ``FaceReconError`` for a clear message.
    :param host: the command line's ``PluginHost`` (its plugins filtered by the ``-c`` config's
        ``[plugins]`` lists), e.g. for ``host.add_pipeline_flags(parser)``; an implementation may omit it.
    """


@hookspec
def facerecon_add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """Add flags to every command that builds a pipeline (``reconstruct``, ``serve pipeline``, ...).

    :param parser: the command's parser (or argument group); add arguments with defaults that mean
        "not given", and read them back in :func:`facerecon_apply_pipeline_flags`.
    """


@hookspec
def facerecon_apply_pipeline_flags(config: PipelineConfig, args: argparse.Namespace) -> PipelineConfig | None:
    """The config with this plugin's flags applied (e.g. ``--remote``), or None when they change nothing.

    :param config: the config so far: the TOML file, the stage flags, and the flags of the plugins
        called before this one (:meth:`PluginHost.apply_pipeline_flags` passes each result on).
    :param args: the parsed command line.
    """


@hookspec(firstresult=True)
def facerecon_make_pipeline(config: PipelineConfig) -> Any | None:
    """A pipeline that replaces the local one for ``config``, or None (e.g. the ``remote`` plugin's for
    ``--remote pipeline=ADDRESS``, which sends whole photos to a ``facerecon serve pipeline`` server).

    What it returns is used as a :class:`~facerecon.kernel.host.pipeline.Pipeline` by the batch: called on a
    ``uint8 (H, W, 3)`` image (keyword ``all_faces``) it returns a Reconstruction; it has ``config``,
    ``plugin_ids()``, ``warm_up()``, ``close()`` and is a context manager.
    """


@hookspec(firstresult=True)
def facerecon_render_scene(model: str | None, expressions: str | None, seed: int, photo: Any, landmarks: Any) -> Any:
    """A :class:`~facerecon.kernel.contract.scenes.SyntheticScene`: a face of the morphable ``model`` (a
    catalogue name or a file; None: the catalogue's default) with random identity, expression, detail,
    albedo texture and lighting drawn from ``seed``, rendered over the face of ``photo`` (uint8 (H, W, 3))
    whose 68 iBUG ``landmarks`` (float (68, 2), pixels) place it; or None (not this plugin's). Used by
    ``facerecon eval synthetic``; the built-in ``synthetic-faces`` plugin implements it.
    """
