"""Peak memory of `facerecon serve pipeline` under large photos: the bound docs/services.md states.

    python benchmarks/bench_server_memory.py [--megapixels 24] [--concurrent 1 4 16] [--refiners ""]

Starts one server subprocess (loopback, default limits, --workers 1), sends it a real LFPW face photo
upscaled to the given size as JPEG, first alone, then N calls at once, and reads the server's peak resident
memory (VmHWM in /proc) after each round. Prints JSON: the resident memory once loaded, and per round the
peak and the peak's growth over the loaded size. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from PIL import Image

from facerecon.evaluation import shared_data_dir
from facerecon.services import convert
from facerecon.v1 import pipeline_pb2, pipeline_pb2_grpc, stages_pb2


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current resident size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def photo_jpeg(megapixels: float) -> bytes:
    data = shared_data_dir(Path(__file__).resolve().parents[1])
    assert data is not None, "needs ../shared/data"
    photo = Image.open(data / "faces" / "lfpw-68" / "image_0001.png").convert("RGB")
    factor = (megapixels * 1e6 / (photo.width * photo.height)) ** 0.5
    big = photo.resize((round(photo.width * factor), round(photo.height * factor)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=24.0)
    parser.add_argument("--concurrent", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--refiners", default="", help="the served pipeline's refiners, e.g. laplace,sfs")
    args = parser.parse_args()
    command = [sys.executable, "-m", "facerecon.services", "serve", "pipeline", "--port", "0", "--device", "cpu"]
    if args.refiners:
        command += ["--refiners", args.refiners]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        address = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        jpeg = photo_jpeg(args.megapixels)
        request = pipeline_pb2.ReconstructRequest(image=convert.encoded_image(jpeg), formats=["obj"])
        options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
        with grpc.insecure_channel(address, options=options) as channel:
            stub = pipeline_pb2_grpc.PipelineStub(channel)
            deadline = time.monotonic() + 120
            while True:
                try:
                    stub.Info(stages_pb2.InfoRequest(), timeout=5)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            loaded = memory_mb(server.pid, "VmRSS")
            rounds = []
            for n in args.concurrent:
                reset_peak(server.pid)
                start = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    results = list(pool.map(lambda _: stub.Reconstruct(request, timeout=600), range(n)))
                peak = memory_mb(server.pid, "VmHWM")
                faces = [len(r.reconstruction.faces) for r in results]
                rounds.append(
                    {
                        "concurrent_calls": n,
                        "seconds": round(time.perf_counter() - start, 2),
                        "faces_found": faces[0],
                        "peak_rss_mb": round(peak, 1),
                        "peak_over_loaded_mb": round(peak - loaded, 1),
                    }
                )
        report = {
            "megapixels": args.megapixels,
            "jpeg_bytes": len(jpeg),
            "refiners": args.refiners or "(none)",
            "loaded_rss_mb": round(loaded, 1),
            "rounds": rounds,
            "cpus": os.cpu_count(),
        }
        print(json.dumps(report, indent=1))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
