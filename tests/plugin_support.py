"""Helpers for tests of the plugin host: a module carrying one registration hook, and a host with the
default pipeline's built-ins registered by hand (no entry points)."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from facerecon.kernel import PluginHost, hookimpl
from facerecon.plugins import landmark_mesh, landmark_regions, mediapipe_detector


def plugin_module(name: str, body: Callable[[Any], None]) -> types.ModuleType:
    """A module named ``name`` whose ``facerecon_register_stages(registry)`` hook is ``body``."""
    module = types.ModuleType(name)
    module.facerecon_register_stages = hookimpl(body)  # type: ignore[attr-defined]
    return module


def builtin_host() -> PluginHost:
    """A host with the default pipeline's built-ins only (MediaPipe, landmark-mesh, landmark-regions)."""
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(mediapipe_detector, name="mediapipe", distribution="facerecon", version="0.1.0")
    host.register_plugin(landmark_mesh, name="landmark-mesh", distribution="facerecon", version="0.1.0")
    host.register_plugin(landmark_regions, name="landmark-regions", distribution="facerecon", version="0.1.0")
    return host
