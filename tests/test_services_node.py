"""Cross-language: the Node.js client in clients/node (@grpc/grpc-js + @grpc/proto-loader, loading the .proto
files at run time) calls the Pipeline service on loopback with a real photo and writes the mesh."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from services_support import REPO, make_test_certificates, serving, toy_host

from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image
from facerecon.services.server import Server, ServerSettings

CLIENT = REPO / "clients" / "node"
CONFIG = PipelineConfig(detector="mediapipe", regressor="landmark-mesh", device="cpu", refiners=())
NOWHERE = "127.0.0.1:1"
"""Nothing listens there: a check made before the call exits 2, one made after it would exit 1 (UNAVAILABLE)."""


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


@pytest.fixture(scope="module")
def local_pipeline():
    """The server's pipeline in-process: the meshes the client must write."""
    with Pipeline(CONFIG) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A throw-away CA, a server certificate for localhost/127.0.0.1, a client certificate and a second,
    self-signed one whose key matches no other (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    return make_test_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def photo(lfpw, tmp_path) -> Path:
    """A copy of a real one-face photo that the client must never touch."""
    copy = tmp_path / "photo.png"
    shutil.copyfile(lfpw[0], copy)
    return copy


def client(node_client, *args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*node_client, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_one_line_error(run: subprocess.CompletedProcess, code: int, *words: str) -> None:
    """Exit ``code`` with one line "reconstruct.js: ..." on stderr naming ``words``, no stack trace."""
    assert run.returncode == code, (run.returncode, run.stderr)
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("reconstruct.js: "), run.stderr
    assert all(word in run.stderr for word in words), run.stderr


def read_obj(path) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            vertices.append([float(v) for v in line.split()[1:]])
        elif line.startswith("f "):
            faces.append([int(corner.split("/")[0]) - 1 for corner in line.split()[1:]])
    return np.array(vertices), np.array(faces)


def test_node_client_reconstructs_a_real_photo(node_client, pipeline_address, local_pipeline, lfpw, tmp_path):
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
    expected = local_pipeline.reconstruct_file(lfpw[0]).reconstructions[0].final.mesh
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


def test_node_client_writes_one_obj_per_face(node_client, pipeline_address, local_pipeline, shared_data, tmp_path):
    """--all-faces: face 0 goes to OUT.obj, face i to OUT-face<i>.obj, each exactly the server's mesh."""
    group = shared_data / "faces" / "samples" / "multi-face" / "trump_hillary.jpg"
    obj, result = tmp_path / "face.obj", tmp_path / "result.json"
    run = client(node_client, pipeline_address, group, obj, "--all-faces", "--result", result)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    objs = [obj, tmp_path / "face-face1.obj"]
    assert summary["faces"] == summary["written"] == 2 and summary["objs"] == [str(p) for p in objs]
    expected = local_pipeline(load_image(group), all_faces=True).reconstructions
    written = json.loads(result.read_text())["reconstructions"]
    for path, face, entry in zip(objs, expected, written, strict=True):
        vertices, _ = read_obj(path)
        assert np.array_equal(vertices.astype(np.float32), face.final.mesh.vertices * np.float32([1, -1, -1]))
        assert entry["face_index"] == face.face_index and entry["stages"][-1]["mesh"] == path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face-face1.obj", "face.obj", "result.json"]


def test_node_client_result_json_describes_the_obj(node_client, pipeline_address, photo, tmp_path):
    """The OBJ is in the image frame (pixels here); result.json says so, and its 3D numbers are the OBJ's."""
    (tmp_path / "meshes").mkdir()
    obj, result = tmp_path / "meshes" / "face.obj", tmp_path / "result.json"
    run = client(node_client, pipeline_address, photo, obj, "--result", result)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["frame"] == "image"
    face = json.loads(result.read_text())["reconstructions"][0]
    stage = face["stages"][-1]
    assert face["frames"]["files"] == "image" and face["frames"]["image"]["units"] == stage["units"] == "px"
    assert stage["mesh"] == "meshes/face.obj"
    vertices, _ = read_obj(obj)
    assert np.allclose(stage["bounds"], [vertices.min(0), vertices.max(0)], atol=1e-3)
    # an image-frame, pixel-unit point (x, y, z) lies on image pixel (x, -y): the 2D landmarks
    marks3d = np.array(stage["landmarks68_3d"], np.float64)
    assert np.allclose(marks3d[:, :2] * [1, -1], np.array(stage["landmarks68"], np.float64), atol=0.05)


def test_node_client_refuses_to_overwrite_the_photo_or_an_output(node_client, pipeline_address, photo, shared_data):
    original = photo.read_bytes()
    folder = photo.parent
    (folder / "link.obj").symlink_to(photo)
    for args in (
        [photo, photo],
        [photo, folder / "sub" / ".." / "photo.png"],
        [photo, folder / "link.obj"],
        [photo, folder / "same.obj", "--result", folder / "same.obj"],
        [photo, folder / "same.obj", "--result", "same.obj"],
    ):
        run = client(node_client, NOWHERE, *args, cwd=folder)
        assert_one_line_error(run, 2, "the same file as")
    # with several faces the names of the faces after the first, known after the call, are checked too
    group = folder / "group.jpg"
    shutil.copyfile(shared_data / "faces" / "samples" / "multi-face" / "trump_hillary.jpg", group)
    args = [group, folder / "g.obj", "--all-faces", "--result", folder / "g-face1.obj"]
    assert_one_line_error(client(node_client, pipeline_address, *args), 2, "the same file as")
    assert photo.read_bytes() == original
    assert sorted(p.name for p in folder.iterdir()) == ["group.jpg", "link.obj", "photo.png"]


def test_node_client_checks_the_outputs_before_the_call(node_client, photo):
    folder = photo.parent
    (folder / "folder.obj").mkdir()
    cases = [
        ([folder / "missing" / "face.obj"], "cannot write in"),
        ([photo / "face.obj"], "is not a folder"),
        ([folder / "folder.obj"], "is a folder"),
        ([folder / "face.obj", "--result", folder / "missing" / "result.json"], "cannot write in"),
    ]
    if os.geteuid() != 0:  # root may write anywhere
        (folder / "locked").mkdir(mode=0o500)
        cases.append(([folder / "locked" / "face.obj"], "cannot write in"))
    for args, words in cases:
        assert_one_line_error(client(node_client, NOWHERE, photo, *args), 2, words)
    assert not (folder / "face.obj").exists()


def _file_size_limit(limit: int):
    """For a child process: writes beyond ``limit`` bytes fail with EFBIG, as a full disk fails them."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_node_client_writes_its_outputs_atomically(node_client, pipeline_address, photo):
    """A write that fails (the ~5 MB OBJ past a 1 MiB file size limit) leaves no partial file, no temporary
    file, the old OBJ as it was and no result.json."""
    folder = photo.parent
    (folder / "face.obj").write_text("old\n")
    args = [pipeline_address, photo, folder / "face.obj", "--result", folder / "result.json"]
    run = client(node_client, *args, preexec_fn=_file_size_limit(1 << 20))
    assert_one_line_error(run, 1, "cannot write", "no output was written")
    assert (folder / "face.obj").read_text() == "old\n"
    assert sorted(p.name for p in folder.iterdir()) == ["face.obj", "photo.png"]


def _local_error_cases(d: Path, certs: Path, photo: Path) -> dict[str, tuple[list, dict, str]]:
    """name -> (arguments, environment, words of the message): each a local error, found before the call."""
    out = d / "face.obj"
    (d / "folder").mkdir()
    big = d / "big.png"
    with big.open("wb") as handle:
        handle.truncate(100 << 20)  # sparse: 100 MiB, past the 64 MiB message limit
    tls = ["--ca", certs / "ca.pem"]
    return {
        "missing photo": ([NOWHERE, d / "nope.png", out], {}, "cannot read the photo"),
        "photo is a folder": ([NOWHERE, d / "folder", out], {}, "is a folder"),
        "photo too large": ([NOWHERE, big, out], {}, "at most"),
        "empty address": (["", photo, out], {}, "address is empty"),
        "address without port": (["127.0.0.1", photo, out], {}, "no port"),
        "unknown option": ([NOWHERE, photo, out, "--bogus"], {}, "unknown option --bogus"),
        "missing argument": ([NOWHERE, photo], {}, "expected HOST:PORT PHOTO OUT.obj"),
        "missing token file": ([NOWHERE, photo, out, "--token-file", d / "nope"], {}, "--token-file"),
        "token file is a folder": ([NOWHERE, photo, out, "--token-file", d / "folder"], {}, "is a folder"),
        "missing ca": ([NOWHERE, photo, out, "--ca", d / "nope"], {}, "--ca"),
        "ca not a certificate": ([NOWHERE, photo, out, "--ca", certs / "ca.key"], {}, "not a PEM certificate"),
        "missing cert": (
            [NOWHERE, photo, out, *tls, "--cert", d / "nope", "--key", certs / "client.key"],
            {},
            "--cert",
        ),
        "missing key": ([NOWHERE, photo, out, *tls, "--cert", certs / "client.pem", "--key", d / "nope"], {}, "--key"),
        "cert without key": ([NOWHERE, photo, out, *tls, "--cert", certs / "client.pem"], {}, "go together"),
        "key without cert": ([NOWHERE, photo, out, *tls, "--key", certs / "client.key"], {}, "go together"),
        "mismatched key": (
            [NOWHERE, photo, out, *tls, "--cert", certs / "client.pem", "--key", certs / "other.key"],
            {},
            "does not match",
        ),
        "protos nowhere": ([NOWHERE, photo, out], {"FACERECON_PROTOS": str(d / "nope")}, "FACERECON_PROTOS"),
    }


def test_node_client_local_errors_are_one_line_usage_errors(node_client, certificates, photo):
    cases = _local_error_cases(photo.parent, certificates, photo)
    for name, (args, env, words) in cases.items():
        run = client(node_client, *args, env={**os.environ, **env})
        assert run.returncode == 2 and "    at " not in run.stderr, (name, run.stderr)
        assert_one_line_error(run, 2, words)
    assert not (photo.parent / "face.obj").exists()


def test_node_client_certificate_without_ca_uses_tls(node_client, pipeline_address, certificates, photo):
    """--cert/--key without --ca: TLS verified by the default CAs (grpc-js: $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH,
    else Node's with $NODE_EXTRA_CA_CERTS), never plaintext."""
    d = certificates
    mine = ["--cert", d / "client.pem", "--key", d / "client.key", "--deadline-s", 10]
    # a plaintext server: the TLS handshake fails (before, the photo and any token went in the clear)
    run = client(node_client, pipeline_address, photo, photo.parent / "face.obj", *mine)
    assert_one_line_error(run, 1, "UNAVAILABLE")
    assert not (photo.parent / "face.obj").exists()
    # a TLS server (a stage server: no Pipeline service) whose CA is among the defaults: the handshake works
    settings = ServerSettings(port=0, tls_cert=d / "server.pem", tls_key=d / "server.key")
    server = Server.for_stage("refiner", "slow", host=toy_host(), options={"seconds": 0}, settings=settings)
    with serving(server) as address:
        env = {
            k: v for k, v in os.environ.items() if k not in ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "NODE_EXTRA_CA_CERTS")
        }
        run = client(node_client, address, photo, photo.parent / "face.obj", *mine, env=env)
        assert_one_line_error(run, 1, "UNAVAILABLE")  # the test CA is not among the defaults: not trusted
        for variable in ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "NODE_EXTRA_CA_CERTS"):
            trusting = {**env, variable: str(d / "ca.pem")}
            run = client(node_client, address, photo, photo.parent / "face.obj", *mine, env=trusting)
            assert_one_line_error(run, 1, "UNIMPLEMENTED")  # the handshake worked


def test_node_client_warns_of_a_token_sent_in_plaintext(node_client, photo):
    token = photo.parent / "token"
    token.write_text("tok-SECRET\n")
    args = [photo, photo.parent / "face.obj", "--token-file", token, "--deadline-s", 2]
    run = client(node_client, "192.0.2.1:50050", *args)  # TEST-NET-1: never loopback
    assert run.returncode == 1 and "warning" in run.stderr and "plaintext" in run.stderr, run.stderr
    assert "SECRET" not in run.stderr
    run = client(node_client, NOWHERE, *args)
    assert_one_line_error(run, 1, "UNAVAILABLE")  # loopback: no warning


def test_node_client_token_file_must_hold_one_line(node_client, photo):
    token = photo.parent / "token"
    for text, words in (("tok-SECRET-1\ntok-SECRET-2\n", "one line"), ("\n", "is empty"), ("tok\x01SECRET", "ASCII")):
        token.write_text(text)
        run = client(node_client, NOWHERE, photo, photo.parent / "face.obj", "--token-file", token)
        assert_one_line_error(run, 2, words)
        assert "SECRET" not in run.stderr + run.stdout
    token.write_text("  tok-SECRET\r\n")  # blanks around the one line are dropped, as the server does
    run = client(node_client, NOWHERE, photo, photo.parent / "face.obj", "--token-file", token)
    assert_one_line_error(run, 1, "UNAVAILABLE")  # accepted: the call was made


@pytest.mark.parametrize("deadline", ["abc", "", " ", "0", "-5", "1e12", "inf", "nan"])
def test_node_client_rejects_bad_deadlines(node_client, photo, deadline):
    run = client(node_client, NOWHERE, photo, photo.parent / "face.obj", "--deadline-s", deadline)
    assert_one_line_error(run, 2, "--deadline-s")


def test_node_client_help(node_client):
    for flag in ("--help", "-h"):
        run = client(node_client, flag)
        assert run.returncode == 0 and run.stderr == "", run.stderr
        for word in ("--result", "--all-faces", "--token-file", "--ca", "--cert", "--key", "--deadline-s", "-face<i>"):
            assert word in run.stdout, word
        assert "image frame" in run.stdout and "exit codes" in run.stdout


def test_node_client_aimed_at_a_stage_server_says_it_wants_a_pipeline_server(node_client, photo, tmp_path):
    with serving(
        Server.for_stage("regressor", "landmark-mesh", device="cpu", settings=ServerSettings(port=0))
    ) as address:
        run = client(node_client, address, photo, tmp_path / "x.obj")
    assert_one_line_error(run, 1, "UNIMPLEMENTED", f"is {address} a Pipeline server: facerecon serve pipeline?")
    assert not (tmp_path / "x.obj").exists()
