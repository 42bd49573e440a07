"""The ``stroke`` stratum: ATLAS-like chronic infarcts, territorial wedges and deep lacunes.

Lesion volume is log-normal with the ATLAS v2.0 training set's median (5 mL) and a spread that
puts its extremes (0.01 and 497 mL among 655 cases) at about ±3.2 standard deviations
(σ = 1.7 in natural-log units); docs/benchmark.md §2 has the sources.  Infarcts under 2 mL are
deep lacunes (irregular ellipsoids within 35 mm of the brain centre); larger ones are cortical
wedges whose base lies on the cortex, sized to the drawn volume.  One infarct per case by default.
Contrast (chronic stage): T1 and T1CE dark, between CSF and grey matter; FLAIR bright gliosis;
T2 between grey matter and CSF.  Streams: ``[seed, 600]`` geometry, ``[seed, 620 + index]``
contrast.
"""

from __future__ import annotations

import math

import numpy as np

from . import fields
from .anatomy import Anatomy
from .contrast import T1_LIKE
from .lesions import MIN_LESION_VOXELS, paint

__all__ = ["LACUNE_ML", "VOLUME_MEDIAN_ML", "VOLUME_SIGMA", "add_strokes"]

VOLUME_MEDIAN_ML = 5.0
VOLUME_SIGMA = 1.7
VOLUME_RANGE_ML = (0.02, 400.0)
LACUNE_ML = 2.0


def _values(rng, mu, modality: str) -> float:
    wm, gm, csf = mu["wm"], mu["gm"], mu["csf"]
    if modality == "flair":
        return wm * rng.uniform(1.3, 1.9)
    if modality == "t2":
        return gm + rng.uniform(0.3, 0.9) * (csf - gm)
    return csf + rng.uniform(0.2, 0.7) * (gm - csf)


def _geometry(rng, anat: Anatomy, volume_ml: float):
    vs = anat.voxel_size
    shape = anat.brain.shape
    brain = anat.brain
    centre_b = np.argwhere(brain).mean(0)
    width = rng.uniform(1.5, 3.0)
    if volume_ml < LACUNE_ML:
        diam = max(2.0 * (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1 / 3), 2.5 * vs)
        near = np.zeros(shape, bool)
        near[fields.box(centre_b, [35.0 / vs] * 3, shape)] = True
        centre = fields.choose(rng, near & brain & (anat.csf < 0.3))
        if centre is None:
            centre = fields.choose(rng, brain)
        rot = fields.random_rotation(rng)
        semi = diam / 2.0 * rng.uniform(0.6, 1.4, 3)
        semi *= diam / 2.0 / np.cbrt(np.prod(semi))
        irr = rng.uniform(0.1, 0.3)
        half = semi.max() * (1.0 + width / (2 * float(np.mean(semi)))) / (1 - irr) + 2 * vs
        sl = fields.box(centre, [half / vs] * 3, shape)
        d = fields.local_mm(sl, centre, vs)
        sub = tuple(s.stop - s.start for s in sl)
        noise = fields.smooth_fields(rng, sub, max(diam / 3.0, 2.0) / vs, 1)[0]
        r = fields.ellipsoid_radius(d, rot, semi) * (1.0 + np.float32(irr) * np.tanh(noise))
        f = fields.profile((1.0 - r) * float(np.mean(semi)), width)
        info = {"kind": "stroke", "subtype": "lacunar", "diameter_mm": diam}
    else:
        for _ in range(20):  # a direction whose cortex lies far enough from the centre
            u = rng.standard_normal(3)
            u[2] *= 0.6
            u /= np.linalg.norm(u)
            p = centre_b.copy()
            while True:
                q = p + 0.5 * u
                qi = np.round(q).astype(int)
                if np.any(qi < 0) or np.any(qi >= shape) or not brain[tuple(qi)]:
                    break
                p = q
            if np.linalg.norm((p - centre_b) * vs) > 30.0:
                break
        theta = math.radians(rng.uniform(15.0, 40.0))
        # a cone of half-angle theta and height h holds pi/3 * tan(theta)^2 * h^3
        depth = (3.0 * volume_ml * 1000.0 / (math.pi * math.tan(theta) ** 2)) ** (1 / 3)
        depth = min(depth, 0.85 * float(np.linalg.norm((p - centre_b) * vs)))
        apex = p - u * depth / vs
        length = depth * rng.uniform(1.05, 1.2)
        half = length + width + 2 * vs
        sl = fields.box(apex + u * (length / 2.0) / vs, [half / vs] * 3, shape)
        d = fields.local_mm(sl, apex, vs)
        sub = tuple(s.stop - s.start for s in sl)
        noise = fields.smooth_fields(rng, sub, max(depth * math.tan(theta) / 2.0, 3.0) / vs, 2)
        dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2).astype(np.float32)
        along = (np.float32(u[0]) * d[0] + np.float32(u[1]) * d[1]) + np.float32(u[2]) * d[2]
        ang = np.arccos(np.clip(along / np.maximum(dist, np.float32(1e-3)), -1.0, 1.0))
        irr = rng.uniform(0.15, 0.35)
        th = np.float32(theta) * (1.0 + np.float32(irr) * np.tanh(noise[0]))
        s_side = dist * np.sin(np.clip(th - ang, -np.pi / 2, np.pi / 2)).astype(np.float32)
        s_cap = np.float32(length) * (1.0 + np.float32(0.1) * np.tanh(noise[1])) - dist
        f = fields.profile(np.minimum(s_side, s_cap), width)
        info = {"kind": "stroke", "subtype": "territorial", "depth_mm": depth,
                "angle_deg": math.degrees(theta)}
    g = (f * brain[sl]).astype(np.float32)
    comps = [dict(sl=sl, f=g * (1.0 - anat.csf[sl]), g=g, spared=True, role="lesion", depth=None)]
    info["drawn_volume_ml"] = float(volume_ml)
    return comps, info


def add_strokes(seed: int, anat: Anatomy, mu, par, cs, modality: str, mi: int, n_lesions=1):
    """Draw and paint ``n_lesions`` infarcts (a count; a (min, max) range draws one count)."""
    rng = np.random.default_rng([seed, 600])
    crng = np.random.default_rng([seed, 620 + mi])
    if isinstance(n_lesions, (tuple, list)):
        n = int(rng.integers(int(n_lesions[0]), int(n_lesions[1]) + 1))
    else:
        n = int(n_lesions)
    lesion_frac = np.zeros(anat.brain.shape, np.float32)
    lesions = []
    sign = -1.0 if modality in T1_LIKE else 1.0
    for _ in range(n):
        vol = float(np.clip(VOLUME_MEDIAN_ML * math.exp(VOLUME_SIGMA * rng.standard_normal()),
                            *VOLUME_RANGE_ML))
        for _attempt in range(10):
            comps, info = _geometry(rng, anat, vol)
            if int((comps[0]["f"] >= 0.5).sum()) >= MIN_LESION_VOXELS:
                break
        val = _values(crng, mu, modality)
        info["contrast"] = float(val / mu["wm"])
        paint(comps, info, values={"main": val}, het=crng.uniform(0.03, 0.07),
              grad=0.0, sign=sign, margin=crng.uniform(0.04, 0.1),
              alpha=crng.uniform(0.2, 0.6), anat=anat, mu=mu, par=par, cs=cs,
              lesion_frac=lesion_frac)
        info["_comps"] = comps
        lesions.append(info)
    return lesion_frac, lesions
