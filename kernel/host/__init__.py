"""The host: loads plugins (:mod:`.registry`, options parsed by :mod:`.options`), reads the
configuration (:mod:`.config`), runs the pipeline (:mod:`.pipeline`) on the device :mod:`.devices`
resolves, reads photos (:mod:`.imageio`), and offers the command-line hooks (:mod:`.hookspecs`).
Plugins never import it; the CLI and the services do.
"""

from facerecon.kernel.host.config import PipelineConfig
from facerecon.kernel.host.pipeline import Pipeline
from facerecon.kernel.host.registry import PluginHost, StageRegistrar, StageSpec

__all__ = ["Pipeline", "PipelineConfig", "PluginHost", "StageRegistrar", "StageSpec"]
