"""``facerecon view``: a self-contained three.js viewer of an output folder (no CDN, no network).

* :mod:`.assets` — the bundled JavaScript (built from ``app.js`` + npm ``three``) and the HTML template;
* :mod:`.page` — the results found in a folder, the page, the static ``OUT/index.html``;
* :mod:`.server` — serving the page on loopback (http.server);
* :mod:`.command` — the ``view`` sub-command.
"""

from facerecon.outputs.viewer.assets import ViewerAssetsMissing
from facerecon.outputs.viewer.page import Entry, StageView, find_entries, write_static_page
from facerecon.outputs.viewer.server import ViewerServer

__all__ = ["Entry", "StageView", "ViewerAssetsMissing", "ViewerServer", "find_entries", "write_static_page"]
