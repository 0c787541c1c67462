"""A batch of photos through the pipeline in a worker process, so one photo that crashes native code (an
abort or a segfault inside OpenCV, MediaPipe, dlib, ...) costs that photo, not the batch.

    with BatchWorker(config, WriteOptions(formats=("obj",))) as worker:   # loads the models once
        outcome = worker.run(Path("photo.jpg"), Path("out/photo"))        # -> Outcome (never raises for a photo)

The worker is a fresh interpreter (``spawn``: no locks or threads inherited from the caller), built once
and reused for every photo; when it dies on a photo, that photo's Outcome says how, and the next photo gets
a new worker. Ctrl-C in a terminal (or SIGTERM to the process group) reaches the worker too: it ignores
SIGINT and SIGTERM and the caller decides (:meth:`BatchWorker.kill`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from facerecon.kernel import Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import (
    ConfigError,
    FaceReconError,
    InputError,
    ModelFileError,
    NoFaceError,
    PluginError,
)
from facerecon.kernel.host.memory import numpy_small_pages
from facerecon.kernel.host.pipeline import WITHOUT_DEFAULT_REFINER

log = logging.getLogger("facerecon")

_FATAL = {cls.__name__: cls for cls in (ConfigError, PluginError, ModelFileError, InputError)}
"""Errors building the pipeline that the caller re-raises as they are (a usage error, exit 2)."""


@dataclass(frozen=True)
class WriteOptions:
    """What each photo's output folder holds (see facerecon.outputs.folder.write_outputs); ``frame``: the
    mesh files' coordinates, "head" (pose removed, y up, mm) or "image" (as in the photo)."""

    formats: tuple[str, ...] = ("obj",)
    texture_size: int | None = None  # None: sized to each face (outputs.folder.auto_texture_size)
    save_phases: bool = False
    frame: str = "head"
    png_compression: int = 1


@dataclass(frozen=True)
class Outcome:
    """One photo's result: ``error`` is None when its folder was written."""

    input: str
    output: str | None
    faces: int
    seconds: float
    error: str | None = None
    crashed: bool = False
    """The worker process died on this input (the error says how)."""
    frames: int | None = None
    """For a video: the frames reconstructed (None for a photo)."""


class BatchWorker:
    """One worker process holding a built pipeline; see the module docstring."""

    def __init__(
        self,
        config: PipelineConfig,
        write: WriteOptions,
        *,
        start_timeout_s: float = 600.0,
        quiet_defaults: bool = False,
    ) -> None:
        self.config = config
        self.write = write
        self.start_timeout_s = start_timeout_s
        self.quiet_defaults = quiet_defaults
        """Leave out the warning of a default refiner this installation cannot run (another worker gives it)."""
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None

    def __enter__(self) -> BatchWorker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the worker and wait until its pipeline is built; a bad config or model file raises here
        (ConfigError, PluginError, ModelFileError), as building the pipeline in this process would."""
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_serve,
            args=(child, self.config, self.write, self.quiet_defaults),
            name="facerecon-worker",
            daemon=True,
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        if not parent.poll(self.start_timeout_s):
            self.kill()
            raise PluginError(f"the pipeline did not load within {self.start_timeout_s:g} s")
        try:
            message = parent.recv()
        except (EOFError, OSError):
            reason = self._death()
            raise PluginError(f"the worker process died while loading the pipeline ({reason})") from None
        if message[0] == "fatal":
            _, kind, text = message
            self.close()
            raise _FATAL.get(kind, PluginError)(text)

    def run(self, path: Path, out_dir: Path, video: Any = None) -> Outcome:
        """Reconstruct ``path`` into ``out_dir``; ``video``: a facerecon.video_reconstruct.VideoOptions when
        ``path`` is a video or an image sequence. Every failure, a crash of the worker included, is the
        Outcome's ``error``."""
        if self._conn is None:
            self.start()
        assert self._conn is not None
        start = time.perf_counter()
        try:
            self._conn.send((str(path), str(out_dir), video))
            return self._conn.recv()
        except (EOFError, OSError):
            reason = self._death()
            return Outcome(
                str(path),
                None,
                0,
                round(time.perf_counter() - start, 3),
                f"the worker process died ({reason}) on this input, in native code; the batch went on "
                "with a new worker",
                crashed=True,
            )

    def _death(self) -> str:
        """Reap a dead worker; says how it ended."""
        process, self._process, self._conn = self._process, None, None
        process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join()
        code = process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def interrupt(self, wait_s: float = 0.5) -> Outcome | None:
        """Stop the worker for Ctrl-C: the outcome of the photo it was on when that photo had just been
        finished (its folder written, the message on its way), else None; then :meth:`kill`."""
        outcome = None
        if self._conn is not None:
            try:
                if self._conn.poll(wait_s):
                    outcome = self._conn.recv()
            except (EOFError, OSError):
                pass
        self.kill()
        return outcome

    def kill(self) -> None:
        """Stop the worker now, mid-photo if need be (its half-written folder is a stale ``.partial``)."""
        if self._process is not None:
            self._process.kill()
            self._death()

    def close(self) -> None:
        """Ask the worker to finish and wait for it (the pipeline closes its models there)."""
        if self._conn is None:
            return
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(30.0)
        self.kill()


def _serve(conn: Connection, config: PipelineConfig, write: WriteOptions, quiet_defaults: bool = False) -> None:
    """The worker: build the pipeline, then reconstruct each (path, out_dir) received until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C and SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(format="facerecon: %(levelname)s: %(message)s", level=logging.WARNING)
    if quiet_defaults:  # `--jobs N`: the first worker says it, once for the run (not once per worker)
        logging.getLogger("facerecon.kernel.host.pipeline").addFilter(
            lambda record: not str(record.msg).startswith(WITHOUT_DEFAULT_REFINER)
        )
    writers = threading.Thread(target=_warm_up_writers, name="facerecon-warm-up", daemon=True)
    writers.start()  # overlaps the models' loading (native code, off the GIL) on another core
    try:
        host = PluginHost(allow=config.allow_plugins, block=config.block_plugins)
        pipeline = host.make_pipeline(config) or Pipeline.from_config(config, host)  # e.g. --remote pipeline=
        numpy_small_pages()  # (a local Pipeline did; a remote one writes the outputs here all the same)
        pipeline.warm_up()
        writers.join()
    except Exception as exc:
        kind = type(exc).__name__
        conn.send(("fatal", kind, str(exc)) if kind in _FATAL else ("fatal", "PluginError", f"{kind}: {exc}"))
        return
    conn.send(("ready",))
    with pipeline:
        while True:
            try:
                job = conn.recv()
            except EOFError:  # the caller is gone
                return
            if job is None:
                return
            outcome = reconstruct_job(pipeline, Path(job[0]), Path(job[1]), write, job[2])
            try:
                conn.send(outcome)
            except OSError:  # the caller is gone (killed): its folder is written, a re-run skips it
                return


def _warm_up_writers() -> None:
    """Import the output writers and load the rasteriser's and the texture sampler's compiled kernels (what
    a first photo would otherwise wait ~1 s for); a failure here only leaves that work to the first photo."""
    try:
        import scipy.spatial  # noqa: F401  (the texture's mirror lookup)

        import facerecon.outputs.folder  # noqa: F401
        from facerecon.geometry import raster, sampling

        raster.warm_up()
        sampling.warm_up()
        import numpy as np

        from facerecon.outputs import objtext

        objtext.face_lines(np.ones((1, 3), np.int64), with_uvs=True)
    except Exception as exc:  # e.g. numba missing or broken: the numpy rasteriser takes over later
        log.debug("warming up the writers failed: %s", exc)


def reconstruct_job(pipeline: Pipeline, path: Path, out_dir: Path, write: WriteOptions, video: Any) -> Outcome:
    """A photo, or (``video`` set: its VideoOptions) a video or image sequence."""
    if video is None:
        return reconstruct_one(pipeline, path, out_dir, write)
    from facerecon.video_reconstruct import reconstruct_video

    outcome = reconstruct_video(pipeline, path, out_dir, write, video)
    if outcome.error is not None:  # named as a photo's failure is (its input errors already start with it)
        log.error("%s", outcome.error if outcome.error.startswith(str(path)) else f"{path}: {outcome.error}")
    return outcome


def reconstruct_one(pipeline: Pipeline, path: Path, out_dir: Path, write: WriteOptions) -> Outcome:
    """Load, reconstruct and write one photo; every exception becomes the Outcome's error."""
    from facerecon.kernel.host.imageio import load_image
    from facerecon.outputs.folder import write_outputs

    start = time.perf_counter()
    try:
        image = load_image(path, max_pixels=pipeline.config.max_image_pixels)
        rec = pipeline(image)
        if not rec.faces:
            raise NoFaceError(f"{path}: no face found")
        write_outputs(
            rec,
            image,
            out_dir,
            source=str(path),
            formats=write.formats,
            texture_size=write.texture_size,
            png_compression=write.png_compression,
            save_phases=write.save_phases,
            frame=write.frame,
            plugins=pipeline.plugin_ids(),
        )
    except (InputError, NoFaceError) as exc:
        log.error("%s", exc)
        return Outcome(str(path), None, 0, round(time.perf_counter() - start, 3), str(exc))
    except Exception as exc:  # a plugin bug on one image must not end the batch
        log.error("%s: %s: %s", path, type(exc).__name__, exc, exc_info=not isinstance(exc, FaceReconError))
        return Outcome(str(path), None, 0, round(time.perf_counter() - start, 3), f"{type(exc).__name__}: {exc}")
    return Outcome(str(path), str(out_dir), len(rec.faces), round(time.perf_counter() - start, 3))
