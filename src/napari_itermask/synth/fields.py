"""Random fields and small geometry helpers shared by every part of the synthetic-brain generator.

All randomness comes from ``numpy.random.Generator`` streams passed in by the caller; nothing here
keeps state, so a seed gives bit-identical arrays, on every CPU: see ``portable``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def portable(ufunc, x):
    """``ufunc(x)`` (a numpy transcendental such as ``np.arccos`` or ``np.cbrt``) with the same
    last bits on every x86-64 CPU, in ``x``'s floating dtype (float64 for Python numbers).

    For float32 and float64 numpy picks an implementation of these functions per CPU (a vector
    math library on AVX-512, the C library elsewhere) and their results differ in the last bits,
    enough to change a synthetic case's hash.  The C library's long-double routines do not vary
    with the CPU; their result, rounded to ``x``'s dtype, is one answer everywhere.  Arithmetic,
    ``sqrt``, and float32 ``exp``/``log``/``sin``/``cos``/``tanh`` agree between AVX2 and AVX-512
    builds as they are (docs/benchmark.md, "Reproducible across CPUs").
    """
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    out = ufunc(x.astype(np.longdouble)).astype(dtype)
    return out if out.ndim else out[()]


def basis(n: int, spacing: float) -> np.ndarray:
    """Gaussian radial basis along one axis, rows normalised to unit L2 norm."""
    spacing = max(float(spacing), 1.0)
    k = int(math.ceil((n - 1 + 2 * spacing) / spacing)) + 1
    centres = np.linspace(-spacing, n - 1 + spacing, k)
    x = np.arange(n, dtype=np.float64)[:, None]
    b = portable(np.exp, -0.5 * ((x - centres[None]) / (0.75 * spacing)) ** 2)
    b /= np.sqrt((b * b).sum(1, keepdims=True))
    return b.astype(np.float32)


def smooth_fields(
    rng: np.random.Generator, shape, spacing: float, n: int = 1, coarse: float = 0.0
) -> np.ndarray:
    """``n`` smooth random fields with (about) unit variance everywhere.

    A tensor-product Gaussian-RBF expansion with control points every
    ``spacing`` voxels, evaluated axis by axis, so it costs far less than
    filtering a full-size noise volume.  With ``coarse`` > 0 the control-point
    coefficients are partly smoothed, which adds a larger-scale component.
    The contractions use ``np.einsum`` without BLAS so that the result does not
    depend on the number of BLAS threads (bit-identical output per seed).
    """
    bs = [basis(s, spacing) for s in shape]
    ks = tuple(b.shape[1] for b in bs)
    out = np.empty((n, *shape), np.float32)
    for i in range(n):
        c = rng.standard_normal(ks, dtype=np.float32)
        if coarse > 0:
            c2 = ndimage.gaussian_filter(rng.standard_normal(ks, dtype=np.float32), 1.5)
            c2 /= max(float(c2.std()), 1e-6)
            c = np.float32(math.sqrt(1.0 - coarse**2)) * c + np.float32(coarse) * c2
        t = np.einsum("xi,ijk->xjk", bs[0], c, optimize=False)
        t = np.einsum("xjk,yj->xyk", t, bs[1], optimize=False)
        np.einsum("xyk,zk->xyz", t, bs[2], optimize=False, out=out[i])
    return out


def fine_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """White noise smoothed by a Gaussian of ``sigma`` voxels, unit std."""
    a = rng.standard_normal(shape, dtype=np.float32)
    a = ndimage.gaussian_filter(a, sigma, mode="reflect")
    s = float(a.std())
    return a / (s if s > 0 else 1.0)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def profile(signed_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance (mm, > 0 inside).

    Exactly 0.5 on the surface, 1 deeper than ``width_mm / 2`` inside and 0
    beyond ``width_mm / 2`` outside.
    """
    return smoothstep(0.5 + signed_mm / max(width_mm, 1e-3)).astype(np.float32)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def euler(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry),
                              math.cos(rz), math.sin(rz))
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def box(centre_vox, half_vox, shape):
    lo = [max(int(math.floor(c - h)), 0) for c, h in zip(centre_vox, half_vox)]
    hi = [min(int(math.ceil(c + h)) + 1, n) for c, h, n in zip(centre_vox, half_vox, shape)]
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def local_mm(sl, centre_vox, vs):
    """Broadcastable offsets (mm) of the voxels in box ``sl`` from centre."""
    return [
        ((np.arange(s.start, s.stop, dtype=np.float32) - np.float32(centre_vox[i])) * vs).reshape(
            [-1 if j == i else 1 for j in range(3)]
        )
        for i, s in enumerate(sl)
    ]


def ellipsoid_radius(d, rot, semi):
    """Normalised ellipsoid radius (1 on the surface) for offsets ``d`` (mm)."""
    r2 = 0.0
    for k in range(3):
        p = rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2]
        r2 = r2 + (p / np.float32(semi[k])) ** 2
    return np.sqrt(r2).astype(np.float32)


def choose(rng, mask):
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return None
    return np.array(np.unravel_index(idx[rng.integers(len(idx))], mask.shape), np.float64)
