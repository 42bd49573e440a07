"""Skull stripping that works offline: a head template registered to the scan (docs/skullstrip.md).

The package ships FSL's MNI152 T1 head at 2 mm and its brain mask
(``skullstrip_template/``). ``brain_mask(data, affine)`` registers that head to the scan with
SimpleITK (an affine fitted by Mattes mutual information on the whole head, so any MR contrast
works), carries the template's brain mask onto the scan's own voxel grid and cleans it up
(largest connected part, holes filled), then moves its boundary by the scan's own intensities
(``refine_boundary``: the template's mask as a spatial prior, intensity histograms learnt just
inside and just outside it). Nothing is downloaded; the CLI (``segment
--skull-strip``) and the widget ("Brain mask: automatic skull strip") both call this function.

``unstripped_reason(data, affine)`` is the test by which the CLI refuses a head given without
``--skull-strip`` or ``--brain-mask`` (and ``volume`` warns about one elsewhere).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = [
    "SOURCE",
    "brain_for",
    "brain_mask",
    "looks_unstripped",
    "refine_boundary",
    "registered_mask",
    "template_files",
    "unstripped_message",
    "unstripped_reason",
]

TEMPLATE_DIR = Path(__file__).with_name("skullstrip_template")
_T1 = "mni152_t1_2mm.nii.gz"
_MASK = "mni152_brain_mask_2mm.nii.gz"
SOURCE = ("automatic skull strip (MNI152 2 mm template, affine registration, intensity "
          "refinement of the boundary)")

# A skull-stripped scan has zeros around the brain; a head fills most of its field of view, or
# (in a wide field of view) holds more non-zero tissue than any brain has.
UNSTRIPPED_SHARE = 0.6  # non-zero share of the field of view
UNSTRIPPED_NOTE = "looks not skull-stripped"  # in volume's warning and the refusal
UNSTRIPPED_ML = 2500.0  # non-zero volume; brains with their CSF stay near or below 2 L
_WORK_MM = 2.0  # registration runs on the scan resampled to this isotropic spacing (mm)
# Boundary refinement (``refine_boundary``), in mm of signed distance to the registered mask's
# surface (negative inside). Chosen on the two real T1 heads of benchmarks/skullstrip.py
# (SRI24 and ITK's subject: the larger of their two lowest Dice, then the mean; the grid and
# the numbers are in docs/skullstrip.md); the synthetic T2/FLAIR heads took no part.
REFINE_INNER_MM = (-12.0, -4.0)  # brain intensities: this shell inside the surface
REFINE_OUTER_MM = (2.0, 12.0)  # non-brain intensities: this shell outside it
REFINE_PRIOR_MM = 2.0  # prior log-odds -distance/2 mm: the registration's uncertainty
REFINE_SMOOTH_MM = 3.0  # Gaussian sigma on the posterior log-odds (no ragged single voxels)
REFINE_REACH_MM = 8.0  # the boundary moves at most this far either way
_BINS = 64


def template_files() -> tuple[Path, Path]:
    return TEMPLATE_DIR / _T1, TEMPLATE_DIR / _MASK


def _nonzero(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    with np.errstate(invalid="ignore"):
        return np.isfinite(data) & (data > 0)


def unstripped_reason(data: np.ndarray, affine=None) -> str | None:
    """Why the automatic brain mask (voxels > 0) of a 3-D scan looks like a whole head rather
    than a skull-stripped brain, or None when it does not: it covers more than 60 % of the
    field of view, or more than 2.5 L."""
    data = np.asarray(data)
    if data.ndim != 3 or min(data.shape) <= 1:
        return None
    nz = _nonzero(data)
    share = float(nz.mean())
    if share > UNSTRIPPED_SHARE:
        return f"{share:.0%} of the field of view is non-zero"
    if affine is not None:
        ml = float(nz.sum()) * abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
        if ml > UNSTRIPPED_ML:
            return f"{ml / 1000:.1f} L of it is non-zero, more than any brain"
    return None


def looks_unstripped(data: np.ndarray, affine=None) -> bool:
    return unstripped_reason(data, affine) is not None


def unstripped_message(name: str, data: np.ndarray, affine=None) -> str:
    """The one line that refuses a head given without a brain mask."""
    why = unstripped_reason(data, affine) or "it looks like a whole head"
    return (f"{name} {UNSTRIPPED_NOTE} ({why}); pass --skull-strip to strip it "
            "here, or --brain-mask FILE")


def brain_for(scan, mask, source, *, skull_strip: bool, name: str, threads=None):
    """The brain mask and its source for a run of the command line: the given mask, the skull
    strip's, or None (automatic, voxels > 0) for a stripped scan. Refuses (InputError, one
    line) a head given with neither, and the two together."""
    if skull_strip and mask is not None:
        raise InputError("give --skull-strip or --brain-mask, not both")
    if skull_strip:
        mask, source = brain_mask(scan.data, scan.affine, threads=threads), SOURCE
    elif mask is None and looks_unstripped(scan.data, scan.affine):
        raise InputError(unstripped_message(name, scan.data, scan.affine))
    if mask is not None:  # the head's warning no longer applies (nor goes into the sidecar)
        scan.notes[:] = [n for n in scan.notes if UNSTRIPPED_NOTE not in n]
    return mask, source


# -- SimpleITK glue ----------------------------------------------------------------------------
def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - a dependency of the package
        raise InputError("skull stripping needs SimpleITK (pip install SimpleITK)") from None
    return sitk


_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _to_sitk(data: np.ndarray, affine: np.ndarray):
    """A SimpleITK image with the scan's geometry (NIfTI RAS world → ITK LPS world). A sheared
    affine is approximated by its nearest orthogonal directions."""
    sitk = _sitk()
    aff = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    m = aff[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    u, _, vt = np.linalg.svd(m / spacing)
    direction = u @ vt  # nearest orthogonal matrix (equal to m/spacing without shear)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).T))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in aff[:3, 3]])
    img.SetDirection([float(x) for x in direction.ravel()])
    return img


def _from_sitk(img) -> np.ndarray:
    return _sitk().GetArrayFromImage(img).T


def _isotropic(img, mm: float):
    """Low-pass and resample to ``mm`` isotropic spacing (same origin and directions)."""
    sitk = _sitk()
    spacing = np.array(img.GetSpacing())
    size = np.maximum(1, np.round(np.array(img.GetSize()) * spacing / mm)).astype(int)
    sigma = [max((mm - s) / 2.0, 0.0) for s in spacing]
    if max(sigma) > 0:
        img = sitk.SmoothingRecursiveGaussian(img, [max(s, 1e-3) for s in sigma])
    return sitk.Resample(img, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear,
                         img.GetOrigin(), [mm] * 3, img.GetDirection(), 0.0, sitk.sitkFloat32)


@lru_cache(maxsize=1)
def _template():
    import nibabel as nib

    t1, mask = template_files()
    head, brain = nib.load(str(t1)), nib.load(str(mask))
    head_arr = np.asarray(head.dataobj, dtype=np.float32)
    brain_arr = (np.asarray(brain.dataobj) > 0).astype(np.float32)
    return _to_sitk(head_arr, head.affine), _to_sitk(brain_arr, brain.affine)


def _register(fixed, moving, seed: int):
    """Affine (12 parameters) moving → fixed, Mattes mutual information on 10 % of the voxels,
    three levels (8, 4 and 2 mm on the 2 mm work grid)."""
    sitk = _sitk()
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed=seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=200, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    return reg.Execute(fixed, moving)


def _clean(mask: np.ndarray) -> np.ndarray:
    """Largest 6-connected part, holes filled (slice by slice too, for open ventricles)."""
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def _signed_distance(mask: np.ndarray, vox) -> np.ndarray:
    """mm to the mask's surface: negative inside, positive outside."""
    return np.where(mask, -ndimage.distance_transform_edt(mask, sampling=vox),
                    ndimage.distance_transform_edt(~mask, sampling=vox))


def refine_boundary(data: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Move a registered brain mask's boundary to where the scan's intensities put it.

    Per voxel near the surface, log-odds of brain = prior (−signed distance / 2 mm: the farther
    inside the registered mask, the surer) + the log ratio of two intensity histograms of this
    scan, one from a shell inside the surface (4–12 mm: brain), one from a shell outside it
    (2–12 mm: CSF, bone, scalp). Learnt per scan, so any contrast works. The log-odds are
    smoothed (Gaussian, 3 mm) and thresholded at 0 within 8 mm of the surface; deeper voxels
    stay brain, farther ones stay out; then the largest part, holes filled. Works on the
    mask's bounding box (plus the reach) only."""
    vox = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    margin = max(REFINE_OUTER_MM[1], REFINE_REACH_MM) + 3 * REFINE_SMOOTH_MM
    where = np.nonzero(mask)
    box = tuple(slice(max(0, int(i.min()) - int(np.ceil(margin / v))),
                      int(i.max()) + int(np.ceil(margin / v)) + 1) for i, v in zip(where, vox))
    m, img = mask[box], np.asarray(data, dtype=np.float32)[box]
    sd = _signed_distance(m, vox)
    inner = (sd >= REFINE_INNER_MM[0]) & (sd < REFINE_INNER_MM[1])
    outer = (sd >= REFINE_OUTER_MM[0]) & (sd < REFINE_OUTER_MM[1])
    if inner.sum() < 1000 or outer.sum() < 1000:  # a tiny mask or a tight field of view
        return mask
    lo, hi = np.percentile(img[inner | outer], [0.5, 99.5])
    if not hi > lo:
        return mask
    edges = np.linspace(lo, hi, _BINS + 1)

    def density(values):
        h = np.histogram(np.clip(values, lo, hi), edges)[0] + 1.0
        return ndimage.gaussian_filter1d(h / h.sum(), 1.0)

    llr = np.log(density(img[inner])) - np.log(density(img[outer]))
    k = np.clip(np.digitize(img, edges) - 1, 0, _BINS - 1)
    logit = ndimage.gaussian_filter(-sd / REFINE_PRIOR_MM + llr[k],
                                    [REFINE_SMOOTH_MM / v for v in vox])
    near = np.abs(sd) < REFINE_REACH_MM
    out = np.zeros_like(mask)
    out[box] = (near & (logit > 0)) | (sd <= -REFINE_REACH_MM)
    return _clean(out) if out.any() else mask


def registered_mask(data: np.ndarray, affine: np.ndarray, *, threads: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """The template's brain mask carried onto the scan by the affine registration, cleaned
    (largest part, holes filled): ``brain_mask`` before its boundary refinement."""
    sitk = _sitk()
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3 or min(data.shape) < 8:
        raise InputError(f"skull stripping needs a 3-D head scan, not an image of shape "
                         f"{data.shape}")
    data = np.where(np.isfinite(data), data, 0.0).astype(np.float32)
    if not (data > 0).any():
        raise InputError("skull stripping: the scan has no voxel above zero")
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads or os.cpu_count() or 1))
    try:
        head, brain = _template()
        scan = _to_sitk(np.maximum(data, 0.0), affine)
        fixed = _isotropic(scan, _WORK_MM)
        try:
            tx = _register(fixed, _isotropic(head, _WORK_MM), seed)
        except RuntimeError as exc:
            raise InputError("skull stripping failed: the template could not be registered "
                             f"to the scan ({str(exc).strip().splitlines()[-1][:120]})") from None
        warped = sitk.Resample(brain, scan, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)
    mask = _from_sitk(warped) > 0.5
    if not mask.any():
        raise InputError("skull stripping failed: the template's brain fell outside the scan")
    return _clean(mask)


def brain_mask(data: np.ndarray, affine: np.ndarray, *, threads: int | None = None,
               seed: int = 0, refine: bool = True) -> np.ndarray:
    """Brain mask (bool, the scan's own shape) of a head scan with skull, any MR contrast:
    ``registered_mask`` then ``refine_boundary`` (``refine=False``: without it, the mask of
    releases before the refinement, for comparison).

    ``threads``: SimpleITK's threads (default: all cores). Deterministic for a seed and a
    thread count. Raises InputError (one line) for input it cannot strip."""
    mask = registered_mask(data, affine, threads=threads, seed=seed)
    if refine:
        data = np.asarray(data, dtype=np.float32)
        mask = refine_boundary(np.where(np.isfinite(data), data, 0.0), mask, affine)
    share = float(mask.sum()) / mask.size
    if share > 0.95 or mask.sum() * abs(np.linalg.det(np.asarray(affine)[:3, :3])) < 2e5:
        raise InputError(f"skull stripping failed: implausible brain mask ({share:.0%} of the "
                         "field of view); give one with --brain-mask")
    return mask
