"""The pipeline: detector -> (segmenter) -> regressor -> refiners, on one image at a time.

    pipe = Pipeline.from_config("facerecon.toml")      # or Pipeline.from_config() for the defaults
    rec = pipe(image_rgb_uint8)                         # -> Reconstruction
    mesh = rec.reconstructions[0].final.mesh

Stages are built on first use and kept for the life of the pipeline (models load once per process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from facerecon.kernel.contract.errors import (
    ClosedError,
    ConfigError,
    FaceReconError,
    InputError,
    PluginError,
    RecordError,
)
from facerecon.kernel.contract.images import check_image
from facerecon.kernel.contract.records import (
    CoarseResult,
    Face,
    FaceReconstruction,
    Reconstruction,
    Refinement,
    Segmentation,
    StageResult,
)
from facerecon.kernel.contract.stages import Detector, Refiner, Regressor, Segmenter, check_result
from facerecon.kernel.host.config import DEFAULT_REFINERS, PipelineConfig
from facerecon.kernel.host.devices import resolve_device
from facerecon.kernel.host.imageio import fit_within, load_image
from facerecon.kernel.host.memory import numpy_small_pages
from facerecon.kernel.host.registry import PluginHost
from facerecon.kernel.host.threads import limit_threads

A = TypeVar("A")
B = TypeVar("B")

log = logging.getLogger(__name__)


WITHOUT_DEFAULT_REFINER = "the default pipeline runs without refiner"
"""How the warning about a default refiner this installation cannot run begins (a batch's later workers
filter it out: said once a run)."""


class Pipeline:
    """Runs the configured stages. Thread-compatible, not thread-safe: one pipeline per thread."""

    def __init__(self, config: PipelineConfig | None = None, host: PluginHost | None = None) -> None:
        if config is not None and not isinstance(config, PipelineConfig):
            raise ConfigError(
                f"Pipeline takes a PipelineConfig, got {type(config).__name__}: use Pipeline.from_config for a "
                "TOML file path or a mapping"
            )
        config = config or PipelineConfig()
        self.host = host or PluginHost(allow=config.allow_plugins, block=config.block_plugins)
        # "auto" picks the highest-priority available stage of its kind (see StageRegistrar.register); a
        # regressor that takes the detector's landmarks.
        if config.detector == "auto":
            config = replace(config, detector=self.host.auto("detector"))
        schemes = self.host.spec("detector", config.detector).produces
        if config.regressor == "auto":
            config = replace(config, regressor=self.host.auto("regressor", schemes))
        if config.refiners == DEFAULT_REFINERS:
            config = replace(config, refiners=self._available_default_refiners())
        self.config = config
        self.device = resolve_device(self.config.device)
        self._stages: dict[tuple[str, str], Any] = {}
        self._helper: ThreadPoolExecutor | None = None  # runs a stage beside another (see _side_by_side)
        self._closed = False
        # Fail fast on unknown plugin names and stages that cannot use the detector's landmarks, before any
        # model loads or photo is read.
        self._check_chain(schemes)
        self._check_options()
        self._mesh_units = self._check_mesh_units()
        numpy_small_pages()  # a process that makes a pipeline does per-photo work: plain pages (memory.py)

    def _available_default_refiners(self) -> tuple[str, ...]:
        """The default refiners this installation can run; one warning names each one skipped and why: not
        installed or not available here (with how to get it, its ``install_hint``), or blocked by the
        configuration's ``[plugins]`` lists. It says which flags choose the refiners without the warning:
        ``--refiners ''``, and ``--fast`` only where its stage (the first default refiner) can run."""
        fast = self.host.stages.get(("refiner", DEFAULT_REFINERS[0]))
        fast_runs = fast is not None and fast.is_available()
        kept = []
        for name in DEFAULT_REFINERS:
            spec = self.host.stages.get(("refiner", name))
            if spec is not None and spec.is_available():
                kept.append(name)
                continue
            excluded = self.host.excluded(name) if spec is None else None
            if excluded is not None:  # e.g. "is blocked by the configuration's [plugins] block list"
                reason = excluded.removeprefix("is ")
            else:
                reason = "not installed" if spec is None else "not available here"
            hint = f": {spec.install_hint}" if spec is not None and spec.install_hint else ""
            flags = "--refiners '' or --fast keeps" if fast_runs else "--refiners '' keeps"
            log.warning(f"{WITHOUT_DEFAULT_REFINER} %r (%s)%s; %s the faster path", name, reason, hint, flags)
        return tuple(kept)

    def _check_options(self) -> None:
        """Every options table is checked now, also of stages this pipeline does not run: a typo in a key
        fails here instead of passing silently until the stage is enabled. A refusal names the table and the
        config file (``[options.KIND.NAME] in FILE: ...``). A table for a stage no plugin registers is a
        warning naming them (maybe the plugin is installed on another machine), not an error."""
        source = self.config.source
        for (kind, name), table in self.config.options.items():
            try:
                spec = self.host.spec(kind, name)
            except ConfigError as exc:  # maybe a plugin installed on another machine: say so, go on
                where = f"[options.{kind}.{name}]" + (f" in {source}" if source is not None else "")
                log.warning("%s is for no registered stage (%s); its options are not checked", where, exc)
                continue
            spec.make_options(table, source=source, table_name=name)

    def _check_chain(self, schemes: tuple[str, ...] | None) -> None:
        config = self.config
        twice = sorted({name for name in config.refiners if config.refiners.count(name) > 1})
        if twice:  # each refiner's stage writes its own files: a second run of it would replace the first's
            listed = ", ".join(map(repr, twice))
            raise ConfigError(f"refiner(s) {listed} listed more than once in {list(config.refiners)}")
        stages = [("regressor", config.regressor)] + [("segmenter", config.segmenter)] * bool(config.segmenter)
        stages += [("refiner", name) for name in config.refiners]
        for kind, name in stages:
            spec = self.host.spec(kind, str(name))
            if spec.takes(schemes):
                continue
            given = " or ".join(schemes or ())
            fix = [s.name for (k, _), s in self.host.stages.items() if k == kind and s.takes(schemes)]
            detectors = [
                s.name
                for (k, _), s in self.host.stages.items()
                if k == "detector" and s.produces and spec.takes(s.produces)
            ]
            raise ConfigError(
                f"{kind} {name!r} takes {spec.accepts_text()} landmarks, but detector {config.detector!r} gives "
                f"{given}: use a {kind} that takes them ({', '.join(sorted(fix)) or 'none is registered'}) or a "
                f"detector whose landmarks it takes ({', '.join(sorted(detectors)) or 'none is registered'})"
            )

    def _check_mesh_units(self) -> dict[str, tuple[str, ...] | None]:
        """Every refiner must take the mesh units ("px" or "mm" + camera) the regressor gives with its
        options; returns what each refiner takes, checked again on every mesh it is handed."""
        config = self.config
        regressor = self.host.spec("regressor", config.regressor)
        given = regressor.units_for(regressor.make_options(config.options_for("regressor", config.regressor)))
        taken: dict[str, tuple[str, ...] | None] = {}
        for name in config.refiners:
            spec = self.host.spec("refiner", name)
            taken[name] = units = spec.units_for(spec.make_options(config.options_for("refiner", name)))
            if given is None or units is None or set(given) <= set(units):
                continue
            fix = [
                s.name
                for (k, _), s in self.host.stages.items()
                if k == "refiner"
                and (s.mesh_units is None or (isinstance(s.mesh_units, tuple) and set(given) <= set(s.mesh_units)))
            ]
            raise ConfigError(
                f"refiner {name!r} takes meshes in {'|'.join(units)}, but regressor {config.regressor!r} gives "
                f"{'|'.join(given)} with these options: use a refiner that takes them "
                f"({', '.join(sorted(fix)) or 'none is registered'}) or change the regressor's options "
                f"(e.g. its camera)"
            )
        return taken

    @classmethod
    def from_config(
        cls,
        config: PipelineConfig | str | Path | Mapping[str, Any] | None = None,
        host: PluginHost | None = None,
    ) -> Pipeline:
        """From a config object, a TOML file path, a parsed TOML mapping, or None for the defaults."""
        if config is None or isinstance(config, PipelineConfig):
            return cls(config, host)
        if isinstance(config, (str, Path)):
            return cls(PipelineConfig.load(config), host)
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"a pipeline config is a PipelineConfig, a TOML file path or a mapping, got {type(config).__name__}"
            )
        return cls(PipelineConfig.from_mapping(config), host)

    # -- stages, built once ----------------------------------------------------------------------

    def stage(self, kind: str, name: str) -> Any:
        key = (kind, name)
        if key not in self._stages:
            if self._closed:  # rebuilt now, its models would load again and never be closed
                raise ClosedError(f"this pipeline was closed; its {kind} {name!r} is unloaded: build a new Pipeline")
            self._stages[key] = self.host.create(kind, name, self.config.options_for(kind, name), self.device)
            # After the stage loaded its libraries (BLAS, torch): pools sized for per-face work (threads.py).
            limit_threads(self.config.blas_threads, self.config.torch_threads)
        return self._stages[key]

    @property
    def detector(self) -> Detector:
        return self.stage("detector", self.config.detector)

    @property
    def regressor(self) -> Regressor:
        return self.stage("regressor", self.config.regressor)

    @property
    def segmenter(self) -> Segmenter | None:
        name = self.config.segmenter
        return None if name is None else self.stage("segmenter", name)

    @property
    def refiners(self) -> list[tuple[str, Refiner]]:
        built = [(name, self.stage("refiner", name)) for name in self.config.refiners]
        seen: dict[str, str] = {}
        for name, refiner in built:  # each stage's files are named after it: two of one name overwrite
            if refiner.stage in seen:
                raise ConfigError(
                    f"refiners {seen[refiner.stage]!r} and {name!r} both name their stage {refiner.stage!r}: "
                    "the second's files and records would replace the first's; run one of them"
                )
            seen[refiner.stage] = name
        return built

    def plugin_ids(self) -> dict[str, tuple[str, str]]:
        """(plugin, version) of the detector, regressor and segmenter this pipeline runs (for result.json;
        refiners are named per stage there)."""
        config = self.config
        named = {"detector": config.detector, "regressor": config.regressor, "segmenter": config.segmenter}
        return {kind: (name, self.host.spec(kind, name).version) for kind, name in named.items() if name}

    def warm_up(self) -> None:
        """Build every configured stage now (loads the models) instead of on the first image, and run the
        stages' optional ``warm_up()`` (see :mod:`facerecon.kernel.contract.stages`)."""
        stages = [self.detector, self.regressor, self.segmenter, *(stage for _, stage in self.refiners)]
        for stage in stages:
            warm = getattr(stage, "warm_up", None)
            if callable(warm):
                warm()

    def close(self) -> None:
        """Unload the stages (models, remote channels); the pipeline cannot run again (``ClosedError``)."""
        self._closed = True
        if self._helper is not None:
            self._helper.shutdown(wait=True)
            self._helper = None
        for stage in self._stages.values():
            close = getattr(stage, "close", None)
            if callable(close):
                close()
        self._stages.clear()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running ---------------------------------------------------------------------------------

    def __call__(
        self,
        image: np.ndarray,
        *,
        all_faces: bool | None = None,
        before_face: Callable[[], None] | None = None,
        before_stage: Callable[[], None] | None = None,
    ) -> Reconstruction:
        """Reconstruct the largest face (every face with ``all_faces``, default: the config's) of a
        ``uint8 (H, W, 3)`` RGB image. ``before_face`` runs before each face's stages, ``before_stage``
        before every stage (a server stops a call's work there, by raising, once the call has ended). A
        face-less image gives a Reconstruction with no faces, not an error.
        """
        image = check_image(image)
        timings: dict[str, float] = {}
        if before_stage is not None:
            before_stage()
        start = time.perf_counter()
        faces = self.detect(image)
        timings["detector"] = _ms_since(start)
        every = self.config.all_faces if all_faces is None else all_faces
        chosen = faces if every else faces[:1]
        results = []
        for index, face in enumerate(chosen):
            if before_face is not None:
                before_face()
            results.append(self.reconstruct_face(image, face, index, timings, before_stage))
        return Reconstruction(
            image_size=(image.shape[1], image.shape[0]),
            faces=tuple(faces),
            reconstructions=tuple(results),
            timings_ms=timings,
        )

    def reconstruct_file(self, path: str | Path) -> Reconstruction:
        return self(load_image(path, max_pixels=self.config.max_image_pixels))

    def detect(self, image: np.ndarray) -> list[Face]:
        """Every face, largest box first, in ``image``'s frame. The detector sees the image shrunk to
        ``config.detect_max_side`` (memory, speed, and native code's own size limits); its faces are
        scaled back."""
        image = check_image(image)
        small, factor = fit_within(image, self.config.detect_max_side)
        faces = self._run("detector", self.config.detector, self.detector.detect, small)
        height, width = small.shape[:2]
        for face in faces:  # a box off the image is a detector's frame mix-up (normalised, another image's)
            x0, y0, x1, y1 = (float(v) for v in face.box)
            if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
                box = [round(v, 1) for v in (x0, y0, x1, y1)]
                raise self._broke("detector", self.config.detector, f"a face box {box} off the {width}x{height} image")
        if factor != 1.0:
            faces = [_scaled_face(face, factor) for face in faces]
        return sorted(faces, key=lambda f: -f.area)

    def reconstruct_face(
        self,
        image: np.ndarray,
        face: Face,
        index: int = 0,
        timings: dict[str, float] | None = None,
        before_stage: Callable[[], None] | None = None,
        coarse: CoarseResult | None = None,
    ) -> FaceReconstruction:
        """The face's stages; ``coarse``: the regressor's result when the caller already has it (a video's
        frame, its pose filtered), so only the segmenter and refiners run."""
        image = check_image(image)
        _check_face(face, image)
        if coarse is not None and not isinstance(coarse, CoarseResult):
            raise InputError(f"coarse must be a CoarseResult or None, got {type(coarse).__name__}")
        timings = timings if timings is not None else {}
        checkpoint = before_stage or (lambda: None)

        def segment() -> Segmentation | None:
            if self.segmenter is None:
                return None
            start = time.perf_counter()
            segmenter, name = self.segmenter, str(self.config.segmenter)
            result = self._run("segmenter", name, segmenter.segment, image, face)
            if result.labels.shape != image.shape[:2]:
                given = f"a label map of {result.labels.shape} for an image of {image.shape[:2]}"
                raise self._broke("segmenter", name, given)
            _accumulate(timings, "segmenter", _ms_since(start))
            return result

        def regress() -> tuple[CoarseResult, float]:
            start = time.perf_counter()
            if coarse is not None:
                return coarse, _ms_since(start)
            result = self._run("regressor", self.config.regressor, self.regressor.regress, image, face)
            return result, _ms_since(start)

        checkpoint()
        if self._overlapped(coarse):  # the segmenter and the regressor are independent: their waits overlap
            segmentation, (coarse, elapsed) = self._side_by_side(segment, regress)
        else:
            segmentation = segment()
            checkpoint()
            coarse, elapsed = regress()
        _accumulate(timings, "regressor", elapsed)
        spec = self.host.spec("regressor", self.config.regressor)
        stages = [StageResult("coarse", spec.name, spec.version, coarse.mesh, elapsed)]
        mesh = coarse.mesh
        for name, refiner in self.refiners:
            units = self._mesh_units.get(name)
            if units is not None and mesh.units not in units:
                raise PluginError(
                    f"refiner {name!r} takes meshes in {'|'.join(units)}; the stage before it gave one in "
                    f"{mesh.units!r} (a stage that declared other units, or none)"
                )
            checkpoint()
            start = time.perf_counter()
            output = self._run("refiner", name, refiner.refine, image, face, mesh, segmentation)
            refinement = output if isinstance(output, Refinement) else Refinement(output)
            mesh = refinement.mesh
            elapsed = _ms_since(start)
            _accumulate(timings, f"refiner:{name}", elapsed)
            spec = self.host.spec("refiner", name)
            stages.append(
                StageResult(
                    refiner.stage, spec.name, spec.version, mesh, elapsed, refinement.maps, dict(refinement.phases)
                )
            )
        return FaceReconstruction(face, index, coarse, tuple(stages), segmentation)

    def _overlapped(self, coarse: CoarseResult | None) -> bool:
        """Whether the segmenter and the regressor run side by side: both run, and one of them runs
        elsewhere (``runs_elsewhere``, :mod:`facerecon.kernel.contract.stages`), so it mostly waits."""
        if self.segmenter is None or coarse is not None:
            return False
        return any(getattr(stage, "runs_elsewhere", False) for stage in (self.segmenter, self.regressor))

    def _side_by_side(self, first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
        """``first()`` on the pipeline's helper thread while ``second()`` runs on this one; both results.
        An error is raised as a sequential run would raise it: the first's, else the second's."""
        if self._helper is None:
            self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facerecon-overlap")
        future = self._helper.submit(first)
        try:
            second_result = second()
        except BaseException:
            error = future.exception()  # waits: nothing of this face runs on once this returns
            if error is not None:
                raise error from None
            raise
        return future.result(), second_result

    def _run(self, kind: str, name: str, method: Callable[..., Any], *args: Any) -> Any:
        """``method(*args)``'s result (a stage's call), or a PluginError naming the stage and its plugin when it
        breaks the stage contract or fails with an error of its own. facerecon's errors about the input,
        the configuration, a model file or a server pass as they are (a stage refusing a photo is the
        photo's failure, not the plugin's)."""
        try:
            result = method(*args)
        except RecordError as exc:  # a record the stage built wrongly
            raise self._broke(kind, name, str(exc)) from exc
        except FaceReconError:
            raise
        except Exception as exc:
            plugin = self.host.spec(kind, name).plugin
            raise PluginError(f"{kind} {name!r} (plugin {plugin!r}) failed: {type(exc).__name__}: {exc}") from exc
        problem = check_result(kind, result)
        if problem is not None:
            raise self._broke(kind, name, problem)
        return result

    def _broke(self, kind: str, name: str, problem: str) -> PluginError:
        plugin = self.host.spec(kind, name).plugin
        return PluginError(f"{kind} {name!r} (plugin {plugin!r}) broke the stage contract: {problem}")


def _check_face(face: Face, image: np.ndarray) -> None:
    """InputError unless ``face`` is a Face whose box overlaps ``image`` (not a face of another image)."""
    if not isinstance(face, Face):
        raise InputError(f"face must be a Face (one of Pipeline.detect's), got {type(face).__name__}")
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in face.box)
    if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
        box = [round(v, 1) for v in (x0, y0, x1, y1)]
        raise InputError(f"the face's box {box} is off the {width}x{height} image: a face of another image?")


def _scaled_face(face: Face, factor: float) -> Face:
    """``face`` found in an image shrunk by ``factor`` (see fit_within), in the original image's frame:
    pixel centres map as x -> (x + 0.5) * factor - 0.5; landmark depth (pixels) scales by the factor."""
    points = np.asarray(face.landmarks.points, np.float64)
    points = np.column_stack([(points[:, :2] + 0.5) * factor - 0.5, points[:, 2] * factor])
    box = (np.asarray(face.box, np.float64) + 0.5) * factor - 0.5
    return replace(face, box=box, landmarks=replace(face.landmarks, points=points))


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _accumulate(timings: dict[str, float], key: str, value: float) -> None:
    timings[key] = timings.get(key, 0.0) + value
