"""Scan ⇄ model grid: loading, orientation, axial slicing, in-plane resampling, normalisation.

Everything that moves voxels between a scan's own grid and the model's grid lives here.

- Slices are reached by axis permutation and flips only (never resampled across slices), so the
  way back is exact. A 3-D scan is sliced axially: the array axis closest to the world S/I axis
  is the slice axis; the in-plane axes are ordered (R/L, A/P) and flipped to point R and A. A
  2-D image, or a 3-D one with a single slice, keeps its own plane: the singleton axis is the
  slice axis and the two others are ordered and flipped the same way.
- In-plane, each slice is resampled to a fixed physical pixel size (the model card's
  ``pixel_size_mm``; 1.875 mm reproduces the reference's 240 mm → 128 px), centred on the brain
  and padded to ``grid × grid``, so anatomy has the same size for the model whatever the field
  of view. Down-sampling low-passes first (like area interpolation).
- Intensities are normalised per scan (docs/method.md §1): ``p90``: 6·x/p90 − 3; ``zscore``:
  (x − mean)/std over brain voxels. Pixels outside the brain get ``BACKGROUND`` (−3).
- Maps computed on the model grid go back by interpolation onto the scan's own voxel grid and
  are thresholded there, so labels have exactly the scan's shape and affine.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation
from scipy import ndimage

from ._hash import sha256_file
from .core.masks import brain_mask as default_brain_mask
from .errors import InputError
from .names import is_nifti

__all__ = [
    "Scan",
    "Geometry",
    "ModelGridVolume",
    "load_scan",
    "scan_from_array",
    "load_brain_mask",
    "to_model_grid",
    "normalise",
    "BACKGROUND",
    "ScanWarning",
    "UnstrippedWarning",
]

BACKGROUND = -3.0


class ScanWarning(UserWarning):
    """A recoverable oddity of the input (NaN voxels, shear, no skull stripping, …)."""


class UnstrippedWarning(ScanWarning):
    """The scan looks like a head with skull (``skullstrip.unstripped_reason``); the CLI refuses
    such a scan unless it is stripped or given a brain mask."""


@dataclass
class Scan:
    data: np.ndarray  # float32, 2-D or 3-D, the file's own array order
    affine: np.ndarray  # (4, 4) voxel → world (mm)
    header: nib.Nifti1Header | None = None
    path: Path | None = None
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)  # warnings raised while loading

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))


def _warn(scan_notes: list[str], msg: str) -> None:
    scan_notes.append(msg)
    warnings.warn(msg, ScanWarning, stacklevel=3)


def _read_nifti(path, what: str = "scan"):
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a NIfTI file")
    if not is_nifti(path):
        raise InputError(f"{what} {path.name} is not a NIfTI file (.nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{what} {path.name} is not a NIfTI image")
        raw = np.asanyarray(img.dataobj)
    except InputError:
        raise
    except (EOFError, zlib.error, OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        reason = "truncated or corrupt" if isinstance(exc, (EOFError, zlib.error)) else "unreadable"
        raise InputError(f"{what} {path.name} is {reason}: {str(exc).splitlines()[0]}") from None
    return img, raw


def _check_array(raw: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    if np.iscomplexobj(raw):
        raise InputError(f"{name} holds complex values; give a magnitude image")
    if raw.dtype.fields is not None or raw.dtype.kind not in "biuf":
        raise InputError(f"{name} has data type {raw.dtype}, which is not a scalar image")
    data = np.asarray(raw, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise InputError(
            f"{name} is 4-D ({data.shape[3]} volumes); extract one volume "
            "(e.g. fslroi or nibabel) and pass that"
        )
    if data.ndim > 4 or data.ndim < 2:
        raise InputError(f"{name} has {data.ndim} dimensions; a 2-D or 3-D image is needed")
    if min(data.shape) < 1:
        raise InputError(f"{name} is empty (shape {data.shape})")
    bad = ~np.isfinite(data)
    if bad.any():
        _warn(notes, f"{name}: {int(bad.sum())} NaN/Inf voxels treated as background")
        data = np.where(bad, 0.0, data).astype(np.float32)
    if not (data > 0).any():
        raise InputError(f"{name} has no brain: no voxel is above zero (empty or all-zero image)")
    if (data < 0).any():
        _warn(notes, f"{name} has negative values; voxels <= 0 are treated as background")
    return data


def _check_stripped(data: np.ndarray, affine: np.ndarray, name: str, notes: list[str]) -> None:
    from .skullstrip import UNSTRIPPED_NOTE, unstripped_reason

    why = unstripped_reason(data, affine)
    if why:
        msg = (f"{name} {UNSTRIPPED_NOTE} ({why}); strip it (automatic skull strip) "
               "or give a brain mask, or results will suffer")
        notes.append(msg)
        warnings.warn(msg, UnstrippedWarning, stacklevel=3)


def _check_affine(affine: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"{name} has an invalid affine")
    m = affine[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if (norms <= 0).any() or abs(np.linalg.det(m)) < 1e-12:
        raise InputError(f"{name} has a singular affine (zero voxel size)")
    cos = (m / norms).T @ (m / norms)
    if np.abs(cos - np.eye(3)).max() > 1e-3:
        _warn(notes, f"{name}: the affine has shear (non-orthogonal axes); geometry is approximate")
    return affine


def load_scan(path, series=None) -> Scan:
    """Read a NIfTI scan, or one DICOM series from a folder or ``.zip`` (``series``: its index
    from 1 or its SeriesInstanceUID, needed when there are several; see ``dicom.py``); raises
    InputError with one readable line for unusable input."""
    path = Path(path)
    if path.exists() and not is_nifti(path):
        from . import dicom

        if dicom.is_dicom_source(path):
            return dicom.load_dicom_scan(path, series)
    img, raw = _read_nifti(path)
    notes: list[str] = []
    data = _check_array(raw, path.name, notes)
    affine = _check_affine(img.affine, path.name, notes)
    _check_stripped(data, affine, path.name, notes)
    return Scan(data, affine, img.header.copy(), path, sha256_file(path), notes)


def scan_from_array(data, affine=None, header=None, name: str = "image") -> Scan:
    """A Scan from an in-memory array (napari layers, tests), with the same checks as files."""
    notes: list[str] = []
    arr = _check_array(np.asarray(data), name, notes)
    affine = np.eye(4) if affine is None else affine
    affine = _check_affine(affine, name, notes)
    _check_stripped(arr, affine, name, notes)
    return Scan(arr, affine, header, None, None, notes)


def load_brain_mask(path, scan: Scan) -> np.ndarray:
    """A user-supplied brain mask (non-zero = brain) on the scan's grid."""
    img, raw = _read_nifti(path, what="brain mask")
    data = np.asarray(raw)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != scan.data.shape:
        raise InputError(
            f"brain mask {Path(path).name} has shape {data.shape}, the scan {scan.data.shape}"
        )
    if not np.allclose(img.affine, scan.affine, atol=1e-3):
        raise InputError(f"brain mask {Path(path).name} does not share the scan's affine")
    mask = np.nan_to_num(data.astype(np.float32)) > 0
    if not mask.any():
        raise InputError(f"brain mask {Path(path).name} is empty")
    return mask


def normalise(data: np.ndarray, brain: np.ndarray, method: str) -> np.ndarray:
    """Per-scan intensity normalisation (docs/method.md §1); background set to BACKGROUND."""
    vals = data[brain]
    if vals.size == 0:
        raise InputError("the brain mask is empty")
    if method == "p90":
        p90 = float(np.percentile(vals, 90))
        if p90 <= 0:
            raise InputError("the brain's 90th intensity percentile is not positive")
        out = 6.0 * data / p90 - 3.0
    elif method == "zscore":
        mu, sd = float(vals.mean()), float(vals.std())
        out = (data - mu) / (sd if sd > 0 else 1.0)
    else:
        raise ValueError(f"unknown normalisation {method!r}")
    return np.where(brain, out, BACKGROUND).astype(np.float32)


@dataclass
class Geometry:
    """How a scan's array maps onto a stack of model-grid slices, and back.

    canonical = scan array transposed by ``perm`` and flipped where ``flips``; canonical axes are
    (in-plane a, in-plane b, slice). Model pixel (i, j) of slice k samples canonical voxel
    ``(centre_a + (i − c)·step_a, centre_b + (j − c)·step_b, k)`` with c = (grid − 1)/2 and
    step = pixel_size / voxel size (in-plane, mm).
    """

    shape: tuple[int, ...]  # the scan array's shape (2-D or 3-D)
    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    voxel_mm: tuple[float, float]  # canonical in-plane voxel sizes
    pixel_size_mm: float
    grid: int
    centre: tuple[float, float]

    @property
    def shape3(self) -> tuple[int, int, int]:
        return tuple(self.shape) + (1,) * (3 - len(self.shape))

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return tuple(self.shape3[p] for p in self.perm)

    @property
    def n_slices(self) -> int:
        return self.canonical_shape[2]

    @property
    def steps(self) -> tuple[float, float]:
        return (self.pixel_size_mm / self.voxel_mm[0], self.pixel_size_mm / self.voxel_mm[1])

    @classmethod
    def for_scan(cls, shape, affine, pixel_size_mm: float, grid: int, brain=None) -> "Geometry":
        shape3 = tuple(shape) + (1,) * (3 - len(shape))
        ornt = io_orientation(np.asarray(affine))  # per array axis: (world axis, ±1)
        world = [int(a) for a in ornt[:, 0]]
        singles = [ax for ax in range(3) if shape3[ax] == 1]
        if len(shape) == 2 or len(singles) == 1:
            slice_ax = 2 if len(shape) == 2 else singles[0]
        else:
            slice_ax = world.index(2)
        inplane = sorted((ax for ax in range(3) if ax != slice_ax), key=lambda ax: world[ax])
        perm = (inplane[0], inplane[1], slice_ax)
        flips = tuple(bool(ornt[ax, 1] < 0) for ax in perm)
        zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
        voxel = (float(zooms[perm[0]]), float(zooms[perm[1]]))
        geo = cls(tuple(shape), perm, flips, voxel, float(pixel_size_mm), int(grid), (0.0, 0.0))
        cshape = geo.canonical_shape
        centre = ((cshape[0] - 1) / 2.0, (cshape[1] - 1) / 2.0)
        if brain is not None:
            cb = geo.to_canonical(np.asarray(brain, bool))
            a = np.nonzero(cb.any(axis=(1, 2)))[0]
            b = np.nonzero(cb.any(axis=(0, 2)))[0]
            if a.size and b.size:
                centre = ((a[0] + a[-1]) / 2.0, (b[0] + b[-1]) / 2.0)
        geo.centre = centre
        return geo

    # -- exact reorientation -------------------------------------------------------------
    def to_canonical(self, arr: np.ndarray) -> np.ndarray:
        arr = np.asarray(arr).reshape(self.shape3)
        out = np.transpose(arr, self.perm)
        for ax, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=ax)
        return np.ascontiguousarray(out)

    def from_canonical(self, arr: np.ndarray) -> np.ndarray:
        out = np.asarray(arr)
        for ax, flip in enumerate(self.flips):
            if flip:
                out = np.flip(out, axis=ax)
        out = np.transpose(out, np.argsort(self.perm))
        return np.ascontiguousarray(out.reshape(self.shape))

    # -- in-plane resampling ------------------------------------------------------------
    def _model_coords(self) -> tuple[np.ndarray, np.ndarray]:
        c = (self.grid - 1) / 2.0
        i = np.arange(self.grid, dtype=np.float64) - c
        sa, sb = self.steps
        return self.centre[0] + i * sa, self.centre[1] + i * sb

    def canonical_to_model(self, canon: np.ndarray, order: int = 1, cval: float = 0.0,
                           antialias: bool = True) -> np.ndarray:
        """(A, B, N) canonical array → (N, grid, grid) model-grid slices."""
        canon = np.asarray(canon, dtype=np.float32)
        sa, sb = self.steps
        if antialias and order > 0 and (sa > 1 or sb > 1):
            sig = [np.sqrt(max(s * s - 1.0, 0.0)) / 2.0 for s in (sa, sb)] + [0.0]
            canon = ndimage.gaussian_filter(canon, sig, mode="constant", cval=cval)
        ca, cb = self._model_coords()
        aa, bb = np.meshgrid(ca, cb, indexing="ij")
        out = np.empty((canon.shape[2], self.grid, self.grid), dtype=np.float32)
        for k in range(canon.shape[2]):
            out[k] = ndimage.map_coordinates(canon[:, :, k], [aa, bb], order=order,
                                             mode="constant", cval=cval)
        return out

    def model_to_canonical(self, slices: np.ndarray, order: int = 1,
                           method: str = "separable") -> np.ndarray:
        """(N, grid, grid) model-grid slices → (A, B, N) canonical array (zero outside the grid).

        The model grid and the canonical grid share their axes, so the 2-D interpolation is a
        product of two 1-D ones: nearest neighbour (order 0) gathers rows and columns, linear
        (order 1) mixes two rows, then two columns. The 1-D indices and weights are scipy's
        own (``map_coordinates`` on each axis, mode "constant"), so order 0 is identical to
        ``map_coordinates`` slice by slice and order 1 equal to it within float rounding
        (tests/test_volume_properties.py), at a small fraction of its time. ``method="scipy"``
        runs ``map_coordinates`` slice by slice instead: the reference that the tests and
        ``benchmarks/resample.py`` compare with."""
        slices = np.asarray(slices)
        A, B, N = self.canonical_shape
        if slices.shape != (N, self.grid, self.grid):
            raise ValueError(f"expected {(N, self.grid, self.grid)} slices, got {slices.shape}")
        if order not in (0, 1):
            raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order}")
        c = (self.grid - 1) / 2.0
        sa, sb = self.steps
        ia = (np.arange(A) - self.centre[0]) / sa + c
        ib = (np.arange(B) - self.centre[1]) / sb + c
        if method == "scipy":
            aa, bb = np.meshgrid(ia, ib, indexing="ij")
            src = slices.astype(np.float32) if order > 0 else slices
            ref = np.empty((A, B, N), dtype=np.float32 if order > 0 else slices.dtype)
            for k in range(N):
                ref[:, :, k] = ndimage.map_coordinates(src[k], [aa, bb], order=order,
                                                       mode="constant", cval=0)
            return ref
        if method != "separable":
            raise ValueError(f"unknown resampling method {method!r}")
        if order == 0:
            pa, pb = _nearest_taps(ia, self.grid), _nearest_taps(ib, self.grid)
            out = np.zeros((A, B, N), dtype=slices.dtype)
            ina, inb = pa >= 0, pb >= 0
            if ina.any() and inb.any():
                picked = slices[:, pa[ina]][:, :, pb[inb]]  # (N, a inside, b inside)
                out[np.ix_(ina, inb)] = np.moveaxis(picked, 0, -1)
            return out
        (a0, a1), (wa0, wa1) = _linear_taps(ia, self.grid)
        (b0, b1), (wb0, wb1) = _linear_taps(ib, self.grid)
        # float32 values (as the scipy path reads them), mixed in float64 (as scipy mixes)
        src = np.moveaxis(slices.astype(np.float32, copy=False), 0, -1)
        src = np.ascontiguousarray(src, dtype=np.float64)  # (grid, grid, N)
        out = np.empty((A, B, N), dtype=np.float32)
        step = 8  # canonical rows per block: the float64 temporaries stay in the caches
        for lo in range(0, A, step):
            sl = slice(lo, lo + step)
            rows = src[a0[sl]]  # (rows, grid, N)
            rows *= wa0[sl, None, None]
            rows += src[a1[sl]] * wa1[sl, None, None]
            both = rows[:, b0]  # (rows, B, N)
            both *= wb0[None, :, None]
            both += rows[:, b1] * wb1[None, :, None]
            out[sl] = both
        return out

    def to_scan(self, slices: np.ndarray, order: int = 1, method: str = "separable"
                ) -> np.ndarray:
        """Model-grid slices → an array of exactly the scan's shape."""
        return self.from_canonical(self.model_to_canonical(slices, order, method))

    def to_model(self, scan_array: np.ndarray, order: int = 1, cval: float = 0.0,
                 antialias: bool = True) -> np.ndarray:
        return self.canonical_to_model(self.to_canonical(scan_array), order, cval, antialias)


def _nearest_taps(coords: np.ndarray, n: int) -> np.ndarray:
    """Per target coordinate, the source index that scipy's order-0 ``map_coordinates`` (mode
    "constant") reads on an axis of n samples, or −1 where it gives the constant."""
    ids = ndimage.map_coordinates(np.arange(1, n + 1, dtype=np.float64), [coords], order=0,
                                  mode="constant", cval=0.0)
    return np.rint(ids).astype(np.int64) - 1


def _linear_taps(coords: np.ndarray, n: int):
    """Per target coordinate, two source indices and their weights, read off scipy's order-1
    ``map_coordinates`` (mode "constant") of each unit vector of an axis of n samples (zero
    weights where it gives the constant)."""
    weights = np.empty((coords.size, n), dtype=np.float64)
    unit = np.zeros(n, dtype=np.float64)
    for j in range(n):
        unit[j] = 1.0
        weights[:, j] = ndimage.map_coordinates(unit, [coords], order=1, mode="constant",
                                                cval=0.0)
        unit[j] = 0.0
    if (np.count_nonzero(weights, axis=1) > 2).any():
        raise AssertionError("linear interpolation read more than two samples")
    first = np.argmax(weights != 0, axis=1)
    second = np.minimum(first + 1, n - 1)
    rows = np.arange(coords.size)
    return (first, second), (weights[rows, first], np.where(second > first,
                                                          weights[rows, second], 0.0))


@dataclass
class ModelGridVolume:
    x: np.ndarray  # (N, grid, grid) float32, normalised; BACKGROUND outside the brain
    brain: np.ndarray  # (N, grid, grid) bool
    geometry: Geometry
    scan_brain: np.ndarray  # the brain on the scan's own grid (scan shape, bool)


def to_model_grid(scan: Scan, *, grid: int = 128, pixel_size_mm: float = 1.875,
                  normalisation: str = "p90", brain_mask: np.ndarray | None = None
                  ) -> ModelGridVolume:
    """Prepare a scan for the engine: slices on the model grid, normalised, with brain masks."""
    data = scan.data
    brain = default_brain_mask(data) if brain_mask is None else np.asarray(brain_mask, bool)
    if brain.shape != data.shape:
        raise InputError(f"brain mask shape {brain.shape} differs from the scan's {data.shape}")
    if not brain.any():
        raise InputError("the brain mask is empty: nothing to segment")
    geo = Geometry.for_scan(data.shape, scan.affine, pixel_size_mm, grid, brain)
    cb = geo.to_canonical(brain)
    fov = grid * pixel_size_mm
    for ax, name in ((0, "left-right"), (1, "front-back")):
        idx = np.nonzero(cb.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        extent = (idx[-1] - idx[0] + 1) * geo.voxel_mm[ax]
        if extent > fov:
            _warn(scan.notes, f"the brain spans {extent:.0f} mm {name}, more than the model's "
                              f"{fov:.0f} mm field of view: its edges are not analysed")
    norm = normalise(data, brain, normalisation)
    x = geo.to_model(norm, order=1, cval=BACKGROUND)
    b = geo.to_model(brain.astype(np.float32), order=1, cval=0.0) > 0.5
    x = np.where(b, x, BACKGROUND).astype(np.float32)
    return ModelGridVolume(x, b, geo, brain)
