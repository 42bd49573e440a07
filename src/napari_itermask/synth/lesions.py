"""Lesions of the ``subtle`` stratum: the project's original generator, kept bit-identical.

Number, kinds and severities come from stream ``[seed, 100]``, the geometry of lesion ``i`` from
``[seed, 100, i, attempt]`` (shared by all contrasts), the contrast from ``[seed, 20 + contrast
index]``.  Kinds: tumour-like (an irregular core, optionally necrotic, inside a larger irregular
oedema; equivalent diameter log-uniform 3-40 mm) or stroke-like (a cortical wedge/territory or a
small deep lacune).  Every lesion component has a partial-volume fraction ``f`` in ``[0, 1]`` with a
smooth border; the voxel intensity is ``(1 - f) * normal + f * lesion``.  Oedema and infarct
replace only the parenchymal (GM + WM) part of a voxel (``f`` = geometric fraction x parenchymal
fraction), a tumour core replaces everything.  The nominal lesion mean is drawn per lesion and
contrast (``contrast.FLAIR_T``, ``T2_T``, ``T1_U``), with severities drawn uniformly, so lesion
intensities overlap those of normal tissue; locally it is blended with the underlying GM/WM pattern
and kept at least 4-10 % brighter (T1: darker) than the parenchyma it replaces.
``lesions[i]["contrast"]`` is that nominal mean divided by the WM mean.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from . import fields
from .anatomy import Anatomy
from .contrast import T1_LIKE, lesion_means, necrosis_mean

__all__ = ["MIN_LESION_VOXELS", "add_lesions", "cortical_point", "lacune_fraction", "paint",
           "stroke_geometry", "tumour_geometry", "wedge_fraction"]

MIN_LESION_VOXELS = 4  # a lesion smaller than this (after CSF sparing) is redrawn


def tumour_geometry(rng, anat: Anatomy, vs: float):
    """Geometry of a tumour: list of components (dicts with sl, f, role, depth)."""
    shape = anat.brain.shape
    diam = math.exp(rng.uniform(math.log(3.0), math.log(40.0)))
    diam = max(diam, 2.5 * vs)
    cand = (anat.wm > 0.6) & anat.brain
    centre = fields.choose(rng, cand)
    if centre is None:
        centre = fields.choose(rng, anat.brain)
    rot = fields.random_rotation(rng)
    semi = diam / 2.0 * rng.uniform(0.7, 1.3, 3)
    semi *= diam / 2.0 / fields.portable(np.cbrt, np.prod(semi))  # equivalent-sphere diameter = diam
    has_core = diam > 10.0 and rng.random() < 0.8
    core_ratio = rng.uniform(0.35, 0.7)
    necrotic = has_core and diam * core_ratio > 12.0 and rng.random() < 0.6
    irr_o = rng.uniform(0.15, 0.35)
    irr_c = rng.uniform(0.08, 0.25)
    width_o = rng.uniform(3.0, 7.0) if has_core else rng.uniform(1.5, 3.0) + 0.1 * min(diam, 30.0)
    width_c = rng.uniform(1.0, 2.0)
    finger = rng.uniform(0.15, 0.4) if has_core else 0.0  # oedema follows the WM
    core_shift = rng.uniform(-0.15, 0.15, 3) * semi  # core is off-centre a bit
    # the perturbations below shrink r by at most (1 - irr) * (1 - finger / 2): the
    # box holds every voxel with f > 0, so nothing is cut off at its faces
    scale_mm = float(np.mean(semi))
    semi_c = semi * core_ratio
    scale_c = float(np.mean(semi_c))
    half_o = semi.max() * (1.0 + width_o / (2 * scale_mm)) / ((1 - irr_o) * (1 - finger / 2))
    half_c = semi_c.max() * (1.0 + width_c / (2 * scale_c)) / (1 - irr_c)
    half = max(half_o, half_c + float(np.abs(core_shift).max()) * 1.8) + 2 * vs
    sl = fields.box(centre, [half / vs] * 3, shape)
    d = fields.local_mm(sl, centre, vs)
    sub = tuple(s.stop - s.start for s in sl)
    corr = max(diam / 3.0, 3.0) / vs
    noise = fields.smooth_fields(rng, sub, corr, 2)
    noise += 0.5 * fields.smooth_fields(rng, sub, corr / 2.5, 2)
    r = fields.ellipsoid_radius(d, rot, semi)
    r_o = r * (1.0 + np.float32(irr_o) * np.tanh(noise[0]))
    if finger > 0:
        wm_loc = ndimage.gaussian_filter(anat.wm[sl], 1.0 / vs)
        r_o *= np.float32(1.0 + finger / 2.0) - np.float32(finger) * wm_loc
    brain = anat.brain[sl]
    g_o = fields.profile((1.0 - r_o) * scale_mm, width_o) * brain
    f_o = g_o * (1.0 - anat.csf[sl])
    comps = [dict(sl=sl, f=f_o, g=g_o, spared=True, role="oedema" if has_core else "lesion",
                  depth=1.0 - r_o)]
    if has_core:
        dc = [d[i] - np.float32(sum(rot[i, k] * core_shift[k] for k in range(3))) for i in range(3)]
        rc = fields.ellipsoid_radius(dc, rot, semi_c)
        rc *= 1.0 + np.float32(irr_c) * np.tanh(noise[1])
        f_c = fields.profile((1.0 - rc) * scale_c, width_c) * brain
        comps.append(dict(sl=sl, f=f_c, spared=False, role="core", depth=None))
        if necrotic:
            f_n = fields.profile((rng.uniform(0.45, 0.7) - rc) * scale_c, 2.0) * brain
            comps.append(dict(sl=sl, f=f_n, spared=False, role="necrosis", depth=None))
    info = {"kind": "tumour", "diameter_mm": diam, "has_core": bool(has_core),
            "necrotic": bool(necrotic)}
    return comps, info


def lacune_fraction(rng, anat: Anatomy, diam: float, width: float):
    """A deep lacune of equivalent diameter ``diam`` (mm): an irregular ellipsoid within about
    35 mm of the brain centre, in WM or deep GM. Returns (box, geometric fraction)."""
    vs = anat.voxel_size
    shape, brain = anat.brain.shape, anat.brain
    near = np.zeros(shape, bool)
    near[fields.box(np.argwhere(brain).mean(0), [35.0 / vs] * 3, shape)] = True
    centre = fields.choose(rng, near & brain & (anat.csf < 0.3))
    if centre is None:
        centre = fields.choose(rng, brain)
    rot = fields.random_rotation(rng)
    semi = diam / 2.0 * rng.uniform(0.6, 1.4, 3)
    semi *= diam / 2.0 / fields.portable(np.cbrt, np.prod(semi))
    irr = rng.uniform(0.1, 0.3)
    half = semi.max() * (1.0 + width / (2 * float(np.mean(semi)))) / (1 - irr) + 2 * vs
    sl = fields.box(centre, [half / vs] * 3, shape)
    d = fields.local_mm(sl, centre, vs)
    sub = tuple(s.stop - s.start for s in sl)
    noise = fields.smooth_fields(rng, sub, max(diam / 3.0, 2.0) / vs, 1)[0]
    r = fields.ellipsoid_radius(d, rot, semi) * (1.0 + np.float32(irr) * np.tanh(noise))
    return sl, fields.profile((1.0 - r) * float(np.mean(semi)), width)


def cortical_point(rng, anat: Anatomy):
    """A random direction ``u`` (mostly lateral or antero-posterior) and the last brain voxel
    ``p`` along it from the brain centre, at least 30 mm out when 20 tries allow it."""
    vs = anat.voxel_size
    shape, brain = anat.brain.shape, anat.brain
    centre_b = np.argwhere(brain).mean(0)
    for _ in range(20):
        u = rng.standard_normal(3)
        u[2] *= 0.6  # mostly lateral / antero-posterior territories
        u /= np.linalg.norm(u)
        p = centre_b.copy()
        step = 0.5 * u  # voxels
        while True:
            q = p + step
            qi = np.round(q).astype(int)
            if np.any(qi < 0) or np.any(qi >= shape) or not brain[tuple(qi)]:
                break
            p = q
        if np.linalg.norm((p - centre_b) * vs) > 30.0:
            break
    return p, u, float(np.linalg.norm((p - centre_b) * vs))


def wedge_fraction(rng, anat: Anatomy, surf, u, depth: float, theta: float, length: float,
                   width: float):
    """A cortical wedge: a cone of half-angle ``theta`` (radians) whose apex lies ``depth`` mm
    inside the cortex point ``surf`` along ``u``, ``length`` mm long, with irregular sides and
    cap. Returns (box, geometric fraction)."""
    vs = anat.voxel_size
    apex = surf - u * depth / vs
    half = length + width + 2 * vs
    mid = apex + u * (length / 2.0) / vs
    sl = fields.box(mid, [half / vs] * 3, anat.brain.shape)
    d = fields.local_mm(sl, apex, vs)
    sub = tuple(s.stop - s.start for s in sl)
    noise = fields.smooth_fields(rng, sub, max(depth * math.tan(theta) / 2.0, 3.0) / vs, 2)
    dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2).astype(np.float32)
    along = (np.float32(u[0]) * d[0] + np.float32(u[1]) * d[1]) + np.float32(u[2]) * d[2]
    cosang = along / np.maximum(dist, np.float32(1e-3))
    ang = fields.portable(np.arccos, np.clip(cosang, -1.0, 1.0))
    irr = rng.uniform(0.15, 0.35)
    th = np.float32(theta) * (1.0 + np.float32(irr) * np.tanh(noise[0]))
    # signed distances (mm) to the cone's side and to its far cap
    s_side = dist * np.sin(np.clip(th - ang, -np.pi / 2, np.pi / 2)).astype(np.float32)
    s_cap = np.float32(length) * (1.0 + np.float32(0.1) * np.tanh(noise[1])) - dist
    return sl, fields.profile(np.minimum(s_side, s_cap), width)


def stroke_geometry(rng, anat: Anatomy, vs: float):
    brain = anat.brain
    lacune = rng.random() < 0.25
    width = rng.uniform(1.5, 3.5)
    if lacune:
        diam = max(float(rng.uniform(3.0, 15.0)), 2.5 * vs)
        sl, f = lacune_fraction(rng, anat, diam, width)
        info = {"kind": "stroke", "subtype": "lacunar", "diameter_mm": diam}
    else:
        surf, u, reach_mm = cortical_point(rng, anat)
        depth = rng.uniform(15.0, 50.0)
        depth = min(depth, 0.8 * reach_mm)
        theta = np.deg2rad(rng.uniform(12.0, 40.0))
        length = depth * rng.uniform(1.05, 1.25)
        sl, f = wedge_fraction(rng, anat, surf, u, depth, theta, length, width)
        info = {"kind": "stroke", "subtype": "territorial", "depth_mm": depth,
                "angle_deg": float(np.rad2deg(theta))}
    g = (f * brain[sl]).astype(np.float32)
    f = g * (1.0 - anat.csf[sl])
    return [dict(sl=sl, f=f, g=g, spared=True, role="lesion", depth=None)], info


def paint(comps, info, *, values: dict, het, grad, sign, margin, alpha, anat: Anatomy, mu, par,
          cs, lesion_frac, label_roles=("lesion", "oedema", "core")) -> None:
    """Write one lesion's components into the signal (in place) and, for the roles in
    ``label_roles``, its fraction into ``lesion_frac``; the blending rules of the module
    docstring.  ``values`` maps a role to its nominal mean ("main" for lesion and oedema); each
    other role's mean is recorded in ``info`` as ``<role>_contrast`` (x WM mean)."""
    for comp in comps:
        sl, f, role = comp["sl"], comp["f"], comp["role"]
        if role in ("lesion", "oedema"):
            val = values["main"]
        else:
            val = values[role]
            info[f"{role}_contrast"] = float(val / mu["wm"])
        lv = np.float32(het) * anat.tex_coarse[1][sl] + np.float32(1.0)
        lv += np.float32(0.5 * het) * anat.tex_fine[sl]
        if comp["depth"] is not None and grad > 0:
            lv += np.float32(sign * grad) * (np.clip(comp["depth"], 0.0, 1.0) - np.float32(0.3))
        lv *= np.float32(val)
        pr = par[sl]
        if comp["spared"]:
            # oedema / infarct replace the parenchymal part of the voxel only,
            # and are always at least a little brighter (T1: darker) than the
            # parenchyma they replace (so an infarct is hyper-intense to cortex)
            g = comp["g"]
            pm = 1.0 - anat.csf[sl]
            local = pr / np.maximum(pm, np.float32(0.05))
            if alpha > 0:  # keep part of the underlying GM/WM pattern
                lv = np.float32(1.0 - alpha) * lv + np.float32(alpha * val / mu["wm"]) * local
            if sign < 0:
                lv = np.minimum(lv, local * np.float32(1.0 - margin))
            else:
                lv = np.maximum(lv, local * np.float32(1.0 + margin))
            pr += g * (pm * lv - pr)
        else:
            # a tumour core displaces everything, CSF included
            pr += f * (lv - pr)
            c = cs[sl]
            c -= f * c
        if role in label_roles:
            np.maximum(lesion_frac[sl], f, out=lesion_frac[sl])


def add_lesions(seed: int, anat: Anatomy, mu, par, cs, modality: str, mi: int,
                n_lesions, kind: str):
    """Draw and paint the lesions of case ``seed`` (in place on ``par``/``cs``).

    Returns the combined lesion fraction and one info dict per lesion (each still holding its
    components under ``"_comps"`` for the caller's per-lesion statistics).
    """
    shape = anat.brain.shape
    vs = anat.voxel_size
    lrng = np.random.default_rng([seed, 100])
    crng = np.random.default_rng([seed, 20 + mi])
    if isinstance(n_lesions, (tuple, list)):
        lo, hi = (int(v) for v in n_lesions)
        if lo < 0 or hi < lo:
            raise ValueError(f"bad n_lesions range {n_lesions!r}")
        n = int(lrng.integers(lo, hi + 1))
    else:
        n = int(n_lesions)
        if n < 0:
            raise ValueError("n_lesions must be >= 0")
    lesion_frac = np.zeros(shape, np.float32)
    lesions = []
    for i in range(n):
        k = kind if kind != "any" else ("tumour" if lrng.random() < 0.5 else "stroke")
        severity = lrng.uniform(0.0, 1.0)  # uniform: faint to conspicuous
        for attempt in range(10):  # redraw lesions that would leave (almost) no label
            grng = np.random.default_rng([seed, 100, i, attempt])  # this lesion's geometry
            comps, info = (tumour_geometry(grng, anat, vs) if k == "tumour"
                           else stroke_geometry(grng, anat, vs))
            n_vox = sum(int((c["f"] >= 0.5).sum()) for c in comps if c["role"] != "necrosis")
            if n_vox >= MIN_LESION_VOXELS:
                break
        sev_m = float(np.clip(severity + crng.normal(0.0, 0.1), 0.0, 1.0))
        main = lesion_means(sev_m, mu, modality)
        # a solid tumour core: on FLAIR/T2 as bright or brighter, on T1 darker
        if modality in T1_LIKE:
            core = lesion_means(min(1.0, sev_m + crng.uniform(0.0, 0.4)), mu, modality)
        else:
            core = lesion_means(min(1.0, sev_m + crng.uniform(-0.1, 0.35)), mu, modality)
        necro = necrosis_mean(crng, mu, modality)
        het = crng.uniform(0.04, 0.10) if k == "tumour" else crng.uniform(0.03, 0.07)
        grad = crng.uniform(0.05, 0.3)  # oedema: stronger towards the core
        sign = -1.0 if modality in T1_LIKE else 1.0
        margin = crng.uniform(0.04, 0.1)
        alpha = lrng.uniform(0.3, 0.8) if k == "stroke" else lrng.uniform(0.0, 0.5)
        info.update(severity=float(severity), contrast=float(main / mu["wm"]))
        paint(comps, info, values={"main": main, "core": core, "necrosis": necro}, het=het,
              grad=grad, sign=sign, margin=margin, alpha=alpha, anat=anat, mu=mu, par=par,
              cs=cs, lesion_frac=lesion_frac)
        info["_comps"] = comps
        lesions.append(info)
    return lesion_frac, lesions
