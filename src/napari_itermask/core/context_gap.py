"""The context gap's bound (a card's ``context_gap``; docs/method.md §17), checked in one place.

The gap is how many pixels around the mask are also hidden from the masked net. ``core.engine``
applies it; the model card, the engine's configuration and ``training.calibrate`` all check a
value with ``check_context_gap``. Kept free of NumPy and torch so that reading a card stays cheap.
"""

from numbers import Real

CONTEXT_GAPS = range(0, 17)  # pixels on the model grid; 0 is the paper's loop


def check_context_gap(value) -> int:
    """``value`` as an int when it is a whole number in ``CONTEXT_GAPS``; else ``ValueError``."""
    ok = not isinstance(value, bool) and isinstance(value, Real) and int(value) == value
    if not ok or int(value) not in CONTEXT_GAPS:
        raise ValueError(f"context_gap must be a whole number of pixels from {CONTEXT_GAPS[0]} "
                         f"to {CONTEXT_GAPS[-1]} (got {value!r})")
    return int(value)
