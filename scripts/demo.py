"""The README's demo: reconstruct a real public-domain portrait that a dependency ships.

NASA's portrait of astronaut Eileen Collins comes with scikit-image (``skimage.data.astronaut()``,
public domain, inside the wheel: nothing is downloaded). It is written to OUT/astronaut.png and
reconstructed into OUT/astronaut/.

    python scripts/demo.py [OUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from skimage import data

from facerecon.cli import main

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out")
    out.mkdir(parents=True, exist_ok=True)
    photo = out / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    code = main(["reconstruct", str(photo), "-o", str(out), "--formats", "obj,glb"])
    if code == 0:
        print(f"open {out / 'astronaut' / 'preview.png'} first; final.glb opens life-size in Blender (Import > glTF)")
    sys.exit(code)
