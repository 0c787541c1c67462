"""The README's examples must keep working: its Python block runs, its TOML parses, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from facerecon.cli import build_parser
from facerecon.kernel import PipelineConfig
from facerecon.kernel.host.config import tomllib

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    (example,) = blocks("python")[:1]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    assert (tmp_path / "astronaut.obj").stat().st_size > 100_000


def test_config_examples_parse(tmp_path):
    from facerecon.facelib.morphable.catalog import read_catalogue

    for text in blocks("toml") + blocks("toml", (REPO / "docs" / "configuration.md").read_text()):
        data = tomllib.loads(text)
        if "project" in data:  # the entry-point snippet for plugin authors
            continue
        if "models" in data:  # a model catalogue
            path = tmp_path / "models.toml"
            path.write_text(text)
            assert read_catalogue(path).default == data["default"]
            continue
        PipelineConfig.from_mapping(data)


def test_readme_cli_lines_parse():
    parser = build_parser()
    for line in blocks("sh")[1].splitlines():
        command = line.split("#")[0].split()
        if command and command[0] == "facerecon" and "--version" not in command:
            parser.parse_args([part.strip("'") for part in command[1:]])


def test_readme_numbers_come_from_the_benchmarks():
    for script in (
        "benchmarks/bench_stages.py",
        "benchmarks/evaluate_lfpw.py",
        "benchmarks/calibrate_ibug68.py",
        "benchmarks/bench_fit.py",
        "benchmarks/bench_medium.py",
        "benchmarks/bench_grpc.py",
    ):
        assert script in README and (REPO / script).is_file()


def test_every_option_of_the_built_in_stages_is_in_the_configuration_reference():
    """docs/configuration.md names each built-in options field as a TOML key (``name =``), so no key
    is usable but undocumented; the remote stages' options are in docs/services.md."""
    import dataclasses

    from facerecon.kernel import PluginHost

    for doc, remote in (("configuration.md", False), ("services.md", True)):
        text = (REPO / "docs" / doc).read_text()
        for spec in PluginHost().stages.values():
            if spec.options_type is None or spec.distribution != "facerecon" or (spec.name == "remote") != remote:
                continue
            missing = [f.name for f in dataclasses.fields(spec.options_type) if f"{f.name} =" not in text]
            assert not missing, f"docs/{doc} lacks [options.{spec.kind}.{spec.name}] {', '.join(missing)}"
