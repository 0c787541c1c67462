"""``facerecon eval synthetic``: the pipeline against faces whose geometry is known.

Scenes: ``count`` faces of a morphable model, each over a real annotated photo (iBUG ``.pts`` beside it;
by default ``../shared/data/faces/lfpw-68``), rendered by the plugin implementing the host hook
``facerecon_render_scene`` (the built-in ``synthetic-faces``: random identity, expression, wrinkles,
pores, albedo texture, SH light, highlight; this package may not import a face library, so it asks the
host). Scene i of seed s uses the random stream (s, i): its photo and the renderer's seed, so a seed
gives the same scenes, and scene i does not depend on ``count``.

Per scene the configured pipeline runs on the image; every stage's mesh is rendered into the pixel grid
(``rgbd.stage_depth``) and scored by :mod:`.detail_scores` on one mask: the scene's skin pixels where
every stage (and the fine stage's phases and ablations) has depth and the fine stage refined. Ablations
(when ``sfs`` is a refiner): its phases (phase 1 alone vs phases 1 + 2, from one run) and the pipeline
re-run with the skin-colour prior off (``skin_prior_boost = 0``) and with RTV off
(``albedo_rtv_weight = 0``), options of the ``sfs`` refiner set through the config, like a TOML table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.evaluation.annotations import AnnotatedPhoto, annotated_face_index
from facerecon.evaluation.detail_scores import DepthScorer
from facerecon.evaluation.rgbd import common_mask, stage_depth
from facerecon.kernel import Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import ConfigError, FaceReconError, InputError
from facerecon.kernel.contract.scenes import SyntheticScene
from facerecon.kernel.host.imageio import load_image
from facerecon.outputs.meshes import atomic_write, png_bytes

MIN_PIXELS = 200
SCORES = ("rmse_mm", "normal_deg", "r_D", "g_D", "leak_R")
FINE_REFINER = "sfs"
ABLATIONS = {"no-skin-prior": {"skin_prior_boost": 0.0}, "no-rtv": {"albedo_rtv_weight": 0.0}}
"""Pipelines re-run with these options of the ``sfs`` refiner; named ``<fine stage>/<name>``."""


@dataclass(frozen=True)
class SceneSpec:
    """What scene ``index`` of ``seed`` is made of: the background photo and the renderer's seed."""

    name: str
    photo: AnnotatedPhoto
    render_seed: int


def scene_specs(photos: Sequence[AnnotatedPhoto], count: int, seed: int) -> list[SceneSpec]:
    """``count`` scenes; scene i draws its photo and render seed from the stream (seed, i)."""
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    if not photos:
        raise ConfigError("no annotated photos to render the scenes over")
    specs = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        photo = photos[int(rng.integers(len(photos)))]
        specs.append(SceneSpec(f"scene{i:03d}_{photo.image.stem}", photo, int(rng.integers(2**31))))
    return specs


def render(host: PluginHost, spec: SceneSpec, model: str | None, expressions: str | None) -> SyntheticScene:
    """The scene of ``spec`` from the host's ``facerecon_render_scene`` plugin."""
    return host.render_scene(model, expressions, spec.render_seed, load_image(spec.photo.image), spec.photo.points)


def ablation_configs(config: PipelineConfig) -> dict[str, PipelineConfig]:
    """The ablations' pipelines (none without the ``sfs`` refiner): ``config`` with those sfs options."""
    if FINE_REFINER not in config.refiners:
        return {}
    return {name: config.with_options("refiner", FINE_REFINER, change) for name, change in ABLATIONS.items()}


def _depths(reconstruction: Any, height: int, width: int, prefix: str = "") -> dict[str, np.ndarray]:
    """Stage (and phase) name -> its depth on the grid; ``prefix`` names an ablation's fine stages."""
    depths = {}
    for stage in reconstruction.stages:
        if prefix and stage.plugin != FINE_REFINER:
            continue
        name = f"{stage.stage}/{prefix}" if prefix else stage.stage
        depths[name] = stage_depth(stage.mesh, height, width)
        if not prefix:
            for phase, mesh in stage.phases.items():
                depths[f"{stage.stage}/{phase}"] = stage_depth(mesh, height, width)
    return depths


def scorer_for(scene: SyntheticScene, mask: np.ndarray) -> DepthScorer:
    """The scene's ground truth on ``mask`` (a subset of ``scene.mask``)."""
    return DepthScorer(scene.depth, scene.smooth, scene.wrinkles, scene.pores, scene.texture, mask, scene.mm_per_px)


def evaluate_scene(
    pipe: Pipeline, ablations: dict[str, Pipeline], scene: SyntheticScene, spec: SceneSpec
) -> dict[str, Any]:
    """One scene's row: faces found, pixels scored and per stage / phase / ablation its scores. The
    rendered face is the detected face where the photo's annotation is (a photo may show others)."""
    height, width = scene.mask.shape
    row: dict[str, Any] = {"scene": spec.name, "meta": dict(scene.meta), "scores": {}}
    faces = pipe.detect(scene.image)
    row["faces_detected"] = len(faces)
    index = annotated_face_index(np.array([f.box for f in faces]).reshape(-1, 4), spec.photo.points)
    if index is None:
        row["error"] = "the rendered face was not found" if faces else "no face found"
        return row
    face = faces[index]
    reconstruction = pipe.reconstruct_face(scene.image, face)
    depths = _depths(reconstruction, height, width)
    for label, other in ablations.items():
        depths.update(_depths(other.reconstruct_face(scene.image, face), height, width, label))
    mask = common_mask(scene.mask & np.isfinite(scene.depth), depths.values(), reconstruction.stages[-1])
    row["pixels"] = int(mask.sum())
    if mask.sum() < MIN_PIXELS:
        row["error"] = f"only {int(mask.sum())} scored pixels where every stage has depth"
        return row
    scorer = scorer_for(scene, mask)
    row["scores"] = {label: scorer.score(depth) for label, depth in depths.items()}
    row["scores"]["truth"] = scorer.score(scene.depth)  # the instrument's own check: 0 mm, 0 degrees, r_D 1
    return row


def evaluate_synthetic(
    host: PluginHost,
    config: PipelineConfig,
    specs: Sequence[SceneSpec],
    model: str | None,
    expressions: str | None,
    ablate: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, bytes], bool]:
    """The rows of every scene, its image (scene name -> PNG bytes), and whether a Ctrl-C stopped the run
    (the scenes done are kept; the one in progress is dropped). The first scene is rendered before any
    pipeline is built, so a bad model fails before the models load."""
    first = render(host, specs[0], model, expressions)
    rows: list[dict[str, Any]] = []
    images: dict[str, bytes] = {}
    interrupted = False
    configs = ablation_configs(config) if ablate else {}
    with Pipeline(config) as pipe:
        ablations = {label: Pipeline(c) for label, c in configs.items()}
        try:
            for i, spec in enumerate(specs):
                row: dict[str, Any]
                try:
                    row = _scene_row(host, pipe, ablations, spec, first if i == 0 else None, model, expressions, images)
                except KeyboardInterrupt:  # a long run: the scenes done are still reported
                    interrupted = True
                    break
                rows.append(row)
                if progress is not None:
                    progress(row)
        finally:
            for other in ablations.values():
                other.close()
    return rows, images, interrupted


def _scene_row(
    host: PluginHost,
    pipe: Pipeline,
    ablations: dict[str, Pipeline],
    spec: SceneSpec,
    scene: SyntheticScene | None,
    model: str | None,
    expressions: str | None,
    images: dict[str, bytes],
) -> dict[str, Any]:
    """One scene's row (rendered here unless ``scene`` is given); its image goes into ``images``."""
    row: dict[str, Any]
    try:
        scene = scene if scene is not None else render(host, spec, model, expressions)
    except InputError as exc:  # its photo (the model rendered the first scene): listed, the rest go on
        row = {"scene": spec.name, "meta": {}, "scores": {}, "error": str(exc)}
    else:
        images[spec.name] = png_bytes(scene.image)  # compressed: many scenes stay small
        try:
            row = evaluate_scene(pipe, ablations, scene, spec)
        except FaceReconError as exc:  # a stage's refusal: listed, the other scenes go on
            row = {"scene": spec.name, "meta": dict(scene.meta), "scores": {}, "error": str(exc)}
    row.update(photo=str(spec.photo.image), render_seed=spec.render_seed)
    return row


def summarise(rows: Sequence[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Means and medians over the scored scenes, per stage / phase / ablation and score."""
    names: list[str] = []
    for r in rows:
        names += [n for n in r["scores"] if n not in names]
    scored = [r for r in rows if r["scores"]]

    def stat(how: Callable[[list[float]], Any], name: str, key: str) -> float:
        values = [r["scores"][name][key] for r in scored if name in r["scores"]]
        return round(float(how(values)), 4) if values else math.nan

    return {
        "seed": seed,
        "scenes": len(rows),
        "scored": len(scored),
        "mean": {n: {k: stat(np.mean, n, k) for k in SCORES} for n in names},
        "median": {n: {k: stat(np.median, n, k) for k in SCORES} for n in names},
        "failed": [{"scene": r["scene"], "error": r["error"]} for r in rows if r.get("error")],
    }


def text_table(summary: dict[str, Any]) -> str:
    """The means as a short fixed-width table, one line per stage / phase / ablation."""
    lines = [
        f"eval synthetic: seed {summary['seed']}, {summary['scored']} of {summary['scenes']} scenes scored (means)",
        f"{'stage':<24}" + "".join(f"{k:>12}" for k in SCORES),
    ]
    for name, scores in summary["mean"].items():
        lines.append(f"{name:<24}" + "".join(f"{scores[k]:>12.4f}" for k in SCORES))
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any], images: dict[str, bytes]
) -> list[Path]:
    """``per_scene.csv``, ``summary.json`` (with the rows), ``table.txt`` and ``scenes/<scene>.png`` in
    ``out``, each written atomically."""
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    names = list(summary["mean"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["scene", "photo", "render_seed", "faces_detected", "pixels", "error"]
        + [f"{n}:{k}" for n in names for k in SCORES]
    )
    for r in rows:
        values = [r["scores"].get(n, {}).get(k, math.nan) for n in names for k in SCORES]
        writer.writerow(
            [
                r["scene"],
                r["photo"],
                r["render_seed"],
                r.get("faces_detected", 0),
                r.get("pixels", ""),
                r.get("error", ""),
            ]
            + ["" if math.isnan(v) else f"{v:.4f}" for v in values]
        )
    files = [out / "per_scene.csv", out / "summary.json", out / "table.txt"]
    atomic_write(files[0], buffer.getvalue().encode())
    atomic_write(files[1], (json.dumps({**summary, "rows": list(rows)}, indent=1) + "\n").encode())
    atomic_write(files[2], text_table(summary).encode())
    for name, image in images.items():
        atomic_write(out / "scenes" / f"{name}.png", image)
    return files
