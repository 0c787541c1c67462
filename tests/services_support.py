"""Shared by the gRPC service tests: small deterministic stage plugins (a segmenter, refiners with and
without image maps, a slow one), servers in threads, and a deep comparison of records."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.kernel import (
    Face,
    ImageMaps,
    Landmarks,
    Mesh,
    PluginHost,
    Refinement,
    Segmentation,
    StageRegistrar,
    hookimpl,
)
from facerecon.kernel.contract.images import check_image
from facerecon.services import convert
from facerecon.v1 import stages_pb2

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


class ToySegmenter:
    """Label 1 ("skin") inside the face box, 0 elsewhere; the mean colour of each region."""

    def __init__(self, options: Any, device: str) -> None:
        pass

    def segment(self, image: np.ndarray, face: Face) -> Segmentation:
        image = check_image(image)
        labels = np.zeros(image.shape[:2], np.uint8)
        x0, y0, x1, y1 = (int(round(float(v))) for v in face.box)
        labels[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 1
        colors = {
            name: image[labels == i].reshape(-1, 3).mean(0) / 255.0
            for i, name in ((0, "background"), (1, "skin"))
            if (labels == i).any()
        }
        return Segmentation(labels, {0: "background", 1: "skin"}, colors)


class ToySmooth:
    """Stage "medium": pulls every vertex a little towards the mesh centre (depends on the segmentation)."""

    stage = "medium"

    def __init__(self, options: Any, device: str) -> None:
        pass

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Mesh:
        check_image(image)
        v = np.asarray(mesh.vertices, np.float64)
        amount = 0.05 if segmentation is None else 0.05 + 0.01 * float(segmentation.labels.mean())
        return mesh.with_vertices(v + amount * (v.mean(0) - v))


class ToyMaps:
    """Stage "fine": returns a Refinement with image maps and one phase mesh."""

    stage = "fine"

    def __init__(self, options: Any, device: str) -> None:
        pass

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Refinement:
        image = check_image(image)
        x0, y0, x1, y1 = (int(v) for v in face.box)
        crop = image[max(y0, 0) : y1, max(x0, 0) : x1].astype(np.float32) / 255.0
        depth = crop.mean(2)
        depth[:2] = np.nan
        v = np.asarray(mesh.vertices, np.float64)
        shifted = mesh.with_vertices(v + [0.0, 0.0, 0.5])
        return Refinement(
            mesh=shifted,
            maps=ImageMaps((max(x0, 0), max(y0, 0)), {"depth": depth, "albedo": crop}),
            phases={"half": mesh.with_vertices(v + [0.0, 0.0, 0.25])},
        )


@dataclass(frozen=True)
class SlowOptions:
    """seconds: per call; load_seconds: how long building the stage takes; warm_seconds: its warm_up()."""

    seconds: float = 0.5
    load_seconds: float = 0.0
    warm_seconds: float = 0.0


class Slow:
    """Stage "slow": sleeps, then returns the mesh unchanged (for deadlines, concurrency, shutdown)."""

    stage = "slow"

    def __init__(self, options: SlowOptions | None, device: str) -> None:
        self.options = options or SlowOptions()
        time.sleep(self.options.load_seconds)

    def warm_up(self) -> None:
        time.sleep(self.options.warm_seconds)

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Mesh:
        time.sleep(self.options.seconds)
        return mesh


class Broken:
    """Stage "broken": raises on odd calls, returns something that is not a Mesh on even ones."""

    stage = "broken"

    def __init__(self, options: Any, device: str) -> None:
        self.calls = 0

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Any:
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError("boom")
        return "not a mesh"


@hookimpl
def facerecon_register_stages(registry: StageRegistrar) -> None:
    registry.register("segmenter", "toy-seg", ToySegmenter, summary="test: box segmentation")
    registry.register("refiner", "toy-smooth", ToySmooth, summary="test: shrink towards the centre")
    registry.register("refiner", "toy-maps", ToyMaps, summary="test: a Refinement with maps and a phase")
    registry.register("refiner", "slow", Slow, options=SlowOptions, summary="test: sleeps")
    registry.register("refiner", "broken", Broken, summary="test: fails")


def toy_host() -> PluginHost:
    """The installed plugins, the services' remote plugin and commands (registered by hand when their
    entry points are not installed yet), and the toys above."""
    from facerecon.services import commands, remote

    host = PluginHost()
    if not host.pm.has_plugin("remote"):
        host.register_plugin(remote, name="remote")
    if not host.pm.has_plugin("serve"):
        host.register_plugin(commands, name="serve")
    host.register_plugin(sys.modules[__name__], name="toys")
    return host


@contextlib.contextmanager
def serving(server: Any, timeout: float = 60.0) -> Iterator[str]:
    """Start a facerecon.services.server.Server, wait until it is ready, yield "127.0.0.1:PORT", stop it."""
    port = server.start()
    try:
        assert server.wait_ready(timeout), "server did not load its model in time"
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def slow_server_script(seconds: float, grace_s: float, warm_seconds: float = 0.0) -> str:
    """Python source of a server process for the "slow" refiner (``seconds`` per call, ``warm_seconds`` of
    warm-up, ``grace_s`` on SIGTERM) on a free port: prints "facerecon: serving on HOST:PORT", then serves
    until a signal."""
    options = {"seconds": seconds, "warm_seconds": warm_seconds}
    return f"""
import logging, sys
logging.basicConfig(level=logging.INFO)
from services_support import toy_host
from facerecon.services.server import Server, ServerSettings
server = Server.for_stage("refiner", "slow", host=toy_host(), options={options!r},
                          settings=ServerSettings(port=0, grace_s={grace_s!r}))
server.start()
print(f"facerecon: serving on {{server.endpoint}}", flush=True)
sys.exit(server.serve_until_signal())
"""


@contextlib.contextmanager
def slow_server_process(seconds: float, grace_s: float, warm_seconds: float = 0.0) -> Iterator[tuple[Any, str]]:
    """``slow_server_script`` running in its own process (text pipes): yields the process and the address it
    printed; kills it at the end if it still runs."""
    process = subprocess.Popen(
        [sys.executable, "-c", slow_server_script(seconds, grace_s, warm_seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        yield process, process.stdout.readline().strip().rsplit(" ", 1)[-1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def small_refine_request() -> stages_pb2.RefineRequest:
    """A valid RefineRequest: a 32x32 black image, a 3-point face and a one-triangle mesh ("t")."""
    request = stages_pb2.RefineRequest()
    convert.image_to_proto(np.zeros((32, 32, 3), np.uint8), request.image)
    convert.face_to_proto(Face([1, 1, 20, 20], 0.9, Landmarks("s", np.ones((3, 3)))), request.face)
    convert.mesh_to_proto(Mesh(np.eye(3), [[0, 1, 2]], "t"), request.mesh)
    return request


def subprocess_env() -> dict[str, str]:
    """Environment for a server subprocess that can import this module (for the toy plugins)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# -- comparing records --------------------------------------------------------------------------


def differences(a: Any, b: Any, path: str = "", skip: frozenset[str] = frozenset()) -> list[str]:
    """Where two records (or nested values) differ; arrays compared exactly (NaN equal to NaN)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        if a_arr.shape != b_arr.shape or a_arr.dtype != b_arr.dtype:
            return [f"{path}: {a_arr.dtype}{a_arr.shape} != {b_arr.dtype}{b_arr.shape}"]
        return [] if np.array_equal(a_arr, b_arr, equal_nan=a_arr.dtype.kind == "f") else [f"{path}: values differ"]
    if is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return [f"{path}: {type(a).__name__} != {type(b).__name__}"]
        out: list[str] = []
        for f in fields(a):
            if f.name not in skip:
                out += differences(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}", skip)
        return out
    if isinstance(a, (dict,)) or hasattr(a, "keys"):
        if not hasattr(b, "keys") or list(a.keys()) != list(b.keys()):
            return [f"{path}: keys {list(a.keys())} != {list(b.keys()) if hasattr(b, 'keys') else b!r}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}[{k!r}]", skip)]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b) if isinstance(b, (list, tuple)) else b!r}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]", skip)]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def install_entry_points(monkeypatch: Any, tmp_path: Path) -> None:
    """Make the `serve` command and the `remote` stage plugin visible through entry points, as the
    installed package announces them; a stand-in distribution when this checkout's metadata lacks them."""
    import importlib.metadata

    names = {ep.name for ep in importlib.metadata.entry_points(group="facerecon")}
    if {"serve", "remote"} <= names:
        return
    dist = tmp_path / "facerecon_services_entry_points-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: facerecon-services-entry-points\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[facerecon]\nremote = facerecon.services.remote\nserve = facerecon.services.commands\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def make_test_certificates(folder: Path) -> Path:
    """Throw-away certificates in ``folder`` (openssl, which the caller checked is installed): a CA
    (``ca.pem``/``ca.key``), a server certificate for localhost and 127.0.0.1 and a client certificate
    signed by it (``server.*``, ``client.*``), and a self-signed ``other.pem``/``other.key`` whose key matches
    no other."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=facerecon test CA")
    run("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.pem", "-days", "2", "-subj", "/CN=other")
    for name, san in (("server", "DNS:localhost,IP:127.0.0.1"), ("client", "DNS:client")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    return folder
