"""The ``facerecon`` command line.

    facerecon reconstruct photo.jpg photos/ 'shots/*.png' -o out/
    facerecon plugins [--json]
    facerecon eval landmarks|rgbd|mesh ...
    facerecon bench photos/

Exit codes: 0 every input succeeded, 1 some inputs failed (see OUT/failures.json), 2 usage or
configuration error, 130 interrupted by Ctrl-C or SIGTERM (OUT/summary.json and failures.json still cover
what was done).

Photos run in a worker process (facerecon.batch), so a crash in native code costs one photo.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerecon import __version__
from facerecon.batch import Outcome, WriteOptions
from facerecon.batch_names import output_names, recorded_input, same_input
from facerecon.evaluation.command import add_evaluation_commands
from facerecon.kernel import Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import ConfigError, FaceReconError, InputError
from facerecon.kernel.host.commands import DefaultsHelpFormatter, Once
from facerecon.kernel.host.config import DEFAULT_REFINERS, DEVICES
from facerecon.outputs.folder import TEXTURE_SIDES, check_output_folder, remove_stale_partials
from facerecon.outputs.frames import FRAMES
from facerecon.outputs.meshes import WRITERS, atomic_write, mesh_formats
from facerecon.pool import WorkerPool
from facerecon.temporal import OneEuroSettings
from facerecon.video import Sampling, find_inputs
from facerecon.video_reconstruct import VideoOptions

if TYPE_CHECKING:
    from facerecon.engines.ray_engine import RayEngine

log = logging.getLogger("facerecon")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell tool killed by it


def command_line_host(argv: list[str] | None) -> PluginHost:
    """The plugin host the command line is built with: the ``-c`` config's ``[plugins]`` allow / block
    lists apply already, so a plugin they keep out is never imported (its flags and commands are not
    added). A config that cannot be read here is reported by the command itself."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("-c", "--config", type=Path)
    known, _ = early.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.config is None:
        return PluginHost()
    try:
        config = PipelineConfig.load(known.config)
    except (ConfigError, OSError):
        return PluginHost()
    return PluginHost(allow=config.allow_plugins, block=config.block_plugins)


def build_parser(host: PluginHost | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facerecon",
        description="Turn photos of faces into 3D meshes (coarse 3DMM -> medium -> fine detail).",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"facerecon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rec = sub.add_parser(
        "reconstruct",
        help="reconstruct faces from images",
        description="Reconstruct the face in each input image into OUT/<stem>/: one mesh per stage, "
        "preview.png and result.json. Inputs that fail are listed in OUT/failures.json; the rest go on.",
        formatter_class=DefaultsHelpFormatter,
    )
    rec.add_argument("inputs", nargs="*", metavar="INPUT", help="image or video files, folders or glob patterns")
    rec.add_argument("--files-from", type=Path, metavar="FILE", help="also the inputs listed in FILE, one a line")
    rec.add_argument(
        "--shard",
        metavar="I/N",
        help="only every N-th input from the I-th (0-based), e.g. a Kubernetes Indexed Job's $JOB_COMPLETION_INDEX/N;"
        " its summary is OUT/summary-shard-I-of-N.json",
    )
    rec.add_argument("-o", "--output", type=Path, default=Path("out"), help="output folder")
    rec.add_argument("-c", "--config", type=Path, action=Once, help="TOML config file (see docs/configuration.md)")
    rec.add_argument("--detector", help="detector plugin (default: from config, else mediapipe)")
    rec.add_argument(
        "--regressor",
        help="regressor plugin (default: from config, else auto: 3dmm-fit once a model is configured, else "
        "one that takes the detector's landmarks with no model file: landmark-mesh, canonical-fit)",
    )
    rec.add_argument("--segmenter", help="segmenter plugin, or 'none'")
    rec.add_argument(
        "--refiners",
        help="comma-separated refiner plugins, in order; '' for the coarse stage alone (default: from config, "
        "else laplace,sfs: the seed's medium + fine stages; without PyTorch, laplace)",
    )
    rec.add_argument(
        "--fast",
        action="store_true",
        help="no fine stage: coarse + medium (laplace), tens of milliseconds per face instead of seconds",
    )
    rec.add_argument("--device", choices=DEVICES, help="where models run (default: from config, else auto)")
    rec.add_argument("--all-faces", action="store_true", help="reconstruct every face, not only the largest")
    rec.add_argument(
        "--threads",
        type=int,
        help="BLAS and torch threads per worker (default: from config, else 1 BLAS thread for the small "
        "per-face products and 1 torch thread for the fine stage; 0: the libraries' defaults)",
    )
    rec.add_argument(
        "--formats", default="obj", help=f"comma-separated mesh formats ({', '.join(w[1:] for w in WRITERS)})"
    )
    rec.add_argument(
        "--frame",
        choices=FRAMES,
        default="head",
        help="the mesh files' coordinates: head (pose removed, centred, y up, millimetres) or image (pixels, "
        "y up, placed and posed as in the photo); result.json has the transforms between them",
    )
    rec.add_argument(
        "--texture-size",
        type=_texture_size,
        default=None,
        help="side of the unwrapped photo texture, or auto: the power of two at least the face's size in the "
        "photo (a texel per photo pixel), 256..1024 (default: auto; facerecon 0.7 wrote 1024); 16..8192, but "
        "the bake's time and memory grow faster than the texels: 4096 ~15 s and 3.3 GB a photo, 8192 ~4 min and "
        "12 GB on a 2-core machine",
    )
    rec.add_argument(
        "--png-compression",
        type=int,
        default=1,
        help="zlib level 0-9 of the PNGs written (default: 1, fast; 6: ~20%% smaller files, 3-4x slower to write)",
    )
    rec.add_argument(
        "--save-phases",
        action="store_true",
        help="also write refiners' intermediate meshes (the fine stage's phases; refused with --fast or no refiner)",
    )
    rec.add_argument(
        "--view",
        action="store_true",
        help="also write OUT/index.html, a 3D viewer of the results that opens from disk (adds glb to --formats)",
    )
    rec.add_argument("-q", "--quiet", action="store_true", help="no progress bar, only errors")
    rec.add_argument("-j", "--jobs", type=int, default=1, help="worker processes (each loads the models once)")
    rec.add_argument(
        "--overwrite", action="store_true", help="redo inputs whose complete results exist (default: skip them)"
    )
    rec.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: --jobs worker processes here; ray: Ray actors per stage, --jobs replicas each (facerecon[ray])",
    )
    rec.add_argument("--address", help="--engine ray: the cluster to join (e.g. auto); default: start a local one")
    video = rec.add_argument_group("videos and image sequences (mp4, avi, mov, webm, mkv: OUT/<video>/video.json)")
    video.add_argument("--sequence", action="store_true", help="a folder input is one image sequence (a video)")
    video.add_argument("--every", type=int, default=1, metavar="N", help="reconstruct every N-th frame")
    video.add_argument("--fps", type=float, metavar="F", help="reconstruct F frames per second (instead of --every)")
    video.add_argument("--sequence-fps", type=float, default=30.0, metavar="F", help="frame rate of image sequences")
    video.add_argument(
        "--no-smoothing",
        action="store_true",
        help="frames on their own: no One-Euro filter on landmarks and pose, no identity shared by a video's frames",
    )
    video.add_argument("--aggregate", choices=("mean",), help="also write the mean pose-removed shape of each video")

    plugins = sub.add_parser(
        "plugins",
        help="list the registered stage plugins",
        description="List every registered stage plugin with its distribution and version.",
    )
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.add_argument("-c", "--config", type=Path, action=Once, help="TOML config (its allow/block lists apply)")
    host = host or PluginHost()
    host.add_pipeline_flags(rec)  # e.g. --remote, from the `remote` stage plugin
    add_evaluation_commands(sub, host)  # `eval landmarks|rgbd|mesh`, `bench` (facerecon.evaluation.command)
    # Plugins add their own sub-commands (e.g. `facerecon models`), each with a handler(args) -> int.
    host.pm.hook.facerecon_register_commands(subcommands=sub, host=host)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="facerecon: %(levelname)s: %(message)s", level=logging.WARNING)
    parser = build_parser(command_line_host(argv))
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "reconstruct" and not any(e.startswith("-") for e in extra):
        args.inputs += extra  # inputs after the options: `reconstruct a.jpg -o out b.jpg`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "command", None) == "reconstruct" and not args.inputs and args.files_from is None:
        parser.error("reconstruct: give INPUT files, folders or patterns, or --files-from FILE")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "plugins":
            code = cmd_plugins(args)
        elif args.command == "reconstruct":
            code = cmd_reconstruct(args)
        else:
            code = int(args.handler(args))
        sys.stdout.flush()  # here, where a reader that stopped early is caught, not at exit
        return code
    except BrokenPipeError:  # stdout's reader stopped early: `facerecon plugins --json | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit must not fail again
        return EXIT_BROKEN_PIPE
    except FaceReconError as exc:  # bad input or configuration, a model file, a remote server down: one line
        print(f"facerecon: error: {exc}", file=sys.stderr)
        created = getattr(args, "created_output", None)
        if created is not None:  # a folder this run made and wrote nothing into goes again
            with contextlib.suppress(OSError):
                created.rmdir()
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("facerecon: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def load_config(args: argparse.Namespace) -> PipelineConfig:
    if getattr(args, "fast", False):
        if args.refiners is not None:
            raise ConfigError("--fast and --refiners both choose the refiners: give one of them")
        args = argparse.Namespace(**{**vars(args), "refiners": DEFAULT_REFINERS[0], "fast": False})  # medium
    config = (PipelineConfig.load(args.config) if args.config else PipelineConfig()).with_stage_flags(args)
    return PluginHost(allow=config.allow_plugins, block=config.block_plugins).apply_pipeline_flags(config, args)


def cmd_plugins(args: argparse.Namespace) -> int:
    config = load_config(args)
    host = PluginHost(allow=config.allow_plugins, block=config.block_plugins)
    rows = [
        {
            "kind": spec.kind,
            "name": spec.name,
            "plugin": spec.plugin,
            "distribution": spec.distribution,
            "version": spec.version,
            "summary": spec.summary,
            "license": spec.license_note,
            "accepts": None if spec.accepts is None else list(spec.accepts),
            "produces": None if spec.produces is None else list(spec.produces),
            "devices": list(spec.devices),
            "mesh_units": spec.units_text() if spec.kind in ("regressor", "refiner") else None,
        }
        for spec in sorted(host.stages.values(), key=lambda s: (s.kind, s.name))
    ]
    if args.json:
        print(json.dumps({"stages": rows, "refused": host.failures}, indent=1))
        return EXIT_OK
    for r in rows:  # what a stage takes (landmark schemes) or, for a detector, gives
        schemes = r["produces"] if r["kind"] == "detector" else r["accepts"]
        r["landmarks"] = ("gives " if r["kind"] == "detector" else "takes ") + (
            ",".join(schemes) if schemes else ("any" if r["kind"] != "detector" else "(not known)")
        )
        r["mesh"] = r["mesh_units"] or "-"  # the mesh frames a regressor gives or a refiner takes
    keys = ("kind", "name", "distribution", "landmarks", "mesh")
    widths = [max([len(k)] + [len(str(r[k])) for r in rows]) for k in keys]
    print(
        f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'DISTRIBUTION':<{widths[2]}}  VERSION  "
        f"{'LANDMARKS':<{widths[3]}}  {'MESH':<{widths[4]}}  SUMMARY"
    )
    for r in rows:
        print(
            f"{r['kind']:<{widths[0]}}  {r['name']:<{widths[1]}}  {r['distribution']:<{widths[2]}}  "
            f"{r['version']:<7}  {r['landmarks']:<{widths[3]}}  {r['mesh']:<{widths[4]}}  {r['summary']}"
            + (f" [{r['license']}]" if r["license"] else "")
        )
    for message in host.failures.values():
        print(f"refused: {message}")
    return EXIT_OK


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be I/N (e.g. 3/10), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: I must be in 0..N-1 and N at least 1")
    return index, count


def _read_list(path: Path) -> list[str]:
    """``--files-from``: one input a line; blank lines and ``#`` comments skipped. The names are bytes, as
    the file system's (a Latin-1 name in a UTF-8 list is still its file), decoded as os.listdir does."""
    try:
        lines = os.fsdecode(path.read_bytes()).splitlines()
    except OSError as exc:
        raise ConfigError(f"--files-from {path}: cannot read it ({exc.strerror or exc})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, ``docker stop``, a Kubernetes pod deleted or evicted) stops a batch as Ctrl-C does:
    the workers killed, summary.json written, exit 130."""
    raise KeyboardInterrupt


def _on_sigterm(handler: Any) -> Any:
    """``signal.signal(SIGTERM, handler)``'s previous handler; None (nothing set) off the main thread, where
    Python takes no signal handlers (``cmd_reconstruct`` called from a program's thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _texture_size(text: str) -> int | None:
    """``--texture-size``: "auto" (None) or a side in texels."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a side in texels (e.g. 512), got {text!r}") from None


def cmd_reconstruct(args: argparse.Namespace) -> int:
    formats, unknown = mesh_formats(args.formats.split(","))
    if unknown:
        raise ConfigError(f"unknown mesh format(s) {', '.join(unknown)}; known: obj, ply, glb")
    if not formats:
        raise ConfigError("--formats names no mesh format; known: obj, ply, glb")
    if args.texture_size is not None and not TEXTURE_SIDES[0] <= args.texture_size <= TEXTURE_SIDES[1]:
        raise ConfigError(
            f"--texture-size must be auto or in {TEXTURE_SIDES[0]}..{TEXTURE_SIDES[1]}, got {args.texture_size}"
        )
    if not 0 <= args.png_compression <= 9:
        raise ConfigError(f"--png-compression must be in 0..9, got {args.png_compression}")
    if args.view:
        from facerecon.outputs.viewer.assets import bundle_js

        bundle_js()  # the viewer's JavaScript is installed: else a clear error now, not after the batch
        formats += () if "glb" in formats else ("glb",)
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads is not None and args.threads < 0:
        raise ConfigError(f"--threads must be at least 0 (0: the libraries' defaults), got {args.threads}")
    if args.address is not None and args.engine != "ray":
        raise ConfigError("--address names a Ray cluster: it needs --engine ray")
    shard = _parse_shard(args.shard)
    if args.files_from is not None:
        args.inputs += _read_list(args.files_from)
    if not args.inputs:
        raise ConfigError("no inputs: give image or video files, folders, patterns or --files-from FILE")
    if args.fps is not None and args.every != 1:
        raise ConfigError("--every and --fps both choose the frames: give one of them")
    tag = "" if shard is None else f"-shard-{shard[0]}-of-{shard[1]}"
    try:
        video = VideoOptions(
            sampling=Sampling(every=args.every, fps=args.fps, sequence_fps=args.sequence_fps),
            smooth=not args.no_smoothing,
            aggregate=args.aggregate,
            landmark_filter=OneEuroSettings(),
        )
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    config = load_config(args)
    if args.save_phases and (args.fast or not config.refiners):
        raise ConfigError(
            "--save-phases writes the fine stage's phases, and "
            + ("--fast runs no fine stage" if args.fast else "no refiner runs (--refiners '')")
        )
    out: Path = args.output
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: exists and is not a folder")
    if not out.exists():
        args.created_output = out  # removed again if still empty when a configuration error ends the run (main)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"-o {out}: cannot create the folder ({exc.strerror or exc})") from None
    try:  # a read-only folder (or file system): one clear error now, not one per input
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ConfigError(f"-o {out}: cannot write there ({exc.strerror or exc})") from None
    failures: list[dict[str, str]] = []
    succeeded: list[dict[str, object]] = []
    jobs: list[tuple[Path, str]] = []
    skipped: list[str] = []
    finished: set[str] = set()  # inputs with an outcome
    interrupted = False
    start = time.perf_counter()
    pool: WorkerPool | RayEngine | None = None
    workers = args.jobs
    show_bar = False

    def record(outcome: Outcome) -> None:
        finished.add(outcome.input)
        if outcome.error is not None:
            failures.append({"input": outcome.input, "error": outcome.error})
            if outcome.crashed:  # the worker could not log it itself
                log.error("%s: %s", outcome.input, outcome.error)
            return
        entry: dict[str, object] = {
            "input": outcome.input,
            "output": outcome.output,
            "faces": outcome.faces,
            "seconds": outcome.seconds,
        }
        if outcome.frames is not None:
            entry["frames"] = outcome.frames
        succeeded.append(entry)
        if not args.quiet and not show_bar:
            said = f"{outcome.faces} face(s)" if outcome.frames is None else f"{outcome.frames} frame(s)"
            print(f"{outcome.input} -> {outcome.output} ({said})")

    # From here on a Ctrl-C or SIGTERM, however early, still writes summary.json (what was done and what was not).
    on_sigterm = _on_sigterm(_stop_on_sigterm)
    try:
        remove_stale_partials(out)  # what a killed earlier run left
        media, problems = find_inputs(args.inputs, sequence=args.sequence)
        if shard is None or shard[0] == 0:  # every shard sees the same inputs: the first reports what is missing
            failures += [{"input": item, "error": reason} for item, reason in problems]
        for item, reason in problems:
            log.error("%s: %s", item, reason)
        paths = [path for path, _ in media]
        jobs = list(zip(paths, output_names(paths), strict=True))  # named before sharding: alike in every shard
        videos = {path for path, is_video in media if is_video}
        del media, paths  # jobs holds what follows: per input only what a long list (100k) needs
        if shard is not None:
            jobs = jobs[shard[0] :: shard[1]]
        check_output_folder(out, [name for _, name in jobs])  # nothing of anyone else's is written over
        todo = jobs
        if not args.overwrite:  # resume: a complete result folder is renamed into place only when whole
            todo = []
            for path, name in jobs:
                earlier = recorded_input(out / name, path in videos)
                if earlier is None:
                    todo.append((path, name))
                elif same_input(earlier, path):
                    skipped.append(str(path))
                else:  # another photo of the same name, from an earlier run: its result is not replaced
                    error = f"{out / name} holds the result of another input, {earlier} (--overwrite replaces it)"
                    failures.append({"input": str(path), "error": error})
                    log.error("%s: %s", path, error)
            finished.update(skipped)
            finished.update(failure["input"] for failure in failures)
        if not todo:  # nothing to run: the configuration is still checked (no model loads)
            Pipeline(config).close()
            if skipped and not args.quiet:
                print(f"facerecon: {len(skipped)} input(s) already done, skipped (--overwrite redoes them)")
        # streamed to the engine, which takes a few at a time: no second list of every output folder
        tasks = ((path, out / name, video if path in videos else None) for path, name in todo)

        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        show_bar = not args.quiet and sys.stderr.isatty() and len(todo) > 1
        write = WriteOptions(
            formats=formats,
            texture_size=args.texture_size,
            save_phases=args.save_phases,
            frame=args.frame,
            png_compression=args.png_compression,
        )
        workers = min(args.jobs, max(1, len(todo)))  # no more workers (Ray: replicas per stage) than inputs
        if args.engine == "ray":
            from facerecon.engines.ray_engine import RayEngine

            pool = RayEngine(config, write, address=args.address, replicas=workers)
        else:
            pool = WorkerPool(config, write, jobs=workers)
        with logging_redirect_tqdm():
            if todo:
                pool.start()
                _on_sigterm(_stop_on_sigterm)  # again: ray.init sets its own (sys.exit)
            # tqdm's rate is the throughput (image/s) over the whole run
            for outcome in tqdm(
                pool.run(tasks), total=len(todo), disable=not show_bar, unit="image", desc="reconstruct"
            ):
                record(outcome)
    except KeyboardInterrupt:
        interrupted = True
        if pool is not None:
            # inputs that had just finished, or not yet recorded: the Ctrl-C may have come inside record()
            # itself, so what counts is whether an entry was written, not whether record() began
            recorded = {str(entry["input"]) for entry in succeeded} | {failure["input"] for failure in failures}
            for late in pool.interrupt():
                if late.input not in recorded:
                    record(late)
        print(f"facerecon: interrupted after {len(finished) - len(skipped)} of {len(jobs)} input(s)", file=sys.stderr)
    finally:
        if pool is not None:
            pool.close()
        remove_stale_partials(out)  # a worker killed mid-write (a crash, Ctrl-C)
        if on_sigterm is not None:
            _on_sigterm(on_sigterm)
    failures_file = out / f"failures{tag}.json"
    if failures:
        atomic_write(failures_file, (json.dumps({"failures": failures}, indent=1) + "\n").encode())
        print(f"facerecon: {len(failures)} input(s) failed, see {failures_file}", file=sys.stderr)
    else:
        failures_file.unlink(missing_ok=True)
    seconds = round(time.perf_counter() - start, 3)
    images = sum(int(str(s.get("frames", 1))) for s in succeeded)
    summary = {
        # inputs whose folder is not their stem (a shared stem, a batch file's name): said here too
        "renamed": [{"input": str(path), "output": str(out / name)} for path, name in jobs if name != path.stem],
        "succeeded": succeeded,
        "failed": len(failures),
        "failures": failures,
        "skipped": skipped,
        # interrupted before the inputs were even listed: the inputs as given
        "not_processed": [str(path) for path, _ in jobs if str(path) not in finished]
        if jobs or not interrupted
        else list(args.inputs),
        "interrupted": interrupted,
        "jobs": workers,
        "engine": args.engine,
        "seconds": seconds,
        "counts": {"succeeded": len(succeeded), "failed": len(failures), "skipped": len(skipped), "images": images},
        # throughput of the photos and video frames this run reconstructed (skipped inputs excluded)
        "images_per_s": round(images / seconds, 4) if seconds > 0 else None,
    }
    atomic_write(out / f"summary{tag}.json", (json.dumps(summary, indent=1) + "\n").encode())
    if args.view and (succeeded or skipped) and not interrupted:  # a resumed batch's page too
        from facerecon.outputs.viewer.page import write_static_page

        page = write_static_page(out)
        if not args.quiet:
            print(f"viewer: {page} (open it in a browser)")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILURES if failures else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
