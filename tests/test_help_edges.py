"""Every --help of the command line reads as written: argparse %-formats help strings (where "%%" is a
percent sign) but not descriptions (where "%%" would be printed as is)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from facerecon.cli import build_parser


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and all its sub-commands' parsers, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases: one parser under several names
                yield from parsers(sub)


def test_no_help_text_shows_a_doubled_percent_sign():
    helps = {parser.prog: parser.format_help() for parser in parsers(build_parser())}
    assert "facerecon eval landmarks" in helps and "facerecon serve" in helps
    assert [prog for prog, text in helps.items() if "%%" in text] == []
    assert "failure rate at 8 % / 10 %" in " ".join(helps["facerecon eval landmarks"].split())


def test_a_bad_texture_size_is_said_in_words(capsys):
    from facerecon.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["reconstruct", "x.png", "-o", "out", "--texture-size", "abc"])
    assert exit_.value.code == 2
    assert "expected auto or a side in texels (e.g. 512), got 'abc'" in capsys.readouterr().err


def test_a_reader_that_stops_early_gets_no_traceback():
    """``facerecon plugins --json | head -1`` printed a BrokenPipeError traceback."""
    import subprocess
    import sys

    facerecon = Path(sys.executable).with_name("facerecon")
    command = f"'{facerecon}' plugins --json | true"  # the reader is gone before the first write
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, 141)
