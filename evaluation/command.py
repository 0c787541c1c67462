"""The ``facerecon eval`` sub-command: the measuring instruments on the user's own data.

    facerecon eval landmarks DIR [-o OUT] [pipeline flags]      # annotated photos -> NME, CED plot
    facerecon eval rgbd DIR [-o OUT] [pipeline flags]           # photo + registered depth -> depth error
    facerecon eval mesh PRED GT [-o OUT]                        # MICC / NoW scan-to-mesh error
    facerecon eval synthetic [--count N] [--seed S] [-o OUT]    # known-geometry renders -> 3D error, detail
    facerecon bench DIR [-o OUT] [pipeline flags]               # per-stage latency, memory

Exit codes as ``reconstruct``: 0 every input scored, 1 some could not be (no face...), 2 bad input or
configuration (no annotations, mismatched files, a GT without landmarks): a clear error, nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facerecon.evaluation.report_folder import check_report_folder
from facerecon.kernel import Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import ConfigError, InputError
from facerecon.kernel.host.commands import DefaultsHelpFormatter, Once
from facerecon.kernel.host.config import DEVICES

EXIT_OK, EXIT_FAILURES, EXIT_INTERRUPTED = 0, 1, 130


def add_evaluation_commands(sub: Any, host: PluginHost) -> None:
    """Add ``eval`` (and its instruments) and ``bench`` to the CLI's sub-parsers (``sub``); each sets
    ``handler``."""
    parser = sub.add_parser(
        "eval",
        help="measure accuracy on your own annotated data",
        description="The measuring instruments of the README's numbers, on your own data.",
        formatter_class=DefaultsHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="instrument", metavar="INSTRUMENT", required=True)

    marks = kinds.add_parser(
        "landmarks",
        help="NME of every stage's 68 landmarks on annotated photos",
        description="Score every stage's re-projected iBUG-68 landmarks against annotations in DIR (iBUG "
        ".pts beside their photos, 1-based; COCO-style keypoint .json): NME by outer-eye-corner distance "
        "and by box size, failure rate at 8 % / 10 %, CED plot. Writes OUT/per_image.csv, "
        "OUT/summary.json and OUT/ced.png.",
        formatter_class=DefaultsHelpFormatter,
    )
    marks.add_argument("folder", type=Path, metavar="DIR", help="folder of annotated photos (searched recursively)")
    marks.add_argument("-o", "--output", type=Path, default=Path("eval-landmarks"), help="report folder")
    marks.add_argument(
        "--coco-origin",
        type=float,
        choices=(0.0, 1.0),
        default=0.0,
        help="pixel origin of COCO json keypoints (1 for mmpose's 300-W/300-VW files, which copy the .pts)",
    )
    marks.add_argument("--detector-only", action="store_true", help="score a 68-point detector alone (no stages)")
    _pipeline_flags(marks, host)
    marks.set_defaults(handler=cmd_eval_landmarks, report="eval landmarks")

    rgbd = kinds.add_parser(
        "rgbd",
        help="every stage's depth error against a registered depth sensor",
        description="Score every stage's depth against measured depth on the photo's pixel grid (the layout "
        "of RAP3DF: per sample k1_box_xy.bmp + k1_box_xyz_depth.data), after a scale / tilt / offset fit, "
        "all on one mask, with the tilted-plane and mean-face baselines. Writes OUT/per_sample.csv and "
        "OUT/summary.json.",
        formatter_class=DefaultsHelpFormatter,
    )
    rgbd.add_argument("folder", type=Path, metavar="DIR", help="a sample folder or a folder of them")
    rgbd.add_argument("-o", "--output", type=Path, default=Path("eval-rgbd"), help="report folder")
    rgbd.add_argument(
        "--detect-min-side", type=int, default=256, help="upscale smaller photos to this short side for the detector"
    )
    rgbd.add_argument("--no-mean-face", action="store_true", help="leave out the mean-face baseline")
    _pipeline_flags(rgbd, host)
    rgbd.set_defaults(handler=cmd_eval_rgbd, report="eval rgbd")

    mesh = kinds.add_parser(
        "mesh",
        help="a mesh against a ground-truth scan (MICC protocol, NoW statistics)",
        description="Crop the GT scan to --radius around its nose tip, align PRED to it (from the landmarks "
        "when both are given, then ICP), and measure every cropped scan vertex's distance to the aligned "
        "PRED surface: RMSE, median, mean, std in the GT's unit. Writes OUT/summary.json, "
        "OUT/distances.npy and OUT/heatmap.png.",
        formatter_class=DefaultsHelpFormatter,
    )
    mesh.add_argument("predicted", type=Path, metavar="PRED", help="the reconstructed mesh (OBJ, PLY, ...)")
    mesh.add_argument("truth", type=Path, metavar="GT", help="the ground-truth scan (a mesh, in mm)")
    mesh.add_argument("-o", "--output", type=Path, default=Path("eval-mesh"), help="report folder")
    mesh.add_argument(
        "--gt-landmarks", type=Path, help="GT landmarks (x y z lines, .npy or MeshLab .pp): 68 iBUG or 7 NoW points"
    )
    mesh.add_argument("--pred-landmarks", type=Path, help="PRED's landmarks, the same points as --gt-landmarks")
    mesh.add_argument("--nose-tip", help="X,Y,Z of the GT's nose tip (instead of its landmarks)")
    mesh.add_argument("--radius", type=float, default=95.0, help="crop radius around the nose tip (GT unit)")
    mesh.add_argument("--scale", action="store_true", help="also fit a scale (PRED in other units, e.g. pixels)")
    mesh.set_defaults(handler=cmd_eval_mesh, report="eval mesh")

    synthetic = kinds.add_parser(
        "synthetic",
        help="every stage against rendered faces of known geometry (morphable model + detail)",
        description="Render --count faces of a morphable model (random identity, expression, wrinkles, "
        "pores, albedo texture, SH light, highlight; from --seed) over real annotated photos, run the "
        "pipeline on each and score every stage's depth against the true surface: RMSE (mm) after a "
        "scale / tilt / offset fit, normal error, detail correlation r_D, texture leakage leak_R; with "
        "the sfs refiner also its phases and the skin-prior / RTV ablations. Writes OUT/per_scene.csv, "
        "OUT/summary.json, OUT/table.txt and OUT/scenes/*.png.",
        formatter_class=DefaultsHelpFormatter,
    )
    synthetic.add_argument("--count", type=int, default=8, help="number of scenes")
    synthetic.add_argument("--seed", type=int, default=0, help="the scenes' random seed")
    synthetic.add_argument(
        "--model", help="morphable model: a catalogue name or a file (default: the catalogue's default)"
    )
    synthetic.add_argument("--expressions", type=Path, help="the model's expression file, when separate")
    synthetic.add_argument(
        "--photos",
        type=Path,
        help="annotated photos to render over (iBUG .pts beside each; default: ../shared/data/faces/lfpw-68)",
    )
    synthetic.add_argument("--no-ablations", action="store_true", help="skip the sfs skin-prior / RTV re-runs")
    synthetic.add_argument("-o", "--output", type=Path, default=Path("eval-synthetic"), help="report folder")
    _pipeline_flags(synthetic, host)
    synthetic.set_defaults(handler=cmd_eval_synthetic, report="eval synthetic")

    bench = sub.add_parser(
        "bench",
        help="per-stage latency and memory of the pipeline on your photos",
        description="Run the configured pipeline on the photos of DIR (files, folders or globs) and report "
        "per stage the median and 90th-percentile latency, the first-call cost (model loading, first "
        "photo) and the peak memory; --device picks CPU or CUDA, --remote times stages over gRPC. Writes "
        "OUT/bench.json and OUT/bench.png.",
        formatter_class=DefaultsHelpFormatter,
    )
    bench.add_argument("inputs", nargs="+", metavar="DIR", help="photos: files, folders or glob patterns")
    bench.add_argument("-o", "--output", type=Path, default=Path("bench"), help="report folder")
    bench.add_argument("--passes", type=int, default=1, help="times over the photos")
    bench.add_argument(
        "--against",
        type=Path,
        metavar="BENCH_JSON",
        help="an earlier run's bench.json (e.g. in-process, to compare a --remote run with): per-stage ratios "
        "in the report and both runs in the chart",
    )
    _pipeline_flags(bench, host)
    bench.set_defaults(handler=cmd_bench, report="bench")


def _pipeline_flags(parser: argparse.ArgumentParser, host: PluginHost) -> None:
    """The stage choices of ``reconstruct``, read by ``PipelineConfig.with_stage_flags``."""
    parser.add_argument("-c", "--config", type=Path, action=Once, help="TOML config file (see docs/configuration.md)")
    parser.add_argument("--detector", help="detector plugin (default: from config, else mediapipe)")
    parser.add_argument("--regressor", help="regressor plugin (default: from config, else auto)")
    parser.add_argument("--segmenter", help="segmenter plugin, or 'none'")
    parser.add_argument("--refiners", help="comma-separated refiner plugins, in order; '' for none")
    parser.add_argument("--device", choices=DEVICES, help="where models run (default: from config, else auto)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-input lines, only the summary")
    host.add_pipeline_flags(parser)


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    config = (PipelineConfig.load(args.config) if args.config else PipelineConfig()).with_stage_flags(args)
    return PluginHost(allow=config.allow_plugins, block=config.block_plugins).apply_pipeline_flags(config, args)


def _report(args: argparse.Namespace, summary: dict[str, Any], write: Callable[[Path], list[Path]]) -> list[Path]:
    """Mark ``summary`` as this instrument's (``report_folder.MARK``) and write the report folder whole."""
    from facerecon.evaluation.report_folder import MARK, write_report_folder

    summary[MARK] = args.report
    return write_report_folder(args.output, write)


def _print_summary(summary: dict[str, Any], files: list[Path]) -> None:
    shown = {k: v for k, v in summary.items() if k != "rows"}
    print(json.dumps(shown, indent=1))
    print("wrote " + ", ".join(str(f) for f in files), file=sys.stderr)


def cmd_eval_landmarks(args: argparse.Namespace) -> int:
    from facerecon.evaluation.annotations import find_annotations
    from facerecon.evaluation.landmarks import evaluate_landmarks, summarise, write_report

    photos = find_annotations(args.folder, args.coco_origin)  # bad folders fail here, before any model loads
    config = pipeline_config(args)
    check_report_folder(args.output, args.report)

    def progress(row: dict[str, Any]) -> None:
        if not args.quiet:
            scores = ", ".join(f"{k} {v:.4f}" for k, v in row["nme_io"].items())
            print(f"{row['annotation']}: {row.get('error') or scores}", file=sys.stderr)

    with Pipeline(config) as pipe:
        if args.detector_only:
            _check_68_point_detector(pipe)
        else:
            pipe.warm_up()  # a stage that cannot load (no model, a server down) fails once, here
        rows = evaluate_landmarks(pipe, photos, reconstruct=not args.detector_only, progress=progress)
    summary = summarise(rows)
    _print_summary(summary, _report(args, summary, lambda out: write_report(out, rows, summary)))
    return EXIT_FAILURES if summary["missed"] else EXIT_OK


def _check_68_point_detector(pipe: Pipeline) -> None:
    """``--detector-only`` scores the detector's own iBUG-68 points: a detector without them scores nothing."""
    name = pipe.config.detector
    produces = pipe.host.spec("detector", name).produces or ()
    if "ibug68" not in produces and name != "remote":
        given = ", ".join(produces) or "no landmark scheme it declares"
        raise ConfigError(
            f"--detector-only scores a detector's own 68 iBUG points, and detector {name!r} gives {given}: "
            "use a 68-point detector (e.g. --detector dlib), or leave out --detector-only to score the stages"
        )
    warm = getattr(pipe.detector, "warm_up", None)  # only the detector runs: it fails once, here
    if callable(warm):
        warm()


def cmd_eval_rgbd(args: argparse.Namespace) -> int:
    from facerecon.evaluation.rgbd import evaluate_rgbd, find_samples, mean_face_config, summarise, write_report

    samples = find_samples(args.folder)
    config = pipeline_config(args)
    check_report_folder(args.output, args.report)
    if not 0 <= args.detect_min_side <= 4096:
        raise ConfigError(f"--detect-min-side must be in 0..4096, got {args.detect_min_side}")

    def progress(row: dict[str, Any]) -> None:
        if not args.quiet:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in row["rmse_mm"].items())
            print(f"{row['sample']}: {row.get('error') or scores + ' mm'}", file=sys.stderr)

    with Pipeline(config) as pipe, Pipeline(mean_face_config(config)) as mean_face:
        baseline = None if args.no_mean_face else mean_face
        for pipeline in (pipe, baseline):
            if pipeline is not None:
                pipeline.warm_up()  # a stage that cannot load (no model, a server down) fails once, here
        rows = evaluate_rgbd(pipe, samples, baseline, args.detect_min_side, progress)
    summary = summarise(rows)
    _print_summary(summary, _report(args, summary, lambda out: write_report(out, rows, summary)))
    return EXIT_FAILURES if summary["failed"] else EXIT_OK


def cmd_eval_mesh(args: argparse.Namespace) -> int:
    import numpy as np

    from facerecon.evaluation.mesh import evaluate_mesh, load_landmarks, load_mesh, nose_tip_of, write_report

    if not (args.radius > 0 and math.isfinite(args.radius)):
        raise ConfigError(f"--radius must be a number > 0, got {args.radius}")
    if args.pred_landmarks and not args.gt_landmarks:
        raise ConfigError("--pred-landmarks aligns PRED to the same points on the GT: give --gt-landmarks too")
    truth_marks = load_landmarks(args.gt_landmarks) if args.gt_landmarks else None
    predicted_marks = load_landmarks(args.pred_landmarks) if args.pred_landmarks else None
    if args.nose_tip:
        try:
            nose = np.array([float(v) for v in args.nose_tip.split(",")])
        except ValueError:
            nose = np.zeros(0)
        if nose.shape != (3,) or not np.isfinite(nose).all():
            raise ConfigError(f"--nose-tip must be X,Y,Z (three numbers), got {args.nose_tip!r}")
    elif truth_marks is None:
        raise InputError(
            f"{args.truth}: a GT mesh without landmarks: give --gt-landmarks FILE (68 iBUG or 7 NoW points) or "
            "--nose-tip X,Y,Z to crop it around the nose tip"
        )
    else:
        nose = nose_tip_of(truth_marks)
    check_report_folder(args.output, args.report)
    predicted, truth = load_mesh(args.predicted), load_mesh(args.truth)
    summary, scan, distances = evaluate_mesh(
        predicted, truth, nose, predicted_marks, truth_marks, with_scale=args.scale, radius=args.radius
    )
    _print_summary(summary, _report(args, summary, lambda out: write_report(out, summary, scan, distances)))
    return EXIT_OK


def cmd_eval_synthetic(args: argparse.Namespace) -> int:
    from facerecon.evaluation.annotations import find_annotations, shared_data_dir
    from facerecon.evaluation.synthetic import evaluate_synthetic, scene_specs, summarise, text_table, write_report

    if not 1 <= args.count <= 10_000:
        raise ConfigError(f"--count must be in 1..10000, got {args.count}")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed must be in 0..{2**32 - 1}, got {args.seed}")
    folder = args.photos
    if folder is None:
        shared = shared_data_dir()
        if shared is None:
            raise ConfigError("give --photos DIR: annotated photos (iBUG .pts beside each) to render the faces over")
        folder = shared / "faces" / "lfpw-68"
    specs = scene_specs(find_annotations(folder), args.count, args.seed)
    config = pipeline_config(args)
    check_report_folder(args.output, args.report)
    expressions = str(args.expressions) if args.expressions else None
    if args.expressions is not None and not args.expressions.is_file():
        raise ConfigError(f"--expressions {args.expressions}: no such file")

    def progress(row: dict[str, Any]) -> None:
        if not args.quiet:
            stages = {n: v for n, v in row["scores"].items() if "/" not in n and n != "truth"}
            shown = ", ".join(f"{n} {v['rmse_mm']:.3f}" for n, v in stages.items()) + " mm"
            print(f"{row['scene']}: {row.get('error') or shown}", file=sys.stderr)

    host = PluginHost(allow=config.allow_plugins, block=config.block_plugins)
    rows, images, interrupted = evaluate_synthetic(
        host, config, specs, args.model, expressions, ablate=not args.no_ablations, progress=progress
    )
    if interrupted and not rows:
        raise KeyboardInterrupt
    summary = summarise(rows, args.seed)
    if interrupted:  # the scenes done (minutes each) are reported, marked so
        summary["interrupted"] = f"stopped by Ctrl-C after {len(rows)} of {len(specs)} scenes"
    files = _report(args, summary, lambda out: write_report(out, rows, summary, images))
    print(text_table(summary), end="")
    print("wrote " + ", ".join(str(f) for f in files), file=sys.stderr)
    if interrupted:
        print(f"facerecon: interrupted: {summary['interrupted']}; the report holds those", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILURES if summary["failed"] else EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from facerecon.evaluation.bench import benchmark, compare, read_report, write_report
    from facerecon.kernel.host.imageio import find_images

    if not 1 <= args.passes <= 1000:
        raise ConfigError(f"--passes must be in 1..1000, got {args.passes}")
    earlier = None
    if args.against is not None:
        try:
            earlier = read_report(args.against)
        except ValueError as error:
            raise InputError(f"--against {error}") from None
    photos, problems = find_images(args.inputs)
    if problems:
        raise InputError("; ".join(f"{item}: {reason}" for item, reason in problems[:5]))
    if not photos:
        raise InputError(f"no photos in {' '.join(args.inputs)}")
    if len(photos) * args.passes < 2:
        raise ConfigError(
            "bench times every photo run after the first (the first-call cost is reported apart): give two "
            "or more photos, or --passes 2 or more"
        )
    config = pipeline_config(args)
    check_report_folder(args.output, args.report)

    def progress(photo: str, ms: float) -> None:
        if not args.quiet:
            print(f"{photo}: {ms:.1f} ms", file=sys.stderr)

    result = benchmark(config, photos, args.passes, progress)
    if earlier is not None:
        result["against"] = compare(result, earlier, str(args.against))
        if result["against"]["differs"]:
            differs = "; ".join(result["against"]["differs"])
            print(
                f"warning: {args.against} was another run ({differs}): its ratios compare different work",
                file=sys.stderr,
            )
    _print_summary(result, _report(args, result, lambda out: write_report(out, result, earlier)))
    return EXIT_OK
