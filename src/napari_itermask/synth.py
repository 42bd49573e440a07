"""Synthetic skull-stripped brain MRIs with exact lesion ground truth.

The anatomy comes from the ICBM152 2009a (symmetric) template that ships inside
the nilearn wheel (T1 image plus grey- and white-matter probability maps).  It
is read straight from the package data folder; nilearn's fetchers are never
called and nilearn itself is never imported.

Every case is built as follows (all randomness from ``numpy.random.default_rng``
streams derived from the seed, so a seed gives bit-identical arrays):

1. **Anatomy** (stream ``[seed, 0]``, shared by all modalities): a small random
   affine (rotation up to 5 degrees per axis, scale within +-5 %, shift up to
   3 mm), a smooth elastic displacement field (a few mm), a radial
   enlargement/shrinkage of the ventricular region and a random amount of
   sulcal widening are composed and the template's tissue fractions are
   resampled through them.  The deformed brain mask is ``brain fraction >= 0.5``.
2. **Intensities** (stream ``[seed, 10 + modality index]``): per-case tissue
   means with the usual ordering (T1: WM > GM > CSF, T2: CSF > GM > WM,
   FLAIR: GM > WM > CSF), each varied by about +-12 %, mixed by partial volume,
   with a fine and a coarse multiplicative within-tissue texture.
3. **Lesions** (number, kinds and severities from stream ``[seed, 100]``, the
   geometry of lesion ``i`` from ``[seed, 100, i, attempt]``, shared by all modalities;
   contrast from stream ``[seed, 20 + modality index]``): tumour-like (an
   irregular core, optionally necrotic, inside a larger irregular oedema) or
   stroke-like (a cortical wedge/territory or a small deep lacune).  Every
   lesion component has a partial-volume fraction ``f`` in ``[0, 1]`` with a
   smooth border; the voxel intensity is ``(1 - f) * normal + f * lesion``.
   Oedema and infarct replace only the parenchymal (GM + WM) part of a voxel
   (``f`` = geometric fraction x parenchymal fraction), a tumour core
   replaces everything.  The nominal lesion mean is drawn per lesion and
   modality (see ``_FLAIR_T``, ``_T2_T``, ``_T1_U``: FLAIR from between WM and
   GM to well above GM, T2 from above WM to between GM and CSF, T1 between CSF and
   GM), with severities drawn uniformly, so lesion intensities
   overlap those of normal tissue; locally it is blended with the underlying
   GM/WM pattern and kept at least 4-10 % brighter (T1: darker) than the
   parenchyma it replaces.  ``lesions[i]["contrast"]`` is that nominal mean
   divided by the WM mean.
4. Optional **skull-strip leftover** (``leftover=True``, stream ``[seed, 300]``):
   patches of a thin shell just outside the brain (dura, scalp fat, marrow that a
   loose skull strip keeps) with their own intensity, 0.5-1.8 x the WM mean.  They
   are part of the image's non-zero region but not of ``brain`` and never lesion.
5. Slight Gaussian blur, a smooth multiplicative bias field (+-10-20 %) and
   Rician noise (2-5 % of the WM mean).  Background is exactly 0; every brain
   voxel is strictly positive.

**Label definition**: a voxel is lesion (label 1) iff it is inside the deformed
brain mask and the combined lesion fraction ``max_k f_k`` (over all lesion
components, after the CSF sparing) is ``>= 0.5``, i.e. the voxel is at least
half lesion.  The label therefore depends only on the seed and the voxel size,
never on the modality.

The anatomy and tissue intensities of ``make_case(m, s)`` and
``make_healthy(m, s)`` are the same; only the lesions differ.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pathlib
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "MODALITIES",
    "KINDS",
    "SynthCase",
    "template_dir",
    "make_case",
    "make_healthy",
    "leftover_rim",
    "to_nifti",
    "write_case",
]

MODALITIES = ("flair", "t1", "t2")
KINDS = ("tumour", "stroke", "any")

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

# Nominal tissue means relative to the WM mean, and the +- relative jitter
# applied to each per case.  The ranges keep the ordering in every draw.
_TISSUE_RATIOS = {
    #         GM/WM  CSF/WM
    "t1": (0.70, 0.30),
    "t2": (1.40, 2.80),
    "flair": (1.30, 0.25),
}
_TISSUE_JITTER = 0.12

# Lesion contrast ranges (see _lesion_means).  For FLAIR and T2 the value t is
# the lesion mean expressed as WM + t * (GM - WM); for T1 the value u is the
# lesion mean expressed as CSF + u * (GM - CSF).
_FLAIR_T = (0.3, 2.2)  # just above WM ... well above GM (1.09-1.66 x WM)
_T2_T = (0.8, 3.5)  # above WM ... between GM and CSF
_T1_U = (0.95, 0.15)  # just below GM ... close to CSF (severity 0 -> 1)

_RICIAN_FLOOR = 1e-3  # brain voxels are at least this fraction of the WM mean
_MIN_LESION_VOXELS = 4  # a lesion smaller than this (after CSF sparing) is redrawn


@dataclass
class SynthCase:
    """One synthetic skull-stripped MRI volume and its lesion label."""

    image: np.ndarray  # float32 (X, Y, Z), RAS voxel order, 0 outside the brain
    label: np.ndarray  # uint8 (X, Y, Z), 1 = lesion; all zero for healthy cases
    brain: np.ndarray  # bool (X, Y, Z)
    affine: np.ndarray  # (4, 4) float64, voxel -> world (mm, RAS)
    modality: str
    seed: int
    lesions: list = field(default_factory=list)  # one dict per lesion

    @property
    def voxel_size(self) -> float:
        return float(np.linalg.norm(self.affine[:3, 0]))


# --------------------------------------------------------------------------
# template
# --------------------------------------------------------------------------


def template_dir() -> pathlib.Path:
    """Folder holding the ICBM152 2009a files inside the installed nilearn."""
    spec = importlib.util.find_spec("nilearn")  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed; it provides the ICBM152 template")
    for root in spec.submodule_search_locations:
        d = pathlib.Path(root) / "datasets" / "data"
        if all((d / f).is_file() for f in _TEMPLATE_FILES.values()):
            return d
    raise FileNotFoundError("the ICBM152 2009a template files were not found in nilearn")


@dataclass(frozen=True)
class _Template:
    gm: np.ndarray  # float32 partial-volume fractions, zero outside the brain
    wm: np.ndarray
    brain: np.ndarray  # float32 brain fraction (0..1)
    affine: np.ndarray
    voxel_size: float
    centre: np.ndarray  # brain centroid, voxel coordinates
    vent_centre: np.ndarray  # centre of the lateral ventricles, voxel coords


@functools.lru_cache(maxsize=4)
def _load_template(voxel_size: float) -> _Template:
    d = template_dir()
    imgs = {k: nib.load(str(d / f)) for k, f in _TEMPLATE_FILES.items()}
    t1 = np.asarray(imgs["t1"].dataobj)
    brain = (t1 > 0).astype(np.float32)
    gm = np.asarray(imgs["gm"].dataobj).astype(np.float32) / 255.0 * brain
    wm = np.asarray(imgs["wm"].dataobj).astype(np.float32) / 255.0 * brain
    over = gm + wm
    scale = np.where(over > 1.0, 1.0 / np.maximum(over, 1e-6), 1.0).astype(np.float32)
    gm *= scale
    wm *= scale
    aff0 = imgs["t1"].affine.astype(np.float64)
    src_vs = float(np.linalg.norm(aff0[:3, 0]))
    f = voxel_size / src_vs
    if abs(f - 1.0) > 1e-9:
        shape = tuple(int(math.floor((n - 1) / f)) + 1 for n in t1.shape)
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
    for a in (gm, wm, brain):
        a.setflags(write=False)
    return _Template(gm, wm, brain, affine, float(voxel_size), centre, vent)


# --------------------------------------------------------------------------
# random fields
# --------------------------------------------------------------------------


def _basis(n: int, spacing: float) -> np.ndarray:
    """Gaussian radial basis along one axis, rows normalised to unit L2 norm."""
    spacing = max(float(spacing), 1.0)
    k = int(math.ceil((n - 1 + 2 * spacing) / spacing)) + 1
    centres = np.linspace(-spacing, n - 1 + spacing, k)
    x = np.arange(n, dtype=np.float64)[:, None]
    b = np.exp(-0.5 * ((x - centres[None]) / (0.75 * spacing)) ** 2)
    b /= np.sqrt((b * b).sum(1, keepdims=True))
    return b.astype(np.float32)


def _smooth_fields(
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
    bs = [_basis(s, spacing) for s in shape]
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


def _fine_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """White noise smoothed by a Gaussian of ``sigma`` voxels, unit std."""
    a = rng.standard_normal(shape, dtype=np.float32)
    a = ndimage.gaussian_filter(a, sigma, mode="reflect")
    s = float(a.std())
    return a / (s if s > 0 else 1.0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _profile(signed_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance (mm, > 0 inside).

    Exactly 0.5 on the surface, 1 deeper than ``width_mm / 2`` inside and 0
    beyond ``width_mm / 2`` outside.
    """
    return _smoothstep(0.5 + signed_mm / max(width_mm, 1e-3)).astype(np.float32)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _euler(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry),
                              math.cos(rz), math.sin(rz))
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


# --------------------------------------------------------------------------
# anatomy
# --------------------------------------------------------------------------


@dataclass
class _Anatomy:
    gm: np.ndarray  # fractions normalised to sum 1 inside the brain
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # bool
    tex_fine: np.ndarray  # unit-std fine texture
    tex_coarse: np.ndarray  # (2, ...) unit-std coarse texture: tissue, lesions
    affine: np.ndarray
    voxel_size: float


@functools.lru_cache(maxsize=3)
def _anatomy(seed: int, voxel_size: float) -> _Anatomy:
    tpl = _load_template(voxel_size)
    rng = np.random.default_rng([seed, 0])
    vs = voxel_size
    shape = tpl.gm.shape

    # small affine: rotation <= 5 deg per axis, scale within +-5 %, shift <= 3 mm
    ang = np.deg2rad(rng.uniform(-5.0, 5.0, 3))
    rot = _euler(*ang)
    scale = np.clip(rng.uniform(0.96, 1.04) * rng.uniform(0.985, 1.015, 3), 0.95, 1.05)
    shift = rng.uniform(-3.0, 3.0, 3) / vs
    m = (rot @ np.diag(1.0 / scale)).astype(np.float32)  # output -> template
    c = tpl.centre.astype(np.float32)

    # elastic displacement (template voxels): control points every 14 mm with
    # mostly large-scale (smoothed) coefficients, 1.5 - 3 mm standard deviation
    amp = rng.uniform(1.5, 3.0) / vs
    disp = _smooth_fields(rng, shape, 14.0 / vs, 3, coarse=0.85)
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

    tex_fine = _fine_noise(rng, shape, 0.9 / vs)
    tex_coarse = _smooth_fields(rng, shape, 8.0 / vs, 2)  # [0] tissue, [1] lesions
    for a in (gm, wm, csf, brain, tex_fine, tex_coarse):
        a.setflags(write=False)
    return _Anatomy(gm, wm, csf, brain, tex_fine, tex_coarse, tpl.affine.copy(), vs)


# --------------------------------------------------------------------------
# lesions
# --------------------------------------------------------------------------


def _box(centre_vox, half_vox, shape):
    lo = [max(int(math.floor(c - h)), 0) for c, h in zip(centre_vox, half_vox)]
    hi = [min(int(math.ceil(c + h)) + 1, n) for c, h, n in zip(centre_vox, half_vox, shape)]
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _local_mm(sl, centre_vox, vs):
    """Broadcastable offsets (mm) of the voxels in box ``sl`` from centre."""
    return [
        ((np.arange(s.start, s.stop, dtype=np.float32) - np.float32(centre_vox[i])) * vs).reshape(
            [-1 if j == i else 1 for j in range(3)]
        )
        for i, s in enumerate(sl)
    ]


def _ellipsoid_radius(d, rot, semi):
    """Normalised ellipsoid radius (1 on the surface) for offsets ``d`` (mm)."""
    r2 = 0.0
    for k in range(3):
        p = rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2]
        r2 = r2 + (p / np.float32(semi[k])) ** 2
    return np.sqrt(r2).astype(np.float32)


def _choose(rng, mask):
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return None
    return np.array(np.unravel_index(idx[rng.integers(len(idx))], mask.shape), np.float64)


def _tumour(rng, anat: _Anatomy, vs: float):
    """Geometry of a tumour: list of components (dicts with sl, f, role, depth)."""
    shape = anat.brain.shape
    diam = float(np.exp(rng.uniform(np.log(3.0), np.log(40.0))))
    diam = max(diam, 2.5 * vs)
    cand = (anat.wm > 0.6) & anat.brain
    centre = _choose(rng, cand)
    if centre is None:
        centre = _choose(rng, anat.brain)
    rot = _random_rotation(rng)
    semi = diam / 2.0 * rng.uniform(0.7, 1.3, 3)
    semi *= diam / 2.0 / np.cbrt(np.prod(semi))  # equivalent-sphere diameter = diam
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
    sl = _box(centre, [half / vs] * 3, shape)
    d = _local_mm(sl, centre, vs)
    sub = tuple(s.stop - s.start for s in sl)
    corr = max(diam / 3.0, 3.0) / vs
    noise = _smooth_fields(rng, sub, corr, 2)
    noise += 0.5 * _smooth_fields(rng, sub, corr / 2.5, 2)
    r = _ellipsoid_radius(d, rot, semi)
    r_o = r * (1.0 + np.float32(irr_o) * np.tanh(noise[0]))
    if finger > 0:
        wm_loc = ndimage.gaussian_filter(anat.wm[sl], 1.0 / vs)
        r_o *= np.float32(1.0 + finger / 2.0) - np.float32(finger) * wm_loc
    brain = anat.brain[sl]
    g_o = _profile((1.0 - r_o) * scale_mm, width_o) * brain
    f_o = g_o * (1.0 - anat.csf[sl])
    comps = [dict(sl=sl, f=f_o, g=g_o, spared=True, role="oedema" if has_core else "lesion",
                  depth=1.0 - r_o)]
    if has_core:
        dc = [d[i] - np.float32(sum(rot[i, k] * core_shift[k] for k in range(3))) for i in range(3)]
        rc = _ellipsoid_radius(dc, rot, semi_c) * (1.0 + np.float32(irr_c) * np.tanh(noise[1]))
        f_c = _profile((1.0 - rc) * scale_c, width_c) * brain
        comps.append(dict(sl=sl, f=f_c, spared=False, role="core", depth=None))
        if necrotic:
            f_n = _profile((rng.uniform(0.45, 0.7) - rc) * scale_c, 2.0) * brain
            comps.append(dict(sl=sl, f=f_n, spared=False, role="necrosis", depth=None))
    info = {"kind": "tumour", "diameter_mm": diam, "has_core": bool(has_core),
            "necrotic": bool(necrotic)}
    return comps, info


def _stroke(rng, anat: _Anatomy, vs: float):
    shape = anat.brain.shape
    brain = anat.brain
    centre_b = np.argwhere(brain).mean(0)
    lacune = rng.random() < 0.25
    width = rng.uniform(1.5, 3.5)
    if lacune:
        diam = max(float(rng.uniform(3.0, 15.0)), 2.5 * vs)
        # deep: within ~35 mm of the brain centre, in WM or deep GM
        near = np.zeros(shape, bool)
        sl0 = _box(centre_b, [35.0 / vs] * 3, shape)
        near[sl0] = True
        centre = _choose(rng, near & brain & (anat.csf < 0.3))
        if centre is None:
            centre = _choose(rng, brain)
        rot = _random_rotation(rng)
        semi = diam / 2.0 * rng.uniform(0.6, 1.4, 3)
        semi *= diam / 2.0 / np.cbrt(np.prod(semi))
        irr = rng.uniform(0.1, 0.3)
        half = semi.max() * (1.0 + width / (2 * float(np.mean(semi)))) / (1 - irr) + 2 * vs
        sl = _box(centre, [half / vs] * 3, shape)
        d = _local_mm(sl, centre, vs)
        sub = tuple(s.stop - s.start for s in sl)
        noise = _smooth_fields(rng, sub, max(diam / 3.0, 2.0) / vs, 1)[0]
        r = _ellipsoid_radius(d, rot, semi) * (1.0 + np.float32(irr) * np.tanh(noise))
        f = _profile((1.0 - r) * float(np.mean(semi)), width)
        info = {"kind": "stroke", "subtype": "lacunar", "diameter_mm": diam}
    else:
        # cortical wedge: a cone whose base lies on the cortex
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
        surf = p
        depth = rng.uniform(15.0, 50.0)
        depth = min(depth, 0.8 * float(np.linalg.norm((surf - centre_b) * vs)))
        theta = np.deg2rad(rng.uniform(12.0, 40.0))
        apex = surf - u * depth / vs
        length = depth * rng.uniform(1.05, 1.25)
        half = length + width + 2 * vs
        mid = apex + u * (length / 2.0) / vs
        sl = _box(mid, [half / vs] * 3, shape)
        d = _local_mm(sl, apex, vs)
        sub = tuple(s.stop - s.start for s in sl)
        noise = _smooth_fields(rng, sub, max(depth * np.tan(theta) / 2.0, 3.0) / vs, 2)
        dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2).astype(np.float32)
        along = (np.float32(u[0]) * d[0] + np.float32(u[1]) * d[1]) + np.float32(u[2]) * d[2]
        cosang = along / np.maximum(dist, np.float32(1e-3))
        ang = np.arccos(np.clip(cosang, -1.0, 1.0))
        irr = rng.uniform(0.15, 0.35)
        th = np.float32(theta) * (1.0 + np.float32(irr) * np.tanh(noise[0]))
        # signed distances (mm) to the cone's side and to its far cap
        s_side = dist * np.sin(np.clip(th - ang, -np.pi / 2, np.pi / 2)).astype(np.float32)
        s_cap = np.float32(length) * (1.0 + np.float32(0.1) * np.tanh(noise[1])) - dist
        f = _profile(np.minimum(s_side, s_cap), width)
        info = {"kind": "stroke", "subtype": "territorial", "depth_mm": depth,
                "angle_deg": float(np.rad2deg(theta))}
    g = (f * brain[sl]).astype(np.float32)
    f = g * (1.0 - anat.csf[sl])
    return [dict(sl=sl, f=f, g=g, spared=True, role="lesion", depth=None)], info


# --------------------------------------------------------------------------
# intensities
# --------------------------------------------------------------------------


def _tissue_means(rng, modality: str):
    wm = rng.uniform(400.0, 800.0)
    rg, rc = _TISSUE_RATIOS[modality]
    j = _TISSUE_JITTER
    gm = wm * rg * rng.uniform(1 - j, 1 + j)
    csf = wm * rc * rng.uniform(1 - j, 1 + j)
    # keep the ordering whatever the draw
    if modality == "t1":
        gm = min(gm, 0.85 * wm)
        csf = min(csf, 0.6 * gm)
    elif modality == "t2":
        gm = max(gm, 1.15 * wm)
        csf = max(csf, 1.5 * gm)
    else:
        gm = max(gm, 1.12 * wm)
        csf = min(csf, 0.5 * wm)
    return {"gm": gm, "wm": wm, "csf": csf}


def _lesion_means(severity: float, mu, modality: str) -> float:
    """Nominal mean intensity of lesion tissue for a severity in [0, 1]."""
    s = float(np.clip(severity, 0.0, 1.0))
    if modality == "flair":
        t = _FLAIR_T[0] + s * (_FLAIR_T[1] - _FLAIR_T[0])
        return mu["wm"] + t * (mu["gm"] - mu["wm"])
    if modality == "t2":
        t = _T2_T[0] + s * (_T2_T[1] - _T2_T[0])
        return mu["wm"] + t * (mu["gm"] - mu["wm"])
    u = _T1_U[0] + s * (_T1_U[1] - _T1_U[0])
    return mu["csf"] + u * (mu["gm"] - mu["csf"])


def _necrosis_mean(rng, mu, modality: str):
    if modality == "flair":  # fluid is suppressed: between CSF and WM
        return mu["csf"] + rng.uniform(0.3, 0.9) * (mu["wm"] - mu["csf"])
    if modality == "t2":  # fluid: bright, close to CSF
        return mu["gm"] + rng.uniform(0.6, 1.0) * (mu["csf"] - mu["gm"])
    return mu["csf"] * rng.uniform(1.0, 1.6)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def _check(modality: str, kind: str, seed, voxel_size) -> tuple[str, str, int, float]:
    if not isinstance(modality, str) or modality.lower() not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not isinstance(kind, str) or kind.lower() not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    vs = float(voxel_size)
    if not (0.5 <= vs <= 8.0):
        raise ValueError(f"voxel_size must be between 0.5 and 8 mm, got {voxel_size!r}")
    return modality.lower(), kind.lower(), int(seed), vs


def make_case(
    modality: str,
    seed: int,
    *,
    n_lesions: int | tuple[int, int] = (1, 3),
    kind: str = "any",
    voxel_size: float = 1.5,
    leftover: bool = False,
) -> SynthCase:
    """Generate one synthetic skull-stripped brain MRI with lesions.

    ``n_lesions`` is a count or an inclusive ``(min, max)`` range (0 gives a
    healthy brain); ``kind`` is ``"tumour"``, ``"stroke"`` or ``"any"``.  The
    same seed gives the same anatomy and lesion geometry for every modality.
    ``leftover=True`` adds skull-strip leftovers outside ``brain`` (step 4 above);
    everything else about the case stays the same.
    """
    modality, kind, seed, vs = _check(modality, kind, seed, voxel_size)
    mi = MODALITIES.index(modality)
    anat = _anatomy(seed, vs)
    shape = anat.brain.shape

    # ---- normal tissue -------------------------------------------------
    irng = np.random.default_rng([seed, 10 + mi])
    mu = _tissue_means(irng, modality)
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
    blur_mm = irng.uniform(0.35, 0.7)
    bias_amp = irng.uniform(0.10, 0.20)
    noise_frac = irng.uniform(0.02, 0.05)

    # ---- lesions ---------------------------------------------------------
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
            comps, info = _tumour(grng, anat, vs) if k == "tumour" else _stroke(grng, anat, vs)
            n_vox = sum(int((c["f"] >= 0.5).sum()) for c in comps if c["role"] != "necrosis")
            if n_vox >= _MIN_LESION_VOXELS:
                break
        sev_m = float(np.clip(severity + crng.normal(0.0, 0.1), 0.0, 1.0))
        main = _lesion_means(sev_m, mu, modality)
        # a solid tumour core: on FLAIR/T2 as bright or brighter, on T1 darker
        if modality == "t1":
            core = _lesion_means(min(1.0, sev_m + crng.uniform(0.0, 0.4)), mu, modality)
        else:
            core = _lesion_means(min(1.0, sev_m + crng.uniform(-0.1, 0.35)), mu, modality)
        necro = _necrosis_mean(crng, mu, modality)
        het = crng.uniform(0.04, 0.10) if k == "tumour" else crng.uniform(0.03, 0.07)
        grad = crng.uniform(0.05, 0.3)  # oedema: stronger towards the core
        sign = -1.0 if modality == "t1" else 1.0
        margin = crng.uniform(0.04, 0.1)
        alpha = lrng.uniform(0.3, 0.8) if k == "stroke" else lrng.uniform(0.0, 0.5)
        info.update(severity=float(severity), contrast=float(main / mu["wm"]))
        for comp in comps:
            sl, f, role = comp["sl"], comp["f"], comp["role"]
            if role == "core":
                val, info["core_contrast"] = core, float(core / mu["wm"])
            elif role == "necrosis":
                val, info["necrosis_contrast"] = necro, float(necro / mu["wm"])
            else:
                val = main
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
                if modality == "t1":
                    lv = np.minimum(lv, local * np.float32(1.0 - margin))
                else:
                    lv = np.maximum(lv, local * np.float32(1.0 + margin))
                pr += g * (pm * lv - pr)
            else:
                # a tumour core displaces everything, CSF included
                pr += f * (lv - pr)
                c = cs[sl]
                c -= f * c
            if role != "necrosis":
                np.maximum(lesion_frac[sl], f, out=lesion_frac[sl])
        info["_comps"] = comps
        lesions.append(info)

    label = ((lesion_frac >= 0.5) & anat.brain).astype(np.uint8)
    # per-lesion statistics on the final (union) label
    vol_vox = vs**3 / 1000.0
    for info in lesions:
        comps = info.pop("_comps")
        own = np.zeros(shape, bool)
        for comp in comps:
            own[comp["sl"]] |= comp["f"] >= 0.5
        own &= label.astype(bool)
        pts = np.argwhere(own)
        if len(pts):
            cv = pts.mean(0)
        else:
            sl = comps[0]["sl"]
            cv = np.array([(s.start + s.stop - 1) / 2.0 for s in sl])
        info["centre_mm"] = tuple(float(v) for v in (anat.affine[:3, :3] @ cv + anat.affine[:3, 3]))
        info["volume_ml"] = float(len(pts) * vol_vox)
        info["n_voxels"] = int(len(pts))

    # ---- acquisition: blur, bias, Rician noise ---------------------------
    par += cs
    del cs
    support = anat.brain
    if leftover:
        orng = np.random.default_rng([seed, 300])
        # at least one voxel deep, however coarse the grid
        rim = leftover_rim(anat.brain, orng, depth_vox=max(1.0, orng.uniform(2.0, 6.0) / vs),
                           coverage=orng.uniform(0.15, 0.5))
        tex = _fine_noise(orng, shape, 1.0)
        par[rim] = np.float32(orng.uniform(0.5, 1.8) * mu["wm"]) * (1.0 + 0.08 * tex[rim])
        support = anat.brain | rim
    img = ndimage.gaussian_filter(par, blur_mm / vs, mode="constant")
    del par
    bias = _smooth_fields(irng, shape, 60.0 / vs, 1)[0]
    bmax = float(np.abs(bias[anat.brain]).max()) if anat.brain.any() else 1.0
    bias *= np.float32(bias_amp / max(bmax, 1e-6))
    img *= np.exp(bias)
    sigma = np.float32(noise_frac * mu["wm"])
    n1 = irng.standard_normal(shape, dtype=np.float32)
    n1 *= sigma
    n1 += img
    n2 = irng.standard_normal(shape, dtype=np.float32)
    n2 *= sigma
    img = np.sqrt(n1 * n1 + n2 * n2)
    del n1, n2
    np.maximum(img, np.float32(_RICIAN_FLOOR * mu["wm"]), out=img)
    img[~support] = 0.0

    return SynthCase(
        image=img.astype(np.float32, copy=False),
        label=label,
        brain=anat.brain.copy(),
        affine=anat.affine.copy(),
        modality=modality,
        seed=seed,
        lesions=lesions,
    )


def leftover_rim(brain: np.ndarray, rng: np.random.Generator, *, depth_vox: float,
                 coverage: float) -> np.ndarray:
    """Where a loose skull strip leaves tissue behind: voxels outside ``brain`` (2-D or 3-D)
    within ``depth_vox`` of its surface, on smooth random patches covering about ``coverage``
    of that shell.  Used by ``make_case(leftover=True)`` and by training augmentation."""
    brain = np.asarray(brain, bool)
    if not brain.any() or depth_vox <= 0 or coverage <= 0:
        return np.zeros_like(brain)
    dist = ndimage.distance_transform_edt(~brain)
    shell = (dist > 0) & (dist <= depth_vox)
    if not shell.any():
        return shell
    extent = np.ptp(np.argwhere(brain), axis=0).max() + 1
    field = _fine_noise(rng, brain.shape, max(1.0, extent / 10.0))
    cut = np.quantile(field[shell], 1.0 - min(1.0, coverage))
    return shell & (field >= cut)


def make_healthy(modality: str, seed: int, *, voxel_size: float = 1.5,
                 leftover: bool = False) -> SynthCase:
    """A lesion-free case (same anatomy as ``make_case`` with that seed)."""
    return make_case(modality, seed, n_lesions=0, voxel_size=voxel_size, leftover=leftover)


def to_nifti(case: SynthCase) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """NIfTI-1 images (float32 image, uint8 label) sharing the case's affine."""
    out = []
    for arr, dtype in ((case.image, np.float32), (case.label, np.uint8)):
        img = nib.Nifti1Image(np.asarray(arr, dtype=dtype), case.affine)
        img.header.set_data_dtype(dtype)
        img.header.set_xyzt_units("mm")
        img.set_qform(case.affine, code=1)
        img.set_sform(case.affine, code=1)
        out.append(img)
    return out[0], out[1]


def write_case(
    case: SynthCase, out_dir, stem: str | None = None
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``<stem>_<modality>.nii.gz`` and ``<stem>_<modality>_label.nii.gz``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"synth{case.seed}" if stem is None else str(stem)
    img, lab = to_nifti(case)
    p_img = out_dir / f"{stem}_{case.modality}.nii.gz"
    p_lab = out_dir / f"{stem}_{case.modality}_label.nii.gz"
    nib.save(img, str(p_img))
    nib.save(lab, str(p_lab))
    return p_img, p_lab
