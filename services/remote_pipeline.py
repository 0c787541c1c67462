"""``--remote pipeline=ADDRESS``: whole photos sent to a ``facerecon serve pipeline`` server, which runs every
stage; the reconstruction comes back as records and is written here exactly as a local one would be.

The batch builds it through the ``facerecon_make_pipeline`` host hook (:func:`.remote.facerecon_make_pipeline`)
in place of a local :class:`~facerecon.kernel.Pipeline`; it shares the remote stages' channel cache, deadline,
retries, TLS and token handling (:class:`~.remote.RemoteStage`). Its options (a remote stage's: ``address``,
``deadline_s``, ...) are the config's ``options[("pipeline", "remote")]``, set by ``--remote pipeline=ADDRESS``
and ``--deadline``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facerecon.kernel.contract.errors import ConfigError
from facerecon.kernel.contract.images import check_image
from facerecon.kernel.contract.records import Reconstruction
from facerecon.kernel.host.config import PipelineConfig
from facerecon.v1 import pipeline_pb2

from . import convert
from .remote import NAME, RemoteOptions, RemoteStage

PIPELINE = "pipeline"


class RemotePipeline(RemoteStage):
    """The pipeline of a ``facerecon serve pipeline`` server, called like a local Pipeline."""

    kind = PIPELINE

    def __init__(self, config: PipelineConfig) -> None:
        try:
            options = RemoteOptions(**dict(config.options_for(PIPELINE, NAME)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[options.pipeline.remote]: {exc}") from None
        self.config = config
        super().__init__(options)

    def __call__(self, image: np.ndarray, *, all_faces: bool | None = None) -> Reconstruction:
        """The server's reconstruction of ``image`` (largest face; every face with ``all_faces``, by default
        this config's ``all_faces`` when set, else the server's)."""
        # (the batch writes its own result.json from the records)
        request = pipeline_pb2.ReconstructRequest(known_layouts=self._known_layouts(), records_only=True)
        convert.image_to_proto(check_image(image), request.image)
        every = all_faces if all_faces is not None else (True if self.config.all_faces else None)
        if every is not None:
            request.all_faces = every
        response = self._call(self.stub.Reconstruct, request)
        return convert.reconstruction_from_proto(response.reconstruction, self.layouts)

    def plugin_ids(self) -> dict[str, tuple[str, str]]:
        """(plugin, version) of the server's detector, regressor and segmenter (for result.json)."""
        kinds = ("detector", "regressor", "segmenter")
        return {stage.kind: (stage.plugin, stage.version) for stage in self.info.stages if stage.kind in kinds}

    def warm_up(self) -> None:
        """Nothing: the server warmed its stages before it said SERVING (built once it answered Info)."""

    def __enter__(self) -> RemotePipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
