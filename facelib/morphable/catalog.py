"""The catalogue of morphable models a user has configured: names -> files, checked by checksum.

Users download model files themselves (BFM cannot be redistributed; nothing is ever downloaded here)
and list them in a TOML file: ``$FACERECON_MODELS`` if set, else ``~/.config/facerecon/models.toml``
(``$XDG_CONFIG_HOME`` respected)::

    default = "sfm"                    # what 3dmm-fit uses when no model option is given

    [models.sfm]
    path = "~/models/sfm_shape_3448.bin"
    expressions = "~/models/expression_blendshapes_3448.bin"   # optional second file
    format = "sfm"                     # optional; guessed from the file otherwise
    sha256 = "..."                     # optional; checked before loading

    [models.bfm2009]
    path = "~/models/01_MorphableModel.mat"
    expressions = "~/models/Exp_Pca.bin"

A model option may name a catalogue entry or give a file path directly. Loaded models are kept for
the life of the process (each file is read once).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from facerecon.kernel.contract.errors import ConfigError, ModelFileError

from .model import MorphableModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_VAR = "FACERECON_MODELS"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    expressions: Path | None = None
    format: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Catalogue:
    source: Path | None
    entries: dict[str, ModelEntry]
    default: str | None = None


def catalogue_path() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    root = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return root / "facerecon" / "models.toml"


def read_catalogue(path: Path | None = None) -> Catalogue:
    """The configured models; an absent file is an empty catalogue, a broken one a ConfigError."""
    path = path or catalogue_path()
    if not path.is_file():
        if os.environ.get(ENV_VAR) and path == catalogue_path():
            raise ConfigError(
                f"${ENV_VAR} points at {path}, which {'is not a file' if path.exists() else 'does not exist'}"
            )
        return Catalogue(None, {})
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"model catalogue {path}: {exc}") from None
    unknown = set(data) - {"default", "models"}
    if unknown:
        raise ConfigError(f"model catalogue {path}: unknown key(s) {', '.join(sorted(unknown))}")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"model catalogue {path}: [models] must be a table of [models.NAME] tables")
    entries = {}
    for name, table in models.items():
        if not isinstance(table, dict) or "path" not in table:
            raise ConfigError(f"model catalogue {path}: [models.{name}] needs a path")
        extra = set(table) - {"path", "expressions", "format", "sha256"}
        if extra:
            raise ConfigError(f"model catalogue {path}: [models.{name}] unknown key(s) {', '.join(sorted(extra))}")
        entries[name] = _entry(path, name, table)
    default = data.get("default")
    if default is not None and default not in entries:
        raise ConfigError(f"model catalogue {path}: default {default!r} is not one of [models.*]")
    if default is None and len(entries) == 1:
        default = next(iter(entries))
    return Catalogue(path, entries, default)


def _entry(catalogue: Path, name: str, table: dict[str, object]) -> ModelEntry:
    """One [models.NAME] table, its values checked; relative paths are relative to the catalogue."""

    def problem(key: str, expected: str) -> ConfigError:
        return ConfigError(f"model catalogue {catalogue}: [models.{name}] {key} must be {expected}, got {table[key]!r}")

    def file(key: str) -> Path:
        value = table[key]
        if not isinstance(value, str) or not value:
            raise problem(key, "a file name")
        try:
            candidate = Path(value).expanduser()
        except RuntimeError as exc:  # ~user that does not exist
            raise ConfigError(
                f"model catalogue {catalogue}: [models.{name}] {key}: cannot expand {value} ({exc})"
            ) from None
        return candidate if candidate.is_absolute() else catalogue.parent / candidate

    fmt, sha256 = table.get("format"), table.get("sha256")
    if fmt is not None and not isinstance(fmt, str):
        raise problem("format", "a format name")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise problem("sha256", "64 hex digits")
    return ModelEntry(
        name=name,
        path=file("path"),
        expressions=file("expressions") if table.get("expressions") is not None else None,
        format=fmt,
        sha256=sha256,
    )


def resolve(name_or_path: str | Path | None, expressions: Path | None = None, format: str | None = None) -> ModelEntry:
    """A catalogue name, a file path, or None for the catalogue's default. ``expressions`` and ``format``
    go with a file path; a catalogue entry has its own (given with a name they are refused, not ignored)."""
    catalogue = read_catalogue()
    if name_or_path is None:
        if catalogue.default is None:
            raise ConfigError(
                "no morphable model configured: give a model file (in a config, [options.regressor.3dmm-fit] "
                f'model = "FILE"; `eval synthetic --model FILE`), or list one in {catalogue_path()} '
                "(see `facerecon models --help`)"
            )
        return catalogue.entries[catalogue.default]
    key = str(name_or_path)
    if not key.strip():
        raise ModelFileError("morphable model: an empty name (give a model file or a catalogue name)")
    if key in catalogue.entries:
        given = [what for what, value in (("expressions", expressions), ("format", format)) if value is not None]
        if given:
            raise ConfigError(
                f"model {key!r} is a catalogue entry: its {' and '.join(given)} belong in {catalogue.source} "
                "(--expressions, --format and the regressor's expressions option are for a model file)"
            )
        return catalogue.entries[key]
    path = Path(key).expanduser()
    if not path.exists():
        known = ", ".join(sorted(catalogue.entries)) or "none configured"
        raise ModelFileError(f"morphable model {key!r}: no such file and no such catalogue entry (known: {known})")
    return ModelEntry(name=path.stem, path=path, expressions=expressions, format=format)


def is_configured() -> bool:
    """True when the catalogue names a default model (so 3dmm-fit can run with no options)."""
    try:
        return read_catalogue().default is not None
    except ConfigError:
        return False


def load(entry: ModelEntry) -> MorphableModel:
    """Load (once per process) and verify a catalogue entry."""
    return _load_cached(entry.path.resolve(), entry.expressions, entry.format, entry.sha256, _mtime(entry.path))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=4)
def _load_cached(
    path: Path, expressions: Path | None, format: str | None, sha256: str | None, mtime: float
) -> MorphableModel:
    from .formats import load_model, sha256_of

    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256.lower():
            raise ModelFileError(f"{path}: sha256 {actual} does not match the catalogue's {sha256}")
    return load_model(path, expression_path=expressions, format=format)
