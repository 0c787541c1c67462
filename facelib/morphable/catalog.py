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
            raise ConfigError(f"${ENV_VAR} points at {path}, which does not exist")
        return Catalogue(None, {})
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"model catalogue {path}: {exc}") from None
    unknown = set(data) - {"default", "models"}
    if unknown:
        raise ConfigError(f"model catalogue {path}: unknown key(s) {', '.join(sorted(unknown))}")
    entries = {}
    for name, table in data.get("models", {}).items():
        if not isinstance(table, dict) or "path" not in table:
            raise ConfigError(f"model catalogue {path}: [models.{name}] needs a path")
        extra = set(table) - {"path", "expressions", "format", "sha256"}
        if extra:
            raise ConfigError(f"model catalogue {path}: [models.{name}] unknown key(s) {', '.join(sorted(extra))}")
        base = path.parent

        def resolve(value: str, base: Path = base) -> Path:
            candidate = Path(value).expanduser()
            return candidate if candidate.is_absolute() else base / candidate

        entries[name] = ModelEntry(
            name=name,
            path=resolve(table["path"]),
            expressions=resolve(table["expressions"]) if table.get("expressions") else None,
            format=table.get("format"),
            sha256=table.get("sha256"),
        )
    default = data.get("default")
    if default is not None and default not in entries:
        raise ConfigError(f"model catalogue {path}: default {default!r} is not one of [models.*]")
    if default is None and len(entries) == 1:
        default = next(iter(entries))
    return Catalogue(path, entries, default)


def resolve(name_or_path: str | Path | None, expressions: Path | None = None) -> ModelEntry:
    """A catalogue name, a file path, or None for the catalogue's default."""
    catalogue = read_catalogue()
    if name_or_path is None:
        if catalogue.default is None:
            raise ConfigError(
                f"no morphable model configured: give a model file (--model FILE where the command has it, "
                f"else the regressor's model option), or list one in {catalogue_path()} "
                f"(see `facerecon models --help`)"
            )
        return catalogue.entries[catalogue.default]
    key = str(name_or_path)
    if key in catalogue.entries:
        return catalogue.entries[key]
    path = Path(key).expanduser()
    if not path.exists():
        known = ", ".join(sorted(catalogue.entries)) or "none configured"
        raise ModelFileError(f"morphable model {key!r}: no such file and no such catalogue entry (known: {known})")
    return ModelEntry(name=path.stem, path=path, expressions=expressions)


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
