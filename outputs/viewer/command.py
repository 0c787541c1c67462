"""``facerecon view OUT``: look at a reconstruction folder in 3D in the browser.

    facerecon view out/                 # serves it on http://127.0.0.1:8000/ until Ctrl-C
    facerecon view out/ --port 0        # any free port (printed)
    facerecon view out/ --static        # writes out/index.html (opens from file://, no server)
    facerecon view head.glb             # one mesh file alone (.glb, .obj, .ply): no photo, no landmarks

Registered through the ``facerecon_register_commands`` hook (the ``view`` entry point), like
``facerecon serve`` and ``facerecon models``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facerecon.kernel.contract import hookimpl
from facerecon.outputs.viewer.page import write_static_page
from facerecon.outputs.viewer.server import ViewerServer


def cmd_view(args: argparse.Namespace) -> int:
    if args.static:
        print(f"wrote {write_static_page(args.output)}")
        return 0
    server = ViewerServer(args.output, port=args.port)
    print(f"facerecon view: serving {args.output} on {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("facerecon view: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


@hookimpl
def facerecon_register_commands(subcommands: argparse._SubParsersAction) -> None:
    view = subcommands.add_parser(
        "view",
        help="look at reconstructions in 3D in the browser",
        description="Serve a local 3D viewer of an output folder of `facerecon reconstruct` on 127.0.0.1 (three.js, "
        "offline): orbit, the stages coarse / medium / fine, texture and normal map on or off, the 68 landmarks, the "
        "photo beside it, every input of the folder. --static writes OUT/index.html instead, which opens from disk. "
        "OUT may also be one mesh file (.glb, .obj, .ply), shown alone.",
    )
    view.add_argument(
        "output", type=Path, metavar="OUT", help="the output folder (or one input's folder in it, or a mesh file)"
    )
    view.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port) (default: 8000)")
    view.add_argument("--static", action="store_true", help="write OUT/index.html with everything embedded and exit")
    view.set_defaults(handler=cmd_view)
