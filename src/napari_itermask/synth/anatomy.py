"""Anatomy of a synthetic case: a template's tissue fractions under a random, smooth deformation.

A small random affine (rotation up to 5 degrees per axis, scale within +-5 %, shift up to 3 mm),
a smooth elastic displacement field (a few mm), a radial enlargement or shrinkage of the
ventricular region and a random amount of sulcal widening are composed, and the template's
tissue fractions are resampled through them (stream ``[seed, 0]``, shared by all contrasts).
The deformed brain mask is ``brain fraction >= 0.5``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import fields
from .templates import raw_tissue

__all__ = ["Anatomy", "Template", "load_template", "make_anatomy"]


@dataclass(frozen=True)
class Template:
    """A template's tissue fractions resampled to the cases' voxel size, with landmarks."""

    gm: np.ndarray  # float32 partial-volume fractions, zero outside the brain
    wm: np.ndarray
    brain: np.ndarray  # float32 brain fraction (0..1)
    affine: np.ndarray
    voxel_size: float
    centre: np.ndarray  # brain centroid, voxel coordinates
    vent_centre: np.ndarray  # centre of the lateral ventricles, voxel coords


@functools.lru_cache(maxsize=4)
def load_template(voxel_size: float, name: str = "icbm152") -> Template:
    raw = raw_tissue(name)
    gm, wm, brain = raw.gm, raw.wm, raw.brain
    aff0 = raw.affine
    src_vs = float(np.linalg.norm(aff0[:3, 0]))
    f = voxel_size / src_vs
    if abs(f - 1.0) > 1e-9:
        shape = tuple(int(math.floor((n - 1) / f)) + 1 for n in gm.shape)
        sigma = 0.42 * math.sqrt(max(f * f - 1.0, 0.0))
        out = []
        for a in (gm, wm, brain):
            if sigma > 0:
                a = ndimage.gaussian_filter(a, sigma, mode="constant")
            out.append(
                ndimage.affine_transform(
                    a, [f, f, f], output_shape=shape, order=1, mode="constant", cval=0.0
                ).astype(np.float32)
            )
        gm, wm, brain = out
    affine = aff0.copy()
    affine[:3, :3] = aff0[:3, :3] * f
    idx = np.argwhere(brain >= 0.5)
    centre = idx.mean(0)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    # lateral ventricles: CSF voxels within 35 mm of the brain centroid
    near = np.argwhere(csf > 0.6)
    near = near[np.linalg.norm((near - centre) * voxel_size, axis=1) < 35.0]
    vent = near.mean(0) if len(near) else centre
    return Template(gm, wm, brain, affine, float(voxel_size), centre, vent)

@dataclass
class Anatomy:
    """One case's deformed anatomy: tissue fractions and textures on the case grid."""

    gm: np.ndarray  # fractions normalised to sum 1 inside the brain
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # bool
    tex_fine: np.ndarray  # unit-std fine texture
    tex_coarse: np.ndarray  # (2, ...) unit-std coarse texture: tissue, lesions
    affine: np.ndarray
    voxel_size: float


@functools.lru_cache(maxsize=3)
def make_anatomy(seed: int, voxel_size: float, template: str = "icbm152") -> Anatomy:
    """The deformed anatomy of case ``seed`` (stream ``[seed, 0]``), cached; arrays read-only."""
    tpl = load_template(voxel_size, template)
    rng = np.random.default_rng([seed, 0])
    vs = voxel_size
    shape = tpl.gm.shape

    # small affine: rotation <= 5 deg per axis, scale within +-5 %, shift <= 3 mm
    ang = np.deg2rad(rng.uniform(-5.0, 5.0, 3))
    rot = fields.euler(*ang)
    scale = np.clip(rng.uniform(0.96, 1.04) * rng.uniform(0.985, 1.015, 3), 0.95, 1.05)
    shift = rng.uniform(-3.0, 3.0, 3) / vs
    m = (rot @ np.diag(1.0 / scale)).astype(np.float32)  # output -> template
    c = tpl.centre.astype(np.float32)

    # elastic displacement (template voxels): control points every 14 mm with
    # mostly large-scale (smoothed) coefficients, 1.5 - 3 mm standard deviation
    amp = rng.uniform(1.5, 3.0) / vs
    disp = fields.smooth_fields(rng, shape, 14.0 / vs, 3, coarse=0.85)
    disp *= np.float32(amp)

    # ventricular enlargement (> 0) or shrinkage (< 0)
    k_vent = rng.uniform(-0.12, 0.35)
    sig_vent = rng.uniform(18.0, 26.0) / vs
    atrophy = rng.uniform(0.0, 1.0)

    ax = [np.arange(n, dtype=np.float32) - c[i] for i, n in enumerate(shape)]
    grids = [
        ax[0][:, None, None],
        ax[1][None, :, None],
        ax[2][None, None, :],
    ]
    coords = np.empty((3, *shape), np.float32)
    for i in range(3):
        coords[i] = (m[i, 0] * grids[0] + m[i, 1] * grids[1]) + m[i, 2] * grids[2]
        coords[i] += np.float32(c[i] + shift[i])
        coords[i] += disp[i]
    del disp
    # radial term around the ventricles, in template coordinates
    vc = tpl.vent_centre.astype(np.float32)
    r2 = np.zeros(shape, np.float32)
    for i in range(3):
        r2 += (coords[i] - vc[i]) ** 2
    g = np.float32(k_vent) * np.exp(r2 * np.float32(-0.5 / sig_vent**2))
    del r2
    for i in range(3):
        coords[i] -= (coords[i] - vc[i]) * g
    del g

    kw = dict(order=1, mode="constant", cval=0.0, output=np.float32)
    brain_f = ndimage.map_coordinates(tpl.brain, coords, **kw)
    brain = brain_f >= 0.5
    # tissue fractions are only needed inside the deformed brain
    pts = coords[:, brain]
    del coords
    bf = brain_f[brain]
    g = ndimage.map_coordinates(tpl.gm, pts, **kw) / bf
    w = ndimage.map_coordinates(tpl.wm, pts, **kw) / bf
    del pts
    tot = g + w
    over = tot > 1.0
    g[over] /= tot[over]
    w[over] /= tot[over]
    gm = np.zeros(shape, np.float32)
    wm = np.zeros(shape, np.float32)
    csf = np.zeros(shape, np.float32)
    gm[brain] = g
    wm[brain] = w
    csf[brain] = np.clip(1.0 - g - w, 0.0, 1.0)
    del g, w, tot, bf

    # open the sulci of the (population-average) template: CSF partially
    # replaces GM where GM borders CSF (atrophy-like widening, random amount)
    csf_s = ndimage.gaussian_filter(csf, 1.2 / vs)
    widen = np.float32(0.25 + 0.45 * atrophy) * np.clip(csf_s * 3.0, 0.0, 1.0) * gm
    gm -= widen
    csf += widen

    tex_fine = fields.fine_noise(rng, shape, 0.9 / vs)
    tex_coarse = fields.smooth_fields(rng, shape, 8.0 / vs, 2)  # [0] tissue, [1] lesions
    for a in (gm, wm, csf, brain, tex_fine, tex_coarse):
        a.setflags(write=False)
    return Anatomy(gm, wm, csf, brain, tex_fine, tex_coarse, tpl.affine.copy(), vs)

