"""``facerecon bench``: the report's shape and its consistency on three real photos (no speed is
asserted: speed belongs in benchmarks/), and bad input refused with exit code 2."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from facerecon.cli import main


def test_bench_reports_every_stage(tmp_path, lfpw, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in lfpw[:3]:
        (folder / photo.name).symlink_to(photo)
    out = tmp_path / "report"
    assert main(["bench", str(folder), "-o", str(out), "-q", "--refiners", "laplace", "--device", "cpu"]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["photos"] == 3 and result["photos_with_a_face"] == 3 and result["device"] == "cpu"
    stages = result["stages"]
    assert set(stages) == {"detector", "segmenter", "regressor", "refiner:laplace", "total"}
    for stage in stages.values():
        assert stage["runs"] == 2  # the first photo is the first-call cost, reported apart
        assert 0 < stage["median_ms"] <= stage["p90_ms"]
    assert stages["total"]["median_ms"] >= max(s["median_ms"] for n, s in stages.items() if n != "total")
    assert result["first_call"]["load_ms"] > 0 and result["first_call"]["first_photo_ms"] > 0
    assert result["peak_rss_mb"] >= result["peak_rss_before_mb"] > 0
    assert result["cuda_peak_mb"] is None  # a CPU run: no GPU memory to report (a number on --device cuda)
    with Image.open(out / "bench.png") as chart:
        assert chart.size[0] == 900 and chart.size[1] == 110 + 40 * len(stages)


def test_bench_times_a_stage_over_grpc(tmp_path, lfpw, capsys):
    """``--remote regressor=ADDRESS`` (the remote plugin's flag): the regressor is a real gRPC server on
    loopback, and its row is the remote call's time; ``--against`` the in-process run's bench.json puts
    both in one report and one chart."""
    from services_support import serving

    from facerecon.services.server import Server, ServerSettings

    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in lfpw[:2]:
        (folder / photo.name).symlink_to(photo)
    server = Server.for_stage("regressor", "landmark-mesh", device="cpu", settings=ServerSettings(port=0))
    with serving(server) as address:
        argv = [
            "bench",
            str(folder),
            "-o",
            str(tmp_path / "report"),
            "-q",
            "--passes",
            "2",
            "--device",
            "cpu",
            "--refiners",
            "",
        ]
        local = tmp_path / "local"
        assert main([*argv[:3], str(local), *argv[4:], "--regressor", "landmark-mesh"]) == 0
        in_process = json.loads(capsys.readouterr().out)
        assert main([*argv, "--remote", f"regressor={address}", "--against", str(local / "bench.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pipeline"]["regressor"] == "remote"
    assert result["photos_with_a_face"] == 2 and result["stages"]["regressor"]["runs"] == 3
    against = result["against"]
    assert against["pipeline"]["regressor"] == "landmark-mesh" and set(against["stages"]) == set(result["stages"])
    assert against["differs"] == []  # the same stages, photos and passes: only where the regressor ran
    row = against["stages"]["regressor"]
    assert row["against_ms"] == in_process["stages"]["regressor"]["median_ms"]
    assert row["ratio"] == pytest.approx(row["median_ms"] / row["against_ms"], rel=1e-2)
    with Image.open(tmp_path / "report" / "bench.png") as chart:  # a bar per stage and run
        assert chart.size[1] == 110 + 40 * 2 * len(result["stages"])


@pytest.mark.parametrize("case", ["no photos", "bad passes", "bad against", "nan against"])
def test_bench_refuses_bad_input(tmp_path, case, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    argv = ["bench", str(folder), "-o", str(tmp_path / "report")]
    if case != "no photos":
        Image.new("RGB", (64, 64)).save(folder / "a.png")
    if case == "bad passes":
        argv += ["--passes", "0"]
    if case == "bad against":
        (tmp_path / "other.json").write_text('{"stages": {"total": {"median_ms": "fast"}}}')
        argv += ["--against", str(tmp_path / "other.json")]
    if case == "nan against":
        (tmp_path / "other.json").write_text('{"stages": {"total": {"median_ms": NaN, "p90_ms": 1}}}')
        argv += ["--against", str(tmp_path / "other.json")]
    assert main(argv) == 2
    expected = {
        "no photos": "no images matched",
        "bad passes": "--passes",
        "bad against": "not a bench.json",
        "nan against": "stage 'total' has median_ms nan",
    }
    assert expected[case] in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_a_remote_refiner_is_compared_with_the_same_refiner_in_process():
    from facerecon.evaluation.bench import compare

    now = {"stages": {"refiner:remote@laplace": {"median_ms": 30.0, "p90_ms": 35.0}}}
    earlier = {"device": "cpu", "stages": {"refiner:laplace": {"median_ms": 25.0, "p90_ms": 27.0}}}
    rows = compare(now, earlier, "b-local/bench.json")["stages"]
    assert rows == {"refiner:remote@laplace": {"median_ms": 30.0, "against_ms": 25.0, "ratio": 1.2}}


def test_against_a_run_of_other_stages_or_photos_says_what_differs(tmp_path, lfpw, capsys):
    from facerecon.evaluation.bench import differences

    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in lfpw[:2]:
        (folder / photo.name).symlink_to(photo)
    argv = ["bench", str(folder), "-q", "--device", "cpu", "--regressor", "landmark-mesh"]
    assert main([*argv, "-o", str(tmp_path / "a"), "--refiners", ""]) == 0
    (folder / lfpw[2].name).symlink_to(lfpw[2])
    against = ["--against", str(tmp_path / "a" / "bench.json")]
    assert main([*argv, "-o", str(tmp_path / "b"), "--refiners", "laplace", *against]) == 0
    captured = capsys.readouterr()
    differs = json.loads((tmp_path / "b" / "bench.json").read_text())["against"]["differs"]
    assert differs == ["photos: 2 then, 3 now", "refiners: [] then, ['laplace'] now"]
    assert "was another run (photos: 2 then, 3 now; refiners: [] then, ['laplace'] now)" in captured.err
    # a report written before the plugins were recorded: a remote refiner is its plugin, a remote stage
    # whose server chose the plugin is not compared
    old = {
        "photos": 3,
        "passes": 1,
        "pipeline": {
            "detector": "remote",
            "regressor": "landmark-mesh",
            "segmenter": None,
            "refiners": ["remote@laplace"],
        },
    }
    now = {
        "photos": 3,
        "passes": 1,
        "pipeline": {
            "plugins": {"detector": "mediapipe", "regressor": "3dmm-fit", "segmenter": None, "refiners": ["laplace"]}
        },
    }
    assert differences(now, old) == ["regressor: landmark-mesh then, 3dmm-fit now"]
    # the same number of other photos (bench.json records a digest of the photos' pixels)
    other = {**old, "pipeline": now["pipeline"], "photo_set": "a" * 32}
    assert differences({**now, "photo_set": "b" * 32}, other) == ["photos: another set of 3"]
