"""`facerecon models convert` into a place it cannot write: a clear error and exit 2, no traceback from
removing the partial file there (which fails for the same reason), nothing left behind."""

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
