"""Where compressing a gRPC message pays: each large message of the default pipeline (coarse, `laplace`,
`sfs`) on one LFPW photo, deflated at zlib levels 1 and 6 (gRPC's gzip is deflate), and the link speed
below which the bytes saved take longer to send than compressing and decompressing them takes.

    python benchmarks/bench_compression.py [--photo N]

Prints one JSON line per message and level. Single-threaded CPU times on this machine; a link faster than
``pays_below_mbit_s`` moves the saved bytes sooner than the CPU can.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

import numpy as np

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.contract.records import Refinement
from facerecon.kernel.host.imageio import load_image
from facerecon.services import convert
from facerecon.v1 import stages_pb2


def messages(image: np.ndarray) -> dict[str, bytes]:
    """The serialized large messages of one photo through the default pipeline."""
    with Pipeline(PipelineConfig(refiners=("laplace", "sfs"), device="cpu")) as pipe:
        rec = pipe(image)
    face = rec.reconstructions[0]
    detect = stages_pb2.DetectRequest()
    convert.image_to_proto(image, detect.image)
    fine = face.stages[2]
    return {
        "detector request: the photo": detect.SerializeToString(),
        "segmenter response: the label map": convert.segmentation_to_proto(face.segmentation).SerializeToString(),
        "regressor response: a mesh's vertices": convert.tensor(
            np.asarray(face.coarse.mesh.vertices, np.float32)
        ).SerializeToString(),
        "sfs response: mesh and maps": convert.refinement_to_proto(
            Refinement(mesh=fine.mesh, maps=fine.maps, phases={})
        ).SerializeToString(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=int, default=0, help="which LFPW photo (sorted)")
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    photo = sorted((data / "faces" / "lfpw-68").glob("*.png"))[args.photo]
    for name, payload in messages(load_image(photo)).items():
        for level in (1, 6):
            start = time.perf_counter()
            packed = zlib.compress(payload, level)
            middle = time.perf_counter()
            zlib.decompress(packed)
            end = time.perf_counter()
            seconds = end - start
            saved = len(payload) - len(packed)
            row = {
                "message": name,
                "level": level,
                "kb": round(len(payload) / 1e3),
                "compressed_kb": round(len(packed) / 1e3),
                "compress_ms": round((middle - start) * 1e3, 1),
                "decompress_ms": round((end - middle) * 1e3, 1),
                "pays_below_mbit_s": round(saved * 8 / seconds / 1e6),
            }
            print(json.dumps(row))


if __name__ == "__main__":
    main()
