"""`facerecon view` on folders that are not the plain photo layout: a stage's mesh file that is empty or
truncated (left out of the static page with a warning; an HTTP error with the reason when served, never a
dropped connection), and a video's results one level down (OUT/<video>/frame_<i>/), so that
`reconstruct clip.mp4 -o OUT --view` and `view OUT` find them. Real reconstructions of an LFPW photo."""

from __future__ import annotations

import html
import json
import shutil
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerecon.cli import main
from facerecon.outputs.viewer import ViewerAssetsMissing, ViewerServer, find_entries
from facerecon.outputs.viewer import server as server_module
from facerecon.outputs.viewer.assets import bundle_js
from facerecon.outputs.viewer.page import mesh_bytes
from facerecon.video import write_video
from tests.conftest import missing, served


@pytest.fixture(scope="module")
def photo(shared_data) -> Path:
    try:
        bundle_js()
    except ViewerAssetsMissing as exc:
        missing(str(exc))
    return shared_data / "faces" / "lfpw-68" / "image_0001.png"


@pytest.fixture(scope="module")
def results(photo, tmp_path_factory) -> Path:
    """OUT/image_0001/ with coarse.obj and medium.obj (the `laplace` stage), no GLB."""
    out = tmp_path_factory.mktemp("viewer-edges") / "out"
    assert main(["reconstruct", str(photo), "-o", str(out), "--refiners", "laplace", "-q"]) == 0
    return out


def page_data(page: Path) -> dict:
    """The data a static index.html carries (its <script id="facerecon-data">)."""
    text = page.read_text(encoding="utf-8")
    start = text.index('<script id="facerecon-data" type="application/json">')
    return json.loads(text[text.index(">", start) + 1 : text.index("</script>", start)])


def page_stages(page: Path) -> dict[str, list[str]]:
    """The stages of each entry in a static index.html's data."""
    return {e["id"]: [s["stage"] for s in e["stages"]] for e in page_data(page)["entries"]}


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_broken_mesh_is_left_out_of_the_page_and_served_as_an_http_error(results, tmp_path, capsys, caplog):
    out = shutil.copytree(results, tmp_path / "out")
    medium = out / "image_0001" / "medium.obj"
    medium.write_bytes(b"")
    assert main(["view", str(out), "--static"]) == 0
    assert "image_0001: stage medium left out of the page" in caplog.text and "medium.obj" in caplog.text
    assert page_stages(out / "index.html") == {"image_0001": ["coarse"]}

    glb = out / "image_0001" / "coarse.glb"
    glb.write_bytes(mesh_bytes(out / "image_0001" / "coarse.obj")[:5000])  # a GLB cut short: preferred to the OBJ
    server = ViewerServer(out, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for stage, name in (("medium", "medium.obj"), ("coarse", "coarse.glb")):
            status, body = get(f"{server.url}mesh/0/{stage}.glb")
            assert status == 500 and name in body.decode(), (stage, status, body[:200])
        glb.unlink()
        assert get(server.url)[0] == 200  # the page reads the folder again: the OBJ is coarse's mesh now
        status, body = get(f"{server.url}mesh/0/coarse.glb")
        assert status == 200 and body[:4] == b"glTF"
    finally:
        server.shutdown()
        server.server_close()

    (out / "image_0001" / "coarse.obj").write_text("v 1 2 3\nv 4 5 6\n")  # points, no triangles
    assert main(["view", str(out), "--static"]) == 2
    assert "no triangles" in caplog.text
    assert "none of the meshes here could be read" in capsys.readouterr().err


def test_view_finds_the_frames_of_a_video_one_level_down(photo, results, tmp_path):
    """`reconstruct clip.mp4 -o OUT --view` writes OUT/clip/frame_<i>/ and OUT/index.html with the frames;
    `view OUT` lists them beside the photos of the same folder, `view OUT/clip` as before."""
    rgb = np.asarray(Image.open(photo).convert("RGB"))[:, :532]  # even width for the codec
    clip = write_video(tmp_path / "clip.mp4", [rgb, rgb], 30.0)
    out = tmp_path / "out"
    code = main(["reconstruct", str(clip), "-o", str(out), "--refiners", "", "--texture-size", "64", "--view", "-q"])
    assert code == 0 and (out / "clip" / "video.json").is_file()
    assert page_stages(out / "index.html") == {"clip/frame_000000": ["coarse"], "clip/frame_000001": ["coarse"]}
    shutil.copytree(results / "image_0001", out / "image_0001")
    shutil.copytree(out / "clip", out / ".clip.facerecon-1.x.partial")  # a staging folder: never shown
    assert [e.id for e in find_entries(out)] == ["clip/frame_000000", "clip/frame_000001", "image_0001"]
    assert [e.label for e in find_entries(out / "clip")] == ["frame_000000", "frame_000001"]
    assert main(["view", str(out), "--static"]) == 0


def test_requests_outside_the_routes_are_404_never_a_dropped_connection(results):
    """Only /, /mesh/<i>/<stage>.glb and /photo/<i> answer: traversal (plain or %-encoded) and entry numbers
    that are digits to Python but not to int() ("²") get a 404, not a traceback and a closed connection."""
    server = ViewerServer(results, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        outside = ("../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "mesh/0/..%2f..%2fresult.json", "photo/-1")
        numbers = ("photo/%C2%B2", "mesh/%C2%B2/coarse.glb", "photo/99", "image_0001/result.json")
        for path in outside + numbers:
            status, body = get(server.url + path)
            assert (status, body) == (404, b"not found"), path
        assert get(f"{server.url}photo/0")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_static_page_that_cannot_be_written_is_a_usage_error(results, tmp_path, capsys):
    out = shutil.copytree(results, tmp_path / "out")
    (out / "index.html").mkdir()  # where the page goes (as a read-only folder would refuse it)
    assert main(["view", str(out), "--static"]) == 2
    err = capsys.readouterr().err
    assert "index.html: cannot write the page" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_landmarks_reach_the_page_as_numbers_only(results, tmp_path, caplog):
    """The page draws the landmarks as SVG markup: a result.json whose landmarks68 holds anything but numbers
    (markup from someone else's folder) shows that stage without landmarks."""
    out = shutil.copytree(results, tmp_path / "out")
    path = out / "image_0001" / "result.json"
    result = json.loads(path.read_text())
    stages = result["reconstructions"][0]["stages"]
    assert stages[0]["landmarks68"][0] is not None
    stages[0]["landmarks68"][0] = ['"><img src=x onerror=alert(1)>', 5]
    stages[1]["landmarks68"][3] = None
    path.write_text(json.dumps(result))
    coarse, medium = find_entries(out)[0].stages
    assert coarse.landmarks68 is None
    assert medium.landmarks68[3] is None and all(isinstance(v, float) for v in medium.landmarks68[0])
    assert main(["view", str(out), "--static"]) == 0
    (entry,) = page_data(out / "index.html")["entries"]
    assert [s["landmarks68"] is None for s in entry["stages"]] == [True, False]


def raw_request(server: ViewerServer, method: str, path: str) -> tuple[bytes, bytes]:
    """The status line + headers, and the body, exactly as the server sent them (HTTP/1.0: it closes)."""
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=30) as sock:
        sock.sendall(f"{method} /{path} HTTP/1.0\r\n\r\n".encode())
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def test_head_is_answered_as_get_without_the_body(results):
    with served(results) as server:
        for path, status in (("", 200), ("mesh/0/coarse.glb", 200), ("photo/0", 200), ("nothing", 404)):
            head, body = raw_request(server, "HEAD", path)
            get_head, get_body = raw_request(server, "GET", path)
            assert head.startswith(f"HTTP/1.0 {status} ".encode()) and body == b"", (path, head, body[:100])
            assert f"Content-Length: {len(get_body)}".encode() in head.split(b"\r\n"), (path, head)
            assert get_head.startswith(f"HTTP/1.0 {status} ".encode()) and len(get_body) > 0


def test_the_served_meshes_kept_in_memory_are_bounded(results, monkeypatch):
    """Clicking through a folder keeps the least recently served meshes out of memory beyond the bound
    (here one mesh's size): a mesh served again while kept is not converted again, an evicted one is."""
    converted: list[str] = []

    def counting(path: Path) -> bytes:
        converted.append(path.name)
        return mesh_bytes(path)

    monkeypatch.setattr(server_module, "mesh_bytes", counting)
    with served(results) as server:
        server.mesh_cache_bytes = len(mesh_bytes(results / "image_0001" / "medium.obj")) * 3 // 2
        for stage in ("coarse", "medium", "medium", "coarse", "coarse"):
            status, body = get(f"{server.url}mesh/0/{stage}.glb")
            assert status == 200 and body[:4] == b"glTF"
            assert sum(map(len, server._meshes.values())) <= server.mesh_cache_bytes
    assert converted == ["coarse.obj", "medium.obj", "coarse.obj"]


def test_folder_names_that_look_like_the_page_template_stay_names(results, tmp_path):
    """The page's title and labels come from folder names: one holding the template's placeholders or markup
    shows as that name (escaped), never as the page's data or script, and the page carries the bundle once."""
    name = "{{SCRIPT}} {{DATA}} <b>{{TITLE}}"
    out = tmp_path / name
    shutil.copytree(results / "image_0001", out / "{{DATA}}<i>")
    assert main(["view", str(out), "--static"]) == 0
    text = (out / "index.html").read_text(encoding="utf-8")
    title = f"facerecon — {html.escape(name)}"
    assert f"<title>{title}</title>" in text and f"<h1>{title}</h1>" in text
    assert text.count(bundle_js()) == 1
    assert [e["label"] for e in page_data(out / "index.html")["entries"]] == ["{{DATA}}<i>"]
    outside_the_bundle = text.replace(bundle_js(), "")
    assert "<b>" not in outside_the_bundle and "<i>" not in outside_the_bundle
