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


def _runs(labels: np.ndarray):
    """The foreground of a 1-, 2- or 3-D boolean array as runs along its last axis.

    Returns ``(row, start, stop, shape3)``: for each run the index of its row (the array
    viewed as ``shape3 = (Z, Y, X)``, rows numbered ``z * Y + y``) and its columns
    ``start:stop``, in C order (by row, then column).
    """
    shape3 = (1,) * (3 - labels.ndim) + labels.shape
    z, y, x = shape3
    rows = labels.reshape(z * y, x)
    padded = np.zeros((z * y, x + 2), bool)
    padded[:, 1:-1] = rows
    edges = np.flatnonzero(padded[:, 1:] != padded[:, :-1])  # (row, column of a change)
    row, start = np.divmod(edges[0::2], x + 1)
    stop = edges[1::2] - row * (x + 1)
    return row, start, stop, shape3


def _run_components(row, start, stop, shape3) -> tuple[np.ndarray, int]:
    """Component of each run under full (26-/8-) connectivity, and how many there are.

    Two runs touch when their rows are neighbours (the same or an adjacent slice, the same or
    an adjacent line) and their column ranges overlap or meet at a corner. Runs are sorted by
    row and disjoint within one, so the runs of row ``r'`` that touch ``start:stop`` form one
    contiguous block of the run list, found by binary search on ``(row, column)`` keys.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_runs = len(row)
    if n_runs == 0:
        return np.zeros(0, np.int64), 0
    z_len, y_len, x_len = shape3
    width = x_len + 2  # a row's key span: keys of different rows never interleave
    key_start = row * width + start
    key_stop = row * width + stop
    z, y = np.divmod(row, y_len)
    sources, targets = [], []
    # every touching pair once: the next line of the slice, and three lines of the next slice
    # (the same line and both neighbours); the previous slice's are the same pairs reversed
    for dz, dy in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ok = (z + dz < z_len) & (y + dy >= 0) & (y + dy < y_len)
        a = np.flatnonzero(ok)
        if not len(a):
            continue
        other = (row[a] + dz * y_len + dy) * width
        lo = np.searchsorted(key_stop, other + start[a], side="left")
        hi = np.searchsorted(key_start, other + stop[a], side="right")
        count = np.maximum(hi - lo, 0)
        keep = count > 0
        a, lo, count = a[keep], lo[keep], count[keep]
        if not len(a):
            continue
        total = int(count.sum())
        first = np.repeat(np.cumsum(count) - count, count)  # start of each pair's block
        sources.append(np.repeat(a, count))
        targets.append(np.repeat(lo, count) + np.arange(total) - first)
    if not sources:
        return np.arange(n_runs), n_runs
    src = np.concatenate(sources)
    dst = np.concatenate(targets)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n_runs, n_runs))
    n, comp = connected_components(graph, directed=False)
    return comp, int(n)


def _components_of(labels: np.ndarray):
    """``(row, start, stop, shape3, component of each run, number of components)``."""
    row, start, stop, shape3 = _runs(labels)
    comp, n = _run_components(row, start, stop, shape3)
    return row, start, stop, shape3, comp, n


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected components (26-/8-connected) with fewer than ``min_size`` voxels.

    Components are found on the runs of the foreground along the last axis (``_runs``), so
    the cost grows with the number of runs rather than with every voxel of the volume; the
    result is that of labelling voxels one by one (``scipy.ndimage.label`` with a full
    structure), which arrays of more than three dimensions still use.
    """
    labels = np.asarray(labels, bool)
    if min_size <= 1 or not labels.any():
        return labels
    if labels.ndim > 3:
        comp, n = ndimage.label(labels, structure=np.ones((3,) * labels.ndim))
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        keep = sizes >= min_size
        keep[0] = False
        return keep[comp]
    row, start, stop, shape3, comp, n = _components_of(labels)
    length = stop - start
    sizes = np.bincount(comp, weights=length, minlength=n)
    drop = sizes[comp] < min_size
    out = labels.copy()
    if drop.any():
        first = (row[drop] * shape3[2] + start[drop])
        count = length[drop]
        offsets = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        out.reshape(-1)[np.repeat(first, count) + offsets] = False
    return out


def segment(error: np.ndarray, threshold: float, min_size: int = 0) -> np.ndarray:
    """Boolean lesion map: error above ``threshold``, minus components under ``min_size``."""
    return remove_small(np.asarray(error) > threshold, min_size)


def lesion_stats(labels: np.ndarray, voxel_volume_mm3: float) -> tuple[int, float]:
    """Number of connected (26-/8-connected) lesions and their total volume in mL."""
    labels = np.asarray(labels, bool)
    if not labels.any():
        return 0, 0.0
    if labels.ndim > 3:
        _, n = ndimage.label(labels, structure=np.ones((3,) * labels.ndim))
    else:
        n = _run_components(*_runs(labels))[1]
    return int(n), float(np.count_nonzero(labels)) * voxel_volume_mm3 / 1000.0
