"""The cost of running stages as gRPC services on loopback.

    python benchmarks/bench_grpc.py [--photos 40] [--refiners laplace] [--clients 4] [--images-per-client 20]
        [--no-throughput] [--no-pipeline-service] [--compression gzip]

1. Per-image latency over the shared LFPW photos: the pipeline in-process against the same pipeline with
   every stage `remote` (one `facerecon serve` subprocess per stage on 127.0.0.1), and against it again with
   the remote stages sending whole images and meshes (`compact = false`: the transport before issue 19),
   runs interleaved, and against the whole pipeline served by one `facerecon serve pipeline` (one call per
   photo, `--remote pipeline=`); medians, 90th percentiles and the ratio to in-process.
2. Bytes on the wire per stage and call, both ways: serialized request and response messages (HTTP/2
   framing and headers not included).
3. Throughput: N concurrent clients (threads, each with its own pipeline; channels shared) against 1 and 2
   replicas of the heaviest stage (round_robin), other stages one replica each.

Prints JSON. Servers and clients share this machine's CPUs, so the numbers are a floor for the overhead of
the transport, not a model of a real multi-machine deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.host.imageio import load_image
from facerecon.services import remote
from facerecon.services.remote import apply_remote


class ServerProcess:
    """`python -m facerecon.services serve KIND --plugin NAME --port 0` on 127.0.0.1."""

    def __init__(self, kind: str, plugin: str, extra: Sequence[str] = ()) -> None:
        command = [sys.executable, "-m", "facerecon.services", "serve", kind]
        command += ["--plugin", plugin] if plugin else []
        command += ["--port", "0", "--device", "cpu", *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if " on " not in line:
            raise SystemExit(f"{kind} server did not start: {line!r}")
        self.address = line.strip().rsplit(" ", 1)[-1]
        self.wait_serving()

    def wait_serving(self, timeout: float = 120.0) -> None:
        """Until Health says SERVING (the model is loaded and warmed)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"server at {self.address} not ready after {timeout} s")
                time.sleep(0.1)

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def host() -> PluginHost:
    plugins = PluginHost()
    if not plugins.pm.has_plugin("remote"):  # until the `remote` entry point is installed
        plugins.register_plugin(remote, name="remote")
    return plugins


def stage_list(config: PipelineConfig) -> list[tuple[str, str, str]]:
    """(key for --remote, kind, plugin) of every stage of a config."""
    stages = [("detector", "detector", config.detector), ("regressor", "regressor", config.regressor)]
    if config.segmenter:
        stages.append(("segmenter", "segmenter", config.segmenter))
    return stages + [(name, "refiner", name) for name in config.refiners]


def count_bytes(pipe: Any, wire: dict[str, list[tuple[int, int]]]) -> None:
    """Wrap every remote stage's stub (or a remote pipeline's) so each call records (request bytes, response
    bytes)."""
    stages = {("pipeline", "pipeline"): pipe} if hasattr(pipe, "stub") else pipe._stages
    for (kind, name), stage in stages.items():
        stub = stage.stub
        for method in ("Detect", "Regress", "Segment", "Refine", "Reconstruct"):
            call = getattr(stub, method, None)
            if call is None:
                continue

            def counted(
                request: Any,
                *args: Any,
                _call: Any = call,
                _key: str = name.removeprefix("remote@") if kind == "refiner" else kind,
                **kw: Any,
            ) -> Any:
                response = _call(request, *args, **kw)
                wire[_key].append((request.ByteSize(), response.ByteSize()))
                return response

            setattr(stub, method, counted)


def every_remote_stage(config: PipelineConfig, options: dict[str, Any]) -> PipelineConfig:
    """``config`` with ``options`` added to every remote stage's."""
    stages = [(kind, getattr(config, kind)) for kind in ("detector", "regressor", "segmenter")]
    stages += [("refiner", name) for name in config.refiners]
    for kind, name in stages:
        if name is not None and str(name).startswith("remote"):
            config = config.with_options(kind, str(name), options)
    return config


def whole_messages(config: PipelineConfig) -> PipelineConfig:
    """``config`` with every remote stage sending whole images and meshes (``compact = false``): the
    transport as it was before issue 19, measured beside today's in the same run."""
    return every_remote_stage(config, {"compact": False})


def pipeline_server_flags(config: PipelineConfig) -> list[str]:
    """`serve pipeline` flags for the stages of ``config``."""
    flags = ["--detector", config.detector, "--regressor", config.regressor, "--refiners", ",".join(config.refiners)]
    return flags + ["--segmenter", config.segmenter or "none"]


def latency(
    config: PipelineConfig,
    images: list[np.ndarray],
    servers: dict[str, ServerProcess],
    whole: ServerProcess | None = None,
    compression: str = "none",
) -> dict[str, Any]:
    """In-process, every stage remote (today), every stage remote sending whole messages (before issue
    19), and (``whole``: a `serve pipeline` server) the whole pipeline in one call per photo (``--remote
    pipeline=``), and (``compression``) every stage remote with compressed requests, interleaved image by
    image; medians, ratios to in-process and bytes per call."""
    entries = [f"{key}={servers[key].address}" for key, _, _ in stage_list(config)]
    remote_config = apply_remote(config, entries)
    variants = {"in_process": config, "all_remote": remote_config, "all_remote_whole": whole_messages(remote_config)}
    if compression != "none":
        variants[f"all_remote_{compression}"] = every_remote_stage(remote_config, {"compression": compression})
    if whole is not None:
        variants["pipeline_service"] = apply_remote(config, [f"pipeline={whole.address}"])
    times: dict[str, list[float]] = {name: [] for name in variants}
    wire: dict[str, dict[str, list[tuple[int, int]]]] = {name: defaultdict(list) for name in variants}
    with ExitStack() as stack:
        pipes: dict[str, Any] = {}
        for name, c in variants.items():
            plugins = host()
            pipes[name] = stack.enter_context(plugins.make_pipeline(c) or Pipeline(c, plugins))
        for name, pipe in pipes.items():
            pipe.warm_up()
            for image in images[:3]:  # one-off initialisation (JIT, caches, layouts) on both sides
                pipe(image)
            if name != "in_process":
                count_bytes(pipe, wire[name])
        for image in images:
            for name, pipe in pipes.items():
                start = time.perf_counter()
                pipe(image)
                times[name].append((time.perf_counter() - start) * 1000)
    local = float(np.median(times["in_process"]))
    report: dict[str, Any] = {}
    for name in variants:
        median = float(np.median(times[name]))
        report[f"{name}_ms"] = {
            "median": round(median, 2),
            "p90": round(float(np.percentile(times[name], 90)), 2),
            "over_in_process": round(median / local, 3),
        }
    for name in variants:
        if name == "in_process":
            continue
        report[f"bytes_per_call_{name}"] = {
            stage: {
                "calls": len(calls),
                "request": int(np.median([c[0] for c in calls])),
                "response": int(np.median([c[1] for c in calls])),
            }
            for stage, calls in wire[name].items()
        }
    return report


def throughput(
    config: PipelineConfig,
    images: list[np.ndarray],
    servers: dict[str, ServerProcess],
    heaviest: str,
    replicas: int,
    clients: int,
    per_client: int,
) -> dict[str, Any]:
    with ExitStack() as stack:
        addresses = {key: s.address for key, s in servers.items()}
        extra = []
        for _ in range(replicas - 1):
            kind_plugin = {key: (kind, plugin) for key, kind, plugin in stage_list(config)}[heaviest]
            replica = ServerProcess(*kind_plugin)
            stack.callback(replica.close)
            extra.append(replica.address)
        addresses[heaviest] = ",".join([addresses[heaviest], *extra])
        remote_config = apply_remote(config, [f"{k}={addresses[k]}" for k, _, _ in stage_list(config)])
        pipes = [stack.enter_context(Pipeline(remote_config, host())) for _ in range(clients)]
        for pipe in pipes:
            pipe.warm_up()
            for image in images[:2]:
                pipe(image)  # every replica initialised
        done = [0] * clients
        errors: list[str] = []

        def work(i: int) -> None:
            for j in range(per_client):
                try:
                    pipes[i](images[(i * per_client + j) % len(images)])
                    done[i] += 1
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
    return {
        "replicas": replicas,
        "clients": clients,
        "images": sum(done),
        "errors": len(errors),
        "images_per_s": round(sum(done) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40, help="LFPW photos for the latency comparison")
    parser.add_argument("--regressor", default="landmark-mesh")
    parser.add_argument("--refiners", default="", help="comma-separated refiners, e.g. laplace")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients for the throughput test")
    parser.add_argument("--images-per-client", type=int, default=20)
    parser.add_argument("--no-throughput", action="store_true", help="latency and bytes only")
    parser.add_argument(
        "--no-pipeline-service", action="store_true", help="leave out the whole pipeline served in one call"
    )
    parser.add_argument(
        "--compression", default="none", help="also every stage remote with requests compressed so (gzip)"
    )
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))[: args.photos]
    images = [load_image(p) for p in photos]
    refiners = tuple(r for r in args.refiners.split(",") if r)
    config = PipelineConfig(detector="mediapipe", regressor=args.regressor, refiners=refiners, device="cpu")

    with Pipeline(config, host()) as pipe:  # which stage is heaviest, in-process
        pipe.warm_up()
        for image in images[:3]:
            pipe(image)
        stage_ms: dict[str, list[float]] = defaultdict(list)
        for image in images[:10]:
            for key, value in pipe(image).timings_ms.items():
                stage_ms[key].append(value)
    medians = {key.removeprefix("refiner:"): float(np.median(v)) for key, v in stage_ms.items()}
    heaviest = max(medians, key=lambda k: medians[k])

    with ExitStack() as stack:
        servers = {}
        for key, kind, plugin in stage_list(config):
            servers[key] = ServerProcess(kind, plugin)
            stack.callback(servers[key].close)
        whole = None
        if not args.no_pipeline_service:
            whole = ServerProcess("pipeline", "", pipeline_server_flags(config))
            stack.callback(whole.close)
        result: dict[str, Any] = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "pipeline": [f"{kind} {plugin}" for _, kind, plugin in stage_list(config)],
            "photos": len(images),
            "in_process_stage_median_ms": {k: round(v, 2) for k, v in medians.items()},
            "latency": latency(config, images, servers, whole, args.compression),
            "heaviest_stage": heaviest,
            "throughput": []
            if args.no_throughput
            else [
                throughput(config, images, servers, heaviest, replicas, clients, args.images_per_client)
                for replicas in (1, 2)
                for clients in (1, args.clients)
            ],
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
