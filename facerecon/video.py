"""Reading videos and image sequences frame by frame, with sampling.

    source = open_source(Path("clip.mp4"), Sampling(every=5))       # or a folder of frames with sequence=True
    for frame in source.frames():                                   # Frame(index, time_s, image uint8 (H, W, 3) RGB)
        ...

Videos are decoded with OpenCV (the opencv-contrib-python that mediapipe brings; its FFmpeg reads mp4, avi,
mov, webm, mkv). Every way a video can be unusable is an :class:`InputError` that says which: missing,
zero-length, not a video or a codec this OpenCV cannot decode (named by its FourCC), no frame decodable,
truncated (fewer frames decode than the header promises). Frames skipped by the sampling are grabbed, not
decoded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.kernel.contract.errors import InputError
from facerecon.kernel.host.imageio import IMAGE_SUFFIXES, find_images, load_image

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".avi", ".mov", ".webm", ".mkv"})
"""Suffixes taken as videos (folder inputs pick them up beside photos)."""

TRUNCATION_SLACK = 2
"""Frames a video may decode short of its header's count before it counts as truncated (containers round it)."""


@dataclass(frozen=True)
class Sampling:
    """Which frames to reconstruct: every ``every``-th, or (``fps`` set) the first frame of each 1/fps s;
    ``sequence_fps``: the frame rate an image sequence is taken to have."""

    every: int = 1
    fps: float | None = None
    sequence_fps: float = 30.0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InputError(f"--every must be at least 1, got {self.every}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"--fps must be a positive number (frames a second), got {self.fps}")
        if not (math.isfinite(self.sequence_fps) and self.sequence_fps > 0):
            raise InputError(f"--sequence-fps must be a positive number (frames a second), got {self.sequence_fps}")

    def picks(self, index: int, rate: float) -> bool:
        """Whether frame ``index`` of a ``rate`` frames/s stream is sampled."""
        if self.fps is None or rate <= 0:
            return index % self.every == 0
        # the first frame of each 1/fps interval
        ticks = self.fps / rate
        return index == 0 or math.floor(index * ticks + 1e-9) > math.floor((index - 1) * ticks + 1e-9)


@dataclass(frozen=True)
class Frame:
    """index: 0-based frame number in the video; time_s: its timestamp; image: uint8 (H, W, 3) RGB."""

    index: int
    time_s: float
    image: np.ndarray


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


class VideoFile:
    """A video file read through OpenCV. :meth:`check` opens it and reads its header (fast)."""

    def __init__(self, path: Path, sampling: Sampling) -> None:
        self.path = path
        self.sampling = sampling
        self.rate = 0.0
        self.frame_count = 0
        self.size = (0, 0)
        self.codec = ""

    def _open(self) -> Any:
        import cv2

        name = str(self.path)
        if not self.path.is_file():
            raise InputError(f"{name}: no such file")
        if self.path.stat().st_size == 0:
            raise InputError(f"{name}: zero-length video file")
        capture = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            codec = container_codec(self.path)
            if codec is not None:
                raise InputError(f"{name}: codec {codec!r} is unsupported by this OpenCV build (no decoder for it)")
            raise InputError(f"{name}: not a video OpenCV can open (corrupt, truncated, or not a video at all)")
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
        self.codec = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\0 ") or "unknown"
        self.rate = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        self.size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        return capture

    def check(self) -> None:
        """Open the video and decode its first frame: an InputError now rather than mid-batch."""
        capture = self._open()
        try:
            ok, _ = capture.read()
        finally:
            capture.release()
        if not ok:
            raise InputError(
                f"{self.path}: no frame could be decoded (codec {self.codec!r}: unsupported by this OpenCV build, "
                "or the file is corrupt)"
            )

    def frames(self) -> Iterator[Frame]:
        """The sampled frames in order; an InputError when the video ends short of its header's count."""
        import cv2

        capture = self._open()
        rate = self.rate if self.rate > 0 else self.sampling.sequence_fps
        index = -1
        try:
            while True:
                if not capture.grab():
                    break
                index += 1
                if not self.sampling.picks(index, rate):
                    continue
                ok, bgr = capture.retrieve()
                if not ok or bgr is None:
                    raise InputError(f"{self.path}: frame {index} cannot be decoded (corrupt video)")
                yield Frame(index, index / rate, np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        finally:
            capture.release()
        decoded = index + 1
        if decoded == 0:
            raise InputError(
                f"{self.path}: no frame could be decoded (codec {self.codec!r}: unsupported by this OpenCV build, "
                "or the file is corrupt)"
            )
        if self.frame_count and decoded < self.frame_count - TRUNCATION_SLACK:
            raise InputError(
                f"{self.path}: truncated or corrupt: {decoded} of the {self.frame_count} frames its header "
                "announces could be decoded"
            )


def container_codec(path: Path, window: int = 4 << 20) -> str | None:
    """The video codec's FourCC named in an AVI ('strh' of a 'vids' stream) or MP4/MOV ('stsd' entry)
    header, read from the file's first and last ``window`` bytes; None when there is none (or not valid)."""
    with path.open("rb") as file:
        data = file.read(window)
        size = file.seek(0, 2)
        if size > window:
            file.seek(max(window, size - window))
            data += file.read()
    for marker, offset in ((b"vids", 4), (b"stsd", 16)):  # AVI: vids + fccHandler; MP4: stsd + 12 bytes + format
        at = data.find(marker)
        if at >= 0:
            code = data[at + offset : at + offset + 4]
            if len(code) == 4 and all(32 <= b < 127 for b in code):
                return code.decode("ascii")
    return None


class ImageSequence:
    """A folder of frames (any photo format Pillow reads), in file-name order, taken as one video."""

    def __init__(self, folder: Path, sampling: Sampling) -> None:
        self.path = folder
        self.sampling = sampling
        self.rate = sampling.sequence_fps
        self.codec = "images"
        try:
            self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as exc:
            raise InputError(f"{folder}: cannot read the folder ({exc.strerror or exc})") from None
        self.frame_count = len(self.files)
        self.size = (0, 0)

    def check(self) -> None:
        if not self.files:
            raise InputError(f"{self.path}: an image sequence with no images")

    def frames(self) -> Iterator[Frame]:
        self.check()
        for index, file in enumerate(self.files):
            if self.sampling.picks(index, self.rate):
                yield Frame(index, index / self.rate, load_image(file))


Source = VideoFile | ImageSequence


def open_source(path: Path, sampling: Sampling) -> Source:
    """A folder is an image sequence, anything else a video file."""
    return ImageSequence(path, sampling) if path.is_dir() else VideoFile(path, sampling)


def find_inputs(inputs: list[str], *, sequence: bool = False) -> tuple[list[tuple[Path, bool]], list[tuple[str, str]]]:
    """Expand files, folders and glob patterns into ``(path, is_video)`` in a stable order: photos
    (:data:`IMAGE_SUFFIXES`), videos (:data:`VIDEO_SUFFIXES`), and with ``sequence`` each folder as one image
    sequence (a video). Also ``(input, reason)`` for each input that gave nothing."""
    media = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    found: list[tuple[Path, bool]] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        if sequence and Path(item).is_dir():
            found.append((Path(item), True))
            continue
        matches, missing = find_images([item], media)  # files, folders and globs, as for photos
        found.extend((p, is_video(p)) for p in matches)
        problems += missing
    unique: dict[str, tuple[Path, bool]] = {}  # one entry per file, however it was spelled (relative, absolute)
    for entry in found:
        unique.setdefault(os.path.normpath(entry[0].absolute()), entry)
    return list(unique.values()), problems


def write_video(path: Path, frames: list[np.ndarray], fps: float, fourcc: str = "mp4v") -> Path:
    """Write uint8 (H, W, 3) RGB ``frames`` (one size) as a video with OpenCV (``mp4v``: MPEG-4 part 2 in
    .mp4; ``MJPG`` in .avi; ``VP80`` in .webm). An InputError when OpenCV cannot write that codec."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"{path}: OpenCV cannot write {fourcc!r} video here")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
