"""The viewer's JavaScript (three.js and the page's own code, one bundle) and its HTML template.

``static/viewer.bundle.js`` is built from ``app.js`` and the npm package ``three`` by ``npm run build``
(esbuild; ``make viewer`` runs it, ``make setup`` runs ``make viewer``, and a wheel or sdist build runs it
through ``setup.py``). It is never committed: a source checkout without it gets
:class:`ViewerAssetsMissing` with the command that builds it.
"""

from __future__ import annotations

from importlib import resources

from facerecon.kernel.contract.errors import ConfigError

BUNDLE = "viewer.bundle.js"


class ViewerAssetsMissing(ConfigError):
    """The viewer's JavaScript bundle was not built into this installation."""


def bundle_js() -> str:
    """The bundled viewer (three.js + app.js), ready to inline into a ``<script>`` element."""
    path = resources.files(__package__).joinpath("static", BUNDLE)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ViewerAssetsMissing(
            f"the viewer's JavaScript ({path}) is not built in this installation: in a source checkout run "
            "`make viewer` (Node.js 18+ and npm: `npm ci && npm run build`); a wheel built from a checkout "
            "with Node.js carries it"
        ) from None
    if "</script" in text.lower():  # esbuild escapes it; a bundle that does not cannot be inlined
        raise ViewerAssetsMissing(f"{path} contains '</script' and cannot be inlined into the page; rebuild it")
    return text


def page_template() -> str:
    """The page's HTML with ``{{TITLE}}``, ``{{DATA}}`` and ``{{SCRIPT}}`` to fill."""
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
