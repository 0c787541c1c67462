"""Plugins from outside: docs/writing-plugins.md's example is built from the page itself into a real
distribution (pip, its pyproject's entry point), then listed by `facerecon plugins` and run end to end by
`facerecon reconstruct --segmenter ellipse-skin`; its test from the page runs too, so the page cannot
drift. A distribution whose hook has the wrong signature is refused, by name, in the listing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from facerecon.cli import build_parser, main
from facerecon.kernel import PipelineConfig
from facerecon.kernel.host.config import tomllib

REPO = Path(__file__).resolve().parents[1]
PAGE = (REPO / "docs" / "writing-plugins.md").read_text()


def page_files() -> dict[str, str]:
    """The code blocks the page marks with ``<!-- file: NAME -->``, by file name."""
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", PAGE, flags=re.S))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The page's example distribution, built and installed by pip (offline, into a folder of its own
    rather than the shared virtual environment); returns that folder, to put on sys.path."""
    src = tmp_path_factory.mktemp("src")
    for name, text in page_files().items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    site = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
    done = subprocess.run(
        [*command, "--target", str(site), str(src / "facerecon-ellipse")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert list(site.glob("facerecon_ellipse-1.0.0.dist-info/entry_points.txt"))
    return site


@pytest.fixture
def on_path(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    yield installed
    sys.modules.pop("facerecon_ellipse", None)


@pytest.fixture
def workdir(tmp_path, monkeypatch, lfpw) -> Path:
    """A folder holding the page's files and a photo.jpg, as the page's commands assume."""
    for name, text in page_files().items():
        if "/" not in name:
            (tmp_path / name).write_text(text)
    Image.open(lfpw[0]).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_page_has_the_example():
    assert set(page_files()) == {
        "facerecon-ellipse/pyproject.toml",
        "facerecon-ellipse/facerecon_ellipse.py",
        "ellipse.toml",
        "test_ellipse.py",
    }
    data = tomllib.loads(page_files()["facerecon-ellipse/pyproject.toml"])
    assert data["project"]["entry-points"]["facerecon"] == {"ellipse-skin": "facerecon_ellipse"}
    PipelineConfig.from_mapping(tomllib.loads(page_files()["ellipse.toml"]))
    parser = build_parser()
    for block in re.findall(r"```sh\n(.*?)```", PAGE, flags=re.S):
        for line in block.splitlines():
            command = line.split("#")[0].split()
            if command[:1] == ["facerecon"]:
                parser.parse_args(command[1:])


def test_plugins_lists_the_installed_distribution(on_path, capsys):
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["stages"]}
    row = rows["ellipse-skin"]
    assert (row["kind"], row["distribution"], row["version"], row["license"]) == (
        "segmenter",
        "facerecon-ellipse",
        "1.0.0",
        "MIT",
    )
    assert main(["plugins"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "ellipse-skin" in x)
    assert line.split()[:4] == ["segmenter", "ellipse-skin", "facerecon-ellipse", "1.0.0"]


def test_fresh_process_finds_it(installed):
    """Entry-point discovery in a new interpreter, as a user's shell would run it."""
    env = {"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "facerecon.cli", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    names = {r["name"]: r["distribution"] for r in json.loads(done.stdout)["stages"]}
    assert names["ellipse-skin"] == "facerecon-ellipse" and names["mediapipe"] == "facerecon"


def test_reconstruct_runs_it_end_to_end(on_path, workdir):
    assert main(["reconstruct", "photo.jpg", "-o", "out/", "--segmenter", "none", "-q", "--refiners", ""]) == 0
    plain = Image.open(workdir / "out" / "photo" / "preview.png").size
    assert (
        main(
            [
                "reconstruct",
                "photo.jpg",
                "-o",
                "out/",
                "--segmenter",
                "ellipse-skin",
                "-q",
                "--refiners",
                "",
                "--overwrite",
            ]
        )
        == 0
    )
    result = json.loads((workdir / "out" / "photo" / "result.json").read_text())
    assert result["plugins"]["segmenter"] == {"plugin": "ellipse-skin", "version": "1.0.0"}
    segmentation = result["reconstructions"][0]["segmentation"]
    assert segmentation["plugin"] == "ellipse-skin" and segmentation["labels"] == {"1": "skin"}
    assert 0.4 < segmentation["region_colors"]["skin"][0] < 1.0
    # The preview gained one panel: the segmentation.
    with_segmentation = Image.open(workdir / "out" / "photo" / "preview.png").size
    assert with_segmentation[0] * 3 == plain[0] * 4 and with_segmentation[1] == plain[1]
    # The page's config: scale 0.8 instead of 0.9 shrinks the ellipse by (8/9)^2.
    assert main(["reconstruct", "photo.jpg", "-o", "small/", "-c", "ellipse.toml", "-q", "--refiners", ""]) == 0
    smaller = json.loads((workdir / "small" / "photo" / "result.json").read_text())
    ratio = smaller["reconstructions"][0]["segmentation"]["pixels"]["skin"] / segmentation["pixels"]["skin"]
    assert ratio == pytest.approx((0.8 / 0.9) ** 2, rel=0.03)


def test_the_pages_own_test_passes(on_path, workdir):
    namespace: dict[str, object] = {}
    exec(compile(page_files()["test_ellipse.py"], "docs/writing-plugins.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert tests
    for test in tests:
        test()


def test_a_wrong_hook_signature_is_refused_by_name(tmp_path, monkeypatch, capsys):
    """A broken third-party distribution: the listing names it as refused and still lists the rest."""
    dist = tmp_path / "acme_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[facerecon]\nacme-broken = acme_broken\n")
    (tmp_path / "acme_broken.py").write_text(
        "from facerecon.kernel import hookimpl\n"
        "@hookimpl\n"
        "def facerecon_register_stages(registry, colour):\n"
        "    registry.register('segmenter', 'acme', object)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["plugins"]) == 0
        out = capsys.readouterr().out
        assert "refused: plugin 'acme-broken' does not match the hook specifications" in out
        assert "colour" in out and "mediapipe" in out and "acme " not in out
        assert main(["plugins", "--json"]) == 0
        assert "acme-broken" in json.loads(capsys.readouterr().out)["refused"]
    finally:
        sys.modules.pop("acme_broken", None)


def test_doc_mentions_the_contract():
    for word in ("facerecon_register_stages", "check_segmenter", "InputError", "license_note", "refused"):
        assert word in PAGE
