"""facerecon's microkernel, in two rings (folders):

* :mod:`facerecon.kernel.contract` — what a plugin imports: records, stage protocols, the stage hook,
  errors, the image check. It imports nothing of the host.
* :mod:`facerecon.kernel.host` — the plugin host, configuration, pipeline and devices.
* :mod:`facerecon.kernel.testing` — the conformance battery every stage plugin passes.

The kernel knows no model; every detector, regressor, segmenter and refiner is a plugin. This package
re-exports both rings' public names for applications (``from facerecon.kernel import Pipeline``);
plugins import from :mod:`facerecon.kernel.contract` (an import-linter contract checks it).
"""

from facerecon.kernel.contract import *  # noqa: F403
from facerecon.kernel.contract import __all__ as _contract_all
from facerecon.kernel.host import *  # noqa: F403
from facerecon.kernel.host import __all__ as _host_all

__all__ = [*_contract_all, *_host_all]
