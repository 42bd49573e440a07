"""Acquisition of a synthetic scan: skull-strip leftovers, blur, bias field and Rician noise.

Background is exactly 0; every voxel of the support (brain, plus leftovers when asked) is strictly
positive.  The blur, bias and noise parameters and fields come from the contrast's intensity stream
(``[seed, 10 + contrast index]``), drawn after the tissue means; the leftovers from
``[seed, 300]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import fields

__all__ = ["Acquisition", "RICIAN_FLOOR", "acquire", "draw_acquisition", "leftover_rim"]

RICIAN_FLOOR = 1e-3  # brain voxels are at least this fraction of the WM mean


@dataclass(frozen=True)
class Acquisition:
    blur_mm: float  # Gaussian blur sigma
    bias_amp: float  # peak of the log bias field inside the brain
    noise_frac: float  # Rician sigma as a fraction of the WM mean


def draw_acquisition(irng: np.random.Generator) -> Acquisition:
    blur_mm = irng.uniform(0.35, 0.7)
    bias_amp = irng.uniform(0.10, 0.20)
    noise_frac = irng.uniform(0.02, 0.05)
    return Acquisition(blur_mm, bias_amp, noise_frac)


def acquire(signal: np.ndarray, brain: np.ndarray, irng: np.random.Generator, acq: Acquisition,
            wm_mean: float, voxel_size: float, *, leftover_seed: int | None = None) -> np.ndarray:
    """The scanned image of the noise-free ``signal`` (float32; modified in place)."""
    shape = brain.shape
    vs = voxel_size
    support = brain
    if leftover_seed is not None:
        orng = np.random.default_rng([leftover_seed, 300])
        # at least one voxel deep, however coarse the grid
        rim = leftover_rim(brain, orng, depth_vox=max(1.0, orng.uniform(2.0, 6.0) / vs),
                           coverage=orng.uniform(0.15, 0.5))
        tex = fields.fine_noise(orng, shape, 1.0)
        signal[rim] = np.float32(orng.uniform(0.5, 1.8) * wm_mean) * (1.0 + 0.08 * tex[rim])
        support = brain | rim
    img = ndimage.gaussian_filter(signal, acq.blur_mm / vs, mode="constant")
    bias = fields.smooth_fields(irng, shape, 60.0 / vs, 1)[0]
    bmax = float(np.abs(bias[brain]).max()) if brain.any() else 1.0
    bias *= np.float32(acq.bias_amp / max(bmax, 1e-6))
    img *= np.exp(bias)
    sigma = np.float32(acq.noise_frac * wm_mean)
    n1 = irng.standard_normal(shape, dtype=np.float32)
    n1 *= sigma
    n1 += img
    n2 = irng.standard_normal(shape, dtype=np.float32)
    n2 *= sigma
    img = np.sqrt(n1 * n1 + n2 * n2)
    del n1, n2
    np.maximum(img, np.float32(RICIAN_FLOOR * wm_mean), out=img)
    img[~support] = 0.0
    return img.astype(np.float32, copy=False)


def leftover_rim(brain: np.ndarray, rng: np.random.Generator, *, depth_vox: float,
                 coverage: float) -> np.ndarray:
    """Where a loose skull strip leaves tissue behind: voxels outside ``brain`` (2-D or 3-D)
    within ``depth_vox`` of its surface, on smooth random patches covering about ``coverage``
    of that shell.  Used by ``make_case(leftover=True)`` and by training augmentation."""
    brain = np.asarray(brain, bool)
    if not brain.any() or depth_vox <= 0 or coverage <= 0:
        return np.zeros_like(brain)
    dist = ndimage.distance_transform_edt(~brain)
    shell = (dist > 0) & (dist <= depth_vox)
    if not shell.any():
        return shell
    extent = np.ptp(np.argwhere(brain), axis=0).max() + 1
    field = fields.fine_noise(rng, brain.shape, max(1.0, extent / 10.0))
    cut = np.quantile(field[shell], 1.0 - min(1.0, coverage))
    return shell & (field >= cut)
