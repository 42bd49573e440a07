"""Whole-number options with a fixed range (the context gap, the 2.5-D context), checked alike.
Free of NumPy and torch, so that reading a model card stays cheap."""

from numbers import Real


def whole_number_in(value, allowed: range, name: str, unit: str = "") -> int:
    """``value`` as an int when it is a whole number (not a bool) in ``allowed``; else a
    ValueError that names ``name``, the range and ``unit``."""
    ok = not isinstance(value, bool) and isinstance(value, Real) and int(value) == value
    if not ok or int(value) not in allowed:
        raise ValueError(f"{name} must be a whole number{unit} from {allowed[0]} to "
                         f"{allowed[-1]} (got {value!r})")
    return int(value)
