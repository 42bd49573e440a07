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

2.5-D context (a project option, ``context_slices`` K; 0 in the paper): the masked net also sees
the K axial neighbours on each side of the slice, each hidden where the slice itself is,
``where(mask & brain_j, noise_j, x_j)`` (``shared_mask_context``) — the slice's random mask in
training, its loop mask at inference, carried through each neighbour's brain. They come last,
after the radius level if any, nearest first below then above (z − 1, …, z − K, z + 1, …,
z + K); a neighbour outside the scan is zeros.
Channels appended last are what lets a 2-D model start a 2.5-D one with zero weights for them
(``training.train.widen_input``): the widened net computes what the 2-D one did.
"""

from __future__ import annotations

import numpy as np
import torch

from .context_slices import check_context_slices, context_offsets

__all__ = ["masked_input", "masked_channels", "shared_mask_context", "neighbour_slices"]


def masked_channels(conditioned: bool, context_slices: int = 0) -> int:
    """Input channels of the masked net: x̂ and x_f, plus the radius level if conditioned, plus
    one per neighbour slice (2 per ``context_slices``)."""
    return (3 if conditioned else 2) + 2 * check_context_slices(context_slices)


def masked_input(x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, x_f: torch.Tensor,
                 guidance: bool = True, level: torch.Tensor | None = None,
                 context: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                 ) -> torch.Tensor:
    """``cat(where(mask, noise, x), x_f or zeros[, level][, neighbours])`` along channels:
    (B, C, H, W) with C = ``masked_channels``.

    ``x``, ``noise`` and ``x_f`` are (B, 1, H, W) float tensors on the model grid (normalised
    intensities), ``mask`` a (B, 1, H, W) bool tensor, True where the net must reconstruct.
    ``guidance`` False (the "-freq" ablation) puts zeros where ``x_f`` would be. ``level`` (B,)
    (radius conditioning, ``RadiusConditioning.level``) adds a channel holding each slice's level
    everywhere. ``context`` (2.5-D) is (neighbour slices, their masks, their noise), each
    (B, 2K, H, W) in ``context_offsets`` order; zeros with a False mask stand for a neighbour
    outside the scan.
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
    if context is not None:
        parts.append(_neighbours(x, *context))
    return torch.cat(parts, dim=1)


def _neighbours(x: torch.Tensor, x_nb: torch.Tensor, mask_nb: torch.Tensor,
                noise_nb: torch.Tensor) -> torch.Tensor:
    """The neighbour channels: ``where(mask_nb, noise_nb, x_nb)``, all (B, 2K, H, W)."""
    if mask_nb.dtype != torch.bool:
        raise ValueError(f"neighbour masks must be bool, not {mask_nb.dtype}")
    if not (x_nb.shape == mask_nb.shape == noise_nb.shape) or x_nb.ndim != 4 \
            or x_nb.shape[0] != x.shape[0] or x_nb.shape[2:] != x.shape[2:] \
            or x_nb.shape[1] % 2:
        raise ValueError("neighbour slices, masks and noise must all be (B, 2K, H, W) with the "
                         f"slices' B, H, W; got {tuple(x_nb.shape)}, {tuple(mask_nb.shape)}, "
                         f"{tuple(noise_nb.shape)} for slices {tuple(x.shape)}")
    return torch.where(mask_nb, noise_nb, x_nb.to(x.dtype))


def shared_mask_context(x_nb: torch.Tensor, brain_nb: torch.Tensor, mask: torch.Tensor,
                        noise_nb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2.5-D context for ``masked_input``: the slice's ``mask`` (B, 1, H, W) — a random
    training mask, or the loop's mask (with its context gap) — carried through each neighbour's
    brain ``brain_nb`` (B, 2K, H, W), as a lesion's mask runs on through the next slices; a
    neighbour outside the scan (no brain) stays unmasked zeros. Training, τ calibration and the
    loop all call this."""
    if mask.dtype != torch.bool or brain_nb.dtype != torch.bool:
        raise ValueError("mask and neighbour brains must be bool")
    return x_nb, mask.expand_as(brain_nb) & brain_nb, noise_nb


def neighbour_slices(x: np.ndarray, brain: np.ndarray, k: int, ids=None, idx=None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The 2.5-D context's images: for slices ``idx`` (default all) of ``x`` / ``brain``
    (N, H, W), the slices whose ids lie at ``context_offsets(k)`` of theirs (``ids`` default
    0..N−1, the axial indices of a scan), as (len(idx), 2k, H, W) float32 and bool arrays; zeros
    and False where that id is not among the slices. Training data (``training.prepare``) and
    the loop take neighbours through this one function."""
    x = np.asarray(x)
    n = len(x)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    idx = np.arange(n) if idx is None else np.asarray(idx)
    position = {int(v): i for i, v in enumerate(ids)}
    offsets = context_offsets(k)
    shape = (len(idx), len(offsets)) + x.shape[1:]
    cx, cb = np.zeros(shape, np.float32), np.zeros(shape, bool)
    for b, i in enumerate(idx):
        for c, d in enumerate(offsets):
            j = position.get(int(ids[i]) + d)
            if j is not None:
                cx[b, c], cb[b, c] = x[j], brain[j]
    return cx, cb
