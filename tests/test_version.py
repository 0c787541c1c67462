"""One version, from one place: pyproject.toml's, which is the CHANGELOG's latest entry; everything else
(``facerecon.__version__``, ``facerecon --version``, the built-in plugins, the gRPC services, the Node.js
client) reads or repeats it."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys

import pytest
from conftest import REPO

import facerecon
from facerecon.cli import main
from facerecon.kernel import PluginHost

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def changelog_latest() -> str:
    """The newest version of CHANGELOG.md (entries are ``## X.Y.Z — title``, oldest first)."""
    headings = re.findall(r"^## (\d+)\.(\d+)\.(\d+)\b", (REPO / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings, "CHANGELOG.md has no '## X.Y.Z' entry"
    versions = [tuple(int(part) for part in heading) for heading in headings]
    assert versions[-1] == max(versions), "the CHANGELOG's last entry must be its newest version"
    return ".".join(map(str, versions[-1]))


@pytest.fixture(scope="module")
def version() -> str:
    return changelog_latest()


def test_pyproject_and_the_installed_package_say_the_changelog_s_version(version):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == version, "bump pyproject.toml's version with each CHANGELOG entry"
    # a stale editable install reports the old version: `make setup` reinstalls when pyproject.toml changes
    assert importlib.metadata.version("facerecon") == version
    assert facerecon.__version__ == version


def test_the_command_and_the_plugins_report_it(version, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"facerecon {version}"
    run = subprocess.run(
        [sys.executable, "-m", "facerecon.cli", "--version"], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.strip() == f"facerecon {version}"
    host = PluginHost()
    built_in = [p for p in host.plugins.values() if p.distribution == "facerecon"]
    assert len(built_in) >= 10 and {p.version for p in built_in} == {version}
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["stages"]
    assert {r["version"] for r in rows if r["distribution"] == "facerecon"} == {version}


def test_the_services_and_the_node_client_say_it(version):
    from facerecon.services import servicers

    assert servicers.__version__ == version  # StageInfo.server_version and the Pipeline service's version
    client = json.loads((REPO / "clients" / "node" / "package.json").read_text())
    lock = json.loads((REPO / "clients" / "node" / "package-lock.json").read_text())
    assert client["version"] == lock["version"] == lock["packages"][""]["version"] == version
