"""The masked network's input, built in one place for training, calibration and inference.

The masked net ``f`` sees two channels (docs/method.md §3): the scan with its masked pixels
replaced by noise, ``where(mask, noise, x)``, and the scan's high-frequency part ``x_f`` as
guidance. The "-freq" ablation (docs/method.md §8) trains and runs ``f`` without guidance; its
second channel is zeros, so the network's shape is the same. Training (``training/train.py``),
τ calibration (``training/calibrate.py``), the engine and the benchmarks all call
``masked_input``: what a model was trained on is, bit for bit, what it is given at inference.

Radius conditioning (a project option, ``conditioning``; off in the paper): the masked net gets
a third channel, constant over the slice, that holds the level of the frequency radius its
``x_f`` was cut at. Training draws the radius per sample; inference raises it as the mask
shrinks.
"""

from __future__ import annotations

import torch

from .conditioning import RadiusConditioning

__all__ = ["masked_input", "masked_channels", "RadiusConditioning"]


def masked_channels(conditioned: bool) -> int:
    """Input channels of the masked net: x̂ and x_f, plus the radius level if conditioned."""
    return 3 if conditioned else 2


def masked_input(x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, x_f: torch.Tensor,
                 guidance: bool = True, level: torch.Tensor | None = None) -> torch.Tensor:
    """``cat(where(mask, noise, x), x_f or zeros[, level])`` along channels: (B, 2 or 3, H, W).

    ``x``, ``noise`` and ``x_f`` are (B, 1, H, W) float tensors on the model grid (normalised
    intensities), ``mask`` a (B, 1, H, W) bool tensor, True where the net must reconstruct.
    ``guidance`` False (the "-freq" ablation) puts zeros where ``x_f`` would be. ``level`` (B,)
    (radius conditioning, ``RadiusConditioning.level``) adds a channel holding each slice's level
    everywhere.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, not {mask.dtype}")
    if not (x.shape == mask.shape == noise.shape == x_f.shape) or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError("x, mask, noise and x_f must all be (B, 1, H, W); got "
                         f"{tuple(x.shape)}, {tuple(mask.shape)}, {tuple(noise.shape)}, "
                         f"{tuple(x_f.shape)}")
    x_hat = torch.where(mask, noise, x)
    parts = [x_hat, x_f if guidance else torch.zeros_like(x_f)]
    if level is not None:
        level = torch.as_tensor(level, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        if level.shape[0] != x.shape[0]:
            raise ValueError(f"level needs one value per slice ({x.shape[0]}), got "
                             f"{level.shape[0]}")
        parts.append(level.expand_as(x))
    return torch.cat(parts, dim=1)
