"""Evaluation metrics (docs/method.md §9): Dice, sensitivity, precision, SSIM, size strata.

Conventions: an empty prediction on an empty ground truth has Dice 1 (nothing to find, nothing
found); sensitivity is undefined (NaN) without ground truth, precision NaN without prediction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "dice",
    "sensitivity",
    "precision",
    "confusion",
    "ssim_normal",
    "size_stratum",
    "SIZE_BINS",
    "CENTRAL_SLAB",
    "axial_position",
    "slab_slices",
    "lesion_detection",
    "best_threshold_dice",
]

SIZE_BINS = (200, 800)  # pixels at 128² (small < 200 ≤ medium ≤ 800 < large)

# The paper protocol's central slab as a fraction (lo, hi) of the brain's inferior → superior
# extent: a slice belongs to it when its centre lies at lo <= f < hi (f = 0 the lowest brain
# slice's lower edge, 1 the highest one's upper edge). The reference scores BraTS axial slices
# 70–89 of 155; on the SRI24 atlas in BraTS space (brain in slices 6–139) those span 0.48–0.63
# of the brain's extent (docs/benchmark.md). The only place the slab is defined: the paper
# protocol chooses its slice there and the glioma stratum places its tumours across it.
CENTRAL_SLAB = (0.48, 0.63)


def confusion(pred, gt) -> tuple[int, int, int]:
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    tp = int(np.count_nonzero(pred & gt))
    return tp, int(np.count_nonzero(pred & ~gt)), int(np.count_nonzero(~pred & gt))


def dice(pred, gt) -> float:
    tp, fp, fn = confusion(pred, gt)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def best_threshold_dice(score, gt, region=None) -> tuple[float, float]:
    """Best Dice of ``score > t`` over *every* threshold t, and one t that reaches it.

    The per-image oracle of the paper's grey cells (docs/method.md §7), computed exactly: the
    scores inside ``region`` (default: everywhere) are sorted once and the Dice of each distinct
    cut follows from cumulative true-positive counts, so no lesion is too small for the sweep.
    Ground truth outside ``region`` counts as missed. The empty prediction (t at or above the
    maximum score) is one of the candidates; Dice follows ``dice``'s conventions.
    """
    score = np.asarray(score)
    gt = np.asarray(gt, bool)
    if score.shape != gt.shape:
        raise ValueError(f"score {score.shape} and ground truth {gt.shape} differ in shape")
    inside = np.ones(gt.shape, bool) if region is None else np.asarray(region, bool)
    s = score[inside].astype(np.float64)
    g = gt[inside]
    if np.isnan(s).any():
        raise ValueError("score has NaN inside the region")
    n_gt = int(np.count_nonzero(gt))
    top = float(s.max()) if s.size else 0.0
    best, best_t = (1.0 if n_gt == 0 else 0.0), top  # the empty prediction
    if s.size == 0 or n_gt == 0:
        return best, best_t
    order = np.argsort(-s, kind="stable")
    s_sorted, g_sorted = s[order], g[order]
    tp = np.cumsum(g_sorted)
    k = np.arange(1, s.size + 1)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # end of each run of tied scores
    d = np.where(last, 2.0 * tp / (k + n_gt), -1.0)
    i = int(np.argmax(d))
    if d[i] > best:
        # the largest number below this score in the score's own precision: the cut keeps every
        # score from this one up and drops the next lower one, however close
        dt = score.dtype if np.issubdtype(score.dtype, np.floating) else np.dtype(np.float64)
        t = np.nextafter(dt.type(s_sorted[i]), dt.type(-np.inf))
        best, best_t = float(d[i]), float(t)
    return best, best_t


def sensitivity(pred, gt) -> float:
    tp, _, fn = confusion(pred, gt)
    return float("nan") if tp + fn == 0 else tp / (tp + fn)


def precision(pred, gt) -> float:
    tp, fp, _ = confusion(pred, gt)
    return float("nan") if tp + fp == 0 else tp / (tp + fp)


def size_stratum(n_pixels: int) -> str:
    small, large = SIZE_BINS
    return "small" if n_pixels < small else ("medium" if n_pixels <= large else "large")


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    # window 11 at σ 1.5: truncate = 5 / 1.5
    return ndimage.gaussian_filter(img, sigma, mode="reflect", truncate=5.0 / sigma)


def ssim_normal(recon, x, brain, seg, data_range: float | None = None, sigma: float = 1.5) -> float:
    """SSIM of a 2-D slice on normal brain only: ``recon·brain·(1−seg)`` vs ``x·brain·(1−seg)``."""
    keep = np.asarray(brain, bool) & ~np.asarray(seg, bool)
    a = np.where(keep, recon, 0.0).astype(np.float64)
    b = np.where(keep, x, 0.0).astype(np.float64)
    if data_range is None:
        data_range = float(b.max() - b.min()) or 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _gauss(a, sigma), _gauss(b, sigma)
    saa = _gauss(a * a, sigma) - mu_a**2
    sbb = _gauss(b * b, sigma) - mu_b**2
    sab = _gauss(a * b, sigma) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return float(s.mean())


def lesion_detection(pred, gt, min_overlap: int = 1) -> tuple[int, int]:
    """(detected, total): ground-truth lesions (connected components) hit by the prediction."""
    pred = np.asarray(pred, bool)
    comp, n = ndimage.label(np.asarray(gt, bool), structure=np.ones((3,) * pred.ndim))
    if n == 0:
        return 0, 0
    hits = np.bincount(comp[pred], minlength=n + 1)[1:]
    return int((hits >= min_overlap).sum()), int(n)


def axial_position(brain_pixels) -> np.ndarray:
    """Each axial slice's centre as a fraction of the brain's inferior → superior extent.

    ``brain_pixels`` (N,) is ordered inferior → superior (the model grid's slice order). The
    extent runs from the lower edge of the first slice with brain (0) to the upper edge of the
    last (1): slice k sits at f = (k + ½ − first) / (last + 1 − first). NaN outside the extent.
    """
    bp = np.asarray(brain_pixels)
    f = np.full(bp.shape, np.nan)
    has = np.nonzero(bp > 0)[0]
    if has.size:
        first, last = int(has[0]), int(has[-1])
        k = np.arange(first, last + 1)
        f[first:last + 1] = (k + 0.5 - first) / (last + 1 - first)
    return f


def slab_slices(brain_pixels, slab: tuple[float, float] | None = None) -> np.ndarray:
    """Indices of the slices in the central slab: ``axial_position`` f with lo <= f < hi."""
    lo, hi = map(float, CENTRAL_SLAB if slab is None else slab)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"slab must satisfy 0 <= lo < hi <= 1, got {slab}")
    f = axial_position(brain_pixels)
    with np.errstate(invalid="ignore"):
        return np.nonzero((f >= lo) & (f < hi))[0]
