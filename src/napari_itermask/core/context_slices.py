"""2.5-D context's bound and channel order (a card's ``context_slices``; docs/method.md §18),
in one place. ``core.net_input`` builds the channels, ``core.engine`` gathers the neighbours;
the model card, the engine's configuration and training check a value with
``check_context_slices``. Free of NumPy and torch, so that reading a card stays cheap.
"""

from .bounds import whole_number_in

CONTEXT_SLICES = range(0, 3)  # neighbours on each side; 0 is the paper's 2-D masked net


def check_context_slices(value) -> int:
    """``value`` as an int when it is a whole number in ``CONTEXT_SLICES``; else ValueError."""
    return whole_number_in(value, CONTEXT_SLICES, "context_slices")


def context_offsets(k: int) -> tuple[int, ...]:
    """The axial offsets of the 2 k neighbour channels, in channel order: z − 1 … z − k, then
    z + 1 … z + k."""
    k = check_context_slices(k)
    return tuple(-d for d in range(1, k + 1)) + tuple(range(1, k + 1))
