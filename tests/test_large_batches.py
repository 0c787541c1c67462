"""Large batches on one machine (issue 18, item 4): --jobs N worker processes give the results of one
worker, a re-run skips inputs whose complete results exist (resume) unless --overwrite, and summary.json
counts what was done, skipped and failed, with the throughput."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from facerecon.cli import build_parser, main
from facerecon.outputs.folder import writer_token

FAST = ["--regressor", "landmark-mesh", "--segmenter", "none", "--refiners", "", "--texture-size", "64", "-q"]


def test_jobs_resume_and_overwrite(lfpw, tmp_path):
    photos = lfpw[:3]
    missing_photo = str(tmp_path / "nowhere.png")
    out = tmp_path / "out"
    assert main(["reconstruct", *map(str, photos), missing_photo, "-o", str(out), "--jobs", "2", *FAST]) == 1
    first = json.loads((out / "summary.json").read_text())
    assert first["counts"] == {"succeeded": 3, "failed": 1, "skipped": 0, "images": 3}
    assert first["failures"] == [{"input": missing_photo, "error": "no such file or no images matched"}]
    assert first["jobs"] == 2 and first["images_per_s"] > 0 and first["not_processed"] == []
    meshes = {p.stem: (out / p.stem / "coarse.obj").read_bytes() for p in photos}
    stamps = {p.stem: (out / p.stem / "result.json").stat().st_mtime_ns for p in photos}

    # resume: one result lost (and a half-written folder of a killed run), the others are skipped
    shutil.rmtree(out / photos[1].stem)
    (out / f".{photos[1].stem}.facerecon-{writer_token()}-999999999.x.partial").mkdir()
    assert main(["reconstruct", *map(str, photos), "-o", str(out), "--jobs", "1", *FAST]) == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["counts"] == {"succeeded": 1, "failed": 0, "skipped": 2, "images": 1}
    assert second["skipped"] == [str(photos[0]), str(photos[2])]
    assert [s["input"] for s in second["succeeded"]] == [str(photos[1])]
    for p in photos:  # one worker and two give the same meshes; skipped folders untouched
        assert (out / p.stem / "coarse.obj").read_bytes() == meshes[p.stem]
    assert (out / photos[0].stem / "result.json").stat().st_mtime_ns == stamps[photos[0].stem]
    assert not list(out.glob(".*.partial"))

    # --overwrite redoes a complete result
    assert main(["reconstruct", str(photos[0]), "-o", str(out), "--overwrite", *FAST]) == 0
    third = json.loads((out / "summary.json").read_text())
    assert third["counts"]["skipped"] == 0 and third["counts"]["succeeded"] == 1
    assert (out / photos[0].stem / "result.json").stat().st_mtime_ns != stamps[photos[0].stem]
    assert (out / photos[0].stem / "coarse.obj").read_bytes() == meshes[photos[0].stem]


def test_bad_jobs_is_a_usage_error(lfpw, tmp_path, capsys):
    assert main(["reconstruct", str(lfpw[0]), "-o", str(tmp_path / "o"), "--jobs", "0", *FAST]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
    assert main(["reconstruct", str(lfpw[0]), "-o", str(tmp_path / "o"), "--every", "0", *FAST]) == 2
    assert "--every must be at least 1, got 0" in capsys.readouterr().err
    assert not Path(tmp_path / "o" / lfpw[0].stem).exists()


def test_a_shard_of_a_file_list(lfpw, tmp_path, capsys):
    """The Kubernetes Indexed Job recipe (docs/services.md): pod I of N takes every N-th input of a list."""
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in lfpw[:3]) + "\n")
    out = tmp_path / "out"
    assert main(["reconstruct", "--files-from", str(listing), "--shard", "1/2", "-o", str(out), *FAST]) == 0
    summary = json.loads((out / "summary-shard-1-of-2.json").read_text())
    assert [s["input"] for s in summary["succeeded"]] == [str(lfpw[1])]
    assert sorted(p.name for p in out.iterdir()) == [lfpw[1].stem, "summary-shard-1-of-2.json"]
    for bad in ("2/2", "x/3", "1"):
        assert main(["reconstruct", str(lfpw[0]), "--shard", bad, "-o", str(out), *FAST]) == 2
        assert "--shard" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["reconstruct", "--files-from", str(empty), "-o", str(tmp_path / "none"), *FAST]) == 2
    assert "no inputs" in capsys.readouterr().err and not (tmp_path / "none").exists()
    with pytest.raises(SystemExit) as info:
        main(["reconstruct", "-o", str(out), *FAST])
    assert info.value.code == 2


def test_a_file_list_with_comments_and_file_names_that_are_not_utf8(lfpw, tmp_path):
    """A list as ``find`` writes it on Linux, names in bytes (a Latin-1 ``caf\\xe9.png``: a traceback, not
    a batch), and with ``#`` comment lines (each a failed "input": exit 1 for a list that was fine)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    latin1 = photos / os.fsdecode(b"caf\xe9.png")
    shutil.copy(lfpw[0], latin1)
    listing = tmp_path / "inputs.txt"
    listing.write_bytes(b"# the photos of the shoot\n" + os.fsencode(latin1) + b"\n  # done later: x.png\n")
    out = tmp_path / "out"
    assert main(["reconstruct", "--files-from", str(listing), "-o", str(out), *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["input"] for s in summary["succeeded"]] == [str(latin1)] and summary["failures"] == []
    assert (out / latin1.stem / "result.json").is_file()


def test_the_indexed_job_manifest_shards_the_list():
    """docker/k8s/batch-job.yaml: pod I of the Indexed Job runs `--shard I/N` with N its completions, and its
    command line parses."""
    import shlex

    yaml = pytest.importorskip("yaml", reason="PyYAML (a dev dependency) parses the Kubernetes files")
    job = yaml.safe_load((Path(__file__).parents[1] / "docker" / "k8s" / "batch-job.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["sh", "-c"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for index in range(spec["completions"]):
        words = shlex.split(container["args"][0].replace("${JOB_COMPLETION_INDEX}", str(index)))
        assert words[:3] == ["exec", "facerecon", "reconstruct"]
        args = build_parser().parse_args(words[2:])
        assert args.shard == f"{index}/{spec['completions']}"
        assert any(str(args.files_from).startswith(m) and str(args.output).startswith(m) for m in mounts)


def test_readme_video_and_batch_commands_parse():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Video and large batches", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    parser = build_parser()
    lines = [line.split("  #")[0].split() for line in block.splitlines() if line.startswith("facerecon ")]
    assert len(lines) == 6
    for words in lines:
        args = parser.parse_args([w.strip("'") for w in words[1:]])
        assert args.command == "reconstruct"
    for script in ("bench_batch", "bench_batch_memory", "video_jitter"):  # the section's numbers come from these
        assert f"python -m benchmarks.{script}" in section
        assert (Path(__file__).parents[1] / "benchmarks" / f"{script}.py").is_file()


def test_the_pool_reads_a_long_input_list_lazily(lfpw, tmp_path):
    """A generator of 100k inputs: the pool takes at most 2 * jobs of them ahead of the outcomes it has
    handed back, so a long list is never materialised in the scheduler (memory: benchmarks/bench_batch_memory)."""
    from itertools import islice

    from facerecon.batch import WriteOptions
    from facerecon.kernel import PipelineConfig
    from facerecon.pool import WorkerPool
    from tests.streams import CountedInputs

    inputs = CountedInputs(lfpw[:3], tmp_path)
    config = PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=(), device="cpu")
    handed = []
    with WorkerPool(config, WriteOptions(texture_size=64), jobs=2) as pool:
        for outcome in islice(pool.run(inputs), 10):
            handed.append(outcome)
            assert 0 <= inputs.taken - len(handed) <= 4, (inputs.taken, len(handed))
    assert all(o.error is None for o in handed), [o.error for o in handed]
    assert inputs.taken <= 10 + 4  # closing the pool took nothing more
    assert {Path(o.output or "").name for o in handed} <= {f"p{i:06d}" for i in range(inputs.taken)}


def test_an_outcome_handed_over_when_ctrl_c_comes_is_given_back_by_interrupt(lfpw, tmp_path):
    """Ctrl-C may land after the pool handed an outcome over and before the CLI recorded it (seen in CI: a
    finished photo missing from summary.json); interrupt() gives back every outcome not yet acknowledged,
    the one in hand included, and the CLI skips the inputs it already has."""
    from facerecon.batch import WriteOptions
    from facerecon.kernel import PipelineConfig
    from facerecon.pool import WorkerPool

    config = PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=(), device="cpu")
    tasks = [(photo, tmp_path / photo.stem, None) for photo in lfpw[:3]]
    with WorkerPool(config, WriteOptions(texture_size=64), jobs=1) as pool:
        outcomes = pool.run(tasks)
        first = next(outcomes)  # handed over; the consumer is "interrupted" before it asks for the next
        late = pool.interrupt()
    assert first.error is None and first.input == str(lfpw[0])
    assert late and late[0] == first  # the one in hand first, then any that finished meanwhile
    assert [o.input for o in late] == [str(p) for p in lfpw[: len(late)]]
