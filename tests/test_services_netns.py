"""Multi-host: stage servers as separate "hosts" in network namespaces made here (ip netns + veth pairs), the
pipeline across them from a client namespace, and one of two regressor replicas killed mid-batch without
failing the batch.

Every address (10.254.x.y) exists only inside these namespaces; the client runs inside its own namespace,
whose only routes lead to them, so no traffic can leave. Needs root and iproute2 (`ip`); skips with the
reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from services_support import subprocess_env

PREFIX = f"fr{uuid.uuid4().hex[:6]}"
CLIENT_NS = f"{PREFIX}c"
HOSTS = {  # name -> (namespace, address, serve arguments)
    "detector": (f"{PREFIX}d", "10.254.1.2", ["detector", "--plugin", "mediapipe"]),
    "regressor-a": (f"{PREFIX}a", "10.254.2.2", ["regressor", "--plugin", "landmark-mesh"]),
    "regressor-b": (f"{PREFIX}b", "10.254.3.2", ["regressor", "--plugin", "landmark-mesh"]),
    "segmenter": (f"{PREFIX}s", "10.254.4.2", ["segmenter", "--plugin", "landmark-regions"]),
}
PORT = 50051


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _can_make_namespaces() -> str | None:
    """None when this machine lets us create namespaces and veth pairs, else why not."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}p"
    try:
        _ip("netns", "add", probe)
        _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace with a veth pair here: {exc.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture(scope="module")
def hosts(lfpw):
    reason = _can_make_namespaces()
    if reason:
        pytest.skip(reason)
    made: list[str] = []
    servers: dict[str, subprocess.Popen] = {}
    try:
        for ns in [CLIENT_NS] + [h[0] for h in HOSTS.values()]:
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for i, (ns, address, _) in enumerate(HOSTS.values(), start=1):
            # One veth pair per host: client side 10.254.i.1, host side 10.254.i.2.
            _ip("link", "add", f"{PREFIX}x{i}", "netns", CLIENT_NS, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", CLIENT_NS, "addr", "add", f"10.254.{i}.1/24", "dev", f"{PREFIX}x{i}")
            _ip("-n", CLIENT_NS, "link", "set", f"{PREFIX}x{i}", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        for name, (ns, address, serve) in HOSTS.items():
            command = [sys.executable, "-m", "facerecon.services", "serve", *serve, "--host", address]
            command += ["--port", str(PORT), "--insecure", "--device", "cpu", "--grace", "1"]
            servers[name] = subprocess.Popen(
                ["ip", "netns", "exec", ns, *command],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=subprocess_env(),
            )
        for name, server in servers.items():
            line = server.stdout.readline()
            assert f"on {HOSTS[name][1]}:{PORT}" in line, f"{name} did not start: {line} {server.stderr.read()}"
        yield servers
    finally:
        for server in servers.values():
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


CLIENT = """
import json, os, signal, sys
import numpy as np
from services_support import toy_host
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.services.remote import apply_remote

photos, victim, detector, regressors, segmenter = sys.argv[1].split(","), int(sys.argv[2]), *sys.argv[3:6]
local_config = PipelineConfig(
    detector="mediapipe", regressor="landmark-mesh", segmenter="landmark-regions", device="cpu", refiners=()
)
config = apply_remote(local_config, [f"detector={detector}", f"regressor={regressors}", f"segmenter={segmenter}"])
# The photos travel gzip-compressed; the segmenter's server compresses its label maps for this caller on
# another host by itself.
config = config.with_options("detector", "remote", {"compression": "gzip"})
rows = []
with Pipeline(config, toy_host()) as remote, Pipeline(local_config) as local:
    for i, photo in enumerate(photos):
        if i == 3:
            os.kill(victim, signal.SIGKILL)  # one regressor replica dies mid-batch
        try:
            got = remote.reconstruct_file(photo)
        except Exception as exc:
            rows.append({"photo": photo, "error": f"{type(exc).__name__}: {exc}"})
            continue
        want = local.reconstruct_file(photo)
        same = np.array_equal(got.reconstructions[0].final.mesh.vertices, want.reconstructions[0].final.mesh.vertices)
        labels = np.array_equal(got.reconstructions[0].segmentation.labels, want.reconstructions[0].segmentation.labels)
        rows.append({"photo": photo, "faces": len(got.faces), "same": bool(same), "same_labels": bool(labels)})
print(json.dumps(rows))
"""


def test_pipeline_across_namespaces_survives_a_dead_replica(hosts, lfpw):
    photos = [str(p) for p in lfpw[:8]]
    regressors = ",".join(f"{HOSTS[n][1]}:{PORT}" for n in ("regressor-a", "regressor-b"))
    victim = hosts["regressor-a"].pid
    run = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            CLIENT_NS,
            sys.executable,
            "-c",
            CLIENT,
            ",".join(photos),
            str(victim),
            f"{HOSTS['detector'][1]}:{PORT}",
            regressors,
            f"{HOSTS['segmenter'][1]}:{PORT}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=240,
        env=subprocess_env(),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert hosts["regressor-a"].wait(timeout=10) == -9  # it really was killed
    assert [r.get("error") for r in rows] == [None] * len(photos), rows
    assert all(r["faces"] >= 1 and r["same"] and r["same_labels"] for r in rows), rows
    # The detector and segmenter hosts and the surviving replica are still up and shut down cleanly.
    for name in ("detector", "regressor-b", "segmenter"):
        hosts[name].terminate()
        assert hosts[name].wait(timeout=20) == 0
