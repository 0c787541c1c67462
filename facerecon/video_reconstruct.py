"""One video (or image sequence) through the pipeline: ``OUT/<video>/frame_<index>/`` per sampled frame (the
photo layout of facerecon.outputs.folder) plus ``OUT/<video>/video.json``.

    outcome = reconstruct_video(pipeline, Path("clip.mp4"), Path("out/clip"), write, VideoOptions())

Per frame the largest face is reconstructed. Temporal stability (``VideoOptions.smooth``):

* a One-Euro filter on the detector's landmarks (and box) before the regressor, and on the regressor's pose
  after it (the coarse mesh re-posed), for every regressor;
* one identity per video for a regressor that can hold it (:class:`IdentityRegressor`, e.g. 3dmm-fit): a
  first pass fits every sampled frame, the mean of their identity coefficients is then held for all frames
  (expression and pose stay per frame).

``video.json``: the source (codec, frame rate, frame count, size), the sampling, per sampled frame its index,
time, output folder (or why it has none: no face), pose and per-stage results; the ``jitter`` of the final
shapes (frame-to-frame vertex motion after pose removal, facerecon.temporal.jitter); with ``aggregate="mean"``
``aggregate_mean.obj``: the mean pose-removed shape over the frames (the seed's MICC protocol) and each
frame's RMS distance to it. The folder is built under a temporary name and renamed into place when whole.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.batch import Outcome, WriteOptions
from facerecon.kernel import Pipeline
from facerecon.kernel.contract.errors import InputError, NoFaceError, PluginError
from facerecon.kernel.contract.records import CoarseResult, Face, Mesh, Reconstruction
from facerecon.kernel.contract.stages import IdentityRegressor, check_result
from facerecon.outputs.folder import replace_dir, staging_folder, write_outputs
from facerecon.outputs.frames import FileFrame
from facerecon.outputs.meshes import atomic_write, write_mesh
from facerecon.temporal import (
    LandmarkSmoother,
    OneEuroSettings,
    PoseSmoother,
    jitter,
    mean_shape,
    to_model_frame,
)
from facerecon.video import Frame, Sampling, open_source

AGGREGATES = ("mean",)


@dataclass(frozen=True)
class VideoOptions:
    """sampling: which frames; smooth: One-Euro filters and a shared identity (False: every frame on its
    own, as photos); aggregate: None or "mean"; landmark_filter, pose_filter: the One-Euro settings."""

    sampling: Sampling = field(default_factory=Sampling)
    smooth: bool = True
    aggregate: str | None = None
    landmark_filter: OneEuroSettings = field(default_factory=OneEuroSettings)
    pose_filter: OneEuroSettings = field(default_factory=lambda: OneEuroSettings(min_cutoff=0.5, beta=2.0))

    def __post_init__(self) -> None:
        if self.aggregate is not None and self.aggregate not in AGGREGATES:
            raise InputError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")


def frame_folder(index: int) -> str:
    return f"frame_{index:06d}"


def reconstruct_video(
    pipeline: Pipeline, path: Path, out_dir: Path, write: WriteOptions, options: VideoOptions
) -> Outcome:
    """Reconstruct the sampled frames of ``path`` into ``out_dir``; every failure is the Outcome's error and
    leaves no folder."""
    start = time.perf_counter()
    staging: Path | None = None
    try:
        source = open_source(path, options.sampling)
        source.check()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(out_dir)
        summary = _VideoRun(pipeline, write, options, staging).run(source)
        summary["source"] = {
            "path": str(path),
            "codec": source.codec,
            "fps": round(source.rate, 4),
            "frame_count": source.frame_count,
        }
        atomic_write(staging / "video.json", (json.dumps(summary, indent=1) + "\n").encode())
        replace_dir(staging, out_dir)
        staging = None
        frames = sum(1 for f in summary["frames"] if f.get("output"))
        return Outcome(str(path), str(out_dir), frames, round(time.perf_counter() - start, 3), frames=frames)
    except (InputError, NoFaceError) as exc:
        return Outcome(str(path), None, 0, round(time.perf_counter() - start, 3), str(exc))
    except Exception as exc:  # a plugin bug on one video must not end the batch
        return Outcome(str(path), None, 0, round(time.perf_counter() - start, 3), f"{type(exc).__name__}: {exc}")
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


class _VideoRun:
    """The two passes over one video's frames."""

    def __init__(self, pipeline: Pipeline, write: WriteOptions, options: VideoOptions, staging: Path) -> None:
        self.pipeline = pipeline
        self.write = write
        self.options = options
        self.staging = staging

    def _detect(self, frame: Frame, smoother: LandmarkSmoother | None) -> Face | None:
        faces = self.pipeline.detect(frame.image)
        if not faces:
            return None
        return smoother(faces[0], frame.time_s) if smoother is not None else faces[0]

    def _regress(self, frame: Frame, face: Face, identity: np.ndarray | None) -> CoarseResult:
        regressor = self.pipeline.regressor
        if identity is not None and isinstance(regressor, IdentityRegressor):
            result = regressor.regress_with_identity(frame.image, face, identity)
        else:
            result = regressor.regress(frame.image, face)
        problem = check_result("regressor", result)
        if problem is not None:
            raise PluginError(f"regressor {self.pipeline.config.regressor!r} broke the stage contract: {problem}")
        return result

    def shared_identity(self, source: Any) -> tuple[np.ndarray | None, dict[int, Face | None]]:
        """First pass (a regressor that can hold an identity): the mean identity over the frames, and each
        frame's (filtered) face, kept for the second pass."""
        faces: dict[int, Face | None] = {}
        identities = []
        smoother = LandmarkSmoother(self.options.landmark_filter)
        for frame in source.frames():
            face = faces[frame.index] = self._detect(frame, smoother)
            if face is not None:
                identity = self._regress(frame, face, None).parameters.get("identity")
                if identity is not None:
                    identities.append(identity)
        return (np.mean(identities, axis=0) if identities else None), faces

    def run(self, source: Any) -> dict[str, Any]:
        options = self.options
        shares = options.smooth and isinstance(self.pipeline.regressor, IdentityRegressor)
        identity, known = self.shared_identity(source) if shares else (None, {})
        smoother = LandmarkSmoother(options.landmark_filter) if options.smooth and not shares else None
        poser = PoseSmoother(options.pose_filter) if options.smooth else None
        frames: list[dict[str, Any]] = []
        shapes: list[np.ndarray] = []
        topologies: set[str] = set()
        final: Mesh | None = None
        for frame in source.frames():
            entry: dict[str, Any] = {"index": frame.index, "time_s": round(frame.time_s, 4)}
            frames.append(entry)
            face = known.get(frame.index) if shares else self._detect(frame, smoother)
            if face is None:
                entry["error"] = "no face"
                continue
            timings: dict[str, float] = {}
            begin = time.perf_counter()
            coarse = self._regress(frame, face, identity)
            if poser is not None:
                coarse = poser(coarse, face, frame.time_s)
            regress_ms = (time.perf_counter() - begin) * 1000.0
            result = self.pipeline.reconstruct_face(frame.image, face, 0, timings, coarse=coarse)
            timings["regressor"] = regress_ms
            stages = (replace(result.stages[0], elapsed_ms=regress_ms),) + result.stages[1:]
            result = replace(result, stages=stages)
            rec = Reconstruction(
                image_size=(frame.image.shape[1], frame.image.shape[0]),
                faces=(face,),
                reconstructions=(result,),
                timings_ms=timings,
            )
            name = frame_folder(frame.index)
            written = write_outputs(
                rec,
                frame.image,
                self.staging / name,
                source=f"{source.path}#frame={frame.index}",
                formats=self.write.formats,
                texture_size=self.write.texture_size,
                png_compression=self.write.png_compression,
                save_phases=self.write.save_phases,
                plugins=self.pipeline.plugin_ids(),
            )
            entry["output"] = name
            entry["pose"] = {
                "rotation": np.round(coarse.rotation.astype(np.float64), 6).tolist(),
                "translation": np.round(coarse.translation.astype(np.float64), 4).tolist(),
                "scale": round(float(coarse.scale), 6),
            }
            entry["stages"] = [
                {k: s.get(k) for k in ("stage", "plugin", "mesh", "elapsed_ms")}
                for s in written["reconstructions"][0]["stages"]
            ]
            entry["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
            shapes.append(to_model_frame(result.final.mesh.vertices, coarse))
            topologies.add(result.final.mesh.topology)
            final = result.final.mesh
        if not shapes:
            raise NoFaceError(f"{source.path}: no face in any of the {len(frames)} sampled frame(s)")
        summary: dict[str, Any] = {
            "sampling": {"every": options.sampling.every, "fps": options.sampling.fps},
            "smoothing": options.smooth,
            "shared_identity": identity is not None,
            "frames": frames,
        }
        if len(topologies) == 1 and final is not None:
            summary["jitter"] = jitter(shapes)
            if options.aggregate == "mean":
                summary["aggregate"] = self._aggregate(shapes, final)
        return summary

    def _aggregate(self, shapes: list[np.ndarray], final: Mesh) -> dict[str, Any]:
        """The mean pose-removed shape, written as ``aggregate_mean.<format>`` for each output format."""
        mean, distances = mean_shape(shapes)
        # model frame (y up, z to the viewer) -> the mesh frame's axes (y down, z away) the writers expect,
        # and back in the files, whose header says so (not the image frame in pixels: no pose, no photo)
        mesh = Mesh(mean * np.array([1.0, -1.0, -1.0]), final.triangles, final.topology, uvs=final.uvs)
        model = FileFrame(
            "model (pose removed, mean over the frames)", np.diag([1.0, -1.0, -1.0, 1.0]), np.zeros((3, 4)), "model"
        )
        files = []
        for fmt in self.write.formats:
            write_mesh(mesh, self.staging / f"aggregate_mean.{fmt}", frame=model)
            files.append(f"aggregate_mean.{fmt}")
        return {
            "method": "mean",
            "files": files,
            "units": "the regressor's model units (mm for a 3DMM)",
            "frames": len(shapes),
            "rms_to_mean": [round(d, 4) for d in distances],
            "rms_to_mean_mean": round(float(np.mean(distances)), 4),
        }
