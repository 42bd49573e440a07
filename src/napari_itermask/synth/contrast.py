"""Tissue contrast of the synthetic brains: per-case tissue means and the normal-tissue signal.

Per-case tissue means keep the usual ordering (T1: WM > GM > CSF, T2: CSF > GM > WM, FLAIR:
GM > WM > CSF), each varied by about +-12 %, mixed by partial volume, with a fine and a coarse
multiplicative within-tissue texture (stream ``[seed, 10 + contrast index]``).  Lesion means are
expressed against these tissue means (see ``lesion_means``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["T1_LIKE", "TISSUE_RATIOS", "enhancing_structures", "lesion_means", "necrosis_mean",
           "normal_tissue", "tissue_means"]


# Nominal tissue means relative to the WM mean, and the +- relative jitter
# applied to each per case.  The ranges keep the ordering in every draw.
TISSUE_RATIOS = {
    #         GM/WM  CSF/WM
    "t1": (0.70, 0.30),
    "t2": (1.40, 2.80),
    "flair": (1.30, 0.25),
    "t1ce": (0.70, 0.30),  # post-contrast T1: T1 tissue; enhancing structures are added apart
}
T1_LIKE = ("t1", "t1ce")  # contrasts where lesions are darker than the tissue they replace
TISSUE_JITTER = 0.12

# Lesion contrast ranges (see lesion_means).  For FLAIR and T2 the value t is
# the lesion mean expressed as WM + t * (GM - WM); for T1 the value u is the
# lesion mean expressed as CSF + u * (GM - CSF).
FLAIR_T = (0.3, 2.2)  # just above WM ... well above GM (1.09-1.66 x WM)
T2_T = (0.8, 3.5)  # above WM ... between GM and CSF
T1_U = (0.95, 0.15)  # just below GM ... close to CSF (severity 0 -> 1)

def tissue_means(rng, modality: str):
    wm = rng.uniform(400.0, 800.0)
    rg, rc = TISSUE_RATIOS[modality]
    j = TISSUE_JITTER
    gm = wm * rg * rng.uniform(1 - j, 1 + j)
    csf = wm * rc * rng.uniform(1 - j, 1 + j)
    # keep the ordering whatever the draw
    if modality in T1_LIKE:
        gm = min(gm, 0.85 * wm)
        csf = min(csf, 0.6 * gm)
    elif modality == "t2":
        gm = max(gm, 1.15 * wm)
        csf = max(csf, 1.5 * gm)
    else:
        gm = max(gm, 1.12 * wm)
        csf = min(csf, 0.5 * wm)
    return {"gm": gm, "wm": wm, "csf": csf}


def lesion_means(severity: float, mu, modality: str) -> float:
    """Nominal mean intensity of lesion tissue for a severity in [0, 1]."""
    s = float(np.clip(severity, 0.0, 1.0))
    if modality == "flair":
        t = FLAIR_T[0] + s * (FLAIR_T[1] - FLAIR_T[0])
        return mu["wm"] + t * (mu["gm"] - mu["wm"])
    if modality == "t2":
        t = T2_T[0] + s * (T2_T[1] - T2_T[0])
        return mu["wm"] + t * (mu["gm"] - mu["wm"])
    u = T1_U[0] + s * (T1_U[1] - T1_U[0])
    return mu["csf"] + u * (mu["gm"] - mu["csf"])


def necrosis_mean(rng, mu, modality: str):
    if modality == "flair":  # fluid is suppressed: between CSF and WM
        return mu["csf"] + rng.uniform(0.3, 0.9) * (mu["wm"] - mu["csf"])
    if modality == "t2":  # fluid: bright, close to CSF
        return mu["gm"] + rng.uniform(0.6, 1.0) * (mu["csf"] - mu["gm"])
    return mu["csf"] * rng.uniform(1.0, 1.6)


def normal_tissue(irng, anat, modality: str):
    """Tissue means and the normal signal: (mu, parenchymal GM + WM part, CSF part).

    Draws from ``irng`` in a fixed order (means, texture amplitudes); the caller draws the
    acquisition parameters from the same stream afterwards.
    """
    shape = anat.brain.shape
    mu = tissue_means(irng, modality)
    tex_amp = {"gm": irng.uniform(0.02, 0.04), "wm": irng.uniform(0.015, 0.03),
               "csf": irng.uniform(0.02, 0.05)}
    coarse_amp = irng.uniform(0.02, 0.04)
    par = np.zeros(shape, np.float32)  # parenchymal (GM + WM) part of the signal
    for name, frac in (("gm", anat.gm), ("wm", anat.wm), ("csf", anat.csf)):
        t = np.float32(tex_amp[name]) * anat.tex_fine
        t += np.float32(coarse_amp * (-1.0 if name == "csf" else 1.0)) * anat.tex_coarse[0]
        t += np.float32(1.0)
        t *= frac
        t *= np.float32(mu[name])
        if name == "csf":
            cs = t  # CSF part of the signal
        else:
            par += t
    return mu, par, cs


def enhancing_structures(seed: int, anat, mu, cs: np.ndarray) -> dict:
    """Normal structures that enhance on post-contrast T1 (stream ``[seed, 400]``), written into
    the CSF part of the signal ``cs`` in place: choroid plexus (blobs in the deep ventricular
    CSF) and vessels / dural folds (thin sheets and tubes in the superficial sulcal CSF).
    Returns their shares of the brain for the record."""
    from scipy import ndimage

    from . import fields

    rng = np.random.default_rng([seed, 400])
    vs = anat.voxel_size
    depth_mm = ndimage.distance_transform_edt(anat.brain) * vs
    # choroid plexus: about a fifth of the deep ventricular CSF, 1.3-1.8 x WM
    vent = (anat.csf > 0.8) & (depth_mm > 25.0)
    blob = fields.smooth_fields(rng, anat.brain.shape, 4.0 / vs, 1)[0]
    plexus = np.zeros(anat.brain.shape, np.float32)
    if vent.any():
        cut = np.quantile(blob[vent], 0.8)
        plexus = fields.profile((blob - np.float32(cut)) * np.float32(4.0), 1.0) * vent
    # vessels and dura: a thin iso-surface band of a smooth field in superficial CSF
    sulcal = (anat.csf > 0.4) & (depth_mm < 8.0)
    band = fields.smooth_fields(rng, anat.brain.shape, 3.0 / vs, 1)[0]
    vessel = fields.profile(np.float32(0.12) - np.abs(band), 0.08) * sulcal
    v_plexus = mu["wm"] * rng.uniform(1.3, 1.8)
    v_vessel = mu["wm"] * rng.uniform(1.1, 1.6)
    for frac, val in ((plexus, v_plexus), (vessel, v_vessel)):
        # a share ``frac`` of the voxel's CSF compartment becomes enhancing tissue
        cs += frac.astype(np.float32) * (np.float32(val) * anat.csf - cs)
    n = max(int(anat.brain.sum()), 1)
    return {"plexus_share": float((plexus >= 0.5).sum() / n),
            "vessel_share": float((vessel >= 0.5).sum() / n)}
