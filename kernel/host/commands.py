"""What the ``facerecon`` command and the sub-commands plugins add share: the help formatter, and the
``-c/--config`` option that may be given once."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" once: not to options without a default (None, False, empty) nor to those
    whose help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        empty = default is None or default is False or (isinstance(default, (tuple, list)) and not default)
        if empty or default is argparse.SUPPRESS or "default" in text:  # (not 0: `0 in (False,)` is true)
            return text
        return super()._get_help_string(action) or text


class Once(argparse.Action):
    """An option that may be given once: a second ``-c b.toml`` would silently replace ``-c a.toml``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{'/'.join(self.option_strings)} given twice: give one")
        setattr(namespace, self.dest, values)
