"""What the writers' and start-up speed-ups must keep (issue 19): PNGs that decode to the very pixels at every
compression level, one encoding of a texture shared by the OBJ, PLY and GLB that hold it, a texture sized to
the face, and a command line that loads torch, scipy, grpc, mediapipe, OpenCV, trimesh and numba only when a
photo needs them. (Speed itself is measured in benchmarks/bench_writers.py, never here.)"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from facerecon.kernel.contract.records import Mesh
from facerecon.outputs.folder import auto_texture_size
from facerecon.outputs.meshes import PngImage, png_bytes, write_mesh

HEAVY = ("torch", "scipy", "grpc", "mediapipe", "cv2", "trimesh", "numba", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running ``code``."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1].replace("'", '"'))


def test_the_command_line_loads_no_heavy_library_to_parse_its_arguments():
    """`facerecon --help` discovers every plugin (for their flags and commands) but imports none of the
    libraries that only a photo needs."""
    assert _loaded_after("from facerecon.cli import build_parser\nbuild_parser()") == []


def test_mediapipe_loads_without_matplotlib_and_its_plotting_helper_still_works():
    """MediaPipe's vision package imports matplotlib.pyplot for a plotting helper face landmarking never
    calls (~0.3 s of start-up): the detector loads with stand-ins that import the real module on first use."""
    loaded = (
        "from facerecon.plugins.mediapipe_detector import MediaPipeDetector, MediaPipeOptions\n"
        "MediaPipeDetector(MediaPipeOptions())"
    )
    assert "matplotlib" not in _loaded_after(loaded)
    helper = (
        f"{loaded}\nfrom mediapipe.tasks.python.vision import drawing_utils\nimport matplotlib.pyplot as real\n"
        "assert drawing_utils.plt.figure is real.figure and drawing_utils.plt.axes is real.axes"
    )
    assert "matplotlib" in _loaded_after(helper)
    # Already imported: MediaPipe gets the real module itself.
    first = f"import matplotlib.pyplot as real\n{loaded}\nfrom mediapipe.tasks.python.vision import drawing_utils\n"
    assert "matplotlib" in _loaded_after(first + "assert drawing_utils.plt is real")


def test_device_auto_without_a_gpu_driver_does_not_import_torch():
    code = (
        "from facerecon.kernel.host import devices\n"
        "devices.GPU_DEVICE_NODES = ('/nonexistent/nvidia0',)\n"
        "assert devices.resolve_device('auto') == 'cpu'"
    )
    assert "torch" not in _loaded_after(code)


def test_device_auto_asks_torch_where_a_gpu_driver_is():
    pytest.importorskip("torch")
    code = (
        "import torch\n"
        "from facerecon.kernel.host import devices\n"
        "devices.GPU_DEVICE_NODES = ('/',)  # a path that exists: as if a driver were there\n"
        "assert devices.resolve_device('auto') == ('cuda' if torch.cuda.is_available() else 'cpu')"
    )
    assert "torch" in _loaded_after(code)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_bytes_decode_to_the_same_pixels_at_every_level(level):
    rng = np.random.default_rng(level)
    smooth = np.linspace(0, 255, 96 * 80).reshape(96, 80)
    rgb = np.stack([smooth, smooth[::-1], rng.integers(0, 256, (96, 80))], -1)
    rgb = rgb.astype(np.uint8)
    deep = (smooth * 257).astype(np.uint16)
    grey = rgb[..., 0].copy()
    for image in (rgb, deep, grey):
        decoded = np.asarray(Image.open(io.BytesIO(png_bytes(image, level))))
        assert decoded.dtype == image.dtype and np.array_equal(decoded, image)


def test_png_compression_level_trades_size():
    smooth = np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1))
    image = np.stack([smooth, smooth.T, np.full_like(smooth, 90)], -1)
    sizes = [len(png_bytes(image, level)) for level in (0, 1, 9)]
    assert sizes[0] > sizes[1] >= sizes[2]
    with pytest.raises(ValueError, match="0-9"):
        png_bytes(image, 10)


def _glb_images(path: Path) -> list[bytes]:
    data = path.read_bytes()
    length = struct.unpack("<I", data[12:16])[0]
    gltf = json.loads(data[20 : 20 + length])
    binary = 20 + length + 8
    views = gltf["bufferViews"]
    return [
        data[binary + views[i["bufferView"]]["byteOffset"] :][: views[i["bufferView"]]["byteLength"]]
        for i in gltf["images"]
    ]


def test_a_texture_is_encoded_once_for_every_file_that_holds_it(tmp_path):
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 6), np.linspace(0, 1, 6)), -1).reshape(-1, 2)
    vertices = np.column_stack([grid * 100.0, np.zeros(len(grid))])
    quads = np.array([[r * 6 + c, r * 6 + c + 1, (r + 1) * 6 + c] for r in range(5) for c in range(5)])
    mesh = Mesh(vertices, quads, "grid", uvs=grid.astype(np.float32))
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    texture = PngImage(pixels, level=1)
    encodings = []
    original = png_bytes

    def counting(image: np.ndarray, level: int = 1) -> bytes:
        encodings.append(image.shape)
        return original(image, level)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("facerecon.outputs.meshes.png_bytes", counting)
        for suffix in ("obj", "ply", "glb"):
            write_mesh(mesh, tmp_path / f"grid.{suffix}", texture)
    assert encodings == [(32, 32, 3)]  # one encoding, three files
    assert (tmp_path / "grid.png").read_bytes() == texture.data == _glb_images(tmp_path / "grid.glb")[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png")), pixels)


@pytest.mark.parametrize(
    ("side", "expected"), [(40, 256), (250, 256), (257, 512), (300, 512), (512, 512), (513, 1024), (3000, 1024)]
)
def test_auto_texture_size_is_a_texel_per_photo_pixel(side, expected):
    face = SimpleNamespace(face=SimpleNamespace(box=np.array([10.0, 20.0, 10.0 + side * 0.8, 20.0 + side])))
    assert auto_texture_size(face) == expected  # type: ignore[arg-type]
