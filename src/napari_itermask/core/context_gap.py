"""The context gap's bound (a card's ``context_gap``; docs/method.md §17), checked in one place.

The gap is how many pixels around the mask are also hidden from the masked net. ``core.engine``
applies it; the model card, the engine's configuration and ``training.calibrate`` all check a
value with ``check_context_gap``. Kept free of NumPy and torch so that reading a card stays cheap.
"""

from .bounds import whole_number_in

CONTEXT_GAPS = range(0, 17)  # pixels on the model grid; 0 is the paper's loop


def check_context_gap(value) -> int:
    """``value`` as an int when it is a whole number in ``CONTEXT_GAPS``; else ``ValueError``."""
    return whole_number_in(value, CONTEXT_GAPS, "context_gap", " of pixels")
