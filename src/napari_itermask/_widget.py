"""The dock widget's former home, kept so that old imports work: see ``_plugin.controller``."""

from ._plugin.controller import TITLE, IterMaskWidget

__all__ = ["IterMaskWidget", "TITLE"]
