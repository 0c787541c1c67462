"""Where results go: a folder facerecon did not write is never written over (a clear error instead), and
``--frame image`` keeps the photo's placement in the mesh files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from facerecon.cli import main
from facerecon.kernel.contract.errors import OutputError
from facerecon.outputs.folder import write_outputs


@pytest.fixture(scope="module")
def reconstruction(pipeline, face_photo):
    return pipeline(face_photo)


def test_write_outputs_never_replaces_a_folder_it_did_not_write(tmp_path, reconstruction, face_photo):
    theirs = tmp_path / "holiday"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine\n")
    with pytest.raises(OutputError, match=r"holiday exists and is not a facerecon result .*it holds notes\.txt"):
        write_outputs(reconstruction, face_photo, theirs, source="photo")
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"] and (theirs / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holiday"]  # no staging folder left
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        write_outputs(reconstruction, face_photo, a_file, source="photo")
    # An empty folder, and then facerecon's own result, are replaced.
    empty = tmp_path / "empty"
    empty.mkdir()
    write_outputs(reconstruction, face_photo, empty, source="first", texture_size=64)
    write_outputs(reconstruction, face_photo, empty, source="second", texture_size=64)
    assert json.loads((empty / "result.json").read_text())["input"] == "second"


def test_cli_refuses_an_output_folder_that_is_not_facerecon_s(tmp_path, lfpw, capsys):
    photo = lfpw[0]
    out = tmp_path / "out"
    (out / photo.stem).mkdir(parents=True)
    (out / photo.stem / "thesis.tex").write_text("\\begin{document}\n")
    assert main(["reconstruct", str(photo), "-o", str(out), "-q"]) == 2
    error = capsys.readouterr().err
    assert f"{out / photo.stem} exists and is not a facerecon result" in error and "thesis.tex" in error
    assert sorted(p.name for p in out.iterdir()) == [photo.stem]  # nothing written, not even summary.json
    assert (out / photo.stem / "thesis.tex").read_text() == "\\begin{document}\n"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text('{"my": "numbers"}\n')
    assert main(["reconstruct", str(photo), "-o", str(mine), "-q"]) == 2
    assert "summary.json exists and was not written by facerecon" in capsys.readouterr().err
    assert (mine / "summary.json").read_text() == '{"my": "numbers"}\n' and len(list(mine.iterdir())) == 1


def test_cli_rewrites_its_own_results_in_the_image_frame(tmp_path, lfpw):
    photo = lfpw[0]
    out = tmp_path / "out"
    assert main(["reconstruct", str(photo), "-o", str(out), "-q", "--texture-size", "64", "--refiners", ""]) == 0
    assert json.loads((out / photo.stem / "result.json").read_text())["reconstructions"][0]["frames"]["files"] == "head"
    # the second run replaces the first (facerecon's own folder and summary.json); without --overwrite a
    # complete result is kept (resume)
    assert (
        main(
            [
                "reconstruct",
                str(photo),
                "-o",
                str(out),
                "-q",
                "--overwrite",
                "--frame",
                "image",
                "--texture-size",
                "64",
                "--refiners",
                "",
            ]
        )
        == 0
    )
    result = json.loads((out / photo.stem / "result.json").read_text())
    assert result["reconstructions"][0]["frames"]["files"] == "image"
    vertices = np.asarray(trimesh.load(out / photo.stem / "coarse.obj", process=False).vertices)
    header = (out / photo.stem / "coarse.obj").read_text().splitlines()[0]
    assert "image frame, units px, y up" in header
    # The image frame: a file vertex (x, y, z) is seen at pixel (x, -y), so the mesh covers the face's box.
    x0, y0, x1, y1 = result["faces"][0]["box"]
    assert abs(vertices[:, 0].min() - x0) < 0.15 * (x1 - x0) and abs(vertices[:, 0].max() - x1) < 0.15 * (x1 - x0)
    assert abs(-vertices[:, 1].max() - y0) < 0.25 * (y1 - y0) and abs(-vertices[:, 1].min() - y1) < 0.15 * (y1 - y0)


def test_a_medium_stage_that_only_subdivided_writes_no_final_files(tmp_path, face_photo, shared_data):
    """``3dmm-fit`` + ``laplace`` (``--fast``): the medium stage subdivides the 3,448-vertex model mesh, a new
    topology, but carves no detail. Before 0.15.0 ``final.*`` was written anyway, the coarse mesh carrying
    the medium stage as maps; ``final.*`` is the fine stage's."""
    from facerecon.kernel import Pipeline, PipelineConfig

    sfm = shared_data / "models" / "sfm" / "sfm_shape_3448.bin"
    config = PipelineConfig(regressor="3dmm-fit", refiners=("laplace",), device="cpu")
    with Pipeline(config.with_options("regressor", "3dmm-fit", {"model": str(sfm)})) as pipe:
        rec = pipe(face_photo)
    stages = rec.reconstructions[0].stages
    assert stages[0].mesh.topology != stages[1].mesh.topology  # the case: a new topology
    result = write_outputs(rec, face_photo, tmp_path / "out", source="photo.png", formats=("obj", "glb"))
    assert not list((tmp_path / "out").glob("final*"))
    assert result["reconstructions"][0]["detail_maps"] is None


def test_write_outputs_refuses_arguments_it_cannot_use(tmp_path, reconstruction, face_photo):
    """Found by a walk-through of the Python API: formats as one string ("unknown mesh format '.o'"), a
    negative texture size (numpy's "negative dimensions"), 0 (taken as auto), a float image (a PIL
    TypeError) and another image than the reconstruction's (textures silently from the wrong pixels)."""
    from facerecon.kernel.contract.errors import InputError

    def write(**changes):
        args = {"source": "x.png", "formats": ("obj",), "image": face_photo} | changes
        image = args.pop("image")
        return write_outputs(reconstruction, image, tmp_path / "out", **args)

    with pytest.raises(ValueError, match="formats must be a sequence"):
        write(formats="obj,ply")
    for size in (-5, 0):
        with pytest.raises(ValueError, match="texture_size must be None"):
            write(texture_size=size)
    with pytest.raises(InputError):
        write(image=face_photo.astype(np.float32))
    with pytest.raises(ValueError, match="the reconstruction was of"):
        write(image=np.ascontiguousarray(face_photo[:100, :100]))
    assert not (tmp_path / "out").exists()


def test_the_api_says_what_a_wrong_argument_is(tmp_path):
    from facerecon.kernel import ConfigError, Pipeline
    from facerecon.kernel.contract.errors import InputError
    from facerecon.kernel.host.imageio import load_image

    with pytest.raises(ConfigError, match="got int"):
        Pipeline.from_config(42)
    with pytest.raises(InputError, match="a folder, not an image file"):
        load_image(tmp_path)
