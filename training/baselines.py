"""Baselines trained in the same harness as IterMask² (same data, same budget, same calibration).

- ``ae``: a convolutional autoencoder with a spatial bottleneck of 8×8 (no skip connections):
  the anomaly score is its squared reconstruction error (Baur et al. 2021 style).
- ``dae``: the denoising autoencoder of Kascenas et al. (2022): the same UNet body as the
  IterMask² networks learns to remove *coarse* noise (Gaussian noise drawn on a 16×16 grid and
  upsampled); at test time the clean image goes in and the score is the squared error.

Train with ``python -m training.train --net ae`` / ``--net dae``; ``training.evaluate`` picks up
``ae.ckpt`` / ``dae.ckpt`` from ``--baselines RUN``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from napari_itermask.core.unet import build_unet


class ConvAE(nn.Module):
    """Encoder of strided convolutions to an 8×8×64 bottleneck and a mirrored decoder."""

    def __init__(self, widths=(16, 32, 48, 64)):
        super().__init__()
        enc, ch = [], 1
        for w in widths:
            enc += [nn.Conv2d(ch, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.SiLU(),
                    nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.SiLU()]
            ch = w
        self.enc = nn.Sequential(*enc)
        dec = []
        for w in reversed((8,) + tuple(widths[:-1])):
            dec += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                    nn.Conv2d(ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.SiLU()]
            ch = w
        dec.append(nn.Conv2d(ch, 1, 3, padding=1))
        self.dec = nn.Sequential(*dec)

    def forward(self, x):
        return self.dec(self.enc(x))


def build_baseline(kind: str, preset: str) -> nn.Module:
    if kind == "ae":
        return ConvAE()
    if kind == "dae":
        return build_unet(preset, 1)
    raise ValueError(f"unknown baseline {kind!r}")


DAE_NOISE = ("both", "positive", "negative")


def coarse_noise(shape, rng: np.random.Generator, std: float = 0.2 * 6.0, grid: int = 16,
                 sign: str = "both"):
    """Kascenas-style coarse noise: N(0, std) on a grid×grid lattice, bilinearly upsampled.

    ``std`` is in normalised units (the p90 normalisation spans about 6 units over the brain).
    ``sign`` is the noise's range, the intensity prior of the paper's DAE variants: ``both``
    = [−∞, +∞] (Kascenas's own), ``positive`` = [0, +∞] (the lattice values folded to their
    absolute value: the paper's best DAE on FLAIR and T2, whose lesions are hyper-intense),
    ``negative`` = [−∞, 0] (its best on T1). The same draws in every case, only folded.
    """
    if sign not in DAE_NOISE:
        raise ValueError(f"DAE noise sign must be one of {DAE_NOISE}, got {sign!r}")
    n, _, h, w = shape
    low = rng.normal(0.0, std, (n, 1, grid, grid)).astype(np.float32)
    if sign == "positive":
        low = np.abs(low)
    elif sign == "negative":
        low = -np.abs(low)
    return F.interpolate(torch.from_numpy(low), size=(h, w), mode="bilinear",
                         align_corners=False)
