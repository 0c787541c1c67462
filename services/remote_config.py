"""The ``--remote`` / ``--deadline`` flags as config changes (the ``remote`` plugin's hooks call these):
which stages become ``remote`` with which address, and the call deadline of every remote stage."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from facerecon.kernel.contract.errors import ConfigError
from facerecon.kernel.host.config import PipelineConfig

from .channels import check_address

NAME = "remote"


def with_deadline(config: PipelineConfig, seconds: float) -> PipelineConfig:
    """Every remote stage of ``config`` with the call deadline ``seconds`` (``--deadline``)."""
    from .remote import DEADLINE_RANGE, valid_deadline

    if not valid_deadline(seconds):
        raise ConfigError(f"--deadline must be in {DEADLINE_RANGE}, got {seconds!r}")
    stages = [(kind, getattr(config, kind)) for kind in ("detector", "regressor", "segmenter")]
    stages += [("refiner", name) for name in config.refiners]
    remote = [(kind, name) for kind, name in stages if name == NAME or str(name).startswith(f"{NAME}@")]
    remote += [("pipeline", NAME)] * (("pipeline", NAME) in config.options)
    if not remote:
        raise ConfigError("--deadline applies to remote stages, and none is configured (use --remote STAGE=ADDRESS)")
    for kind, name in remote:
        config = config.with_options(kind, str(name), {"deadline_s": seconds})
    return config


def apply_remote(config: PipelineConfig, entries: Iterable[str]) -> PipelineConfig:
    """Apply ``--remote STAGE=ADDRESS[,ADDRESS...]`` flags to a config.

    STAGE is ``detector``, ``regressor`` or ``segmenter`` (that stage becomes ``remote``, asking the server
    for the plugin configured locally, if one was named), or the name of a configured refiner (it becomes
    ``remote@NAME``; ``refiner`` alone means the only configured one), or ``pipeline``: whole photos go to
    a ``facerecon serve pipeline`` server (``[options.pipeline.remote]``, see :mod:`.remote_pipeline`).
    """
    entries = list(entries)
    for entry in entries:
        key, sep, address = entry.partition("=")
        key, address = key.strip(), address.strip()
        if not sep or not key or not address:
            raise ConfigError(f"--remote takes STAGE=HOST:PORT[,HOST:PORT...], got {entry!r}")
        try:
            check_address(address)
        except ConfigError as exc:
            raise ConfigError(f"--remote {entry}: {exc}") from None
        if key == "pipeline":  # whole photos to `facerecon serve pipeline` (remote_pipeline.py)
            if len(entries) > 1:
                raise ConfigError("--remote pipeline=... sends whole photos to one server: no other --remote with it")
            config = config.with_options("pipeline", NAME, {"address": address})
            continue
        if key in ("detector", "regressor", "segmenter"):
            current = getattr(config, key)
            table: dict[str, Any] = {"address": address}
            if current not in (None, "auto", NAME):
                table["plugin"] = current
            config = replace(config, **{key: NAME}).with_options(key, NAME, table)
            continue
        refiners = list(config.refiners)
        if key == "refiner":
            if len(refiners) != 1:
                raise ConfigError(
                    f"--remote refiner=... needs exactly one configured refiner, there are {len(refiners)} "
                    f"({', '.join(refiners) or 'none'}): name the one to run remotely, e.g. --remote NAME=HOST:PORT"
                )
            key = refiners[0]
        if key not in refiners:
            known = ", ".join(["detector", "regressor", "segmenter", *refiners])
            raise ConfigError(f"--remote {key}=...: no such stage configured (known: {known})")
        instance = f"{NAME}@{key}"
        table = {"address": address}
        if not key.startswith(f"{NAME}@") and key != NAME:
            table["plugin"] = key
        refiners[refiners.index(key)] = instance
        config = replace(config, refiners=tuple(refiners)).with_options("refiner", instance, table)
    return config
