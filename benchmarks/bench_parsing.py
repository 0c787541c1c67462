"""Wall time of the ``onnx-parsing`` segmenter per face over the shared LFPW photos, split into the network
and facerecon's own pre/post-processing (crop, resize, normalisation, resampling the logits back onto the
image, argmax, label mapping, region colours).

    python benchmarks/bench_parsing.py --model my_bisenet.onnx [--label-order face-parsing.pytorch]
    python benchmarks/bench_parsing.py          # a 1x1-convolution stand-in network at 512 x 512 (needs torch)

facerecon ships no face-parsing weights: without ``--model`` the network time is that of a trivial
stand-in, and only the processing time is meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image
from facerecon.plugins.onnx_parsing import OnnxParser, OnnxParsingOptions, crop_window, cut


def stand_in(folder: Path) -> Path:
    """A 19-class 1x1 convolution at 512 x 512 (the test suite's nearest-colour network)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from onnx_models import export_nearest_colour

    return export_nearest_colour(folder / "stand_in_512.onnx", size=512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="your face-parsing .onnx (default: a stand-in network)")
    parser.add_argument("--label-order", default="celebamask-hq")
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or stand_in(Path(tmp))
        segmenter = OnnxParser(OnnxParsingOptions(model_path=model, label_order=args.label_order))
        total, network = [], []
        with Pipeline(PipelineConfig(device="cpu")) as pipe:
            for photo in photos:
                image = load_image(photo)
                faces = pipe.detect(image)
                if not faces:
                    continue
                start = time.perf_counter()
                segmenter.segment(image, faces[0])
                total.append((time.perf_counter() - start) * 1000)
                x0, y0, side = crop_window(faces[0].box, segmenter.options.crop_scale, segmenter.options.crop_shift)
                batch = segmenter.preprocess(cut(image, x0, y0, side))
                start = time.perf_counter()
                segmenter.infer(batch)
                network.append((time.perf_counter() - start) * 1000)
    processing = np.array(total) - np.array(network)
    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                "model": str(args.model) if args.model else "stand-in 1x1 convolution, 512 x 512, 19 classes",
                "faces": len(total),
                "median_ms": {
                    "segment": round(float(np.median(total)), 2),
                    "network": round(float(np.median(network)), 2),
                    "processing": round(float(np.median(processing)), 2),
                },
                "p90_ms": {"segment": round(float(np.percentile(total, 90)), 2)},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
