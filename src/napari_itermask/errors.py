"""Errors with a message meant for people: the CLI prints them as one line, the widget as a
notification. Anything else escaping is a bug."""


class ItermaskError(Exception):
    """Base class: a clear, one-line reason why a request cannot be carried out."""


class InputError(ItermaskError):
    """The scan or mask given cannot be used."""


class ModelError(ItermaskError):
    """The model bundle is missing, corrupt, or not of our format."""


class OutputError(ItermaskError):
    """The result cannot be written where asked."""


class ModelFormatError(ModelError):
    """The model card is of a format, or a format version, that this version cannot read."""


class ModelIntegrityError(ModelError):
    """The weights are corrupt, or do not match the sha256 their card records."""


class UnsafeModelError(ModelError):
    """A pickle-based file (``.pt``, ``.pkl``, …) offered as a model: refused, never unpickled."""
