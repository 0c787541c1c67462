"""Cross-language: the Node.js client in clients/node (@grpc/grpc-js + @grpc/proto-loader, loading the .proto
files at run time) calls the Pipeline service on loopback with a real photo and writes the mesh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from services_support import REPO, serving

from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.services.server import Server, ServerSettings

CLIENT = REPO / "clients" / "node"
CONFIG = PipelineConfig(detector="mediapipe", regressor="landmark-mesh", device="cpu", refiners=())


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (Node.js 18+ runs the cross-language client)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI must have it")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    node = _need("node")
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = _need("npm")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT, check=True, capture_output=True, timeout=300)
    return [node, str(CLIENT / "reconstruct.js")]


@pytest.fixture(scope="module")
def pipeline_address():
    with serving(Server.for_pipeline(CONFIG, settings=ServerSettings(port=0))) as address:
        yield address


def read_obj(path) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            vertices.append([float(v) for v in line.split()[1:]])
        elif line.startswith("f "):
            faces.append([int(corner.split("/")[0]) - 1 for corner in line.split()[1:]])
    return np.array(vertices), np.array(faces)


def test_node_client_reconstructs_a_real_photo(node_client, pipeline_address, lfpw, tmp_path):
    obj, result = tmp_path / "face.obj", tmp_path / "result.json"
    run = subprocess.run(
        [*node_client, pipeline_address, str(lfpw[0]), str(obj), "--result", str(result)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["faces"] == 1 and summary["stage"] == "coarse" and summary["plugin"] == "landmark-mesh"
    with Pipeline(CONFIG) as pipe:
        expected = pipe.reconstruct_file(lfpw[0]).reconstructions[0].final.mesh
    vertices, triangles = read_obj(obj)
    assert summary["vertices"] == len(vertices) == len(expected.vertices)
    # The OBJ is y up, z towards the viewer: (x, -y, -z) of the mesh frame; float32 values exactly.
    assert np.array_equal(vertices.astype(np.float32), expected.vertices * np.float32([1, -1, -1]))
    assert np.array_equal(triangles, expected.triangles)
    assert json.loads(result.read_text())["reconstructions"][0]["stages"][0]["vertices"] == len(vertices)


def test_node_client_reports_status_codes(node_client, pipeline_address, tmp_path):
    bad = subprocess.run(
        [*node_client, pipeline_address, str(REPO / "README.md"), str(tmp_path / "x.obj")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (320, 240), (128, 128, 128)).save(blank)
    none = subprocess.run(
        [*node_client, pipeline_address, str(blank), str(tmp_path / "y.obj")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert none.returncode == 3 and "no face" in none.stderr
