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
