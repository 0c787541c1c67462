"""Regenerate the committed Python gRPC code from the protos.

    python -m facerecon.services.codegen           # rewrite facerecon/v1/ from protos/facerecon/v1/
    python -m facerecon.services.codegen --check   # exit 1 (and say what) if facerecon/v1/ is stale

The protocol's source of truth is ``protos/facerecon/v1/*.proto`` (proto package ``facerecon.v1``). They are
compiled with ``--proto_path=protos``, so the generated modules import each other as ``facerecon.v1.x_pb2``:
the Python package **is** the proto package, and the code lands in ``facerecon/v1/`` (inside the
``facerecon`` package folder) with no import rewriting. Beside it go ``.pyi`` stubs (for mypy), a copy of
each ``.proto`` (so the installed package carries the protocol for other languages, at the same relative
path ``facerecon/v1/x.proto`` that protoc and grpc tools expect), an ``__init__.py`` and a ``ruff.toml``
that keeps ruff away from generated code. ``tests/test_services_protocol.py`` fails when they drift.

Needs ``grpcio-tools`` (a development dependency); nothing here runs at install or run time.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_PACKAGE = "facerecon/v1"
PROTO_FILES = ("records.proto", "stages.proto", "pipeline.proto")
WITH_SERVICES = ("stages.proto", "pipeline.proto")
COPY_HEADER = "// Copy of protos/{path}, made by `python -m facerecon.services.codegen`. DO NOT EDIT: edit that file.\n"
INIT = '''"""Generated gRPC code of the proto package ``facerecon.v1`` (source: protos/facerecon/v1/*.proto).

Regenerate with ``python -m facerecon.services.codegen``; do not edit. Import the modules directly, e.g.
``from facerecon.v1 import records_pb2, stages_pb2, stages_pb2_grpc``.
"""
'''
RUFF = '# Generated code (python -m facerecon.services.codegen): neither linted nor formatted.\nexclude = ["*"]\n'


def repo_root() -> Path:
    """The source checkout this module sits in (services/ is one level below the root)."""
    return Path(__file__).resolve().parents[1]


def generate(repo: Path, out: Path) -> dict[str, bytes]:
    """Compile the protos into ``out`` and return {relative name: content} of everything facerecon/v1 holds."""
    from grpc_tools import protoc  # a development dependency

    proto_root = repo / "protos"
    files = [f"{PROTO_PACKAGE}/{name}" for name in PROTO_FILES]
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(files)}")
    generated: dict[str, bytes] = {}
    package = out / PROTO_PACKAGE
    for name in PROTO_FILES:
        stem = name.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi") + (("_pb2_grpc.py",) if name in WITH_SERVICES else ()):
            generated[stem + suffix] = (package / (stem + suffix)).read_bytes()
        source = (proto_root / PROTO_PACKAGE / name).read_text(encoding="utf-8")
        generated[name] = (COPY_HEADER.format(path=f"{PROTO_PACKAGE}/{name}") + source).encode()
    generated["__init__.py"] = INIT.encode()
    generated["ruff.toml"] = RUFF.encode()
    return generated


def target_dir(repo: Path) -> Path:
    return repo / "facerecon" / "v1"


def stale_files(repo: Path) -> list[str]:
    """Names in facerecon/v1 whose committed content differs from a fresh generation (or is missing/extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(repo, Path(tmp))
    target = target_dir(repo)
    present = {p.name for p in target.iterdir() if p.is_file()} if target.is_dir() else set()
    stale = [
        name for name, data in fresh.items() if not (target / name).is_file() or (target / name).read_bytes() != data
    ]
    stale += sorted(present - set(fresh))
    return sorted(stale)


def write(repo: Path) -> list[str]:
    """Regenerate facerecon/v1/ in place; returns the names written."""
    target = target_dir(repo)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(repo, Path(tmp))
    if target.is_dir():
        for path in target.iterdir():
            if path.is_file() and path.name not in fresh:
                path.unlink()
            elif path.is_dir() and path.name == "__pycache__":
                shutil.rmtree(path)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in fresh.items():
        (target / name).write_bytes(data)
    return sorted(fresh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facerecon.services.codegen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when facerecon/v1 is stale")
    parser.add_argument("--repo", type=Path, default=repo_root(), help="the source checkout")
    args = parser.parse_args(argv)
    tools = importlib.metadata.version("grpcio-tools")
    if args.check:
        stale = stale_files(args.repo)
        if stale:
            print(
                f"stale generated code (grpcio-tools {tools}): {', '.join(stale)}; "
                "run python -m facerecon.services.codegen"
            )
            return 1
        print("facerecon/v1 is up to date")
        return 0
    names = write(args.repo)
    print(f"wrote {len(names)} files into {target_dir(args.repo)} with grpcio-tools {tools}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
