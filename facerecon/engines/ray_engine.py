"""Run a batch on a Ray cluster (``pip install 'facerecon[ray]'``): ``facerecon reconstruct ... --engine ray
[--address ADDR]``, or from Python::

    from facerecon.engines.ray_engine import reconstruct_on_ray
    outcomes = reconstruct_on_ray(["a.jpg", "b.jpg"], "out", PipelineConfig(), address="auto")

Each stage is a Ray actor that builds only its own stage of the pipeline, once (stages load lazily):

* ``detect``: reads the photo from the shared path and finds its faces;
* ``coarse``: the regressor on the chosen face(s);
* ``refine``: the segmenter and refiners, then writes ``OUT/<stem>/`` to the shared path (atomically, as
  the local engine does). Videos run whole in this actor (their frames share filters and an identity).

A stage whose plugin declares it runs on CUDA (its registration's ``devices``) asks Ray for a GPU
(``num_gpus``; Ray sets the actor's CUDA_VISIBLE_DEVICES) when the config's device is ``cuda``, or ``auto``
on a cluster that has GPUs; the other stages run on the CPU with no GPU visible. ``cuda`` on a cluster
without a GPU is a ConfigError at start (``auto`` runs on the CPU there). Inputs are streamed: at most
``in_flight`` of them are between the stages at a time, so the driver's and the object store's memory stay
flat however long the list. An actor that dies is
restarted (its model reloaded) and its tasks are retried; a folder completed earlier in this run is not
rewritten by a retry, so nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from facerecon.batch import Outcome, WriteOptions
from facerecon.kernel import PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import ConfigError, NoFaceError, PluginError
from facerecon.kernel.contract.stages import check_result
from facerecon.outputs.folder import remove_stale_partials

STAGES = ("detect", "coarse", "refine")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'facerecon[ray]'") from None
    return ray


class StageWorker:
    """One stage of the pipeline in one process (made a Ray actor by :class:`RayEngine`). A job is a dict:
    ``path``, ``out_dir``, ``video`` (VideoOptions or None), ``started`` (the run's start, epoch seconds),
    and what the earlier stages added (``image``, ``faces``, ``coarse``) or ``error``."""

    def __init__(self, stage: str, config: PipelineConfig, write: WriteOptions) -> None:
        from facerecon.kernel import Pipeline

        self.stage = stage
        self.write = write
        if config.device == "cpu":  # a stage given no GPU: the libraries it loads must not take one either
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        self.pipeline = Pipeline(config)
        # load this stage's models now, once
        if stage == "detect":
            _ = self.pipeline.detector
        elif stage == "coarse":
            _ = self.pipeline.regressor
        else:
            _ = self.pipeline.segmenter, self.pipeline.refiners

    def pid(self) -> int:
        return os.getpid()

    def placement(self) -> dict[str, Any]:
        """Where this actor runs: its pid, the GPU ids Ray gave it, CUDA_VISIBLE_DEVICES (set by Ray for a
        GPU actor, "" for a CPU one) and the device its models run on."""
        import ray

        return {
            "pid": os.getpid(),
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": self.pipeline.device,
        }

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        if "error" not in job and "outcome" not in job:
            job = self._timed(job)
        if self.stage == STAGES[-1]:  # to the driver only what it reads: not the photo nor the meshes
            return {k: job[k] for k in ("path", "seconds", "outcome", "error") if k in job}
        return job

    def _timed(self, job: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            if self.stage == "detect":
                job = self._detect(job)
            elif self.stage == "coarse":
                job = self._coarse(job)
            else:
                job = self._refine(job)
        except Exception as exc:  # one input's failure, never the batch's
            from facerecon.kernel.contract.errors import InputError

            known = isinstance(exc, (InputError, NoFaceError))
            job = {**job, "error": str(exc) if known else f"{type(exc).__name__}: {exc}"}
        job["seconds"] = job.get("seconds", 0.0) + time.perf_counter() - start
        return job

    def _detect(self, job: dict[str, Any]) -> dict[str, Any]:
        if job["video"] is not None:
            return job  # a video runs whole in the refine stage
        from facerecon.kernel.host.imageio import load_image

        path = Path(job["path"])
        image = load_image(path, max_pixels=self.pipeline.config.max_image_pixels)
        begin = time.perf_counter()
        faces = self.pipeline.detect(image)
        if not faces:
            raise NoFaceError(f"{path}: no face found")
        return {**job, "image": image, "faces": faces, "timings": {"detector": (time.perf_counter() - begin) * 1000.0}}

    def _coarse(self, job: dict[str, Any]) -> dict[str, Any]:
        if job["video"] is not None:
            return job
        chosen = job["faces"] if self.pipeline.config.all_faces else job["faces"][:1]
        timings: dict[str, float] = dict(job["timings"])
        coarse = []
        for face in chosen:
            begin = time.perf_counter()
            result = self.pipeline.regressor.regress(job["image"], face)
            problem = check_result("regressor", result)
            if problem is not None:
                raise PluginError(f"regressor {self.pipeline.config.regressor!r} broke the stage contract: {problem}")
            coarse.append(result)
            timings["regressor"] = timings.get("regressor", 0.0) + (time.perf_counter() - begin) * 1000.0
        return {**job, "coarse": coarse, "timings": timings}

    def _refine(self, job: dict[str, Any]) -> dict[str, Any]:
        out_dir = Path(job["out_dir"])
        done = out_dir / ("result.json" if job["video"] is None else "video.json")
        if done.is_file() and done.stat().st_mtime >= job["started"]:
            # a retry of an input whose folder this run already completed: not written twice
            written = json.loads(done.read_text())
            if job["video"] is None:
                return {**job, "outcome": Outcome(job["path"], str(out_dir), len(written["reconstructions"]), 0.0)}
            frames = sum(1 for f in written["frames"] if f.get("output"))
            return {**job, "outcome": Outcome(job["path"], str(out_dir), frames, 0.0, frames=frames)}
        if job["video"] is not None:
            from facerecon.video_reconstruct import reconstruct_video

            outcome = reconstruct_video(self.pipeline, Path(job["path"]), out_dir, self.write, job["video"])
            if outcome.error is not None:
                return {**job, "error": outcome.error}
            return {**job, "outcome": outcome}
        from facerecon.kernel.contract.records import Reconstruction
        from facerecon.outputs.folder import write_outputs

        image, timings = job["image"], dict(job["timings"])
        results = []
        for index, (face, coarse) in enumerate(zip(job["faces"], job["coarse"], strict=False)):
            result = self.pipeline.reconstruct_face(image, face, index, timings, coarse=coarse)
            results.append(result)
        results = [  # the regressor's time as measured in the coarse stage
            replace(r, stages=(replace(r.stages[0], elapsed_ms=timings["regressor"] / len(results)),) + r.stages[1:])
            for r in results
        ]
        rec = Reconstruction((image.shape[1], image.shape[0]), tuple(job["faces"]), tuple(results), timings)
        write_outputs(
            rec,
            image,
            out_dir,
            source=job["path"],
            formats=self.write.formats,
            texture_size=self.write.texture_size,
            png_compression=self.write.png_compression,
            save_phases=self.write.save_phases,
            plugins=self.pipeline.plugin_ids(),
        )
        return {**job, "outcome": Outcome(job["path"], str(out_dir), len(results), 0.0)}


class RayEngine:
    """The batch engine on Ray, with the interface of facerecon.pool.WorkerPool (start, run, interrupt, close).

    address: a running cluster ("auto", "ray://host:10001", "127.0.0.1:6379"); None starts a local one (or
    uses the one this process already joined). replicas: actors per stage. in_flight: inputs between the
    stages at once (default 4 per replica). start_timeout_s: how long :meth:`start` waits for the actors to
    be placed and their models loaded (a ConfigError after it, not a hang on a cluster that lacks them)."""

    def __init__(
        self,
        config: PipelineConfig,
        write: WriteOptions,
        *,
        address: str | None = None,
        replicas: int = 1,
        in_flight: int | None = None,
        max_retries: int = 3,
        start_timeout_s: float = 600.0,
    ) -> None:
        if replicas < 1:
            raise ConfigError(f"--jobs must be at least 1, got {replicas}")
        self.config = config
        self.write = write
        self.address = address
        self.replicas = replicas
        self.in_flight = in_flight or 4 * replicas
        self.max_retries = max_retries
        self.start_timeout_s = start_timeout_s
        self.actors: dict[str, list[Any]] = {}
        self._started_ray = False
        self._pending: list[Any] = []
        self._inputs: dict[Any, str] = {}  # pending ref -> its input
        self._pids: list[int] = []  # the stage actors' processes, as started

    def gpu_stages(self) -> tuple[str, ...]:
        """The stages with a plugin that declares it runs on CUDA (``devices`` of its registration, shown by
        ``facerecon plugins``): only these ask Ray for a GPU."""
        from facerecon.kernel import Pipeline

        config = Pipeline(replace(self.config, device="cpu")).config  # the "auto" names resolved, no model loaded
        plugins = {
            "detect": [("detector", config.detector)],
            "coarse": [("regressor", config.regressor)],
            "refine": [("segmenter", config.segmenter)] * bool(config.segmenter)
            + [("refiner", name) for name in config.refiners],
        }
        host = PluginHost(allow=config.allow_plugins, block=config.block_plugins)
        return tuple(s for s in STAGES if any("cuda" in host.spec(k, str(n)).devices for k, n in plugins[s]))

    def resources(self, ray: Any) -> dict[str, dict[str, Any]]:
        """Each stage's actor options (``num_cpus``, ``num_gpus``) and its models' ``device``: half a CPU
        each; a GPU share for the stages that can use one (:meth:`gpu_stages`) when the config's device is
        ``cuda``, or ``auto`` on a cluster with GPUs; shares shrunk to fit the cluster (all replicas placed at
        once). The other stages run on the CPU (device "cpu", no GPU visible). ``--device cuda`` on a cluster
        without a GPU is a ConfigError, not actors waiting for ever."""
        total = ray.cluster_resources()
        actors = len(STAGES) * self.replicas
        cpus = min(0.5, float(total.get("CPU", 1.0)) / actors)
        cluster_gpus = float(total.get("GPU", 0.0))
        device = self.config.device
        if device == "cuda" and cluster_gpus == 0:
            raise ConfigError(
                "--device cuda: the Ray cluster has no GPU (its resources: "
                f"{', '.join(f'{k} {v:g}' for k, v in sorted(total.items()) if '.' not in k and ':' not in k)}); "
                "use --device auto (the CPU when there is no GPU) or add GPU nodes"
            )
        on_gpu = self.gpu_stages() if device == "cuda" or (device == "auto" and cluster_gpus > 0) else ()
        share = min(1.0, cluster_gpus / max(1, len(on_gpu) * self.replicas))
        return {
            s: {"num_cpus": cpus, "num_gpus": share, "device": device}
            if s in on_gpu
            else {"num_cpus": cpus, "num_gpus": 0.0, "device": "cpu"}
            for s in STAGES
        }

    def start(self) -> None:
        ray = _import_ray()
        if not ray.is_initialized():
            _check_reachable(self.address)
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    logging_level="WARNING",
                    log_to_driver=False,
                    # a local cluster (no address) listens on loopback only
                    _node_ip_address="127.0.0.1" if self.address is None else None,
                )
            except ConnectionError as exc:
                raise ConfigError(f"cannot join the Ray cluster at {self.address}: {exc}") from None
            self._started_ray = True
        try:
            resources = self.resources(ray)
        except ConfigError:
            self.close()
            raise
        remote = ray.remote(StageWorker)
        for stage in STAGES:
            wanted = resources[stage]
            options = {"num_cpus": wanted["num_cpus"], "num_gpus": wanted["num_gpus"]}
            options |= {"max_restarts": -1, "max_task_retries": self.max_retries, "enable_task_events": False}
            config = replace(self.config, device=wanted["device"])
            self.actors[stage] = [
                remote.options(**options).remote(stage, config, self.write) for _ in range(self.replicas)
            ]
        try:  # wait until every actor is placed and has loaded its stage; a bad config or model file fails here
            self._pids = ray.get(
                [actor.pid.remote() for actors in self.actors.values() for actor in actors],
                timeout=self.start_timeout_s,
            )
        except ray.exceptions.GetTimeoutError:
            self.close()
            asked = ", ".join(f"{s}: {r['num_cpus']:g} CPU {r['num_gpus']:g} GPU" for s, r in resources.items())
            raise ConfigError(
                f"the Ray stage actors were not all placed and loaded within {self.start_timeout_s:g} s: the "
                f"cluster may lack what they ask for ({asked}, x{self.replicas}) or they are still loading"
            ) from None
        except ray.exceptions.RayActorError as exc:
            self.close()
            cause = exc.__cause__ or exc
            raise ConfigError(f"a Ray stage actor could not start: {cause}") from None

    def run(self, tasks: Iterable[tuple[Path, Path, Any]]) -> Iterator[Outcome]:
        """Each task's Outcome as it finishes; at most ``in_flight`` inputs in the pipeline at a time."""
        ray = _import_ray()
        started = time.time() - 1.0  # file times may be rounded down
        source = iter(tasks)
        for turn in itertools.count():
            while len(self._pending) >= self.in_flight:  # before taking the next input: at most in_flight taken
                yield from self._collect(ray)
            task = next(source, None)
            if task is None:
                break
            path, out_dir, video = task
            job = {"path": str(path), "out_dir": str(out_dir), "video": video, "started": started}
            ref: Any = job
            for stage in STAGES:
                actors = self.actors[stage]
                ref = actors[turn % len(actors)].run.remote(ref)
            self._pending.append(ref)
            self._inputs[ref] = str(path)
        while self._pending:
            yield from self._collect(ray)

    def _collect(self, ray: Any) -> Iterator[Outcome]:
        ready, _ = ray.wait(self._pending, num_returns=1)
        for ref in ready:
            yield self._outcome(ray, ref)
            # The consumer is back for the next: it has this one. Until then the task stays pending, so a
            # Ctrl-C between the hand-over and the consumer's record of it gets it back from interrupt().
            self._pending.remove(ref)
            self._inputs.pop(ref)

    def _outcome(self, ray: Any, ref: Any) -> Outcome:
        try:
            job = ray.get(ref)
        except ray.exceptions.RayError as exc:  # retries exhausted
            return Outcome(self._inputs[ref], None, 0, 0.0, f"the Ray task failed after retries: {exc}", crashed=True)
        seconds = round(job.get("seconds", 0.0), 3)
        if "error" in job:
            return Outcome(job["path"], None, 0, seconds, job["error"])
        return replace(job["outcome"], seconds=seconds)

    def interrupt(self, grace_s: float = 0.5) -> list[Outcome]:
        """Stop for Ctrl-C: what finished within ``grace_s``; the rest is cancelled."""
        ray = _import_ray()
        late: list[Outcome] = []
        if self._pending:
            ready, self._pending = ray.wait(self._pending, num_returns=len(self._pending), timeout=grace_s)
            for ref in ready:
                with contextlib.suppress(ray.exceptions.RayError):
                    job = ray.get(ref)
                    if "error" not in job:
                        late.append(job["outcome"])
        for ref in self._pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        self._pending, self._inputs = [], {}
        return late

    def close(self) -> None:
        ray = _import_ray()
        for actors in self.actors.values():
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        self.actors = {}
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
            # the cluster was on this machine: its actors are gone before the caller cleans the output folder
            # up (a .partial folder of a live writer is kept), as the local engine's killed workers are
            _wait_gone(self._pids)
        self._pids = []


def _wait_gone(pids: list[int], timeout_s: float = 10.0) -> None:
    """Wait (at most ``timeout_s``) until none of these local processes runs (a zombie does not)."""
    end = time.monotonic() + timeout_s
    while pids and time.monotonic() < end:
        pids = [pid for pid in pids if _running(pid)]
        if pids:
            time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: not one of ours any more
        return False
    with contextlib.suppress(OSError, IndexError):  # Linux: a zombie waits to be reaped, it runs no more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


CONNECT_TIMEOUT_S = 10.0
"""How long a cluster address may take to accept a connection before it counts as unreachable."""


def _check_reachable(address: str | None) -> None:
    """A ConfigError now when a cluster's ``HOST:PORT`` (or ``ray://HOST:PORT``) accepts no connection:
    ray.init would retry for many minutes. None (a local cluster) and "auto" are Ray's to find."""
    if address is None or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address {address!r}: give auto, HOST:PORT or ray://HOST:PORT")
    import socket

    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc})") from None


def reconstruct_on_ray(
    inputs: Iterable[str | Path],
    out: str | Path,
    config: PipelineConfig | None = None,
    write: WriteOptions | None = None,
    *,
    address: str | None = None,
    replicas: int = 1,
) -> list[Outcome]:
    """Reconstruct photos (one folder each, ``OUT/<stem>/``) on a Ray cluster; see the module docstring."""
    out = Path(out)
    tasks = [(Path(p), out / Path(p).stem, None) for p in inputs]
    engine = RayEngine(config or PipelineConfig(), write or WriteOptions(), address=address, replicas=replicas)
    engine.start()
    try:
        return list(engine.run(tasks))
    finally:
        engine.close()
        remove_stale_partials(out)  # what a killed actor was writing
