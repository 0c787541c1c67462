"""Jitter of a video's shapes with and without the temporal filters, on a static-head clip of real frames.

    python -m benchmarks.video_jitter [--frames 24] [--regressor 3dmm-fit|landmark-mesh] [--out out/jitter]

The clip: the two real 300-VW frames of clip 001 (../shared/data/faces/samples/300vw/001, three frames apart:
the head is all but still), alternated every 4 frames, each frame shifted by a random sub-pixel amount
(±1.5 px, what a hand-held camera adds) and written as an MPEG-4 video by OpenCV (its compression noise
too). The true shape motion is ~0, so the frame-to-frame vertex motion after pose removal
(facerecon.temporal.jitter) is the jitter. Each run prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from facerecon.batch import WriteOptions
from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.video import write_video
from facerecon.video_reconstruct import VideoOptions, reconstruct_video


def static_head_frames(folder: Path, count: int, shift_px: float = 1.5, seed: int = 0) -> list[np.ndarray]:
    """``count`` uint8 (H, W, 3) RGB frames: the folder's photos alternated every 4 frames, each shifted by a
    random sub-pixel (dx, dy) in ±``shift_px`` (bilinear, edges reflected)."""
    import cv2

    from facerecon.kernel.host.imageio import load_image

    photos = [load_image(p) for p in sorted(folder.glob("*.jpg"))]
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        photo = photos[(i // 4) % len(photos)]
        dx, dy = rng.uniform(-shift_px, shift_px, 2)
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        size = (photo.shape[1], photo.shape[0])
        frames.append(cv2.warpAffine(photo, shift, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


def sfm_config(regressor: str) -> PipelineConfig:
    config = PipelineConfig(regressor=regressor, segmenter=None, refiners=(), device="cpu")
    if regressor == "3dmm-fit":
        data = shared_data_dir()
        assert data is not None, "needs ../shared/data"
        model = data / "models" / "sfm" / "sfm_shape_3448.bin"
        config = config.with_options("regressor", "3dmm-fit", {"model": str(model)})
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--regressor", default="3dmm-fit")
    parser.add_argument("--out", type=Path, default=Path("out/jitter"))
    args = parser.parse_args()
    data = shared_data_dir()
    assert data is not None, "needs ../shared/data"
    args.out.mkdir(parents=True, exist_ok=True)
    clip = args.out / "static_head.mp4"
    write_video(clip, static_head_frames(data / "faces" / "samples" / "300vw" / "001" / "imgs", args.frames), 30.0)
    with Pipeline(sfm_config(args.regressor)) as pipeline:
        pipeline.warm_up()
        for smooth in (False, True):
            start = time.perf_counter()
            outcome = reconstruct_video(
                pipeline,
                clip,
                args.out / f"smooth_{smooth}",
                WriteOptions(),
                VideoOptions(smooth=smooth, aggregate="mean"),
            )
            assert outcome.error is None, outcome.error
            video = json.loads((args.out / f"smooth_{smooth}" / "video.json").read_text())
            row = {
                "regressor": args.regressor,
                "smoothing": smooth,
                "shared_identity": video["shared_identity"],
                "frames": outcome.frames,
                "jitter_mean": round(video["jitter"]["mean"], 4),
                "jitter_relative": round(video["jitter"]["relative"], 5),
                "aggregate_rms_to_mean": video["aggregate"]["rms_to_mean_mean"],
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
