"""Pipeline configuration: which plugin runs each stage, their options, the device.

A TOML file holds everything (every key optional)::

    [pipeline]
    detector = "mediapipe"
    regressor = "auto"          # 3dmm-fit once a morphable model is configured, else landmark-mesh
    segmenter = "landmark-regions"  # "none" (or "") runs no segmenter
    refiners = ["laplace", "sfs"]  # in order; the default is the seed's medium + fine stages
                                # ([] for the coarse stage alone; without PyTorch the default
                                # skips the fine stage and says so once)
    device = "auto"             # "cpu", "cuda" or "auto"
    all_faces = false           # reconstruct every face, not only the largest
    max_image_pixels = 80000000 # larger images are refused before decoding
    detect_max_side = 2048      # the detector sees the photo shrunk to this longer side (0: never shrunk)
    blas_threads = 1            # BLAS (numpy, scipy) threads for the small per-face products (0: the library's)
    torch_threads = 1           # torch intra-op threads for the fine stage (0: torch's default, every core)

    [plugins]
    allow = ["my-detector"]     # only these third-party plugins load (omit: all)
    block = ["some-plugin"]     # these never load

    [options.detector.mediapipe]  # per-stage options; each plugin documents its own
    max_faces = 4
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from numbers import Integral
from pathlib import Path
from types import MappingProxyType
from typing import Any

from facerecon.kernel.contract.errors import ConfigError
from facerecon.kernel.contract.stages import STAGE_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEVICES = ("auto", "cpu", "cuda")
# The seed's pipeline: the medium (Laplacian) and fine (shape-from-shading) stages. Where a default refiner
# is not available (the fine stage without PyTorch), the pipeline runs without it and says how to get it.
DEFAULT_REFINERS = ("laplace", "sfs")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline needs to know; build it with :meth:`load` or directly.

    options: (kind, plugin name) -> that stage's option table, e.g. {("detector", "mediapipe"): {...}}.
    allow_plugins: None = every installed plugin may load; else only these third-party ones.
    source: the TOML file :meth:`load` read (None: built in code); messages about the options tables
        name it. Not a ``[pipeline]`` key, and not compared.
    """

    detector: str = "mediapipe"
    regressor: str = "auto"
    segmenter: str | None = "landmark-regions"
    refiners: tuple[str, ...] = DEFAULT_REFINERS
    device: str = "auto"
    all_faces: bool = False
    max_image_pixels: int = 80_000_000
    detect_max_side: int = 2048
    blas_threads: int = 1
    torch_threads: int = 1
    options: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    allow_plugins: tuple[str, ...] | None = None
    block_plugins: tuple[str, ...] = ()
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        """The same checks as the TOML form's, for a config built in code."""
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.segmenter in ("", "none"):
            object.__setattr__(self, "segmenter", None)
        object.__setattr__(self, "refiners", _plugin_names(self.refiners, "refiners"))
        segmenter = () if self.segmenter is None else (self.segmenter,)
        stages = {"detector": (self.detector,), "regressor": (self.regressor,), "segmenter": segmenter}
        for key, names in {**stages, "refiners": self.refiners}.items():
            for name in names:
                if not isinstance(name, str) or not name:
                    raise ConfigError(f"{key} must name a plugin (a non-empty string), got {name!r}")
        if not isinstance(self.all_faces, bool):
            raise ConfigError(f"all_faces must be a boolean (True or False), got {self.all_faces!r}")
        limits = {
            "max_image_pixels": (1, "a positive integer"),
            "detect_max_side": (0, "0 (never shrink) or at least 64"),
            "blas_threads": (0, "an integer >= 0 (0: the library's own default)"),
            "torch_threads": (0, "an integer >= 0 (0: the library's own default)"),
        }
        for key, (least, what) in limits.items():
            value = getattr(self, key)
            if not isinstance(value, Integral) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{key} must be {what}, got {value!r}")
            object.__setattr__(self, key, int(value))
        if 0 < self.detect_max_side < 64:
            raise ConfigError(f"detect_max_side must be 0 (never shrink) or at least 64, got {self.detect_max_side!r}")
        if self.allow_plugins is not None:
            object.__setattr__(self, "allow_plugins", _plugin_names(self.allow_plugins, "allow_plugins"))
        object.__setattr__(self, "block_plugins", _plugin_names(self.block_plugins, "block_plugins"))
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options must be a mapping of (kind, plugin name) to a table, got {self.options!r}")
        for stage, table in self.options.items():  # (kinds beyond the stages' too: a hook's, e.g. "pipeline")
            if not (isinstance(stage, tuple) and len(stage) == 2 and all(isinstance(k, str) for k in stage)):
                raise ConfigError(
                    f"options keys must be (kind, plugin name), e.g. ('detector', 'mediapipe'), got {stage!r}"
                )
            if not isinstance(table, Mapping):
                raise ConfigError(f"options[{stage!r}] must be a mapping of option names to values, got {table!r}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Picklable (a batch sends its config to worker processes), the options as plain dicts."""
        values = [getattr(self, f.name) for f in fields(self)]
        return type(self), tuple(dict(v) if isinstance(v, MappingProxyType) else v for v in values)

    def options_for(self, kind: str, name: str) -> Mapping[str, Any]:
        return self.options.get((kind, name), {})

    def with_options(self, kind: str, name: str, table: Mapping[str, Any]) -> PipelineConfig:
        """A copy where stage ``kind``/``name`` gets ``table`` merged over its current options."""
        merged = dict(self.options)
        merged[(kind, name)] = {**self.options_for(kind, name), **table}
        return replace(self, options=merged)

    def with_stage_flags(self, flags: Any) -> PipelineConfig:
        """A copy with the stage choices of parsed command-line flags applied: the attributes
        ``detector``, ``regressor``, ``segmenter``, ``device`` (None or absent: keep), ``refiners`` (a
        comma-separated list, names stripped, '' for none), ``all_faces`` (True: every face) and ``threads``
        (BLAS and torch threads). One
        reading of these flags for every command (``reconstruct``, ``plugins``, ``serve pipeline``)."""
        changes: dict[str, Any] = {}
        for key in ("detector", "regressor", "segmenter", "device"):
            value = getattr(flags, key, None)
            if value is not None:
                changes[key] = value
        threads = getattr(flags, "threads", None)
        if threads is not None:
            changes["blas_threads"] = changes["torch_threads"] = threads
        refiners = getattr(flags, "refiners", None)
        if refiners is not None:
            changes["refiners"] = tuple(name.strip() for name in refiners.split(",") if name.strip())
        if getattr(flags, "all_faces", False):
            changes["all_faces"] = True
        return replace(self, **changes) if changes else self

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        """Read a TOML config file; every problem is a :class:`ConfigError` naming the file and key."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # (a byte-order mark: Windows' Notepad)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"cannot read config file {path}: not UTF-8 text ({exc})") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        try:
            return replace(cls.from_mapping(data), source=path)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PipelineConfig:
        """Build from the parsed TOML structure shown in the module docstring."""
        _only_keys(data, {"pipeline", "plugins", "options"}, "top level")
        pipeline = _table(data, "pipeline")
        simple = {f.name for f in fields(cls)} - {"options", "allow_plugins", "block_plugins", "source"}
        _only_keys(pipeline, simple, "[pipeline]")
        kwargs: dict[str, Any] = {}
        for key, value in pipeline.items():
            expected = {
                "refiners": list,
                "all_faces": bool,
                "max_image_pixels": int,
                "detect_max_side": int,
                "blas_threads": int,
                "torch_threads": int,
            }.get(key, str)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"[pipeline] {key} must be {_TYPE_NAMES[expected]}, got {value!r}")
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        plugins = _table(data, "plugins")
        _only_keys(plugins, {"allow", "block"}, "[plugins]")
        for key in ("allow", "block"):
            value = plugins.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"[plugins] {key} must be a list of plugin names, got {value!r}")
        options: dict[tuple[str, str], Mapping[str, Any]] = {}
        for kind, per_kind in _table(data, "options").items():
            if kind not in STAGE_KINDS:
                raise ConfigError(f"[options.{kind}]: unknown stage kind (known: {', '.join(STAGE_KINDS)})")
            if not isinstance(per_kind, Mapping):
                raise ConfigError(f"[options.{kind}] must be a table of plugin tables")
            for name, table in per_kind.items():
                if not isinstance(table, Mapping):
                    raise ConfigError(f"[options.{kind}.{name}] must be a table")
                options[(kind, name)] = dict(table)
        allow_plugins = tuple(plugins["allow"]) if "allow" in plugins else None
        block_plugins = tuple(plugins.get("block", ()))
        try:  # the [plugins] and [options] tables are checked above: what is left is a [pipeline] value's
            config = cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"[pipeline] {exc}") from None
        return replace(config, options=options, allow_plugins=allow_plugins, block_plugins=block_plugins)


# What a [pipeline] value must be, in words ("must be an integer", not "must be a int").
_TYPE_NAMES: dict[type, str] = {
    list: "a list",
    bool: "a boolean (true or false)",
    int: "an integer",
    str: "a string",
}


def _plugin_names(value: Any, key: str) -> tuple[str, ...]:
    """A list or tuple of plugin names as a tuple (a bare string would be read letter by letter)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"{key} must be a list of plugin names, got {value!r}")
    return tuple(value)


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}] must be a table")
    return value


def _only_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
