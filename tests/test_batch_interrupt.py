"""Ctrl-C in a batch of several worker processes (``--jobs 2``) and on the Ray engine (issue 18): the run
stops promptly with exit 130 (the CLI's convention, see facerecon.cli), every result folder it leaves is
complete (the inputs in flight are absent, listed in summary.json's ``not_processed``), no worker process
outlives it, and a re-run without --overwrite does the rest.

The real command runs in a session of its own and the signal goes to its whole process group, as a
terminal's Ctrl-C does; the tests poll for state (results written, processes gone), never sleep a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.polling import wait_for

CLI = [sys.executable, "-m", "facerecon.cli"]
FAST = ["--regressor", "landmark-mesh", "--segmenter", "none", "--refiners", "", "--texture-size", "64", "-q"]
PROMPT_S = 60.0
"""How long the run may take to stop after Ctrl-C: generous for a loaded machine; a hang fails the test."""


def _wait_for(condition, timeout: float = 180.0) -> bool:
    return wait_for(condition, timeout, step=0.02)


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: the CLI's, and every process it started (Ray's raylet,
    GCS and workers change their process group, not their session)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def _results(out: Path) -> set[str]:
    return {p.parent.name for p in out.glob("*/result.json")}


def _interrupt_mid_batch(
    out: Path, photos: list[Path], flags: list[str], stop: Callable[[int], None] | None = None
) -> tuple[dict, set[str]]:
    """Start the batch, Ctrl-C once two results are written and others are in flight (``stop(pid)``: another
    way to stop it); its summary and the processes it had started."""
    process = subprocess.Popen(
        [*CLI, "reconstruct", *map(str, photos), "-o", str(out), *FAST, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert _wait_for(lambda: len(_results(out)) >= 2 or process.poll() is not None), "no result in time"
        assert process.poll() is None, process.communicate()
        started = set(_session(process.pid)) - {process.pid}
        assert started, "the batch was meant to run in worker processes"
        if stop is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        else:
            stop(process.pid)
        _, stderr = process.communicate(timeout=PROMPT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr
    assert "interrupted after" in stderr
    assert "Traceback" not in stderr, stderr
    # no worker outlives the run (Ray's processes may take a moment to go)
    assert _wait_for(lambda: not _session(process.pid), timeout=PROMPT_S), _session(process.pid)
    return json.loads((out / "summary.json").read_text()), started


def _check_what_was_left(out: Path, photos: list[Path], summary: dict) -> None:
    assert summary["interrupted"] is True
    done = {Path(s["input"]).stem for s in summary["succeeded"]}
    not_processed = {Path(p).stem for p in summary["not_processed"]}
    assert len(done) >= 2 and not_processed, "the run was meant to be cut short"
    assert done | not_processed == {p.stem for p in photos} and not done & not_processed
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "half-written folders left"
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    # each folder left is complete: those done, and at most an input finished as the workers were stopped
    assert done <= folders <= done | not_processed
    for stem in folders:
        assert {"result.json", "coarse.obj", "preview.png"} <= {f.name for f in (out / stem).iterdir()}


def _rerun_resumes(out: Path, photos: list[Path], flags: list[str], first: dict) -> None:
    rerun = subprocess.run(
        [*CLI, "reconstruct", *map(str, photos), "-o", str(out), *FAST, *flags], capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((out / "summary.json").read_text())
    before = {Path(s["input"]).stem for s in first["succeeded"]}
    assert before <= {Path(p).stem for p in summary["skipped"]}  # not redone
    assert summary["counts"]["succeeded"] + summary["counts"]["skipped"] == len(photos)
    assert summary["interrupted"] is False and summary["not_processed"] == [] and summary["failed"] == 0
    assert _results(out) == {p.stem for p in photos}


def test_ctrl_c_with_two_workers(tmp_path, lfpw):
    out, photos = tmp_path / "out", lfpw[:14]
    summary, started = _interrupt_mid_batch(out, photos, ["--jobs", "2"])
    assert len(started) >= 2  # the two workers
    _check_what_was_left(out, photos, summary)
    _rerun_resumes(out, photos, ["--jobs", "2"], summary)


@pytest.mark.parametrize("group", [False, True], ids=["kill-pid", "kill-group"])
def test_sigterm_stops_a_batch_as_ctrl_c_does(tmp_path, lfpw, group):
    """SIGTERM (``kill PID``, ``docker stop``, a Kubernetes pod deleted: to the main process; or to the whole
    group): the same orderly stop as Ctrl-C, with summary.json and no worker's traceback, and the re-run resumes."""
    out, photos = tmp_path / "out", lfpw[:14]

    def terminate(pid: int) -> None:
        (os.killpg if group else os.kill)(pid, signal.SIGTERM)

    summary, _ = _interrupt_mid_batch(out, photos, ["--jobs", "2"], stop=terminate)
    _check_what_was_left(out, photos, summary)
    assert summary["failed"] == 0, summary["failures"]  # a worker stopped by the signal is no input's failure
    _rerun_resumes(out, photos, ["--jobs", "2"], summary)


def test_ctrl_c_on_the_ray_engine(tmp_path, lfpw):
    pytest.importorskip("ray", reason="the Ray engine needs pip install 'facerecon[ray]'")
    out, photos = tmp_path / "out", lfpw[:24]
    summary, started = _interrupt_mid_batch(out, photos, ["--engine", "ray"])
    assert len(started) >= 3  # Ray's processes and the stage actors
    _check_what_was_left(out, photos, summary)
    _rerun_resumes(out, photos, ["--jobs", "2"], summary)


def test_sigterm_on_the_ray_engine(tmp_path, lfpw):
    """ray.init puts its own SIGTERM handler in place (sys.exit: no summary.json); the CLI's is set again."""
    pytest.importorskip("ray", reason="the Ray engine needs pip install 'facerecon[ray]'")
    out, photos = tmp_path / "out", lfpw[:24]
    summary, _ = _interrupt_mid_batch(out, photos, ["--engine", "ray"], stop=lambda pid: os.kill(pid, signal.SIGTERM))
    _check_what_was_left(out, photos, summary)
