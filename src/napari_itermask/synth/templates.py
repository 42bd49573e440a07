"""Healthy template anatomies: tissue partial-volume fractions that the synthetic brains deform.

``raw_tissue(name)`` gives grey- and white-matter and brain fractions (float32, 0..1, zero outside
the brain) on the template's own isotropic, axis-aligned RAS grid.  ``icbm152`` is the ICBM152
2009a (symmetric) template that ships inside the nilearn wheel: read straight from the package's
data folder (nilearn's fetchers are never called and nilearn itself is never imported).

The other anatomies are real healthy T1 images without tissue maps, read from a local cache
folder that ``python -m training.data fetch`` fills (``anatomy_dir()``; nothing is downloaded
here): ``sri24`` (the SRI24 atlas in BraTS space, 1 mm), ``mni152`` (FSL's MNI152 6th
generation, 2 mm) and ``itk_subject`` (one subject from ITK's example data, 2 x 2 x 3 mm,
resampled to 2 mm isotropic).  Their GM/WM/CSF fractions come from a classical intensity model
(``tissue_fractions``): inside the brain mask a 1-D mixture of three pure-tissue Gaussians (CSF,
GM, WM) and two partial-volume classes (CSF/GM and GM/WM: a uniform mix of the two neighbouring
means blurred by their noise) is fitted by EM to the T1 intensities, initialised from intensity
quantiles; each voxel's fractions are its pure-class posteriors plus its partial-volume-class
posteriors split linearly by where its intensity lies between the two means.  A smooth
multiplicative bias field (estimated from the voxels classed as pure WM) is removed first, and
the fractions are lightly smoothed (0.6 voxel).  The result is cached as ``.npz`` in the cache
folder, keyed by the source files' sha256 and ``_SEG_VERSION``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import pathlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage, special

from .._hash import sha256_file
from .fields import portable

__all__ = [
    "ANATOMIES",
    "ANATOMY_FILES",
    "TEMPLATE_FILES",
    "RawTissue",
    "anatomy_dir",
    "canonical_array",
    "fit_mixture",
    "raw_tissue",
    "template_dir",
    "tissue_fractions",
    "to_isotropic",
]

ANATOMIES = ("icbm152", "sri24", "mni152", "itk_subject")

# Files each cached anatomy reads, relative to ``anatomy_dir()`` (``training/data.py`` puts them
# there): the T1 and, where the T1 is not skull-stripped, a brain mask (brain = mask > 0.5).
ANATOMY_FILES = {
    "sri24": {"t1": "sri24/t1_skullstripped_brats_space.nii"},
    "mni152": {
        "t1": "mni152/MNI152_T1_2mm.nii.gz",
        "mask": "mni152/MNI152_T1_2mm_brain_mask.nii.gz",
    },
    "itk_subject": {
        "t1": "itk_subject/KmeansTest_T1UCharRaw.nii.gz",
        "mask": "itk_subject/KmeansTest_T1RawSkullStrip.nii.gz",
    },
}

# Bump when the segmentation below changes: it is part of the cache key.
_SEG_VERSION = "pvgmm-2"  # 2: exp/log through fields.portable (the same fit on every CPU)
_BIAS_ITERS = 3  # rounds of bias-field estimation before the final fit
_BIAS_SIGMA_MM = 25.0  # the bias field is smooth on this scale (Gaussian sigma, mm)
_SMOOTH_VOX = 0.6  # light smoothing of the fractions (Gaussian sigma, source voxels)

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class RawTissue:
    """Tissue fractions of one template on its own grid (read-only arrays)."""

    gm: np.ndarray  # float32 partial-volume fractions, zero outside the brain
    wm: np.ndarray
    brain: np.ndarray  # float32 brain fraction (0..1)
    affine: np.ndarray  # (4, 4) float64, voxel -> world (mm, RAS), isotropic, axis-aligned
    name: str

    @property
    def voxel_size(self) -> float:
        return float(np.linalg.norm(self.affine[:3, 0]))


def template_dir() -> pathlib.Path:
    """Folder holding the ICBM152 2009a files inside the installed nilearn."""
    spec = importlib.util.find_spec("nilearn")  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed; it provides the ICBM152 template")
    for root in spec.submodule_search_locations:
        d = pathlib.Path(root) / "datasets" / "data"
        if all((d / f).is_file() for f in TEMPLATE_FILES.values()):
            return d
    raise FileNotFoundError("the ICBM152 2009a template files were not found in nilearn")


def _icbm152() -> RawTissue:
    d = template_dir()
    imgs = {k: nib.load(str(d / f)) for k, f in TEMPLATE_FILES.items()}
    t1 = np.asarray(imgs["t1"].dataobj)
    brain = (t1 > 0).astype(np.float32)
    gm = np.asarray(imgs["gm"].dataobj).astype(np.float32) / 255.0 * brain
    wm = np.asarray(imgs["wm"].dataobj).astype(np.float32) / 255.0 * brain
    over = gm + wm
    scale = np.where(over > 1.0, 1.0 / np.maximum(over, 1e-6), 1.0).astype(np.float32)
    gm *= scale
    wm *= scale
    return RawTissue(gm, wm, brain, imgs["t1"].affine.astype(np.float64), "icbm152")


def anatomy_dir() -> pathlib.Path:
    """Cache folder of the fetched anatomies: ``$ITERMASK_ANATOMY_DIR`` or ``data/anatomy/``.

    ``data/anatomy/`` is taken under the source checkout's root (the folder holding
    ``pyproject.toml``, git-ignored ``data/``); an installed copy outside a checkout falls back to
    ``data/anatomy/`` under the working directory.
    """
    env = os.environ.get("ITERMASK_ANATOMY_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    root = pathlib.Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file():
        root = pathlib.Path.cwd()
    return root / "data" / "anatomy"


def canonical_array(path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI's array (float64, trailing singleton axes dropped) and affine in RAS order.

    ``nibabel.as_closest_canonical`` reorders and flips the axes so that the affine's diagonal is
    positive; two files that store the same anatomy mirrored, each with a compensating affine
    (as the SRI24 files do), give the same array.  Only axis-aligned images are accepted: the
    tissue grids must stay free of rotations (``RawTissue.affine`` is diagonal).
    """
    img = nib.as_closest_canonical(nib.load(str(path)))
    a = np.asarray(img.dataobj, dtype=np.float64)
    while a.ndim > 3 and a.shape[-1] == 1:
        a = a[..., 0]
    aff = img.affine.astype(np.float64)
    lin = aff[:3, :3]
    off = np.abs(lin - np.diag(np.diag(lin))).max()
    if off > 1e-4 * np.abs(lin).max() or (np.diag(lin) <= 0).any():
        raise ValueError(f"{path}: not an axis-aligned image, cannot use it as a template")
    aff[:3, :3] = np.diag(np.diag(lin))
    return a, aff


def to_isotropic(arrays, affine: np.ndarray):
    """Resample arrays on a diagonal-affine grid to isotropic voxels of the finest spacing.

    Linear interpolation (fractions stay fractions and sums of fractions are kept).  Sample
    ``i`` of an axis lies at ``i * t`` mm from the first source sample (``t`` = finest spacing),
    with as many samples as fit inside the source's physical extent ``(n - 1) * s`` mm, so the
    extent is kept to within one output voxel.  Returns ``(arrays, affine)``, unchanged when the
    grid is already isotropic.
    """
    s = np.diag(affine)[:3].astype(np.float64)
    t = float(s.min())
    if np.allclose(s, t, rtol=1e-6, atol=0):
        return list(arrays), affine
    shape = tuple(math.floor((n - 1) * si / t + 1e-6) + 1 for n, si in zip(arrays[0].shape, s))
    out = [
        ndimage.affine_transform(np.asarray(a, np.float64), t / s, output_shape=shape, order=1,
                                 mode="nearest")
        for a in arrays
    ]
    aff = affine.copy()
    aff[:3, :3] = np.diag([t, t, t])
    return out, aff


# --------------------------------------------------------------------------
# intensity mixture with partial-volume classes
# --------------------------------------------------------------------------

_PAIRS = ((0, 1), (1, 2))  # CSF/GM and GM/WM partial-volume classes


def _exp(x):
    return portable(np.exp, x)


def _log(x):
    return portable(np.log, x)


def _log_density(x: np.ndarray, mu, sd) -> np.ndarray:
    """Log densities (n, 5): the three pure classes, then the two partial-volume classes.

    A partial-volume class is ``alpha * mu_a + (1 - alpha) * mu_b`` with ``alpha`` uniform on
    [0, 1] plus Gaussian noise of the two classes' mean sd: a uniform density on
    ``[mu_a, mu_b]`` convolved with that Gaussian (a difference of two normal CDFs).
    """
    cols = [-0.5 * ((x - m) / s) ** 2 - math.log(s * math.sqrt(2.0 * math.pi))
            for m, s in zip(mu, sd)]
    for a, b in _PAIRS:
        s = 0.5 * (sd[a] + sd[b])
        d = special.ndtr((x - mu[a]) / s) - special.ndtr((x - mu[b]) / s)
        cols.append(_log(np.maximum(d, 1e-300)) - math.log(max(mu[b] - mu[a], 1e-12)))
    return np.stack(cols, -1)


def fit_mixture(x: np.ndarray, *, bins: int = 512, iters: int = 500, tol: float = 1e-10):
    """EM fit of the CSF/GM/WM mixture (three pure + two partial-volume classes) to intensities.

    ``x`` are T1 intensities of brain voxels (any unit; T1 order CSF < GM < WM).  The fit runs on
    a 512-bin histogram (the 0.05-99.95 % range), which is exact for EM up to the binning and
    takes milliseconds.  Start: pure means at the 1/6, 1/2 and 5/6 quantiles, sds a sixth of the
    CSF-WM distance, equal weights.  Returns ``(mu, sd, w)``: pure means and sds (sorted by mean)
    and the five class weights.
    """
    x = np.asarray(x, np.float64)
    lo, hi = np.quantile(x, [0.0005, 0.9995])
    cnt, edges = np.histogram(np.clip(x, lo, hi), bins=bins, range=(lo, hi))
    c = 0.5 * (edges[1:] + edges[:-1])
    cw = cnt / cnt.sum()
    mu = np.quantile(x, [1 / 6, 1 / 2, 5 / 6])
    sd = np.full(3, max((mu[2] - mu[0]) / 6.0, (hi - lo) / bins))
    w = np.full(5, 0.2)
    prev = -np.inf
    for _ in range(iters):
        lp = _log_density(c, mu, sd) + _log(np.maximum(w, 1e-12))
        m = lp.max(1, keepdims=True)
        ll = m[:, 0] + _log(_exp(lp - m).sum(1))
        r = _exp(lp - ll[:, None]) * cw[:, None]
        n = r.sum(0)
        w = n / n.sum()
        npure = np.maximum(n[:3], 1e-12)
        mu = (r[:, :3] * c[:, None]).sum(0) / npure
        sd = np.sqrt((r[:, :3] * (c[:, None] - mu) ** 2).sum(0) / npure)
        sd = np.maximum(sd, (hi - lo) / bins)
        order = np.argsort(mu)
        mu, sd = mu[order], sd[order]
        w[:3] = w[:3][order]
        L = float((ll * cw).sum())
        if abs(L - prev) < tol:
            break
        prev = L
    return mu, sd, w


def _fractions(x: np.ndarray, mu, sd, w) -> np.ndarray:
    """(n, 3) CSF/GM/WM fractions of intensities ``x`` under a fitted mixture (rows sum to 1)."""
    lp = _log_density(x, mu, sd) + _log(np.maximum(w, 1e-12))
    lp -= lp.max(1, keepdims=True)
    p = _exp(lp)
    p /= p.sum(1, keepdims=True)
    f = p[:, :3].copy()
    for j, (a, b) in enumerate(_PAIRS):
        alpha = np.clip((mu[b] - x) / max(mu[b] - mu[a], 1e-12), 0.0, 1.0)
        f[:, a] += p[:, 3 + j] * alpha
        f[:, b] += p[:, 3 + j] * (1.0 - alpha)
    return f


def tissue_fractions(t1: np.ndarray, mask: np.ndarray, spacing, *, bias_iters: int = _BIAS_ITERS,
                     smooth_vox: float = _SMOOTH_VOX):
    """CSF, GM and WM fractions (float64, 0..1, summing to 1 inside ``mask``, 0 outside).

    ``t1``: a T1-weighted array; ``mask``: the brain (bool); ``spacing``: voxel size per axis in
    mm (for the bias field's scale).  Voxels of the mask with ``t1 <= 0`` are dropped from it.
    Bias field: ``bias_iters`` rounds of fit, then the log ratio of intensity to the WM mean over
    voxels whose most likely class is pure WM, smoothed (normalised Gaussian, 25 mm), removed.
    Returns ``(csf, gm, wm, mask, (mu, sd, w))``.
    """
    mask = np.asarray(mask, bool) & (t1 > 0)
    if mask.sum() < 100:
        raise ValueError("the brain mask has fewer than 100 voxels")
    img = t1 / np.percentile(t1[mask], 99)
    sigma = _BIAS_SIGMA_MM / np.asarray(spacing, np.float64)
    logf = np.zeros(img.shape)
    for it in range(bias_iters + 1):
        x = (img * _exp(-logf))[mask]
        mu, sd, w = fit_mixture(x)
        if it == bias_iters:
            break
        pure_wm = (_log_density(x, mu, sd) + _log(np.maximum(w, 1e-12))).argmax(1) == 2
        lr = np.zeros(img.shape)
        wt = np.zeros(img.shape)
        lr[mask] = _log(np.clip(img[mask] / mu[2], 0.7, 1.4))
        wt[mask] = pure_wm
        sm = ndimage.gaussian_filter(lr * wt, sigma) / np.maximum(
            ndimage.gaussian_filter(wt, sigma), 1e-6)
        logf = np.where(mask, sm - sm[mask].mean(), 0.0)
    f = _fractions(x, mu, sd, w)
    den = ndimage.gaussian_filter(mask.astype(np.float64), smooth_vox) if smooth_vox > 0 else None
    out = []
    for k in range(3):
        a = np.zeros(img.shape)
        a[mask] = f[:, k]
        if den is not None:
            a = ndimage.gaussian_filter(a, smooth_vox) / np.maximum(den, 1e-6)
        out.append(np.where(mask, a, 0.0))
    tot = np.maximum(out[0] + out[1] + out[2], 1e-12)
    csf, gm, wm = (np.where(mask, a / tot, 0.0) for a in out)
    return csf, gm, wm, mask, (mu, sd, w)


# --------------------------------------------------------------------------
# cached anatomies
# --------------------------------------------------------------------------


def _from_t1(name: str, folder: pathlib.Path) -> RawTissue:
    """Fractions of a cached anatomy: from its ``.npz`` when present, else segmented and saved."""
    paths = {k: folder / rel for k, rel in ANATOMY_FILES[name].items()}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(
                f"anatomy {name!r}: {p} is missing; run `python -m training.data fetch`")
    key = hashlib.sha256(
        (_SEG_VERSION + "".join(sha256_file(paths[k]) for k in sorted(paths))).encode()).hexdigest()
    cache = folder / "cache" / f"{name}-{key[:16]}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return RawTissue(z["gm"], z["wm"], z["brain"], z["affine"].astype(np.float64), name)
    t1, aff = canonical_array(paths["t1"])
    if "mask" in paths:
        m, maff = canonical_array(paths["mask"])
        if m.shape != t1.shape or not np.allclose(maff, aff, atol=1e-3):
            raise ValueError(f"anatomy {name!r}: the mask and the T1 are on different grids")
        mask = m > 0.5
    else:
        mask = t1 > 0
    _, gm, wm, mask, _ = tissue_fractions(t1, mask, np.diag(aff)[:3])
    (gm, wm, brain), aff = to_isotropic([gm, wm, mask.astype(np.float64)], aff)
    gm, wm, brain = (np.clip(a, 0.0, 1.0).astype(np.float32) for a in (gm, wm, brain))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".part.tmp.npz")
        np.savez_compressed(tmp, gm=gm, wm=wm, brain=brain, affine=aff)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only cache folder only costs the recomputation
    return RawTissue(gm, wm, brain, aff, name)


def raw_tissue(name: str = "icbm152") -> RawTissue:
    """The named template's tissue fractions (cached; the arrays are read-only).

    ``icbm152`` comes from nilearn's data folder; the others from ``anatomy_dir()`` (a missing
    file raises ``FileNotFoundError`` naming ``python -m training.data fetch``).
    """
    if name not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {name!r}")
    return _raw_tissue(name, None if name == "icbm152" else str(anatomy_dir()))


@functools.lru_cache(maxsize=8)
def _raw_tissue(name: str, folder: str | None) -> RawTissue:
    raw = _icbm152() if name == "icbm152" else _from_t1(name, pathlib.Path(folder))
    for a in (raw.gm, raw.wm, raw.brain):
        a.setflags(write=False)
    return raw
