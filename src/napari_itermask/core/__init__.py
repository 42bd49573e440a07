"""The IterMask² core: torch and numpy only. Nothing here imports Qt or napari.

``masked_input`` (``core.net_input``) is re-exported lazily, so that importing a NumPy-only
module such as ``core.metrics`` does not import torch.
"""

__all__ = ["masked_input"]


def __getattr__(name):
    if name == "masked_input":
        from .net_input import masked_input

        return masked_input
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
