"""facerecon: one photo of a face in, a detailed 3D mesh out.

import facerecon
from facerecon.outputs.meshes import write_mesh
pipe = facerecon.Pipeline.from_config()          # MediaPipe landmarks -> dense landmark mesh
rec = pipe(image)                                 # image: uint8 (H, W, 3) RGB
write_mesh(rec.reconstructions[0].final.mesh, "face.obj")
"""

from importlib.metadata import PackageNotFoundError, version

from facerecon.kernel import *  # noqa: F403  (the kernel's public names are facerecon's)
from facerecon.kernel import __all__ as _kernel_all

try:
    __version__ = version("facerecon")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [*_kernel_all, "__version__"]
