"""One synthetic case: anatomy, contrast, lesions of a stratum and acquisition, composed.

``make_case(modality, seed, stratum=...)`` is the only entry point the rest of the project uses;
a seed gives bit-identical arrays (all randomness from ``numpy.random.default_rng`` streams
derived from the seed; see each module for its stream).

**Label definition**: a voxel is lesion (label 1) iff it is inside the deformed brain mask and
the combined lesion fraction ``max_k f_k`` (over all lesion components, after the CSF sparing) is
``>= 0.5``, i.e. the voxel is at least half lesion.  The label therefore depends only on the seed,
the stratum, the anatomy and the voxel size, never on the contrast.  The anatomy and tissue
intensities of ``make_case(m, s)`` and ``make_healthy(m, s)`` are the same; only the lesions
differ.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from . import glioma, stroke
from . import lesions as subtle_lesions
from .acquisition import acquire, draw_acquisition
from .anatomy import make_anatomy
from .contrast import enhancing_structures, normal_tissue
from .templates import ANATOMIES

__all__ = ["KINDS", "MODALITIES", "STRATA", "SynthCase", "make_case", "make_healthy",
           "to_nifti", "write_case"]

MODALITIES = ("flair", "t1", "t2", "t1ce")
KINDS = ("tumour", "stroke", "any")
STRATA = ("glioma", "stroke", "subtle")


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
    stratum: str = "subtle"
    anatomy: str = "icbm152"
    extras: dict = field(default_factory=dict)  # e.g. T1CE enhancing structures' shares

    @property
    def voxel_size(self) -> float:
        return float(np.linalg.norm(self.affine[:3, 0]))


def _check(modality: str, kind: str, seed, voxel_size, stratum, anatomy):
    if not isinstance(modality, str) or modality.lower() not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not isinstance(kind, str) or kind.lower() not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    vs = float(voxel_size)
    if not (0.5 <= vs <= 8.0):
        raise ValueError(f"voxel_size must be between 0.5 and 8 mm, got {voxel_size!r}")
    if stratum not in STRATA:
        raise ValueError(f"stratum must be one of {STRATA}, got {stratum!r}")
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    return modality.lower(), kind.lower(), int(seed), vs


def make_case(
    modality: str,
    seed: int,
    *,
    stratum: str = "subtle",
    anatomy: str = "icbm152",
    n_lesions: int | tuple[int, int] | None = None,
    kind: str = "any",
    voxel_size: float = 1.5,
    leftover: bool = False,
) -> SynthCase:
    """Generate one synthetic skull-stripped brain MRI with lesions.

    ``stratum`` names the lesion distribution (``docs/benchmark.md``); ``anatomy`` the healthy
    template that is deformed.  ``n_lesions`` is a count or an inclusive ``(min, max)`` range
    (0 gives a healthy brain); ``kind`` is ``"tumour"``, ``"stroke"`` or ``"any"`` (``subtle``
    stratum).  The same seed gives the same anatomy and lesion geometry for every contrast.
    ``leftover=True`` adds skull-strip leftovers outside ``brain``; everything else about the
    case stays the same.
    """
    modality, kind, seed, vs = _check(modality, kind, seed, voxel_size, stratum, anatomy)
    if n_lesions is None:  # each stratum's own count: subtle 1-3, one glioma, one infarct
        n_lesions = (1, 3) if stratum == "subtle" else 1
    mi = MODALITIES.index(modality)
    anat = make_anatomy(seed, vs, anatomy)
    shape = anat.brain.shape
    n_wanted = n_lesions if isinstance(n_lesions, (tuple, list)) else int(n_lesions)
    tumour = None
    if stratum == "glioma" and n_wanted != 0:
        anat, tumour = glioma.add_glioma(seed, anat, modality, mi)

    irng = np.random.default_rng([seed, 10 + mi])
    mu, par, cs = normal_tissue(irng, anat, modality)
    acq = draw_acquisition(irng)
    extra = {}
    if modality == "t1ce":
        extra = enhancing_structures(seed, anat, mu, cs)

    if stratum == "subtle":
        lesion_frac, lesions = subtle_lesions.add_lesions(seed, anat, mu, par, cs, modality, mi,
                                                          n_lesions, kind)
    elif stratum == "stroke":
        lesion_frac, lesions = stroke.add_strokes(seed, anat, mu, par, cs, modality, mi,
                                                  n_lesions)
    elif tumour is not None:
        lesion_frac, lesions = tumour(mu, par, cs)
    else:
        lesion_frac, lesions = np.zeros(shape, np.float32), []

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

    par += cs
    del cs
    img = acquire(par, anat.brain, irng, acq, mu["wm"], vs,
                  leftover_seed=seed if leftover else None)
    return SynthCase(
        image=img,
        label=label,
        brain=anat.brain.copy(),
        affine=anat.affine.copy(),
        modality=modality,
        seed=seed,
        lesions=lesions,
        stratum=stratum,
        anatomy=anatomy,
        extras=extra,
    )


def make_healthy(modality: str, seed: int, *, voxel_size: float = 1.5,
                 leftover: bool = False, anatomy: str = "icbm152") -> SynthCase:
    """A lesion-free case (same anatomy as ``make_case`` with that seed)."""
    return make_case(modality, seed, n_lesions=0, voxel_size=voxel_size, leftover=leftover,
                     anatomy=anatomy)


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
