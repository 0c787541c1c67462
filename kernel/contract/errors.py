"""Exceptions of facerecon. Every error a user can cause has its own class and a message that says
what was wrong and, where possible, what to do about it."""


class FaceReconError(Exception):
    """Base class of every facerecon error."""


class ConfigError(FaceReconError):
    """A bad configuration: unknown plugin, unknown option, wrong type, unreadable TOML."""


class OutputError(ConfigError):
    """The output location cannot be used: e.g. a folder there exists and was not written by facerecon
    (facerecon replaces its result folders whole, so it never writes over anyone else's)."""


class ClosedError(FaceReconError, ValueError):
    """A pipeline was used after ``close()`` (or after its ``with`` block): its models are unloaded and its
    remote channels closed. Build a new one."""


class PluginError(FaceReconError):
    """A plugin failed to load or to register, or broke the stage contract."""


class ModelFileError(FaceReconError):
    """A model file is missing, unreadable, or not what the plugin expects."""


class InputError(FaceReconError):
    """An input image could not be used (not an image, truncated, empty, too large...)."""


class NoFaceError(FaceReconError):
    """The detector found no face in the image."""


class RecordError(FaceReconError, ValueError):
    """A record was built with arrays of the wrong shape, dtype or range."""
