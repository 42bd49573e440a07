"""High-frequency guidance image x_f (docs/method.md §2).

The slice's 2-D spectrum is centred (DC at ``(H // 2, W // 2)``); every frequency bin closer than
``radius`` bins to the centre loses its amplitude, every other bin keeps it, and the phase is kept
everywhere. The inverse transform of that spectrum is x_f: edges and fine structure without the
mean intensity or large smooth components. Radius is in frequency bins of the model grid (15 at
128 × 128 in the reference).
"""

from __future__ import annotations

import torch

__all__ = ["low_band", "high_pass", "high_pass_radii"]

_BAND_CACHE: dict[tuple, torch.Tensor] = {}


def low_band(height: int, width: int, radius: float, device=None) -> torch.Tensor:
    """Boolean (H, W) map of the centred spectrum's bins with distance < ``radius`` to DC."""
    key = (height, width, float(radius), str(device))
    band = _BAND_CACHE.get(key)
    if band is None:
        yy = torch.arange(height, dtype=torch.float32) - height // 2
        xx = torch.arange(width, dtype=torch.float32) - width // 2
        dist = torch.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
        band = (dist < radius).to(device)
        _BAND_CACHE[key] = band
    return band


def high_pass(x: torch.Tensor, radius: float = 15.0) -> torch.Tensor:
    """Return x_f for a batch of slices ``x`` of shape (..., H, W), on x's device and dtype.

    Amplitudes inside the low band are set to zero; phase is untouched, so bins outside the band
    are exactly the input's bins. The result is real (the imaginary residue is discarded).
    """
    if x.ndim < 2:
        raise ValueError(f"high_pass needs (..., H, W) slices, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
    keep = ~low_band(h, w, radius, device=x.device)
    spec = spec * keep
    out = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real
    return out.to(x.dtype) if x.is_floating_point() else out


def high_pass_radii(x: torch.Tensor, radii) -> torch.Tensor:
    """x_f of each slice of ``x`` (B, H, W) at its own radius ``radii[b]``: one FFT for the batch.

    Equal to ``high_pass(x[b], radii[b])`` slice by slice (the radius-conditioned masked net,
    ``net_input``).
    """
    if x.ndim != 3 or len(radii) != x.shape[0]:
        raise ValueError(f"high_pass_radii needs (B, H, W) slices and B radii, got shape "
                         f"{tuple(x.shape)} and {len(radii)} radii")
    h, w = x.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
    keep = torch.stack([~low_band(h, w, float(r), device=x.device) for r in radii])
    out = torch.fft.ifft2(torch.fft.ifftshift(spec * keep, dim=(-2, -1))).real
    return out.to(x.dtype) if x.is_floating_point() else out
