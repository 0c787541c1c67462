"""docker/: no Docker engine or cluster runs on the development machines, so the files are parsed and
cross-checked: every command parses with `facerecon serve` and names a registered plugin, ports and
probes agree, the pipeline's remote stages point at services that exist, torch is always pinned."""

from __future__ import annotations

import argparse
import re

import pytest
import tomllib
from services_support import REPO, toy_host

from facerecon.services.commands import add_serve_parser
from facerecon.services.remote import apply_remote

yaml = pytest.importorskip("yaml", reason="PyYAML (a dev dependency) parses the compose and Kubernetes files")
DOCKER = REPO / "docker"
PORT = 50051


@pytest.fixture(scope="module")
def serve():
    parser = argparse.ArgumentParser(prog="facerecon")
    add_serve_parser(parser.add_subparsers(dest="command"))
    return lambda args: parser.parse_args(["serve", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def host():
    return toy_host()


def check_command(args, serve, host):
    """Parses as `facerecon serve`, names registered plugins, listens on all interfaces on PORT."""
    parsed = serve(args)
    assert parsed.port == PORT and parsed.host == "0.0.0.0" and parsed.insecure
    if parsed.kind != "pipeline":
        host.spec(parsed.kind, parsed.plugin)
    return parsed


def remote_targets(parsed) -> dict[str, str]:
    from facerecon.kernel import PipelineConfig

    config = PipelineConfig(refiners=tuple(parsed.refiners.split(",")) if parsed.refiners else ())
    config = apply_remote(config, parsed.remote)
    return {name: dict(table)["address"] for (kind, name), table in config.options.items()} | {
        "_refiners": ",".join(config.refiners)
    }


def test_dockerfile_pins_torch_and_copies_every_package():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH=cpu$", text, re.M) and re.search(r"^ARG TORCH_VERSION=2\.13\.0$", text, re.M)
    installs = re.findall(r"pip install ([^;\n]*torch[^;\n]*)", text)
    assert installs and all('"torch==${TORCH_VERSION}"' in line for line in installs), installs
    assert "download.pytorch.org/whl/cpu" in text
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values()) | {"protos", "scripts"}
    copied = set(re.findall(r"^COPY (\S+) \1$", text, re.M))
    assert folders <= copied, f"not copied into the image: {folders - copied}"
    assert f"EXPOSE {PORT}" in text and 'ENTRYPOINT ["facerecon", "serve"]' in text
    assert "install_landmarker.py" in text and "pip check" in text
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {"**", "!services/", "!protos/"} <= set(ignore)


def test_compose_one_service_per_stage_plus_the_pipeline(serve, host):
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    stages = {name: check_command(s["command"], serve, host) for name, s in services.items() if name != "pipeline"}
    assert sorted(p.kind for p in stages.values()) == ["detector", "refiner", "regressor"]
    for name, service in services.items():
        assert service["build"]["dockerfile"] == "docker/Dockerfile" and service["build"]["context"] == ".."
        assert service["healthcheck"]["test"][-1] == f"127.0.0.1:{PORT}", name
        assert service["healthcheck"]["test"][1:5] == ["python", "-m", "facerecon.services", "health"]
        assert "ports" not in service or name == "pipeline", f"{name} must not be published"
    pipeline = check_command(services["pipeline"]["command"], serve, host)
    targets = remote_targets(pipeline)
    assert targets["_refiners"] == "remote@laplace"
    for stage, address in targets.items():
        if stage == "_refiners":
            continue
        service, port = address.split(":")
        assert service in stages and int(port) == PORT, f"{stage} points at {address}"
    assert set(services["pipeline"]["depends_on"]) == set(stages)
    assert all(v["condition"] == "service_healthy" for v in services["pipeline"]["depends_on"].values())
    assert services["pipeline"]["ports"] == [f"127.0.0.1:50050:{PORT}"]  # the host's loopback only


def test_gpu_overlay_reserves_gpus_for_heavy_stages(serve, host):
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    overlay = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())["services"]
    assert overlay and set(overlay) <= set(base)
    for name, service in overlay.items():
        assert service["build"]["args"]["TORCH"] == "cuda" and service["image"].endswith(":cuda")
        parsed = check_command(service["command"], serve, host)
        assert parsed.device == "cuda" and parsed.kind == serve(base[name]["command"]).kind
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_kubernetes_deployments_and_headless_services(serve, host):
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / "facerecon.yaml").read_text()))
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert set(deployments) == set(services) == {"detector", "regressor", "medium", "pipeline"}
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"] == labels == services[name]["spec"]["selector"]
        (container,) = spec["template"]["spec"]["containers"]
        parsed = check_command(container["args"], serve, host)
        assert container["ports"] == [{"name": "grpc", "containerPort": PORT}]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == PORT, f"{name} {probe}"
        assert parsed.max_connection_age and parsed.max_connection_age <= 300  # clients re-resolve
        assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > parsed.grace
        assert services[name]["spec"]["ports"][0]["port"] == PORT
        if name != "pipeline":
            assert services[name]["spec"]["clusterIP"] == "None"  # headless: DNS lists every pod
            assert spec["replicas"] >= 2
    gpu = deployments["medium"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and "cuda" in gpu["args"]
    pipeline = serve(deployments["pipeline"]["spec"]["template"]["spec"]["containers"][0]["args"])
    for stage, address in remote_targets(pipeline).items():
        if stage != "_refiners":
            match = re.fullmatch(r"dns:///(\w+)\.facerecon\.svc\.cluster\.local:(\d+)", address)
            assert match and match.group(1) in services and int(match.group(2)) == PORT, address


def test_services_doc_examples_parse(serve, host):
    """docs/services.md: its TOML is a valid config (remote options included), its commands parse."""
    import shlex

    from facerecon.cli import build_parser
    from facerecon.kernel import PipelineConfig
    from facerecon.kernel.host.config import tomllib as toml

    text = (REPO / "docs" / "services.md").read_text()
    (config_text,) = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    config = PipelineConfig.from_mapping(toml.loads(config_text))
    for (kind, name), table in config.options.items():
        options = host.spec(kind, name).make_options(table)
        assert name.partition("@")[0] == "remote" and options.address
    (commands,) = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    reconstruct = build_parser()
    seen = set()
    for line in commands.replace("\\\n", " ").splitlines():
        words = shlex.split(line.split("#")[0])
        if words[:2] == ["facerecon", "serve"]:
            serve(words[2:])
        elif words[:2] == ["facerecon", "reconstruct"]:
            reconstruct.parse_args(words[1:])
        seen.add(tuple(words[:2]))
    assert {("facerecon", "serve"), ("facerecon", "reconstruct"), ("node", "clients/node/reconstruct.js")} <= seen
