"""Model bundles (safetensors weights + a JSON card, never pickle): the public names, re-exported.

``card`` holds the card, ``bundle`` the networks with verified loading and saving, ``locations``
where bundled and user models are found.
"""

from .._hash import sha256_file
from .card import (
    CARD_NAME,
    FORMAT,
    ModelCard,
    new_card,
    options_note,
    polarity_note,
    read_card,
    untrained_warning,
)
from .locations import (
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    bundled_dir,
    list_models,
    resolve_model,
    user_dir,
)

_BUNDLE = ("ModelBundle", "load_bundle", "save_bundle")


def __getattr__(name):
    # the networks need torch; cards, listings and locations do not (``itermask models`` and
    # ``--help`` start in a fraction of a second)
    if name in _BUNDLE:
        from . import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CARD_NAME",
    "FORMAT",
    "PICKLE_SUFFIXES",
    "WEIGHTS_NAME",
    "ModelBundle",
    "ModelCard",
    "bundled_dir",
    "list_models",
    "load_bundle",
    "new_card",
    "polarity_note",
    "options_note",
    "read_card",
    "resolve_model",
    "save_bundle",
    "sha256_file",
    "untrained_warning",
    "user_dir",
]
