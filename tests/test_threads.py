"""Thread pools sized for per-face work (kernel/host/threads.py, issue 19): the pipeline limits the BLAS
libraries to ``blas_threads`` once its stages are built, torch to ``torch_threads``; both come from the
config or ``--threads``."""

from __future__ import annotations

import argparse

import pytest
from threadpoolctl import threadpool_info

from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.contract.errors import ConfigError
from facerecon.kernel.host.threads import limit_threads


def blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def restore_blas():
    before = max(blas_threads())
    yield
    limit_threads(before)


def test_pipeline_limits_blas_to_one_thread_by_default(restore_blas):
    limit_threads(2)
    assert blas_threads() == {2}
    with Pipeline(PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=(), device="cpu")) as pipe:
        pipe.warm_up()
        assert blas_threads() == {1}  # numpy's and scipy's OpenBLAS alike


def test_configured_threads_apply(restore_blas):
    with Pipeline(
        PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=(), device="cpu", blas_threads=2)
    ) as pipe:
        pipe.warm_up()
        assert blas_threads() == {2}


def test_torch_threads_are_set_when_a_stage_imported_torch():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        assert limit_threads(1, torch_threads=1) == {"blas": 1, "torch": 1}
        assert torch.get_num_threads() == 1
        assert limit_threads(0, torch_threads=0) == {"torch": 1}  # 0: left as it is
    finally:
        torch.set_num_threads(before)


def test_threads_from_toml_and_flags():
    config = PipelineConfig.from_mapping({"pipeline": {"blas_threads": 2, "torch_threads": 3}})
    assert (config.blas_threads, config.torch_threads) == (2, 3)
    assert PipelineConfig().blas_threads == 1 and PipelineConfig().torch_threads == 1
    flagged = PipelineConfig().with_stage_flags(argparse.Namespace(threads=4))
    assert (flagged.blas_threads, flagged.torch_threads) == (4, 4)
    for bad in (-1, "2", True, 1.5):
        with pytest.raises(ConfigError, match="blas_threads"):
            PipelineConfig.from_mapping({"pipeline": {"blas_threads": bad}})
