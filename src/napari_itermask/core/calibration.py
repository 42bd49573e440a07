"""Calibration from healthy validation data only (docs/method.md §5 and §7).

- ``tau_from_masked_errors``: τ is a percentile (80th in the paper) of the squared error inside
  random training masks when the masked model reconstructs healthy validation slices.
- ``threshold_from_healthy``: the segmentation threshold is the error level that only a chosen
  small fraction of healthy brain voxels exceed when the full loop runs on healthy validation
  slices — a chosen voxel-wise false-positive rate, fixed before any lesion is seen.
No lesion label is ever an input here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["tau_from_masked_errors", "threshold_from_healthy"]


def tau_from_masked_errors(errors, masks, percentile: float = 80.0) -> float:
    """Percentile of the squared errors inside the masks (arrays of equal shape, or lists)."""
    vals = np.concatenate(
        [np.asarray(e, np.float64)[np.asarray(m, bool)] for e, m in zip(errors, masks)]
    )
    if vals.size == 0:
        raise ValueError("no masked pixels to calibrate τ on")
    return float(np.percentile(vals, percentile))


def threshold_from_healthy(errors, brains, false_positive_rate: float = 0.001) -> float:
    """Error level exceeded by ``false_positive_rate`` of healthy brain voxels."""
    if not 0.0 < false_positive_rate < 1.0:
        raise ValueError("false_positive_rate must lie in (0, 1)")
    vals = np.concatenate(
        [np.asarray(e, np.float64)[np.asarray(b, bool)] for e, b in zip(errors, brains)]
    )
    if vals.size == 0:
        raise ValueError("no brain voxels to calibrate the threshold on")
    return float(np.quantile(vals, 1.0 - false_positive_rate))
