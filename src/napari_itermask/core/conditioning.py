"""The radius conditioning of the masked net, as a card describes it (docs/method.md §14).

A project option, off in the paper. A radius-conditioned masked net was trained with ``x_f``
cut at a radius drawn per sample from ``trained`` and told that radius in a third input channel
(``net_input.masked_input``). At inference the radius follows the mask: ``low`` while the mask
is as large as after the first step (``full_share`` of the brain), rising linearly to ``high``
as the mask vanishes, so that a lesion-sized mask gets an ``x_f`` with fine detail only, which
no longer carries the lesion's interior.

Pure Python (no NumPy, no torch) so that reading a model card stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RadiusConditioning"]


@dataclass(frozen=True)
class RadiusConditioning:
    low: float = 15.0
    high: float = 40.0
    trained: tuple[float, float] = (15.0, 40.0)
    full_share: float = 0.6

    def __post_init__(self):
        lo, hi = (float(v) for v in self.trained)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
            raise ValueError("trained radii must satisfy 0 <= lo < hi")
        if not lo <= float(self.low) <= float(self.high) <= hi:
            raise ValueError(f"the schedule {self.low:g}–{self.high:g} must lie within the "
                             f"trained radii {lo:g}–{hi:g}")
        if not 0 < float(self.full_share) <= 1:
            raise ValueError("full_share must lie in (0, 1]")

    def radius(self, share: float) -> float:
        """The whole radius for a mask covering ``share`` of its slice's brain."""
        t = min(1.0, max(0.0, 1.0 - float(share) / float(self.full_share)))
        return float(round(self.low + (self.high - self.low) * t))

    def level(self, radius: float) -> float:
        """The net's third input channel for ``radius``: 0 at the lowest trained radius, 1 at the
        highest."""
        lo, hi = (float(v) for v in self.trained)
        return (float(radius) - lo) / (hi - lo)

    def to_dict(self) -> dict:
        return {"low": float(self.low), "high": float(self.high),
                "trained": [float(v) for v in self.trained],
                "full_share": float(self.full_share)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "RadiusConditioning | None":
        """None for an empty or missing description (the paper: one fixed radius)."""
        if not d:
            return None
        if not isinstance(d, dict):
            raise TypeError("radius conditioning must be a JSON object")
        lo, hi = d["trained"]
        return cls(low=float(d["low"]), high=float(d["high"]), trained=(float(lo), float(hi)),
                   full_share=float(d.get("full_share", 0.6)))
