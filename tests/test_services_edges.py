"""`facerecon serve` limits that would refuse every call, or that gRPC cannot take, are usage errors at
start (exit 2, the flag named) instead of a server that says SERVING and then refuses everything."""

from __future__ import annotations

import pytest

from facerecon.cli import build_parser
from facerecon.services.server import ServeError, ServerSettings

SERVE = ["serve", "detector", "--plugin", "mediapipe", "--port", "0"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-image-mp", "-1"], "argument --max-image-mp: must be above 0, got -1"),
        (["--max-image-mp", "abc"], "argument --max-image-mp: expected a number, got 'abc'"),
        (["--max-message-mb", "0"], "argument --max-message-mb: must be above 0, got 0"),
        (["--max-message-mb", "1.5"], "argument --max-message-mb: expected an integer, got '1.5'"),
        (["--grace", "-5"], "argument --grace: must be 0 or more, got -5"),
        (["--grace", "nan"], "argument --grace: expected a finite number, got 'nan'"),
        (["--max-connection-age", "-1"], "argument --max-connection-age: must be 0 or more, got -1"),
        (["--max-concurrent", "0"], "argument --max-concurrent: must be above 0, got 0"),
        (["--workers", "-2"], "argument --workers: must be above 0, got -2"),
    ],
)
def test_limits_that_refuse_everything_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*SERVE, *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_good_limits_are_taken():
    args = build_parser().parse_args([*SERVE, "--max-image-mp", "0.5", "--grace", "0", "--max-message-mb", "2047"])
    assert (args.max_image_mp, args.grace, args.max_message_mb) == (0.5, 0.0, 2047)


@pytest.mark.parametrize(
    "changes",
    [
        {"max_message_bytes": 0},
        {"max_message_bytes": 5000 * 2**20},  # above gRPC's C int: an OverflowError when the server is built
        {"max_image_pixels": 0},
        {"grace_s": -1.0},
        {"max_connection_age_s": -1.0},
        {"max_connection_age_s": 1e9},  # 1e12 ms: no C int either
    ],
)
def test_server_settings_refuse_limits_grpc_cannot_serve(changes):
    with pytest.raises(ServeError, match=next(iter(changes))):
        ServerSettings(port=0, **changes)


def test_serve_help_says_the_thread_defaults():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    text = " ".join(serve.format_help().split())
    assert "torch's own" not in text and "else 1 of each" in text


def test_an_image_message_with_negative_sides_or_an_encoded_window_is_refused_in_words():
    """A shape [-800, -533, 3] was "image is -533x-800, too small to contain a face"; a window sent with an
    encoded file was silently ignored."""
    from facerecon.kernel.contract.errors import InputError
    from facerecon.services.images import image_from_proto
    from facerecon.v1 import records_pb2 as pb

    negative = pb.Image(pixels=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[-800, -533, 3], data=b""))
    with pytest.raises(InputError, match=r"shape \(height, width, 3\), got DTYPE_UINT8 \[-800, -533, 3\]"):
        image_from_proto(negative, max_pixels=10**6)
    encoded = pb.Image(encoded=b"\x89PNG", window=pb.ImageWindow(left=0, top=0, width=10, height=10))
    with pytest.raises(InputError, match="window is for raw pixels"):
        image_from_proto(encoded, max_pixels=10**6)


def test_a_deadline_gRPC_cannot_hold_is_refused_and_inf_means_none():
    """``--deadline 1e10`` overflowed gRPC's deadline (64-bit nanoseconds): every call failed at once with
    DEADLINE_EXCEEDED."""
    import math

    from facerecon.kernel import ConfigError, PipelineConfig
    from facerecon.services.remote import RemoteOptions
    from facerecon.services.remote_config import apply_remote, with_deadline

    config = apply_remote(PipelineConfig(refiners=()), ["regressor=127.0.0.1:1"])
    with pytest.raises(ConfigError, match="--deadline must be in"):
        with_deadline(config, 1e10)
    assert with_deadline(config, math.inf).options_for("regressor", "remote")["deadline_s"] == math.inf
    with pytest.raises(ValueError, match="deadline_s must be in"):
        RemoteOptions(address="127.0.0.1:1", deadline_s=1e10)
    assert RemoteOptions(address="127.0.0.1:1", deadline_s=math.inf).deadline_s == math.inf
