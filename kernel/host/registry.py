"""The plugin host: loads plugins with pluggy, collects the stages they register, builds stages by name.

Plugins come from the ``facerecon`` entry-point group (built-ins and third-party alike) or are
registered by hand (tests, notebooks). A configurable allow list / block list decides which
third-party plugins load; a plugin that fails to import or whose hooks do not match the specs is
refused with a warning that names it, and the rest keep working.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from facerecon.kernel.contract import hookspecs
from facerecon.kernel.contract.errors import ConfigError, FaceReconError, PluginError
from facerecon.kernel.contract.hookspecs import MESH_UNITS, MeshUnits, StageFactory
from facerecon.kernel.contract.scenes import SyntheticScene
from facerecon.kernel.contract.stages import READS, STAGE_KINDS, STAGE_NAME, STAGE_PROTOCOLS, stage_name_problem
from facerecon.kernel.host import hookspecs as host_hookspecs
from facerecon.kernel.host.config import PipelineConfig
from facerecon.kernel.host.options import parse_options

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "facerecon"
BUILTIN_DISTRIBUTION = "facerecon"


@dataclass(frozen=True)
class StageSpec:
    """One registered stage implementation.

    factory: ``factory(options, device) -> stage``; options is an instance of ``options_type``
        (or None when the stage takes no options), device is "cpu" or "cuda".
    """

    kind: str
    name: str
    factory: StageFactory
    options_type: type | None
    summary: str
    version: str
    plugin: str
    distribution: str
    license_note: str = ""
    priority: int = 0
    available: Callable[[], bool] | None = None
    accepts: tuple[str, ...] | None = None
    produces: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    mesh_units: MeshUnits | None = None
    install_hint: str = ""
    reads: str = "image"

    def is_available(self) -> bool:
        """Whether the stage can run with no options given (e.g. its model files are configured); an
        ``available`` function that fails says no, with a warning naming the plugin."""
        if self.available is None:
            return True
        try:
            return bool(self.available())
        except Exception as exc:
            log.warning("%s %r from plugin %r: available() failed (%s: %s); taken as not available",
                        self.kind, self.name, self.plugin, type(exc).__name__, exc)  # fmt: skip
            return False

    def takes(self, schemes: tuple[str, ...] | None) -> bool:
        """Whether this stage can use landmarks of every scheme in ``schemes`` (None: not known, assumed)."""
        return schemes is None or self.accepts is None or all(s in self.accepts for s in schemes)

    def accepts_text(self) -> str:
        return "any landmarks" if self.accepts is None else " or ".join(self.accepts)

    def units_for(self, options: Any) -> tuple[str, ...] | None:
        """The mesh units this stage gives (regressor) or takes (refiner) with ``options``; None = any."""
        units = self.mesh_units(options) if callable(self.mesh_units) else self.mesh_units
        if units is not None and (isinstance(units, str) or not set(units) <= set(MESH_UNITS)):
            raise PluginError(
                f"plugin {self.plugin!r}: mesh_units of {self.kind} {self.name!r} gave {units!r}; "
                f"expected a tuple of {', '.join(MESH_UNITS)}"
            )
        return None if units is None else tuple(units)

    def units_text(self) -> str:
        if callable(self.mesh_units):
            return "px|mm (by its options)"
        return "any" if self.mesh_units is None else "|".join(self.mesh_units)

    def make_options(
        self, table: Mapping[str, Any] | None, *, source: str | Path | None = None, table_name: str | None = None
    ) -> Any:
        """Options for this stage from a config table, with unknown keys and wrong types refused.

        source: the config file the table came from (``PipelineConfig.source``); when given, a refusal
        starts with where the table is, ``[options.KIND.NAME] in FILE: ...`` (NAME: ``table_name``, e.g.
        ``remote@fine``, else the stage's name)."""
        try:
            return parse_options(self.options_type, table or {}, where=f"{self.kind} {self.name!r}")
        except ConfigError as exc:
            if source is None:
                raise
            raise ConfigError(f"[options.{self.kind}.{table_name or self.name}] in {source}: {exc}") from None


@dataclass
class StageRegistrar:
    """The host's :class:`~facerecon.kernel.contract.hookspecs.Registrar`: what a plugin's
    ``facerecon_register_stages`` hook receives; it collects the :class:`StageSpec` s."""

    plugin: str
    distribution: str
    version: str
    collected: list[StageSpec] = field(default_factory=list)

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
        """Offer a stage ``name`` of ``kind``; see the hookspec (``Registrar.register``) for the arguments.

        priority, available: when the config asks for ``"auto"``, the available stage of that kind with
        the highest priority runs (e.g. a 3DMM fitter once a model is configured, else a fallback).
        """
        if kind not in STAGE_KINDS:
            raise PluginError(f"plugin {self.plugin!r} registers unknown stage kind {kind!r} (known: {STAGE_KINDS})")
        if not name or not isinstance(name, str):
            raise PluginError(f"plugin {self.plugin!r} registers a {kind} without a name")
        if not STAGE_NAME.fullmatch(name):  # names are typed in flags and lists: --refiners a,b / --remote a=HOST
            raise PluginError(
                f"plugin {self.plugin!r} registers {kind} {name!r}: a name is letters, digits and . _ + - "
                "(not first), so that it can be given in --refiners lists and --remote flags"
            )
        if isinstance(priority, bool) or not isinstance(priority, (int, float)):
            raise PluginError(f"plugin {self.plugin!r}: priority of {kind} {name!r} must be a number, got {priority!r}")
        if available is not None and not callable(available):
            raise PluginError(
                f"plugin {self.plugin!r}: available of {kind} {name!r} must be a function () -> bool, got {available!r}"
            )
        for what, text in (("summary", summary), ("license_note", license_note), ("install_hint", install_hint)):
            if not isinstance(text, str):
                raise PluginError(f"plugin {self.plugin!r}: {what} of {kind} {name!r} must be a string")
        if options is not None and not dataclasses.is_dataclass(options):
            raise PluginError(f"plugin {self.plugin!r}: options of {kind} {name!r} must be a dataclass")
        if not callable(factory):
            raise PluginError(f"plugin {self.plugin!r}: factory of {kind} {name!r} is not callable")
        if reads not in READS:
            raise PluginError(f"plugin {self.plugin!r}: reads of {kind} {name!r} must be one of {READS}, got {reads!r}")
        for what, value in (("accepts", accepts), ("produces", produces), ("devices", devices)):
            if value is not None and (
                isinstance(value, str) or not value or not all(isinstance(v, str) and v for v in value)
            ):  # (an empty tuple would take, or give, nothing: None means "not declared")
                raise PluginError(
                    f"plugin {self.plugin!r}: {what} of {kind} {name!r} must be a non-empty tuple of names, "
                    f"got {value!r}"
                )
        if mesh_units is not None and not callable(mesh_units):
            if isinstance(mesh_units, str) or not set(mesh_units) <= set(MESH_UNITS):
                raise PluginError(
                    f"plugin {self.plugin!r}: mesh_units of {kind} {name!r} must be a tuple of "
                    f"{', '.join(MESH_UNITS)} (or a function of the options), got {mesh_units!r}"
                )
            mesh_units = tuple(mesh_units)
        self.collected.append(
            StageSpec(
                kind=kind,
                name=name,
                factory=factory,
                options_type=options,
                summary=summary,
                version=version or self.version,
                plugin=self.plugin,
                distribution=self.distribution,
                license_note=license_note,
                priority=priority,
                available=available,
                accepts=None if accepts is None else tuple(accepts),
                produces=None if produces is None else tuple(produces),
                devices=tuple(devices),
                mesh_units=mesh_units,
                install_hint=install_hint,
                reads=reads,
            )
        )


@dataclass(frozen=True)
class LoadedPlugin:
    name: str
    distribution: str
    version: str


class PluginHost:
    """Loads plugins and answers "which stages exist" and "build stage X".

    load_entrypoints: load the ``facerecon`` entry-point group (set False in tests, then register
        plugins by hand).
    allow: if not None, the only third-party entry points (by entry-point name) that may load;
        built-in ones always load.
    block: entry-point or plugin names that never load (built-ins included).
    """

    def __init__(
        self,
        *,
        load_entrypoints: bool = True,
        allow: Iterable[str] | None = None,
        block: Iterable[str] = (),
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.pm.add_hookspecs(host_hookspecs)
        self.allow = None if allow is None else frozenset(allow)
        self.block = frozenset(block)
        self.plugins: dict[str, LoadedPlugin] = {}
        self.failures: dict[str, str] = {}
        # Installed plugins the allow / block lists kept from loading: name -> "allow" or "block" (see excluded).
        self.kept_out: dict[str, str] = {}
        self._stages: dict[tuple[str, str], StageSpec] | None = None
        for name in self.block:
            self.pm.set_blocked(name)
        if load_entrypoints:
            self._load_entrypoints()

    # -- loading -------------------------------------------------------------------------------

    def _load_entrypoints(self) -> None:
        eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        names: dict[int, tuple[str, str]] = {}  # a distribution's (name, version): its metadata parsed once
        for ep in eps:
            if ep.dist is not None and id(ep.dist) not in names:
                metadata = ep.dist.metadata  # each read of .name or .version re-parses the METADATA file
                names[id(ep.dist)] = (metadata["Name"], metadata["Version"])
        for ep in sorted(eps, key=lambda ep: _builtin_first(ep.name, names.get(id(ep.dist), ("", ""))[0])):
            dist, version = names[id(ep.dist)] if ep.dist is not None else ("?", "?")
            if ep.name in self.block:
                self.kept_out[ep.name] = "block"
                continue
            if self.pm.has_plugin(ep.name):
                continue
            if self.allow is not None and dist != BUILTIN_DISTRIBUTION and ep.name not in self.allow:
                log.info("plugin %r (%s) not in the allow list; skipped", ep.name, dist)
                self.kept_out[ep.name] = "allow"
                continue
            try:
                module = ep.load()
            except (Exception, SystemExit) as exc:  # a broken third-party plugin must not take the host down
                self._refuse(ep.name, f"could not be imported: {type(exc).__name__}: {exc}", installed=True)
                continue
            self.register_plugin(module, name=ep.name, distribution=dist, version=version)
        installed = {ep.name for ep in eps}
        for what, listed in (("block", self.block), ("allow", self.allow or ())):
            unknown = sorted(set(listed) - installed)
            if unknown:  # a typo, or a stage's name where the plugin's (entry point's) is meant
                _warn_once(
                    f"[plugins] {what} names {', '.join(map(repr, unknown))}, which no installed plugin is called "
                    f"(plugins: {', '.join(sorted(installed))}; `facerecon plugins --json` gives each stage's plugin)"
                )

    def register_plugin(
        self, plugin: object, *, name: str | None = None, distribution: str = "(local)", version: str = "0"
    ) -> bool:
        """Register a module or object carrying hookimpls. Returns False (and warns) if refused."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if name in self.block:
            self.kept_out[name] = "block"
            return False
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self._refuse(name, f"does not match the hook specifications: {exc}", distribution != "(local)")
            return False
        self.plugins[name] = LoadedPlugin(name, distribution, version)
        self._stages = None
        marker = f"{hookspecs.PROJECT}_impl"  # what @hookimpl sets: pluggy passes over functions without it
        unmarked = [
            n for n in dir(plugin) if n.startswith("facerecon_") and callable(getattr(plugin, n, None))
            and not hasattr(getattr(plugin, n), marker)
        ]  # fmt: skip
        if unmarked:
            log.warning(
                "plugin %r defines %s without @hookimpl (facerecon.kernel.contract.hookimpl): never called",
                name,
                ", ".join(unmarked),
            )
        return True

    def unregister_plugin(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self._stages = None

    def _refuse(self, name: str, reason: str, installed: bool = False) -> None:
        """Record and warn that plugin ``name`` was refused; an installed one (an entry point) is warned
        about once per process, however many hosts a command builds."""
        message = f"plugin {name!r} {reason}"
        self.failures[name] = message
        if installed:
            _warn_once(f"{message}; it was not loaded")
        else:
            log.warning("%s; it was not loaded", message)

    # -- command-line extensions (host hookspecs) -------------------------------------------------

    def add_pipeline_flags(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Let plugins add their flags to a command that builds a pipeline."""
        self.pm.hook.facerecon_add_pipeline_flags(parser=parser)

    def apply_pipeline_flags(self, config: PipelineConfig, args: argparse.Namespace) -> PipelineConfig:
        """``config`` with every plugin's pipeline flags applied, each plugin given the previous result."""
        for impl in self.pm.hook.facerecon_apply_pipeline_flags.get_hookimpls():
            changed = impl.function(config=config, args=args)
            if changed is not None:
                config = changed
        return config

    def make_pipeline(self, config: PipelineConfig) -> Any | None:
        """A plugin's replacement for the local pipeline of ``config`` (``facerecon_make_pipeline``), or None."""
        return self.pm.hook.facerecon_make_pipeline(config=config)

    def render_scene(
        self, model: str | None, expressions: str | None, seed: int, photo: Any, landmarks: Any
    ) -> SyntheticScene:
        """A synthetic scene with known geometry from the plugin implementing ``facerecon_render_scene``."""
        scene = self.pm.hook.facerecon_render_scene(
            model=model, expressions=expressions, seed=seed, photo=photo, landmarks=landmarks
        )
        if not isinstance(scene, SyntheticScene):
            raise ConfigError("no loaded plugin renders synthetic scenes (the built-in `synthetic-faces` does)")
        return scene

    # -- stages --------------------------------------------------------------------------------

    @property
    def stages(self) -> dict[tuple[str, str], StageSpec]:
        """(kind, name) -> spec for every registered stage."""
        if self._stages is None:
            self._stages = self._collect()
        return self._stages

    def _collect(self) -> dict[tuple[str, str], StageSpec]:
        stages: dict[tuple[str, str], StageSpec] = {}
        impls = self.pm.hook.facerecon_register_stages.get_hookimpls()
        # get_hookimpls() lists plugins in registration order: later plugins override earlier ones.
        for impl in impls:
            info = self.plugins.get(impl.plugin_name, LoadedPlugin(impl.plugin_name, "(local)", "0"))
            registrar = StageRegistrar(info.name, info.distribution, info.version)
            try:
                impl.function(registry=registrar)
            except (Exception, SystemExit) as exc:
                reason = f"failed while registering its stages: {type(exc).__name__}: {exc}"
                self._refuse(info.name, reason, info.distribution != "(local)")
                continue
            for spec in registrar.collected:
                key = (spec.kind, spec.name)
                if key in stages:
                    log.warning(
                        "%s %r from plugin %r replaces the one from plugin %r",
                        spec.kind,
                        spec.name,
                        spec.plugin,
                        stages[key].plugin,
                    )
                stages[key] = spec
        return stages

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self.stages if k == kind)

    def auto(self, kind: str, schemes: tuple[str, ...] | None = None) -> str:
        """The name ``"auto"`` resolves to: the available stage of ``kind`` with the highest priority, among
        those that accept every landmark scheme in ``schemes`` (the detector's; None = not known)."""
        candidates = [s for (k, _), s in self.stages.items() if k == kind and s.is_available()]
        if not candidates:
            raise ConfigError(f"no available {kind} for 'auto' (registered: {', '.join(self.names(kind)) or 'none'})")
        fitting = [s for s in candidates if s.takes(schemes)]
        if not fitting:
            raise ConfigError(
                f"no available {kind} takes {' or '.join(schemes or ())} landmarks (available: "
                + ", ".join(f"{s.name} takes {s.accepts_text()}" for s in candidates)
                + ")"
            )
        return max(fitting, key=lambda s: (s.priority, s.name)).name

    def spec(self, kind: str, name: str) -> StageSpec:
        """The stage registered as ``name``. ``NAME@INSTANCE`` is another instance of ``NAME`` with its own
        options table (e.g. two ``remote`` refiners: ``remote@medium``, ``remote@fine``)."""
        if kind not in STAGE_KINDS:
            raise ConfigError(f"unknown stage kind {kind!r} (known: {', '.join(STAGE_KINDS)})")
        base, at, instance = name.partition("@")
        found = self.stages.get((kind, name)) or (self.stages.get((kind, base)) if at and instance else None)
        if found is None:
            known = ", ".join(self.names(kind)) or "none registered"
            why = self.excluded(base if at and instance else name)
            if why is not None:  # not unknown: the configuration kept it out
                raise ConfigError(f"{kind} {name!r} {why} (known: {known})")
            if self.kept_out:  # it may be a stage of one of them (a plugin's stages need not share its name)
                known += "; kept from loading by the configuration's [plugins] lists: " + ", ".join(
                    sorted(self.kept_out)
                )
            raise ConfigError(f"unknown {kind}: {name!r} (known: {known})")
        return found

    def excluded(self, name: str) -> str | None:
        """Why the configuration's ``[plugins]`` lists kept plugin ``name`` from loading ("is blocked by
        ..." / "is not in ... allow list"), or None when they did not. A plugin's entry-point name is
        usually its stage's name (every built-in's is)."""
        if name in self.block:
            return "is blocked by the configuration's [plugins] block list"
        if self.kept_out.get(name) == "allow":
            return "is not in the configuration's [plugins] allow list"
        return None

    def create(self, kind: str, name: str, options: Mapping[str, Any] | None, device: str) -> object:
        """Build stage ``name`` of ``kind`` with its options table; checks it meets the protocol."""
        spec = self.spec(kind, name)
        who = f"{kind} {name!r} from plugin {spec.plugin!r}"
        try:
            parsed = spec.make_options(options)
            stage = spec.factory(parsed, device)
        except FaceReconError:  # the configuration's, a model file's, a server's: said as they are
            raise
        except Exception as exc:
            raise PluginError(f"{who} failed to build: {type(exc).__name__}: {exc}") from exc
        protocol = STAGE_PROTOCOLS[kind]
        if not isinstance(stage, protocol):
            members = _protocol_members(protocol)
            missing = [m for m in members if not hasattr(stage, m)] or members
            raise PluginError(f"{who} does not implement the {kind} protocol (it lacks {', '.join(missing)})")
        problem = stage_name_problem(stage.stage) if kind == "refiner" else None
        if problem is not None:  # a remote refiner's stage comes from its server: checked the same
            raise PluginError(f"{who} names its stage {stage.stage!r}: {problem}")
        return stage


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a warning about the installed plugins once per process (a command builds more than one host)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def _builtin_first(name: str, dist: str) -> tuple[int, str]:
    return (0 if dist == BUILTIN_DISTRIBUTION else 1, name)


def _protocol_members(protocol: type) -> list[str]:
    """A protocol's methods and attributes (``stage`` of a refiner is an annotation)."""
    names = {*vars(protocol), *getattr(protocol, "__annotations__", {})}
    return sorted(n for n in names if not n.startswith("_"))
