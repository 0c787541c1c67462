"""``facerecon view OUT --port N``: the viewer served on loopback by the standard library's http.server.

Routes: ``/`` the page (the folder is read again on each load, so a reload shows new results),
``/mesh/<entry>/<stage>.glb`` a stage's mesh, ``/photo/<entry>`` the photo. Nothing else of the disk is
reachable: paths are never joined from the request. HEAD is answered as GET, without the body. Stops on
Ctrl-C.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from facerecon.kernel.contract.errors import ConfigError, FaceReconError
from facerecon.outputs.viewer.assets import bundle_js
from facerecon.outputs.viewer.page import Entry, find_entries, mesh_bytes, page_data, photo_bytes, render_page

log = logging.getLogger("facerecon.viewer")

MESH_CACHE_BYTES = 64 * 2**20
"""The served meshes (GLB, an OBJ / PLY converted) kept for the next request, at most this many bytes: the
least recently served go first, so clicking through a large folder does not grow the server's memory."""


class ViewerServer(ThreadingHTTPServer):
    """Serves one output folder's viewer on ``127.0.0.1:port`` (0: any free port; see :attr:`url`)."""

    daemon_threads = True

    def __init__(self, out: str | Path, port: int = 8000, host: str = "127.0.0.1") -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {port}")
        self.out = Path(out)
        self.host = host
        self.entries: list[Entry] = find_entries(self.out)  # a folder without results fails before binding
        bundle_js()  # so does an installation without the viewer's JavaScript
        self._lock = threading.Lock()
        self._meshes: OrderedDict[tuple[Path, int, int], bytes] = OrderedDict()  # (file, mtime, size) -> GLB
        self.mesh_cache_bytes = MESH_CACHE_BYTES
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is in use (another `facerecon view`?): choose another with --port, "
                    "or --port 0 for any free one"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server_port}/"

    def page(self) -> bytes:
        with self._lock:
            self.entries = find_entries(self.out)
            entries = list(self.entries)
        data = page_data(
            entries,
            lambda i, stage: f"mesh/{i}/{quote(stage.stage)}.glb",
            lambda i: f"photo/{i}",
        )
        return render_page(f"facerecon — {self.out.resolve().name}", data).encode("utf-8")

    def mesh(self, path: Path) -> bytes:
        """The file's mesh as GLB, from the cache while the file is unchanged (:data:`MESH_CACHE_BYTES`)."""
        stat = path.stat()
        key = (path, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._meshes:
                self._meshes.move_to_end(key)
                return self._meshes[key]
        data = mesh_bytes(path)  # outside the lock: a conversion takes a while
        with self._lock:
            for old in [k for k in self._meshes if k[0] == path]:  # an older version of the file
                del self._meshes[old]
            self._meshes[key] = data
            while len(self._meshes) > 1 and sum(map(len, self._meshes.values())) > self.mesh_cache_bytes:
                self._meshes.popitem(last=False)
        return data

    def entry(self, index: str) -> Entry | None:
        with self._lock:
            # ASCII digits only: str.isdigit() also takes "²", which int() refuses
            number = int(index) if index.isascii() and index.isdigit() else len(self.entries)
            return self.entries[number] if number < len(self.entries) else None


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        try:
            if parts in ([], ["index.html"]):
                return self._send(self.server.page(), "text/html; charset=utf-8")
            if len(parts) == 3 and parts[0] == "mesh" and parts[2].endswith(".glb"):
                entry = self.server.entry(parts[1])
                stage = next((s for s in entry.stages if s.stage == parts[2][:-4]), None) if entry else None
                if stage is not None:
                    return self._send(self.server.mesh(stage.mesh), "model/gltf-binary")
            entry = self.server.entry(parts[1]) if len(parts) == 2 and parts[0] == "photo" else None
            if entry is not None and not entry.lone:  # a mesh file alone has no photo
                return self._send(*photo_bytes(entry))
            if parts == ["favicon.ico"]:
                return self._send(b"", "image/x-icon", HTTPStatus.NO_CONTENT)
        except (OSError, FaceReconError) as exc:  # a file removed or broken since the page was made
            log.error("%s: %s", self.path, exc)
            return self._send(str(exc).encode(), "text/plain; charset=utf-8", HTTPStatus.INTERNAL_SERVER_ERROR)
        self._send(b"not found", "text/plain; charset=utf-8", HTTPStatus.NOT_FOUND)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()  # _send leaves the body out

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # results are rewritten in place by the next run
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)
