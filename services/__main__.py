"""``python -m facerecon.services serve ...``: the ``facerecon serve`` command, runnable without the entry point."""

import sys

from .commands import main

sys.exit(main())
