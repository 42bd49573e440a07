"""The ``glioma`` stratum: one BraTS-like tumour per case, the paper's regime (docs/benchmark.md).

One tumour (whole-tumour oedema around a solid core with an enhancing rim and, often, necrosis)
is placed in supratentorial white matter so that it crosses the central axial slab that the
paper protocol scores.  Its size is drawn so that the largest axial lesion slice on the model
grid (128 px of 1.875 mm) falls into the three size bins of the paper's Table 3 (< 200, 200-800,
> 800 px) with shares of about 8 / 46 / 46 %, the shares that the paper's own per-stratum and
overall Dice imply.  Large tumours push the tissue around them outwards (mass effect: nearby
ventricles and sulci are displaced and compressed).  Contrast follows clinical scans: FLAIR
oedema above grey matter; T2 oedema between grey matter and CSF, necrosis near CSF; T1 oedema
mildly dark, core and necrosis near CSF; T1CE as T1 with a bright enhancing rim.

Streams: geometry and mass effect ``[seed, 500]``, contrast ``[seed, 520 + contrast index]``.
Every component of the tumour, necrosis included, is lesion (BraTS merges its labels).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy import ndimage

from ..core.metrics import slab_slices
from . import fields
from .anatomy import Anatomy
from .contrast import T1_LIKE
from .lesions import paint

__all__ = ["AREA_BINS_PX", "MODEL_PIXEL_MM", "SIZE_SHARES", "add_glioma", "central_slab_z"]

MODEL_PIXEL_MM = 1.875  # the model grid's pixel (the reference: 240 mm at 128 px)
# Target share of cases per size bin of the largest axial lesion slice (pixels at 128²), and
# the log-uniform range drawn within each bin.  The drawn area sets the tumour's equivalent
# cross-section; irregularity, clipping by the brain and the protocol's label rule move the
# measured area around it, which tests/test_synth_strata.py checks on out-of-split seeds.
SIZE_SHARES = (0.08, 0.46, 0.46)
AREA_BINS_PX = ((90.0, 200.0), (200.0, 800.0), (800.0, 1500.0))


def central_slab_z(brain: np.ndarray) -> tuple[int, int]:
    """Inclusive axial (last axis, RAS) slice range of the central slab of ``brain``
    (``core.metrics.CENTRAL_SLAB``, the paper protocol's definition)."""
    ks = slab_slices(np.asarray(brain, bool).sum(axis=(0, 1)))
    if ks.size == 0:
        raise ValueError("empty brain mask")
    return int(ks[0]), int(ks[-1])


def _draw_area_px(rng) -> float:
    b = int(rng.choice(3, p=SIZE_SHARES))
    lo, hi = AREA_BINS_PX[b]
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _mass_effect(rng, anat: Anatomy, centre, push_mm: float, reach_mm: float,
                 radius_mm: float) -> Anatomy:
    """Tissue pushed radially away from ``centre`` as if a ball of radius ``push_mm`` had grown
    there (the volume it displaces moves outwards), the push fading beyond the tumour's radius
    ``radius_mm`` over ``reach_mm``; sulcal CSF near the tumour is effaced.  The brain outline
    stays (the skull holds it); CSF takes whatever the tissue leaves."""
    vs = anat.voxel_size
    half = (radius_mm + 2.0 * reach_mm) / vs
    sl = fields.box(centre, [half] * 3, anat.brain.shape)
    d = fields.local_mm(sl, centre, vs)
    r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2).astype(np.float32)
    # tissue found at r came from r_src: r³ = r_src³ + a³ · fade(r), a ball of radius a inflated
    fade = np.exp(-((np.maximum(r - radius_mm, 0.0) / np.float32(reach_mm)) ** 2))
    r_src = fields.portable(np.cbrt, np.maximum(r * r * r - np.float32(push_mm**3) * fade, 0.0))
    ratio = np.where(r > 1e-3, r_src / np.maximum(r, 1e-3), 0.0).astype(np.float32)
    coords = np.stack([np.broadcast_to(np.float32(centre[i]) + d[i] / vs * ratio, r.shape)
                       for i in range(3)])
    kw = dict(order=1, mode="nearest", output=np.float32)
    gm, wm = anat.gm.copy(), anat.wm.copy()
    g = ndimage.map_coordinates(anat.gm, coords, **kw)  # coords are absolute voxel indices
    w = ndimage.map_coordinates(anat.wm, coords, **kw)
    brain = anat.brain[sl]
    # sulcal effacement: near the tumour part of the CSF becomes (swollen) grey matter
    eff = np.float32(rng.uniform(0.3, 0.7)) * fade * brain
    c = np.clip(1.0 - g - w, 0.0, 1.0)
    g = g + eff * c
    tot = np.maximum(g + w, 1.0)
    gm[sl] = np.where(brain, g / tot, 0.0)
    wm[sl] = np.where(brain, w / tot, 0.0)
    csf = anat.csf.copy()
    csf[sl] = np.where(brain, np.clip(1.0 - gm[sl] - wm[sl], 0.0, 1.0), 0.0)
    return replace(anat, gm=gm, wm=wm, csf=csf)


def _values(rng, mu, modality: str) -> dict:
    """Nominal means of the tumour's parts for one contrast (see the module docstring)."""
    wm, gm, csf = mu["wm"], mu["gm"], mu["csf"]
    if modality == "flair":
        oed = wm * rng.uniform(1.45, 2.05)
        return {"main": oed, "core": oed * rng.uniform(0.8, 1.05),
                "enhancing": oed * rng.uniform(0.85, 1.05),
                "necrosis": csf + rng.uniform(0.4, 1.2) * (wm - csf)}
    if modality == "t2":
        return {"main": gm + rng.uniform(0.2, 0.7) * (csf - gm),
                "core": gm + rng.uniform(0.0, 0.5) * (csf - gm),
                "enhancing": gm * rng.uniform(0.95, 1.2),
                "necrosis": gm + rng.uniform(0.7, 1.0) * (csf - gm)}
    vals = {"main": wm - rng.uniform(0.3, 0.9) * (wm - gm),
            "core": csf + rng.uniform(0.3, 0.8) * (gm - csf),
            "enhancing": gm * rng.uniform(0.9, 1.05),
            "necrosis": csf * rng.uniform(1.0, 1.4)}
    enh = wm * rng.uniform(1.2, 1.7)  # drawn for T1 too, so both share the other draws
    if modality == "t1ce":
        vals["enhancing"] = enh
    return vals


def add_glioma(seed: int, anat: Anatomy, modality: str, mi: int):
    """Draw one glioma for case ``seed``.

    Returns the anatomy after the tumour's mass effect (the caller builds the normal signal
    from it) and ``paint_into(mu, par, cs)``, which paints the tumour into that signal in place
    and returns the lesion fraction and the one-element info list.
    """
    rng = np.random.default_rng([seed, 500])
    vs = anat.voxel_size
    shape = anat.brain.shape
    area_mm2 = _draw_area_px(rng) * MODEL_PIXEL_MM**2
    r_eq = math.sqrt(area_mm2 / math.pi)  # radius of the target largest cross-section (mm)
    # centre: white matter, deep enough for the tumour, axially inside the central slab
    depth_mm = ndimage.distance_transform_edt(anat.brain) * vs
    z0, z1 = central_slab_z(anat.brain)
    zmask = np.zeros(shape, bool)
    zmask[:, :, z0:z1 + 1] = True
    cand = (anat.wm > 0.5) & zmask
    for need in (0.75, 0.5, 0.3, 0.0):
        centre = fields.choose(rng, cand & (depth_mm >= need * r_eq))
        if centre is not None:
            break
    if centre is None:
        centre = fields.choose(rng, anat.brain)
    rot = fields.random_rotation(rng)
    semi = r_eq * rng.uniform(0.8, 1.25, 3)
    semi *= r_eq / fields.portable(np.cbrt, np.prod(semi))
    has_core = rng.random() < 0.9
    core_ratio = rng.uniform(0.35, 0.7)
    enhancing = has_core and rng.random() < 0.85
    rim_mm = rng.uniform(2.0, 5.0)
    necrotic = has_core and r_eq * core_ratio > 6.0 and rng.random() < 0.6
    necro_ratio = rng.uniform(0.3, 0.65)
    irr_o, irr_c = rng.uniform(0.1, 0.25), rng.uniform(0.05, 0.2)
    width_o, width_c = rng.uniform(3.0, 6.0), rng.uniform(1.0, 2.0)
    finger = rng.uniform(0.15, 0.35)  # oedema follows the white matter
    core_shift = rng.uniform(-0.15, 0.15, 3) * semi
    push = r_eq * rng.uniform(0.5, 0.8) if r_eq > 12.0 else 0.0
    reach = rng.uniform(8.0, 16.0)
    if push > 0:
        anat = _mass_effect(rng, anat, centre, push, reach, r_eq)
    scale_mm = float(np.mean(semi))
    semi_c = semi * core_ratio
    scale_c = float(np.mean(semi_c))
    half = semi.max() * (1.0 + width_o / (2 * scale_mm)) / ((1 - irr_o) * (1 - finger / 2))
    half = max(half, semi_c.max() * 1.3 + float(np.abs(core_shift).max()) * 1.8) + 2 * vs
    sl = fields.box(centre, [half / vs] * 3, shape)
    d = fields.local_mm(sl, centre, vs)
    sub = tuple(s.stop - s.start for s in sl)
    corr = max(r_eq / 1.5, 3.0) / vs
    noise = fields.smooth_fields(rng, sub, corr, 2)
    noise += 0.5 * fields.smooth_fields(rng, sub, corr / 2.5, 2)
    r_o = fields.ellipsoid_radius(d, rot, semi) * (1.0 + np.float32(irr_o) * np.tanh(noise[0]))
    wm_loc = ndimage.gaussian_filter(anat.wm[sl], 1.0 / vs)
    r_o *= np.float32(1.0 + finger / 2.0) - np.float32(finger) * wm_loc
    brain = anat.brain[sl]
    g_o = fields.profile((1.0 - r_o) * scale_mm, width_o) * brain
    comps = [dict(sl=sl, f=g_o * (1.0 - anat.csf[sl]), g=g_o, spared=True,
                  role="oedema", depth=1.0 - r_o)]
    if has_core:
        dc = [d[i] - np.float32(sum(rot[i, k] * core_shift[k] for k in range(3))) for i in range(3)]
        rc = fields.ellipsoid_radius(dc, rot, semi_c)
        rc *= 1.0 + np.float32(irr_c) * np.tanh(noise[1])
        signed_c = (1.0 - rc) * scale_c  # mm inside the core's surface
        f_c = fields.profile(signed_c, width_c) * brain
        if enhancing:  # the outer rim_mm of the core enhances; the rest is solid core
            f_inner = fields.profile(signed_c - np.float32(rim_mm), width_c) * brain
            comps.append(dict(sl=sl, f=f_c, spared=False, role="enhancing", depth=None))
            comps.append(dict(sl=sl, f=f_inner, spared=False, role="core", depth=None))
        else:
            comps.append(dict(sl=sl, f=f_c, spared=False, role="core", depth=None))
        if necrotic:
            f_n = fields.profile((necro_ratio - rc) * scale_c, 2.0) * brain
            comps.append(dict(sl=sl, f=f_n, spared=False, role="necrosis", depth=None))
    info = {"kind": "glioma", "target_area_px": area_mm2 / MODEL_PIXEL_MM**2,
            "diameter_mm": 2 * r_eq, "has_core": bool(has_core), "enhancing": bool(enhancing),
            "necrotic": bool(necrotic), "mass_effect_mm": float(push)}

    sign = -1.0 if modality in T1_LIKE else 1.0

    def paint_into(mu, par, cs):
        crng = np.random.default_rng([seed, 520 + mi])
        values = _values(crng, mu, modality)
        het = crng.uniform(0.04, 0.10)
        grad = crng.uniform(0.05, 0.3)
        margin = crng.uniform(0.04, 0.1)
        alpha = crng.uniform(0.0, 0.4)
        info["contrast"] = float(values["main"] / mu["wm"])
        lesion_frac = np.zeros(shape, np.float32)
        paint(comps, info, values=values, het=het, grad=grad, sign=sign, margin=margin,
              alpha=alpha, anat=anat, mu=mu, par=par, cs=cs, lesion_frac=lesion_frac,
              label_roles=("oedema", "core", "enhancing", "necrosis"))
        info["_comps"] = comps
        return lesion_frac, [info]

    return anat, paint_into
