"""`facerecon models` used badly: convert into a place it cannot write, or interrupted, or to a name that is
not .npz; unreadable files; options that do not apply. Each is one error line and exit 2 (130 for Ctrl-C), no
traceback, nothing half-written left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facerecon.cli import main


@pytest.fixture
def sfm_file(shared_data) -> Path:
    return shared_data / "models" / "sfm" / "sfm_shape_3448.bin"


def test_convert_into_a_path_under_a_regular_file_is_a_usage_error(sfm_file, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    target = tmp_path / "notes.txt" / "sfm.npz"
    assert main(["models", "convert", str(sfm_file), str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{target}: cannot write" in err and "Not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_convert_into_a_read_only_folder_is_a_usage_error(sfm_file, tmp_path, capsys):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    assert main(["models", "convert", str(sfm_file), str(folder / "sfm.npz")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert list(folder.iterdir()) == []


def test_convert_interrupted_mid_write_leaves_nothing(sfm_file, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the archive is written: no half-written OUT.npz.partial stays behind."""
    from facerecon.facelib.morphable.formats import npz

    def interrupted(handle, **arrays):
        handle.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(npz.np, "savez", interrupted)
    assert main(["models", "convert", str(sfm_file), str(tmp_path / "sfm.npz")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["sfm.obj", "sfm", "-"])
def test_convert_to_a_name_that_is_not_npz_is_an_error_on_stderr(sfm_file, tmp_path, capsys, name):
    assert main(["models", "convert", str(sfm_file), str(tmp_path / name)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"facerecon: error: {tmp_path / name}: the converted model must be an .npz file" in err
    assert list(tmp_path.iterdir()) == []


def test_convert_to_an_upper_case_npz_suffix(sfm_file, tmp_path, capsys):
    assert main(["models", "convert", str(sfm_file), str(tmp_path / "SFM.NPZ")]) == 0
    assert main(["models", "info", str(tmp_path / "SFM.NPZ"), "--json"]) == 0


def test_info_options_with_a_catalogue_name_are_refused_not_ignored(sfm_file, tmp_path, capsys, monkeypatch):
    """`models info NAME --expressions FILE` printed the catalogue entry as if the option were not there."""
    catalogue = tmp_path / "models.toml"
    catalogue.write_text(f'[models.sfm]\npath = "{sfm_file}"\n')
    monkeypatch.setenv("FACERECON_MODELS", str(catalogue))
    assert main(["models", "info", "sfm", "--expressions", str(tmp_path / "absent.bin")]) == 2
    err = capsys.readouterr().err
    assert "'sfm' is a catalogue entry" in err and "--expressions" in err
    assert main(["models", "info", "sfm", "--format", "npz"]) == 2
    assert "'sfm' is a catalogue entry" in capsys.readouterr().err


def test_info_of_a_file_with_an_unknown_suffix_takes_format(sfm_file, tmp_path, capsys):
    odd = tmp_path / "surrey.model"
    odd.write_bytes(sfm_file.read_bytes())
    assert main(["models", "info", str(odd)]) == 2
    assert "cannot tell the model format" in capsys.readouterr().err
    assert main(["models", "info", str(odd), "--format", "sfm", "--json"]) == 0
    assert '"vertices": 3448' in capsys.readouterr().out


def test_the_format_names_in_help_are_the_loaders():
    from facerecon.facelib.morphable.formats import LOADERS
    from facerecon.plugins import models_command

    assert ", ".join(LOADERS) == models_command.FORMATS


def refuse_to_open(monkeypatch, locked: Path) -> None:
    """Permission denied on opening ``locked`` (simulated: root reads everything)."""
    import pathlib

    real_open = pathlib.Path.open

    def refuse(self, *args, **kwargs):
        if self.name == locked.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refuse)


def test_an_unreadable_model_file_is_a_usage_error(sfm_file, tmp_path, capsys, monkeypatch):
    """Permission denied on open (simulated: root reads everything) was a PermissionError traceback."""

    locked = tmp_path / "locked.npz"
    assert main(["models", "convert", str(sfm_file), str(locked)]) == 0
    capsys.readouterr()
    refuse_to_open(monkeypatch, locked)
    assert main(["models", "info", str(locked)]) == 2
    assert f"{locked}: cannot be read (Permission denied)" in capsys.readouterr().err


def test_list_verify_marks_an_unreadable_entry_and_lists_the_others(sfm_file, tmp_path, capsys, monkeypatch):
    """`models list --verify` stopped at the first file it could not read (exit 2, the rest unlisted)."""
    import hashlib

    digest = hashlib.sha256(sfm_file.read_bytes()).hexdigest()
    locked = tmp_path / "locked.bin"
    locked.write_bytes(sfm_file.read_bytes())
    catalogue = tmp_path / "models.toml"
    catalogue.write_text(
        f'[models.a_locked]\npath = "{locked}"\nsha256 = "{digest}"\n'
        f'[models.b_sfm]\npath = "{sfm_file}"\nsha256 = "{digest}"\n'
    )
    monkeypatch.setenv("FACERECON_MODELS", str(catalogue))
    refuse_to_open(monkeypatch, locked)
    assert main(["models", "list", "--verify"]) == 1
    out = capsys.readouterr().out
    assert "a_locked" in out and "[UNREADABLE]" in out
    assert "b_sfm" in out and "[ok, sha256 verified]" in out


@pytest.mark.parametrize(
    ("option", "value"),
    [("iterations", 0), ("identity_components", -1), ("expression_components", -2), ("contour_weight", -0.5),
     ("identity_prior", float("nan"))],
)  # fmt: skip
def test_fit_options_name_the_option_that_is_wrong(option, value):
    """One combined message ("iterations must be >= 1 and component counts >= 0") named no option."""
    from facerecon.plugins.fit3dmm import FitOptions

    with pytest.raises(ValueError, match=f"^{option} must be (finite and )?>= "):
        FitOptions(**{option: value})


def test_an_empty_model_name_is_refused(capsys):
    """`models info ""` read the current folder as the model ("/cwd: is not a file")."""
    assert main(["models", "info", ""]) == 2
    assert "an empty name" in capsys.readouterr().err
