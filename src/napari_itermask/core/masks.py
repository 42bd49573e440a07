"""Brain masks and the random training masks of IterMask² (docs/method.md §4).

Training masks are drawn as in the paper: a random brain pixel is the centre of a 2-D Gaussian
with a random covariance; square patches (side 4, 8 and 16 px at the reference 240 px field of
view, scaled to the model grid) are dropped at positions drawn with the Gaussian's density; the
union, intersected with the brain, is the mask (1 = masked, to be reconstructed). The masked
share of brain averages roughly 5–25 %.

The shrink loop at inference starts from masks covering ~60 % of the brain, far more than the
paper's training masks (docs/method.md §12). ``wide_prob`` mixes in masks that cover a share of the
brain drawn uniformly from ``wide_share`` so the masked model also sees inference-sized masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["brain_mask", "MaskSampler", "masked_share"]


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Brain of a skull-stripped scan: finite voxels with a value > 0."""
    image = np.asarray(image)
    with np.errstate(invalid="ignore"):
        return np.isfinite(image) & (image > 0)


def masked_share(mask: np.ndarray, brain: np.ndarray) -> float:
    """Fraction of brain pixels that the mask covers (0 when there is no brain)."""
    n = int(brain.sum())
    return float((mask & brain).sum()) / n if n else 0.0


@dataclass
class MaskSampler:
    """Random training masks on an ``size × size`` model grid.

    ``reference_px`` is the field of view, in pixels, that the paper's patch sizes and Gaussian
    widths refer to (240 px BraTS slices); everything is scaled by ``size / reference_px``.
    """

    size: int = 128
    reference_px: int = 240
    large_blob_prob: float = 2.0 / 3.0
    wide_prob: float = 0.0
    wide_share: tuple[float, float] = (0.25, 0.75)

    @property
    def scale(self) -> float:
        return self.size / self.reference_px

    def _density(self, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ys, xs = np.nonzero(brain)
        i = rng.integers(len(ys))
        cy, cx = ys[i], xs[i]
        c11, c22 = rng.uniform(0.3, 10.0, size=2)
        c12 = rng.uniform(-1.0, 1.0) * np.sqrt(c11 * c22) * 0.999
        # std 5.5–32 px (large) or 1.4–8 px (small) at the reference field of view
        unit = (10.0 if rng.random() < self.large_blob_prob else 2.5) * self.scale
        cov = np.array([[c11, c12], [c12, c22]]) * unit**2
        inv = np.linalg.inv(cov)
        yy, xx = np.mgrid[0 : brain.shape[0], 0 : brain.shape[1]]
        d = np.stack([yy - cy, xx - cx], axis=-1).astype(np.float64)
        q = np.einsum("...i,ij,...j->...", d, inv, d)
        p = np.exp(-0.5 * q)
        return p / p.sum()

    def _paper_mask(self, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self._density(brain, rng).ravel()
        h, w = brain.shape
        mask = np.zeros((h, w), dtype=bool)
        for side, (lo, hi) in ((4, (20, 2000)), (8, (5, 10)), (16, (3, 10))):
            n = int(rng.integers(lo, hi + 1))
            s = max(1, int(round(side * self.scale)))
            idx = rng.choice(p.size, size=n, p=p)
            centres = np.zeros(h * w, dtype=bool)
            centres[idx] = True
            mask |= ndimage.maximum_filter(centres.reshape(h, w), size=s, mode="constant")
        return mask

    def _wide_mask(self, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blobby mask covering a uniformly drawn share of the brain (inference-sized masks)."""
        share = rng.uniform(*self.wide_share)
        sigma = rng.uniform(1.5, 8.0) * self.size / 128
        noise = ndimage.gaussian_filter(rng.standard_normal(brain.shape), sigma)
        vals = noise[brain]
        if vals.size == 0:
            return np.zeros_like(brain)
        cut = np.quantile(vals, 1.0 - share)
        return (noise > cut) | self._paper_mask(brain, rng)

    def sample(self, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One boolean mask (1 = masked) for a 2-D brain mask; empty if there is no brain."""
        brain = np.asarray(brain, dtype=bool)
        if brain.shape != (self.size, self.size):
            raise ValueError(f"brain mask has shape {brain.shape}, sampler expects {self.size}²")
        if not brain.any():
            return np.zeros_like(brain)
        if self.wide_prob > 0 and rng.random() < self.wide_prob:
            mask = self._wide_mask(brain, rng)
        else:
            mask = self._paper_mask(brain, rng)
        return mask & brain

    def sample_batch(self, brains: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.stack([self.sample(b, rng) for b in brains])
