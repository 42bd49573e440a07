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

from .anatomy import Anatomy
from .contrast import T1_LIKE
from .lesions import MIN_LESION_VOXELS, cortical_point, lacune_fraction, paint, wedge_fraction

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
    width = rng.uniform(1.5, 3.0)
    if volume_ml < LACUNE_ML:
        diam = max(2.0 * (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1 / 3), 2.5 * vs)
        sl, f = lacune_fraction(rng, anat, diam, width)
        info = {"kind": "stroke", "subtype": "lacunar", "diameter_mm": diam}
    else:
        surf, u, reach_mm = cortical_point(rng, anat)
        theta = math.radians(rng.uniform(15.0, 40.0))
        # a cone of half-angle theta and height h holds pi/3 * tan(theta)^2 * h^3
        depth = (3.0 * volume_ml * 1000.0 / (math.pi * math.tan(theta) ** 2)) ** (1 / 3)
        depth = min(depth, 0.85 * reach_mm)
        length = depth * rng.uniform(1.05, 1.2)
        sl, f = wedge_fraction(rng, anat, surf, u, depth, theta, length, width)
        info = {"kind": "stroke", "subtype": "territorial", "depth_mm": depth,
                "angle_deg": math.degrees(theta)}
    g = (f * anat.brain[sl]).astype(np.float32)
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
