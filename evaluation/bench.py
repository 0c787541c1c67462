"""``facerecon bench DIR``: how fast the configured pipeline runs on the photos of DIR, per stage.

Measured in this process, on the device the pipeline resolves (``--device cpu`` / ``cuda``); a stage run
elsewhere (``--remote regressor=host:port``, the ``remote`` plugin's flag) is timed over gRPC the same
way. First-call cost is reported apart: building the stages (loading the models) and the first photo
(compilation, caches, lazy initialisation). The rest: per stage (the pipeline's own timings: detector,
segmenter, regressor, each refiner) and for the whole photo, median and 90th percentile in ms over every
photo of every pass after the first photo; the process's peak resident memory (RSS), and on CUDA the
most GPU memory PyTorch held allocated at once (``cuda_peak_mb``; null on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.evaluation.charts import bar_chart
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.devices import cuda_peak_memory_mb
from facerecon.kernel.host.imageio import load_image
from facerecon.outputs.meshes import atomic_write, png_bytes


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def benchmark(
    config: PipelineConfig,
    photos: Sequence[Path],
    passes: int = 1,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """The measurements of the module docstring for ``photos`` (already checked to be readable)."""
    images = [load_image(p, max_pixels=config.max_image_pixels) for p in photos]
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    with Pipeline(config) as pipe:
        pipe.warm_up()
        load_ms = (time.perf_counter() - start) * 1000
        timings: dict[str, list[float]] = {}
        first_ms = 0.0
        faces = 0
        for round_ in range(passes):
            for i, (photo, image) in enumerate(zip(photos, images, strict=True)):
                start = time.perf_counter()
                rec = pipe(image)
                total = (time.perf_counter() - start) * 1000
                faces += bool(rec.reconstructions) and round_ == 0
                if progress is not None:
                    progress(str(photo), total)
                if round_ == 0 and i == 0:
                    first_ms = total
                    continue
                for stage, ms in {**rec.timings_ms, "total": total}.items():
                    timings.setdefault(stage, []).append(ms)
        cuda_peak = cuda_peak_memory_mb(pipe.device)
        stages = {
            stage: {
                "median_ms": round(float(np.median(v)), 2),
                "p90_ms": round(float(np.percentile(v, 90)), 2),
                "runs": len(v),
            }
            for stage, v in timings.items()
        }
        return {
            "photos": len(photos),
            "passes": passes,
            "photos_with_a_face": faces,
            "photo_set": photo_set(images),
            "device": pipe.device,
            "pipeline": {
                "detector": pipe.config.detector,
                "regressor": pipe.config.regressor,
                "segmenter": pipe.config.segmenter,
                "refiners": list(pipe.config.refiners),
                "plugins": stage_plugins(pipe.config),
            },
            "first_call": {"load_ms": round(load_ms, 1), "first_photo_ms": round(first_ms, 1)},
            "stages": stages,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_before_mb": round(rss_before, 1),
            "cuda_peak_mb": None if cuda_peak is None else round(cuda_peak, 1),
        }


def read_report(path: Path) -> dict[str, Any]:
    """An earlier run's ``bench.json`` (for ``--against``); ValueError naming what is wrong with it."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable bench.json ({error})") from None
    stages = report.get("stages") if isinstance(report, dict) else None
    numbers = (int, float)
    if not isinstance(stages, dict) or not all(
        isinstance(s, dict) and isinstance(s.get("median_ms"), numbers) and isinstance(s.get("p90_ms"), numbers)
        for s in stages.values()
    ):
        raise ValueError(f"{path}: not a bench.json (no per-stage median_ms / p90_ms)")
    for name, stage in stages.items():  # (a ratio to nothing, or to a negative time, means nothing)
        if not all(math.isfinite(stage[key]) and stage[key] >= 0 for key in ("median_ms", "p90_ms")):
            raise ValueError(f"{path}: stage {name!r} has median_ms {stage['median_ms']}, p90_ms {stage['p90_ms']}")
    return report


def photo_set(images: Sequence[np.ndarray]) -> str:
    """A digest of the photos' pixels, in any order: whether two runs timed the same photos."""
    digests = sorted(
        hashlib.blake2b(f"{image.shape}".encode() + image.tobytes(), digest_size=16).digest() for image in images
    )
    return hashlib.blake2b(b"".join(digests), digest_size=16).hexdigest()


def stage_plugins(config: PipelineConfig) -> dict[str, Any]:
    """The plugin each stage runs, a remote stage's being the one it asks its server for ("remote": the
    server's own, unknown here): what two runs compared by ``--against`` must share."""

    def plugin(kind: str, name: str | None) -> str | None:
        if name is not None and (name == "remote" or name.startswith("remote@")):
            return str(config.options_for(kind, name).get("plugin", "remote"))
        return name

    named = {kind: plugin(kind, getattr(config, kind)) for kind in ("detector", "regressor", "segmenter")}
    return {**named, "refiners": [plugin("refiner", name) for name in config.refiners]}


def compare(result: dict[str, Any], earlier: dict[str, Any], source: str) -> dict[str, Any]:
    """Per stage both runs have: this run's median, the earlier one's, and their ratio (this / earlier),
    e.g. a stage over gRPC (``--remote``) against the same stage in-process, or CUDA against the CPU; and
    ``differs``: what else tells the two runs apart (other plugins, photos or passes), whose ratios then
    compare different work."""
    stages = {}
    for name, now in result["stages"].items():
        then = earlier["stages"].get(_in_process(name))
        if then is not None and then["median_ms"] > 0:
            ratio = now["median_ms"] / then["median_ms"]
            stages[name] = {"median_ms": now["median_ms"], "against_ms": then["median_ms"], "ratio": round(ratio, 3)}
    return {
        "file": source,
        "device": earlier.get("device"),
        "pipeline": earlier.get("pipeline"),
        "stages": stages,
        "differs": differences(result, earlier),
    }


def differences(result: dict[str, Any], earlier: dict[str, Any]) -> list[str]:
    """What besides the device and where the stages run differs between two bench reports, as
    "KEY: EARLIER then, NOW now" (a remote stage whose plugin its server chose is not compared)."""
    differs = []
    for key in ("photos", "passes"):
        if key in earlier and earlier[key] != result.get(key):
            differs.append(f"{key}: {earlier[key]} then, {result.get(key)} now")
    sets = earlier.get("photo_set"), result.get("photo_set")
    if None not in sets and sets[0] != sets[1] and earlier.get("photos") == result.get("photos"):
        differs.append(f"photos: another set of {result.get('photos')}")
    recorded = earlier.get("pipeline")
    pipeline: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    then = pipeline.get("plugins") or {  # (reports before 0.16.0 name the stages only)
        kind: [_in_process(n) for n in names] if kind == "refiners" and isinstance(names, list) else names
        for kind, names in pipeline.items()
    }
    now = (result.get("pipeline") or {}).get("plugins") or {}
    for kind in ("detector", "regressor", "segmenter", "refiners"):
        if kind not in then or kind not in now:
            continue
        a, b = then[kind], now[kind]
        if "remote" in (a if isinstance(a, list) else [a]) or "remote" in (b if isinstance(b, list) else [b]):
            continue  # (a list of refiners with an unknown one: their timings are compared one by one anyway)
        if a != b:
            differs.append(f"{kind}: {a} then, {b} now")
    return differs


def _in_process(stage: str) -> str:
    """The timing key the same stage has in-process: a remote refiner is timed as "refiner:remote@NAME"."""
    return stage.replace("remote@", "")


def write_report(out: Path, result: dict[str, Any], earlier: dict[str, Any] | None = None) -> list[Path]:
    """``bench.json`` and ``bench.png`` (per stage median with its p90; with ``earlier``, an earlier run's
    report, each stage both runs have is drawn again beside it, marked "(against)") in ``out``, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "bench.json", out / "bench.png"]
    atomic_write(files[0], (json.dumps(result, indent=1) + "\n").encode())
    stages = result["stages"]
    compared = result.get("against", {}).get("stages", {})
    bars = []
    for name, s in stages.items():
        bars.append((name, s["median_ms"], s["p90_ms"]))
        if earlier is not None and name in compared:
            then = earlier["stages"][_in_process(name)]
            bars.append((f"{_in_process(name)} (against)", then["median_ms"], then["p90_ms"]))
    chart = bar_chart(
        bars,
        f"per-photo latency on {result['device']} ({stages.get('total', {}).get('runs', 0)} runs)",
        "ms (bar: median, tick: 90th percentile)",
    )
    atomic_write(files[1], png_bytes(chart))
    return files
