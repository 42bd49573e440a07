"""Healthy template anatomies: tissue partial-volume fractions that the synthetic brains deform.

``raw_tissue(name)`` gives grey- and white-matter and brain fractions (float32, 0..1, zero outside
the brain) on the template's own isotropic, axis-aligned RAS grid.  ``icbm152`` is the ICBM152
2009a (symmetric) template that ships inside the nilearn wheel: read straight from the package's
data folder (nilearn's fetchers are never called and nilearn itself is never imported).
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

__all__ = ["ANATOMIES", "RawTissue", "TEMPLATE_FILES", "raw_tissue", "template_dir"]

ANATOMIES = ("icbm152",)

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


@functools.lru_cache(maxsize=4)
def raw_tissue(name: str = "icbm152") -> RawTissue:
    """The named template's tissue fractions (cached; the arrays are read-only)."""
    if name not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {name!r}")
    raw = _icbm152()
    for a in (raw.gm, raw.wm, raw.brain):
        a.setflags(write=False)
    return raw
