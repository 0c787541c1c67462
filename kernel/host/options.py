"""A plugin's options dataclass from a TOML table (or command-line values).

Supported field types: ``bool``, ``int``, ``float`` (an int is accepted; NaN is not), ``str``, ``Path`` (``~``
expanded), ``tuple[T, ...]`` / ``list[T]`` (from a list), ``X | None``, ``Literal[...]`` (one of the
values) and ``Annotated[T, Range(lo, hi)]`` (a number within bounds). Unknown keys and wrong types are
refused with a message naming the stage, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facerecon.kernel.contract.errors import ConfigError
from facerecon.kernel.contract.options import Range


def parse_options(options_type: type | None, table: Mapping[str, Any], *, where: str) -> Any:
    """Build a plugin's options dataclass from a TOML table: unknown keys and wrong types are refused
    with a message naming the stage, the key and the expected type."""
    if options_type is None:
        if table:
            raise ConfigError(f"{where} takes no options, got {', '.join(sorted(table))}")
        return None
    fields = {f.name: f for f in dataclasses.fields(options_type) if f.init}
    hints = typing.get_type_hints(options_type, include_extras=True)
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(fields)) or 'none'})"
        )
    values = {key: _coerce(value, hints[key], where=f"{where} option {key!r}") for key, value in table.items()}
    try:
        return options_type(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(value: Any, hint: Any, *, where: str) -> Any:
    """Check ``value`` (from TOML/CLI) against a simple type hint; convert str -> Path, list -> tuple."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        value = _coerce(value, args[0], where=where)
        for bound in args[1:]:
            if isinstance(bound, Range):
                bound.check(value, where=where)
        return value
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"{where} must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where=where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, where=where) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where} must be a path string, got {value!r}")
        return Path(value).expanduser()
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and math.isnan(value):  # every comparison with NaN is False
        raise ConfigError(f"{where} must be a number, got nan")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
