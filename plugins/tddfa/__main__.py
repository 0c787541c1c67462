"""``python -m facerecon.plugins.tddfa export-onnx PTH ONNX [--width W]``: convert a 3DDFA_V2 PyTorch
checkpoint to ONNX, so the ``3ddfa`` regressor can run it with onnxruntime alone (needs torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from facerecon.kernel.contract.errors import ModelFileError
from facerecon.plugins.tddfa.network import export_onnx


def main(argv: list[str] | None = None) -> int:
    """``python -m facerecon.plugins.tddfa export-onnx mb05_120x120.pth mb05_120x120.onnx``"""
    parser = argparse.ArgumentParser(prog="python -m facerecon.plugins.tddfa")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-onnx", help="convert a 3DDFA_V2 .pth checkpoint to .onnx")
    export.add_argument("pth", type=Path)
    export.add_argument("onnx", type=Path)
    export.add_argument("--width", type=float, default=None, help="MobileNet width (default: from the file)")
    args = parser.parse_args(argv)
    try:
        written = export_onnx(args.pth, args.onnx, width=args.width)
    except ModelFileError as exc:
        parser.exit(1, f"error: {exc}\n")
    print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
