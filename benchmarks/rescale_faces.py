"""Write LFPW photos rescaled so that each detected face box is ``--face-px`` wide (the issues' "~400 px
face"), for timing whole pipelines on faces of one size with ``facerecon bench``:

    python benchmarks/rescale_faces.py --photos 6 --face-px 400 -o /tmp/face400
    facerecon bench /tmp/face400 -o /tmp/bench-default --passes 1     # the default pipeline
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
from PIL import Image

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--face-px", type=float, default=400.0, help="face box width to rescale to")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    args.output.mkdir(parents=True, exist_ok=True)
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))[: args.photos]
    with Pipeline(PipelineConfig(refiners=(), segmenter=None, device="cpu")) as pipe:
        for photo in photos:
            image = load_image(photo)
            faces = pipe.detect(image)
            if not faces:
                print(f"{photo.name}: no face, skipped")
                continue
            scale = args.face_px / float(faces[0].box[2] - faces[0].box[0])
            resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            Image.fromarray(resized).save(args.output / photo.name)
            print(f"{photo.name}: x{scale:.2f} -> {resized.shape[1]}x{resized.shape[0]}")


if __name__ == "__main__":
    main()
