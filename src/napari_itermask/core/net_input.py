"""The masked network's input, built in one place for training, calibration and inference.

The masked net ``f`` sees two channels (docs/method.md §3): the scan with its masked pixels
replaced by noise, ``where(mask, noise, x)``, and the scan's high-frequency part ``x_f`` as
guidance. The "-freq" ablation (docs/method.md §8) trains and runs ``f`` without guidance; its
second channel is zeros, so the network's shape is the same. Training (``training/train.py``),
τ calibration (``training/calibrate.py``), the engine and the benchmarks all call
``masked_input``: what a model was trained on is, bit for bit, what it is given at inference.
"""

from __future__ import annotations

import torch

__all__ = ["masked_input"]


def masked_input(x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, x_f: torch.Tensor,
                 guidance: bool = True) -> torch.Tensor:
    """``cat(where(mask, noise, x), x_f or zeros)`` along channels: (B, 2, H, W).

    ``x``, ``noise`` and ``x_f`` are (B, 1, H, W) float tensors on the model grid (normalised
    intensities), ``mask`` a (B, 1, H, W) bool tensor, True where the net must reconstruct.
    ``guidance`` False (the "-freq" ablation) puts zeros where ``x_f`` would be.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, not {mask.dtype}")
    if not (x.shape == mask.shape == noise.shape == x_f.shape) or x.ndim != 4 or x.shape[1] != 1:
        raise ValueError("x, mask, noise and x_f must all be (B, 1, H, W); got "
                         f"{tuple(x.shape)}, {tuple(mask.shape)}, {tuple(noise.shape)}, "
                         f"{tuple(x_f.shape)}")
    x_hat = torch.where(mask, noise, x)
    return torch.cat([x_hat, x_f if guidance else torch.zeros_like(x_f)], dim=1)
