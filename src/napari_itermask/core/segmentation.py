"""Final segmentation from the last reconstruction's error (docs/method.md §7).

The segmentation is not the final mask: it is the error map ``E = (x − x'_T)² · brain`` of each
slice's last reconstruction, thresholded. The threshold comes from healthy validation data
(calibration.py) and is stored in the model card; users may move it. Small connected components
can be removed (``min_size`` in voxels of the grid the map lives on).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .polarity import POLARITIES

__all__ = [
    "POLARITIES",
    "squared_error",
    "error_map",
    "smooth_within",
    "inner_region",
    "segment",
    "remove_small",
    "lesion_stats",
]



def squared_error(x, recon, polarity: str = "both"):
    """``(x − recon)²``, for NumPy arrays or torch tensors alike.

    ``polarity`` says which deviations count as abnormal: ``"both"`` (the paper), ``"bright"``
    (only where the scan is brighter than its reconstruction, e.g. hyper-intense FLAIR/T2
    lesions) or ``"dark"`` (only where it is darker, e.g. hypo-intense T1 lesions); the other
    side scores 0.
    """
    d = x - recon
    if polarity == "bright":
        d = d * (d > 0)
    elif polarity == "dark":
        d = d * (d < 0)
    elif polarity != "both":
        raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, not {polarity!r}")
    return d * d


def error_map(x: np.ndarray, recon: np.ndarray, brain: np.ndarray,
              polarity: str = "both") -> np.ndarray:
    """Squared reconstruction error (of the given ``polarity``) inside the brain, zero outside."""
    return squared_error(np.asarray(x, np.float32), np.asarray(recon, np.float32),
                         polarity) * np.asarray(brain, bool)


def smooth_within(error: np.ndarray, region: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted mean of ``error`` over ``region`` around each pixel of ``region``.

    Normalised convolution, slice by slice (the last two axes): pixels outside ``region`` neither
    contribute nor receive, so a mask's edge is not diluted by the unmasked tissue beside it.
    Pure per-pixel noise in the error averages out while a lesion-sized excess survives.
    ``sigma`` is in pixels; 0 returns ``error`` inside ``region`` unchanged (the paper).
    """
    region = np.asarray(region, bool)
    error = np.asarray(error, np.float32)
    if sigma <= 0:
        return np.where(region, error, np.float32(0))
    sig = (0.0,) * (error.ndim - 2) + (float(sigma),) * 2
    w = region.astype(np.float32)
    num = ndimage.gaussian_filter(np.where(region, error, np.float32(0)), sig, mode="constant")
    den = ndimage.gaussian_filter(w, sig, mode="constant")
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-6)
    return np.where(region, out, np.float32(0)).astype(np.float32)


def inner_region(brain: np.ndarray, rim: int) -> np.ndarray:
    """``brain`` without its outer ``rim`` pixels, slice by slice (the last two axes).

    A pixel stays when its in-plane distance to the nearest non-brain pixel exceeds ``rim``
    (an edge pixel is at distance 1). Reconstruction error piles up on the brain's edge, where
    tissue meets background and skull-strip leftovers sit; leaving that rim out of the
    segmentation region is the brain-mask erosion common in unsupervised anomaly segmentation.
    ``rim`` 0 returns the brain unchanged.
    """
    brain = np.asarray(brain, bool)
    if rim < 0:
        raise ValueError("rim must be >= 0")
    if rim == 0 or not brain.any():
        return brain.copy()
    flat = brain.reshape((-1,) + brain.shape[-2:])
    out = np.zeros_like(flat)
    for k, sl in enumerate(flat):
        if sl.any():
            out[k] = ndimage.distance_transform_edt(sl) > rim
    return out.reshape(brain.shape)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected components (26-/8-connected) with fewer than ``min_size`` voxels."""
    labels = np.asarray(labels, bool)
    if min_size <= 1 or not labels.any():
        return labels
    comp, n = ndimage.label(labels, structure=np.ones((3,) * labels.ndim))
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[comp]


def segment(error: np.ndarray, threshold: float, min_size: int = 0) -> np.ndarray:
    """Boolean lesion map: error above ``threshold``, minus components under ``min_size``."""
    return remove_small(np.asarray(error) > threshold, min_size)


def lesion_stats(labels: np.ndarray, voxel_volume_mm3: float) -> tuple[int, float]:
    """Number of connected lesions and their total volume in mL."""
    labels = np.asarray(labels, bool)
    if not labels.any():
        return 0, 0.0
    _, n = ndimage.label(labels, structure=np.ones((3,) * labels.ndim))
    return int(n), float(labels.sum()) * voxel_volume_mm3 / 1000.0
