"""The standardised residual (docs/method.md §15): squared error over the healthy error expected
for a pixel of that kind. A project option, off in the paper.

A masked net reconstructs some healthy pixels worse than others: those on strong edges (the CSF
borders of ventricles and sulci, vessels) and those near the brain's outer edge. Their healthy
errors are what sets τ and the healthy false-positive threshold, so a lesion in flat tissue must
beat the errors of the hardest healthy pixels. Dividing each pixel's squared error by the mean
healthy error of its kind puts every pixel on one scale: 1 is an ordinary healthy error for that
pixel, whatever its kind.

A pixel's kind is two numbers, both computed from the scan alone (so also on a lesioned scan):
the local strength of its high-frequency image, ``|x_f|`` smoothed with a Gaussian of
``sigma`` px, and its distance to the brain's edge in model-grid pixels. ``fit`` bins both
(``|x_f|`` at quantiles of healthy brain pixels) and stores the mean healthy squared error per
bin pair, from masked-net errors under training masks on healthy validation slices, divided by
the overall mean (a bin with too few pixels takes its ``|x_f|`` bin's mean). The engine divides
every error map by ``scale_map``; τ and the threshold must be calibrated on the divided maps.

The description is plain Python (cards are read without NumPy); the arithmetic imports NumPy
and SciPy when it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ResidualScale", "fit_residual_scale", "xf_strength", "edge_distance"]

DIST_EDGES = (1.5, 2.5, 4.0, 7.0, 12.0)  # model-grid px: 1, 2, 3, 4–6, 7–11, ≥ 12 from the edge


@dataclass(frozen=True)
class ResidualScale:
    xf_edges: tuple[float, ...]  # inner bin edges on the smoothed |x_f|, ascending
    dist_edges: tuple[float, ...]  # inner bin edges on the distance to the brain's edge (px)
    expected: tuple[tuple[float, ...], ...]  # (len(xf_edges)+1) × (len(dist_edges)+1), > 0
    sigma: float = 1.0  # Gaussian σ (px) of the |x_f| smoothing

    def __post_init__(self):
        for name in ("xf_edges", "dist_edges"):
            e = [float(v) for v in getattr(self, name)]
            if not all(math.isfinite(v) for v in e) or any(b <= a for a, b in zip(e, e[1:])):
                raise ValueError(f"{name} must be finite and strictly ascending")
        rows = len(self.xf_edges) + 1
        cols = len(self.dist_edges) + 1
        if len(self.expected) != rows or any(len(r) != cols for r in self.expected):
            raise ValueError(f"expected must be {rows} × {cols} (one value per bin pair)")
        if not all(math.isfinite(float(v)) and float(v) > 0 for r in self.expected for v in r):
            raise ValueError("expected errors must be finite and > 0")
        if not (math.isfinite(float(self.sigma)) and float(self.sigma) >= 0):
            raise ValueError("sigma must be a finite number >= 0")

    def scale_map(self, xf, brain):
        """(N, H, W) float32 expected healthy error of each pixel (1 outside the brain), from
        ``xf`` (N, H, W) the slices' x_f at the model's radius and ``brain`` (N, H, W) bool."""
        import numpy as np

        xb = np.digitize(xf_strength(xf, self.sigma), self.xf_edges)
        db = np.digitize(edge_distance(brain), self.dist_edges)
        table = np.asarray(self.expected, dtype=np.float32)
        return np.where(np.asarray(brain, bool), table[xb, db], np.float32(1.0)).astype(
            np.float32)

    def to_dict(self) -> dict:
        return {"xf_edges": [float(v) for v in self.xf_edges],
                "dist_edges": [float(v) for v in self.dist_edges],
                "expected": [[float(v) for v in r] for r in self.expected],
                "sigma": float(self.sigma)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "ResidualScale | None":
        """None for an empty or missing description (the paper: the plain squared error)."""
        if not d:
            return None
        if not isinstance(d, dict):
            raise TypeError("residual scale must be a JSON object")
        return cls(xf_edges=tuple(float(v) for v in d["xf_edges"]),
                   dist_edges=tuple(float(v) for v in d["dist_edges"]),
                   expected=tuple(tuple(float(v) for v in r) for r in d["expected"]),
                   sigma=float(d.get("sigma", 1.0)))


def xf_strength(xf, sigma: float = 1.0):
    """|x_f| smoothed in-plane with a Gaussian of ``sigma`` px, (N, H, W) float32."""
    import numpy as np
    from scipy import ndimage

    a = np.abs(np.asarray(xf, dtype=np.float32))
    if sigma > 0:
        a = ndimage.gaussian_filter(a, sigma=(0, sigma, sigma), mode="constant")
    return a


def edge_distance(brain):
    """Per slice, each brain pixel's Euclidean distance (px) to the nearest non-brain pixel
    (1 on the brain's outer pixels), 0 outside; (N, H, W) float32. The field around the grid
    counts as outside."""
    import numpy as np
    from scipy import ndimage

    b = np.asarray(brain, dtype=bool)
    out = np.zeros(b.shape, dtype=np.float32)
    for i in range(len(b)):
        if b[i].any():
            out[i] = ndimage.distance_transform_edt(np.pad(b[i], 1))[1:-1, 1:-1]
    return out


def fit_residual_scale(errors, masks, xf, brain, *, n_xf_bins: int = 8,
                       dist_edges=DIST_EDGES, sigma: float = 1.0,
                       min_pixels: int = 200) -> ResidualScale:
    """The table from healthy masked-net errors: ``errors`` and ``masks`` (N, H, W), the squared
    errors and the masks they were made under (only masked pixels count), ``xf`` and ``brain``
    the slices' x_f and brain (N, H, W). ``|x_f|`` edges at quantiles of the brain's pixels."""
    import numpy as np

    errors = np.asarray(errors, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool) & np.asarray(brain, dtype=bool)
    if not masks.any():
        raise ValueError("no masked brain pixels to fit the residual scale on")
    strength = xf_strength(xf, sigma)
    qs = np.linspace(0, 1, n_xf_bins + 1)[1:-1]
    xf_edges = np.unique(np.quantile(strength[np.asarray(brain, bool)], qs))
    xb = np.digitize(strength, xf_edges)[masks]
    db = np.digitize(edge_distance(brain), dist_edges)[masks]
    e = errors[masks]
    rows, cols = len(xf_edges) + 1, len(dist_edges) + 1
    total = np.zeros((rows, cols))
    count = np.zeros((rows, cols))
    np.add.at(total, (xb, db), e)
    np.add.at(count, (xb, db), 1)
    overall = e.mean()
    floor = 1e-3 * overall if overall > 0 else 1e-12
    row_mean = total.sum(1) / np.maximum(count.sum(1), 1)
    row_mean = np.where(count.sum(1) > 0, row_mean, overall)
    table = np.where(count >= min_pixels, total / np.maximum(count, 1), row_mean[:, None])
    table = np.maximum(table, floor) / max(overall, floor)
    return ResidualScale(xf_edges=tuple(float(v) for v in xf_edges),
                         dist_edges=tuple(float(v) for v in dist_edges),
                         expected=tuple(tuple(float(v) for v in r) for r in table),
                         sigma=float(sigma))
