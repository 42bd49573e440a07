"""Pure scoring code of the benchmark's paper protocol (slab slice, area labels, thresholds, stats).

The reference's Table 1 (docs/method.md §11) scores one axial slice per case on the 128² model
grid; this module holds every rule of that protocol that needs no network, so each rule has one
implementation the tests can check on hand-made arrays:

- which slices form the *central slab* (``CENTRAL_SLAB``, relative to the brain's axial extent)
  and which slice of it a case is scored on (``choose_slice``);
- the model-grid label: area-resize the scan's label to the model grid (``area_weights``,
  ``area_fraction``) and count a pixel as lesion if any lesion fraction remains
  (``label_from_fraction``);
- per-slice Dice / sensitivity / precision (``slice_scores``), the one global threshold tuned on
  the *test labels* over min–max normalised maps (``sweep_global_threshold``);
- statistics: mean ± standard error (``mean_se``) and the paired bootstrap interval of a per-case
  difference with its verdict (``paired_bootstrap``, ``compare_to_reference``).

numpy only (the metrics module adds scipy); no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_itermask.core.metrics import (  # noqa: F401  (the slab is re-exported)
    CENTRAL_SLAB,
    axial_position,
    dice,
    precision,
    sensitivity,
    size_stratum,
    slab_slices,
)

__all__ = [
    "CENTRAL_SLAB",
    "LABEL_MIN_FRACTION",
    "N_THRESHOLDS",
    "Bootstrap",
    "GlobalThreshold",
    "area_fraction",
    "area_weights",
    "axial_position",
    "choose_slice",
    "compare_to_reference",
    "label_from_fraction",
    "mean_se",
    "paired_bootstrap",
    "slab_slices",
    "slice_scores",
    "strata_summary",
    "sweep_global_threshold",
    "verdict",
]

# A model-grid pixel is lesion when more than this share of its area is lesion after the label
# is area-resized to the model grid: 0 = any partial-volume lesion counts, as in the reference.
LABEL_MIN_FRACTION = 0.0

# Thresholds of the global sweep, evenly spaced over the normalised score range [0, 1].
N_THRESHOLDS = 1000

_OVERLAP_EPS = 1e-9  # overlaps (in voxels) below this are rounding, not lesion


def area_weights(n_src: int, centre: float, step: float, grid: int) -> np.ndarray:
    """(grid, n_src) area-resampling weights along one in-plane axis.

    Model pixel i is centred at source voxel coordinate ``centre + (i − c)·step`` (c =
    (grid − 1)/2, as ``volume.Geometry`` samples) and covers ``step`` voxels; source voxel j
    covers [j − ½, j + ½]. The weight is the overlap length divided by ``step``, so a row sums to
    the share of the pixel that lies inside the source array (1 away from its border). Exact for
    any ``step`` (no kernel tails): a pixel the label never touches gets exactly 0.
    """
    if step <= 0:
        raise ValueError("step must be positive")
    c = (grid - 1) / 2.0
    p = centre + (np.arange(grid, dtype=np.float64) - c) * step
    lo, hi = p - step / 2.0, p + step / 2.0
    j = np.arange(n_src, dtype=np.float64)
    ov = np.minimum(hi[:, None], j[None, :] + 0.5) - np.maximum(lo[:, None], j[None, :] - 0.5)
    ov = np.where(ov > _OVERLAP_EPS, ov, 0.0)
    return ov / step


def area_fraction(canonical: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """(A, B, N) canonical array → (N, Ga, Gb) area-weighted means on the model grid.

    For a 0/1 label this is the lesion share of each model pixel's area (partial volume).
    ``wa``/``wb`` come from ``area_weights`` for the two in-plane axes.
    """
    canon = np.asarray(canonical, dtype=np.float64)
    if canon.ndim != 3 or wa.shape[1] != canon.shape[0] or wb.shape[1] != canon.shape[1]:
        raise ValueError(f"weights {wa.shape}, {wb.shape} do not fit the array {canon.shape}")
    tmp = np.tensordot(wa, canon, axes=(1, 0))  # (Ga, B, N)
    out = np.tensordot(tmp, wb, axes=(1, 1))  # (Ga, N, Gb)
    return np.ascontiguousarray(out.transpose(1, 0, 2))


def label_from_fraction(fraction: np.ndarray) -> np.ndarray:
    """The reference's label rule on the model grid: lesion where the area-resized lesion
    fraction exceeds ``LABEL_MIN_FRACTION`` (0: any partial-volume lesion pixel counts)."""
    return np.asarray(fraction) > LABEL_MIN_FRACTION


def choose_slice(lesion_pixels, brain_pixels, slab: tuple[float, float] = CENTRAL_SLAB
                 ) -> int | None:
    """The paper protocol's slice: the slab slice with the largest lesion area (model-grid
    pixels; the lowest such slice on a tie), or None when no slab slice has lesion (the case
    is dropped)."""
    les = np.asarray(lesion_pixels)
    ks = slab_slices(brain_pixels, slab)
    if ks.size == 0 or not (les[ks] > 0).any():
        return None
    return int(ks[int(np.argmax(les[ks]))])


def slice_scores(pred, gt) -> dict:
    """Dice, sensitivity and precision of one slice. A slice scored here has lesion, so an empty
    prediction found nothing: its precision counts as 0 (not NaN, which averaging would skip)."""
    prec = precision(pred, gt)
    return {"dice": dice(pred, gt), "sens": sensitivity(pred, gt),
            "prec": 0.0 if np.isnan(prec) else prec}


@dataclass
class GlobalThreshold:
    """One threshold for a whole test set, chosen with its labels (the paper's white cells)."""

    threshold: float  # on the normalised scale [0, 1]: predict where (s − lo)/(hi − lo) > t
    raw_threshold: float  # the same on the method's own score scale (for information)
    score_min: float  # lo: the lowest score inside any brain of the set
    score_max: float  # hi: the highest
    mean_dice: float  # mean slice Dice at ``threshold`` (the maximum over the grid)
    dice: list  # per case, at ``threshold``
    sens: list
    prec: list


def sweep_global_threshold(cases, n_thresholds: int = N_THRESHOLDS) -> GlobalThreshold:
    """Tune one threshold on the *test labels*: the reference's Table 1 protocol.

    ``cases``: (score, gt, region) per test slice. Scores are min–max normalised over the union
    of all ``region`` pixels of the set, then ``n_thresholds`` evenly spaced thresholds in
    [0, 1] are tried and the one with the highest mean slice Dice is kept (the lowest on a tie).
    Predictions never leave ``region``; ground truth outside it counts as missed. Counting is
    exact (sorted scores and binary search), so small lesions are not lost to a histogram.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("no cases to tune a threshold on")
    inside = []
    for s, g, r in cases:
        s, g, r = np.asarray(s, np.float64), np.asarray(g, bool), np.asarray(r, bool)
        if s.shape != g.shape or s.shape != r.shape:
            raise ValueError("score, ground truth and region differ in shape")
        v = s[r]
        if not np.isfinite(v).all():
            raise ValueError("score is not finite inside the region")
        inside.append((v, g[r], int(np.count_nonzero(g))))
    vals = [v for v, _, _ in inside if v.size]
    lo = float(min(v.min() for v in vals)) if vals else 0.0
    hi = float(max(v.max() for v in vals)) if vals else 0.0
    span = hi - lo if hi > lo else 1.0
    ts = np.linspace(0.0, 1.0, int(n_thresholds))
    tp = np.empty((len(cases), ts.size))
    n_pred = np.empty_like(tp)
    n_gt = np.array([n for _, _, n in inside], dtype=np.float64)
    for c, (v, g, _) in enumerate(inside):
        z = np.sort((v - lo) / span)
        zl = np.sort((v[g] - lo) / span)
        n_pred[c] = z.size - np.searchsorted(z, ts, side="right")
        tp[c] = zl.size - np.searchsorted(zl, ts, side="right")
    denom = n_pred + n_gt[:, None]
    d = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1.0), 1.0)
    i = int(np.argmax(d.mean(0)))
    sens = np.where(n_gt > 0, tp[:, i] / np.maximum(n_gt, 1.0), np.nan)
    prec = np.where(n_pred[:, i] > 0, tp[:, i] / np.maximum(n_pred[:, i], 1.0), 0.0)
    t = float(ts[i])
    return GlobalThreshold(t, lo + t * span, lo, hi, float(d[:, i].mean()),
                           [float(x) for x in d[:, i]], [float(x) for x in sens],
                           [float(x) for x in prec])


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (sample SD / √n) of the finite values; SE is NaN below 2."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se


@dataclass
class Bootstrap:
    """Paired bootstrap of mean(a − b) over cases."""

    diff: float  # observed mean difference
    lo: float  # lower end of the percentile interval
    hi: float  # upper end
    n: int  # pairs used (both values finite)
    verdict: str  # "better" (a above b), "worse", "tie" (interval covers 0), "n/a" (< 2 pairs)

    def as_dict(self) -> dict:
        return {"diff": self.diff, "lo": self.lo, "hi": self.hi, "n": self.n,
                "verdict": self.verdict}


def verdict(lo: float, hi: float) -> str:
    """"better" when the interval of (reference − other) lies above 0, "worse" below, else
    "tie"; "n/a" when there is no interval."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    return "better" if lo > 0 else ("worse" if hi < 0 else "tie")


def paired_bootstrap(a, b, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95,
                     chunk: int = 1000) -> Bootstrap:
    """Percentile interval of the mean per-case difference a − b, resampling *cases* with
    replacement (the pairing is kept: one resample draws the same cases for both methods).

    Fixed ``seed``: the same inputs give the same interval. Pairs where either value is missing
    or NaN are left out; with fewer than 2 pairs there is no interval (verdict "n/a").
    """
    a = np.asarray([np.nan if x is None else x for x in a], dtype=np.float64)
    b = np.asarray([np.nan if x is None else x for x in b], dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in number: {a.size} and {b.size}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = int(d.size)
    if n < 2:
        obs = float(d.mean()) if n else float("nan")
        return Bootstrap(obs, float("nan"), float("nan"), n, "n/a")
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_resamples))
    for i in range(0, means.size, chunk):
        m = min(chunk, means.size - i)
        means[i:i + m] = d[rng.integers(0, n, size=(m, n))].mean(1)
    alpha = (1.0 - level) / 2.0
    lo, hi = (float(q) for q in np.quantile(means, [alpha, 1.0 - alpha]))
    return Bootstrap(float(d.mean()), lo, hi, n, verdict(lo, hi))


def compare_to_reference(values: dict, reference: str = "itermask", **bootstrap_kw) -> dict:
    """Per method: mean ± SE of its per-case values and, for every method but ``reference``,
    the paired bootstrap of (reference − method). ``values`` maps method → per-case list, all
    lists over the same cases in the same order."""
    out = {}
    for m, v in values.items():
        mean, se = mean_se(v)
        out[m] = {"mean": mean, "se": se, "n": int(np.isfinite(
            np.asarray([np.nan if x is None else x for x in v], np.float64)).sum())}
        if m != reference and reference in values:
            out[m]["vs_reference"] = paired_bootstrap(values[reference], v,
                                                      **bootstrap_kw).as_dict()
    return out


def strata_summary(lesion_pixels, dices) -> dict:
    """Share of cases and mean Dice per lesion-size stratum (``metrics.SIZE_BINS``, model-grid
    pixels): {"small": {"share", "n", "dice"}, "medium": …, "large": …}."""
    names = [size_stratum(int(p)) for p in lesion_pixels]
    out = {}
    for s in ("small", "medium", "large"):
        idx = [i for i, n in enumerate(names) if n == s]
        out[s] = {"n": len(idx), "share": len(idx) / len(names) if names else float("nan"),
                  "dice": float(np.mean([dices[i] for i in idx])) if idx else None}
    return out
